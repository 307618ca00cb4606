//! The apply stage: one batch of dirty products in, the summary rows, their cache tags in
//! the outbox and the checkpoint out, in one database transaction per part.
//!
//! [`applier`] owns the apply connection and its statements (built in [`crate::shop::sql`]
//! from the shop's layout); [`visibility`] waits until the batch's source transactions can
//! be read; [`covered`] skips products an earlier recompute already read with every
//! transaction of the batch visible; [`bulk`] turns a batch that rewrites a large share of
//! the catalog into one pass over every product.

pub mod applier;
pub mod bulk;
pub mod covered;
pub mod visibility;

use std::sync::Arc;
use std::time::Instant;

use pgwire_replication::Lsn;
use tokio::sync::{mpsc, watch};

pub use applier::{Applied, Applier, TagMode};
use bulk::Bulk;
use covered::Covered;

use crate::config::Config;
use crate::ops::metrics::{Metrics, Pass};
use crate::pg::snapshot::Seen;
use crate::stream::batch::Batch;
use crate::stream::passes::Passes;
use crate::stream::Handover;

/// Spawns the apply task: it takes the batches of the returned [`Handover`] one at a time,
/// in order, and answers each with the checkpoint it stored, or with the error that ends
/// it (and the task); it publishes the snapshot of each pass over every product there.
/// `enqueued` is bumped when the outbox got rows (wakes the deliverers), `held` when tags
/// were held (wakes their release).
///
/// The apply connection is the leader's session (`control::leader`), which the server ends
/// when it is idle for two heartbeats and a little: that limit must measure whether this
/// process is alive, not whether WAL flows (a long decode sends nothing for minutes). So
/// when no batch came for a heartbeat, the task sends an empty query on it. The task owns
/// the connection and does one thing at a time, so the ping never lands inside an apply
/// transaction; if this process hangs or its network is gone, the pings stop and the
/// server ends the session for a standby to take over.
pub fn spawn(
    mut applier: Applier,
    cfg: &Config,
    metrics: Arc<Metrics>,
    enqueued: Arc<watch::Sender<u64>>,
    held: watch::Sender<u64>,
) -> (Handover, tokio::task::JoinHandle<()>) {
    // The stream loop hands a batch over only once apply answered the last one.
    let (batch_tx, mut batch_rx) = mpsc::channel::<Batch>(1);
    let (done_tx, done_rx) = mpsc::channel(1);
    let (passes_tx, passes) = Passes::channel();
    let mut covered = Covered::new(cfg.batch.max_pending);
    let bulk = Bulk::new(cfg);
    let keepalive = cfg.heartbeat();
    let task = tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                batch = batch_rx.recv() => batch,
                _ = tokio::time::sleep(keepalive) => {
                    if let Err(e) = applier.keep_alive().await {
                        // Ends the session (the stream loop takes it as the answer).
                        let _ = done_tx.send(Err(e)).await;
                        break;
                    }
                    continue;
                }
            };
            let Some(batch) = batch else { break };
            let result = apply_batch(
                &mut applier,
                &mut covered,
                &bulk,
                &passes_tx,
                batch,
                &metrics,
            )
            .await;
            if let Ok((a, _)) = &result {
                if a.enqueued() {
                    enqueued.send_modify(|n| *n += 1);
                }
                if a.throttled > 0 {
                    held.send_modify(|n| *n += 1);
                }
            }
            let result = result.map(|(_, lsn)| lsn);
            let failed = result.is_err();
            if done_tx.send(result).await.is_err() || failed {
                break;
            }
        }
    });
    let handover = Handover {
        batches: batch_tx,
        applied: done_rx,
        passes,
    };
    (handover, task)
}

/// Applies one batch; returns what it did and the LSN it stored as the checkpoint.
async fn apply_batch(
    applier: &mut Applier,
    covered: &mut Covered,
    bulk: &Bulk,
    passes: &watch::Sender<Option<Seen>>,
    batch: Batch,
    metrics: &Metrics,
) -> anyhow::Result<(Applied, Option<Lsn>)> {
    let commit = batch.commit_time();
    let oldest = batch.oldest_commit_time();
    let last_commit = batch.last_commit_lsn;
    // Past what the covered set's snapshot may judge: it covers no batch from here on.
    covered.passed(last_commit);
    let mut skipped = 0;
    let pass = match &batch.all {
        Some(all) => Some(all.pass),
        // Not when an earlier pass already saw all of the batch: nothing to recompute
        // then (and no catalog estimate to read).
        None if !covered.saw_all(&batch.xids, last_commit) => {
            match bulk.escalates(applier.client(), batch.len()).await? {
                Some(why) => {
                    tracing::info!(reason = %why, "recomputing every product");
                    Some(Pass::Bulk)
                }
                None => None,
            }
        }
        None => None,
    };
    let applied = if let Some(pass) = pass {
        metrics.record_pass(pass);
        // The snapshot before the pass lists anything: every product it then reads
        // has the changes of the transactions this snapshot saw. The stream loop may
        // drop their further changes from here on (`stream::passes`).
        let seen = visibility::wait_visible(applier.client(), &batch.xids).await?;
        if let Some(s) = &seen {
            passes.send_replace(Some(s.clone()));
        }
        covered.forget();
        let started = Instant::now();
        let a = applier.apply_all(batch.lsn, commit, |_| {}).await?;
        if let Some(s) = seen {
            covered.record_every(s);
        }
        tracing::info!(
            products = a.products,
            written = a.rows_written(),
            seconds = started.elapsed().as_secs_f64(),
            "recomputed every product"
        );
        a
    } else {
        let extends = covered.covers(&batch.xids, last_commit);
        let mut ids = covered
            .to_recompute(applier.client(), batch.ids.iter(), &batch.xids, last_commit)
            .await?;
        skipped = batch.ids.len() - ids.len();
        let (applied, seen) = applier
            .apply_seen(&mut ids, &batch.xids, batch.lsn, commit)
            .await?;
        covered
            .record(applier.client(), &ids, seen, extends)
            .await?;
        applied
    };
    metrics.skipped_products.inc_by(skipped as u64);
    metrics.record_applied(commit, oldest);
    metrics.rows_written.inc_by(applied.rows_written() as u64);
    metrics.held_coalesced.inc_by(applied.coalesced as u64);
    metrics.held_released.inc_by(applied.released as u64);
    tracing::debug!(
        products = applied.products,
        skipped,
        inserted = applied.inserted,
        updated = applied.updated,
        deleted = applied.deleted,
        tags = applied.tags,
        throttled = applied.throttled,
        coalesced = applied.coalesced,
        released = applied.released,
        transactions = batch.transactions,
        changes = batch.changes,
        covered_changes = batch.covered,
        lsn = ?batch.lsn.map(|l| l.to_string()),
        "applied batch"
    );
    Ok((applied, batch.lsn))
}
