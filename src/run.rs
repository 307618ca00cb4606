//! `cdc-worker run`: the daemon. Takes leadership, streams the slot, and pipelines
//! decode → route → batch on this task with apply on another, so reading the WAL never
//! waits for the database while there is room in the batch. Reconnects with backoff on
//! transient errors; stops with a clear message on definite ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};

use crate::apply::{pg_time, Applied, Applier};
use crate::batch::Batch;
use crate::bulk::{Bulk, Passes};
use crate::config::Config;
use crate::covered::Covered;
use crate::db::Database;
use crate::error::{definite, is_transient};
use crate::leader;
use crate::metrics::Metrics;
use crate::pgoutput;
use crate::route::{Route, Router};
use crate::slot;

/// How often the acknowledged LSN reaches the server.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// Shared between the run loop and the tasks around it.
pub struct Context {
    pub cfg: Config,
    pub db: Database,
    pub metrics: Arc<Metrics>,
    /// Becomes true on SIGTERM/SIGINT.
    pub shutdown: watch::Receiver<bool>,
    /// Bumped after a batch enqueued tags, to wake the deliverers.
    pub outbox_enqueued: Arc<watch::Sender<u64>>,
}

/// Runs sessions until shutdown, retrying transient failures with backoff.
pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(500);
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let started = Instant::now();
        let result = session(ctx).await;
        ctx.metrics.set_streaming(false);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if is_transient(&e) || slot_lost_while_streaming(&e) => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(500);
                }
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "replication session ended; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One connection's worth of streaming. Returns Ok on shutdown.
async fn session(ctx: &Context) -> anyhow::Result<()> {
    let cfg = &ctx.cfg;
    // The apply connection carries the leader lock, so leadership ends with it.
    let client = ctx
        .db
        .connect("cdc-worker/apply")
        .await
        .with_context(|| format!("connecting to {}", ctx.db.display()))?;
    // A pooler first (simple queries only): through one, any prepared statement could
    // fail with a confusing message before the clear one.
    leader::refuse_pooler(&ctx.db, &client, cfg).await?;
    crate::server::check_version(&client).await?;
    if !leader::wait_for_leadership(&client, cfg, &ctx.shutdown).await? {
        return Ok(());
    }
    slot::ensure_state(&client, cfg).await?;
    let mut applier = Applier::new(client, cfg).await?;
    let mode = slot::Mode {
        setup: false,
        tags: true,
    };
    let start = slot::prepare(cfg, &mut applier, mode).await?;
    crate::server::log_slot_state(applier.client(), &cfg.slot, cfg.failover_slot).await;
    if let Some(r) = &start.recovered {
        ctx.metrics.record_recovery(r.reason.label(), r.recreated);
    }
    let start = start.lsn;

    let repl_cfg = ctx
        .db
        .replication(&cfg.slot, &cfg.publication)
        .with_start_lsn(start)
        .with_status_interval(STATUS_INTERVAL)
        .with_wakeup_interval(Duration::from_secs(5));
    let mut stream = ReplicationClient::connect(repl_cfg)
        .await
        .context("opening the replication connection")?;
    stream
        .wait_started()
        .await
        .context("starting replication")?;
    tracing::info!(slot = %cfg.slot, from = %start, "streaming");
    ctx.metrics.set_streaming(true);

    // Apply runs on its own task, one batch at a time; the run loop keeps reading and
    // batching meanwhile, and hands over the next batch when this one is done.
    let (batch_tx, mut batch_rx) = mpsc::channel::<Batch>(1);
    let (done_tx, mut done_rx) = mpsc::channel::<anyhow::Result<Option<Lsn>>>(1);
    let metrics = ctx.metrics.clone();
    let enqueued = ctx.outbox_enqueued.clone();
    // Bumped when apply held tags of throttled templates, to wake their release.
    let (held_tx, held_rx) = watch::channel(0u64);
    let mut covered = Covered::new(cfg.batch.max_pending);
    let bulk = Bulk::new(cfg);
    // Apply publishes the snapshot of each pass over every product here; the stream loop
    // drops the changes of transactions it saw.
    let (pass_tx, passes) = Passes::channel();
    let apply_task = tokio::spawn(async move {
        while let Some(batch) = batch_rx.recv().await {
            let result =
                apply_batch(&mut applier, &mut covered, &bulk, &pass_tx, batch, &metrics).await;
            if let Ok((a, _)) = &result {
                if a.enqueued() {
                    enqueued.send_modify(|n| *n += 1);
                }
                if a.throttled > 0 {
                    held_tx.send_modify(|n| *n += 1);
                }
            }
            let result = result.map(|(_, lsn)| lsn);
            let failed = result.is_err();
            if done_tx.send(result).await.is_err() || failed {
                break;
            }
        }
    });

    let heartbeat = tokio::spawn(heartbeat(ctx.db.clone(), cfg.heartbeat()));
    // Delivery runs beside the stream and never holds it up: Next.js being down only
    // lets tags wait in the outbox.
    let mut deliverers =
        crate::deliver::spawn(cfg, &ctx.db, ctx.metrics.clone(), &ctx.outbox_enqueued);
    if !cfg.revalidate.urls.is_empty() {
        // Held tags (revalidate.min_interval_ms) go into the outbox when due, also those
        // held before a restart or by another process.
        deliverers.push(crate::hold::spawn(
            cfg,
            &ctx.db,
            ctx.metrics.clone(),
            held_rx,
            ctx.outbox_enqueued.clone(),
        ));
    }
    let result = stream_loop(ctx, &mut stream, &batch_tx, &mut done_rx, passes, start).await;
    heartbeat.abort();
    drop(batch_tx);
    if result.is_ok() {
        let _ = apply_task.await;
    } else {
        // Its connection may be the one that went silent: never wait on it.
        apply_task.abort();
    }
    if result.is_ok() && !deliverers.is_empty() {
        // A moment for the tags of the last batch; whatever is left waits in the outbox.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for d in deliverers {
        d.abort();
    }
    match result {
        Ok(acked) => {
            // Let the final acknowledgement reach the server before closing.
            stream.update_applied_lsn(acked);
            tokio::time::sleep(STATUS_INTERVAL + Duration::from_millis(200)).await;
            let _ = stream.shutdown().await;
            tracing::info!(checkpoint = %acked, "stopped cleanly");
            Ok(())
        }
        Err(e) => {
            stream.abort();
            Err(e)
        }
    }
}

/// Reads events, batches, hands batches to apply, and acknowledges what apply committed.
/// Returns the last acknowledged LSN on shutdown.
async fn stream_loop(
    ctx: &Context,
    stream: &mut ReplicationClient,
    batch_tx: &mpsc::Sender<Batch>,
    done_rx: &mut mpsc::Receiver<anyhow::Result<Option<Lsn>>>,
    mut passes: Passes,
    start: Lsn,
) -> anyhow::Result<Lsn> {
    let max = ctx.cfg.batch.max_pending;
    let mut shutdown = ctx.shutdown.clone();
    let mut router = Router::new(&ctx.cfg.tables.schema, &ctx.cfg.tables.sources);
    let mut batch = Batch::default();
    let mut in_flight = false;
    // The transaction being received, between its Begin and Commit.
    let mut open_xid: Option<u32> = None;
    let mut acked = start;
    let mut last_idle_advance = Instant::now();
    let mut stopping = false;
    // The heartbeat puts a message into the stream at least every heartbeat interval, so a
    // stream silent for three of them is a dead connection (a cut without RST), not an
    // idle database: end the session and reconnect.
    // Counted only while the loop is reading the stream (not while a full batch waits for
    // apply).
    let silence = ctx.cfg.heartbeat() * 3;
    let mut heard = tokio::time::Instant::now();

    loop {
        // Hand the batch to apply as soon as apply is free: at once when idle (latency),
        // and larger under backlog because apply is busy meanwhile (throughput).
        if !in_flight && (batch.has_commit() || batch.len() >= max) {
            let b = batch.take();
            // The rest of a transaction cut by the handover belongs to the next batch:
            // its xid goes along, for the visibility wait and for `Covered`.
            if let Some(xid) = open_xid {
                batch.begin(xid);
            }
            ctx.metrics.batch_size.observe(b.len() as f64);
            batch_tx
                .send(b)
                .await
                .map_err(|_| anyhow::anyhow!("apply task ended unexpectedly"))?;
            in_flight = true;
        }
        if stopping && !in_flight {
            if batch.is_empty() {
                return Ok(acked);
            }
            // Products of a transaction cut short by the shutdown: recompute them anyway
            // (harmless), the checkpoint stays at the last commit.
            batch.lsn.get_or_insert(acked);
            continue;
        }
        tokio::select! {
            biased;
            done = done_rx.recv() => {
                in_flight = false;
                heard = tokio::time::Instant::now();
                let lsn = done.ok_or_else(|| anyhow::anyhow!("apply task ended unexpectedly"))??;
                if let Some(lsn) = lsn {
                    if lsn > acked {
                        acked = lsn;
                        stream.update_applied_lsn(lsn);
                    }
                }
            }
            _ = tokio::time::sleep_until(heard + silence), if !stopping && batch.len() < max => {
                return Err(anyhow::Error::new(std::io::Error::other(format!(
                    "nothing arrived from Postgres for {}s although a heartbeat is written every {}s: the connection is dead",
                    silence.as_secs(),
                    ctx.cfg.heartbeat().as_secs()
                ))));
            }
            _ = shutdown.wait_for(|s| *s), if !stopping => {
                tracing::info!("shutdown requested: finishing the batch in flight");
                stopping = true;
            }
            event = stream.recv(), if !stopping && batch.len() < max => {
                heard = tokio::time::Instant::now();
                let Some(event) = event.context("replication stream")? else {
                    return Err(anyhow::Error::new(std::io::Error::other("replication stream ended")));
                };
                match event {
                    ReplicationEvent::Begin { xid, .. } => {
                        open_xid = Some(xid);
                        batch.begin(xid);
                    }
                    ReplicationEvent::Commit { end_lsn, commit_time_micros, .. } => {
                        open_xid = None;
                        batch.commit(end_lsn, commit_time_micros);
                    }
                    ReplicationEvent::XLogData { data, .. } => {
                        let msg = pgoutput::decode(&data).context("decoding pgoutput")?;
                        let (route, counted) = router.route(&msg).map_err(|e| definite(e.to_string()))?;
                        if let Some((table, op)) = counted {
                            ctx.metrics.record_change(table, op.as_str());
                            batch.changes += 1;
                        }
                        match route {
                            Route::None => {}
                            // A pass over every product saw this transaction: nothing to mark.
                            Route::Products(..) if passes.saw(open_xid) => batch.covered += 1,
                            Route::Products(old, new) => {
                                for id in old.into_iter().chain(new) {
                                    batch.mark(id);
                                }
                            }
                            Route::All(why) => {
                                tracing::warn!(reason = %why, "recomputing every product");
                                batch.mark_all(why);
                            }
                        }
                    }
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        // Nothing of ours lies before wal_end that is not applied: move the
                        // checkpoint (and so the slot) there, so idle periods and WAL of other
                        // tables never pile up behind the slot. Throttled; heartbeats do the rest.
                        if open_xid.is_none() && !in_flight && batch.is_empty() && wal_end > acked
                            && last_idle_advance.elapsed() >= Duration::from_secs(1)
                        {
                            last_idle_advance = Instant::now();
                            batch.lsn = Some(wal_end);
                        }
                    }
                    ReplicationEvent::Message { .. } => {}
                    ReplicationEvent::StoppedAt { .. } => {
                        return Err(anyhow::anyhow!("replication stopped at a stop LSN we never set"));
                    }
                }
            }
        }
    }
}

/// Applies one batch; returns what it did and the LSN it stored as the checkpoint.
async fn apply_batch(
    applier: &mut Applier,
    covered: &mut Covered,
    bulk: &Bulk,
    passes: &watch::Sender<Option<crate::visibility::Snapshot>>,
    batch: Batch,
    metrics: &Metrics,
) -> anyhow::Result<(Applied, Option<Lsn>)> {
    let commit = batch.commit_time_micros.map(pg_time);
    let oldest = batch.oldest_commit_micros.map(pg_time);
    let mut skipped = 0;
    // Not when an earlier pass already saw all of the batch: nothing to recompute then
    // (and no catalog estimate to read).
    let every = batch.all.is_some()
        || (!covered.saw_all(&batch.xids)
            && match bulk.escalates(applier.client(), batch.len()).await? {
                Some(why) => {
                    tracing::info!(reason = %why, "recomputing every product");
                    true
                }
                None => false,
            });
    let applied = if every {
        // The snapshot before the pass lists anything: every product it then reads
        // has the changes of the transactions this snapshot saw. The stream loop may
        // drop their further changes from here on (`bulk`).
        let seen = crate::visibility::wait_visible(applier.client(), &batch.xids).await?;
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
        let extends = covered.covers(&batch.xids);
        let mut ids = covered
            .to_recompute(applier.client(), batch.ids.iter(), &batch.xids)
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

/// Writes a tiny transactional message into the WAL at a fixed interval. It reaches us
/// through the slot like any commit, so the checkpoint, the slot and lag-in-seconds keep
/// moving while the published tables are idle.
async fn heartbeat(db: Database, every: Duration) {
    let mut client = None;
    loop {
        tokio::time::sleep(every).await;
        if client.is_none() {
            client = db.connect("cdc-worker/heartbeat").await.ok();
        }
        if let Some(c) = &client {
            if let Err(e) = c
                .execute(
                    "SELECT pg_logical_emit_message(true, 'cdc_worker.heartbeat', '')",
                    &[],
                )
                .await
            {
                tracing::debug!(error = %e, "heartbeat failed");
                client = None;
            }
        }
    }
}

/// The walsender's error when the slot was invalidated under a running stream; the next
/// session start finds the slot lost and recovers it.
fn slot_lost_while_streaming(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("can no longer get changes from replication slot")
        || text.contains("This slot has been invalidated")
}
