//! Bulk transactions: one that rewrites a large share of the catalog (a stock import, a
//! price list update) is recomputed in one pass over every product instead of in cuts of
//! `batch.max_pending`.
//!
//! In cuts, such a transaction costs one recompute per product it touches plus, for every
//! change after the first cut, a place in the next batch and a lookup in the covered set;
//! the stream stops while each cut is applied, so the rest of the transaction (and what
//! queued behind it) arrives only after the last cut. With a pass over every product, the
//! pass's snapshot sees the transaction, so every later change of a transaction it saw is
//! already in the summary once the pass commits: the stream loop drops those changes as
//! they arrive ([`crate::stream::passes::Passes`]) and keeps reading at the walsender's pace while the pass runs.
//!
//! The rule ([`Bulk::escalates`]): a batch cut at `max_pending` dirty products, when that is
//! a fifth or more of the products the catalog holds (`pg_class.reltuples`, read at the
//! cut). Below that share the cuts are cheaper; an unknown estimate (a table never
//! analyzed) keeps the cuts.

use tokio_postgres::Client;

use crate::config::Config;
use crate::pg::sql::qualified;

/// A cut is a bulk rewrite when it holds at least 1/SHARE of the catalog's products.
const SHARE: f64 = 5.0;

pub struct Bulk {
    /// The product table, qualified and quoted.
    product: String,
    max_pending: usize,
}

impl Bulk {
    pub fn new(cfg: &Config) -> Bulk {
        Bulk {
            product: qualified(&cfg.tables.schema, &cfg.tables.product),
            max_pending: cfg.batch.max_pending,
        }
    }

    /// Whether a batch of `dirty` products is better recomputed as a pass over every
    /// product; `Some(reason)` for the log when it is.
    pub async fn escalates(&self, client: &Client, dirty: usize) -> anyhow::Result<Option<String>> {
        if dirty < self.max_pending {
            return Ok(None);
        }
        // reltuples is -1 before the first VACUUM or ANALYZE (PostgreSQL 14+), 0 before
        // 14: either way no estimate, and no pass on a guess.
        let estimate: f64 = client
            .query_one(
                "SELECT reltuples::float8 FROM pg_class WHERE oid = $1::text::regclass",
                &[&self.product],
            )
            .await?
            .get(0);
        if estimate <= 0.0 || dirty as f64 * SHARE < estimate {
            return Ok(None);
        }
        Ok(Some(format!(
            "{dirty} dirty products waiting (batch.max_pending) are a fifth or more of the \
             ~{estimate:.0} in {}: one pass over every product costs less than recomputing \
             them in cuts",
            self.product
        )))
    }
}
