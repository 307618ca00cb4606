//! Passes over every product, as the stream loop sees them. Apply publishes the snapshot of
//! each pass (`apply::bulk`) before the pass reads anything; a change of a transaction that
//! snapshot saw is already in the summary once the pass commits, so the stream loop drops
//! it instead of marking its product dirty.

use pgwire_replication::Lsn;
use tokio::sync::watch;

use crate::pg::snapshot::Seen;

/// What the stream loop knows of the passes over every product in this session: the
/// snapshot of the newest one, published by apply before the pass reads anything.
/// Apply takes batches in order, so a batch handed over after the pass is applied after
/// the pass committed; if the pass fails, the session ends and the stream restarts from
/// the checkpoint, before any change dropped here.
///
/// The snapshot judges only transactions that committed before it was taken ([`Seen`]):
/// the first streamed transaction that committed later ends its use, and it is forgotten,
/// so a snapshot never lives long enough for a newer xid to look like one it saw.
pub struct Passes {
    rx: watch::Receiver<Option<Seen>>,
    /// The newest pass's snapshot while it can still judge what is streamed.
    current: Option<Seen>,
    /// The last transaction asked about (xid, commit LSN), and the answer.
    last: Option<((u32, Lsn), bool)>,
}

impl Passes {
    pub fn channel() -> (watch::Sender<Option<Seen>>, Passes) {
        let (tx, rx) = watch::channel(None);
        let passes = Passes {
            rx,
            current: None,
            last: None,
        };
        (tx, passes)
    }

    /// Whether a pass saw transaction `txn` (its xid and the LSN of its commit record,
    /// pgoutput's Begin `final_lsn`): its changes need not be marked dirty. (A newer
    /// pass's snapshot sees whatever an older one saw, so only the newest counts.)
    pub fn saw(&mut self, txn: Option<(u32, Lsn)>) -> bool {
        let Some(txn) = txn else { return false };
        if self.rx.has_changed().unwrap_or(false) {
            self.current = self.rx.borrow_and_update().clone();
            self.last = None;
        }
        match self.last {
            Some((t, saw)) if t == txn => saw,
            _ => {
                let (xid, commit) = txn;
                let saw = match &self.current {
                    Some(s) if s.passed_by(commit) => {
                        tracing::debug!(
                            commit = %commit,
                            bound = %s.wal,
                            "the stream passed the last pass's snapshot; forgetting it"
                        );
                        self.current = None;
                        false
                    }
                    Some(s) => s.saw(xid, commit),
                    None => false,
                };
                self.last = Some((txn, saw));
                saw
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::snapshot::Snapshot;

    fn pass(text: &str, wal: u64) -> Option<Seen> {
        Some(Seen {
            snapshot: Snapshot::parse(text).unwrap(),
            wal: Lsn(wal),
        })
    }

    #[test]
    fn a_pass_covers_the_transactions_its_snapshot_saw() {
        let (tx, mut passes) = Passes::channel();
        let at = |xid, lsn| Some((xid, Lsn(lsn)));
        assert!(!passes.saw(at(50, 10)), "no pass yet");
        tx.send_replace(pass("100:120:105", 1000));
        assert!(passes.saw(at(50, 10)));
        assert!(passes.saw(at(50, 10)), "asked twice");
        assert!(!passes.saw(at(105, 20)), "in progress when the pass began");
        assert!(!passes.saw(at(120, 30)), "newer than the pass");
        assert!(!passes.saw(None), "outside a transaction");
        // A newer pass answers anew for the same transaction.
        assert!(!passes.saw(at(105, 20)));
        tx.send_replace(pass("130:130:", 2000));
        assert!(passes.saw(at(105, 20)));
    }

    /// Issue 18: a pass's snapshot kept for the session judged a transaction 2^32 xids
    /// later (the same low 32 bits) as one it saw, and the stream dropped its changes.
    /// A transaction committed past the snapshot's WAL bound is not seen, and the
    /// snapshot is forgotten: nothing streamed after it is judged by it any more.
    #[test]
    fn a_pass_is_forgotten_once_the_stream_passed_its_bound() {
        let (tx, mut passes) = Passes::channel();
        tx.send_replace(pass("100:120:105", 1000));
        assert!(passes.saw(Some((50, Lsn(900)))));
        // Epoch+1, same low bits, committed long after the pass.
        assert!(!passes.saw(Some((50, Lsn(1000)))));
        // Forgotten: not even a (made-up) earlier commit is judged by it now.
        assert!(!passes.saw(Some((51, Lsn(901)))));
        // A new pass is used again.
        tx.send_replace(pass("200:210:", 3000));
        assert!(passes.saw(Some((51, Lsn(2500)))));
    }
}
