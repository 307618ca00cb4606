//! Large transactions streamed while they run (pgoutput protocol 2, `streaming 'on'`),
//! against a real PostgreSQL. Streaming is forced per test database: a 64 kB
//! `logical_decoding_work_mem` and, on 16+, `debug_logical_replication_streaming =
//! immediate` (every change is streamed at once), both read by the walsender the worker
//! opens on that database. Each test checks that the slot really streamed
//! (`pg_stat_replication_slots.stream_txns`), that the summary converges, and what the
//! streamed transactions' commits and aborts did.

mod support;

use std::time::Duration;

use support::{
    drift, reconcile_report, seed, slot_and_checkpoint, summary_of, wait_converged, wait_until,
    Cluster, TestDb, WorkerProcess,
};
use tokio_postgres::Client;

/// A database that streams every transaction past 64 kB (16+: every one), seeded, set up,
/// with a running worker.
async fn streaming_db(
    hint: &str,
    products: i32,
    extra: &[(&str, &str)],
) -> (TestDb, Client, WorkerProcess) {
    let cluster = Cluster::shared();
    let db = cluster.create_db(hint).await;
    let c = db.client().await;
    let mut settings = vec!["logical_decoding_work_mem = '64kB'"];
    if cluster.major_version().await >= 16 {
        settings.push("debug_logical_replication_streaming = immediate");
    }
    for s in settings {
        c.batch_execute(&format!("ALTER DATABASE \"{}\" SET {s}", db.name))
            .await
            .unwrap();
    }
    seed(&c, 1, products).await;
    let setup = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(setup.success, "setup failed:\n{}", setup.output);
    let w = WorkerProcess::start(&db, &["run"], extra);
    w.wait_for_log(Duration::from_secs(30), support::STREAMING)
        .await;
    (db, c, w)
}

/// Transactions the slot has streamed so far (the statistics lag a moment).
async fn streamed(c: &Client, slot: &str) -> i64 {
    c.query_opt(
        "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .map_or(0, |r| r.get(0))
}

async fn wait_streamed(c: &Client, slot: &str, at_least: i64) {
    wait_until(
        Duration::from_secs(30),
        "the slot streamed transactions",
        || async { streamed(c, slot).await >= at_least },
    )
    .await;
}

/// The worker's "streamed transaction committed" lines so far.
fn committed(w: &WorkerProcess) -> Vec<String> {
    w.log()
        .lines()
        .filter(|l| l.contains("streamed transaction committed"))
        .map(str::to_string)
        .collect()
}

/// `reconcile --json` reports no discrepancy.
fn assert_reconciled(db: &TestDb) {
    let (json, out) = reconcile_report(db, &[]);
    assert_eq!(json["discrepancies"], 0, "{json}");
    assert!(out.success, "{}", out.output);
}

/// Sets the quantity of every Inventory row of products `from..=to`, one statement per
/// product: enough changes to pass 64 kB.
async fn set_stock(t: &Client, from: i32, to: i32, quantity: i32) {
    for p in from..=to {
        t.execute(
            "UPDATE \"Inventory\" SET quantity = $2 WHERE \"productId\" = $1",
            &[&format!("p{p}"), &quantity],
        )
        .await
        .unwrap();
    }
}

async fn available(c: &Client, product: &str) -> i32 {
    summary_of(c, product).await.expect("a summary row").get(4)
}

#[tokio::test(flavor = "multi_thread")]
async fn interleaved_streamed_transactions_commit_and_abort() {
    let (db, c, w) = streaming_db("stream_interleaved", 400, &[]).await;
    let (t1, t2, t3) = (db.client().await, db.client().await, db.client().await);
    for t in [&t1, &t2, &t3] {
        t.batch_execute("BEGIN").await.unwrap();
    }
    // Three transactions write at once, block after block, with an ordinary one between.
    // (Twice over: each transaction alone must outgrow 64 kB on 15.)
    for _ in 0..2 {
        set_stock(&t1, 1, 100, 21).await;
        set_stock(&t2, 101, 180, 22).await;
        c.batch_execute("UPDATE \"Price\" SET amount = 5 WHERE \"productId\" = 'p399'")
            .await
            .unwrap();
        set_stock(&t3, 201, 300, 23).await;
    }
    set_stock(&t1, 301, 320, 21).await;
    wait_streamed(&c, &db.slot(), 3).await;
    // Nothing of them is visible yet, so nothing of them may be in the summary.
    assert_eq!(available(&c, "p1").await, 14);
    wait_until(
        Duration::from_secs(10),
        "the ordinary transaction",
        || async { summary_of(&c, "p399").await.unwrap().get::<_, i32>(2) == 5 },
    )
    .await;

    t2.batch_execute("ROLLBACK").await.unwrap();
    t3.batch_execute("COMMIT").await.unwrap();
    t1.batch_execute("COMMIT").await.unwrap();
    wait_converged(&c, "both committed streams applied").await;
    assert_eq!(available(&c, "p1").await, 2 * (21 - 3));
    assert_eq!(available(&c, "p320").await, 2 * (21 - 3));
    assert_eq!(available(&c, "p250").await, 2 * (23 - 3));
    assert_eq!(
        available(&c, "p150").await,
        14,
        "the aborted stream changed nothing"
    );
    // Each commit handed over exactly its own products (T1 120, T3 100); the abort none
    // (T2 marked 80). On 16+ every transaction is streamed, heartbeats too (0 products).
    let commits = committed(&w);
    for n in ["products=120", "products=100"] {
        assert!(commits.iter().any(|l| l.contains(n)), "{n} in {commits:#?}");
    }
    assert!(
        !commits.iter().any(|l| l.contains("products=80")),
        "{commits:#?}"
    );
    assert_reconciled(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_savepoint_rolled_back_inside_a_streamed_transaction() {
    let (db, c, w) = streaming_db("stream_savepoint", 200, &[]).await;
    let t = db.client().await;
    t.batch_execute("BEGIN").await.unwrap();
    set_stock(&t, 1, 50, 31).await;
    t.batch_execute("SAVEPOINT a").await.unwrap();
    // Twice: on 15 the savepoint's changes are streamed before its rollback only once
    // the transaction outgrew 64 kB.
    set_stock(&t, 51, 100, 32).await;
    set_stock(&t, 51, 100, 32).await;
    // A TRUNCATE that is rolled back must not cost a pass over every product.
    t.batch_execute("SAVEPOINT b; TRUNCATE \"ProductImage\"")
        .await
        .unwrap();
    set_stock(&t, 1, 5, 33).await;
    wait_streamed(&c, &db.slot(), 1).await;
    t.batch_execute("ROLLBACK TO SAVEPOINT a").await.unwrap();
    set_stock(&t, 101, 120, 34).await;
    t.batch_execute("COMMIT").await.unwrap();

    wait_converged(&c, "the transaction without its rolled-back savepoint").await;
    assert_eq!(
        available(&c, "p1").await,
        2 * (31 - 3),
        "p1..p5 were set again only inside the savepoint"
    );
    assert_eq!(available(&c, "p60").await, 14);
    assert_eq!(available(&c, "p110").await, 2 * (34 - 3));
    let images: i64 = c
        .query_one(
            "SELECT count(*) FROM \"ProductSummary\" WHERE \"primaryImageUrl\" IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(images, 200);
    // p1..p50 and p101..p120: what the savepoints alone marked was dropped at their abort
    // (p1..p5 were marked by the transaction too, so they stay).
    let commits = committed(&w);
    assert!(
        commits
            .iter()
            .any(|l| l.contains("products=70") && l.contains("every=false")),
        "{commits:#?}"
    );
    assert!(
        !w.log().contains("recomputed every product"),
        "{}",
        w.log_tail(30)
    );
    assert_reconciled(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncate_inside_a_streamed_transaction() {
    let (db, c, w) = streaming_db("stream_truncate", 150, &[]).await;
    let t = db.client().await;
    t.batch_execute("BEGIN").await.unwrap();
    set_stock(&t, 1, 100, 41).await;
    t.batch_execute("TRUNCATE \"ProductImage\"").await.unwrap();
    set_stock(&t, 101, 110, 42).await;
    wait_streamed(&c, &db.slot(), 1).await;
    assert!(summary_of(&c, "p140")
        .await
        .unwrap()
        .get::<_, Option<String>>(5)
        .is_some());
    t.batch_execute("COMMIT").await.unwrap();
    wait_converged(&c, "every product after the streamed TRUNCATE").await;
    assert_eq!(
        summary_of(&c, "p140")
            .await
            .unwrap()
            .get::<_, Option<String>>(5),
        None
    );
    assert_eq!(available(&c, "p105").await, 2 * (42 - 3));
    w.wait_for_log(Duration::from_secs(5), "recomputed every product")
        .await;
    assert_reconciled(&db);
}

/// The worker dies while a transaction is being streamed, after the checkpoint (and the
/// slot) moved past the transaction's first change: the walsender sends the whole
/// transaction again to the next worker, which applies it at its commit.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_a_stream() {
    let (db, c, mut w) = streaming_db("stream_kill9", 300, &[]).await;
    let slot = db.slot();
    let t = db.client().await;
    let before: i64 = c
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get(0);
    t.batch_execute("BEGIN").await.unwrap();
    set_stock(&t, 1, 150, 51).await;
    wait_streamed(&c, &slot, 1).await;
    // An ordinary transaction commits after the stream began; once it is applied the
    // checkpoint and the slot are past the streamed transaction's first change.
    c.batch_execute("UPDATE \"Price\" SET amount = 7 WHERE \"productId\" = 'p300'")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "slot confirmed past the stream's start",
        || async {
            let (confirmed, checkpoint) = slot_and_checkpoint(&c, &slot).await;
            assert!(confirmed <= checkpoint, "slot passed the checkpoint");
            confirmed > before as u64
        },
    )
    .await;
    w.kill9();
    set_stock(&t, 151, 250, 52).await;
    t.batch_execute("COMMIT").await.unwrap();
    assert_eq!(available(&c, "p1").await, 14, "nobody applied it yet");

    let w2 = WorkerProcess::start(&db, &["run"], &[]);
    wait_converged(&c, "the streamed transaction after kill -9 and restart").await;
    assert_eq!(available(&c, "p1").await, 2 * (51 - 3));
    assert_eq!(available(&c, "p200").await, 2 * (52 - 3));
    assert_eq!(drift(&c).await, 0);
    drop(w2);
    assert_reconciled(&db);
}

/// `pgoutput_protocol = 1` (for a server or proxy that mishandles streaming): nothing is
/// streamed, the same transaction arrives whole after its commit.
#[tokio::test(flavor = "multi_thread")]
async fn protocol_1_sends_large_transactions_after_their_commit() {
    let (db, c, w) = streaming_db("stream_proto1", 120, &[("CDC_PGOUTPUT_PROTOCOL", "1")]).await;
    let t = db.client().await;
    t.batch_execute("BEGIN").await.unwrap();
    set_stock(&t, 1, 120, 61).await;
    t.batch_execute("COMMIT").await.unwrap();
    wait_converged(&c, "the large transaction under protocol 1").await;
    assert_eq!(available(&c, "p120").await, 2 * (61 - 3));
    assert_eq!(
        streamed(&c, &db.slot()).await,
        0,
        "protocol 1 never streams"
    );
    assert!(
        w.log().contains("pgoutput_protocol=1"),
        "{}",
        w.log_tail(20)
    );
    assert!(!w.log().contains("streamed transaction committed"));
}
