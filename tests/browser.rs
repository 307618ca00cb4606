//! The storefront as a person sees it: headless Chromium (Debian's `chromium`, driven by
//! `nextjs/scripts/browser-check.mjs` through playwright-core) opens a store page of a
//! real `next start`, a price is changed in the source database, and the page is
//! reloaded until the new price is on screen, through the worker and /api/revalidate:
//! asserted within 5 s (the stale-read bound), the time measured printed (the goal is
//! 1 s). Screenshots land in `target/browser-test/`.

mod nextjs_support;
mod support;

use std::path::Path;
use std::process::Command;

use nextjs_support::{ensure_built, nextjs_dir, start_next, storefront_db, worker_telling};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Store `corner-store` with eight products p1..p8, each with a USD price, stock and an image.
const CORNER_STORE: &str = "INSERT INTO \"Product\"(id, \"storeId\", title)
       SELECT 'p' || g, 'corner-store', (ARRAY['Mug', 'Tee', 'Cap', 'Poster', 'Socks', 'Tote'])[1 + g % 6] || ' no. ' || g
       FROM generate_series(1, 8) g;
     INSERT INTO \"Price\"(id, \"productId\", currency, amount)
       SELECT 'u' || g, 'p' || g, 'USD', 900 + g * 250 FROM generate_series(1, 8) g;
     INSERT INTO \"Inventory\"(id, \"productId\", \"locationId\", quantity, reserved)
       SELECT 'i' || g, 'p' || g, 'l1', (g * 3) % 11, 0 FROM generate_series(1, 8) g;
     INSERT INTO \"ProductImage\"(id, \"productId\", url, position)
       SELECT 'img' || g, 'p' || g, '/placeholder/p' || g || '.svg', 1 FROM generate_series(1, 8) g;";

#[tokio::test(flavor = "multi_thread")]
async fn a_price_change_reaches_the_screen() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install chromium"
    );
    ensure_built();
    let (db, _c) = storefront_db("browser", CORNER_STORE).await;

    let next = start_next(&db.url, &[]);
    let http = reqwest::Client::new();
    next.wait_ready(&http, "/stores/corner-store").await;
    let mut worker = worker_telling(&db, &next).await;

    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-test");
    let db_url = db.url.clone();
    let base = next.base.clone();
    // The browser's profile and Chromium's temporary files go here (TMPDIR), and are
    // removed with it even when the script or the browser is killed.
    let tmp = tempfile::Builder::new()
        .prefix("browser-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let out = tokio::task::spawn_blocking({
        let out_dir = out_dir.clone();
        let tmp = tmp.path().to_path_buf();
        move || {
            Command::new("node")
                .env("TMPDIR", tmp)
                .arg("scripts/browser-check.mjs")
                .current_dir(nextjs_dir())
                .env("BASE_URL", base)
                .env("STORE_ID", "corner-store")
                .env("PRODUCT_ID", "p3")
                .env("PRICE_ID", "u3")
                .env("NEW_AMOUNT", "1234")
                .env("DATABASE_URL", db_url)
                .env("OUT_DIR", &out_dir)
                .env("CHROMIUM", CHROMIUM)
                .output()
                .expect("node runs")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser-check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("browser-check printed {line:?}: {e}\n{stderr}"));
    eprintln!("browser: {result}");
    assert_eq!(
        result["after"], "$12.34",
        "the formatted price is on screen"
    );
    // The 1 s goal is measured and printed, not asserted: on a loaded 2-core machine two
    // reloads alone can take that long. The test holds the spec's 5 s stale-read bound.
    let ms = result["visible_after_ms"].as_u64().unwrap();
    eprintln!("new price on screen {ms} ms after the commit");
    assert!(ms <= 5000, "new price on screen after {ms} ms");
    for shot in result["screenshots"].as_array().unwrap() {
        let path = shot.as_str().unwrap();
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "screenshot {path} is {len} bytes");
    }
    assert!(worker.is_running());
}
