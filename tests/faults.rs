//! Fault tests: the worker under a mixed workload while it is killed at random points,
//! while Postgres restarts, while a TCP proxy cuts its connections, while the Next.js
//! endpoint fails or hangs, and after its slot was lost. After each: the summary equals
//! the source, `reconcile` reports 0, and every product that changed had its tags
//! delivered after its last change.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use support::{
    outbox_len, reconcile_report, revalidate_env, slot_confirmed, slot_count, wait_converged,
    wait_until, Answer, Cluster, Endpoint, Proxy, TestDb, WorkerProcess,
};
use tokio_postgres::Client;

const SECRET: &str = "fault-secret";

/// Whether `product:{id}` arrived at `r` after `last[id]` for every product in `last`.
fn all_delivered_after(r: &Endpoint, last: &HashMap<String, Instant>) -> Result<(), String> {
    let got = r.deliveries();
    let mut newest: HashMap<&str, Instant> = HashMap::new();
    for d in got.iter() {
        for tag in &d.tags {
            if let Some(id) = tag.strip_prefix("product:") {
                let e = newest.entry(id).or_insert(d.at);
                *e = (*e).max(d.at);
            }
        }
    }
    let missing: Vec<&String> = last
        .iter()
        .filter(|(id, changed)| newest.get(id.as_str()).is_none_or(|at| at < changed))
        .map(|(id, _)| id)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} changed products have no tag after their last change, e.g. {:?}",
            missing.len(),
            last.len(),
            &missing[..missing.len().min(5)]
        ))
    }
}

/// Waits up to `timeout` until [`all_delivered_after`] holds; panics with what is missing.
async fn wait_delivered_after(r: &Endpoint, last: &HashMap<String, Instant>, timeout: Duration) {
    let t = Instant::now();
    while let Err(e) = all_delivered_after(r, last) {
        assert!(t.elapsed() <= timeout, "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- A mixed workload that records when each product last changed ----

struct Workload {
    stop: Arc<AtomicBool>,
    last: Arc<Mutex<HashMap<String, Instant>>>,
    task: tokio::task::JoinHandle<u64>,
}

/// Updates inventory, prices and titles of p1..=p{products}, adds new products and deletes
/// some, one transaction each; every change alters the product's summary row. Survives
/// connection loss (Postgres restarts) by reconnecting.
fn workload(url: String, products: u32) -> Workload {
    let stop = Arc::new(AtomicBool::new(false));
    let last: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (s, l) = (stop.clone(), last.clone());
    let task = tokio::spawn(async move {
        let mut client: Option<Client> = None;
        let mut n: u64 = 0;
        while !s.load(Ordering::Relaxed) {
            let c = match &client {
                Some(c) if !c.is_closed() => c,
                _ => {
                    client = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .ok()
                        .map(|(c, conn)| {
                            tokio::spawn(conn);
                            c
                        });
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            };
            n += 1;
            let p = format!("p{}", 1 + rand::thread_rng().gen_range(0..products));
            let (id, result) = match n % 10 {
                0..=3 => (
                    p.clone(),
                    c.execute(
                        "UPDATE \"Inventory\" SET quantity = quantity + 1 WHERE \"productId\" = $1 AND \"locationId\" = 'l1'",
                        &[&p],
                    )
                    .await,
                ),
                4..=5 => (
                    p.clone(),
                    c.execute(
                        "UPDATE \"Price\" SET amount = amount + 1 WHERE \"productId\" = $1 AND currency = 'USD'",
                        &[&p],
                    )
                    .await,
                ),
                6..=7 => (
                    p.clone(),
                    c.execute(
                        "UPDATE \"Product\" SET title = 'T' || $2::text WHERE id = $1",
                        &[&p, &(n as i64).to_string()],
                    )
                    .await,
                ),
                8 => {
                    let id = format!("new{n}");
                    let r = c
                        .batch_execute(&format!(
                            "BEGIN; INSERT INTO \"Product\"(id, \"storeId\", title) VALUES ('{id}', 's1', 'New'); \
                             INSERT INTO \"Price\" VALUES ('usd{id}', '{id}', 'USD', 1); COMMIT;"
                        ))
                        .await
                        .map(|_| 1);
                    (id, r)
                }
                _ => (
                    p.clone(),
                    c.execute("DELETE FROM \"Product\" WHERE id = $1", &[&p]).await,
                ),
            };
            match result {
                Ok(rows) if rows > 0 => {
                    l.lock().unwrap().insert(id, Instant::now());
                }
                Ok(_) => {}
                // A restart or a cut connection: whether that statement committed is
                // unknown, so it proves nothing either way; reconnect.
                Err(_) => client = None,
            }
        }
        n
    });
    Workload { stop, last, task }
}

impl Workload {
    async fn finish(self) -> HashMap<String, Instant> {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.task.await.unwrap();
        let last = self.last.lock().unwrap().clone();
        eprintln!("workload: {n} statements, {} products changed", last.len());
        assert!(
            last.len() > 50,
            "the workload changed too little to prove anything"
        );
        last
    }
}

/// A worker revalidating at `r`, connected through `url` if given.
fn start(db: &TestDb, r: &Endpoint, url: Option<&str>) -> WorkerProcess {
    let mut e = revalidate_env(&r.url, SECRET).to_vec();
    if let Some(url) = url {
        e.push(("DATABASE_URL", url));
    }
    WorkerProcess::start(db, &["run"], &e)
}

/// The end state every fault test demands.
async fn assert_recovered(db: &TestDb, c: &Client, r: &Endpoint, last: &HashMap<String, Instant>) {
    wait_converged(c, "summary equals the source after the faults").await;
    let (json, out) = reconcile_report(db, &[]);
    assert_eq!(json["discrepancies"], 0, "{json}");
    assert!(out.success, "{}", out.output);
    wait_delivered_after(r, last, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_under_a_mixed_workload() {
    let r = Endpoint::start(Answer::Ok).await;
    let (db, c) = Cluster::shared().prepared_db("fault_kill9", 300).await;
    let mut worker = start(&db, &r, None);
    let load = workload(db.url.clone(), 300);
    let mut rng = rand::thread_rng();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
        worker.kill9();
        worker = start(&db, &r, None);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = load.finish().await;
    assert_recovered(&db, &c, &r, &last).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart_mid_stream() {
    let cluster = Cluster::private("fault_restart");
    let r = Endpoint::start(Answer::Ok).await;
    let (db, _) = cluster.prepared_db("fault_restart", 200).await;
    let worker = start(&db, &r, None);
    let load = workload(db.url.clone(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = load.finish().await;
    let c = db.client().await;
    assert_recovered(&db, &c, &r, &last).await;
    assert!(
        worker.output().contains("reconnecting"),
        "the worker should have logged the reconnect:\n{}",
        worker.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_cut_by_a_tcp_proxy() {
    let cluster = Cluster::shared();
    let r = Endpoint::start(Answer::Ok).await;
    let (db, c) = cluster.prepared_db("fault_proxy", 200).await;
    let p = Proxy::start(cluster.port).await;
    let via_proxy = p.url(&db.url, cluster.port);
    let worker = start(&db, &r, Some(&via_proxy));
    let load = workload(db.url.clone(), 200);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        p.cut();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = load.finish().await;
    assert_recovered(&db, &c, &r, &last).await;
    assert!(
        worker.output().contains("reconnecting"),
        "{}",
        worker.log_tail(30)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nextjs_endpoint_failing_then_hanging() {
    let r = Endpoint::start(Answer::Ok).await;
    let (db, c) = Cluster::shared().prepared_db("fault_endpoint", 200).await;
    let _worker = start(&db, &r, None);
    let load = workload(db.url.clone(), 200);
    // 500s, then a hang longer than the worker's request timeout (5 s).
    r.set(Answer::Status(500));
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.set(Answer::Hang);
    let before = slot_confirmed(&c, &db.slot()).await.expect("the slot");
    tokio::time::sleep(Duration::from_secs(8)).await;
    // The outage holds up neither the summary nor the slot.
    let during = slot_confirmed(&c, &db.slot()).await.expect("the slot");
    assert!(
        during > before,
        "the slot did not advance while Next.js hung"
    );
    let last = load.finish().await;
    wait_converged(&c, "the summary keeps flowing while Next.js is down").await;
    let pending = outbox_len(&c).await;
    assert!(pending > 0, "tags wait in the outbox during the outage");
    r.set(Answer::Ok);
    assert_recovered(&db, &c, &r, &last).await;
}

/// A streaming leader (through `leader_url` if given) and a standby waiting behind it.
async fn leader_and_standby(
    db: &TestDb,
    r: &Endpoint,
    leader_url: Option<&str>,
) -> (WorkerProcess, WorkerProcess) {
    let leader = start(db, r, leader_url);
    leader
        .wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    let standby = start(db, r, None);
    standby
        .wait_for_log(Duration::from_secs(20), "waiting as standby")
        .await;
    (leader, standby)
}

/// The leader's network goes silent without a RST (the proxy keeps every socket open and
/// forwards nothing): its backend would hold the leader lock until the server's TCP
/// keepalive (hours). The leader session's idle timeout ends it, the standby takes over,
/// ends the stale walsender and streams.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_network_cut_hands_over_within_30s() {
    let cluster = Cluster::shared();
    let r = Endpoint::start(Answer::Ok).await;
    let (db, c) = cluster.prepared_db("fault_silent", 20).await;
    let p = Proxy::start(cluster.port).await;
    let via_proxy = p.url(&db.url, cluster.port);
    let (_leader, standby) = leader_and_standby(&db, &r, Some(&via_proxy)).await;
    let t = Instant::now();
    p.freeze();
    standby
        .wait_for_log(Duration::from_secs(40), "took over as leader")
        .await;
    let took = t.elapsed();
    eprintln!("takeover after a silent network cut: {took:?}");
    assert!(took < Duration::from_secs(30), "takeover took {took:?}");
    c.batch_execute("UPDATE \"Product\" SET title = 'after the cut' WHERE id = 'p1'")
        .await
        .unwrap();
    wait_converged(&c, "the new leader streams").await;
    p.cut();
}

/// A config file of `db`'s own with `batch.heartbeat_secs = 1`: three silent heartbeats
/// take 3 s.
fn heartbeat_of_1s(db: &TestDb) -> String {
    db.config_file("[batch]\nheartbeat_secs = 1\n")
}

/// Issue 18, item 2: after a restart the walsender re-reads a large transaction from the
/// slot's restart point and sends nothing until it reaches its commit. With a heartbeat of
/// 1 s, that silence used to end the session after 3 s ("the connection is dead"), and the
/// leader session's idle timeout (2 heartbeats + 5 s) ended it too; every reconnect started
/// the same decode again and the slot never got past the transaction. Now the worker asks
/// the server, finds its walsender busy, waits, keeps its leader session alive, and gets
/// through in one session.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_silent_decode_is_waited_for() {
    let (db, c) = Cluster::shared().prepared_db("long_decode", 20).await;
    // Protocol 1: with protocol 2 the walsender streams a transaction this large in blocks
    // while it decodes it (tests/streaming.rs), so the stream is not silent. Protocol 1
    // stays selectable, and a silent decode still happens under 2 (WAL re-read from the
    // slot's restart point that holds nothing to send), so the rule must hold for both.
    let config = db.config_file("pgoutput_protocol = 1\n\n[batch]\nheartbeat_secs = 1\n");
    // With the worker stopped: a transaction the walsender needs well over 3 heartbeats to
    // decode (1.5M rows of a table outside the publication: ~13 s on the 2-core machine
    // this was written on), ending with a change the summary must show.
    c.batch_execute(
        "CREATE TABLE bulk_filler (id int, v text);
         BEGIN;
         INSERT INTO bulk_filler SELECT g, 'x' FROM generate_series(1, 1500000) g;
         UPDATE \"Price\" SET amount = 4242 WHERE id = 'usd1';
         COMMIT;",
    )
    .await
    .unwrap();
    let past: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
    wait_until(
        Duration::from_secs(180),
        "the change behind the long decode is in the summary",
        || async {
            support::summary_of(&c, "p1")
                .await
                .is_some_and(|r| r.get::<_, i32>(2) == 4242)
        },
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the slot past the transaction",
        || async {
            c.query_one(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = $1",
                &[&db.slot(), &past],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        },
    )
    .await;
    let log = w.output();
    assert!(
        log.contains("waiting for a long decode"),
        "the log does not say it waited for a long decode:\n{}",
        w.log_tail(30)
    );
    assert!(
        !log.contains("replication session ended"),
        "the session ended while the walsender decoded:\n{}",
        w.log_tail(30)
    );
    wait_converged(&c, "the summary equals the source").await;
}

/// The other side of the same rule: a connection that went silent because the network
/// did (a cut without RST) is still found dead, now by the server not answering the look
/// at its walsender, and the session ends to reconnect.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_cut_is_still_a_dead_connection() {
    let cluster = Cluster::shared();
    let (db, _c) = cluster.prepared_db("silent_dead", 5).await;
    let config = heartbeat_of_1s(&db);
    let p = Proxy::start(cluster.port).await;
    let via_proxy = p.url(&db.url, cluster.port);
    let w = WorkerProcess::start(
        &db,
        &["--config", &config, "run"],
        &[("DATABASE_URL", via_proxy.as_str())],
    );
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    p.freeze();
    // 3 s of silence, then at most 10 s for the look at the server.
    w.wait_for_log(
        Duration::from_secs(30),
        "the replication connection is dead",
    )
    .await;
    assert!(
        !w.output().contains("waiting for a long decode"),
        "{}",
        w.log_tail(20)
    );
    p.cut();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_leader_hands_over_at_once() {
    let r = Endpoint::start(Answer::Ok).await;
    let (db, c) = Cluster::shared().prepared_db("fault_handover", 20).await;
    let (leader, standby) = leader_and_standby(&db, &r, None).await;
    let t = Instant::now();
    leader.sigterm();
    standby
        .wait_for_log(Duration::from_secs(10), "took over as leader")
        .await;
    let took = t.elapsed();
    eprintln!("handover after SIGTERM took {took:?}");
    assert!(took < Duration::from_secs(5), "handover took {took:?}");
    c.batch_execute("UPDATE \"Product\" SET title = 'after handover' WHERE id = 'p1'")
        .await
        .unwrap();
    wait_converged(&c, "the new leader applies").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_slot_is_recreated_and_backfilled() {
    let cluster = Cluster::private("fault_lost_slot");
    let r = Endpoint::start(Answer::Ok).await;
    let (db, c) = cluster.prepared_db("fault_lost_slot", 50).await;
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
        "CREATE TABLE filler (v text)",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    // The worker is not running: these changes sit in WAL that is about to be removed.
    c.batch_execute("UPDATE \"Price\" SET amount = 7 WHERE \"productId\" IN ('p1', 'p2')")
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "the slot to be lost", || async {
        c.batch_execute(
            "INSERT INTO filler SELECT repeat(md5(g::text), 30) FROM generate_series(1, 20000) g; \
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await
        .unwrap();
        let status: Option<String> = c
            .query_one(
                "SELECT wal_status::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&db.slot()],
            )
            .await
            .unwrap()
            .get(0);
        status.as_deref() == Some("lost")
    })
    .await;
    // First a crash right after the lost slot was dropped: the mark written before the
    // drop makes the next start recreate it and recompute.
    let mut e = revalidate_env(&r.url, SECRET).to_vec();
    e.push(("FAILPOINTS", "slot-dropped=return"));
    let mut crashed = WorkerProcess::start(&db, &["run"], &e);
    assert!(!crashed.wait_exit(Duration::from_secs(60)).success());
    assert_eq!(
        slot_count(&c, &db.slot()).await,
        0,
        "crashed after the drop:\n{}",
        crashed.log_tail(20)
    );
    let worker = start(&db, &r, None);
    wait_converged(&c, "summary rebuilt after the slot was recreated").await;
    // The rows are visible when the recompute's last page commits, a moment before the
    // worker logs it: wait for the line rather than read the log at once.
    worker
        .wait_for_log(
            Duration::from_secs(10),
            "recovered: every product recomputed",
        )
        .await;
    let mut last = HashMap::new();
    last.insert("p1".to_string(), Instant::now() - Duration::from_secs(60));
    last.insert("p2".to_string(), Instant::now() - Duration::from_secs(60));
    wait_delivered_after(&r, &last, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_endpoint_down_neither_blocks_nor_repeats_the_other() {
    let up = Endpoint::start(Answer::Ok).await;
    let down = Endpoint::start(Answer::Status(500)).await;
    let (db, c) = Cluster::shared().prepared_db("fault_fanout", 10).await;
    let urls = format!("{},{}", up.url, down.url);
    let _w = WorkerProcess::start(&db, &["run"], &revalidate_env(&urls, SECRET));
    for i in 1..=5 {
        c.batch_execute(&format!(
            "UPDATE \"Product\" SET title = 'v{i}' WHERE id = 'p{i}'"
        ))
        .await
        .unwrap();
    }
    wait_until(
        Duration::from_secs(10),
        "the healthy endpoint gets every tag",
        || async { (1..=5).all(|i| up.got(&format!("product:p{i}"))) },
    )
    .await;
    assert!(down.tags().is_empty());
    down.set(Answer::Ok);
    wait_until(
        Duration::from_secs(20),
        "the recovered endpoint catches up",
        || async { (1..=5).all(|i| down.got(&format!("product:p{i}"))) },
    )
    .await;
    for i in 1..=5 {
        let n = up.count(&format!("product:p{i}"));
        assert_eq!(n, 1, "product:p{i} sent {n} times to the healthy endpoint");
    }
}
