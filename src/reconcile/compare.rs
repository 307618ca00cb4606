//! Pages and their comparison: product ids walked in keyset order, each page compared in
//! one statement that returns only the ids that differ.

use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};

use super::Options;
use crate::config::Config;
use crate::shop::layout::Layout;
use crate::shop::sql;

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
        let text = match &opts.store {
            None => sql::page_bound(layout),
            Some(_) => sql::store_page(layout),
        };
        let stmt = crate::pg::prepare(&client, &text).await?;
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
        let prepare = |text: String| {
            let client = &client;
            async move { crate::pg::prepare(client, &text).await }
        };
        let bounded = prepare(sql::compare_range(layout)).await?;
        let open = prepare(sql::compare_open(layout)).await?;
        let ids = prepare(sql::compare_ids(layout)).await?;
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
