//! End to end: a real `next start` of the example storefront (nextjs/) against the test
//! Postgres, with the worker running and revalidating its cache tags. A Price, an
//! Inventory and a Product change each show on the rendered page within 5 s; the measured
//! stale windows are printed. The page cache is shown to be real first: a change the
//! worker does not revalidate stays invisible until `cdc-worker revalidate`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, wait_until, Cluster, WorkerProcess};

const SECRET: &str = "e2e-secret";

fn nextjs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nextjs")
}

/// `npm ci && npm run build` unless a build is already there (the Makefile builds first).
fn ensure_built() {
    let dir = nextjs_dir();
    if dir.join(".next/BUILD_ID").exists() && dir.join("node_modules").exists() {
        return;
    }
    for args in [
        &["ci", "--no-audit", "--no-fund"][..],
        &["run", "build"][..],
    ] {
        let status = Command::new("npm")
            .args(args)
            .current_dir(&dir)
            .status()
            .expect("npm is installed");
        assert!(status.success(), "npm {args:?} failed in {}", dir.display());
    }
}

struct NextServer {
    child: Child,
    base: String,
}

impl Drop for NextServer {
    fn drop(&mut self) {
        // `next start` runs the server in a child process: kill the whole group, or that
        // child outlives the test.
        // SAFETY: kill(2) on the process group of our own, not yet reaped, child.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn start_next(database_url: &str) -> NextServer {
    let port = free_port();
    let log = std::fs::File::create(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("next-{port}.log")),
    )
    .unwrap();
    use std::os::unix::process::CommandExt;
    let child = Command::new("npx")
        .process_group(0)
        .args(["next", "start", "-p", &port.to_string(), "-H", "127.0.0.1"])
        .current_dir(nextjs_dir())
        .env("DATABASE_URL", database_url)
        .env("CDC_REVALIDATE_SECRET", SECRET)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("starting next");
    NextServer {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn get(http: &reqwest::Client, url: &str) -> String {
    let resp = http.get(url).send().await.unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.text().await.unwrap()
}

/// `data-value` of `field` inside the article of `product` in the rendered HTML.
fn field(html: &str, product: &str, field: &str) -> Option<String> {
    let start = html.find(&format!("data-product-id=\"{product}\""))?;
    let rest = &html[start..];
    let end = rest.find("</article>").unwrap_or(rest.len());
    let article = &rest[..end];
    let f = article.find(&format!("data-field=\"{field}\""))?;
    let v = article[f..].find("data-value=\"")? + f + "data-value=\"".len();
    let len = article[v..].find('"')?;
    Some(article[v..v + len].to_string())
}

/// Polls `url` until `product`'s `name` field reads `want`; returns how long it took.
async fn stale_window(
    http: &reqwest::Client,
    url: &str,
    product: &str,
    name: &str,
    want: &str,
    since: Instant,
) -> Duration {
    loop {
        let html = get(http, url).await;
        if field(&html, product, name).as_deref() == Some(want) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{url}: {product}.{name} still {:?} after 5 s (want {want})",
            field(&html, product, name)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_fresh_within_5s_of_a_commit() {
    ensure_built();
    let db = Cluster::shared().create_db("nextjs_e2e").await;
    let c = db.client().await;
    c.batch_execute(
        "INSERT INTO \"Product\"(id, \"storeId\", title) VALUES ('p1', 'store-a', 'Alpha'), ('p2', 'store-a', 'Beta');
         INSERT INTO \"Price\" VALUES ('u1', 'p1', 'USD', 1299), ('u2', 'p2', 'USD', 500);
         INSERT INTO \"Inventory\" VALUES ('i1', 'p1', 'l1', 10, 3), ('i2', 'p2', 'l1', 4, 0);",
    )
    .await
    .unwrap();
    let setup = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(setup.success, "{}", setup.output);

    let next = start_next(&db.url);
    let http = reqwest::Client::new();
    let listing = format!("{}/stores/store-a", next.base);
    let product_page = format!("{}/products/p1", next.base);
    wait_until(Duration::from_secs(60), "next start answers", || async {
        http.get(&listing)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert_eq!(
        field(&get(&http, &listing).await, "p1", "price").as_deref(),
        Some("1299")
    );
    assert_eq!(
        field(&get(&http, &product_page).await, "p1", "inventory").as_deref(),
        Some("7")
    );

    let endpoint = format!("{}/api/revalidate", next.base);
    let env = [
        ("CDC_REVALIDATE_URLS", endpoint.as_str()),
        ("CDC_REVALIDATE_SECRET", SECRET),
    ];

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

    let _worker = WorkerProcess::start(&db, &["run"], &env);
    tokio::time::sleep(Duration::from_secs(1)).await;

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
            cdc_worker::deliver::signature("not-the-secret", now_ms, body),
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
            cdc_worker::deliver::signature(SECRET, now_ms, body),
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
