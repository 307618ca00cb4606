//! `cdc-worker teardown`: removes what `setup` created, in the safe order, and nothing
//! else.
//!
//! 1. The leader lock of the slot, held for the whole teardown: no `run` streams, or
//!    recreates the slot, meanwhile. While a `run` holds it, teardown refuses; `--force`
//!    ends the worker's sessions: every session on this database named `cdc-worker/...`
//!    (how the worker names its connections; another slot's worker on the same database
//!    would lose its sessions too and reconnect), of walsenders only this slot's. The
//!    worker's process then waits as a standby and, once teardown is done, stops with
//!    "not set up".
//! 2. The slot, first of all: it is what retains WAL (a forgotten slot fills the primary's
//!    disk), so it goes even if a later step fails. Only a pgoutput slot of this
//!    database; a slot of that name that is someone else's is left alone.
//! 3. In one transaction: the publication (only when it covers exactly the source
//!    tables, as setup made it), the worker's tables in the state schema, then the schema
//!    itself if nothing else is left in it, and with `--drop-summary` the summary table.
//!
//! `ProductSummary` stays unless `--drop-summary` (the app reads it). REPLICA IDENTITY
//! stays as it is (the app or another consumer may rely on it); the report names the
//! tables and the statement that restores the default. Every step is idempotent: running
//! teardown again finishes what an interrupted one began.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::Client;

use super::leader;
use crate::config::Config;
use crate::error::definite;
use crate::pg::connect::Database;
use crate::pg::server::{self, Session};
use crate::pg::sql::{qualified, quote_ident, quote_literal};
use crate::state::{self, locks};

/// Command-line options of `teardown`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Do it without asking (for scripts; without a terminal teardown refuses otherwise)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the statements teardown would run, and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// End the sessions of a running `cdc-worker run` of this slot instead of refusing
    #[arg(long)]
    pub force: bool,
    /// Drop the summary table too (the app reads it: only when the app no longer does)
    #[arg(long)]
    pub drop_summary: bool,
}

/// What teardown will do, decided from what exists before anything changes.
#[derive(Debug, Default)]
struct Plan {
    /// `SELECT pg_drop_replication_slot(...)`, when the slot is ours.
    drop_slot: Option<String>,
    /// Run in one transaction, in order.
    statements: Vec<String>,
    /// `DROP SCHEMA` of the state schema, run last (inside a savepoint: a schema still
    /// holding something else is kept).
    drop_state_schema: Option<String>,
    /// What is left alone, and why, one line each.
    kept: Vec<String>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.drop_slot.is_none() && self.statements.is_empty() && self.drop_state_schema.is_none()
    }

    fn print(&self) {
        if self.is_empty() {
            println!("nothing of the worker's is left to remove");
        } else {
            println!("statements, in order:");
            for sql in self
                .drop_slot
                .iter()
                .chain(&self.statements)
                .chain(&self.drop_state_schema)
            {
                println!("  {sql};");
            }
        }
        for k in &self.kept {
            println!("kept: {k}");
        }
    }
}

/// `cdc-worker teardown`. Exit codes: 0 removed (or nothing to remove; `--dry-run`
/// printed), 1 refused or declined with nothing changed, 2 an error.
pub async fn main(cfg: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    let db = Database::parse(&cfg.database_url)?;
    let client = db
        .connect("cdc-worker/teardown")
        .await
        .with_context(|| format!("connecting to {}", db.display()))?;
    // The leader lock means nothing through a transaction-mode pooler.
    leader::refuse_pooler(&db, &client, cfg).await?;
    println!(
        "teardown of slot {}, publication {}, state schema {} on {}",
        cfg.slot,
        cfg.publication,
        cfg.schema,
        db.display()
    );
    let holder = if args.dry_run {
        // Nothing is taken for a dry run; only who would be in the way.
        server::advisory_lock_holder(&client, locks::LEADER_CLASS, locks::leader_key(cfg)).await?
    } else if leader::try_lead(&client, cfg).await? {
        None
    } else {
        server::advisory_lock_holder(&client, locks::LEADER_CLASS, locks::leader_key(cfg)).await?
    };
    if let Some(h) = &holder {
        let who = describe(h);
        if args.force {
            println!("a running worker holds the leader lock ({who}): --force ends its sessions");
        } else if args.dry_run {
            println!(
                "a `cdc-worker run` holds the leader lock of slot {} ({who}): teardown would \
                 refuse until it is stopped, or end its sessions with --force",
                cfg.slot
            );
        } else {
            println!(
                "refused: a `cdc-worker run` holds the leader lock of slot {} ({who}). Stop it \
                 first (systemctl stop, scale its deployment to 0), or pass --force to end its \
                 sessions: the process then waits as a standby and stops once the database is \
                 torn down",
                cfg.slot
            );
            return Ok(ExitCode::from(1));
        }
    }
    let plan = inspect(&client, cfg, args).await?;
    plan.print();
    if args.dry_run {
        println!("dry run: nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    if plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if !args.yes && !confirm()? {
        println!("nothing was changed");
        return Ok(ExitCode::from(1));
    }
    if holder.is_some() {
        end_sessions_and_lead(&client, cfg).await?;
    }
    execute(&client, cfg, &plan).await?;
    println!("teardown complete: nothing of the worker's holds WAL on this server any more");
    Ok(ExitCode::SUCCESS)
}

fn describe(s: &Session) -> String {
    let mut t = format!("pid {}, {}", s.pid, s.application_name);
    if let Some(addr) = &s.client_addr {
        t.push_str(&format!(" from {addr}"));
    }
    if let Some(since) = &s.since {
        t.push_str(&format!(", session since {since}"));
    }
    t
}

/// Asks on a terminal; without one, `--yes` is required.
fn confirm() -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        println!(
            "refused: standard input is not a terminal; pass --yes to tear down without asking"
        );
        return Ok(false);
    }
    print!("remove these? type yes to go on: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "yes" | "y"))
}

/// Decides every statement from what exists; reads only.
async fn inspect(client: &Client, cfg: &Config, args: &Args) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    match server::slot_row(client, &cfg.slot).await? {
        None => {}
        Some(slot) => match slot.not_ours(&cfg.slot) {
            Some(why) => plan
                .kept
                .push(format!("replication slot {}: {why}", cfg.slot)),
            None => {
                plan.drop_slot = Some(format!(
                    "SELECT pg_drop_replication_slot({})",
                    quote_literal(&cfg.slot)
                ))
            }
        },
    }
    let want = cfg.source_tables();
    let publication = quote_ident(&cfg.publication);
    match server::publication_tables(client, &cfg.publication).await? {
        None => {}
        Some(have) if have == want => plan
            .statements
            .push(format!("DROP PUBLICATION {publication}")),
        Some(have) => plan.kept.push(format!(
            "publication {publication}: it covers [{}], not exactly the tables the summary reads, \
             so setup did not make it; DROP PUBLICATION {publication} if it is yours",
            have.iter()
                .map(|(s, t)| qualified(s, t))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    let found = state::installed(client, cfg).await?;
    let state_schema = state::schema(cfg);
    if !found.other_slots.is_empty() {
        // Another worker (another slot) keeps its checkpoint here: only ours goes.
        plan.statements.push(state::forget_slot_sql(cfg));
        plan.kept.push(format!(
            "state schema {state_schema}: it also holds the checkpoint of slot(s) {}, whose \
             worker still uses it; only slot {}'s checkpoint is deleted",
            found.other_slots.join(", "),
            cfg.slot
        ));
    } else if found.schema {
        let (tables, schema) = state::drop_sql(cfg, &found);
        plan.statements.extend(tables);
        if found.others.is_empty() {
            plan.drop_state_schema = Some(schema);
        } else {
            plan.kept.push(format!(
                "schema {state_schema} itself: it also holds {} (not the worker's)",
                found.others.join(", ")
            ));
        }
    }
    let summary = qualified(&cfg.tables.schema, &cfg.tables.summary);
    let summary_exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&summary])
        .await?
        .get(0);
    if summary_exists && args.drop_summary {
        plan.statements.push(format!("DROP TABLE {summary}"));
    } else if summary_exists {
        plan.kept.push(format!(
            "summary table {summary}: the app reads it (--drop-summary drops it too)"
        ));
    }
    let full = replica_identity_full(client, cfg).await?;
    if !full.is_empty() {
        plan.kept.push(format!(
            "REPLICA IDENTITY FULL on {}: left as it is (setup may have set it; the app or \
             another consumer may rely on it). To restore the default: {}",
            full.join(", "),
            full.iter()
                .map(|t| format!("ALTER TABLE {t} REPLICA IDENTITY DEFAULT;"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(plan)
}

/// The source tables whose replica identity is FULL, qualified.
async fn replica_identity_full(client: &Client, cfg: &Config) -> anyhow::Result<Vec<String>> {
    let tables: Vec<String> = cfg.tables.sources.keys().cloned().collect();
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = ANY($2) AND c.relreplident = 'f' ORDER BY 1",
            &[&cfg.tables.schema, &tables],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| qualified(&cfg.tables.schema, r.get(0)))
        .collect())
}

/// How long `--force` tries to end a running worker's sessions and take the leader lock.
const FORCE_TIMEOUT: Duration = Duration::from_secs(30);

/// Ends the sessions of the worker holding the leader lock, and takes the lock before its
/// process reconnects (it then waits as a standby). Only sessions named `cdc-worker/...`
/// on this database, and of walsenders only the one of this slot.
async fn end_sessions_and_lead(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let deadline = Instant::now() + FORCE_TIMEOUT;
    let walsender = format!("cdc-worker/{}", cfg.slot);
    loop {
        let sessions = server::sessions_named(client, "cdc-worker/").await?;
        let mut ended = Vec::new();
        for s in sessions {
            // Another slot's walsender belongs to another worker.
            if s.backend_type.as_deref() == Some("walsender") && s.application_name != walsender {
                continue;
            }
            if server::terminate(client, s.pid).await? {
                ended.push(format!("{} ({})", s.pid, s.application_name));
            }
        }
        if !ended.is_empty() {
            println!("ended sessions: {}", ended.join(", "));
        }
        // The worker retries after at least half a second: take the lock before it does.
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if leader::try_lead(client, cfg).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if Instant::now() >= deadline {
            return Err(definite(format!(
                "could not take the leader lock of slot {} within {}s of ending the running \
                 worker's sessions: it keeps coming back. Stop its process, then run teardown \
                 again",
                cfg.slot,
                FORCE_TIMEOUT.as_secs()
            )));
        }
    }
}

/// How long teardown waits for the slot's walsender to go after the worker stopped.
const SLOT_RELEASE_TIMEOUT: Duration = Duration::from_secs(15);

async fn execute(client: &Client, cfg: &Config, plan: &Plan) -> anyhow::Result<()> {
    if let Some(sql) = &plan.drop_slot {
        wait_slot_inactive(client, cfg).await?;
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("dropping replication slot {}", cfg.slot))?;
        println!("dropped replication slot {}", cfg.slot);
    }
    client.batch_execute("BEGIN").await?;
    let mut schema_kept = false;
    let result = async {
        for sql in &plan.statements {
            client
                .batch_execute(sql)
                .await
                .with_context(|| format!("running: {sql}"))?;
        }
        if let Some(sql) = &plan.drop_state_schema {
            client.batch_execute("SAVEPOINT state_schema").await?;
            if let Err(e) = client.batch_execute(sql).await {
                schema_kept = true;
                // Something appeared in it meanwhile: keep it, with everything else done.
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT state_schema")
                    .await?;
                println!(
                    "kept: schema {}: {}",
                    state::schema(cfg),
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string())
                );
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = client.batch_execute("ROLLBACK").await;
        let done = if plan.drop_slot.is_some() {
            "the slot is dropped, nothing else was changed"
        } else {
            "nothing was changed"
        };
        return Err(e.context(format!(
            "teardown stopped: {done}. Fix the cause and run teardown again"
        )));
    }
    client.batch_execute("COMMIT").await?;
    let schema = plan.drop_state_schema.iter().filter(|_| !schema_kept);
    for sql in plan.statements.iter().chain(schema) {
        println!("done: {sql}");
    }
    Ok(())
}

/// The slot's walsender (the worker just stopped, or a consumer we did not end) must be
/// gone before the slot can be dropped.
async fn wait_slot_inactive(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let deadline = Instant::now() + SLOT_RELEASE_TIMEOUT;
    loop {
        let active = server::slot_row(client, &cfg.slot)
            .await?
            .and_then(|s| s.active_pid);
        let Some(pid) = active else { return Ok(()) };
        if Instant::now() >= deadline {
            let who = server::session(client, pid)
                .await?
                .map_or_else(|| format!("pid {pid}"), |s| describe(&s));
            return Err(definite(format!(
                "replication slot {} is still streamed by {who}, which is not a worker this \
                 teardown ended. Fix: stop that consumer, then run teardown again",
                cfg.slot
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
