//! Apply: one transaction per batch (per `max_products` of a large one) recomputes the
//! summary rows of the dirty products from the source tables, writes only the rows that
//! really changed, deletes rows whose product is gone, enqueues the cache tags of what
//! changed, and stores the checkpoint, all atomically. Replaying a batch therefore writes nothing new, which turns the
//! slot's at-least-once delivery into exactly-once effects.

use std::time::SystemTime;

use anyhow::Context;
use pgwire_replication::Lsn;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Client, Statement};

use crate::config::Config;
use crate::error::definite;
use crate::outbox::tags::{TagTemplates, Tags, Touched};
use crate::pg::connect::Database;
use crate::pg::snapshot::Seen;
use crate::shop::definition::Definition;
use crate::shop::layout::Layout;
use crate::shop::sql;
use crate::state::checkpoint::{self, Stamp};
use crate::state::{self, locks, outbox};

/// What one apply transaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub products: usize,
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Tags of immediate templates put into the outbox.
    pub tags: usize,
    /// Tags of throttled templates (`revalidate.min_interval_ms`) this apply produced.
    pub throttled: usize,
    /// Of those, how many joined a tag already held (a revalidation saved).
    pub coalesced: usize,
    /// Held tags moved into the outbox (this apply's, or others that were due).
    pub released: usize,
}

impl Applied {
    pub fn rows_written(&self) -> usize {
        self.inserted + self.updated + self.deleted
    }

    pub fn add(&mut self, o: Applied) {
        self.products += o.products;
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.tags += o.tags;
        self.throttled += o.throttled;
        self.coalesced += o.coalesced;
        self.released += o.released;
    }

    /// Whether the outbox got rows (the deliverers have something to send).
    pub fn enqueued(&self) -> bool {
        self.tags > 0 || self.released > 0
    }
}

struct Statements {
    lock: Statement,
    write: Statement,
    write_range: Statement,
    enqueue: Statement,
    hold: Statement,
    release: Statement,
    checkpoint: Statement,
    first_page: Statement,
    next_page: Statement,
    stores_of: Statement,
}

/// Which cache tags a recompute of every product enqueues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagMode {
    /// None: a summary table `setup` has just created, which no page can have cached.
    None,
    /// The tags of the rows that change (what apply always does).
    Changed,
    /// The tags of every product and its store as well: after a failover or a restore
    /// that may have lost writes, pages can show values neither the source nor the
    /// summary hold any more, so no difference points at them (`control::slot`).
    Every,
}

/// Owns the apply connection and its prepared statements.
pub struct Applier {
    client: Client,
    stmts: Statements,
    templates: TagTemplates,
    /// Tags are enqueued only when someone will deliver them.
    enqueue_tags: bool,
    /// Every product's tags, not only those of changed rows (a recompute with
    /// [`TagMode::Every`]).
    every_tag: bool,
    /// Set during a recompute of every product: its last page sets the checkpoint (instead
    /// of only moving it forward), clears the recompute mark and records the stamp.
    reset_checkpoint: Option<Stamp>,
    /// What defines a row for this configuration (recorded by a recompute's last page).
    definition: Definition,
    slot: String,
    currency: String,
    lock_key: i32,
    page_size: i64,
}

impl Applier {
    /// For a command beside the daemon (`reconcile --fix`): it may run before the daemon
    /// of this version upgraded the state schema, so it upgrades it itself.
    pub async fn connect(db: &Database, cfg: &Config, role: &str) -> anyhow::Result<Applier> {
        let client = db
            .connect(&format!("cdc-worker/{role}"))
            .await
            .with_context(|| format!("connecting to {}", db.display()))?;
        crate::state::ensure(&client, cfg).await?;
        Applier::new(client, cfg).await
    }

    pub async fn new(client: Client, cfg: &Config) -> anyhow::Result<Applier> {
        // The apply statements are short index lookups; JIT compiling them costs more than
        // it saves (seen in profiles of large batches).
        //
        // Generic plans, always: every statement here looks rows up by id (a list or a
        // range of them), which the generic plan does by index whatever the count. A
        // custom plan is planned for each batch (4-20 ms of the server's CPU for the
        // apply statement) and, for a page of 20k ids of a pass, overestimates the rows
        // and hashes whole tables instead: it seq-scanned every price and the whole
        // summary (to join the UPDATE) per page, 1.3 s against 0.6 s for the generic
        // plan at 1M products (bench/RESULTS.md, issue 21). Left to `auto`, the server
        // keeps custom plans when the small batches before a pass made them look cheap.
        client
            .batch_execute("SET jit = off; SET plan_cache_mode = force_generic_plan")
            .await?;
        let layout = Layout::load(&client, cfg).await?;
        if !layout.summary_exists {
            return Err(definite(format!(
                "the summary table {} does not exist. Fix: run `cdc-worker setup` first",
                layout.summary
            )));
        }
        let state = state::schema(cfg);
        let prepare = |text: String| {
            let client = &client;
            async move { crate::pg::prepare(client, &text).await }
        };
        let definition = Definition::of(&layout, cfg);
        let stmts = Statements {
            lock: prepare(locks::XACT_LOCK_SQL.into()).await?,
            write: prepare(sql::write(&layout)).await?,
            write_range: prepare(sql::write_range(&layout)).await?,
            enqueue: prepare(outbox::enqueue_sql(&state)).await?,
            hold: prepare(outbox::hold_sql(&state)).await?,
            release: prepare(outbox::release_sql(&state)).await?,
            checkpoint: prepare(checkpoint::write_sql(&state)).await?,
            first_page: prepare(sql::first_page(&layout)).await?,
            next_page: prepare(sql::next_page(&layout)).await?,
            stores_of: prepare(sql::stores_of(&layout)).await?,
        };
        Ok(Applier {
            client,
            stmts,
            templates: TagTemplates::from_config(cfg),
            enqueue_tags: !cfg.revalidate.urls.is_empty(),
            every_tag: false,
            reset_checkpoint: None,
            definition,
            slot: cfg.slot.clone(),
            currency: cfg.currency.clone(),
            lock_key: locks::apply_key(cfg),
            page_size: cfg.batch.max_products as i64,
        })
    }

    /// The recovery recompute (`slot::prepare`): every product, with the tags `tags`
    /// says, and a last transaction that sets the checkpoint to `lsn` (even below the
    /// stored one), clears the recompute mark and records `stamp`.
    pub async fn recompute_all(
        &mut self,
        lsn: Lsn,
        tags: TagMode,
        stamp: &Stamp,
        progress: impl FnMut(usize),
    ) -> anyhow::Result<Applied> {
        let enqueue_tags = self.enqueue_tags;
        self.enqueue_tags &= tags != TagMode::None;
        self.every_tag = tags == TagMode::Every;
        self.reset_checkpoint = Some(stamp.clone());
        let result = self.apply_all(Some(lsn), None, progress).await;
        self.enqueue_tags = enqueue_tags;
        self.every_tag = false;
        self.reset_checkpoint = None;
        result
    }

    /// What defines a summary row for this configuration.
    pub fn definition(&self) -> &Definition {
        &self.definition
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Keeps the leader's session from looking idle to the server between batches (see
    /// `apply::spawn`): an empty query, the least a server can be sent.
    pub async fn keep_alive(&self) -> anyhow::Result<()> {
        self.client
            .batch_execute("")
            .await
            .context("keeping the leader's session alive between batches")
    }

    /// Recomputes `ids` and, when `lsn` is given, moves the checkpoint there. Up to
    /// `batch.max_products` ids take one transaction; more are applied in parts, sorted so
    /// each part walks the indexes in order, and the checkpoint moves with the last part
    /// only, so a crash in between redoes them all. `commit_time` is the source commit
    /// time carried into the outbox.
    ///
    /// `xids` are the source transactions that made these products dirty. Postgres streams
    /// a transaction as soon as its commit record is flushed, a moment before other
    /// sessions can see its rows; a recompute in that moment would read the old rows and,
    /// with no later change to the product, keep them. So the first part waits until the
    /// snapshot sees every one of them.
    pub async fn apply(
        &mut self,
        ids: &mut [&str],
        xids: &[u32],
        lsn: Option<Lsn>,
        commit_time: Option<SystemTime>,
    ) -> anyhow::Result<Applied> {
        Ok(self.apply_seen(ids, xids, lsn, commit_time).await?.0)
    }

    /// [`Applier::apply`], also returning the snapshot that saw every one of `xids`
    /// before anything was read (`None` without xids or ids): what
    /// [`super::covered::Covered`] needs.
    pub async fn apply_seen(
        &mut self,
        ids: &mut [&str],
        xids: &[u32],
        lsn: Option<Lsn>,
        commit_time: Option<SystemTime>,
    ) -> anyhow::Result<(Applied, Option<Seen>)> {
        let part_size = self.page_size as usize;
        if ids.len() <= part_size {
            return self
                .apply_part(Part::Ids(ids), xids, lsn, commit_time)
                .await;
        }
        ids.sort_unstable();
        let parts = ids.len().div_ceil(part_size);
        let mut total = Applied::default();
        let mut seen = None;
        for (i, part) in ids.chunks(part_size).enumerate() {
            let xids = if i == 0 { xids } else { &[] };
            let lsn = if i + 1 == parts { lsn } else { None };
            let (applied, part_seen) = self
                .apply_part(Part::Ids(part), xids, lsn, commit_time)
                .await?;
            tracing::debug!(
                part = i + 1,
                parts,
                products = part.len(),
                "applied part of a batch"
            );
            if lsn.is_none() {
                crate::failpoints::crash_point(crate::failpoints::APPLY_PART);
            }
            total.add(applied);
            seen = seen.or(part_seen);
        }
        Ok((total, seen))
    }

    /// One apply transaction (see [`Applier::apply`]).
    async fn apply_part(
        &mut self,
        part: Part<'_>,
        xids: &[u32],
        lsn: Option<Lsn>,
        commit_time: Option<SystemTime>,
    ) -> anyhow::Result<(Applied, Option<Seen>)> {
        let ids = part.ids();
        // READ COMMITTED whatever the database's default: the visibility wait needs a
        // new snapshot per statement (under REPEATABLE READ it would never end), and the
        // recompute must read what is committed now.
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await?;
        tx.execute(&self.stmts.lock, &[&locks::APPLY_CLASS, &self.lock_key])
            .await?;
        let seen = if ids.is_empty() {
            None
        } else {
            super::visibility::wait_visible(&tx, xids).await?
        };
        let mut applied = Applied {
            products: ids.len(),
            ..Applied::default()
        };
        if !ids.is_empty() {
            // One statement compares, writes and deletes; only the products that changed
            // come back, with what their tags need.
            let changed = match part {
                Part::Ids(_) => tx.query(&self.stmts.write, &[&self.currency, &ids]).await,
                Part::Page(_) => {
                    let (first, last) = (ids[0], ids[ids.len() - 1]);
                    let params: [&(dyn ToSql + Sync); 3] = [&self.currency, &first, &last];
                    tx.query(&self.stmts.write_range, &params).await
                }
            }
            .map_err(query_broken)?;
            let mut tags = Tags::default();
            if self.every_tag && self.enqueue_tags {
                for row in tx.query(&self.stmts.stores_of, &[&ids]).await? {
                    let touched = Touched {
                        product_id: row.get(0),
                        store_id: row.get(1),
                        old_store: None,
                        inventory_changed: true,
                    };
                    self.templates.tags_of(&touched, &mut tags);
                }
            }
            for row in &changed {
                let (kind, product_id, store_id, old_store, inventory_changed): (
                    i8,
                    &str,
                    &str,
                    Option<&str>,
                    bool,
                ) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
                match kind as u8 {
                    b'i' => applied.inserted += 1,
                    b'u' => applied.updated += 1,
                    _ => applied.deleted += 1,
                }
                let touched = Touched {
                    product_id,
                    store_id,
                    old_store,
                    inventory_changed,
                };
                self.templates.tags_of(&touched, &mut tags);
            }
            if self.enqueue_tags && !tags.now.is_empty() {
                let now: Vec<String> = tags.now.into_iter().collect();
                applied.tags = now.len();
                tx.execute(&self.stmts.enqueue, &[&now, &commit_time])
                    .await?;
            }
            if self.enqueue_tags && !tags.throttled.is_empty() {
                // Hot tags: held, or into the outbox at once when their last release is
                // an interval ago (`hold`).
                let (held, ms): (Vec<String>, Vec<i64>) = tags
                    .throttled
                    .into_iter()
                    .map(|(tag, ms)| (tag, ms as i64))
                    .unzip();
                let pending = tx
                    .query(&self.stmts.hold, &[&held, &ms, &commit_time])
                    .await?
                    .len();
                let released: i64 = tx.query_one(&self.stmts.release, &[]).await?.get(0);
                applied.throttled = held.len();
                applied.coalesced = held.len() - pending;
                applied.released = released as usize;
            }
        }
        if let Some(lsn) = lsn {
            let stamp = self.reset_checkpoint.as_ref();
            tx.execute(
                &self.stmts.checkpoint,
                &[
                    &self.slot,
                    &PgLsn::from(lsn.0),
                    &stamp.is_some(),
                    &commit_time,
                    &stamp.map(|s| &s.definition),
                    &stamp.map(|s| s.server.system_identifier),
                    &stamp.map(|s| s.server.timeline),
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok((applied, seen))
    }

    /// Recomputes every product (backfill, TRUNCATE, a delete without product id, a bulk
    /// transaction) in keyset pages of `batch.max_products`, so memory stays bounded; the
    /// checkpoint moves to `lsn` only with the last page, so a crash midway redoes the
    /// whole pass. A caller with source transactions waits until they are visible first
    /// (`apply::apply_batch`): a product a not yet visible one inserted would be missing
    /// from the list.
    pub async fn apply_all(
        &mut self,
        lsn: Option<Lsn>,
        commit_time: Option<SystemTime>,
        mut progress: impl FnMut(usize),
    ) -> anyhow::Result<Applied> {
        let mut total = Applied::default();
        let mut after: Option<String> = None;
        loop {
            let rows = match &after {
                None => {
                    self.client
                        .query(&self.stmts.first_page, &[&self.page_size])
                        .await?
                }
                Some(after) => {
                    self.client
                        .query(&self.stmts.next_page, &[after, &self.page_size])
                        .await?
                }
            };
            let ids: Vec<&str> = rows.iter().map(|r| r.get(0)).collect();
            let last_page = (ids.len() as i64) < self.page_size;
            let page_lsn = if last_page { lsn } else { None };
            let (applied, _) = self
                .apply_part(Part::Page(&ids), &[], page_lsn, commit_time)
                .await?;
            total.add(applied);
            progress(total.products);
            match ids.last() {
                Some(last) if !last_page => after = Some(last.to_string()),
                _ => return Ok(total),
            }
        }
    }
}

/// What one apply transaction recomputes.
#[derive(Clone, Copy)]
enum Part<'a> {
    /// Exactly these products.
    Ids(&'a [&'a str]),
    /// A page of a pass over every product ([`sql::first_page`], [`sql::next_page`]: the
    /// next ids in the id type's order, of the source and the summary): every product
    /// from its first to its last id, whichever side holds it, read by range
    /// ([`sql::write_range`]). The same products as the page lists, and any a
    /// transaction committed since inserted between them.
    Page(&'a [&'a str]),
}

impl<'a> Part<'a> {
    fn ids(self) -> &'a [&'a str] {
        match self {
            Part::Ids(ids) | Part::Page(ids) => ids,
        }
    }
}

/// The apply statement failing because the summary query no longer fits the source
/// tables (a migration renamed or dropped a column or table it reads, or changed a type):
/// no retry helps and nothing may be acknowledged past the batch, so a definite error
/// that names it and the fix. Anything else (a lost connection, a serialization failure)
/// stays as it is and is retried.
fn query_broken(e: tokio_postgres::Error) -> anyhow::Error {
    let Some(db) = e.as_db_error() else {
        return e.into();
    };
    // 42: syntax error or access rule violation (undefined column/table/function, wrong
    // type); 0A000: a cached plan whose result type changed.
    let code = db.code().code();
    if !code.starts_with("42") && code != "0A000" {
        return e.into();
    }
    definite(format!(
        "the summary query no longer runs against the source tables: {} (SQLSTATE {code}); \
         a migration changed a table it reads. Nothing from this batch on is acknowledged. \
         Fix: update the query (tables.summary_query_file) or the tables.sources/summary \
         config to the new schema and restart the worker; it recomputes every product when \
         the query changed",
        db.message()
    ))
}
