//! End to end: a real `next start` of the example storefront (nextjs/) against the test
//! Postgres, with the worker running and revalidating its cache tags. A Price, an
//! Inventory and a Product change each show on the rendered page within 5 s; the measured
//! stale windows are printed. The page cache is shown to be real first: a change the
//! worker does not revalidate stays invisible until `cdc-worker revalidate`.

mod nextjs_support;
mod support;

use std::time::{Duration, Instant};

use nextjs_support::{
    ensure_built, field, get, start_next, storefront_db, time_until_field, SECRET, TWO_PRODUCTS,
};
use support::{revalidate_env, wait_until, Cluster, WorkerProcess};

/// How long until `url` shows `product`'s `name` as `want` after `since`; fails the test
/// past the 5 s bound.
async fn stale_window(
    http: &reqwest::Client,
    url: &str,
    product: &str,
    name: &str,
    want: &str,
    since: Instant,
) -> Duration {
    time_until_field(
        http,
        url,
        product,
        name,
        want,
        since,
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|| panic!("{url}: {product}.{name} is not {want:?} after 5 s"))
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_fresh_within_5s_of_a_commit() {
    ensure_built();
    // Besides the two products: store `north-pier`, whose page must name it and list
    // numbered titles in numeric order.
    let rows = format!(
        "{TWO_PRODUCTS}
         INSERT INTO \"Product\"(id, \"storeId\", title)
           VALUES ('n10', 'north-pier', 'Poster #10'), ('n2', 'north-pier', 'Poster #2'), ('n1', 'north-pier', 'Poster #1');
         INSERT INTO \"Price\" SELECT 'u' || id, id, 'USD', 900 FROM \"Product\" WHERE \"storeId\" = 'north-pier';"
    );
    let (db, c) = storefront_db("nextjs_e2e", &rows).await;

    let next = start_next(&db.url, &[]);
    let http = reqwest::Client::new();
    // A store page: its name from its id, numbers in titles in numeric order.
    next.wait_ready(&http, "/stores/north-pier").await;
    let html = get(&http, &next.url("/stores/north-pier")).await;
    assert!(html.contains("<h1>North Pier</h1>"), "the store's name");
    let at = |id: &str| {
        html.find(&format!("data-product-id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id} is listed"))
    };
    assert!(at("n1") < at("n2") && at("n2") < at("n10"), "#2 before #10");

    let listing = format!("{}/stores/store-a", next.base);
    let product_page = format!("{}/products/p1", next.base);
    next.wait_ready(&http, "/stores/store-a").await;
    assert_eq!(
        field(&get(&http, &listing).await, "p1", "price").as_deref(),
        Some("1299")
    );
    assert_eq!(
        field(&get(&http, &product_page).await, "p1", "inventory").as_deref(),
        Some("7")
    );

    let endpoint = format!("{}/api/revalidate", next.base);
    let env = revalidate_env(&endpoint, SECRET);

    // The cache is real: a summary change behind the worker's back stays invisible...
    c.batch_execute("UPDATE \"ProductSummary\" SET title = 'Sneaky' WHERE \"productId\" = 'p2'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        field(&get(&http, &listing).await, "p2", "title").as_deref(),
        Some("Beta")
    );
    // ...until its tags are revalidated by hand.
    let manual = WorkerProcess::run_to_end(&db, &["revalidate", "--product", "p2"], &env);
    assert!(manual.success, "{}", manual.output);
    assert_eq!(
        field(&get(&http, &listing).await, "p2", "title").as_deref(),
        Some("Sneaky")
    );

    // Streaming before the first commit: a commit made while it starts would time the start.
    let worker = WorkerProcess::start(&db, &["run"], &env);
    worker
        .wait_for_log(Duration::from_secs(30), support::STREAMING)
        .await;

    let t = Instant::now();
    c.batch_execute("UPDATE \"Price\" SET amount = 1499 WHERE id = 'u1'")
        .await
        .unwrap();
    let price = stale_window(&http, &listing, "p1", "price", "1499", t).await;

    let t = Instant::now();
    c.batch_execute("UPDATE \"Inventory\" SET quantity = 20 WHERE id = 'i1'")
        .await
        .unwrap();
    let inventory = stale_window(&http, &product_page, "p1", "inventory", "17", t).await;

    // The product page's freshness note gives the pipeline's delay for the change it shows
    // (the worker sends each tag's commit time): commit to summary row, commit to the
    // revalidation this server received. Neither includes the time until someone looked.
    let html = get(&http, &product_page).await;
    let note = |attr: &str| -> Option<u64> {
        let at = html.find("data-field=\"freshness\"")?;
        let rest = &html[at..];
        let v = rest.find(&format!("{attr}=\""))? + attr.len() + 2;
        rest[v..v + rest[v..].find('"')?].parse().ok()
    };
    let (to_summary, to_tag) = (note("data-value"), note("data-to-tag-ms"));
    eprintln!("freshness note: commit to summary {to_summary:?} ms, to revalidation {to_tag:?} ms");
    let (to_summary, to_tag) = (
        to_summary.expect("the note gives commit to summary"),
        to_tag.expect("the note gives commit to revalidation"),
    );
    assert!(
        to_summary <= to_tag + 1 && to_tag <= inventory.as_millis() as u64 + 1000,
        "summary {to_summary} ms, revalidation {to_tag} ms, page {inventory:?}"
    );

    let t = Instant::now();
    c.batch_execute("UPDATE \"Product\" SET title = 'Alpha Prime' WHERE id = 'p1'")
        .await
        .unwrap();
    let product = stale_window(&http, &listing, "p1", "title", "Alpha Prime", t).await;
    eprintln!(
        "stale window after commit: price {price:?}, inventory {inventory:?}, product {product:?}"
    );

    // A bad signature is refused.
    let resp = http
        .post(&endpoint)
        .header("x-cdc-signature", "t=1,v1=00")
        .body(r#"{"tags":["product:p1"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let body = r#"{"tags":["product:p1"]}"#;
    let resp = http
        .post(&endpoint)
        .header(
            "x-cdc-signature",
            cdc_worker::outbox::deliver::signature("not-the-secret", now_ms, body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = http
        .post(&endpoint)
        .header(
            "x-cdc-signature",
            cdc_worker::outbox::deliver::signature(SECRET, now_ms, body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "a correctly signed request is accepted"
    );
}

/// Sends a POST of `size` bytes to `base`'s /api/revalidate over a raw connection (so the
/// body can be chunked, without content-length) and returns the response's status line.
/// The body is written on its own task: the server may answer, and stop reading, before it
/// has all arrived.
async fn raw_post_status(base: &str, size: usize, chunked: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let length_header = if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {size}")
    };
    let head = format!(
        "POST /api/revalidate HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         x-cdc-signature: t=1,v1=00\r\n{length_header}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            let n = piece.len().min(size - sent);
            if chunked {
                wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                wr.write_all(&piece[..n]).await?;
                wr.write_all(b"\r\n").await?;
            } else {
                wr.write_all(&piece[..n]).await?;
            }
            sent += n;
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        std::io::Result::Ok(())
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while !buf.windows(2).any(|w| w == b"\r\n") {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    assert!(read.is_ok(), "no answer within 30 s to a {size}-byte POST");
    let text = String::from_utf8_lossy(&buf);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_revalidate_bodies_get_413_before_the_signature_is_checked() {
    ensure_built();
    let db = Cluster::shared().create_db("nextjs_413").await;
    let next = start_next(&db.url, &[]);
    let http = reqwest::Client::new();
    let endpoint = format!("{}/api/revalidate", next.base);
    wait_until(Duration::from_secs(60), "next start answers", || async {
        http.post(&endpoint).body("{}").send().await.is_ok()
    })
    .await;
    // The signature is bad on purpose: a 401 would mean the body was read and hashed first.
    let two_mib = 2 * 1024 * 1024;
    let declared = raw_post_status(&next.base, two_mib, false).await;
    assert!(
        declared.starts_with("HTTP/1.1 413"),
        "with content-length: {declared:?}"
    );
    let chunked = raw_post_status(&next.base, two_mib, true).await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "chunked: {chunked:?}");
    // A small body still reaches the signature check.
    let small = raw_post_status(&next.base, 100, true).await;
    assert!(
        small.starts_with("HTTP/1.1 401"),
        "small chunked body: {small:?}"
    );
}
