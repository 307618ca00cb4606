//! Every statement family the worker builds from a shop's layout (`shop::sql::families`)
//! is prepared against real shops whose product and store ids are text, integer, bigint
//! and uuid, and against the mapped snake_case example. A statement that compares an id
//! with the wrong type, or names a column that means something else in one layout, fails
//! here instead of in a shop.
//!
//! Preparing proves the types fit, not the order: `SELECT id::text ... ORDER BY id` prepares
//! for every type and sorts integers as text (issue 18). So every family that pages is also
//! executed, in pages of 3 to 7, over catalogs whose product and summary id sets differ,
//! and what it enumerates is compared with the ids in the type's own order.

mod support;

use std::path::Path;

use cdc_worker::apply::Applier;
use cdc_worker::config::Config;
use cdc_worker::shop::layout::Layout;
use cdc_worker::shop::sql::{self, families};
use support::{Cluster, SOURCE_SCHEMA_SQL};
use tokio_postgres::Client;

/// The reference schema with every product and store id (and the keys that refer to
/// them) of SQL type `id_type`, replacing the text-keyed one every test database starts
/// with.
fn schema_with_ids(id_type: &str) -> String {
    let mut sql = format!(
        "DROP TABLE \"ProductImage\", \"Inventory\", \"Price\", \"Product\";\n{SOURCE_SCHEMA_SQL}"
    );
    for col in ["\"id\"", "\"productId\"", "\"storeId\""] {
        sql = sql.replace(&format!("{col} TEXT"), &format!("{col} {id_type}"));
    }
    sql
}

/// A database whose shop has ids of SQL type `id_type` (`hint` names it).
async fn db_with_ids(hint: &str, id_type: &str) -> (support::TestDb, Client) {
    let db = Cluster::shared()
        .create_db(&format!("{hint}_{}", id_type.to_lowercase()))
        .await;
    let c = db.client().await;
    c.batch_execute(&schema_with_ids(id_type)).await.unwrap();
    (db, c)
}

/// Loads the layout, creates the summary table the way `setup` does, and prepares every
/// statement family; returns how many were prepared.
async fn prepare_every_family(c: &tokio_postgres::Client, cfg: &Config) -> usize {
    let layout = Layout::load(c, cfg).await.expect("layout");
    if !layout.summary_exists {
        c.batch_execute(&layout.create_table_sql(cfg))
            .await
            .expect("creating the summary table");
    }
    let layout = Layout::load(c, cfg).await.expect("layout with the summary");
    let all = families(&layout);
    for (name, sql) in &all {
        if let Err(e) = c.prepare(sql).await {
            panic!(
                "{name} does not prepare for {} ids: {}\n{sql}",
                layout.id_type,
                support::describe(&e)
            );
        }
    }
    all.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_family_prepares_for_each_id_type() {
    for id_type in ["TEXT", "INTEGER", "BIGINT", "UUID"] {
        let (_db, c) = db_with_ids("stmts", id_type).await;
        let cfg = Config::default();
        let prepared = prepare_every_family(&c, &cfg).await;
        assert!(prepared >= 10, "only {prepared} families for {id_type}");
        let types: Vec<String> = c
            .query(
                "SELECT format_type(atttypid, NULL) FROM pg_attribute \
                 WHERE attrelid = '\"ProductSummary\"'::regclass \
                   AND attname IN ('productId', 'storeId') ORDER BY attname",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let want = match id_type {
            "TEXT" => "text",
            "INTEGER" => "integer",
            "BIGINT" => "bigint",
            _ => "uuid",
        };
        assert_eq!(types, [want, want], "the summary has the source's id type");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_family_prepares_for_the_snake_case_example() {
    let db = Cluster::shared().create_db("stmts_snake").await;
    let c = db.client().await;
    c.batch_execute(include_str!("../config/examples/snake_case/schema.sql"))
        .await
        .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = Config::load_with_env(
        Some(&root.join("config/examples/snake_case/cdc-worker.toml")),
        |k| match k {
            "DATABASE_URL" => Some(db.url.clone()),
            _ => None,
        },
    )
    .expect("the snake_case example config");
    let prepared = prepare_every_family(&c, &cfg).await;
    assert!(prepared >= 10);
}

/// Product `g` of the paging catalog as an SQL expression of `id_type`: squares, so the
/// ids cross digit lengths (1, 4, 9, 16, ... 6400) and text order and integer order part
/// on almost every page; bigints beyond 2^31; uuids in no relation to `g`.
fn id_of(id_type: &str, g: &str) -> String {
    match id_type {
        "TEXT" => format!("('p' || ({g} * {g}))"),
        "INTEGER" => format!("({g} * {g})"),
        "BIGINT" => format!("({g}::bigint * {g} * 1000003)"),
        _ => format!("md5(({g} * {g})::text)::uuid"),
    }
}

/// Store `n` (0..3) as an SQL expression of `id_type`.
fn store_of(id_type: &str, n: &str) -> String {
    match id_type {
        "TEXT" => format!("('s' || {n})"),
        "INTEGER" | "BIGINT" => format!("({n} + 1)"),
        _ => format!("md5('s' || {n})::uuid"),
    }
}

/// A catalog where the two sides differ the ways a shop's do: products 1-80 but every
/// 11th deleted (their summary rows left behind), every 7th without a USD price (no
/// summary row due), summary rows only for the even ones (the odd ones missing), all of
/// them stale, and orphans 81-90 whose products never existed.
async fn paging_catalog(c: &Client, id_type: &str) {
    let id = id_of(id_type, "g");
    let store = store_of(id_type, "(g % 3)");
    // Every table's own key has the id type too (schema_with_ids).
    let (price_id, inventory_id) = (id_of(id_type, "(g + 1000)"), id_of(id_type, "(g + 2000)"));
    c.batch_execute(&format!(
        "INSERT INTO \"Product\"(id, \"storeId\", title) \
           SELECT {id}, {store}, 'Product ' || g FROM generate_series(1, 80) g;
         INSERT INTO \"Price\"(id, \"productId\", currency, amount) \
           SELECT {price_id}, {id}, 'USD', 100 * g FROM generate_series(1, 80) g WHERE g % 7 <> 0;
         INSERT INTO \"Inventory\"(id, \"productId\", \"locationId\", quantity, reserved) \
           SELECT {inventory_id}, {id}, 'l1', 10, 3 FROM generate_series(1, 80) g;
         INSERT INTO \"ProductSummary\"(id, \"productId\", \"storeId\", title, price, active, \
           \"inventoryAvailable\", \"updatedAt\") \
           SELECT 'row' || g, {id}, {store}, 'stale', 1, true, 99, now() \
           FROM generate_series(1, 90) g WHERE g % 2 = 0 OR g % 11 = 0 OR g > 80;
         DELETE FROM \"Product\" WHERE id IN (SELECT {id} FROM generate_series(1, 80) g \
           WHERE g % 11 = 0);"
    ))
    .await
    .unwrap();
}

/// `sql` (one text column) as a list, in the order the rows come.
/// Every id on either side (`side` the source: the product table, or the summary query),
/// or only store `store`'s, in the id type's own order: the oracle the pages must match.
/// Sorted on the native column (`u.x`), never on a text output column.
async fn expected_ids(c: &Client, layout: &Layout, source_is_query: bool) -> Vec<String> {
    let source = if source_is_query {
        format!(
            "SELECT s.product_id FROM ({}) s",
            layout.query().replace("$1", "'USD'")
        )
    } else {
        format!("SELECT {} FROM {}", layout.product_key, layout.product)
    };
    support::column::<String>(
        c,
        &format!(
            "SELECT u.x::text FROM ({source} UNION SELECT {} FROM {}) u(x) ORDER BY u.x",
            layout.col.product_id, layout.summary
        ),
    )
    .await
}

async fn expected_store_ids(c: &Client, layout: &Layout, store: &str) -> Vec<String> {
    support::column::<String>(
        c,
        &format!(
            "SELECT u.x::text FROM (SELECT s.product_id FROM ({query}) s \
               WHERE s.store_id::text = '{store}' \
             UNION SELECT {pid} FROM {summary} WHERE {sid}::text = '{store}') u(x) ORDER BY u.x",
            query = layout.query().replace("$1", "'USD'"),
            pid = layout.col.product_id,
            sid = layout.col.store_id,
            summary = layout.summary,
        ),
    )
    .await
}

/// Pass pages (`first_page`, `next_page`: what apply_all, recovery, TRUNCATE and setup's
/// backfill walk), each of at most `size` ids, concatenated.
async fn pass_pages(c: &Client, layout: &Layout, size: i64) -> Vec<String> {
    let first = c.prepare(&sql::first_page(layout)).await.unwrap();
    let next = c.prepare(&sql::next_page(layout)).await.unwrap();
    let mut all: Vec<String> = Vec::new();
    loop {
        let rows = match all.last() {
            None => c.query(&first, &[&size]).await.unwrap(),
            Some(after) => c.query(&next, &[after, &size]).await.unwrap(),
        };
        assert!(
            rows.len() as i64 <= size,
            "a page of {} > {size}",
            rows.len()
        );
        all.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        if (rows.len() as i64) < size {
            return all;
        }
        assert!(all.len() < 1000, "the pages never end: {all:?}");
    }
}

/// Reconcile's walk: `page_bound` cuts `(after, upto]` ranges of at most `size` ids on
/// either side; each range compared (`compare_range`, the last one `compare_open`).
/// Returns the upper bounds, how many products the comparisons counted, and the ids that
/// differ.
async fn reconcile_pages(
    c: &Client,
    layout: &Layout,
    size: i64,
) -> (Vec<String>, i64, Vec<String>) {
    let bound = c.prepare(&sql::page_bound(layout)).await.unwrap();
    let range = c.prepare(&sql::compare_range(layout)).await.unwrap();
    let open = c.prepare(&sql::compare_open(layout)).await.unwrap();
    let (mut bounds, mut checked, mut differing) = (Vec::new(), 0i64, Vec::new());
    let mut after: Option<String> = None;
    loop {
        let upto: Option<String> = c
            .query_one(&bound, &[&after, &(size - 1)])
            .await
            .unwrap()
            .get(0);
        let row = match &upto {
            Some(upto) => c.query_one(&range, &[&"USD", &after, upto]).await,
            None => c.query_one(&open, &[&"USD", &after]).await,
        }
        .unwrap();
        let n: i64 = row.get(0);
        assert!(n <= 2 * size, "a page compared {n} products (size {size})");
        checked += n;
        differing.extend(row.get::<_, Vec<String>>(1));
        match upto {
            Some(upto) => {
                bounds.push(upto.clone());
                after = Some(upto);
            }
            None => return (bounds, checked, differing),
        }
        assert!(bounds.len() < 1000, "the pages never end: {bounds:?}");
    }
}

/// Reconcile `--store`'s pages (`store_page`), concatenated.
async fn store_pages(c: &Client, layout: &Layout, store: &str, size: i64) -> Vec<String> {
    let stmt = c.prepare(&sql::store_page(layout)).await.unwrap();
    let mut all: Vec<String> = Vec::new();
    loop {
        let page: Vec<String> = c
            .query_one(&stmt, &[&"USD", &all.last(), &size, &store])
            .await
            .unwrap()
            .get(0);
        assert!(page.len() as i64 <= size);
        all.extend(page.iter().cloned());
        if (page.len() as i64) < size {
            return all;
        }
        assert!(all.len() < 1000, "the pages never end: {all:?}");
    }
}

/// Positions of `ids` in `order`: panics on an id `order` does not hold.
fn positions(order: &[String], ids: &[String]) -> Vec<usize> {
    ids.iter()
        .map(|id| {
            order
                .iter()
                .position(|o| o == id)
                .unwrap_or_else(|| panic!("{id} is on neither side"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_paging_family_enumerates_each_id_once_in_the_types_order() {
    for id_type in ["TEXT", "INTEGER", "BIGINT", "UUID"] {
        let (db, c) = db_with_ids("paging", id_type).await;
        let mut cfg = Config::default();
        prepare_every_family(&c, &cfg).await;
        let layout = Layout::load(&c, &cfg).await.unwrap();
        paging_catalog(&c, id_type).await;
        let every = expected_ids(&c, &layout, false).await;
        let compared = expected_ids(&c, &layout, true).await;
        assert!(every.len() > 70, "{id_type}: {every:?}");
        // What one comparison of everything finds: the oracle for the paged comparisons.
        let whole = c
            .query_one(&sql::compare_open(&layout), &[&"USD", &None::<String>])
            .await
            .unwrap();
        let mut whole_differing: Vec<String> = whole.get(1);
        whole_differing.sort();
        assert_eq!(whole.get::<_, i64>(0), compared.len() as i64);
        assert!(
            whole_differing.len() > 40,
            "{id_type}: the catalog has drift"
        );

        for size in [3i64, 5, 7] {
            let what = format!("{id_type} ids, pages of {size}");
            assert_eq!(
                pass_pages(&c, &layout, size).await,
                every,
                "pass pages over {what}"
            );

            let (bounds, checked, mut differing) = reconcile_pages(&c, &layout, size).await;
            let at = positions(&every, &bounds);
            assert!(
                at.windows(2).all(|w| w[0] < w[1]),
                "reconcile page bounds out of order for {what}: {bounds:?}"
            );
            assert_eq!(checked, compared.len() as i64, "reconcile counted, {what}");
            differing.sort();
            assert_eq!(differing, whole_differing, "reconcile found, {what}");

            for n in 0..3 {
                let store: String = c
                    .query_one(
                        &format!("SELECT {}::text", store_of(id_type, &n.to_string())),
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(
                    store_pages(&c, &layout, &store, size).await,
                    expected_store_ids(&c, &layout, &store).await,
                    "store pages of {store}, {what}"
                );
            }
        }

        // apply_all (TRUNCATE, recovery, backfill, bulk passes) walks the pass pages:
        // afterwards every product is exact, and every id was recomputed once.
        cfg.batch.max_products = 4;
        c.batch_execute(&cdc_worker::state::create_sql(&cfg))
            .await
            .unwrap();
        let mut applier = Applier::new(db.client().await, &cfg).await.unwrap();
        let applied = applier.apply_all(None, None, |_| {}).await.unwrap();
        assert_eq!(
            applied.products,
            every.len(),
            "{id_type}: apply_all recomputed"
        );
        let after = c
            .query_one(&sql::compare_open(&layout), &[&"USD", &None::<String>])
            .await
            .unwrap();
        assert_eq!(
            after.get::<_, Vec<String>>(1),
            Vec::<String>::new(),
            "{id_type}: rows still wrong after a pass over every product"
        );
    }
}
