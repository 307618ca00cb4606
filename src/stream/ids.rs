//! A compact set of product ids, for the batch. Every id's text lives in one arena string
//! and the set is a table of (offset, length) pairs: about 10 bytes per id plus the id's
//! own bytes, where a `HashSet<String>` costs ~70 (a 24-byte `String`, its own allocation,
//! the table slot). Two batches of `max_pending` ids (one filling, one being applied) are
//! what the worker holds under backlog, so this is what keeps its memory flat however
//! many products one transaction touches.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

/// A set of product ids (the batch's).
pub type IdSet = IdMap<()>;

/// Product ids with a small value each (the unfinished streams keep the subtransaction
/// that marked each id), over one arena.
pub struct IdMap<V> {
    arena: String,
    table: HashTable<(u32, u32, V)>,
    hasher: RandomState,
    /// Bytes of the arena that ids removed since the last compaction still take.
    dead: usize,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            arena: String::new(),
            table: HashTable::new(),
            hasher: RandomState::new(),
            dead: 0,
        }
    }
}

impl<V> std::fmt::Debug for IdMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl IdSet {
    /// Adds `id`; false when it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        self.upsert(id, (), |_| {})
    }
}

impl<V> IdMap<V> {
    /// Adds `id` with `value`, or, when it is there, passes its value to `update`.
    /// True when it was added.
    pub fn upsert(&mut self, id: &str, value: V, update: impl FnOnce(&mut V)) -> bool {
        let hash = self.hasher.hash_one(id);
        let arena = &self.arena;
        if let Some((_, _, v)) = self
            .table
            .find_mut(hash, |&(at, len, _)| slice(arena, at, len) == id)
        {
            update(v);
            return false;
        }
        let at = u32::try_from(self.arena.len()).expect("id arena below 4 GiB (max_pending)");
        let len = u32::try_from(id.len()).expect("an id below 4 GiB");
        self.arena.push_str(id);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table
            .insert_unique(hash, (at, len, value), |&(at, len, _)| {
                hasher.hash_one(slice(arena, at, len))
            });
        true
    }

    pub fn contains(&self, id: &str) -> bool {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&(at, len, _)| slice(&self.arena, at, len) == id)
            .is_some()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Empties the set and gives its memory back (a batch after a huge transaction must
    /// not keep the arena at its peak size).
    pub fn clear(&mut self) {
        *self = IdMap::default();
    }

    /// The ids, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.table
            .iter()
            .map(|&(at, len, _)| slice(&self.arena, at, len))
    }

    /// Keeps the ids whose value `keep` accepts. The arena is rebuilt once removed ids
    /// take more of it than live ones, so repeated removals cannot grow it without bound.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        let mut dead = 0;
        self.table.retain(|(_, len, v)| {
            let k = keep(v);
            if !k {
                dead += *len as usize;
            }
            k
        });
        self.dead += dead;
        if self.dead > self.arena.len() / 2 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut arena = String::with_capacity(self.arena.len() - self.dead);
        for (at, len, _) in self.table.iter_mut() {
            let id = slice(&self.arena, *at, *len);
            *at = arena.len() as u32;
            arena.push_str(id);
        }
        // Positions changed but hashes did not (they hash the id's text).
        self.arena = arena;
        self.dead = 0;
    }
}

fn slice(arena: &str, at: u32, len: u32) -> &str {
    &arena[at as usize..(at + len) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_each_id_once() {
        let mut s = IdSet::default();
        assert!(s.insert("p1"));
        assert!(s.insert("p10"));
        assert!(!s.insert("p1"));
        assert!(s.contains("p10") && !s.contains("p2"));
        let mut all: Vec<&str> = s.iter().collect();
        all.sort_unstable();
        assert_eq!(all, ["p1", "p10"]);
        s.clear();
        assert!(s.is_empty() && !s.contains("p1"));
    }

    #[test]
    fn retain_removes_and_compacts() {
        let mut m: IdMap<u32> = IdMap::default();
        for i in 0..100 {
            m.upsert(&format!("product-{i}"), i % 2, |_| {});
        }
        assert!(!m.upsert("product-3", 7, |v| *v = 9));
        m.retain(|&v| v != 1);
        assert_eq!(m.len(), 51, "the evens and product-3 (now 9)");
        assert!(m.contains("product-3") && m.contains("product-4") && !m.contains("product-5"));
        assert!(
            m.arena.len() > m.iter().map(str::len).sum(),
            "half dead: kept"
        );
        m.retain(|&v| v == 9);
        assert_eq!(
            m.arena, "product-3",
            "mostly dead: compacted to the live ids"
        );
        m.upsert("product-5", 0, |_| {});
        assert!(m.contains("product-5") && m.contains("product-3") && !m.contains("product-4"));
    }

    proptest! {
        /// The same members as a HashSet<String> for any sequence of inserts.
        #[test]
        fn behaves_like_a_hash_set(ids in proptest::collection::vec("[a-z0-9]{0,12}", 0..300)) {
            let mut ours = IdSet::default();
            let mut std = std::collections::HashSet::new();
            for id in &ids {
                prop_assert_eq!(ours.insert(id), std.insert(id.clone()));
            }
            prop_assert_eq!(ours.len(), std.len());
            let mut a: Vec<&str> = ours.iter().collect();
            a.sort_unstable();
            let mut b: Vec<&str> = std.iter().map(String::as_str).collect();
            b.sort_unstable();
            prop_assert_eq!(a, b);
        }
    }
}
