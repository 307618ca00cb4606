//! Streamed transactions (pgoutput protocol 2, `streaming 'on'`): the walsender sends a
//! large transaction while it still runs, in blocks between Stream Start and Stream Stop,
//! and ends it with Stream Commit or Stream Abort. Its changes are not visible to anyone
//! until it commits, so nothing of it can be applied before that: this module keeps, per
//! unfinished top-level transaction, the products its changes mark, and hands them to the
//! batch when the Stream Commit arrives (so they are applied at the transaction's commit
//! LSN, in commit order with every other transaction).
//!
//! - Bounded: all unfinished streams together hold at most `cap` ids (`batch.max_pending`).
//!   Past it the stream being marked keeps only the fact that it overflowed and, at its
//!   commit, the batch recomputes every product (the pass of `apply::bulk`).
//! - An abort drops the stream; the abort of a subtransaction (ROLLBACK TO SAVEPOINT)
//!   drops the products only that subtransaction marked. A product that another
//!   subtransaction or the transaction itself also marked stays: recomputing a product
//!   that did not change writes nothing, dropping one that did would lose it.
//! - Per session: a reconnect starts with no streams. The walsender sends every
//!   transaction that had not committed at the acknowledged position again from its
//!   start (first segment), so nothing kept here needs to survive the session.
//!
//! Why the checkpoint may pass an unfinished stream's first change (and does, as it did
//! for every running transaction under protocol 1): the walsender streams a transaction
//! only once it outgrows `logical_decoding_work_mem`, often long after its first change,
//! and transactions committed meanwhile were applied and acknowledged. What keeps it
//! safe is the slot: its `restart_lsn` stays before the oldest running transaction, and
//! after a restart a transaction is skipped only if its commit lies before the start
//! position. So the one rule is that a streamed transaction's commit is acknowledged only
//! by the batch that applied its products: it enters the batch with its commit LSN here,
//! and a keepalive position never passes a commit the walsender has not sent yet.

use std::collections::HashMap;

use pgwire_replication::Lsn;

use super::batch::Batch;
use super::ids::IdMap;
use super::route::{AllReason, Route};
use crate::ops::metrics::Pass;

/// The tag of a product that more than one (sub)transaction marked: no subtransaction
/// abort drops it. 0 is `InvalidTransactionId`, never a real xid.
const SHARED: u32 = 0;

/// The unfinished streamed transactions of this session.
pub struct Streams {
    open: HashMap<u32, Stream>,
    /// The top-level xid of the block being received (between Stream Start and Stop).
    block: Option<u32>,
    /// Most ids held over all unfinished streams.
    cap: usize,
    /// Ids held now over all unfinished streams.
    held: usize,
}

#[derive(Default)]
struct Stream {
    /// Each product marked, with the (sub)transaction that marked it, or [`SHARED`].
    ids: IdMap<u32>,
    /// Every product is recomputed at the commit: why, and which (sub)transaction asked
    /// (a TRUNCATE in a savepoint that is rolled back asks for nothing).
    all: Option<(u32, AllReason)>,
    /// Past the cap: the ids are gone, so every product is recomputed at the commit.
    overflow: Option<String>,
}

/// The stream arrived out of step with the protocol: a change we might have missed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(
        "Stream Start of transaction {0} marked as its first segment, but it is already streaming"
    )]
    Restarted(u32),
    #[error("Stream Start of transaction {0} continues a stream this session never began")]
    Unknown(u32),
    #[error("Stream Start of transaction {0} inside the stream block of transaction {1}")]
    Nested(u32, u32),
    #[error("Stream {0} of transaction {1}, which this session never streamed")]
    NotStreamed(&'static str, u32),
}

impl Streams {
    pub fn new(cap: usize) -> Streams {
        Streams {
            open: HashMap::new(),
            block: None,
            cap,
            held: 0,
        }
    }

    /// Stream Start: a block of `xid`'s changes follows.
    pub fn start(&mut self, xid: u32, first_segment: bool) -> Result<(), StreamError> {
        if let Some(open) = self.block {
            return Err(StreamError::Nested(xid, open));
        }
        match (first_segment, self.open.contains_key(&xid)) {
            (true, true) => return Err(StreamError::Restarted(xid)),
            (false, false) => return Err(StreamError::Unknown(xid)),
            (true, false) => {
                self.open.insert(xid, Stream::default());
            }
            (false, true) => {}
        }
        self.block = Some(xid);
        Ok(())
    }

    /// Stream Stop: the block ends.
    pub fn stop(&mut self) {
        self.block = None;
    }

    /// The top-level transaction whose block is being received.
    pub fn block(&self) -> Option<u32> {
        self.block
    }

    /// Whether any streamed transaction is unfinished.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Marks what a change of (sub)transaction `xid` in the current block routes to.
    pub fn mark(&mut self, xid: u32, route: &Route<'_>) {
        let Some(top) = self.block else {
            debug_assert!(false, "a streamed change outside a block");
            return;
        };
        let held = self.held;
        let cap = self.cap;
        let stream = self
            .open
            .get_mut(&top)
            .expect("a block belongs to an open stream");
        match route {
            Route::None => {}
            Route::All(why) => {
                stream.all = match stream.all.take() {
                    Some((tag, first)) if tag != xid => Some((SHARED, first)),
                    Some(same) => Some(same),
                    None => Some((xid, why.clone())),
                };
            }
            Route::Products(..) if stream.overflow.is_some() => {}
            Route::Products(old, new) => {
                let before = stream.ids.len();
                for id in old.iter().chain(new.iter()) {
                    stream.ids.upsert(id, xid, |tag| {
                        if *tag != xid {
                            *tag = SHARED;
                        }
                    });
                }
                self.held = held + stream.ids.len() - before;
                if self.held > cap {
                    self.held -= stream.ids.len();
                    stream.ids.clear();
                    let why = format!(
                        "streamed transaction {top} marked more than batch.max_pending \
                         ({cap}) products before its commit"
                    );
                    tracing::info!(
                        xid = top,
                        "{why}: every product is recomputed at its commit"
                    );
                    stream.overflow = Some(why);
                }
            }
        }
    }

    /// Stream Commit of `xid`: its products join the batch, with the xid (apply waits until
    /// it is visible). The caller then commits the batch at the transaction's end LSN.
    /// `seen`: a pass over every product saw the transaction (`super::passes`), so every
    /// product already has its changes once that pass commits, which is before this batch
    /// is applied; nothing of it is marked (a backlog of bulk transactions costs one pass,
    /// not one per transaction).
    pub fn commit(
        &mut self,
        xid: u32,
        commit_lsn: Lsn,
        batch: &mut Batch,
        seen: bool,
    ) -> Result<(), StreamError> {
        let stream = self
            .open
            .remove(&xid)
            .ok_or(StreamError::NotStreamed("Commit", xid))?;
        self.held -= stream.ids.len();
        batch.begin(xid, commit_lsn);
        let every = stream
            .overflow
            .map(|why| AllReason {
                pass: Pass::Bulk,
                why,
            })
            .or(stream.all.map(|(_, why)| why));
        tracing::debug!(
            xid,
            products = stream.ids.len(),
            every = every.is_some(),
            seen_by_a_pass = seen,
            "streamed transaction committed"
        );
        match every {
            _ if seen => {}
            Some(why) => batch.mark_all(why),
            None => {
                for id in stream.ids.iter() {
                    batch.mark(id);
                }
            }
        }
        Ok(())
    }

    /// Stream Abort: all of `xid` when `subxid == xid`, else the subtransaction `subxid`.
    pub fn abort(&mut self, xid: u32, subxid: u32) -> Result<(), StreamError> {
        if xid == subxid {
            let stream = self
                .open
                .remove(&xid)
                .ok_or(StreamError::NotStreamed("Abort", xid))?;
            self.held -= stream.ids.len();
            return Ok(());
        }
        let stream = self
            .open
            .get_mut(&xid)
            .ok_or(StreamError::NotStreamed("Abort", xid))?;
        let before = stream.ids.len();
        stream.ids.retain(|&tag| tag != subxid);
        self.held -= before - stream.ids.len();
        if stream.all.as_ref().is_some_and(|(tag, _)| *tag == subxid) {
            stream.all = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(batch: &Batch) -> Vec<&str> {
        let mut v: Vec<&str> = batch.ids.iter().collect();
        v.sort_unstable();
        v
    }

    fn p(id: &str) -> Route<'_> {
        Route::Products(None, Some(id))
    }

    fn truncate(table: &str) -> AllReason {
        AllReason {
            pass: Pass::Truncate,
            why: format!("TRUNCATE of {table}"),
        }
    }

    #[test]
    fn interleaved_streams_commit_and_abort_apart() {
        let mut s = Streams::new(100);
        s.start(10, true).unwrap();
        s.mark(10, &p("a"));
        s.stop();
        s.start(20, true).unwrap();
        s.mark(20, &p("b"));
        s.mark(20, &Route::Products(Some("c"), Some("d")));
        s.stop();
        s.start(10, false).unwrap();
        s.mark(10, &p("e"));
        s.stop();
        assert_eq!(s.held, 4 + 1);

        let mut batch = Batch::default();
        s.abort(20, 20).unwrap();
        s.commit(10, Lsn(10), &mut batch, false).unwrap();
        assert_eq!(ids(&batch), ["a", "e"]);
        assert_eq!(batch.xids, [10]);
        assert!(s.is_empty());
        assert_eq!(s.held, 0);
    }

    #[test]
    fn a_rolled_back_savepoint_drops_only_what_it_alone_marked() {
        let mut s = Streams::new(100);
        s.start(10, true).unwrap();
        s.mark(10, &p("top"));
        s.mark(11, &p("sub-only"));
        s.mark(11, &p("both"));
        s.mark(10, &p("both"));
        s.mark(12, &p("other-sub"));
        s.mark(11, &Route::All(truncate("Inventory")));
        s.stop();
        s.abort(10, 11).unwrap();
        let mut batch = Batch::default();
        s.commit(10, Lsn(10), &mut batch, false).unwrap();
        assert_eq!(ids(&batch), ["both", "other-sub", "top"]);
        assert!(batch.all.is_none(), "the TRUNCATE was rolled back");
    }

    #[test]
    fn a_truncate_that_stays_recomputes_every_product() {
        let mut s = Streams::new(100);
        s.start(10, true).unwrap();
        s.mark(11, &Route::All(truncate("Price")));
        s.mark(12, &Route::All(truncate("Inventory")));
        s.stop();
        // Both subtransactions asked: one rollback does not undo the other's.
        s.abort(10, 11).unwrap();
        let mut batch = Batch::default();
        s.commit(10, Lsn(10), &mut batch, false).unwrap();
        assert_eq!(
            batch.all.as_ref().map(|a| a.why.as_str()),
            Some("TRUNCATE of Price")
        );
    }

    #[test]
    fn past_the_cap_the_commit_recomputes_every_product() {
        let mut s = Streams::new(3);
        s.start(10, true).unwrap();
        s.mark(10, &p("a"));
        s.mark(10, &p("b"));
        s.stop();
        s.start(20, true).unwrap();
        s.mark(20, &p("c"));
        s.mark(20, &p("d"));
        assert_eq!(s.held, 2, "20 overflowed and gave its ids back");
        s.mark(20, &p("e"));
        assert_eq!(s.held, 2, "an overflowed stream marks nothing more");
        s.stop();
        let mut batch = Batch::default();
        s.commit(20, Lsn(20), &mut batch, false).unwrap();
        assert!(batch
            .all
            .as_ref()
            .unwrap()
            .why
            .contains("batch.max_pending"));
        let mut batch = Batch::default();
        s.commit(10, Lsn(10), &mut batch, false).unwrap();
        assert_eq!(ids(&batch), ["a", "b"]);
        assert_eq!(s.held, 0);
    }

    #[test]
    fn a_transaction_a_pass_saw_marks_nothing() {
        let mut s = Streams::new(1);
        s.start(10, true).unwrap();
        s.mark(10, &p("a"));
        s.mark(10, &p("b"));
        s.stop();
        let mut batch = Batch::default();
        s.commit(10, Lsn(10), &mut batch, true).unwrap();
        assert!(batch.all.is_none() && batch.ids.is_empty(), "{batch:?}");
        assert_eq!(batch.xids, [10], "still waited for and counted");
    }

    #[test]
    fn out_of_step_messages_are_errors() {
        let mut s = Streams::new(10);
        assert!(matches!(s.start(5, false), Err(StreamError::Unknown(5))));
        s.start(5, true).unwrap();
        assert!(matches!(s.start(6, true), Err(StreamError::Nested(6, 5))));
        s.stop();
        assert!(matches!(s.start(5, true), Err(StreamError::Restarted(5))));
        let mut batch = Batch::default();
        assert!(s.commit(6, Lsn(6), &mut batch, false).is_err());
        assert!(s.abort(6, 7).is_err());
        assert!(s.abort(5, 9).is_ok(), "a subtransaction we saw nothing of");
    }
}
