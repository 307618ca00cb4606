//! Fault tests: the worker under a mixed workload while it is killed at random points,
//! while Postgres restarts, while a TCP proxy cuts its connections, while the Next.js
//! endpoint fails or hangs, and after its slot was lost. After each: the summary equals
//! the source, `reconcile` reports 0, and every product that changed had its tags
//! delivered after its last change.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use support::{
    reconcile_report, seed, wait_converged, wait_until, Cluster, Proxy, TestDb, WorkerProcess,
};
use tokio_postgres::Client;

const SECRET: &str = "fault-secret";

// ---- An in-process revalidation endpoint that records what arrives, or misbehaves ----

const OK: u8 = 0;
const FAIL_500: u8 = 1;
const HANG: u8 = 2;

#[derive(Clone)]
struct Receiver {
    url: String,
    mode: Arc<AtomicU8>,
    /// Every tag received with a 200, with its arrival time.
    received: Arc<Mutex<Vec<(String, Instant)>>>,
}

async fn receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = Receiver {
        url: format!("http://{}/api/revalidate", listener.local_addr().unwrap()),
        mode: Arc::new(AtomicU8::new(OK)),
        received: Arc::default(),
    };
    let state = r.clone();
    let app = axum::Router::new().route(
        "/api/revalidate",
        axum::routing::post(move |body: String| {
            let state = state.clone();
            async move {
                match state.mode.load(Ordering::SeqCst) {
                    FAIL_500 => return axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    HANG => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    _ => {}
                }
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let now = Instant::now();
                let mut got = state.received.lock().unwrap();
                for t in v["tags"].as_array().unwrap() {
                    got.push((t.as_str().unwrap().to_string(), now));
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    r
}

impl Receiver {
    /// Whether `product:{id}` arrived after `since` for every product in `last`.
    fn all_delivered_after(&self, last: &HashMap<String, Instant>) -> Result<(), String> {
        let got = self.received.lock().unwrap();
        let mut newest: HashMap<&str, Instant> = HashMap::new();
        for (tag, at) in got.iter() {
            if let Some(id) = tag.strip_prefix("product:") {
                let e = newest.entry(id).or_insert(*at);
                *e = (*e).max(*at);
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

/// The worker's environment with the receiver as its endpoint.
fn env(r: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("CDC_REVALIDATE_URLS", r.url.clone()),
        ("CDC_REVALIDATE_SECRET", SECRET.to_string()),
    ]
}

fn start(db: &TestDb, r: &Receiver, url: Option<&str>) -> WorkerProcess {
    let mut e = env(r);
    if let Some(url) = url {
        e.push(("DATABASE_URL", url.to_string()));
    }
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    WorkerProcess::start(db, &["run"], &e)
}

async fn prepared(cluster: &Cluster, hint: &str, products: i32) -> (TestDb, Client) {
    let db = cluster.create_db(hint).await;
    let c = db.client().await;
    seed(&c, 1, products).await;
    let setup = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    (db, c)
}

/// The end state every fault test demands.
async fn assert_recovered(db: &TestDb, c: &Client, r: &Receiver, last: &HashMap<String, Instant>) {
    wait_converged(c, "summary equals the source after the faults").await;
    let (json, out) = reconcile_report(db, &[]);
    assert_eq!(json["discrepancies"], 0, "{json}");
    assert!(out.success, "{}", out.output);
    let t = Instant::now();
    loop {
        match r.all_delivered_after(last) {
            Ok(()) => break,
            Err(e) if t.elapsed() > Duration::from_secs(20) => panic!("{e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_under_a_mixed_workload() {
    let r = receiver().await;
    let (db, c) = prepared(Cluster::shared(), "fault_kill9", 300).await;
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
    let r = receiver().await;
    let (db, _) = prepared(&cluster, "fault_restart", 200).await;
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
    let r = receiver().await;
    let (db, c) = prepared(cluster, "fault_proxy", 200).await;
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

async fn confirmed(c: &Client, slot: &str) -> i64 {
    c.query_one(
        "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn nextjs_endpoint_failing_then_hanging() {
    let r = receiver().await;
    let (db, c) = prepared(Cluster::shared(), "fault_endpoint", 200).await;
    let _worker = start(&db, &r, None);
    let load = workload(db.url.clone(), 200);
    // 500s, then a hang longer than the worker's request timeout (5 s).
    r.mode.store(FAIL_500, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.mode.store(HANG, Ordering::SeqCst);
    let before = confirmed(&c, &db.slot()).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    // The outage holds up neither the summary nor the slot.
    let during = confirmed(&c, &db.slot()).await;
    assert!(
        during > before,
        "the slot did not advance while Next.js hung"
    );
    let last = load.finish().await;
    wait_converged(&c, "the summary keeps flowing while Next.js is down").await;
    let pending: i64 = c
        .query_one("SELECT count(*) FROM cdc_worker.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert!(pending > 0, "tags wait in the outbox during the outage");
    r.mode.store(OK, Ordering::SeqCst);
    assert_recovered(&db, &c, &r, &last).await;
}

/// A streaming leader (through `leader_url` if given) and a standby waiting behind it.
async fn leader_and_standby(
    db: &TestDb,
    r: &Receiver,
    leader_url: Option<&str>,
) -> (WorkerProcess, WorkerProcess) {
    let leader = start(db, r, leader_url);
    leader
        .wait_for_log(Duration::from_secs(20), "streaming")
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
    let r = receiver().await;
    let (db, c) = prepared(cluster, "fault_silent", 20).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_leader_hands_over_at_once() {
    let r = receiver().await;
    let (db, c) = prepared(Cluster::shared(), "fault_handover", 20).await;
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
    let r = receiver().await;
    let (db, c) = prepared(&cluster, "fault_lost_slot", 50).await;
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
    let mut e = env(&r);
    e.push(("FAILPOINTS", "slot-dropped=return".to_string()));
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut crashed = WorkerProcess::start(&db, &["run"], &e);
    assert!(!crashed.wait_exit(Duration::from_secs(60)).success());
    let slots: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        slots,
        0,
        "crashed after the drop:\n{}",
        crashed.log_tail(20)
    );
    let worker = start(&db, &r, None);
    wait_converged(&c, "summary rebuilt after the slot was recreated").await;
    assert!(
        worker
            .output()
            .contains("recovered: every product recomputed"),
        "{}",
        worker.log_tail(30)
    );
    let mut last = HashMap::new();
    last.insert("p1".to_string(), Instant::now() - Duration::from_secs(60));
    last.insert("p2".to_string(), Instant::now() - Duration::from_secs(60));
    let t = Instant::now();
    while let Err(e) = r.all_delivered_after(&last) {
        assert!(t.elapsed() < Duration::from_secs(10), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_endpoint_down_neither_blocks_nor_repeats_the_other() {
    let up = receiver().await;
    let down = receiver().await;
    down.mode.store(FAIL_500, Ordering::SeqCst);
    let (db, c) = prepared(Cluster::shared(), "fault_fanout", 10).await;
    let urls = format!("{},{}", up.url, down.url);
    let _w = WorkerProcess::start(
        &db,
        &["run"],
        &[
            ("CDC_REVALIDATE_URLS", &urls),
            ("CDC_REVALIDATE_SECRET", SECRET),
        ],
    );
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
        || async {
            let got = up.received.lock().unwrap();
            (1..=5).all(|i| got.iter().any(|(t, _)| *t == format!("product:p{i}")))
        },
    )
    .await;
    assert!(down.received.lock().unwrap().is_empty());
    down.mode.store(OK, Ordering::SeqCst);
    wait_until(
        Duration::from_secs(20),
        "the recovered endpoint catches up",
        || async {
            let got = down.received.lock().unwrap();
            (1..=5).all(|i| got.iter().any(|(t, _)| *t == format!("product:p{i}")))
        },
    )
    .await;
    let got = up.received.lock().unwrap();
    for i in 1..=5 {
        let n = got
            .iter()
            .filter(|(t, _)| *t == format!("product:p{i}"))
            .count();
        assert_eq!(n, 1, "product:p{i} sent {n} times to the healthy endpoint");
    }
}
