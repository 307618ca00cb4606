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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde::Serialize;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Statement};

use crate::apply::{read_checkpoint, summary_select, table_select, Applier};
use crate::config::Config;
use crate::db::Database;
use crate::error::definite;
use crate::summary::{diff, differing_fields, qualified, quote_ident, Change, Field, SummaryRow};

/// Most fence rounds for one set of differing ids whose rows keep changing.
pub const SETTLE_ROUNDS: usize = 3;

/// How many discrepancies are listed by id in the report.
const SAMPLE_SIZE: usize = 10;

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

/// The outcome of one run; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Products compared: ids present in the source, in the table, or both.
    pub checked: u64,
    /// Products whose row is missing, orphaned or different.
    pub discrepancies: u64,
    /// discrepancies / checked (0 when nothing was checked).
    pub rate: f64,
    /// In the source, not in the table.
    pub missing: u64,
    /// In the table, not in the source.
    pub orphaned: u64,
    /// In both, with at least one field different.
    pub different: u64,
    /// Per column: products on which it differs (a product can count in several).
    pub fields: BTreeMap<&'static str, u64>,
    /// With --fix: discrepancies repaired and verified.
    pub fixed: Option<u64>,
    /// With --fix: discrepancies still there after the repair.
    pub unfixed: Option<u64>,
    /// False when the daemon did not pass a fence in time, so differences still in
    /// flight may have been counted.
    pub settled: bool,
    /// Products that differed but whose rows were still changing after every fence
    /// (written right now, and applied by the daemon meanwhile): not discrepancies.
    pub in_flight: u64,
    pub duration_seconds: f64,
    pub store: Option<String>,
    /// Up to 10 of the discrepancies, for a first look.
    pub sample: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub product_id: String,
    pub kind: Kind,
    pub fields: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Missing,
    Orphaned,
    Different,
}

impl Report {
    fn new(store: Option<String>, fix: bool) -> Report {
        Report {
            checked: 0,
            discrepancies: 0,
            rate: 0.0,
            missing: 0,
            orphaned: 0,
            different: 0,
            fields: Field::ALL.iter().map(|f| (f.column(), 0)).collect(),
            fixed: fix.then_some(0),
            unfixed: fix.then_some(0),
            settled: true,
            in_flight: 0,
            duration_seconds: 0.0,
            store,
            sample: Vec::new(),
        }
    }

    fn count(&mut self, d: &Discrepancy) {
        self.discrepancies += 1;
        let (kind, fields) = match (&d.desired, &d.actual) {
            (Some(_), None) => {
                self.missing += 1;
                (Kind::Missing, Vec::new())
            }
            (None, Some(_)) => {
                self.orphaned += 1;
                (Kind::Orphaned, Vec::new())
            }
            (Some(want), Some(have)) => {
                self.different += 1;
                let fields: Vec<&'static str> =
                    differing_fields(have, want).map(Field::column).collect();
                for f in &fields {
                    *self.fields.entry(f).or_default() += 1;
                }
                (Kind::Different, fields)
            }
            (None, None) => unreachable!("a discrepancy has at least one side"),
        };
        if self.sample.len() < SAMPLE_SIZE {
            self.sample.push(Sample {
                product_id: d.product_id.clone(),
                kind,
                fields,
            });
        }
    }

    /// The exit code for cron: 0 when the rate is at most `max_rate` (with --fix: when
    /// every discrepancy was repaired), 1 otherwise. Errors exit 2 in main.
    pub fn exit_code(&self, max_rate: f64) -> u8 {
        match self.unfixed {
            Some(unfixed) => u8::from(unfixed > 0),
            None => u8::from(self.rate > max_rate),
        }
    }
}

/// One product whose row disagrees with the summary query.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Discrepancy {
    product_id: String,
    /// What the summary query says (None: the row should not exist).
    desired: Option<SummaryRow>,
    /// What the table holds (None: there is no row).
    actual: Option<SummaryRow>,
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

/// A page of products to compare.
#[derive(Debug)]
enum Page {
    /// Ids in `(after, upto]`; no `upto` on the last page.
    Range { after: String, upto: Option<String> },
    /// Exactly these ids (`--store`).
    Ids(Vec<String>),
}

/// What comparing one page found.
struct PageResult {
    checked: u64,
    differing: Vec<String>,
}

/// Runs one reconciliation and records it in the history table.
pub async fn run(db: &Database, cfg: &Config, opts: &Options) -> anyhow::Result<Report> {
    let started_at = SystemTime::now();
    let started = Instant::now();
    let client = connect(db, "reconcile").await?;
    check_setup(&client, cfg).await?;
    let total = estimate_total(&client, cfg, opts.store.as_deref()).await?;
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
    let pager = Pager::new(connect(db, "reconcile").await?, cfg, opts).await?;
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
        let comparer = Comparer::new(connect(db, "reconcile").await?, cfg).await?;
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

    let mut checker = Checker::new(client, cfg, opts.settle_timeout).await?;
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
    let mut ids: Vec<String> = found.iter().map(|d| d.product_id.clone()).collect();
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
    client
        .batch_execute("SET jit = off; SET plan_cache_mode = force_custom_plan")
        .await?;
    Ok(client)
}

/// Stops with "run setup first" when the summary table or the state schema is missing.
async fn check_setup(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let summary = qualified(&cfg.tables.schema, &cfg.tables.summary);
    let history = format!("{}.reconcile_history", quote_ident(&cfg.schema));
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
async fn estimate_total(client: &Client, cfg: &Config, store: Option<&str>) -> anyhow::Result<i64> {
    let row = match store {
        None => {
            let product = qualified(&cfg.tables.schema, &cfg.tables.product);
            client
                .query_one(&format!("SELECT count(*) FROM {product}"), &[])
                .await?
        }
        Some(store) => {
            let summary = qualified(&cfg.tables.schema, &cfg.tables.summary);
            client
                .query_one(
                    &format!("SELECT count(*) FROM {summary} WHERE \"storeId\" = $1"),
                    &[&store],
                )
                .await?
        }
    };
    Ok(row.get(0))
}

/// Produces the pages, in keyset order, on its own connection.
struct Pager {
    client: Client,
    stmt: Statement,
    currency: String,
    store: Option<String>,
    page_size: i64,
}

impl Pager {
    async fn new(client: Client, cfg: &Config, opts: &Options) -> anyhow::Result<Pager> {
        let summary = qualified(&cfg.tables.schema, &cfg.tables.summary);
        let sql = match &opts.store {
            // The page-size-th next id of each side (OFFSET over an index-only scan); the
            // smaller one ends the page, so neither side has more than page_size rows in it.
            None => {
                let product = qualified(&cfg.tables.schema, &cfg.tables.product);
                let key = quote_ident(&cfg.tables.sources[&cfg.tables.product]);
                format!(
                    "SELECT least((SELECT {key} FROM {product} WHERE {key} > $1 ORDER BY {key} \
                     OFFSET $2 LIMIT 1), (SELECT \"productId\" FROM {summary} WHERE \"productId\" > $1 \
                     ORDER BY \"productId\" OFFSET $2 LIMIT 1))"
                )
            }
            // The next ids in the store on either side, each side limited before the union.
            Some(_) => {
                let query = cfg.summary_query()?;
                format!(
                    "SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM (SELECT id FROM \
                     ((SELECT s.product_id AS id FROM ({query}) s WHERE s.product_id > $2 \
                     AND s.store_id = $4 ORDER BY s.product_id LIMIT $3) UNION \
                     (SELECT t.\"productId\" FROM {summary} t WHERE t.\"productId\" > $2 \
                     AND t.\"storeId\" = $4 ORDER BY t.\"productId\" LIMIT $3)) u \
                     ORDER BY id LIMIT $3) ids"
                )
            }
        };
        let stmt = crate::db::prepare(&client, &sql).await?;
        Ok(Pager {
            client,
            stmt,
            currency: cfg.currency.clone(),
            store: opts.store.clone(),
            page_size: opts.page_size as i64,
        })
    }

    async fn produce(self, tx: mpsc::Sender<Page>) -> anyhow::Result<()> {
        let mut after = String::new();
        loop {
            let (page, next) = match &self.store {
                None => {
                    let upto: Option<String> = self
                        .client
                        .query_one(&self.stmt, &[&after, &(self.page_size - 1)])
                        .await?
                        .get(0);
                    let next = upto.clone();
                    (Page::Range { after, upto }, next)
                }
                Some(store) => {
                    let ids: Vec<String> = self
                        .client
                        .query_one(
                            &self.stmt,
                            &[&self.currency, &after, &self.page_size, store],
                        )
                        .await?
                        .get(0);
                    let next = if (ids.len() as i64) < self.page_size {
                        None
                    } else {
                        ids.last().cloned()
                    };
                    if ids.is_empty() {
                        return Ok(());
                    }
                    (Page::Ids(ids), next)
                }
            };
            if tx.send(page).await.is_err() {
                return Ok(());
            }
            match next {
                Some(n) => after = n,
                None => return Ok(()),
            }
        }
    }
}

/// The FULL OUTER JOIN of the summary query and the table over `filter`, reduced to the
/// number of products compared and the ids that differ.
fn compare_sql(cfg: &Config, source_filter: &str, table_filter: &str) -> anyhow::Result<String> {
    Ok(format!(
        "SELECT count(*)::int8, coalesce(array_agg(coalesce(d.product_id, c.\"productId\")) \
         FILTER (WHERE d.product_id IS NULL OR c.\"productId\" IS NULL OR \
         (d.store_id, d.title, d.price, d.active, d.inventory_available, d.primary_image_url) \
         IS DISTINCT FROM (c.\"storeId\", c.\"title\", c.\"price\", c.\"active\", \
         c.\"inventoryAvailable\", c.\"primaryImageUrl\")), '{{}}') \
         FROM ({} WHERE {source_filter}) d FULL JOIN ({} WHERE {table_filter}) c \
         ON c.\"productId\" = d.product_id",
        summary_select(cfg)?,
        table_select(cfg)
    ))
}

/// Compares pages on its own connection.
struct Comparer {
    client: Client,
    bounded: Statement,
    open: Statement,
    ids: Statement,
    currency: String,
}

impl Comparer {
    async fn new(client: Client, cfg: &Config) -> anyhow::Result<Comparer> {
        let prepare = |sql: String| {
            let client = &client;
            async move { crate::db::prepare(client, &sql).await }
        };
        let bounded = prepare(compare_sql(
            cfg,
            "s.product_id > $2 AND s.product_id <= $3",
            "t.\"productId\" > $2 AND t.\"productId\" <= $3",
        )?)
        .await?;
        let open = prepare(compare_sql(
            cfg,
            "s.product_id > $2",
            "t.\"productId\" > $2",
        )?)
        .await?;
        let ids = prepare(compare_sql(
            cfg,
            "s.product_id = ANY($2::text[])",
            "t.\"productId\" = ANY($2::text[])",
        )?)
        .await?;
        Ok(Comparer {
            client,
            bounded,
            open,
            ids,
            currency: cfg.currency.clone(),
        })
    }

    async fn compare(&self, page: &Page) -> anyhow::Result<PageResult> {
        let row = match page {
            Page::Range {
                after,
                upto: Some(upto),
            } => {
                self.client
                    .query_one(&self.bounded, &[&self.currency, after, upto])
                    .await?
            }
            Page::Range { after, upto: None } => {
                self.client
                    .query_one(&self.open, &[&self.currency, after])
                    .await?
            }
            Page::Ids(ids) => {
                self.client
                    .query_one(&self.ids, &[&self.currency, ids])
                    .await?
            }
        };
        let checked: i64 = row.get(0);
        Ok(PageResult {
            checked: checked as u64,
            differing: row.get(1),
        })
    }
}

/// Reads both sides of given ids, and waits for the daemon through WAL fences.
struct Checker {
    client: Client,
    detail: Statement,
    currency: String,
    schema: String,
    slot: String,
    timeout: Duration,
    /// Set once a fence was not passed in time: the daemon is evidently not running, so
    /// later pages do not wait again.
    unsettled: bool,
}

impl Checker {
    async fn new(client: Client, cfg: &Config, timeout: Duration) -> anyhow::Result<Checker> {
        // Both sides of the ids, in one statement (one snapshot); the last column says
        // which side a row is from.
        let sql = format!(
            "SELECT d.*, true FROM ({} WHERE s.product_id = ANY($2::text[])) d UNION ALL \
             SELECT c.*, false FROM ({} WHERE t.\"productId\" = ANY($2::text[])) c",
            summary_select(cfg)?,
            table_select(cfg)
        );
        let detail = crate::db::prepare(&client, &sql).await?;
        Ok(Checker {
            client,
            detail,
            currency: cfg.currency.clone(),
            schema: cfg.schema.clone(),
            slot: cfg.slot.clone(),
            timeout,
            unsettled: false,
        })
    }

    fn client(&self) -> &Client {
        &self.client
    }

    /// The discrepancies among `ids` that persist, unchanged, once the daemon has applied
    /// everything committed before they were read (see the module doc), and how many
    /// products were still changing after [`SETTLE_ROUNDS`] fences (in flight, not counted).
    async fn persistent(&mut self, ids: Vec<String>) -> anyhow::Result<(Vec<Discrepancy>, u64)> {
        let mut pending = self.detail(&ids).await?;
        let mut confirmed = Vec::new();
        for _ in 0..SETTLE_ROUNDS {
            if pending.is_empty() || !self.settle().await? {
                // Without a daemon to wait for, differences count as they are.
                confirmed.append(&mut pending);
                break;
            }
            let ids: Vec<String> = pending.iter().map(|d| d.product_id.clone()).collect();
            let again = self.detail(&ids).await?;
            let before: HashMap<&str, &Discrepancy> =
                pending.iter().map(|d| (d.product_id.as_str(), d)).collect();
            let mut changing = Vec::new();
            for d in again {
                if before.get(d.product_id.as_str()) == Some(&&d) {
                    confirmed.push(d);
                } else {
                    tracing::debug!(product_id = %d.product_id, "still changing after a fence");
                    changing.push(d);
                }
            }
            pending = changing;
        }
        let in_flight = pending.len() as u64;
        if in_flight > 0 {
            tracing::info!(
                products = in_flight,
                "rows still changing after {SETTLE_ROUNDS} fences are being written right now: counted as in flight, not as discrepancies"
            );
        }
        confirmed.sort_by(|a, b| a.product_id.cmp(&b.product_id));
        Ok((confirmed, in_flight))
    }

    /// Both sides of `ids`, classified with [`diff`]; equal rows are dropped.
    async fn detail(&self, ids: &[String]) -> anyhow::Result<Vec<Discrepancy>> {
        let rows = self
            .client
            .query(&self.detail, &[&self.currency, &ids])
            .await?;
        let mut desired = Vec::new();
        let mut current = Vec::new();
        for row in &rows {
            let r = SummaryRow::from_row(row).context("reading a summary row")?;
            if row.get::<_, bool>(7) {
                desired.push(r);
            } else {
                current.push(r);
            }
        }
        let found: Vec<Discrepancy> = diff(&desired, &current)
            .into_iter()
            .map(|c| match c {
                Change::Insert(new) => Discrepancy {
                    product_id: new.product_id.clone(),
                    desired: Some(new.clone()),
                    actual: None,
                },
                Change::Update { old, new } => Discrepancy {
                    product_id: new.product_id.clone(),
                    desired: Some(new.clone()),
                    actual: Some(old.clone()),
                },
                Change::Delete(old) => Discrepancy {
                    product_id: old.product_id.clone(),
                    desired: None,
                    actual: Some(old.clone()),
                },
            })
            .collect();
        Ok(found)
    }

    /// Writes a fence into the WAL and waits until the daemon's checkpoint passes it.
    /// False when it did not within the timeout (then never waits again).
    async fn settle(&mut self) -> anyhow::Result<bool> {
        if self.unsettled {
            return Ok(false);
        }
        if self.timeout.is_zero() {
            tracing::warn!("--settle-timeout 0: differences are counted without waiting for the daemon; some may be changes still in flight");
            self.unsettled = true;
            return Ok(false);
        }
        let fence = match self
            .client
            .query_one(
                "SELECT pg_logical_emit_message(true, 'cdc_worker.fence', '')",
                &[],
            )
            .await
        {
            Ok(row) => u64::from(row.get::<_, PgLsn>(0)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write a WAL fence; differences are counted as they are, some may be changes still in flight");
                self.unsettled = true;
                return Ok(false);
            }
        };
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let checkpoint = read_checkpoint(&self.client, &self.schema, &self.slot).await?;
            match checkpoint {
                Some(lsn) if lsn.0 >= fence => return Ok(true),
                None => {
                    tracing::warn!(slot = %self.slot, "no checkpoint for the slot, so the daemon cannot be waited for: differences are counted as they are, some may be changes still in flight");
                    self.unsettled = true;
                    return Ok(false);
                }
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    slot = %self.slot,
                    timeout = ?self.timeout,
                    "the daemon did not apply a WAL fence in time (is `cdc-worker run` running?): \
                     differences are counted as they are, some may be changes still in flight"
                );
                self.unsettled = true;
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// Appends the run to `<schema>.reconcile_history`.
async fn record(
    client: &Client,
    cfg: &Config,
    report: &Report,
    started_at: SystemTime,
) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO {}.reconcile_history (started_at, finished_at, checked, discrepancies, \
         missing, orphaned, different, fields, fixed, store, settled) \
         VALUES ($1, now(), $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        quote_ident(&cfg.schema)
    );
    let fields = serde_json::to_value(&report.fields)?;
    client
        .execute(
            &sql,
            &[
                &started_at,
                &(report.checked as i64),
                &(report.discrepancies as i64),
                &(report.missing as i64),
                &(report.orphaned as i64),
                &(report.different as i64),
                &fields,
                &report.fixed.map(|f| f as i64),
                &report.store,
                &report.settled,
            ],
        )
        .await
        .context("recording the run in the history table")?;
    Ok(())
}

/// One recorded run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: i64,
    pub started_at: String,
    pub duration_seconds: f64,
    pub checked: i64,
    pub discrepancies: i64,
    pub rate: f64,
    pub missing: i64,
    pub orphaned: i64,
    pub different: i64,
    pub fields: serde_json::Value,
    pub fixed: Option<i64>,
    pub settled: bool,
    pub store: Option<String>,
}

/// The most recent `limit` runs, newest first.
pub async fn history(client: &Client, cfg: &Config, limit: u32) -> anyhow::Result<Vec<Run>> {
    let sql = format!(
        "SELECT id, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
         extract(epoch FROM finished_at - started_at)::float8, checked, discrepancies, missing, \
         orphaned, different, fields, fixed, settled, store \
         FROM {}.reconcile_history ORDER BY id DESC LIMIT $1",
        quote_ident(&cfg.schema)
    );
    let rows = client.query(&sql, &[&i64::from(limit)]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let checked: i64 = r.get(3);
            let discrepancies: i64 = r.get(4);
            Run {
                id: r.get(0),
                started_at: r.get(1),
                duration_seconds: (r.get::<_, f64>(2) * 1000.0).round() / 1000.0,
                checked,
                discrepancies,
                rate: if checked == 0 {
                    0.0
                } else {
                    discrepancies as f64 / checked as f64
                },
                missing: r.get(5),
                orphaned: r.get(6),
                different: r.get(7),
                fields: r.get(8),
                fixed: r.get(9),
                settled: r.get(10),
                store: r.get(11),
            }
        })
        .collect())
}

/// The summary for a person.
pub fn report_table(r: &Report, max_rate: f64) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let scope = match &r.store {
        Some(store) => format!("store {store}"),
        None => "all stores".to_string(),
    };
    let _ = writeln!(
        s,
        "ProductSummary reconcile ({scope}): {} products checked in {:.1} s",
        r.checked, r.duration_seconds
    );
    let verdict = if r.rate > max_rate { "above" } else { "within" };
    let _ = writeln!(
        s,
        "  discrepancies  {:>10}   rate {:.6} ({verdict} --max-rate {max_rate})",
        r.discrepancies, r.rate
    );
    let _ = writeln!(s, "    missing      {:>10}", r.missing);
    let _ = writeln!(s, "    orphaned     {:>10}", r.orphaned);
    let _ = writeln!(s, "    different    {:>10}", r.different);
    for f in Field::ALL {
        let n = r.fields.get(f.column()).copied().unwrap_or(0);
        let _ = writeln!(s, "      {:<19}{n:>7}", f.column());
    }
    if let (Some(fixed), Some(unfixed)) = (r.fixed, r.unfixed) {
        let _ = writeln!(
            s,
            "  fixed          {fixed:>10}   still differing {unfixed}"
        );
    }
    if r.in_flight > 0 {
        let _ = writeln!(
            s,
            "  in flight      {:>10}   (still being written after every fence; not counted)",
            r.in_flight
        );
    }
    if !r.settled {
        let _ = writeln!(
            s,
            "  warning: the daemon did not pass a WAL fence in time; changes still in flight may be counted"
        );
    }
    for d in &r.sample {
        let detail = if d.fields.is_empty() {
            String::new()
        } else {
            format!(" ({})", d.fields.join(", "))
        };
        let kind = match d.kind {
            Kind::Missing => "missing",
            Kind::Orphaned => "orphaned",
            Kind::Different => "different",
        };
        let _ = writeln!(s, "  e.g. {} {kind}{detail}", d.product_id);
    }
    s
}

/// The history for a person, newest first.
pub fn history_table(runs: &[Run]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if runs.is_empty() {
        s.push_str("no reconcile runs recorded yet\n");
        return s;
    }
    let _ = writeln!(
        s,
        "{:>6}  {:<20} {:>8} {:>10} {:>13} {:>10} {:>8} {:>8} {:>9} {:>7} {:>7}  store",
        "id",
        "started (UTC)",
        "seconds",
        "checked",
        "discrepancies",
        "rate",
        "missing",
        "orphaned",
        "different",
        "fixed",
        "settled"
    );
    for r in runs {
        let fixed = r.fixed.map_or("-".to_string(), |f| f.to_string());
        let _ = writeln!(
            s,
            "{:>6}  {:<20} {:>8.1} {:>10} {:>13} {:>10.6} {:>8} {:>8} {:>9} {:>7} {:>7}  {}",
            r.id,
            r.started_at,
            r.duration_seconds,
            r.checked,
            r.discrepancies,
            r.rate,
            r.missing,
            r.orphaned,
            r.different,
            fixed,
            if r.settled { "yes" } else { "no" },
            r.store.as_deref().unwrap_or("(all)")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> SummaryRow {
        SummaryRow {
            product_id: id.into(),
            store_id: "s1".into(),
            title: "T".into(),
            price: 100,
            active: true,
            inventory_available: 3,
            primary_image_url: None,
        }
    }

    #[test]
    fn counts_each_kind_and_field() {
        let mut r = Report::new(None, false);
        r.count(&Discrepancy {
            product_id: "a".into(),
            desired: Some(row("a")),
            actual: None,
        });
        r.count(&Discrepancy {
            product_id: "b".into(),
            desired: None,
            actual: Some(row("b")),
        });
        let mut changed = row("c");
        changed.title = "U".into();
        changed.price = 1;
        r.count(&Discrepancy {
            product_id: "c".into(),
            desired: Some(row("c")),
            actual: Some(changed),
        });
        assert_eq!((r.missing, r.orphaned, r.different), (1, 1, 1));
        assert_eq!(r.discrepancies, 3);
        assert_eq!(r.fields["title"], 1);
        assert_eq!(r.fields["price"], 1);
        assert_eq!(r.fields["storeId"], 0);
        assert_eq!(r.fields.len(), Field::ALL.len());
        assert_eq!(r.sample[2].fields, vec!["title", "price"]);
    }

    #[test]
    fn exit_codes() {
        let mut r = Report::new(None, false);
        r.rate = 0.001;
        assert_eq!(r.exit_code(0.001), 0);
        r.rate = 0.0011;
        assert_eq!(r.exit_code(0.001), 1);
        let mut f = Report::new(None, true);
        f.rate = 0.5;
        assert_eq!(f.exit_code(0.001), 0, "all repaired");
        f.unfixed = Some(1);
        assert_eq!(f.exit_code(1.0), 1, "not all repaired");
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(Report::new(Some("s".into()), false)).unwrap();
        for key in [
            "checked",
            "discrepancies",
            "rate",
            "missing",
            "orphaned",
            "different",
            "fields",
            "fixed",
            "settled",
            "duration_seconds",
            "store",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert!(v["fixed"].is_null());
        assert_eq!(v["fields"]["inventoryAvailable"], 0);
    }

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
