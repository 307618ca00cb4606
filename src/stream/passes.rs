//! Passes over every product, as the stream loop sees them. Apply publishes the snapshot of
//! each pass (`apply::bulk`) before the pass reads anything; a change of a transaction that
//! snapshot saw is already in the summary once the pass commits, so the stream loop drops
//! it instead of marking its product dirty.

use tokio::sync::watch;

use crate::pg::snapshot::Snapshot;

/// What the stream loop knows of the passes over every product in this session: the
/// snapshot of the newest one, published by apply before the pass reads anything.
/// Apply takes batches in order, so a batch handed over after the pass is applied after
/// the pass committed; if the pass fails, the session ends and the stream restarts from
/// the checkpoint, before any change dropped here.
pub struct Passes {
    rx: watch::Receiver<Option<Snapshot>>,
    /// The last transaction asked about, and the answer.
    last: Option<(u32, bool)>,
}

impl Passes {
    pub fn channel() -> (watch::Sender<Option<Snapshot>>, Passes) {
        let (tx, rx) = watch::channel(None);
        (tx, Passes { rx, last: None })
    }

    /// Whether a pass saw transaction `xid`: its changes need not be marked dirty. (A
    /// newer pass's snapshot sees whatever an older one saw, so only the newest counts.)
    pub fn saw(&mut self, xid: Option<u32>) -> bool {
        let Some(xid) = xid else { return false };
        if self.rx.has_changed().unwrap_or(false) {
            self.last = None;
        }
        match self.last {
            Some((x, saw)) if x == xid => saw,
            _ => {
                let saw = self
                    .rx
                    .borrow_and_update()
                    .as_ref()
                    .is_some_and(|s| s.sees(s.xid8(xid)));
                self.last = Some((xid, saw));
                saw
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_covers_the_transactions_its_snapshot_saw() {
        let (tx, mut passes) = Passes::channel();
        assert!(!passes.saw(Some(50)), "no pass yet");
        tx.send_replace(Some(Snapshot::parse("100:120:105").unwrap()));
        assert!(passes.saw(Some(50)));
        assert!(passes.saw(Some(50)), "asked twice");
        assert!(!passes.saw(Some(105)), "in progress when the pass began");
        assert!(!passes.saw(Some(120)), "newer than the pass");
        assert!(!passes.saw(None), "outside a transaction");
        // A newer pass answers anew for the same transaction.
        assert!(!passes.saw(Some(105)));
        tx.send_replace(Some(Snapshot::parse("130:130:").unwrap()));
        assert!(passes.saw(Some(105)));
    }
}
