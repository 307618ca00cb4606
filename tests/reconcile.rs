//! `cdc-worker reconcile` against a real Postgres, through the real binary. Each test has
//! its own database and slot (tests/support).

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Cluster, WorkerProcess};
use tokio_postgres::Client;

/// A test database set up for the worker, driven through the CLI.
struct TestDb(support::TestDb);

/// A fresh database with the reference schema and `products` products (ids p0001...,
/// stores s1/s2 alternating, a USD price, 2 inventory rows and 1 image each), set up with
/// `cdc-worker setup`.
async fn fresh_db(tag: &str, products: usize) -> (TestDb, Client) {
    let db = Cluster::shared().create_db(&format!("rc_{tag}")).await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "INSERT INTO \"Product\" (\"id\", \"storeId\", \"title\", \"active\") \
             SELECT 'p' || lpad(i::text, 4, '0'), 's' || (1 + i % 2), 'Product ' || i, true \
             FROM generate_series(1, {products}) i;
             INSERT INTO \"Price\" SELECT 'pr' || i, 'p' || lpad(i::text, 4, '0'), 'USD', 100 + i \
             FROM generate_series(1, {products}) i;
             INSERT INTO \"Inventory\" SELECT 'in' || l || '-' || i, 'p' || lpad(i::text, 4, '0'), \
             'loc' || l, 10 + i, 1 FROM generate_series(1, {products}) i, generate_series(1, 2) l;
             INSERT INTO \"ProductImage\" SELECT 'im' || i, 'p' || lpad(i::text, 4, '0'), \
             'https://img/' || i || '.jpg', 0 FROM generate_series(1, {products}) i;"
        ))
        .await
        .unwrap();
    let db = TestDb(db);
    let out = db.cli(&["setup"]);
    assert!(out.status.success(), "setup failed: {}", stderr(&out));
    (db, client)
}

impl TestDb {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(support::worker_bin());
        cmd.args(args)
            .envs(self.0.worker_env())
            .env("CDC_LOG", "info")
            .env_remove("CDC_REVALIDATE_URLS")
            .env_remove("CDC_REVALIDATE_SECRET");
        cmd
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// `reconcile --json` with `args`; returns the report and the exit code.
    fn reconcile(&self, args: &[&str]) -> (Value, i32) {
        let mut all = vec!["reconcile", "--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        let code = out.status.code().unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "reconcile printed no JSON ({e}), exit {code}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                stderr(&out)
            )
        });
        (json, code)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Plants one drift of each kind: p0001's row deleted (missing), an orphan row, and one
/// row per field with that field altered (p0002..p0007).
async fn plant_drift(c: &Client) {
    c.batch_execute(
        "DELETE FROM \"ProductSummary\" WHERE \"productId\" = 'p0001';
         INSERT INTO \"ProductSummary\" VALUES ('orphan1', 'zz-gone', 's1', 'Gone', 1, true, 0, NULL, now());
         UPDATE \"ProductSummary\" SET \"storeId\" = 's9' WHERE \"productId\" = 'p0002';
         UPDATE \"ProductSummary\" SET \"title\" = 'Wrong' WHERE \"productId\" = 'p0003';
         UPDATE \"ProductSummary\" SET \"price\" = \"price\" + 1 WHERE \"productId\" = 'p0004';
         UPDATE \"ProductSummary\" SET \"active\" = NOT \"active\" WHERE \"productId\" = 'p0005';
         UPDATE \"ProductSummary\" SET \"inventoryAvailable\" = 999 WHERE \"productId\" = 'p0006';
         UPDATE \"ProductSummary\" SET \"primaryImageUrl\" = NULL WHERE \"productId\" = 'p0007';",
    )
    .await
    .unwrap();
}

fn assert_planted_counts(r: &Value, products: u64) {
    assert_eq!(r["checked"], products + 1, "{r}");
    assert_eq!(r["missing"], 1, "{r}");
    assert_eq!(r["orphaned"], 1, "{r}");
    assert_eq!(r["different"], 6, "{r}");
    assert_eq!(r["discrepancies"], 8, "{r}");
    for field in [
        "storeId",
        "title",
        "price",
        "active",
        "inventoryAvailable",
        "primaryImageUrl",
    ] {
        assert_eq!(r["fields"][field], 1, "field {field}: {r}");
    }
    let rate = r["rate"].as_f64().unwrap();
    assert!((rate - 8.0 / (products + 1) as f64).abs() < 1e-12, "{r}");
}

#[tokio::test]
async fn counts_each_kind_of_drift_exactly() {
    let (db, c) = fresh_db("kinds", 40).await;
    let (r, code) = db.reconcile(&["--settle-timeout", "1"]);
    assert_eq!(r["discrepancies"], 0, "{r}");
    assert_eq!(r["checked"], 40, "{r}");
    assert_eq!(code, 0);

    plant_drift(&c).await;
    // No daemon runs: the first fence times out, which the report says.
    let (r, code) = db.reconcile(&["--settle-timeout", "1"]);
    assert_planted_counts(&r, 40);
    assert_eq!(r["settled"], false, "{r}");
    assert!(r["fixed"].is_null(), "{r}");
    assert!(r["store"].is_null(), "{r}");
    assert!(r["duration_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(code, 1, "8/41 is above the default max rate");

    // Tiny pages (ids present on one side only at page edges) give the same counts.
    for page in ["1", "3", "7"] {
        let (r, _) = db.reconcile(&["--settle-timeout", "0", "--page-size", page, "--jobs", "3"]);
        assert_planted_counts(&r, 40);
    }

    let (_, code) = db.reconcile(&["--settle-timeout", "0", "--max-rate", "0.5"]);
    assert_eq!(code, 0, "8/41 is within --max-rate 0.5");
}

#[tokio::test]
async fn human_output_is_a_table() {
    let (db, c) = fresh_db("table", 10).await;
    plant_drift(&c).await;
    let out = db.cli(&["reconcile", "--settle-timeout", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("11 products checked"), "{text}");
    assert!(text.contains("inventoryAvailable"), "{text}");
    assert!(
        stderr(&out).contains("reconcile finished"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn fix_repairs_everything_and_enqueues_tags() {
    let (db, c) = fresh_db("fix", 30).await;
    plant_drift(&c).await;
    let mut cmd = db.command(&["reconcile", "--json", "--fix", "--settle-timeout", "0"]);
    // With a revalidation endpoint configured, repairs enqueue their cache tags.
    cmd.envs(support::revalidate_env(support::CLOSED_PORT_URL, "s3cret"));
    let out = cmd.output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_planted_counts(&r, 30);
    assert_eq!(r["fixed"], 8, "{r}");
    assert_eq!(r["unfixed"], 0, "{r}");
    assert_eq!(out.status.code(), Some(0), "all repaired: {}", stderr(&out));

    let (r, code) = db.reconcile(&["--settle-timeout", "0"]);
    assert_eq!(r["discrepancies"], 0, "{r}");
    assert_eq!(r["checked"], 30, "{r}");
    assert_eq!(code, 0);

    let tags = support::outbox_tags(&c).await;
    for tag in [
        "product:p0001",
        "product:zz-gone",
        "product:p0003",
        "store:s9:products",
    ] {
        assert!(tags.iter().any(|t| t == tag), "{tag} not in {tags:?}");
    }
}

#[tokio::test]
async fn history_shows_the_runs() {
    let (db, c) = fresh_db("history", 10).await;
    db.reconcile(&["--settle-timeout", "0"]);
    plant_drift(&c).await;
    db.reconcile(&["--settle-timeout", "0", "--store", "s1"]);

    let out = db.cli(&["reconcile", "--history", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    // Newest first.
    assert_eq!(runs[0]["store"], "s1");
    assert!(runs[0]["discrepancies"].as_i64().unwrap() > 0);
    assert_eq!(runs[1]["discrepancies"], 0);
    assert_eq!(runs[1]["checked"], 10);
    assert!(runs[0]["fields"]["title"].is_number());

    let out = db.cli(&["reconcile", "--history", "--limit", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("discrepancies"), "{text}");
    assert_eq!(text.lines().count(), 2, "header and one run: {text}");
}

#[tokio::test]
async fn store_limits_the_check() {
    let (db, c) = fresh_db("store", 20).await;
    // Odd ids are in s2, even ids in s1 (1 + i % 2).
    c.batch_execute(
        "UPDATE \"ProductSummary\" SET \"title\" = 'x' WHERE \"productId\" IN ('p0002', 'p0004', 'p0003');
         DELETE FROM \"ProductSummary\" WHERE \"productId\" = 'p0006';
         INSERT INTO \"ProductSummary\" VALUES ('o1', 'zz-orphan', 's1', 'Gone', 1, true, 0, NULL, now());
         UPDATE \"ProductSummary\" SET \"storeId\" = 's2' WHERE \"productId\" = 'p0008';",
    )
    .await
    .unwrap();
    let (r, _) = db.reconcile(&["--settle-timeout", "0", "--store", "s1", "--page-size", "2"]);
    assert_eq!(r["store"], "s1");
    // s1: 10 products + the orphan; p0008 is s1 in the source and s2 in the table.
    assert_eq!(r["checked"], 11, "{r}");
    assert_eq!(r["missing"], 1, "{r}");
    assert_eq!(r["orphaned"], 1, "{r}");
    assert_eq!(r["different"], 3, "{r}");
    assert_eq!(r["fields"]["title"], 2, "{r}");
    assert_eq!(r["fields"]["storeId"], 1, "{r}");

    let (r, _) = db.reconcile(&["--settle-timeout", "0", "--store", "s2"]);
    // s2: 10 products, plus p0008 whose row sits in s2.
    assert_eq!(r["checked"], 11, "{r}");
    assert_eq!(r["different"], 2, "{r}");
    assert_eq!(r["fields"]["title"], 1, "{r}");
    assert_eq!(r["fields"]["storeId"], 1, "{r}");
    assert_eq!(r["discrepancies"], 2, "{r}");

    let (r, _) = db.reconcile(&["--settle-timeout", "0"]);
    assert_eq!(r["discrepancies"], 6, "{r}");
}

#[tokio::test]
async fn without_setup_it_says_run_setup_first() {
    let db = TestDb(Cluster::shared().create_db("rc_nosetup").await);
    for args in [&["reconcile"][..], &["reconcile", "--history"][..]] {
        let out = db.cli(args);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("run `cdc-worker setup` first"),
            "{}",
            stderr(&out)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_worker_reconciles_to_zero() {
    let (db, c) = fresh_db("busy", 300).await;
    let worker = WorkerProcess::start(&db.0, &["run"], &[("CDC_LOG", "info")]);
    worker
        .wait_for_log(Duration::from_secs(30), support::STREAMING)
        .await;

    // A writer touching every source table of random products, one transaction each.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let id = format!("p{:04}", 1 + (n * 7919) % 300);
                let sql = match n % 4 {
                    0 => "UPDATE \"Inventory\" SET \"quantity\" = \"quantity\" + 1 WHERE \"productId\" = $1",
                    1 => "UPDATE \"Price\" SET \"amount\" = \"amount\" + 1 WHERE \"productId\" = $1",
                    2 => "UPDATE \"Product\" SET \"title\" = \"title\" || '!' WHERE \"id\" = $1",
                    _ => "UPDATE \"ProductImage\" SET \"url\" = \"url\" || '?' WHERE \"productId\" = $1",
                };
                c.execute(sql, &[&id]).await.unwrap();
            }
            n
        })
    };

    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs(6) || runs < 3 {
        let db_args = ["--page-size", "25", "--settle-timeout", "10"];
        let out = db
            .command(&[&["reconcile", "--json"][..], &db_args[..]].concat())
            .output()
            .unwrap();
        let r: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        assert_eq!(r["discrepancies"], 0, "{r}\n{}", stderr(&out));
        assert_eq!(r["settled"], true, "{r}");
        assert_eq!(r["checked"], 300, "{r}");
        assert_eq!(out.status.code(), Some(0));
        runs += 1;
    }
    // Real drift is still found on a busy system: the daemon never touches an orphan.
    let admin = db.0.client().await;
    admin
        .batch_execute("INSERT INTO \"ProductSummary\" VALUES ('o1', 'zz-orphan', 's1', 'Gone', 1, true, 0, NULL, now())")
        .await
        .unwrap();
    let (r, code) = db.reconcile(&["--page-size", "25"]);
    assert_eq!(r["discrepancies"], 1, "{r}");
    assert_eq!(r["orphaned"], 1, "{r}");
    assert_eq!(r["settled"], true, "{r}");
    assert_eq!(code, 1);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 100, "the writer made only {writes} writes");
    drop(worker);
}
