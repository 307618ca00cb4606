//! Any shop's schema, from configuration alone: a snake_case shop in its own schema with
//! bigint identity ids and a mapped summary table (config/examples/snake_case), and a
//! Prisma-named shop with uuid ids whose summary table setup creates. The same pipeline
//! cases as tests/pipeline.rs: every table's insert/update/delete, a store move, TRUNCATE,
//! kill -9, and reconcile = 0 (with pages small enough to cross 9 -> 10, where text order
//! and integer order part).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{
    column, json_report, outbox_tags, revalidate_env, wait_until, Cluster, TestDb, WorkerProcess,
    CLOSED_PORT_URL,
};
use tokio_postgres::Client;

const SNAKE_CONFIG: &str = "config/examples/snake_case/cdc-worker.toml";
const SNAKE_SCHEMA: &str = include_str!("../config/examples/snake_case/schema.sql");

/// Revalidation to a closed port: tags are enqueued (and checked in the outbox) while
/// delivery keeps retrying.
const TAGS_ENV: [(&str, &str); 2] = revalidate_env(CLOSED_PORT_URL, "s");

async fn snake_seed(c: &Client, n: i64) {
    c.batch_execute(&format!(
        "INSERT INTO shop.product (store_id, title) SELECT g % 3 + 1, 'Product ' || g FROM generate_series(1, {n}) g;
         INSERT INTO shop.price (product_id, currency, amount_cents) SELECT id, 'USD', 100 * id FROM shop.product;
         INSERT INTO shop.price (product_id, currency, amount_cents) SELECT id, 'EUR', 90 * id FROM shop.product;
         INSERT INTO shop.inventory (product_id, location_id, on_hand, reserved) SELECT id, 'l' || l, 10, 3 FROM shop.product, generate_series(1, 2) l;
         INSERT INTO shop.product_image (product_id, url, sort_order) SELECT id, 'https://cdn/' || id || '.jpg', 1 FROM shop.product;"
    ))
    .await
    .unwrap();
}

/// (store_id, title, price, inventory_available, primary_image_url) of a product.
type SnakeRow = (i64, String, i32, i32, Option<String>);

async fn snake_row(c: &Client, id: i64) -> Option<SnakeRow> {
    c.query_opt(
        "SELECT store_id, title, price, inventory_available, primary_image_url \
         FROM shop.product_summary WHERE product_id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

async fn wait_row<F: Fn(&Option<SnakeRow>) -> bool>(c: &Client, id: i64, what: &str, ok: F) {
    wait_until(Duration::from_secs(5), what, || async {
        ok(&snake_row(c, id).await)
    })
    .await;
}

/// `cdc-worker reconcile` in pages of 4 products: its JSON report.
fn reconcile(db: &TestDb, config: &str) -> serde_json::Value {
    let out = WorkerProcess::run_to_end(
        db,
        &[
            "--config",
            config,
            "reconcile",
            "--json",
            "--page-size",
            "4",
        ],
        &[],
    );
    let report = json_report(&out.output);
    assert!(out.success, "reconcile exit {:?}: {}", out.code, out.output);
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snake_case_shop_with_bigint_ids() {
    let db = Cluster::shared().create_db("snake").await;
    let c = db.client().await;
    c.batch_execute(SNAKE_SCHEMA).await.unwrap();
    snake_seed(&c, 12).await;
    db.setup(&["--config", SNAKE_CONFIG], &[]);
    let n: i64 = c
        .query_one("SELECT count(*) FROM shop.product_summary", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 12);
    assert_eq!(
        snake_row(&c, 10).await,
        Some((
            2,
            "Product 10".into(),
            1000,
            14,
            Some("https://cdn/10.jpg".into())
        ))
    );
    let report = reconcile(&db, SNAKE_CONFIG);
    assert_eq!(report["checked"], 12, "{report}");
    assert_eq!(report["discrepancies"], 0, "{report}");

    let mut w = WorkerProcess::start(&db, &["--config", SNAKE_CONFIG, "run"], &TAGS_ENV);
    // Insert.
    let id: i64 = c
        .query_one(
            "WITH p AS (INSERT INTO shop.product (store_id, title) VALUES (7, 'New') RETURNING id), \
             pr AS (INSERT INTO shop.price (product_id, currency, amount_cents) SELECT id, 'USD', 4200 FROM p), \
             i AS (INSERT INTO shop.inventory (product_id, location_id, on_hand) SELECT id, 'l1', 5 FROM p) \
             SELECT id FROM p",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_row(&c, id, "the new product", |r| {
        r == &Some((7, "New".into(), 4200, 5, None))
    })
    .await;
    // Update every table.
    c.batch_execute(
        "UPDATE shop.inventory SET on_hand = 20 WHERE product_id = 1 AND location_id = 'l1';
         UPDATE shop.price SET amount_cents = 1 WHERE product_id = 2 AND currency = 'USD';
         UPDATE shop.product SET title = 'Renamed' WHERE id = 3;
         UPDATE shop.product SET store_id = 99 WHERE id = 4;
         UPDATE shop.product_image SET url = 'https://cdn/new.jpg' WHERE product_id = 5;",
    )
    .await
    .unwrap();
    wait_row(&c, 1, "inventory", |r| {
        r.as_ref().is_some_and(|r| r.3 == 17 + 7)
    })
    .await;
    wait_row(&c, 2, "price", |r| r.as_ref().is_some_and(|r| r.2 == 1)).await;
    wait_row(&c, 3, "title", |r| {
        r.as_ref().is_some_and(|r| r.1 == "Renamed")
    })
    .await;
    wait_row(&c, 4, "store move", |r| {
        r.as_ref().is_some_and(|r| r.0 == 99)
    })
    .await;
    wait_row(&c, 5, "image", |r| {
        r.as_ref()
            .is_some_and(|r| r.4.as_deref() == Some("https://cdn/new.jpg"))
    })
    .await;
    // Delete from every table.
    c.batch_execute(
        "DELETE FROM shop.product_image WHERE product_id = 6;
         DELETE FROM shop.inventory WHERE product_id = 7 AND location_id = 'l2';
         DELETE FROM shop.price WHERE product_id = 8 AND currency = 'USD';
         DELETE FROM shop.product WHERE id = 9;",
    )
    .await
    .unwrap();
    wait_row(&c, 6, "image deleted", |r| {
        r.as_ref().is_some_and(|r| r.4.is_none())
    })
    .await;
    wait_row(&c, 7, "inventory deleted", |r| {
        r.as_ref().is_some_and(|r| r.3 == 7)
    })
    .await;
    wait_row(&c, 8, "price deleted", |r| r.is_none()).await;
    wait_row(&c, 9, "product deleted", |r| r.is_none()).await;
    // Tags in the id's canonical text.
    let tags = outbox_tags(&c).await;
    for tag in [
        format!("product:{id}"),
        "store:7:products".into(),
        "store:99:products".into(),
        "inventory:1".into(),
    ] {
        assert!(tags.contains(&tag), "{tag} not in {tags:?}");
    }
    // TRUNCATE recomputes every product (in the id type's order).
    c.batch_execute("TRUNCATE shop.product_image")
        .await
        .unwrap();
    wait_row(&c, 12, "images truncated", |r| {
        r.as_ref().is_some_and(|r| r.4.is_none())
    })
    .await;

    // kill -9 in the middle of a burst (after 500 of its 1500 commits, the burst still
    // running), then a restart converges.
    let writer = db.client().await;
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    let burst = tokio::spawn(async move {
        for i in 0..1500i64 {
            writer
                .execute(
                    "UPDATE shop.inventory SET on_hand = on_hand + 1 WHERE product_id = $1 AND location_id = 'l1'",
                    &[&(1 + i % 12)],
                )
                .await
                .unwrap();
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    wait_until(
        Duration::from_secs(60),
        "500 commits of the burst",
        || async { written.load(Ordering::SeqCst) >= 500 },
    )
    .await;
    w.kill9();
    let at = written.load(Ordering::SeqCst);
    assert!(
        !burst.is_finished() && at < 1500,
        "the burst ended before the kill ({at} commits)"
    );
    eprintln!("killed after {at} of 1500 commits");
    burst.await.unwrap();
    let _w = WorkerProcess::start(&db, &["--config", SNAKE_CONFIG, "run"], &TAGS_ENV);
    wait_until(
        Duration::from_secs(10),
        "convergence after kill -9",
        || async {
            let r = reconcile(&db, SNAKE_CONFIG);
            r["discrepancies"] == 0
        },
    )
    .await;
    let report = reconcile(&db, SNAKE_CONFIG);
    // 12 + the new one - product 9 (deleted) - product 8 (no USD price: no row).
    assert_eq!(report["checked"], 11, "{report}");
    assert_eq!(report["discrepancies"], 0, "{report}");
}

/// The snake_case example config with `batch.max_products = {n}`, written to a file of
/// the test's own: every pass over every product then walks many keyset pages.
fn snake_config_with_pages(name: &str, n: usize) -> String {
    let text = std::fs::read_to_string(SNAKE_CONFIG).unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.toml"));
    std::fs::write(&path, format!("{text}\n[batch]\nmax_products = {n}\n")).unwrap();
    path.display().to_string()
}

async fn products_with_stock(c: &Client) -> Vec<i64> {
    column(
        c,
        "SELECT product_id FROM shop.product_summary WHERE inventory_available <> 0 \
         ORDER BY product_id",
    )
    .await
}

/// Issue 18, item 1: a pass over every product lists its pages with keyset paging in the id
/// type's order. Sorted as text (`SELECT id::text ... ORDER BY id` sorts the text output),
/// a page of bigint ids ended at "16" while the next one started after 16 as a number,
/// so 8 and 9 were never listed when the product table and the summary held different ids
/// (here: products without a price). A TRUNCATE while `run` streamed left 9 and 99 with
/// their old stock for good (only reconcile saw them).
#[tokio::test(flavor = "multi_thread")]
async fn passes_over_every_bigint_product_in_small_pages_miss_none() {
    let db = Cluster::shared().create_db("snake_pages").await;
    let c = db.client().await;
    c.batch_execute(SNAKE_SCHEMA).await.unwrap();
    snake_seed(&c, 150).await;
    // Products without a USD price have no summary row: the two sides of a page differ,
    // which is when text order skipped ids (9 and 99 here), not only repeated them.
    c.batch_execute("DELETE FROM shop.price WHERE currency = 'USD' AND product_id % 10 = 0")
        .await
        .unwrap();
    let config = snake_config_with_pages(&db.name, 7);
    let setup = WorkerProcess::run_to_end(&db, &["--config", &config, "setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    let rows: i64 = c
        .query_one("SELECT count(*) FROM shop.product_summary", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows, 135,
        "setup's backfill wrote every product with a price"
    );
    assert_eq!(products_with_stock(&c).await.len(), 135);

    let w = WorkerProcess::start(&db, &["--config", &config, "run"], &TAGS_ENV);
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    c.batch_execute("TRUNCATE shop.inventory").await.unwrap();
    w.wait_for_log(Duration::from_secs(20), "recomputed every product")
        .await;
    let left = products_with_stock(&c).await;
    assert!(
        left.is_empty(),
        "after TRUNCATE inventory these products keep their old stock: {left:?}"
    );
    let report = reconcile(&db, &config);
    assert_eq!(report["checked"], 135, "{report}");
    assert_eq!(report["discrepancies"], 0, "{report}");
}

/// The built-in summary query with its tables moved to schema `uuidshop`.
fn uuid_query() -> String {
    let mut q = include_str!("../sql/summary_query.sql").to_string();
    for t in ["Product", "Price", "Inventory", "ProductImage"] {
        q = q.replace(&format!("\"{t}\""), &format!("uuidshop.\"{t}\""));
    }
    q
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shop_with_uuid_ids() {
    let db = Cluster::shared().create_db("uuid").await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE SCHEMA uuidshop;
         CREATE TABLE uuidshop.\"Product\" (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \"storeId\" uuid NOT NULL, title text NOT NULL, active boolean NOT NULL DEFAULT true);
         CREATE TABLE uuidshop.\"Price\" (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \"productId\" uuid NOT NULL REFERENCES uuidshop.\"Product\" ON DELETE CASCADE, currency text NOT NULL, amount int NOT NULL);
         CREATE TABLE uuidshop.\"Inventory\" (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \"productId\" uuid NOT NULL REFERENCES uuidshop.\"Product\" ON DELETE CASCADE, quantity int NOT NULL, reserved int NOT NULL DEFAULT 0);
         CREATE TABLE uuidshop.\"ProductImage\" (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \"productId\" uuid NOT NULL REFERENCES uuidshop.\"Product\" ON DELETE CASCADE, url text NOT NULL, position int NOT NULL DEFAULT 0);
         INSERT INTO uuidshop.\"Product\" (\"storeId\", title) SELECT '00000000-0000-0000-0000-00000000000a', 'P' || g FROM generate_series(1, 6) g;
         INSERT INTO uuidshop.\"Price\" (\"productId\", currency, amount) SELECT id, 'USD', 500 FROM uuidshop.\"Product\";
         INSERT INTO uuidshop.\"Inventory\" (\"productId\", quantity) SELECT id, 4 FROM uuidshop.\"Product\";",
    )
    .await
    .unwrap();
    let query = db.tmp_path(".sql");
    std::fs::write(&query, uuid_query()).unwrap();
    let config = db.config_file(&format!(
        "[tables]\nschema = \"uuidshop\"\nsummary_query_file = \"{}\"\n",
        query.display()
    ));
    db.setup(&["--config", &config], &[]);
    let types: Vec<String> = column(
        &c,
        "SELECT format_type(atttypid, NULL) FROM pg_attribute \
         WHERE attrelid = 'uuidshop.\"ProductSummary\"'::regclass AND attname IN ('productId', 'storeId') ORDER BY attname",
    )
    .await;
    assert_eq!(
        types,
        ["uuid", "uuid"],
        "setup gives the summary the source's id types"
    );

    let _w = WorkerProcess::start(&db, &["--config", &config, "run"], &TAGS_ENV);
    let id: String = c
        .query_one(
            "WITH p AS (INSERT INTO uuidshop.\"Product\" (\"storeId\", title) VALUES ('00000000-0000-0000-0000-00000000000b', 'New') RETURNING id), \
             pr AS (INSERT INTO uuidshop.\"Price\" (\"productId\", currency, amount) SELECT id, 'USD', 999 FROM p) \
             SELECT id::text FROM p",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let summary = |id: String| {
        let c = &c;
        async move {
            c.query_opt(
                "SELECT price, \"inventoryAvailable\" FROM uuidshop.\"ProductSummary\" WHERE \"productId\" = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
        }
    };
    wait_until(Duration::from_secs(5), "the new product", || async {
        summary(id.clone()).await == Some((999, 0))
    })
    .await;
    c.execute(
        "INSERT INTO uuidshop.\"Inventory\" (\"productId\", quantity) VALUES ($1::text::uuid, 9)",
        &[&id],
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(5), "inventory", || async {
        summary(id.clone()).await == Some((999, 9))
    })
    .await;
    c.execute("DELETE FROM uuidshop.\"Product\" WHERE title = 'P1'", &[])
        .await
        .unwrap();
    let tags = outbox_tags(&c).await;
    assert!(
        tags.contains(&format!("product:{}", id))
            && tags.contains(&"store:00000000-0000-0000-0000-00000000000b:products".to_string()),
        "{tags:?}"
    );
    wait_until(Duration::from_secs(5), "reconcile = 0", || async {
        let r = reconcile(&db, &config);
        r["discrepancies"] == 0 && r["checked"] == 6
    })
    .await;
}

/// A config that does not fit the database: setup and run refuse with one line naming the
/// table, column or query problem, before anything is created.
#[tokio::test(flavor = "multi_thread")]
async fn a_config_that_does_not_fit_is_refused_before_anything_changes() {
    let db = Cluster::shared().create_db("bad_schema").await;
    let c = db.client().await;
    c.batch_execute(SNAKE_SCHEMA).await.unwrap();
    c.batch_execute(
        "CREATE TABLE shop.variant (sku text, size text, title text, PRIMARY KEY (sku, size));
         CREATE TABLE shop.legacy (id numeric PRIMARY KEY, title text);",
    )
    .await
    .unwrap();
    snake_seed(&c, 3).await;
    let dir = db.tmp_path("");
    std::fs::create_dir_all(&dir).unwrap();
    let base = std::fs::read_to_string(SNAKE_CONFIG).unwrap();
    let query = include_str!("../config/examples/snake_case/summary_query.sql");
    let write = |name: &str, config: String, query: Option<String>| {
        let mut config = config;
        if let Some(q) = query {
            let path = dir.join(format!("{name}.sql"));
            std::fs::write(&path, q).unwrap();
            config = config.replace(
                "config/examples/snake_case/summary_query.sql",
                &path.display().to_string(),
            );
        }
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        path.display().to_string()
    };
    let cases = [
        (
            write(
                "missing_table",
                base.replace("product = \"id\"", "product = \"id\"\nproduct_v2 = \"id\""),
                None,
            ),
            "\"shop\".\"product_v2\" does not exist",
        ),
        (
            write(
                "missing_column",
                base.replace("title = \"title\"", "title = \"name\""),
                None,
            ),
            "product_summary\" has no column \"name\" (tables.summary_columns.title)",
        ),
        (
            write(
                "query_missing_column",
                base.clone(),
                Some(query.replace(
                    "LIMIT 1)                                 AS primary_image_url",
                    "LIMIT 1)                                 AS image",
                )),
            ),
            "returns no column primary_image_url",
        ),
        (
            write(
                "query_wrong_type",
                base.clone(),
                Some(query.replace("pr.amount_cents ", "pr.amount_cents::numeric ")),
            ),
            "column price is numeric, but must be int4",
        ),
        (
            write(
                "composite_key",
                base.replace("product = \"product\"", "product = \"variant\"")
                    .replace("product = \"id\"", "variant = \"sku\""),
                None,
            ),
            "composite keys are not supported",
        ),
        (
            write(
                "unsupported_type",
                base.replace("product = \"product\"", "product = \"legacy\"")
                    .replace("product = \"id\"", "legacy = \"id\""),
                None,
            ),
            "is numeric; product ids must be text, varchar, integer, bigint or uuid",
        ),
    ];
    for (config, expected) in &cases {
        let out = WorkerProcess::run_to_end(&db, &["--config", config, "setup"], &[]);
        assert_eq!(out.code, Some(2), "{config}: {}", out.output);
        assert!(
            out.output.contains(expected),
            "{config}: expected {expected:?} in:\n{}",
            out.output
        );
    }
    let created: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'cdc_worker') \
             OR EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&db.slot()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!created, "nothing was created");
    // `run` checks the same at its start: after a good setup, a query that lost a column.
    db.setup(&["--config", SNAKE_CONFIG], &[]);
    let out = WorkerProcess::run_to_end(&db, &["--config", &cases[2].0, "run"], &[]);
    assert_eq!(out.code, Some(2), "{}", out.output);
    assert!(out.output.contains(cases[2].1), "{}", out.output);
    // Issue 19: `revalidate --product` with an id that is no bigint gets our message,
    // naming the id and the type, not Postgres's "invalid input syntax"; nothing is sent.
    let out = WorkerProcess::run_to_end(
        &db,
        &["--config", SNAKE_CONFIG, "revalidate", "--product", "p1"],
        &TAGS_ENV,
    );
    assert_eq!(out.code, Some(2), "{}", out.output);
    assert!(
        out.output
            .contains("--product \"p1\" is not a product id here: product ids are bigint"),
        "{}",
        out.output
    );
    assert!(
        !out.output.contains("invalid input syntax"),
        "{}",
        out.output
    );
}
