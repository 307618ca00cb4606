//! Every statement family the worker builds from a shop's layout (`shop::sql::families`)
//! is prepared against real shops whose product and store ids are text, integer, bigint
//! and uuid, and against the mapped snake_case example. A statement that compares an id
//! with the wrong type, or names a column that means something else in one layout, fails
//! here instead of in a shop.

mod support;

use std::path::Path;

use cdc_worker::config::Config;
use cdc_worker::shop::layout::Layout;
use cdc_worker::shop::sql::families;
use support::{Cluster, SOURCE_SCHEMA_SQL};

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
        let db = Cluster::shared()
            .create_db(&format!("stmts_{}", id_type.to_lowercase()))
            .await;
        let c = db.client().await;
        c.batch_execute(&schema_with_ids(id_type)).await.unwrap();
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
