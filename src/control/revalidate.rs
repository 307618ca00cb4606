//! `cdc-worker revalidate`: the operator's manual trigger, and the redelivery of parked
//! tags. Both send at once and print each endpoint's answer, instead of going through the
//! outbox, so the operator sees what happened.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;

use crate::config::Config;
use crate::error::definite;
use crate::outbox::deliver::{backoff, http_client, post, Outcome};
use crate::outbox::tags::TagTemplates;
use crate::pg::connect::Database;
use crate::redact::redact_url;
use crate::shop::layout::Layout;
use crate::shop::sql;
use crate::state::{self, outbox};

/// `cdc-worker revalidate`: the operator's manual trigger. Sends the tags of the given
/// products and stores to every endpoint at once (with a few retries) and reports each
/// result, instead of going through the outbox, so the operator sees what happened.
pub async fn revalidate_now(
    cfg: &Config,
    products: &[String],
    stores: &[String],
) -> anyhow::Result<bool> {
    if cfg.revalidate.urls.is_empty() {
        return Err(definite(
            "no revalidation endpoints: set CDC_REVALIDATE_URLS (and CDC_REVALIDATE_SECRET)",
        ));
    }
    let templates = TagTemplates::from_config(cfg);
    let mut tags = BTreeSet::new();
    if !products.is_empty() {
        let db = Database::parse(&cfg.database_url)?;
        let client = db.connect("cdc-worker/revalidate").await?;
        let layout = Layout::load(&client, cfg).await?;
        let ids = canonical_ids(&client, &layout, products).await?;
        let existing: Vec<String> = client
            .query(&sql::existing_products(&layout), &[&ids])
            .await
            .context("looking up the products")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let rows = client
            .query(&sql::stores_of(&layout), &[&ids])
            .await
            .context("looking up the products' stores")?;
        for id in &ids {
            let store = rows
                .iter()
                .find(|r| r.get::<_, &str>(0) == id)
                .map(|r| r.get::<_, String>(1));
            let exists = existing.contains(id);
            // Sent anyway: a page may still show a product deleted since it was cached,
            // and only its tags expire that page. Said on stdout, next to the result, so
            // a mistyped id does not pass unnoticed.
            match (exists, &store) {
                (false, None) => println!(
                    "note: product {id} does not exist in {} and has no summary row: its \
                     product tags are sent anyway (a page may still show a deleted product), \
                     but its store is unknown, so no store listing tag (add --store ID)",
                    layout.product
                ),
                (false, Some(_)) => println!(
                    "note: product {id} does not exist in {}: its tags are sent anyway (a page \
                     may still show a deleted product)",
                    layout.product
                ),
                (true, None) => println!(
                    "note: product {id} has no summary row yet: its store is unknown, so no \
                     store listing tag is sent (add --store ID)"
                ),
                (true, Some(_)) => {}
            }
            templates.product_tags(id, store.as_deref(), &mut tags);
        }
    }
    for store in stores {
        templates.store_tags(store, &mut tags);
    }
    let tags: Vec<String> = tags.into_iter().collect();
    let http = http_client(cfg);
    let mut all_ok = true;
    for url in &cfg.revalidate.urls {
        let label = redact_url(url);
        match post_with_retries(&http, url, &label, &cfg.revalidate.secret, &tags).await {
            Outcome::Delivered => println!("{label}: revalidated {}", tags.join(" ")),
            Outcome::Failed { why, .. } => {
                all_ok = false;
                println!("{label}: FAILED after retries: {why}");
            }
        }
    }
    Ok(all_ok)
}

/// Each `--product` as the canonical text of the product key's type (what tags carry),
/// or a definite error naming the id and the type when it is not one.
async fn canonical_ids(
    client: &tokio_postgres::Client,
    layout: &Layout,
    products: &[String],
) -> anyhow::Result<Vec<String>> {
    let stmt = client.prepare(&sql::canonical_id(layout)).await?;
    let mut ids = Vec::with_capacity(products.len());
    for raw in products {
        match client.query_one(&stmt, &[raw]).await {
            Ok(row) => ids.push(row.get(0)),
            // Class 22, data exception: invalid text for the type, out of range.
            Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                return Err(definite(format!(
                    "--product {raw:?} is not a product id here: product ids are {} (the key \
                     {}.{}), and {raw:?} is not one. Nothing was sent",
                    layout.id_type, layout.product, layout.product_key
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ids)
}

/// A command's POST: a few quick retries, so that the operator waits seconds, not the
/// daemon's `give_up_after_secs`.
async fn post_with_retries(
    http: &reqwest::Client,
    url: &str,
    label: &str,
    secret: &str,
    tags: &[String],
) -> Outcome {
    let mut attempt = 0;
    loop {
        // Tags named by hand revalidate no particular commit.
        match post(http, url, secret, tags, &Default::default()).await {
            Outcome::Failed { why, .. } if attempt < 4 => {
                tracing::warn!(endpoint = %label, error = %why, "retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// `cdc-worker revalidate --failed`: sends the tags parked in `outbox_failed` again, each
/// row to the endpoint that gave up on it, and deletes the rows that were delivered.
/// Prints one line per row. Returns whether every row was delivered.
pub async fn redeliver_failed(cfg: &Config) -> anyhow::Result<bool> {
    if cfg.revalidate.urls.is_empty() {
        return Err(definite(
            "no revalidation endpoints: set CDC_REVALIDATE_URLS (and CDC_REVALIDATE_SECRET)",
        ));
    }
    let db = Database::parse(&cfg.database_url)?;
    let mut client = db.connect("cdc-worker/revalidate").await?;
    let s = state::schema(cfg);
    // Rows written by earlier versions name the endpoint in full: rename them first, so
    // that they match the configured endpoints and nothing secret is printed.
    outbox::migrate_endpoint_keys(&mut client, &s)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "reading {s}.outbox_cursor and {s}.outbox_failed on {}: {e:#} (if they do \
                 not exist, run `cdc-worker setup` first)",
                db.display()
            )
        })?;
    let rows = client.query(&outbox::parked_sql(&s), &[]).await?;
    if rows.is_empty() {
        println!("outbox_failed is empty: nothing to redeliver");
        return Ok(true);
    }
    let urls: BTreeMap<String, &String> = cfg
        .revalidate
        .urls
        .iter()
        .map(|u| (redact_url(u), u))
        .collect();
    let http = http_client(cfg);
    let (mut rows_done, mut tags_done) = (0, 0);
    for row in &rows {
        let id: i64 = row.get(0);
        let key: String = row.get(1);
        let tags: Vec<String> = row.get(2);
        let status = row
            .get::<_, Option<i32>>(3)
            .map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}"));
        let failed_at: String = row.get(4);
        let Some(url) = urls.get(&key) else {
            println!(
                "row {id}: {key} is not a configured endpoint (CDC_REVALIDATE_URLS); its {} tags \
                 stay in outbox_failed",
                tags.len()
            );
            continue;
        };
        let mut result = Outcome::Delivered;
        for chunk in tags.chunks(cfg.revalidate.max_batch_tags) {
            result = post_with_retries(&http, url, &key, &cfg.revalidate.secret, chunk).await;
            if result != Outcome::Delivered {
                break;
            }
        }
        match result {
            Outcome::Delivered => {
                client.execute(&outbox::unpark_sql(&s), &[&id]).await?;
                rows_done += 1;
                tags_done += tags.len();
                println!(
                    "row {id}: {key}: redelivered {} tags (parked {failed_at} after {status}): {}",
                    tags.len(),
                    tags.join(" ")
                );
            }
            Outcome::Failed { why, .. } => {
                println!("row {id}: {key}: FAILED again, left in outbox_failed: {why}");
            }
        }
    }
    println!(
        "redelivered {rows_done} of {} parked rows ({tags_done} tags)",
        rows.len()
    );
    Ok(rows_done == rows.len())
}
