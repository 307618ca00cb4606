//! Pages and their comparison: product ids walked in keyset order, each page compared in
//! one statement that returns only the ids that differ.

use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};

use super::Options;
use crate::config::Config;
use crate::shop::layout::Layout;

/// A page of products to compare.
#[derive(Debug)]
pub(super) enum Page {
    /// Ids in `(after, upto]`, in the id type's order; no `after` on the first page, no
    /// `upto` on the last.
    Range {
        after: Option<String>,
        upto: Option<String>,
    },
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
    pub(super) async fn new(
        client: Client,
        cfg: &Config,
        layout: &Layout,
        opts: &Options,
    ) -> anyhow::Result<Pager> {
        let Layout {
            summary,
            product,
            product_key: key,
            ..
        } = layout;
        let (pid, sid) = (&layout.col.product_id, &layout.col.store_id);
        // Reconcile plans every statement for its parameters (plan_cache_mode), so the
        // "no lower bound" case costs nothing on the first page.
        let after =
            |col: &str, n: usize| format!("(${n}::text IS NULL OR {col} > {})", layout.id(n));
        let sql = match &opts.store {
            // The page-size-th next id of each side (OFFSET over an index-only scan); the
            // smaller one ends the page, so neither side has more than page_size rows in it.
            None => format!(
                "SELECT least((SELECT {key} FROM {product} WHERE {} ORDER BY {key} \
                 OFFSET $2 LIMIT 1), (SELECT {pid} FROM {summary} WHERE {} \
                 ORDER BY {pid} OFFSET $2 LIMIT 1))::text",
                after(key, 1),
                after(pid, 1)
            ),
            // The next ids in the store on either side, each side limited before the union.
            Some(_) => format!(
                "SELECT coalesce(array_agg(id::text ORDER BY id), '{{}}') FROM (SELECT id FROM \
                 ((SELECT s.product_id AS id FROM ({query}) s WHERE {} \
                 AND s.store_id = {store} ORDER BY s.product_id LIMIT $3) UNION \
                 (SELECT t.{pid} FROM {summary} t WHERE {} \
                 AND t.{sid} = {store} ORDER BY t.{pid} LIMIT $3)) u \
                 ORDER BY id LIMIT $3) ids",
                after("s.product_id", 2),
                after(&format!("t.{pid}"), 2),
                query = cfg.summary_query()?,
                store = layout.store(4),
            ),
        };
        let stmt = crate::pg::prepare(&client, &sql).await?;
        Ok(Pager {
            client,
            stmt,
            currency: cfg.currency.clone(),
            store: opts.store.clone(),
            page_size: opts.page_size as i64,
        })
    }

    pub(super) async fn produce(self, tx: mpsc::Sender<Page>) -> anyhow::Result<()> {
        let mut after: Option<String> = None;
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
                Some(n) => after = Some(n),
                None => return Ok(()),
            }
        }
    }
}

/// The FULL OUTER JOIN of the summary query and the table over `filter`, reduced to the
/// number of products compared and the ids that differ.
pub(super) fn compare_sql(layout: &Layout, source_filter: &str, table_filter: &str) -> String {
    format!(
        "SELECT count(*)::int8, coalesce(array_agg(coalesce(d.product_id, c.product_id)) \
         FILTER (WHERE d.product_id IS NULL OR c.product_id IS NULL OR \
         (d.store_id, d.title, d.price, d.active, d.inventory_available, d.primary_image_url) \
         IS DISTINCT FROM (c.store_id, c.title, c.price, c.active, \
         c.inventory_available, c.primary_image_url)), '{{}}') \
         FROM ({} WHERE {source_filter}) d FULL JOIN ({} WHERE {table_filter}) c \
         ON c.product_id = d.product_id",
        layout.summary_select(),
        layout.table_select()
    )
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
    pub(super) async fn new(
        client: Client,
        cfg: &Config,
        layout: &Layout,
    ) -> anyhow::Result<Comparer> {
        let prepare = |sql: String| {
            let client = &client;
            async move { crate::pg::prepare(client, &sql).await }
        };
        let pid = format!("t.{}", layout.col.product_id);
        let after = |col: &str| format!("($2::text IS NULL OR {col} > {})", layout.id(2));
        let upto = |col: &str| format!("{col} <= {}", layout.id(3));
        let bounded = prepare(compare_sql(
            layout,
            &format!("{} AND {}", after("s.product_id"), upto("s.product_id")),
            &format!("{} AND {}", after(&pid), upto(&pid)),
        ))
        .await?;
        let open = prepare(compare_sql(layout, &after("s.product_id"), &after(&pid))).await?;
        let ids = prepare(compare_sql(
            layout,
            &format!("s.product_id = ANY({})", layout.ids(2)),
            &format!("{pid} = ANY({})", layout.ids(2)),
        ))
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
