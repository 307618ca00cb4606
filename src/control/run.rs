//! `cdc-worker run`: the daemon. Takes leadership, streams the slot, and pipelines
//! decode → route → batch on this task with apply on another, so reading the WAL never
//! waits for the database while there is room in the batch. Reconnects with backoff on
//! transient errors; stops with a clear message on definite ones.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pgwire_replication::ReplicationClient;
use tokio::sync::watch;

use super::{guard, leader, slot};
use crate::apply::Applier;
use crate::config::Config;
use crate::error::is_transient;
use crate::ops::metrics::Metrics;
use crate::pg::connect::Database;
use crate::pg::server;
use crate::stream::silence::{self, Silence};
use crate::stream::stream_loop;

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
    server::check_version(&client).await?;
    if !leader::wait_for_leadership(&client, cfg, &ctx.shutdown).await? {
        return Ok(());
    }
    crate::state::ensure(&client, cfg).await?;
    let mut identities = guard::IdentityReport::new(ctx.metrics.clone());
    guard::at_session_start(&client, cfg, &mut identities).await?;
    let mut applier = Applier::new(client, cfg).await?;
    let mode = slot::Mode {
        setup: false,
        tags: true,
    };
    let start = slot::prepare(cfg, &mut applier, mode).await?;
    server::log_slot_state(applier.client(), &cfg.slot, cfg.failover_slot).await;
    if let Some(r) = &start.recovered {
        ctx.metrics.record_recovery(r.reason.label(), r.recreated);
    }
    let start = start.lsn;

    let repl_cfg = ctx
        .db
        .replication(&cfg.slot, &cfg.publication)
        .with_start_lsn(start)
        .with_streaming(cfg.streaming())
        .with_status_interval(STATUS_INTERVAL)
        // While nothing arrives, a status message at least every heartbeat: the walsender's
        // record of when it last heard us is the evidence that a silent stream is alive.
        .with_wakeup_interval(silence::status_interval(cfg.heartbeat()));
    // Bounded like every query connection (Database::startup_timeout): a peer that
    // accepts the connection and then says nothing must not hold the session forever. The
    // walsender answers START_REPLICATION before it decodes anything, so a long decode
    // does not count here.
    let mut stream = tokio::time::timeout(ctx.db.startup_timeout(), async {
        let mut stream = ReplicationClient::connect(repl_cfg)
            .await
            .context("opening the replication connection")?;
        stream
            .wait_started()
            .await
            .context("starting replication")?;
        anyhow::Ok(stream)
    })
    .await
    .map_err(|_| {
        ctx.db
            .startup_timed_out("opening the replication connection")
    })??;
    tracing::info!(slot = %cfg.slot, from = %start, pgoutput_protocol = cfg.pgoutput_protocol, "streaming");
    ctx.metrics.set_streaming(true);

    // Bumped when apply held tags of throttled templates, to wake their release.
    let (held_tx, held_rx) = watch::channel(0u64);
    // Apply also publishes the snapshot of each pass over every product through the
    // handover; the stream loop drops the changes of transactions it saw.
    let (mut handover, apply_task) = crate::apply::spawn(
        applier,
        cfg,
        ctx.metrics.clone(),
        ctx.outbox_enqueued.clone(),
        held_tx,
    );

    let heartbeat = tokio::spawn(heartbeat(ctx.db.clone(), cfg.heartbeat()));
    // Delivery runs beside the stream and never holds it up: Next.js being down only
    // lets tags wait in the outbox.
    let mut deliverers =
        crate::outbox::deliver::spawn(cfg, &ctx.db, ctx.metrics.clone(), &ctx.outbox_enqueued);
    if !cfg.revalidate.urls.is_empty() {
        // Held tags (revalidate.min_interval_ms) go into the outbox when due, also those
        // held before a restart or by another process.
        deliverers.push(crate::outbox::hold::spawn(
            cfg,
            &ctx.db,
            ctx.metrics.clone(),
            held_rx,
            ctx.outbox_enqueued.clone(),
        ));
    }
    // What setup checked, checked again while streaming: a migration may drop a source
    // table from the publication at any time, and nothing in the stream would say so.
    let watch = guard::watch(ctx.db.clone(), cfg.clone(), identities, cfg.heartbeat());
    let result = tokio::select! {
        result = stream_loop(
            cfg,
            &ctx.metrics,
            &ctx.shutdown,
            &mut stream,
            &mut handover,
            start,
            Silence::new(ctx.db.clone(), &cfg.slot, cfg.heartbeat()),
        ) => result,
        // Nothing is acknowledged past what apply committed, so ending here is as safe
        // as any error of the stream.
        stop = watch => Err(stop),
    };
    heartbeat.abort();
    drop(handover);
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
