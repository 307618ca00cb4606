//! A compact set of product ids, for the batch. Every id's text lives in one arena string
//! and the set is a table of (offset, length) pairs: about 10 bytes per id plus the id's
//! own bytes, where a `HashSet<String>` costs ~70 (a 24-byte `String`, its own allocation,
//! the table slot). Two batches of `max_pending` ids (one filling, one being applied) are
//! what the worker holds under backlog, so this is what keeps its memory flat however
//! many products one transaction touches.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

#[derive(Default)]
pub struct IdSet {
    arena: String,
    table: HashTable<(u32, u32)>,
    hasher: RandomState,
}

impl std::fmt::Debug for IdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl IdSet {
    /// Adds `id`; false when it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        let hash = self.hasher.hash_one(id);
        let arena = &self.arena;
        if self
            .table
            .find(hash, |&(at, len)| slice(arena, at, len) == id)
            .is_some()
        {
            return false;
        }
        let at = u32::try_from(self.arena.len()).expect("id arena below 4 GiB (max_pending)");
        let len = u32::try_from(id.len()).expect("an id below 4 GiB");
        self.arena.push_str(id);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table.insert_unique(hash, (at, len), |&(at, len)| {
            hasher.hash_one(slice(arena, at, len))
        });
        true
    }

    pub fn contains(&self, id: &str) -> bool {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&(at, len)| slice(&self.arena, at, len) == id)
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
        *self = IdSet::default();
    }

    /// The ids, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.table
            .iter()
            .map(|&(at, len)| slice(&self.arena, at, len))
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
