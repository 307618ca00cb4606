//! Failover on real clusters: a primary and a physical standby (scripts/test-cluster.sh
//! standby-of), the worker connected through a TCP proxy. The primary stops, the standby is
//! promoted, the proxy points at it, and writes go on, with changes the worker never saw
//! before the failover among them. Nobody runs `setup` again. The summary must converge on
//! the new primary and reconcile must report 0.
//!
//! Two paths:
//! - the new primary has no copy of the slot (PostgreSQL 15/16, or a slot created without
//!   `failover`): the worker finds the slot missing, recreates it and recomputes every
//!   product;
//! - 17+: the slot was created with `failover = true` and synchronized to the standby
//!   (`sync_replication_slots`); the worker streams from it as it is, with no recompute.
//!
//! `FAILOVER_BENCH_PRODUCTS=100000 cargo test --release --test failover -- --ignored`
//! (bench/failover.sh) times the same scenarios at scale.

mod support;

use std::time::{Duration, Instant};

use support::{wait_until, Cluster, Proxy, TestDb, WorkerProcess};
use tokio_postgres::Client;

/// The harness's superuser password (scripts/test-cluster.sh).
const PASSWORD: &str = "cdc-test-password";

/// What one failover run measured.
struct Outcome {
    /// From `pg_ctl promote` to the summary showing a write made on the new primary.
    promotion_to_convergence: Duration,
    log: String,
}

/// The worker's log line when it recomputes every product before streaming (src/control/slot.rs).
const RECOMPUTE: &str = "recomputing every product before streaming";

async fn title_in_summary(c: &Client, product: &str) -> Option<String> {
    c.query_opt(
        "SELECT title FROM \"ProductSummary\" WHERE \"productId\" = $1",
        &[&product],
    )
    .await
    .ok()
    .flatten()
    .map(|r| r.get(0))
}

/// The slot as a standby sees it: (synced, temporary, failover), if it has it.
async fn standby_slot(c: &Client, slot: &str) -> Option<(bool, bool, bool)> {
    c.query_opt(
        "SELECT synced, temporary, failover FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

/// `cdc-worker reconcile --json` through `url`; returns its discrepancy count.
fn reconcile(db: &TestDb, url: &str) -> i64 {
    let out = WorkerProcess::run_to_end(db, &["reconcile", "--json"], &[("DATABASE_URL", url)]);
    let json = support::json_report(&out.output);
    assert!(out.success, "{}", out.output);
    json["discrepancies"].as_i64().expect("discrepancies")
}

/// The whole scenario with `products` products. `failover_slot`: the run expects the slot
/// to be synchronized to the standby and used after promotion (17+).
async fn failover(name: &str, products: i32, failover_slot: bool) -> Outcome {
    let primary = Cluster::private(&format!("{name}_primary"));
    // Before any test database exists: making the standby may restart the primary.
    let standby = primary.standby(&format!("{name}_standby"));
    let (db, c) = primary.seeded_db(name, products).await;
    let on_standby = standby.url_for("postgres", PASSWORD, &db.name);

    let proxy = Proxy::start(primary.port).await;
    let via = proxy.url(&db.url, primary.port);
    let env = [("DATABASE_URL", via.as_str())];
    // Without a failover slot on 17+, the slot is not synchronized: the path of 15/16.
    let config = db.config_file(&format!("failover_slot = {failover_slot}\n"));
    db.setup(&["--config", &config], &env);
    let worker = WorkerProcess::start(&db, &["run", "--config", &config], &env);
    c.batch_execute(
        "UPDATE \"Inventory\" SET quantity = quantity + 1 WHERE \"productId\" IN ('p1', 'p2')",
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(120),
        "converged on the primary",
        || async { support::drift(&c).await == 0 },
    )
    .await;

    let s = support::connect(&on_standby).await;
    if failover_slot {
        // What an operator checks before a planned failover: the standby holds a
        // persistent, synchronized copy of the slot.
        wait_until(
            Duration::from_secs(90),
            "the standby has a synchronized, persistent copy of the slot",
            || async { standby_slot(&s, &db.slot()).await == Some((true, false, true)) },
        )
        .await;
    }

    // Changes the worker never sees from the old primary: its connections go nowhere,
    // then the primary takes writes, ships them to the standby and stops.
    proxy.retarget(support::CLOSED_PORT);
    c.batch_execute(
        "UPDATE \"Product\" SET title = 'missed before failover' WHERE id = 'p1';
         DELETE FROM \"ProductImage\" WHERE \"productId\" = 'p2';
         DELETE FROM \"Inventory\" WHERE \"productId\" = 'p2';
         DELETE FROM \"Price\" WHERE \"productId\" = 'p2';
         DELETE FROM \"Product\" WHERE id = 'p2';
         INSERT INTO \"Product\"(id, \"storeId\", title) VALUES ('p_new', 's1', 'new before failover');
         INSERT INTO \"Price\"(id, \"productId\", currency, amount) VALUES ('usd_new', 'p_new', 'USD', 4200);",
    )
    .await
    .unwrap();
    let primary_lsn: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    wait_until(
        Duration::from_secs(30),
        "the standby replayed the primary",
        || async {
            s.query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&primary_lsn],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        },
    )
    .await;
    let log_before = worker.output().len();

    primary.stop();
    let promoted = Instant::now();
    standby.promote();
    proxy.retarget(standby.port);
    let s = support::connect(&on_standby).await;
    // Writes go on, on the new primary.
    s.batch_execute("UPDATE \"Product\" SET title = 'after failover' WHERE id = 'p3'")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(300),
        "the write made after the promotion is in the summary",
        || async { title_in_summary(&s, "p3").await.as_deref() == Some("after failover") },
    )
    .await;
    let promotion_to_convergence = promoted.elapsed();
    wait_until(
        Duration::from_secs(120),
        "converged on the new primary",
        || async { support::drift(&s).await == 0 },
    )
    .await;
    assert_eq!(
        title_in_summary(&s, "p1").await.as_deref(),
        Some("missed before failover")
    );
    assert_eq!(title_in_summary(&s, "p2").await, None);
    assert_eq!(
        title_in_summary(&s, "p_new").await.as_deref(),
        Some("new before failover")
    );
    assert_eq!(reconcile(&db, &via), 0);
    let log = worker.output()[log_before..].to_string();
    Outcome {
        promotion_to_convergence,
        log,
    }
}

async fn server_version_num(cluster: &Cluster) -> i32 {
    let c = cluster.admin_client("postgres").await;
    c.query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0)
}

/// The promoted standby has no copy of the slot: always so on 15/16, and on 17+ with
/// `failover_slot = false`.
#[tokio::test(flavor = "multi_thread")]
async fn failover_to_a_standby_without_the_slot_recreates_it_and_recomputes() {
    let out = failover("fo_noslot", 200, false).await;
    assert!(out.log.contains(RECOMPUTE), "{}", out.log);
    assert!(out.log.contains("reason=\"missing\""), "{}", out.log);
    eprintln!(
        "promotion to convergence (slot missing, 200 products): {:?}",
        out.promotion_to_convergence
    );
}

/// 17+: the failover slot synchronized to the standby is used as it is.
#[tokio::test(flavor = "multi_thread")]
async fn failover_slot_survives_promotion_without_a_recompute() {
    let probe = Cluster::shared();
    if server_version_num(probe).await < 170000 {
        support::skip("failover_slot", "failover slots need PostgreSQL 17+");
        return;
    }
    let out = failover("fo_synced", 200, true).await;
    assert!(!out.log.contains(RECOMPUTE), "{}", out.log);
    // The slot the worker streams from on the new primary is the synchronized copy.
    assert!(
        out.log.contains("replication slot state") && out.log.contains("failover=true synced=true"),
        "{}",
        out.log
    );
    eprintln!(
        "promotion to convergence (synchronized slot, 200 products): {:?}",
        out.promotion_to_convergence
    );
}

/// bench/failover.sh: promotion-to-convergence at FAILOVER_BENCH_PRODUCTS products
/// (default 100000) on the version of this run, on the path this version takes.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: bench/failover.sh"]
async fn bench_promotion_to_convergence() {
    let products: i32 = std::env::var("FAILOVER_BENCH_PRODUCTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let num = server_version_num(Cluster::shared()).await;
    // FAILOVER_BENCH_PATH=recompute takes the missing-slot path on 17+ too.
    let synced =
        num >= 170000 && std::env::var("FAILOVER_BENCH_PATH").as_deref() != Ok("recompute");
    let out = failover("fo_bench", products, synced).await;
    assert_eq!(out.log.contains(RECOMPUTE), !synced, "{}", out.log);
    let recompute = out
        .log
        .lines()
        .find(|l| l.contains("recompute done"))
        .and_then(|l| l.split("seconds=\"").nth(1))
        .and_then(|s| s.split('"').next())
        .unwrap_or("-")
        .to_string();
    println!(
        "RESULT server_version_num={num} products={products} path={} promotion_to_convergence_s={:.2} recompute_s={recompute}",
        if synced { "failover_slot" } else { "recreate_and_recompute" },
        out.promotion_to_convergence.as_secs_f64()
    );
}
