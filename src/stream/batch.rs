//! Batch: dirty product ids coalesce across transactions until apply is free, or the
//! `max_pending` bound is hit. Under backlog apply stays busy, so batches grow and the
//! cost follows the number of distinct products rather than the number of changes.

use std::time::{Duration, SystemTime};

use pgwire_replication::Lsn;

use super::ids::IdSet;
use super::route::AllReason;

/// The work handed to apply at once (applied in parts of `max_products`).
#[derive(Debug, Default)]
pub struct Batch {
    /// Products to recompute.
    pub ids: IdSet,
    /// Recompute every product (TRUNCATE, or a delete without a product id): why.
    pub all: Option<AllReason>,
    /// Every change up to this LSN (a commit's end, or an idle keepalive position) is
    /// covered by this batch and the ones before it; stored as the checkpoint.
    pub lsn: Option<Lsn>,
    /// Commit time (µs since 2000-01-01) of the newest transaction in the batch, for
    /// the apply-latency metric.
    pub commit_time_micros: Option<i64>,
    /// Commit time of the oldest transaction in the batch.
    pub oldest_commit_micros: Option<i64>,
    /// Transaction ids of the transactions in the batch: apply waits until they are
    /// visible before it reads the source (see `Applier::apply`).
    pub xids: Vec<u32>,
    /// Where the commit record of the newest of those transactions begins (pgoutput's
    /// Begin `final_lsn`; known before its changes, also for one cut short). Commits are
    /// streamed in WAL order, so it bounds them all: a snapshot taken before that position
    /// cannot have seen the batch whole (`pg::snapshot::Seen`).
    pub last_commit_lsn: Option<Lsn>,
    /// Row changes that contributed (for throughput metrics).
    pub changes: u64,
    /// Of those, changes not marked: a pass over every product saw their transaction
    /// (`bulk`).
    pub covered: u64,
    /// Transactions that contributed.
    pub transactions: u64,
}

impl Batch {
    pub fn mark(&mut self, id: &str) {
        if self.all.is_none() {
            self.ids.insert(id);
        }
    }

    pub fn mark_all(&mut self, why: AllReason) {
        self.ids.clear();
        self.all.get_or_insert(why);
    }

    /// A transaction began (its commit record at `final_lsn`); its changes follow.
    pub fn begin(&mut self, xid: u32, final_lsn: Lsn) {
        self.xids.push(xid);
        self.last_commit_lsn = Some(final_lsn);
    }

    /// A transaction ended: everything up to `end_lsn` is in this batch.
    pub fn commit(&mut self, end_lsn: Lsn, commit_time_micros: i64) {
        self.lsn = Some(end_lsn);
        self.commit_time_micros = Some(commit_time_micros);
        self.oldest_commit_micros.get_or_insert(commit_time_micros);
        self.transactions += 1;
    }

    /// Products marked so far (the size bound).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.all.is_none() && self.lsn.is_none()
    }

    /// Whether there is anything worth a transaction: a committed change, or products
    /// marked in a transaction still being received (flushed only when the batch is
    /// full, to bound memory; the checkpoint then stays at the last commit).
    pub fn has_commit(&self) -> bool {
        self.lsn.is_some()
    }

    pub fn take(&mut self) -> Batch {
        std::mem::take(self)
    }

    /// Commit time of the newest transaction, as wall-clock time.
    pub fn commit_time(&self) -> Option<SystemTime> {
        self.commit_time_micros.map(pg_time)
    }

    /// Commit time of the oldest transaction, as wall-clock time.
    pub fn oldest_commit_time(&self) -> Option<SystemTime> {
        self.oldest_commit_micros.map(pg_time)
    }
}

/// Converts pgoutput's commit time (µs since 2000-01-01) to wall-clock time.
fn pg_time(micros: i64) -> SystemTime {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    if micros >= 0 {
        base + Duration::from_micros(micros as u64)
    } else {
        base - Duration::from_micros(micros.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_and_takes() {
        let mut b = Batch::default();
        assert!(b.is_empty());
        b.mark("p1");
        b.mark("p1");
        b.mark("p2");
        assert!(!b.has_commit());
        b.commit(Lsn(100), 1);
        b.mark("p1");
        b.commit(Lsn(200), 2);
        assert_eq!(b.len(), 2);
        let t = b.take();
        assert_eq!(t.lsn, Some(Lsn(200)));
        assert_eq!(t.oldest_commit_micros, Some(1));
        assert_eq!(t.transactions, 2);
        assert!(b.is_empty());
    }

    #[test]
    fn pg_epoch() {
        let t = pg_time(0);
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            946_684_800
        );
        assert!(pg_time(-1) < t);
    }

    #[test]
    fn all_absorbs_ids() {
        let mut b = Batch::default();
        b.mark("p1");
        let truncate = AllReason {
            pass: crate::ops::metrics::Pass::Truncate,
            why: "TRUNCATE of Price".into(),
        };
        b.mark_all(truncate.clone());
        b.mark("p2");
        assert_eq!(b.len(), 0);
        assert_eq!(b.all, Some(truncate));
    }
}
