//! The shared cache (REDIS_URL, the Redis cache handlers of `packages/next`): two real `next start` instances share a
//! private `redis-server`, the worker delivers its tags to instance A only, and a price
//! change shows on instance B's product page and store page: asserted within 5 s (the
//! stale-read bound), the times measured printed (the goal is 1 s). The control run
//! without Redis shows that B, which nobody told, stays stale. With Redis killed the
//! pages still render (200, fresh from the database), the revalidation route answers 503
//! so the worker keeps the tags, and once Redis is back the worker's retry succeeds.

mod nextjs_support;
mod support;

use std::time::{Duration, Instant};

use nextjs_support::{
    ensure_built, field, get, start_next, storefront_db, time_until_field, worker_telling,
    RedisServer, SECRET, TWO_PRODUCTS,
};
use support::{outbox_pending, wait_until};

/// Whether the worker logged a delivery that failed with HTTP status 503 and will be
/// retried (the `status` field of its warning, not any "503" in a timestamp or an LSN).
fn refused_with_503(log: &str) -> bool {
    log.lines().any(|l| {
        l.contains("revalidation failed; tags stay in the outbox")
            && l.split_whitespace().any(|w| w == "status=503")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn revalidation_at_one_instance_refreshes_the_other_within_5s() {
    ensure_built();
    let (db, c) = storefront_db("shared_cache", TWO_PRODUCTS).await;
    let mut redis = RedisServer::start();
    let redis_url = redis.url();
    let a = start_next(&db.url, &[("REDIS_URL", &redis_url)]);
    let b = start_next(&db.url, &[("REDIS_URL", &redis_url)]);
    let http = reqwest::Client::new();
    a.wait_ready(&http, "/stores/store-a").await;
    b.wait_ready(&http, "/stores/store-a").await;
    let (b_store, b_product) = (b.url("/stores/store-a"), b.url("/products/p1"));
    assert_eq!(
        field(&get(&http, &b_store).await, "p1", "price").as_deref(),
        Some("1299")
    );
    assert_eq!(
        field(&get(&http, &b_product).await, "p1", "price").as_deref(),
        Some("1299")
    );

    // The shared cache really caches: a summary change nobody revalidates stays
    // invisible on both instances.
    c.batch_execute("UPDATE \"ProductSummary\" SET title = 'Sneaky' WHERE \"productId\" = 'p2'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for server in [&a, &b] {
        let html = get(&http, &server.url("/stores/store-a")).await;
        assert_eq!(field(&html, "p2", "title").as_deref(), Some("Beta"));
    }

    let mut worker = worker_telling(&db, &a).await;

    // Measured: commit, then B's product page and B's store page (each polled while the
    // other is, so neither waits for the other), through the worker and instance A only.
    let t = Instant::now();
    c.batch_execute("UPDATE \"Price\" SET amount = 1499 WHERE id = 'u1'")
        .await
        .unwrap();
    let limit = Duration::from_secs(5);
    let (product, store) = tokio::join!(
        time_until_field(&http, &b_product, "p1", "price", "1499", t, limit),
        time_until_field(&http, &b_store, "p1", "price", "1499", t, limit),
    );
    eprintln!(
        "shared cache: price change visible on instance B (told nothing) after: product page {product:?}, store page {store:?}"
    );
    // Held to the spec's 5 s stale-read bound; the 1 s goal is measured and printed above
    // (a timing assertion that tight would fail on a loaded 2-core machine, not the code).
    product.expect("B's product page shows the new price within 5 s");
    store.expect("B's store page shows the new price within 5 s");

    // Redis killed: pages still render, from the database (a cache miss, not a 500).
    redis.kill();
    c.batch_execute("UPDATE \"Price\" SET amount = 1599 WHERE id = 'u1'")
        .await
        .unwrap();
    let t = Instant::now();
    for server in [&a, &b] {
        for path in ["/stores/store-a", "/products/p1", "/"] {
            let resp = http.get(server.url(path)).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{path} with Redis down");
        }
        let seen = time_until_field(
            &http,
            &server.url("/products/p1"),
            "p1",
            "price",
            "1599",
            t,
            limit,
        )
        .await;
        assert!(
            seen.is_some(),
            "{}: uncached pages show the database",
            server.base
        );
    }
    // The tag could not be recorded for the other instances, so A refuses it (503) and
    // the worker keeps it: it is still in the outbox, and the worker still runs.
    wait_until(
        Duration::from_secs(10),
        "the worker logs A's 503 and retries",
        || async { refused_with_503(&worker.output()) },
    )
    .await;
    assert!(
        outbox_pending(&c).await > 0,
        "the refused tags stay in the outbox"
    );
    assert!(worker.is_running());

    // Redis back (empty): the worker's retry is accepted and the outbox drains.
    redis.restart();
    wait_until(
        Duration::from_secs(40),
        "the outbox drains after Redis is back",
        || async { outbox_pending(&c).await == 0 },
    )
    .await;
    let t = Instant::now();
    c.batch_execute("UPDATE \"Price\" SET amount = 1699 WHERE id = 'u1'")
        .await
        .unwrap();
    let (product, store) = tokio::join!(
        time_until_field(&http, &b_product, "p1", "price", "1699", t, limit),
        time_until_field(&http, &b_store, "p1", "price", "1699", t, limit),
    );
    eprintln!("shared cache after Redis restart: B product page {product:?}, store page {store:?}");
    assert!(
        product.is_some() && store.is_some(),
        "within 5 s after Redis restarted"
    );
}

/// Control: the same two instances without Redis. The worker tells only A; B keeps
/// serving its own cached page, so the shared cache is what made B fresh above.
#[tokio::test(flavor = "multi_thread")]
async fn without_the_shared_cache_the_instance_not_told_stays_stale() {
    ensure_built();
    let (db, c) = storefront_db("no_shared_cache", TWO_PRODUCTS).await;
    let a = start_next(&db.url, &[]);
    let b = start_next(&db.url, &[]);
    let http = reqwest::Client::new();
    a.wait_ready(&http, "/stores/store-a").await;
    b.wait_ready(&http, "/stores/store-a").await;
    let (a_store, b_store) = (a.url("/stores/store-a"), b.url("/stores/store-a"));
    for url in [&a_store, &b_store] {
        assert_eq!(
            field(&get(&http, url).await, "p1", "price").as_deref(),
            Some("1299")
        );
    }
    let _worker = worker_telling(&db, &a).await;
    let t = Instant::now();
    c.batch_execute("UPDATE \"Price\" SET amount = 1499 WHERE id = 'u1'")
        .await
        .unwrap();
    let fresh_a = time_until_field(
        &http,
        &a_store,
        "p1",
        "price",
        "1499",
        t,
        Duration::from_secs(5),
    )
    .await
    .expect("A, which the worker told, is fresh");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b_price = field(&get(&http, &b_store).await, "p1", "price");
    eprintln!(
        "control without Redis: A fresh after {fresh_a:?}; B still shows price {b_price:?} {:?} after the commit",
        t.elapsed()
    );
    assert_eq!(b_price.as_deref(), Some("1299"), "B was never told");
}

/// The preload that runs a process's clocks (`Date`, `performance.timeOrigin`) off by
/// `CLOCK_SKEW_MS`; the package's own clock tests use it too.
fn skewed_clock() -> String {
    nextjs_support::package_dir()
        .join("test/fixtures/skewed-clock.cjs")
        .display()
        .to_string()
}

/// Two instances, two clocks (issue 18 item 8): B's clock runs 30 s ahead of A's and of
/// Redis's. B caches the product page, the worker tells A only, and B must still show
/// the change: an entry is judged on Redis's clock, so B's clock cannot make the page it
/// rendered before the revalidation look newer than it. (Stamped on B's own clock, the
/// entry would count as rendered 30 s after the revalidation and be served for a week.)
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_whose_clock_runs_ahead_serves_no_stale_page() {
    ensure_built();
    let (db, c) = storefront_db("clock_skew", TWO_PRODUCTS).await;
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let preload = format!("--require {}", skewed_clock());
    let a = start_next(&db.url, &[("REDIS_URL", &redis_url)]);
    let b = start_next(
        &db.url,
        &[
            ("REDIS_URL", &redis_url),
            ("NODE_OPTIONS", &preload),
            ("CLOCK_SKEW_MS", "30000"),
        ],
    );
    let http = reqwest::Client::new();
    a.wait_ready(&http, "/").await;
    b.wait_ready(&http, "/").await;

    // B really runs ahead: a request signed 4 min 50 s ago is within the route's 5 min
    // window on A's clock and outside it on B's.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let body = r#"{"tags":["clock-probe"]}"#;
    let signed = cdc_worker::outbox::deliver::signature(SECRET, now_ms - 290_000, body);
    for (server, want) in [(&a, 200), (&b, 401)] {
        let resp = http
            .post(server.url("/api/revalidate"))
            .header("x-cdc-signature", &signed)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{}", server.base);
    }

    // B renders and caches the product page.
    let b_product = b.url("/products/p1");
    assert_eq!(
        field(&get(&http, &b_product).await, "p1", "price").as_deref(),
        Some("1299")
    );

    let _worker = worker_telling(&db, &a).await;
    let t = Instant::now();
    c.batch_execute("UPDATE \"Price\" SET amount = 1499 WHERE id = 'u1'")
        .await
        .unwrap();
    let seen = time_until_field(
        &http,
        &b_product,
        "p1",
        "price",
        "1499",
        t,
        Duration::from_secs(5),
    )
    .await;
    eprintln!("clock skew: B (30 s ahead, told nothing) shows the new price after {seen:?}");
    seen.expect("B, whose clock runs 30 s ahead, shows the change within 5 s");

    // And B's new page is cached, not thrown away on every read: a summary change behind
    // the worker's back stays invisible on it. (One read first: a page whose render began
    // within a Redis round trip of the revalidation counts as older than it, on purpose,
    // and is rendered once more; on a loaded machine that round trip is long.)
    get(&http, &b_product).await;
    c.batch_execute("UPDATE \"ProductSummary\" SET title = 'Sneaky' WHERE \"productId\" = 'p1'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        field(&get(&http, &b_product).await, "p1", "title").as_deref(),
        Some("Alpha"),
        "B serves its cached page"
    );
}
