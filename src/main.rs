//! The command line: parse, load config, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;

use cdc_worker::config::Config;
use cdc_worker::ops::metrics::Metrics;
use cdc_worker::pg::connect::Database;

/// Keeps the ProductSummary table and the Next.js cache tags of an e-commerce database
/// correct from Postgres logical replication.
///
/// Run `setup` once (checks the database, creates the publication, the slot and the
/// summary table, backfills), then `run` as a long-running sidecar; run `reconcile` from
/// cron to prove the summary equals the source. `status` says whether it is healthy;
/// `teardown` removes it.
///
/// Configuration: config/cdc-worker.toml (or --config), overridden by environment
/// variables: DATABASE_URL (required), CDC_SLOT, CDC_PUBLICATION, CDC_SCHEMA,
/// CDC_CURRENCY, CDC_REVALIDATE_URLS, CDC_REVALIDATE_SECRET, CDC_METRICS_ADDR,
/// CDC_PGOUTPUT_PROTOCOL; logging: CDC_LOG (a filter, e.g. info,cdc_worker=debug),
/// CDC_LOG_FORMAT.
#[derive(Parser)]
#[command(name = "cdc-worker", version, about, long_about, max_term_width = 100)]
struct Cli {
    /// Config file [default: config/cdc-worker.toml when it exists]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Log format
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CDC_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check the database and prepare it; safe to run again.
    ///
    /// Checks wal_level=logical, the role's privileges and the tables (each problem is
    /// reported with the statement that fixes it, before anything is changed). Then
    /// creates the state schema, the summary table when missing, the publication, REPLICA
    /// IDENTITY FULL on child tables (so a DELETE names its product), and the slot, and
    /// backfills ProductSummary for every existing product with progress. Changes made
    /// while the backfill runs are streamed afterwards, so nothing is lost in between.
    Setup,
    /// Stream the slot and keep ProductSummary and the cache tags fresh until SIGTERM.
    ///
    /// On SIGTERM or SIGINT the batch in flight is finished and acknowledged, then the
    /// process exits 0. Connection loss and Postgres restarts are retried with backoff.
    /// When another instance holds the slot, this one waits as a standby and takes over
    /// when the slot is free.
    Run,
    /// Compare ProductSummary with the summary query; count, record and optionally repair drift.
    ///
    /// Walks every product (or one store's) in keyset pages and compares the table with
    /// the summary query in SQL, page by page: missing rows (in the source, not in the
    /// table), orphan rows (in the table, not in the source) and rows that differ, with a
    /// count per column. A difference counts only if it persists once the running daemon
    /// has applied the WAL up to the point where it was seen: reconcile writes a fence
    /// into the WAL (pg_logical_emit_message) and waits until the daemon's checkpoint
    /// passes it, then reads those products again: only a difference that is unchanged then
    /// counts (rows still changing after 3 fences are reported as "in_flight"). When the
    /// daemon does not pass the fence within --settle-timeout (it is not running), differences are counted as they are,
    /// with a warning and "settled": false. Each run is recorded in the state schema's
    /// reconcile_history table; --history shows the trend. --fix repairs through the
    /// daemon's apply path, which also enqueues the cache tags of the repaired rows.
    ///
    /// Exit codes (for cron): 0 when discrepancies / checked <= --max-rate (with --fix:
    /// when every discrepancy was repaired), 1 above it (with --fix: some remain), 2 on
    /// error (including "run `cdc-worker setup` first").
    Reconcile(cdc_worker::reconcile::Args),
    /// Is it healthy, how far behind, is anything parked: read from the database.
    ///
    /// Works whether or not a daemon runs, and changes nothing (a read-only session).
    /// Prints the leader (the `run` holding the lock: its application name, client
    /// address and session start) and standbys; the slot (active, wal_status, on 17+
    /// failover and synced, invalidation); the lag (bytes from the slot's confirmed
    /// position and from the checkpoint to the server's WAL, seconds since the newest
    /// applied commit); a recompute in progress; per endpoint the tags pending (and the
    /// oldest's age) and parked, the held hot tags; the last reconcile run.
    ///
    /// Exit codes (for a probe or cron): 0 healthy; 1 degraded: no leader, lag above
    /// --max-lag-bytes or --max-lag-seconds, tags parked above --max-parked, a tag waiting
    /// longer than --max-outbox-age-seconds, a recompute under way, the slot unreserved;
    /// 2 unusable: not set up, the slot missing, lost or someone else's, or the database
    /// cannot be reached.
    Status(cdc_worker::control::status::Args),
    /// Remove what setup created: the slot, the publication, the state schema.
    ///
    /// In the safe order: takes the slot's leader lock first, so no worker streams or
    /// recreates the slot meanwhile (while a `run` holds it, teardown refuses; --force
    /// ends the worker's sessions instead: those named cdc-worker/... on this database,
    /// of walsenders only this slot's); then drops the slot, which is what
    /// retains WAL, and only when it is a pgoutput slot of this database; then, in one
    /// transaction, the publication (when it covers exactly the source tables), the
    /// worker's tables in the state schema and the schema when nothing else is in it.
    /// ProductSummary is kept (the app reads it) unless --drop-summary. REPLICA IDENTITY
    /// is left as it is, and the output says which tables are FULL and how to restore
    /// the default.
    ///
    /// Prints the plan and asks on a terminal; --yes for scripts; --dry-run prints the
    /// statements and changes nothing. Safe to run again after an interruption.
    ///
    /// Exit codes: 0 removed (or nothing left to remove, or a dry run), 1 refused or
    /// declined (a running worker without --force, no terminal and no --yes, the answer
    /// was not yes): nothing changed, 2 error.
    Teardown(cdc_worker::control::teardown::Args),
    /// Revalidate cache tags by hand: the operator's manual trigger.
    ///
    /// Sends the tags of each --product (product:, inventory: and its store's listing, as
    /// configured) and of each --store (the listing tag) to every endpoint in
    /// CDC_REVALIDATE_URLS right away, and prints each endpoint's answer. Exits 1 when an
    /// endpoint did not accept them.
    ///
    /// With --failed: sends the tags the daemon parked in outbox_failed (an endpoint that
    /// kept failing for revalidate.give_up_after_secs) again, each to the endpoint that
    /// gave up on it, deletes what was delivered and prints one line per parked row.
    /// Exits 1 when some stay parked.
    Revalidate {
        /// A product id (repeatable)
        #[arg(long = "product", value_name = "ID")]
        products: Vec<String>,
        /// A store id (repeatable)
        #[arg(long = "store", value_name = "ID")]
        stores: Vec<String>,
        /// Redeliver the tags parked in outbox_failed
        #[arg(long, conflicts_with_all = ["products", "stores"])]
        failed: bool,
    },
}

// One thread: the stream loop, the replication transport and apply hand every event to
// each other, and on a multi-threaded runtime each handover woke another thread (futex
// calls were the largest part of the worker's own CPU under backlog). Nothing here
// computes for long; the waiting is on Postgres and HTTP. On bench/backlog.sh: the
// worker's CPU -25%, its peak RSS -5 MiB, the drain from 1.10 to 0.91-0.98 x pg_recvlogical.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Named crash points for the fault tests (FAILPOINTS=name=return;...); inert otherwise.
    let _failpoints = fail::FailScenario::setup();
    match real_main(cli).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Setup => {
            cdc_worker::control::setup::run(&cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            run(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile(args) => Ok(ExitCode::from(
            cdc_worker::reconcile::main(&cfg, args).await?,
        )),
        Command::Status(args) => cdc_worker::control::status::main(&cfg, &args).await,
        Command::Teardown(args) => cdc_worker::control::teardown::main(&cfg, &args).await,
        Command::Revalidate {
            products,
            stores,
            failed,
        } => {
            if !failed && products.is_empty() && stores.is_empty() {
                anyhow::bail!("name at least one --product ID or --store ID, or --failed");
            }
            let ok = if failed {
                cdc_worker::control::revalidate::redeliver_failed(&cfg).await?
            } else {
                cdc_worker::control::revalidate::revalidate_now(&cfg, &products, &stores).await?
            };
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let db = Database::parse(&cfg.database_url)?;
    let metrics = Metrics::new(&cfg);
    if !cfg.metrics.addr.is_empty() {
        let listener_metrics = metrics.clone();
        let addr = cfg.metrics.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = cdc_worker::ops::metrics::serve(&addr, listener_metrics).await {
                tracing::error!("{e:#}");
            }
        });
    }
    tokio::spawn(cdc_worker::ops::monitor::run(
        cfg.clone(),
        db.clone(),
        metrics.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let ctx = cdc_worker::control::run::Context {
        cfg,
        db,
        metrics,
        shutdown: stop_rx,
        outbox_enqueued: Arc::new(watch::channel(0).0),
    };
    cdc_worker::control::run::run(&ctx).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CDC_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, not in files or log collectors.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
