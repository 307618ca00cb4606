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
//! or a recompute of every product forgets the set.

use crate::ids::IdSet;
use crate::visibility::Snapshot;

pub struct Covered {
    /// Products recomputed, each by a statement that started after `seen` was taken.
    ids: IdSet,
    seen: Option<Snapshot>,
    /// Most ids kept (memory stays within what `batch.max_pending` allows).
    cap: usize,
}

impl Covered {
    pub fn new(cap: usize) -> Covered {
        Covered {
            ids: IdSet::default(),
            seen: None,
            cap,
        }
    }

    /// Whether `seen` saw every one of a batch's transactions, so that the covered
    /// products' recomputes read all of their changes.
    pub fn covers(&self, xids: &[u32]) -> bool {
        match &self.seen {
            Some(s) => !xids.is_empty() && xids.iter().all(|&x| s.sees(s.xid8(x))),
            None => false,
        }
    }

    /// The ids of a batch still to recompute: all of them unless [`Covered::covers`].
    pub fn to_recompute<'a>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        xids: &[u32],
    ) -> Vec<&'a str> {
        if self.covers(xids) {
            ids.filter(|id| !self.ids.contains(id)).collect()
        } else {
            ids.collect()
        }
    }

    /// A batch recomputed `ids` after `seen` was taken (it saw all of the batch's
    /// transactions; `None` when the batch had none, or recomputed nothing). `extends` is
    /// what [`Covered::covers`] said for the batch: the older snapshot then still holds for
    /// every id, old and new, so the set grows; otherwise it starts again from this batch.
    pub fn record(&mut self, ids: &[&str], seen: Option<Snapshot>, extends: bool) {
        if ids.is_empty() {
            return;
        }
        let Some(seen) = seen else {
            return self.forget();
        };
        if extends && self.ids.len() + ids.len() <= self.cap {
            for id in ids {
                self.ids.insert(id);
            }
            return;
        }
        self.forget();
        if ids.len() <= self.cap {
            for id in ids {
                self.ids.insert(id);
            }
            self.seen = Some(seen);
        }
    }

    /// After a recompute of every product (its pages have no single snapshot) or a failure.
    pub fn forget(&mut self) {
        self.ids.clear();
        self.seen = None;
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Option<Snapshot> {
        Some(Snapshot::parse(text).unwrap())
    }

    #[test]
    fn skips_only_products_recomputed_after_every_transaction_was_visible() {
        let mut c = Covered::new(10);
        // Nothing recorded: everything is recomputed.
        assert_eq!(c.to_recompute(["a", "b"].into_iter(), &[5]), ["a", "b"]);
        // a and b recomputed at a snapshot that saw xids below 100 except 90.
        c.record(&["a", "b"], snap("80:100:90"), false);
        // Transactions the snapshot saw: a and b are done, c is not.
        assert_eq!(c.to_recompute(["a", "c"].into_iter(), &[50, 99]), ["c"]);
        // One transaction it did not see (in progress then, or newer): recompute all.
        assert_eq!(
            c.to_recompute(["a", "c"].into_iter(), &[50, 90]),
            ["a", "c"]
        );
        assert_eq!(c.to_recompute(["a"].into_iter(), &[100]), ["a"]);
        // No transactions at all proves nothing.
        assert_eq!(c.to_recompute(["a"].into_iter(), &[]), ["a"]);
    }

    #[test]
    fn grows_under_the_old_snapshot_and_restarts_otherwise() {
        let mut c = Covered::new(3);
        c.record(&["a"], snap("80:100:"), false);
        // A covered batch adds c under the old snapshot.
        c.record(&["c"], snap("120:130:"), true);
        assert_eq!(c.len(), 2);
        assert_eq!(c.to_recompute(["a", "c", "d"].into_iter(), &[99]), ["d"]);
        // Past the cap: only the last batch, at its own snapshot.
        c.record(&["d", "e"], snap("120:130:"), true);
        assert_eq!(c.len(), 2);
        assert_eq!(c.to_recompute(["a", "d"].into_iter(), &[125]), ["a"]);
        // A batch not covered starts again from itself and its snapshot.
        c.record(&["x"], snap("200:210:"), false);
        assert_eq!(c.to_recompute(["d", "x"].into_iter(), &[205]), ["d"]);
        // No snapshot (a batch without transactions): forget.
        c.record(&["x"], None, false);
        assert!(c.is_empty());
        assert!(!c.covers(&[1]));
        // Larger than the cap on its own: nothing kept.
        c.record(&["p", "q", "r", "s"], snap("200:210:"), false);
        assert!(c.is_empty());
    }
}
