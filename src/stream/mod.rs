//! The stream stage: WAL in, batches of dirty product ids out, acknowledgements back.
//!
//! `pgwire-replication` holds the replication connection ([`stream_loop`] reads its
//! events); [`pgoutput`] decodes each change, [`route`] turns it into the products it may
//! affect, [`batch`] coalesces them ([`ids`] keeps the set compact) until apply is free,
//! and [`passes`] drops the changes a pass over every product already read. The LSN apply
//! committed is the only one ever acknowledged to the slot. [`streams`] keeps the products
//! of large transactions the walsender streams before they commit (protocol 2) until their
//! commit. [`silence`] tells a dead connection from a walsender that is busy decoding for
//! us.

pub mod batch;
pub mod ids;
pub mod passes;
pub mod pgoutput;
pub mod route;
pub mod silence;
pub mod streams;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant as Deadline;

use crate::config::Config;
use crate::error::definite;
use crate::ops::metrics::Metrics;
use batch::Batch;
use passes::Passes;
use pgoutput::LogicalMessage;
use route::{Route, Router};
use silence::Silence;
use streams::Streams;

/// The stream loop's ends of the handover to the apply task: batches go one way, the
/// checkpoint each stored (or the error that ended it) comes back, one answer per batch,
/// and so does the snapshot of each pass over every product ([`Passes`]).
pub struct Handover {
    pub batches: mpsc::Sender<Batch>,
    pub applied: mpsc::Receiver<anyhow::Result<Option<Lsn>>>,
    pub passes: Passes,
}

/// Reads events, batches, hands batches to apply, and acknowledges what apply committed.
/// Returns the last acknowledged LSN on shutdown.
///
/// One `select!`, arms in priority order (`biased`):
/// 1. apply finished a batch: acknowledge its checkpoint ([`LoopState::applied`]);
/// 2. the stream was silent for three heartbeats while we were reading: ask the server
///    whether the connection is dead or the walsender busy for us ([`Silence::judge`]);
///    end the session on the first, keep waiting on the second;
/// 3. shutdown asked: stop reading, finish the batch in flight;
/// 4. an event from the stream ([`LoopState::on_event`]).
///
/// Between two selects the batch is handed over when apply is free and the batch holds a
/// commit or is full: at once when idle (latency), larger under backlog because apply is
/// busy meanwhile (throughput).
pub async fn stream_loop(
    cfg: &Config,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
    stream: &mut ReplicationClient,
    apply: &mut Handover,
    start: Lsn,
    mut silence: Silence,
) -> anyhow::Result<Lsn> {
    let mut shutdown = shutdown.clone();
    let mut state = LoopState::new(cfg, start);
    loop {
        if state.ready_to_hand_over() {
            let batch = state.hand_over();
            metrics.record_batch(batch.len());
            apply
                .batches
                .send(batch)
                .await
                .map_err(|_| anyhow::anyhow!("apply task ended unexpectedly"))?;
            if let Some(pause) = crate::failpoints::stall(crate::failpoints::STREAM_STALL) {
                tracing::warn!(?pause, "failpoint stream-stall: the stream loop pauses");
                tokio::time::sleep(pause).await;
                // The pause is the loop's own, not the stream's silence.
                state.heard = Deadline::now();
            }
        }
        if state.stopping && !state.in_flight {
            if state.batch.is_empty() {
                return Ok(state.acked);
            }
            // Products of a transaction cut short by the shutdown: recompute them anyway
            // (harmless); the checkpoint stays at the last commit.
            state.batch.lsn.get_or_insert(state.acked);
            continue;
        }
        tokio::select! {
            biased;
            done = apply.applied.recv() => {
                let done = done.ok_or_else(|| anyhow::anyhow!("apply task ended unexpectedly"))?;
                if let Some(lsn) = state.applied(done?) {
                    stream.update_applied_lsn(lsn);
                }
            }
            _ = tokio::time::sleep_until(state.heard + silence.after()), if state.can_read() => {
                silence.judge().await?;
                state.heard = Deadline::now();
            }
            _ = shutdown.wait_for(|s| *s), if !state.stopping => {
                tracing::info!("shutdown requested: finishing the batch in flight");
                state.stopping = true;
            }
            event = stream.recv(), if state.can_read() => {
                let event = event
                    .context("replication stream")?
                    .ok_or_else(|| anyhow::Error::new(std::io::Error::other("replication stream ended")))?;
                silence.heard();
                state.on_event(event, metrics, &mut apply.passes)?;
            }
        }
    }
}

/// Everything the stream loop knows between two events.
struct LoopState {
    /// The batch being filled.
    batch: Batch,
    /// A batch is with apply. Apply takes one at a time, in order, so a batch handed over
    /// later is applied after every earlier one committed.
    in_flight: bool,
    /// The transaction being received, between its Begin and its Commit: its xid and
    /// where its commit record begins (Begin's `final_lsn`).
    open: Option<(u32, Lsn)>,
    /// The last checkpoint apply committed, acknowledged to the slot. Only moves forward.
    acked: Lsn,
    /// Shutdown was asked for: nothing more is read, the batch in flight is finished.
    stopping: bool,
    /// When an idle keepalive last moved the checkpoint.
    last_idle_advance: Instant,
    /// When the stream (or apply) was last heard from, for the silence rule.
    heard: Deadline,
    /// `batch.max_pending`: a batch this large is handed over even mid-transaction, and
    /// nothing more is read until it is.
    max_pending: usize,
    router: Router,
    /// Streamed transactions not yet committed or aborted. A new session starts with
    /// none: the walsender sends each again from its start.
    streams: Streams,
}

impl LoopState {
    fn new(cfg: &Config, start: Lsn) -> LoopState {
        LoopState {
            batch: Batch::default(),
            in_flight: false,
            open: None,
            acked: start,
            stopping: false,
            last_idle_advance: Instant::now(),
            heard: Deadline::now(),
            max_pending: cfg.batch.max_pending,
            router: Router::new(&cfg.tables.schema, &cfg.tables.sources),
            streams: Streams::new(cfg.batch.max_pending),
        }
    }

    /// Apply is free and the batch holds a commit, or is full.
    fn ready_to_hand_over(&self) -> bool {
        !self.in_flight && (self.batch.has_commit() || self.batch.len() >= self.max_pending)
    }

    /// Whether the loop reads the stream (and counts its silence): not stopping, and room
    /// in the batch. A full batch waits for apply; the stream waits with it.
    fn can_read(&self) -> bool {
        !self.stopping && self.batch.len() < self.max_pending
    }

    /// Nothing received is unapplied: no open transaction, no batch with apply, nothing in
    /// the batch. Only then may the checkpoint move past what apply stored.
    fn is_idle(&self) -> bool {
        let idle = self.open.is_none() && !self.in_flight && self.batch.is_empty();
        // `Batch::is_empty` does not look at the xids it carries. A batch carries an xid
        // without a commit only while that transaction is open (a cut carries it on), so an
        // idle batch carries none, and moving the checkpoint skips no transaction.
        debug_assert!(!idle || self.batch.xids.is_empty(), "idle batch with xids");
        idle
    }

    /// Takes the batch for apply. The rest of a transaction cut by the handover belongs to
    /// the next batch: its xid goes along, for the visibility wait and for `Covered`.
    fn hand_over(&mut self) -> Batch {
        debug_assert!(!self.in_flight, "one batch with apply at a time");
        let batch = self.batch.take();
        if let Some((xid, final_lsn)) = self.open {
            self.batch.begin(xid, final_lsn);
        }
        self.in_flight = true;
        batch
    }

    /// Apply committed the batch in flight, with `lsn` as its checkpoint (none for a cut
    /// mid-transaction). Returns the LSN to acknowledge, if it moved forward.
    fn applied(&mut self, lsn: Option<Lsn>) -> Option<Lsn> {
        debug_assert!(self.in_flight, "an answer without a batch in flight");
        self.in_flight = false;
        self.heard = Deadline::now();
        let lsn = lsn.filter(|&l| l > self.acked)?;
        self.acked = lsn;
        Some(lsn)
    }

    fn on_event(
        &mut self,
        event: ReplicationEvent,
        metrics: &Metrics,
        passes: &mut Passes,
    ) -> anyhow::Result<()> {
        self.heard = Deadline::now();
        match event {
            ReplicationEvent::Begin { xid, final_lsn, .. } => {
                debug_assert!(self.open.is_none(), "Begin inside a transaction");
                self.open = Some((xid, final_lsn));
                self.batch.begin(xid, final_lsn);
            }
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                self.open = None;
                self.batch.commit(end_lsn, commit_time_micros);
            }
            ReplicationEvent::XLogData { data, .. } => self.on_change(&data, metrics, passes)?,
            ReplicationEvent::KeepAlive { wal_end, .. } => self.on_keepalive(wal_end),
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::StoppedAt { .. } => {
                anyhow::bail!("replication stopped at a stop LSN we never set")
            }
        }
        Ok(())
    }

    /// A pgoutput message: decoded, routed to product ids, marked in the batch (or, for a
    /// change of a streamed transaction, kept with its stream until the commit).
    fn on_change(
        &mut self,
        data: &bytes::Bytes,
        metrics: &Metrics,
        passes: &mut Passes,
    ) -> anyhow::Result<()> {
        let (sub, msg) = match self.streams.block() {
            Some(_) => pgoutput::decode_in_stream(data),
            None => pgoutput::decode(data).map(|m| (None, m)),
        }
        .context("decoding pgoutput")?;
        if self.on_stream_message(&msg, passes)? {
            return Ok(());
        }
        let (route, counted) = self
            .router
            .route(&msg)
            .map_err(|e| definite(e.to_string()))?;
        if let Some((table, op)) = counted {
            metrics.record_change(table, op.as_str());
            self.batch.changes += 1;
        }
        match (route, sub) {
            (Route::None, _) => {}
            // A change of a streamed transaction: kept with its stream. Its commit LSN is
            // not known before the Stream Commit, so no pass can be judged to have seen it
            // here; the commit asks again (`on_stream_message`).
            (route, Some(sub)) => {
                if let Route::All(why) = &route {
                    tracing::warn!(reason = %why, xid = self.streams.block(), "recomputing every product if the streamed transaction commits");
                }
                self.streams.mark(sub, &route);
            }
            // A pass over every product saw this transaction: nothing to mark.
            (Route::Products(..), None) if passes.saw(self.open) => self.batch.covered += 1,
            (Route::Products(old, new), None) => {
                for id in old.into_iter().chain(new) {
                    self.batch.mark(id);
                }
            }
            (Route::All(why), None) => {
                // Once per batch: a weakened identity makes every update say it.
                if self.batch.all.is_none() {
                    tracing::warn!(reason = %why, "recomputing every product");
                }
                self.batch.mark_all(why);
            }
        }
        // Every Relation message says again what identity the table's changes carry.
        if let pgoutput::LogicalMessage::Relation(rel) = &msg {
            if let Some(weak) = self.router.weak_identity(rel.id) {
                metrics.set_replica_identity_weak(&rel.name, weak);
            }
        }
        Ok(())
    }

    /// Stream Start, Stop, Commit and Abort (protocol 2); true when `msg` was one. A
    /// stream commit joins the batch at its commit LSN, in commit order with the others.
    fn on_stream_message(
        &mut self,
        msg: &LogicalMessage,
        passes: &mut Passes,
    ) -> anyhow::Result<bool> {
        let out_of_step = |e: streams::StreamError| {
            definite(format!(
                "{e}: the replication stream is out of step. If a proxy sits between the \
                 worker and Postgres, connect directly, or set pgoutput_protocol = 1"
            ))
        };
        match *msg {
            LogicalMessage::StreamStart { xid, first_segment } => self
                .streams
                .start(xid, first_segment)
                .map_err(out_of_step)?,
            LogicalMessage::StreamStop => self.streams.stop(),
            LogicalMessage::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time_micros,
                ..
            } => {
                let commit_lsn = Lsn(commit_lsn);
                let seen = passes.saw(Some((xid, commit_lsn)));
                self.streams
                    .commit(xid, commit_lsn, &mut self.batch, seen)
                    .map_err(out_of_step)?;
                self.batch.commit(Lsn(end_lsn), commit_time_micros);
            }
            LogicalMessage::StreamAbort { xid, subxid } => {
                self.streams.abort(xid, subxid).map_err(out_of_step)?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Nothing of ours lies before `wal_end` that is not applied when the loop is idle:
    /// move the checkpoint (and so the slot) there, so idle periods and WAL of other tables
    /// never pile up behind the slot. Throttled; heartbeats do the rest.
    fn on_keepalive(&mut self, wal_end: Lsn) {
        if self.is_idle()
            && wal_end > self.acked
            && self.last_idle_advance.elapsed() >= Duration::from_secs(1)
        {
            self.last_idle_advance = Instant::now();
            self.batch.lsn = Some(wal_end);
        }
    }
}
