//! Pages and their comparison: product ids walked in keyset order, each page compared in
//! one statement that returns only the ids that differ.

use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};

use super::Options;
use crate::apply::{summary_select, table_select};
use crate::config::Config;
use crate::summary::{qualified, quote_ident};

/// A page of products to compare.
#[derive(Debug)]
pub(super) enum Page {
    /// Ids in `(after, upto]`; no `upto` on the last page.
    Range { after: String, upto: Option<String> },
    /// Exactly these ids (`--store`).
    Ids(Vec<String>),
}

/// What comparing one page found.
pub(super) struct PageResult {
    pub(super) checked: u64,
    pub(super) differing: Vec<String>,
}

/// Produces the pages, in keyset order, on its own connection.
pub(super) struct Pager {
    client: Client,
    stmt: Statement,
    currency: String,
    store: Option<String>,
    page_size: i64,
}

impl Pager {
    pub(super) async fn new(client: Client, cfg: &Config, opts: &Options) -> anyhow::Result<Pager> {
        let summary = qualified(&cfg.tables.schema, &cfg.tables.summary);
        let sql = match &opts.store {
            // The page-size-th next id of each side (OFFSET over an index-only scan); the
            // smaller one ends the page, so neither side has more than page_size rows in it.
            None => {
                let product = qualified(&cfg.tables.schema, &cfg.tables.product);
                let key = quote_ident(&cfg.tables.sources[&cfg.tables.product]);
                format!(
                    "SELECT least((SELECT {key} FROM {product} WHERE {key} > $1 ORDER BY {key} \
                     OFFSET $2 LIMIT 1), (SELECT \"productId\" FROM {summary} WHERE \"productId\" > $1 \
                     ORDER BY \"productId\" OFFSET $2 LIMIT 1))"
                )
            }
            // The next ids in the store on either side, each side limited before the union.
            Some(_) => {
                let query = cfg.summary_query()?;
                format!(
                    "SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM (SELECT id FROM \
                     ((SELECT s.product_id AS id FROM ({query}) s WHERE s.product_id > $2 \
                     AND s.store_id = $4 ORDER BY s.product_id LIMIT $3) UNION \
                     (SELECT t.\"productId\" FROM {summary} t WHERE t.\"productId\" > $2 \
                     AND t.\"storeId\" = $4 ORDER BY t.\"productId\" LIMIT $3)) u \
                     ORDER BY id LIMIT $3) ids"
                )
            }
        };
        let stmt = crate::db::prepare(&client, &sql).await?;
        Ok(Pager {
            client,
            stmt,
            currency: cfg.currency.clone(),
            store: opts.store.clone(),
            page_size: opts.page_size as i64,
        })
    }

    pub(super) async fn produce(self, tx: mpsc::Sender<Page>) -> anyhow::Result<()> {
        let mut after = String::new();
        loop {
            let (page, next) = match &self.store {
                None => {
                    let upto: Option<String> = self
                        .client
                        .query_one(&self.stmt, &[&after, &(self.page_size - 1)])
                        .await?
                        .get(0);
                    let next = upto.clone();
                    (Page::Range { after, upto }, next)
                }
                Some(store) => {
                    let ids: Vec<String> = self
                        .client
                        .query_one(
                            &self.stmt,
                            &[&self.currency, &after, &self.page_size, store],
                        )
                        .await?
                        .get(0);
                    let next = if (ids.len() as i64) < self.page_size {
                        None
                    } else {
                        ids.last().cloned()
                    };
                    if ids.is_empty() {
                        return Ok(());
                    }
                    (Page::Ids(ids), next)
                }
            };
            if tx.send(page).await.is_err() {
                return Ok(());
            }
            match next {
                Some(n) => after = n,
                None => return Ok(()),
            }
        }
    }
}

/// The FULL OUTER JOIN of the summary query and the table over `filter`, reduced to the
/// number of products compared and the ids that differ.
pub(super) fn compare_sql(
    cfg: &Config,
    source_filter: &str,
    table_filter: &str,
) -> anyhow::Result<String> {
    Ok(format!(
        "SELECT count(*)::int8, coalesce(array_agg(coalesce(d.product_id, c.\"productId\")) \
         FILTER (WHERE d.product_id IS NULL OR c.\"productId\" IS NULL OR \
         (d.store_id, d.title, d.price, d.active, d.inventory_available, d.primary_image_url) \
         IS DISTINCT FROM (c.\"storeId\", c.\"title\", c.\"price\", c.\"active\", \
         c.\"inventoryAvailable\", c.\"primaryImageUrl\")), '{{}}') \
         FROM ({} WHERE {source_filter}) d FULL JOIN ({} WHERE {table_filter}) c \
         ON c.\"productId\" = d.product_id",
        summary_select(cfg)?,
        table_select(cfg)
    ))
}

/// Compares pages on its own connection.
pub(super) struct Comparer {
    client: Client,
    bounded: Statement,
    open: Statement,
    ids: Statement,
    currency: String,
}

impl Comparer {
    pub(super) async fn new(client: Client, cfg: &Config) -> anyhow::Result<Comparer> {
        let prepare = |sql: String| {
            let client = &client;
            async move { crate::db::prepare(client, &sql).await }
        };
        let bounded = prepare(compare_sql(
            cfg,
            "s.product_id > $2 AND s.product_id <= $3",
            "t.\"productId\" > $2 AND t.\"productId\" <= $3",
        )?)
        .await?;
        let open = prepare(compare_sql(
            cfg,
            "s.product_id > $2",
            "t.\"productId\" > $2",
        )?)
        .await?;
        let ids = prepare(compare_sql(
            cfg,
            "s.product_id = ANY($2::text[])",
            "t.\"productId\" = ANY($2::text[])",
        )?)
        .await?;
        Ok(Comparer {
            client,
            bounded,
            open,
            ids,
            currency: cfg.currency.clone(),
        })
    }

    pub(super) async fn compare(&self, page: &Page) -> anyhow::Result<PageResult> {
        let row = match page {
            Page::Range {
                after,
                upto: Some(upto),
            } => {
                self.client
                    .query_one(&self.bounded, &[&self.currency, after, upto])
                    .await?
            }
            Page::Range { after, upto: None } => {
                self.client
                    .query_one(&self.open, &[&self.currency, after])
                    .await?
            }
            Page::Ids(ids) => {
                self.client
                    .query_one(&self.ids, &[&self.currency, ids])
                    .await?
            }
        };
        let checked: i64 = row.get(0);
        Ok(PageResult {
            checked: checked as u64,
            differing: row.get(1),
        })
    }
}
