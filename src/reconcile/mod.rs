//! `cdc-worker reconcile`: proves that ProductSummary equals what the summary query says
//! it should be, or counts exactly how it differs, and can repair it.
//!
//! # Method
//!
//! * **Pages.** Product ids are walked in keyset order in pages of at most `page_size`
//!   ids from *each* side: a page is the id range `(after, upto]`, where `upto` is the
//!   smaller of the page-size-th next id of the product table and of the summary table.
//!   Both sides are read over the whole range, so an id present on only one side is never
//!   skipped, and memory stays bounded by the page size. With `--store` a page is instead
//!   the next `page_size` ids of the store on either side (the union of the summary
//!   query's ids and the table's ids in that store), compared by id, so a product whose
//!   row sits in the wrong store is reported as a difference in `storeId`.
//! * **Set-based comparison.** For each page one statement FULL OUTER JOINs the summary
//!   query (the same definition the daemon applies) with the table and returns only the
//!   number of products compared and the ids that differ; rows that agree never leave the
//!   server. Pages are compared on `--jobs` connections at once.
//! * **No false positives from changes in flight.** When a page shows differences, both
//!   sides of just those ids are read, then a fence is written into the WAL
//!   (`pg_logical_emit_message(true, 'cdc_worker.fence', '')`) and reconcile waits until the
//!   daemon's checkpoint (`<schema>.checkpoint.lsn` of the slot) reaches the fence's LSN.
//!   The daemon stores its checkpoint in the same transaction as the summary rows and
//!   applies commits in order, so by then every change committed before the differences
//!   were read has been applied. The ids are read again, and a difference counts only if
//!   it is still there and unchanged (both sides), i.e. the daemon had every chance to
//!   repair it and did not. If it changed (the product is being written right now) the
//!   fence is repeated, up to [`SETTLE_ROUNDS`] times; a product still changing after
//!   that is reported as `in_flight`, not as a discrepancy. If the checkpoint does not
//!   reach the fence within `--settle-timeout` (the daemon is not running, or far behind),
//!   the differences are counted as they are, a warning says so, the report carries
//!   `"settled": false`, and later pages do not wait again.
//! * **Repair.** `--fix` recomputes the differing ids through [`Applier::apply`], the
//!   daemon's own apply path (under its advisory lock, so it is safe next to a running
//!   daemon; it enqueues the cache tags of the repaired rows when revalidation URLs are
//!   configured), then verifies them the same way.
//! * **History.** Every run is recorded in `<schema>.reconcile_history`; `--history` shows
//!   the recent runs.

mod compare;
mod fence;
mod history;
mod report;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::apply::Applier;
use crate::config::Config;
use crate::error::definite;
use crate::pg::connect::Database;
use crate::pg::sql::qualified;
use crate::shop::layout::Layout;
use crate::shop::sql;
use crate::state;

use compare::{Comparer, Page, PageResult, Pager};
use fence::Checker;
use history::record;
pub use history::{history, history_table, Run};
use report::Discrepancy;
pub use report::{report_table, Kind, Report, Sample};

/// Most fence rounds for one set of differing ids whose rows keep changing.
pub const SETTLE_ROUNDS: usize = 3;

/// Interval of the progress log line.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Command-line options of `reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Print one JSON object (with --history: a JSON array) instead of a table
    #[arg(long)]
    pub json: bool,

    /// Repair the discrepancies through the daemon's apply path (which also enqueues the
    /// cache tags of repaired rows), then verify them; exit 0 only if all were repaired
    #[arg(long, conflicts_with = "history")]
    pub fix: bool,

    /// Check only this store: a product counts when its source row or its summary row
    /// is in the store
    #[arg(long, value_name = "ID")]
    pub store: Option<String>,

    /// Exit 1 when discrepancies / checked is above this rate
    #[arg(long, value_name = "RATE", default_value = "0.001", value_parser = parse_rate)]
    pub max_rate: f64,

    /// How long to wait for the running daemon to pass a WAL fence before counting
    /// differences as they are (0: do not wait)
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
    pub settle_timeout: f64,

    /// Products per page and side [default: batch.max_products of the config]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub page_size: Option<u32>,

    /// Pages compared at once, each on its own connection
    #[arg(long, value_name = "N", default_value = "2", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,

    /// Show the recent runs recorded in the history table instead of checking
    #[arg(long)]
    pub history: bool,

    /// With --history: how many runs to show
    #[arg(long, value_name = "N", default_value = "20", requires = "history")]
    pub limit: u32,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a rate between 0 and 1 (0.001 = 0.1%)"
        )),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds (0 to 86400)")),
    }
}

/// What one run checks and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub store: Option<String>,
    pub fix: bool,
    pub page_size: usize,
    pub jobs: usize,
    pub settle_timeout: Duration,
}

impl Options {
    pub fn from_args(cfg: &Config, args: &Args) -> Options {
        Options {
            store: args.store.clone(),
            fix: args.fix,
            page_size: args
                .page_size
                .map_or(cfg.batch.max_products, |n| n as usize),
            jobs: usize::from(args.jobs),
            settle_timeout: Duration::from_secs_f64(args.settle_timeout),
        }
    }
}

/// `reconcile` from the command line: checks (or shows the history), prints, and returns
/// the exit code.
pub async fn main(cfg: &Config, args: Args) -> anyhow::Result<u8> {
    let db = Database::parse(&cfg.database_url)?;
    if args.history {
        let client = connect(&db, "reconcile").await?;
        check_setup(&client, cfg).await?;
        let runs = history(&client, cfg, args.limit).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&runs)?);
        } else {
            print!("{}", history_table(&runs));
        }
        return Ok(0);
    }
    let opts = Options::from_args(cfg, &args);
    let report = run(&db, cfg, &opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report_table(&report, args.max_rate));
    }
    Ok(report.exit_code(args.max_rate))
}

/// Runs one reconciliation and records it in the history table.
pub async fn run(db: &Database, cfg: &Config, opts: &Options) -> anyhow::Result<Report> {
    let started_at = SystemTime::now();
    let started = Instant::now();
    let client = connect(db, "reconcile").await?;
    check_setup(&client, cfg).await?;
    let layout = Layout::load(&client, cfg).await?;
    let total = estimate_total(&client, &layout, opts.store.as_deref()).await?;
    tracing::info!(
        products = total,
        store = opts.store.as_deref().unwrap_or("(all)"),
        page_size = opts.page_size,
        jobs = opts.jobs,
        "reconciling ProductSummary with the summary query"
    );

    let mut tasks = JoinSet::new();
    let (page_tx, page_rx) = mpsc::channel::<Page>(opts.jobs);
    let (result_tx, mut result_rx) = mpsc::channel::<anyhow::Result<PageResult>>(opts.jobs);
    let pager = Pager::new(connect(db, "reconcile").await?, cfg, &layout, opts).await?;
    {
        let result_tx = result_tx.clone();
        tasks.spawn(async move {
            if let Err(e) = pager.produce(page_tx).await {
                let _ = result_tx.send(Err(e)).await;
            }
        });
    }
    let page_rx = Arc::new(Mutex::new(page_rx));
    for _ in 0..opts.jobs {
        let comparer = Comparer::new(connect(db, "reconcile").await?, cfg, &layout).await?;
        let page_rx = page_rx.clone();
        let result_tx = result_tx.clone();
        tasks.spawn(async move {
            loop {
                let page = page_rx.lock().await.recv().await;
                let Some(page) = page else { return };
                let result = comparer.compare(&page).await;
                let failed = result.is_err();
                if result_tx.send(result).await.is_err() || failed {
                    return;
                }
            }
        });
    }
    drop(result_tx);

    let mut checker = Checker::new(client, cfg, &layout, opts.settle_timeout).await?;
    let mut applier = match opts.fix {
        true => Some(Applier::connect(db, cfg, "reconcile-fix").await?),
        false => None,
    };
    let mut report = Report::new(opts.store.clone(), opts.fix);
    let mut last_progress = Instant::now();
    while let Some(result) = result_rx.recv().await {
        let page = result?;
        report.checked += page.checked;
        if !page.differing.is_empty() {
            let (found, in_flight) = checker.persistent(page.differing).await?;
            report.in_flight += in_flight;
            for d in &found {
                report.count(d);
            }
            if let Some(applier) = applier.as_mut() {
                let (fixed, unfixed) = fix(applier, &mut checker, &found).await?;
                *report.fixed.get_or_insert(0) += fixed;
                *report.unfixed.get_or_insert(0) += unfixed;
            }
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                done = report.checked,
                total,
                per_second = (report.checked as f64 / secs.max(1e-9)).round(),
                discrepancies = report.discrepancies,
                "reconcile progress"
            );
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a reconcile task panicked")?;
    }

    report.settled = !checker.unsettled;
    report.rate = if report.checked == 0 {
        0.0
    } else {
        report.discrepancies as f64 / report.checked as f64
    };
    report.duration_seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    record(checker.client(), cfg, &report, started_at).await?;
    tracing::info!(
        checked = report.checked,
        discrepancies = report.discrepancies,
        rate = report.rate,
        missing = report.missing,
        orphaned = report.orphaned,
        different = report.different,
        fields = %serde_json::to_string(&report.fields).unwrap_or_default(),
        fixed = ?report.fixed,
        settled = report.settled,
        in_flight = report.in_flight,
        seconds = report.duration_seconds,
        store = ?report.store,
        "reconcile finished"
    );
    Ok(report)
}

/// Repairs `found` in chunks through the daemon's apply path and verifies them.
/// Returns (fixed, still differing).
async fn fix(
    applier: &mut Applier,
    checker: &mut Checker,
    found: &[Discrepancy],
) -> anyhow::Result<(u64, u64)> {
    let mut ids: Vec<&str> = found.iter().map(|d| d.product_id.as_str()).collect();
    let applied = applier
        .apply(&mut ids, &[], None, None)
        .await
        .context("repairing the summary")?;
    tracing::debug!(
        inserted = applied.inserted,
        updated = applied.updated,
        deleted = applied.deleted,
        tags = applied.tags,
        "repaired"
    );
    let ids = found.iter().map(|d| d.product_id.clone()).collect();
    let (left, _) = checker.persistent(ids).await?;
    for d in &left {
        tracing::warn!(product_id = %d.product_id, "still differs after the repair");
    }
    Ok(((found.len() - left.len()) as u64, left.len() as u64))
}

async fn connect(db: &Database, role: &str) -> anyhow::Result<Client> {
    let client = db
        .connect(&format!("cdc-worker/{role}"))
        .await
        .with_context(|| format!("connecting to {}", db.display()))?;
    // The page statements are big enough to trigger JIT compilation, which costs more
    // than it saves on 20k rows; custom plans keep the range bounds visible to the planner.
    // Tables without statistics (a fresh restore: pg_restore before 18 brings none; a
    // failover test's seed) make the planner expect one row per range and join the
    // product and price ranges in a nested loop over a sequential scan: 50k products took
    // 70.6 s instead of 0.57 s. A page joins thousands of rows, so hash or merge joins are
    // always the right plan; a summary query that needs a nested loop (LATERAL) still
    // gets one.
    client
        .batch_execute(
            "SET jit = off; SET plan_cache_mode = force_custom_plan; SET enable_nestloop = off",
        )
        .await?;
    Ok(client)
}

/// Stops with "run setup first" when the summary table or the state schema is missing.
async fn check_setup(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let summary = qualified(&cfg.tables.schema, &cfg.tables.summary);
    let history = format!("{}.reconcile_history", state::schema(cfg));
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
            &[&summary, &history],
        )
        .await?;
    let (have_summary, have_history): (bool, bool) = (row.get(0), row.get(1));
    if !have_summary {
        return Err(definite(format!(
            "the summary table {summary} does not exist. Fix: run `cdc-worker setup` first"
        )));
    }
    if !have_history {
        return Err(definite(format!(
            "the history table {history} does not exist. Fix: run `cdc-worker setup` first \
             (it is idempotent and creates the state schema)"
        )));
    }
    Ok(())
}

/// A cheap product count for the progress line.
async fn estimate_total(
    client: &Client,
    layout: &Layout,
    store: Option<&str>,
) -> anyhow::Result<i64> {
    let row = match store {
        None => client.query_one(&sql::count_products(layout), &[]).await?,
        Some(store) => {
            client
                .query_one(&sql::count_store(layout), &[&store])
                .await?
        }
    };
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_seconds_are_validated() {
        assert!(parse_rate("0.001").is_ok());
        assert!(parse_rate("2").is_err());
        assert!(parse_rate("x").is_err());
        assert!(parse_seconds("0").is_ok());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
    }
}
