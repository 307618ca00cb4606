//! Delivery safety: no endpoint answer loses a tag (every failure is retried for
//! `revalidate.give_up_after_secs`, then parked and redelivered by command), redirects are
//! not followed, and credentials in a revalidation URL never reach a log, a metric or a
//! state table. The worker binary runs against real Postgres; the endpoints are small
//! in-process HTTP servers whose answers the test sets.

mod support;

use std::time::{Duration, Instant};

use support::{
    metrics_text, revalidate_env, wait_until, Answer, Cluster, Endpoint, TestDb, WorkerProcess,
    CLOSED_PORT, METRICS_ANY_PORT,
};
use tokio_postgres::Client;

const SECRET: &str = "delivery-secret";

/// A config file that sets only `revalidate.give_up_after_secs`.
fn config_giving_up_after(db: &TestDb, secs: u64) -> String {
    db.config_file(&format!("[revalidate]\ngive_up_after_secs = {secs}\n"))
}

async fn parked_tags(c: &Client) -> Vec<String> {
    support::column(
        c,
        "SELECT unnest(tags) FROM cdc_worker.outbox_failed ORDER BY 1",
    )
    .await
}

/// Waits up to 20 s until `tag` is parked in `cdc_worker.outbox_failed`.
async fn wait_parked(c: &Client, tag: &str) {
    wait_until(
        Duration::from_secs(20),
        &format!("{tag} parked in outbox_failed"),
        || async { parked_tags(c).await.iter().any(|t| t == tag) },
    )
    .await;
}

/// Every row of the worker's delivery state, as text.
async fn state_tables(c: &Client) -> String {
    let mut out = String::new();
    for table in ["outbox_cursor", "outbox_failed", "outbox", "checkpoint"] {
        let rows = c
            .query(&format!("SELECT t::text FROM cdc_worker.{table} t"), &[])
            .await
            .unwrap();
        for r in rows {
            out.push_str(table);
            out.push_str(": ");
            out.push_str(r.get::<_, &str>(0));
            out.push('\n');
        }
    }
    out
}

/// Issue 9 item 7: a 401 (a secret being rotated, clock skew) used to be a definite
/// refusal: the tags went to outbox_failed and were never sent again.
#[tokio::test(flavor = "multi_thread")]
async fn a_401_for_10_seconds_then_200_loses_no_tag() {
    let e = Endpoint::start(Answer::Status(401)).await;
    let (db, c) = Cluster::shared().prepared_db("delivery_401", 5).await;
    let w = WorkerProcess::start(&db, &["run"], &revalidate_env(&e.url, SECRET));
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    let t = Instant::now();
    for i in 1..=5 {
        c.batch_execute(&format!(
            "UPDATE \"Product\" SET title = 'v{i}' WHERE id = 'p{i}'"
        ))
        .await
        .unwrap();
    }
    let flip = e.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        flip.set(Answer::Ok);
    });
    wait_until(
        Duration::from_secs(60),
        "every tag arrives once the endpoint accepts again",
        || async { (1..=5).all(|i| e.got(&format!("product:p{i}"))) },
    )
    .await;
    assert!(
        t.elapsed() >= Duration::from_secs(10),
        "delivered before the endpoint accepted?"
    );
    assert!(e.requests() >= 3, "the 401s were not retried");
    assert_eq!(parked_tags(&c).await, Vec::<String>::new());
}

/// Issue 9 item 7: after `give_up_after_secs` of failures the tags are parked (not lost),
/// counted by a gauge, and `revalidate --failed` delivers them and empties the table.
#[tokio::test(flavor = "multi_thread")]
async fn tags_parked_after_give_up_are_redelivered_by_revalidate_failed() {
    let e = Endpoint::start(Answer::Status(404)).await;
    let (db, c) = Cluster::shared().prepared_db("delivery_parked", 3).await;
    let config = config_giving_up_after(&db, 2);
    let env = revalidate_env(&e.url, SECRET);
    let mut run_env = env.to_vec();
    run_env.push(("CDC_METRICS_ADDR", METRICS_ANY_PORT));
    let w = WorkerProcess::start(&db, &["--config", &config, "run"], &run_env);
    let metrics_addr = w.metrics_addr().await;
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    c.batch_execute("UPDATE \"Price\" SET amount = 7 WHERE \"productId\" = 'p1'")
        .await
        .unwrap();
    wait_parked(&c, "product:p1").await;
    assert!(e.requests() >= 2, "parked without a retry");
    wait_until(
        Duration::from_secs(10),
        "cdc_outbox_failed_tags counts them",
        || async {
            metrics_text(&metrics_addr)
                .await
                .lines()
                .any(|l| l.starts_with("cdc_outbox_failed_tags ") && !l.ends_with(" 0"))
        },
    )
    .await;
    assert!(
        w.output().contains("revalidate --failed"),
        "{}",
        w.log_tail(20)
    );

    // Still failing: the command says so and keeps them.
    let again = WorkerProcess::run_to_end(&db, &["revalidate", "--failed"], &env);
    assert_eq!(again.code, Some(1), "{}", again.output);
    assert!(again.output.contains("FAILED again"), "{}", again.output);
    assert!(parked_tags(&c).await.contains(&"product:p1".to_string()));

    e.set(Answer::Ok);
    let out = WorkerProcess::run_to_end(&db, &["revalidate", "--failed"], &env);
    assert!(out.success, "{}", out.output);
    assert!(out.output.contains("redelivered"), "{}", out.output);
    assert!(e.got("product:p1"));
    assert_eq!(parked_tags(&c).await, Vec::<String>::new());
    let out = WorkerProcess::run_to_end(&db, &["revalidate", "--failed"], &env);
    assert!(out.success, "{}", out.output);
    assert!(
        out.output.contains("nothing to redeliver"),
        "{}",
        out.output
    );
    // Without the state tables the error says what to run.
    let mut no_state = env.to_vec();
    no_state.push(("CDC_SCHEMA", "no_such_state"));
    let out = WorkerProcess::run_to_end(&db, &["revalidate", "--failed"], &no_state);
    assert_eq!(out.code, Some(2), "{}", out.output);
    assert!(out.output.contains("cdc-worker setup"), "{}", out.output);
}

/// Issue 9 item 8: reqwest followed redirects, turning the POST into a GET whose 200 (a
/// login page, another host) counted as delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_is_not_followed_and_not_counted_delivered() {
    let elsewhere = Endpoint::start(Answer::Ok).await;
    let redirecting = Endpoint::start(Answer::Redirect(format!("{}/login", elsewhere.base))).await;
    let (db, c) = Cluster::shared().prepared_db("delivery_redirect", 3).await;
    let url = &redirecting.url;
    let w = WorkerProcess::start(&db, &["run"], &revalidate_env(url, SECRET));
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    c.batch_execute("UPDATE \"Product\" SET title = 'moved' WHERE id = 'p1'")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the redirecting endpoint is retried (or the redirect followed)",
        || async { redirecting.requests() >= 3 || elsewhere.requests() > 0 },
    )
    .await;
    assert_eq!(
        elsewhere.requests(),
        0,
        "the redirect was followed: {:?}",
        elsewhere.seen()
    );
    let delivered: i64 = c
        .query_one(
            "SELECT coalesce(max(delivered_id), 0) FROM cdc_worker.outbox_cursor",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let pending: i64 = c
        .query_one(
            "SELECT count(*) FROM cdc_worker.outbox WHERE 'product:p1' = ANY(tags) AND id > $1",
            &[&delivered],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pending > 0, "product:p1 counted as delivered");
    assert!(w.output().contains("redirect"), "{}", w.log_tail(20));
    // The manual command does not follow it either.
    let out = WorkerProcess::run_to_end(
        &db,
        &["revalidate", "--store", "s1"],
        &revalidate_env(url, SECRET),
    );
    assert_eq!(out.code, Some(1), "{}", out.output);
    assert_eq!(elsewhere.requests(), 0);
}

/// Issue 9 item 12: the credentials of a revalidation URL appeared in reqwest's error text
/// (logged), in the `endpoint` metric label and in outbox_cursor / outbox_failed.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_a_revalidate_url_appear_nowhere() {
    let (db, c) = Cluster::shared().prepared_db("delivery_secrets", 3).await;
    let url =
        format!("http://user:s3cretpass@127.0.0.1:{CLOSED_PORT}/api/revalidate?token=t0psecret");
    let config = config_giving_up_after(&db, 2);
    let w = WorkerProcess::start(
        &db,
        &["--config", &config, "run"],
        &[
            ("CDC_REVALIDATE_URLS", &url),
            ("CDC_REVALIDATE_SECRET", SECRET),
            ("CDC_METRICS_ADDR", METRICS_ANY_PORT),
            ("CDC_LOG", "debug"),
        ],
    );
    let metrics_addr = w.metrics_addr().await;
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    c.batch_execute("UPDATE \"Price\" SET amount = 9 WHERE \"productId\" = 'p1'")
        .await
        .unwrap();
    wait_parked(&c, "product:p1").await;
    let metrics = metrics_text(&metrics_addr).await;
    assert!(
        metrics.contains("cdc_revalidate_requests_total{endpoint="),
        "{metrics}"
    );
    let manual = WorkerProcess::run_to_end(
        &db,
        &["revalidate", "--product", "p1"],
        &revalidate_env(&url, SECRET),
    );
    let failed = WorkerProcess::run_to_end(
        &db,
        &["revalidate", "--failed"],
        &revalidate_env(&url, SECRET),
    );
    assert!(failed.output.contains("FAILED again"), "{}", failed.output);
    let tables = state_tables(&c).await;
    assert!(tables.contains("outbox_cursor"), "{tables}");
    for (what, text) in [
        ("the worker's log", w.output()),
        ("/metrics", metrics),
        ("the state tables", tables),
        ("revalidate --product", manual.output),
        ("revalidate --failed", failed.output),
    ] {
        for secret in ["s3cretpass", "t0psecret"] {
            assert!(
                !text.contains(secret),
                "{secret} appears in {what}:\n{text}"
            );
        }
    }
}

/// Waits until `e` got every tag of `waiting` (stored after the endpoint's cursor), then
/// asserts that no `old:` tag (stored before it) was sent again and that the worker's log
/// says `said`.
async fn resumes_after_the_cursor(e: &Endpoint, w: &WorkerProcess, waiting: &[&str], said: &str) {
    wait_until(
        Duration::from_secs(20),
        "the tags after the stored cursor arrive",
        || async { waiting.iter().all(|t| e.got(t)) },
    )
    .await;
    assert!(
        !e.tags().iter().any(|t| t.starts_with("old:")),
        "tags before the cursor were sent again: {:?}",
        e.tags()
    );
    assert!(w.output().contains(said), "{}", w.log_tail(20));
}

/// Issue 9 item 12: deployments that stored cursors keyed by the full URL keep their
/// place when the key becomes the redacted URL: nothing is sent again, nothing skipped.
#[tokio::test(flavor = "multi_thread")]
async fn cursors_keyed_by_the_full_url_are_renamed_in_place() {
    let e = Endpoint::start(Answer::Ok).await;
    let (db, c) = Cluster::shared().prepared_db("delivery_migrate", 3).await;
    let port = e.base.rsplit(':').next().unwrap();
    // As an earlier version stored it: the configured string, not normalized (the
    // fragment, never sent, is dropped by normalization).
    let url =
        format!("http://user:s3cretpass@127.0.0.1:{port}/api/revalidate?token=t0psecret#main");
    let row = |tag: &str| {
        format!(
            "INSERT INTO cdc_worker.outbox (tags, tag_count) VALUES (ARRAY['{tag}'], 1) RETURNING id"
        )
    };
    let mut last_old = 0i64;
    for tag in ["old:1", "old:2", "old:3"] {
        last_old = c.query_one(&row(tag), &[]).await.unwrap().get(0);
    }
    c.execute(
        "INSERT INTO cdc_worker.outbox_cursor (endpoint, delivered_id) VALUES ($1, $2)",
        &[&url, &last_old],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO cdc_worker.outbox_failed (endpoint, tags, status, response) \
         VALUES ($1, ARRAY['parked:1'], 401, 'nope')",
        &[&url],
    )
    .await
    .unwrap();
    for tag in ["new:1", "new:2"] {
        c.query_one(&row(tag), &[]).await.unwrap();
    }
    let w = WorkerProcess::start(&db, &["run"], &revalidate_env(&url, SECRET));
    resumes_after_the_cursor(&e, &w, &["new:1", "new:2"], "delivery cursor renamed").await;
    let cursors = || async {
        c.query(
            "SELECT endpoint, delivered_id FROM cdc_worker.outbox_cursor",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect::<Vec<(String, i64)>>()
    };
    // The cursor moves when the endpoint's answer is back, a moment after the tags
    // arrived there.
    wait_until(
        Duration::from_secs(20),
        "the renamed cursor moves past the new tags",
        || async { cursors().await.iter().any(|(_, id)| *id > last_old) },
    )
    .await;
    let cursors = cursors().await;
    assert_eq!(cursors.len(), 1, "{cursors:?}");
    assert_eq!(
        cursors[0].0,
        format!("http://***@127.0.0.1:{port}/api/revalidate?token=***")
    );
    assert!(cursors[0].1 > last_old, "{cursors:?}");
    let tables = state_tables(&c).await;
    for secret in ["s3cretpass", "t0psecret"] {
        assert!(!tables.contains(secret), "{secret} in:\n{tables}");
        assert!(!w.output().contains(secret), "{secret} in the log");
    }
    // The parked row follows its endpoint, so `revalidate --failed` still finds it.
    let out = WorkerProcess::run_to_end(
        &db,
        &["revalidate", "--failed"],
        &revalidate_env(&url, SECRET),
    );
    assert!(out.success, "{}", out.output);
    assert!(e.got("parked:1"));
}

/// Issue 19: `outbox_failed.response` kept the endpoint's answer as it came (the first
/// 500 characters of it): an error page echoing an internal URL with credentials, or the
/// shared secret, ended up in the state table and the log. Now it is redacted, then cut.
#[tokio::test(flavor = "multi_thread")]
async fn a_parked_answer_is_redacted_and_capped() {
    let body = format!(
        "upstream http://admin:hunter2@internal:8080/x?token=t0psecret failed; Cannot POST \
         /api/revalidate?key=k3yvalue; signed with {SECRET}\n{}",
        "x".repeat(100_000)
    );
    let e = Endpoint::start(Answer::Body(500, body)).await;
    let (db, c) = Cluster::shared().prepared_db("delivery_answer", 3).await;
    let config = config_giving_up_after(&db, 2);
    let w = WorkerProcess::start(
        &db,
        &["--config", &config, "run"],
        &revalidate_env(&e.url, SECRET),
    );
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    c.batch_execute("UPDATE \"Price\" SET amount = 8 WHERE \"productId\" = 'p2'")
        .await
        .unwrap();
    wait_parked(&c, "product:p2").await;
    let response: String = c
        .query_one("SELECT response FROM cdc_worker.outbox_failed LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        response.chars().count() <= 500,
        "{} characters stored",
        response.chars().count()
    );
    assert!(response.starts_with("HTTP 500"), "{response}");
    assert!(
        response.contains("http://***@internal:8080/x?token=***")
            && response.contains("/api/revalidate?key=***")
            && response.ends_with("more characters)"),
        "{response}"
    );
    let log = w.output();
    for leak in ["hunter2", "t0psecret", "k3yvalue", SECRET] {
        assert!(!response.contains(leak), "{leak} stored: {response}");
        assert!(!log.contains(leak), "{leak} logged:\n{}", w.log_tail(20));
    }
}

/// Issue 19: `revalidate --product` with an id that is in neither the product table nor
/// the summary sent the product's tags with only a log line about the store tag. It still
/// sends them (a page may show a product deleted since), and says so plainly.
#[tokio::test(flavor = "multi_thread")]
async fn revalidate_says_when_a_product_does_not_exist() {
    let e = Endpoint::start(Answer::Ok).await;
    let (db, _c) = Cluster::shared()
        .prepared_db("delivery_unknown_product", 3)
        .await;
    let env = revalidate_env(&e.url, SECRET);
    let out = WorkerProcess::run_to_end(
        &db,
        &["revalidate", "--product", "p1", "--product", "nope"],
        &env,
    );
    assert!(out.success, "{}", out.output);
    assert!(
        out.output
            .contains("note: product nope does not exist in \"public\".\"Product\""),
        "{}",
        out.output
    );
    assert!(
        out.output.contains("tags are sent anyway"),
        "{}",
        out.output
    );
    assert!(!out.output.contains("note: product p1"), "{}", out.output);
    assert!(e.got("product:nope") && e.got("product:p1") && e.got("store:s1:products"));
}

/// The cursor of the only endpoint (0 before it has one).
async fn delivered_id(c: &Client) -> i64 {
    c.query_one(
        "SELECT coalesce(max(delivered_id), 0) FROM cdc_worker.outbox_cursor",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Issue 21: an outbox row holds every tag of one apply transaction. A row with more tags
/// than `revalidate.max_batch_tags` (a pass that revalidates every product writes such
/// rows) goes out in requests of at most that many, each tag once, and rows after it
/// still fill requests up to the limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_of_more_tags_than_one_request_is_sent_in_parts() {
    let e = Endpoint::start(Answer::Ok).await;
    let (db, c) = Cluster::shared().prepared_db("delivery_parts", 3).await;
    let big: Vec<String> = (1..=7).map(|i| format!("big:{i}")).collect();
    c.execute(
        "INSERT INTO cdc_worker.outbox (tags, tag_count, commit_time) \
         VALUES ($1::text[], cardinality($1::text[]), now() - interval '1 second')",
        &[&big],
    )
    .await
    .unwrap();
    let last: i64 = c
        .query_one(
            "WITH r AS (INSERT INTO cdc_worker.outbox (tags, tag_count) \
             VALUES (ARRAY['small:1'], 1), (ARRAY['small:2', 'big:1'], 2) RETURNING id) \
             SELECT max(id) FROM r",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let config = db.config_file("[revalidate]\nmax_batch_tags = 3\n");
    let _w = WorkerProcess::start(
        &db,
        &["--config", &config, "run"],
        &revalidate_env(&e.url, SECRET),
    );
    wait_until(
        Duration::from_secs(20),
        "the cursor past every row",
        || async { delivered_id(&c).await >= last },
    )
    .await;
    let deliveries = e.deliveries();
    for d in &deliveries {
        assert!(d.tags.len() <= 3, "a request of {} tags", d.tags.len());
    }
    let mut got = e.tags();
    got.sort();
    let mut want = big.clone();
    want.extend(["big:1".into(), "small:1".into(), "small:2".into()]);
    want.sort();
    assert_eq!(got, want, "requests: {:?}", deliveries);
    // 7 tags in parts of 3, then the two small rows together (3 distinct tags fit).
    assert_eq!(deliveries.len(), 4, "requests: {:?}", deliveries);
}

/// Issue 21: a state schema of an earlier version keeps one outbox row per tag. `run`
/// upgrades it to rows of tag arrays under the same ids: what waited is delivered, and
/// what the stored cursor had passed is not sent again.
#[tokio::test(flavor = "multi_thread")]
async fn per_tag_rows_of_an_earlier_version_are_delivered_after_the_upgrade() {
    let e = Endpoint::start(Answer::Ok).await;
    let (db, c) = Cluster::shared().prepared_db("delivery_upgrade", 3).await;
    c.batch_execute(
        "DROP TABLE cdc_worker.outbox; \
         CREATE TABLE cdc_worker.outbox (id bigserial PRIMARY KEY, tag text NOT NULL, \
           commit_time timestamptz, enqueued_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO cdc_worker.outbox (tag) VALUES ('old:1'), ('old:2'), ('waiting:1'), ('waiting:2');",
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO cdc_worker.outbox_cursor (endpoint, delivered_id) VALUES ($1, 2)",
        &[&cdc_worker::redact::redact_url(
            &cdc_worker::config::normalize_endpoint(&e.url).unwrap(),
        )],
    )
    .await
    .unwrap();
    let w = WorkerProcess::start(&db, &["run"], &revalidate_env(&e.url, SECRET));
    resumes_after_the_cursor(&e, &w, &["waiting:1", "waiting:2"], "state schema upgraded").await;
    let columns: Vec<String> = support::column(
        &c,
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 'cdc_worker.outbox'::regclass \
         AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .await;
    assert_eq!(
        columns,
        ["id", "commit_time", "enqueued_at", "tags", "tag_count"]
    );
    // New changes go into the new rows and are delivered too.
    c.batch_execute("UPDATE \"Price\" SET amount = amount + 1 WHERE \"productId\" = 'p2'")
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "the new change's tag", || async {
        e.got("product:p2")
    })
    .await;
}
