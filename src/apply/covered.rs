//! Products a batch need not recompute again. A recompute reads the source as it is now,
//! not as of the change that marked the product, so once a product was recomputed by a
//! statement whose snapshot already saw a transaction, that transaction's changes to it
//! are in the summary. A backlog makes this the common case: after downtime every
//! transaction is committed long before it is streamed, and the first batch's recompute
//! already read what the later batches would recompute again (a product touched by five
//! queued transactions was recomputed up to five times).
//!
//! The rule, checked per batch: when every transaction of the batch was visible to the
//! snapshot taken before the covered products were recomputed, the batch skips those
//! products. Otherwise (a transaction committed after that snapshot; the live case) it
//! recomputes everything it holds. Nothing is skipped on a guess: no snapshot, no xids,
//! or a recompute of every product forgets the set. The snapshot judges only transactions
//! whose commit record lies below the WAL position read with it ([`Seen`]); a batch
//! past that position ends its use ([`Covered::passed`]), so a set never outlives the
//! range of xids its snapshot can place in the right epoch.
//!
//! After a recompute of every product (a bulk transaction, see [`super::bulk`]; a TRUNCATE) the
//! set is every product: a batch whose transactions that pass's snapshot saw needs no
//! recompute at all.
//!
//! The set lives in memory up to `batch.max_pending` ids. Past that (one transaction that
//! touches a million products, or many queued behind each other) it moves to a temporary
//! table of the apply session ([`Spill`]), so memory stays flat and a second pass over
//! the same products (the rest of the transaction, the next bulk update) is still skipped:
//! a lookup costs a few microseconds where a recompute costs tens.

use anyhow::Context as _;
use pgwire_replication::Lsn;
use tokio_postgres::Client;

use crate::pg::snapshot::Seen;
use crate::stream::ids::IdSet;

/// Most ids the spilled set holds, in multiples of the in-memory cap (10M ids with the
/// default `max_pending`, ~600 MB of temporary files). Past it the set starts again
/// from the last batch: the worker recomputes more, it never skips on a guess.
const SPILL_FACTOR: usize = 50;

/// Ids per statement to and from the spill table, as a share of the in-memory cap (20k
/// with the default `max_pending`): a statement's parameter is encoded whole in the
/// connection's buffer, which keeps its largest size (200k cuids at once: ~6 MB).
const SPILL_CHUNK_DIVISOR: usize = 10;

/// Where the covered ids go once there are more than memory may hold. (Implemented by
/// the apply connection, and by a store in memory in the tests; used with concrete
/// types only, so the futures' `Send` is known where it matters.)
#[allow(async_fn_in_trait)]
pub trait Spill {
    /// Empties the store (creating it first if needed); false when there can be none
    /// (the role may not create temporary tables).
    async fn reset(&self) -> anyhow::Result<bool>;
    async fn insert(&self, ids: &[&str]) -> anyhow::Result<()>;
    /// The positions in `ids` of the ids not in the store.
    async fn missing(&self, ids: &[&str]) -> anyhow::Result<Vec<usize>>;
}

/// The products known to be covered, and the snapshot that covers them.
///
/// The invariant, the same in every state that has a snapshot: every product in the set
/// was recomputed by a statement whose snapshot saw at least every transaction `seen`
/// saw. So a batch whose transactions `seen` all saw finds their changes to those
/// products already in the summary.
enum Set {
    /// Nothing is known to be covered: every batch recomputes all it holds.
    Empty,
    /// Every product (a pass over all of them).
    Every { seen: Seen },
    /// Up to `cap` products, in memory.
    Memory { seen: Seen, ids: IdSet },
    /// `count` products in the spill store (more than `cap`, at most `cap * SPILL_FACTOR`).
    Spilled { seen: Seen, count: usize },
}

impl Set {
    fn seen(&self) -> Option<&Seen> {
        match self {
            Set::Empty => None,
            Set::Every { seen } | Set::Memory { seen, .. } | Set::Spilled { seen, .. } => {
                Some(seen)
            }
        }
    }
}

pub struct Covered {
    set: Set,
    /// Most ids kept in memory (memory stays within what `batch.max_pending` allows).
    cap: usize,
    /// The store was refused (said once): past `cap` the set starts again instead.
    no_store: bool,
}

impl Covered {
    pub fn new(cap: usize) -> Covered {
        Covered {
            set: Set::Empty,
            cap,
            no_store: false,
        }
    }

    /// Whether the set's snapshot saw every one of a batch's transactions (`last_commit`
    /// where the newest one's commit record begins), so that the covered products'
    /// recomputes read all of their changes.
    pub fn covers(&self, xids: &[u32], last_commit: Option<Lsn>) -> bool {
        self.set
            .seen()
            .is_some_and(|s| s.saw_all(xids, last_commit))
    }

    /// Whether a pass over every product saw all of a batch's transactions.
    pub fn saw_all(&self, xids: &[u32], last_commit: Option<Lsn>) -> bool {
        matches!(self.set, Set::Every { .. }) && self.covers(xids, last_commit)
    }

    /// The stream reached a transaction committing at `last_commit`: when that is past
    /// what the set's snapshot may judge, no later batch can be covered by it, and the set
    /// is forgotten (a spill store keeps its rows until it is next used).
    pub fn passed(&mut self, last_commit: Option<Lsn>) {
        let passed = match (self.set.seen(), last_commit) {
            (Some(s), Some(l)) => s.passed_by(l),
            _ => false,
        };
        if passed {
            tracing::debug!(
                ids = self.len(),
                "the stream passed the covered products' snapshot; forgetting them"
            );
            self.set = Set::Empty;
        }
    }

    /// The ids of a batch still to recompute: all of them unless [`Covered::covers`].
    pub async fn to_recompute<'a>(
        &self,
        spill: &impl Spill,
        ids: impl Iterator<Item = &'a str>,
        xids: &[u32],
        last_commit: Option<Lsn>,
    ) -> anyhow::Result<Vec<&'a str>> {
        if !self.covers(xids, last_commit) {
            return Ok(ids.collect());
        }
        match &self.set {
            Set::Empty => Ok(ids.collect()),
            Set::Every { .. } => Ok(Vec::new()),
            Set::Memory { ids: held, .. } => Ok(ids.filter(|id| !held.contains(id)).collect()),
            Set::Spilled { .. } => {
                let ids: Vec<&str> = ids.collect();
                let mut todo = Vec::new();
                for (i, part) in ids.chunks(self.chunk()).enumerate() {
                    let at = i * self.chunk();
                    todo.extend(spill.missing(part).await?.into_iter().map(|n| ids[at + n]));
                }
                Ok(todo)
            }
        }
    }

    /// A batch recomputed `ids` after `seen` was taken (it saw all of the batch's
    /// transactions; `None` when the batch had none, or recomputed nothing). `extends` is
    /// what [`Covered::covers`] said for the batch: the set's snapshot then still holds for
    /// every id, old and new, so the set grows; otherwise it starts again from this batch,
    /// under `seen`. A failure midway leaves the set empty: never a set that claims more
    /// than was recorded.
    pub async fn record(
        &mut self,
        spill: &impl Spill,
        ids: &[&str],
        seen: Option<Seen>,
        extends: bool,
    ) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let set = std::mem::replace(&mut self.set, Set::Empty);
        let Some(seen) = seen else {
            return Ok(());
        };
        self.set = match set {
            Set::Memory {
                seen: old,
                ids: held,
            } if extends => self.grow_memory(spill, old, held, ids, seen).await?,
            Set::Spilled { seen: old, count } if extends && count + ids.len() <= self.most() => {
                self.insert(spill, ids).await?;
                Set::Spilled {
                    seen: old,
                    count: count + ids.len(),
                }
            }
            // Not covered (a newer transaction), past the store's bound, or after a pass
            // over every product (whose covered batches recompute nothing, so never get here).
            _ => self.start(spill, ids, seen).await?,
        };
        Ok(())
    }

    /// Every product was recomputed, each page by a statement that started after `seen`
    /// was taken (it saw the batch's transactions).
    pub fn record_every(&mut self, seen: Seen) {
        self.set = Set::Every { seen };
    }

    /// After a failure, or a recompute of every product without a snapshot. A spill store
    /// keeps its rows until it is next used, and is emptied then.
    pub fn forget(&mut self) {
        self.set = Set::Empty;
    }

    /// Adds `ids` to the set in memory under its old snapshot; past `cap` moves everything
    /// to the store, or (without one) starts again from `ids` under `seen`.
    async fn grow_memory(
        &mut self,
        spill: &impl Spill,
        old: Seen,
        mut held: IdSet,
        ids: &[&str],
        seen: Seen,
    ) -> anyhow::Result<Set> {
        let total = held.len() + ids.len();
        if total <= self.cap {
            for id in ids {
                held.insert(id);
            }
            return Ok(Set::Memory {
                seen: old,
                ids: held,
            });
        }
        if total > self.most() || !self.store_ready(spill).await? {
            return self.start(spill, ids, seen).await;
        }
        // Moving to the store: what memory held goes first.
        let moved: Vec<&str> = held.iter().collect();
        self.insert(spill, &moved).await?;
        self.insert(spill, ids).await?;
        tracing::debug!(ids = total, "covered products moved to a temporary table");
        Ok(Set::Spilled {
            seen: old,
            count: total,
        })
    }

    /// A set of just `ids` under `seen`: in memory when they fit, else in the (emptied)
    /// store, else nothing.
    async fn start(&mut self, spill: &impl Spill, ids: &[&str], seen: Seen) -> anyhow::Result<Set> {
        if ids.len() <= self.cap {
            let mut set = IdSet::default();
            for id in ids {
                set.insert(id);
            }
            return Ok(Set::Memory { seen, ids: set });
        }
        if ids.len() > self.most() || !self.store_ready(spill).await? {
            return Ok(Set::Empty);
        }
        self.insert(spill, ids).await?;
        Ok(Set::Spilled {
            seen,
            count: ids.len(),
        })
    }

    /// Empties the store for a new set; false (said once) when the role may not have one.
    async fn store_ready(&mut self, spill: &impl Spill) -> anyhow::Result<bool> {
        if self.no_store {
            return Ok(false);
        }
        if spill.reset().await? {
            return Ok(true);
        }
        self.no_store = true;
        tracing::warn!(
            "covered products stay in memory: this role may not create temporary tables. \
             A transaction touching more than batch.max_pending products may be recomputed \
             more than once. Fix: GRANT TEMPORARY ON DATABASE <database> TO <role>"
        );
        Ok(false)
    }

    /// Most ids the set holds at all.
    fn most(&self) -> usize {
        self.cap * SPILL_FACTOR
    }

    fn chunk(&self) -> usize {
        (self.cap / SPILL_CHUNK_DIVISOR).max(1)
    }

    async fn insert(&self, spill: &impl Spill, ids: &[&str]) -> anyhow::Result<()> {
        for part in ids.chunks(self.chunk()) {
            spill.insert(part).await?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        match &self.set {
            Set::Empty | Set::Every { .. } => 0,
            Set::Memory { ids, .. } => ids.len(),
            Set::Spilled { count, .. } => *count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many covered ids are in memory (the rest, if any, in the store).
    #[cfg(test)]
    fn in_memory(&self) -> usize {
        match &self.set {
            Set::Memory { ids, .. } => ids.len(),
            _ => 0,
        }
    }
}

/// The spill store of the apply session: a temporary table, private to the connection
/// and gone with it (a reconnect starts a new session with a new, empty set).
impl Spill for Client {
    async fn reset(&self) -> anyhow::Result<bool> {
        // TEMPORARY is granted to PUBLIC by default; a hardened database may revoke it.
        let allowed: bool = self
            .query_one(
                "SELECT has_database_privilege(current_database(), 'TEMPORARY')",
                &[],
            )
            .await?
            .get(0);
        if !allowed {
            return Ok(false);
        }
        self.batch_execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS cdc_worker_covered (id text PRIMARY KEY); \
             TRUNCATE pg_temp.cdc_worker_covered",
        )
        .await
        .context("creating the temporary table of covered products")?;
        Ok(true)
    }

    async fn insert(&self, ids: &[&str]) -> anyhow::Result<()> {
        self.execute(
            "INSERT INTO pg_temp.cdc_worker_covered SELECT unnest($1::text[]) \
             ON CONFLICT DO NOTHING",
            &[&ids],
        )
        .await
        .context("recording covered products")?;
        Ok(())
    }

    async fn missing(&self, ids: &[&str]) -> anyhow::Result<Vec<usize>> {
        // One row with an array: a row per id would cost the worker ~100 bytes each.
        let row = self
            .query_one(
                "SELECT coalesce(array_agg((u.n - 1)::int4), '{}') \
                 FROM unnest($1::text[]) WITH ORDINALITY u(id, n) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_temp.cdc_worker_covered c WHERE c.id = u.id)",
                &[&ids],
            )
            .await
            .context("looking up covered products")?;
        Ok(row
            .get::<_, Vec<i32>>(0)
            .into_iter()
            .map(|i| i as usize)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    use crate::pg::snapshot::Snapshot;

    /// The WAL position every test snapshot was taken at; the tests' batches commit below.
    const BOUND: Lsn = Lsn(1000);

    fn every(text: &str) -> Seen {
        Seen {
            snapshot: Snapshot::parse(text).unwrap(),
            wal: BOUND,
        }
    }

    fn snap(text: &str) -> Option<Seen> {
        Some(every(text))
    }

    /// A spill store in memory, counting its resets; `refused` plays a role without the
    /// TEMPORARY privilege.
    #[derive(Default)]
    struct Store {
        ids: RefCell<BTreeSet<String>>,
        resets: RefCell<usize>,
        refused: bool,
        /// Most ids one call carried.
        largest: RefCell<usize>,
    }

    impl Store {
        fn note(&self, ids: usize) {
            let mut largest = self.largest.borrow_mut();
            *largest = (*largest).max(ids);
        }
    }

    impl Spill for Store {
        async fn reset(&self) -> anyhow::Result<bool> {
            *self.resets.borrow_mut() += 1;
            if self.refused {
                return Ok(false);
            }
            self.ids.borrow_mut().clear();
            Ok(true)
        }
        async fn insert(&self, ids: &[&str]) -> anyhow::Result<()> {
            self.note(ids.len());
            let mut set = self.ids.borrow_mut();
            set.extend(ids.iter().map(|s| s.to_string()));
            Ok(())
        }
        async fn missing(&self, ids: &[&str]) -> anyhow::Result<Vec<usize>> {
            self.note(ids.len());
            let set = self.ids.borrow();
            Ok((0..ids.len()).filter(|&i| !set.contains(ids[i])).collect())
        }
    }

    async fn todo<'a>(c: &Covered, s: &Store, ids: &[&'a str], xids: &[u32]) -> Vec<&'a str> {
        c.to_recompute(s, ids.iter().copied(), xids, Some(Lsn(10)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn skips_only_products_recomputed_after_every_transaction_was_visible() {
        let s = Store::default();
        let mut c = Covered::new(10);
        // Nothing recorded: everything is recomputed.
        assert_eq!(todo(&c, &s, &["a", "b"], &[5]).await, ["a", "b"]);
        // a and b recomputed at a snapshot that saw xids below 100 except 90.
        c.record(&s, &["a", "b"], snap("80:100:90"), false)
            .await
            .unwrap();
        // Transactions the snapshot saw: a and b are done, c is not.
        assert_eq!(todo(&c, &s, &["a", "c"], &[50, 99]).await, ["c"]);
        // One transaction it did not see (in progress then, or newer): recompute all.
        assert_eq!(todo(&c, &s, &["a", "c"], &[50, 90]).await, ["a", "c"]);
        assert_eq!(todo(&c, &s, &["a"], &[100]).await, ["a"]);
        // No transactions at all proves nothing.
        assert_eq!(todo(&c, &s, &["a"], &[]).await, ["a"]);
    }

    #[tokio::test]
    async fn grows_under_the_old_snapshot_and_restarts_otherwise() {
        let s = Store::default();
        let mut c = Covered::new(3);
        c.record(&s, &["a"], snap("80:100:"), false).await.unwrap();
        // A covered batch adds c under the old snapshot.
        c.record(&s, &["c"], snap("120:130:"), true).await.unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(todo(&c, &s, &["a", "c", "d"], &[99]).await, ["d"]);
        // A batch not covered starts again from itself and its snapshot.
        c.record(&s, &["x"], snap("200:210:"), false).await.unwrap();
        assert_eq!(todo(&c, &s, &["a", "x"], &[205]).await, ["a"]);
        // No snapshot (a batch without transactions): forget.
        c.record(&s, &["x"], None, false).await.unwrap();
        assert!(c.is_empty());
        assert!(!c.covers(&[1], Some(Lsn(10))));
        assert_eq!(*s.resets.borrow(), 0, "small sets stay in memory");
    }

    #[tokio::test]
    async fn past_the_cap_the_set_moves_to_the_store_and_keeps_growing() {
        let s = Store::default();
        let mut c = Covered::new(2);
        c.record(&s, &["a", "b"], snap("80:100:"), false)
            .await
            .unwrap();
        // Past the in-memory cap: a, b and the new ids all go to the store.
        c.record(&s, &["c", "d", "e"], snap("120:130:"), true)
            .await
            .unwrap();
        assert_eq!((c.len(), c.in_memory(), *s.resets.borrow()), (5, 0, 1));
        assert_eq!(todo(&c, &s, &["e", "f", "a", "g"], &[99]).await, ["f", "g"]);
        // A tenth of the cap (at least one) per call, positions kept across calls.
        assert_eq!(*s.largest.borrow(), 1);
        // A batch larger than the cap on its own, not covered: straight to the store,
        // emptied first.
        c.record(&s, &["p", "q", "r"], snap("200:210:"), false)
            .await
            .unwrap();
        assert_eq!((c.len(), *s.resets.borrow()), (3, 2));
        assert_eq!(todo(&c, &s, &["a", "q"], &[205]).await, ["a"]);
        // Forgetting makes the store's rows unused until the next reset.
        c.forget();
        assert_eq!(todo(&c, &s, &["q"], &[205]).await, ["q"]);
        // Beyond the store's bound: nothing kept rather than a partial set.
        let many: Vec<String> = (0..2 * SPILL_FACTOR + 1).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        c.record(&s, &many, snap("300:310:"), false).await.unwrap();
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn after_every_product_only_unseen_transactions_recompute() {
        let s = Store::default();
        let mut c = Covered::new(2);
        c.record(&s, &["a"], snap("80:100:"), false).await.unwrap();
        c.record_every(every("120:130:125"));
        // Seen by the pass: nothing to do, whatever the ids; the set stays every product.
        assert!(todo(&c, &s, &["a", "x", "y"], &[110, 129]).await.is_empty());
        c.record(&s, &[], snap("140:150:"), true).await.unwrap();
        assert!(todo(&c, &s, &["z"], &[99]).await.is_empty());
        // In progress then (125) or newer (130): all of it, and the set starts again.
        assert_eq!(todo(&c, &s, &["a", "x"], &[125]).await, ["a", "x"]);
        assert_eq!(todo(&c, &s, &["a"], &[130]).await, ["a"]);
        c.record(&s, &["a"], snap("140:150:"), false).await.unwrap();
        assert_eq!(todo(&c, &s, &["a", "x"], &[145]).await, ["x"]);
        // No transactions prove nothing, even right after the pass.
        c.record_every(every("120:130:"));
        assert_eq!(todo(&c, &s, &["a"], &[]).await, ["a"]);
    }

    #[tokio::test]
    async fn without_a_store_past_the_cap_it_starts_again_in_memory() {
        let s = Store {
            refused: true,
            ..Store::default()
        };
        let mut c = Covered::new(2);
        c.record(&s, &["a", "b"], snap("80:100:"), false)
            .await
            .unwrap();
        // c fits no more: asked once, refused, the set restarts from c under its snapshot.
        c.record(&s, &["c"], snap("120:130:"), true).await.unwrap();
        assert_eq!((c.len(), *s.resets.borrow()), (1, 1));
        assert_eq!(todo(&c, &s, &["a", "c"], &[125]).await, ["a"]);
        // Not asked again; a batch above the cap keeps nothing.
        c.record(&s, &["p", "q", "r"], snap("200:210:"), false)
            .await
            .unwrap();
        assert_eq!((c.len(), *s.resets.borrow()), (0, 1));
        assert_eq!(todo(&c, &s, &["p"], &[205]).await, ["p"]);
    }

    /// Issue 18: the set's snapshot judged every later batch for the whole session, and a
    /// transaction 2^32 xids later (the same low 32 bits) looked seen. A batch committed
    /// past the snapshot's WAL bound is not covered, and once the stream is past it the
    /// set is forgotten.
    #[tokio::test]
    async fn a_set_is_forgotten_once_the_stream_passed_its_snapshot() {
        let s = Store::default();
        let mut c = Covered::new(10);
        c.record(&s, &["a", "b"], snap("80:100:"), false)
            .await
            .unwrap();
        assert!(c.covers(&[50], Some(Lsn(999))));
        // xid 50 again, an epoch later: committed past the bound.
        assert!(!c.covers(&[50], Some(Lsn(1000))));
        let later = c
            .to_recompute(&s, ["a", "c"].into_iter(), &[50], Some(Lsn(1500)))
            .await
            .unwrap();
        assert_eq!(later, ["a", "c"]);
        c.passed(Some(Lsn(999)));
        assert_eq!(c.len(), 2, "not yet past");
        c.passed(Some(Lsn(1000)));
        assert!(c.is_empty());
        // After a pass over every product too.
        c.record_every(every("120:130:"));
        assert!(c.saw_all(&[110], Some(Lsn(999))));
        assert!(!c.saw_all(&[110], Some(Lsn(1000))));
        c.passed(Some(Lsn(4000)));
        assert!(!c.saw_all(&[110], Some(Lsn(999))));
    }
}
