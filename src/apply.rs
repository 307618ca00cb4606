//! Apply: one transaction per batch (per `max_products` of a large one) recomputes the
//! summary rows of the dirty products from the source tables, writes only the rows that
//! really changed, deletes rows whose product is gone, enqueues the cache tags of what
//! changed, and stores the checkpoint, all atomically. Replaying a batch therefore writes nothing new, which turns the
//! slot's at-least-once delivery into exactly-once effects.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures_util::TryStreamExt;
use pgwire_replication::Lsn;
use tokio_postgres::types::PgLsn;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, RowStream, Statement};

use crate::config::Config;
use crate::db::Database;
use crate::summary::{diff, qualified, Change, SummaryRow, TagTemplates};

/// Advisory lock class of the apply transaction. Every writer of the summary and the
/// outbox (the daemon, `reconcile --fix`, `revalidate`) takes it, so that each reads the
/// source after the previous one committed and outbox ids become visible in order.
const APPLY_LOCK_CLASS: i32 = 0x6364_0001;

/// What one apply transaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub products: usize,
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
    pub tags: usize,
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
    }
}

struct Statements {
    lock: Statement,
    desired: Statement,
    current: Statement,
    upsert: Statement,
    delete: Statement,
    enqueue: Statement,
    checkpoint: Statement,
    page: Statement,
}

/// Owns the apply connection and its prepared statements.
pub struct Applier {
    client: Client,
    stmts: Statements,
    templates: TagTemplates,
    /// Tags are enqueued only when someone will deliver them.
    enqueue_tags: bool,
    /// The checkpoint write sets the LSN (instead of only moving it forward) and clears
    /// the recompute mark: the last page of a recovery recompute.
    reset_checkpoint: bool,
    slot: String,
    currency: String,
    lock_key: i32,
    page_size: i64,
}

/// `SELECT <summary columns> FROM (<summary query>) s` with a filter appended by callers.
pub fn summary_select(cfg: &Config) -> anyhow::Result<String> {
    let query = cfg.summary_query()?;
    Ok(format!(
        "SELECT s.product_id, s.store_id, s.title, s.price, s.active, s.inventory_available, \
         s.primary_image_url FROM ({query}) s"
    ))
}

/// `SELECT <the same columns> FROM "ProductSummary" t`, with a filter appended by callers.
pub fn table_select(cfg: &Config) -> String {
    format!(
        "SELECT t.\"productId\", t.\"storeId\", t.\"title\", t.\"price\", t.\"active\", \
         t.\"inventoryAvailable\", t.\"primaryImageUrl\" FROM {} t",
        qualified(&cfg.tables.schema, &cfg.tables.summary)
    )
}

/// Stable 31-bit key of a name, so two workers configured alike pick the same lock.
pub fn lock_key(name: &str) -> i32 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

impl Applier {
    pub async fn connect(db: &Database, cfg: &Config, role: &str) -> anyhow::Result<Applier> {
        let client = db
            .connect(&format!("cdc-worker/{role}"))
            .await
            .with_context(|| format!("connecting to {}", db.display()))?;
        Applier::new(client, cfg).await
    }

    pub async fn new(client: Client, cfg: &Config) -> anyhow::Result<Applier> {
        // The apply statements are short index lookups; JIT compiling them costs more than
        // it saves (seen in profiles of large batches).
        client.batch_execute("SET jit = off").await?;
        let summary = qualified(&cfg.tables.schema, &cfg.tables.summary);
        let product = qualified(&cfg.tables.schema, &cfg.tables.product);
        let product_key = crate::summary::quote_ident(&cfg.tables.sources[&cfg.tables.product]);
        let state = crate::summary::quote_ident(&cfg.schema);
        let select = summary_select(cfg)?;
        let prepare = |sql: String| {
            let client = &client;
            async move { crate::db::prepare(client, &sql).await }
        };
        let stmts = Statements {
            lock: prepare("SELECT pg_advisory_xact_lock($1::int4, $2::int4)".into()).await?,
            desired: prepare(format!("{select} WHERE s.product_id = ANY($2::text[])")).await?,
            current: prepare(format!(
                "{} WHERE t.\"productId\" = ANY($1::text[])",
                table_select(cfg)
            ))
            .await?,
            upsert: prepare(format!(
                "INSERT INTO {summary} (\"id\", \"productId\", \"storeId\", \"title\", \"price\", \
                 \"active\", \"inventoryAvailable\", \"primaryImageUrl\", \"updatedAt\") \
                 SELECT u.*, (now() AT TIME ZONE 'UTC')::timestamp(3) FROM unnest($1::text[], \
                 $2::text[], $3::text[], $4::text[], $5::int4[], $6::bool[], $7::int4[], $8::text[]) \
                 AS u ON CONFLICT (\"productId\") DO UPDATE SET \"storeId\" = EXCLUDED.\"storeId\", \
                 \"title\" = EXCLUDED.\"title\", \"price\" = EXCLUDED.\"price\", \
                 \"active\" = EXCLUDED.\"active\", \"inventoryAvailable\" = EXCLUDED.\"inventoryAvailable\", \
                 \"primaryImageUrl\" = EXCLUDED.\"primaryImageUrl\", \"updatedAt\" = EXCLUDED.\"updatedAt\""
            ))
            .await?,
            delete: prepare(format!(
                "DELETE FROM {summary} WHERE \"productId\" = ANY($1::text[])"
            ))
            .await?,
            enqueue: prepare(format!(
                "INSERT INTO {state}.outbox (tag, commit_time) SELECT unnest($1::text[]), $2"
            ))
            .await?,
            // While streaming the checkpoint only moves forward; a recompute that recovers
            // from a broken invariant sets it to the slot's start (possibly lower, after a
            // restore) and clears the recompute mark in the same transaction.
            checkpoint: prepare(format!(
                "INSERT INTO {state}.checkpoint AS c (slot_name, lsn) VALUES ($1, $2) \
                 ON CONFLICT (slot_name) DO UPDATE SET lsn = CASE WHEN $3 THEN EXCLUDED.lsn \
                 ELSE greatest(c.lsn, EXCLUDED.lsn) END, \
                 recompute_reason = CASE WHEN $3 THEN NULL ELSE c.recompute_reason END, \
                 updated_at = now()"
            ))
            .await?,
            // Every product id that exists in the source or in the summary, in keyset
            // pages. Each side is limited before the union so both use their index.
            page: prepare(format!(
                "SELECT id FROM ((SELECT {product_key} AS id FROM {product} WHERE {product_key} > $1 \
                 ORDER BY {product_key} LIMIT $2) UNION (SELECT \"productId\" FROM {summary} \
                 WHERE \"productId\" > $1 ORDER BY \"productId\" LIMIT $2)) ids ORDER BY id LIMIT $2"
            ))
            .await?,
        };
        Ok(Applier {
            client,
            stmts,
            templates: TagTemplates::from_config(cfg),
            enqueue_tags: !cfg.revalidate.urls.is_empty(),
            reset_checkpoint: false,
            slot: cfg.slot.clone(),
            currency: cfg.currency.clone(),
            lock_key: lock_key(&cfg.schema),
            page_size: cfg.batch.max_products as i64,
        })
    }

    /// The recovery recompute (`slot::prepare`): every product, with tags unless `tags`
    /// is false, and a last transaction that sets the checkpoint to `lsn` (even below the
    /// stored one) and clears the recompute mark.
    pub async fn recompute_all(
        &mut self,
        lsn: Lsn,
        tags: bool,
        progress: impl FnMut(usize),
    ) -> anyhow::Result<Applied> {
        let enqueue_tags = self.enqueue_tags;
        self.enqueue_tags &= tags;
        self.reset_checkpoint = true;
        let result = self.apply_all(&[], Some(lsn), None, progress).await;
        self.enqueue_tags = enqueue_tags;
        self.reset_checkpoint = false;
        result
    }

    pub fn client(&self) -> &Client {
        &self.client
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
        ids: &mut [String],
        xids: &[u32],
        lsn: Option<Lsn>,
        commit_time: Option<SystemTime>,
    ) -> anyhow::Result<Applied> {
        let part_size = self.page_size as usize;
        if ids.len() <= part_size {
            return self.apply_part(ids, xids, lsn, commit_time).await;
        }
        ids.sort_unstable();
        let parts = ids.len().div_ceil(part_size);
        let mut total = Applied::default();
        for (i, part) in ids.chunks(part_size).enumerate() {
            let xids = if i == 0 { xids } else { &[] };
            let lsn = if i + 1 == parts { lsn } else { None };
            total.add(self.apply_part(part, xids, lsn, commit_time).await?);
        }
        Ok(total)
    }

    /// One apply transaction (see [`Applier::apply`]).
    async fn apply_part(
        &mut self,
        ids: &[String],
        xids: &[u32],
        lsn: Option<Lsn>,
        commit_time: Option<SystemTime>,
    ) -> anyhow::Result<Applied> {
        // READ COMMITTED whatever the database's default: the visibility wait needs a
        // new snapshot per statement (under REPEATABLE READ it would never end), and the
        // recompute must read what is committed now.
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await?;
        tx.execute(&self.stmts.lock, &[&APPLY_LOCK_CLASS, &self.lock_key])
            .await?;
        if !ids.is_empty() {
            crate::visibility::wait_visible(&tx, xids).await?;
        }
        let mut applied = Applied {
            products: ids.len(),
            ..Applied::default()
        };
        if !ids.is_empty() {
            let desired = rows(
                tx.query_raw(
                    &self.stmts.desired,
                    [&self.currency as &(dyn ToSql + Sync), &ids],
                )
                .await?,
            )
            .await?;
            let current = rows(tx.query_raw(&self.stmts.current, [&ids]).await?).await?;
            let changes = diff(&desired, &current);
            let mut up = Upserts::default();
            let mut deletes = Vec::new();
            let mut tags = BTreeSet::new();
            for change in &changes {
                self.templates.tags_of(change, &mut tags);
                match change {
                    Change::Insert(new) => {
                        applied.inserted += 1;
                        up.push(new);
                    }
                    Change::Update { new, .. } => {
                        applied.updated += 1;
                        up.push(new);
                    }
                    Change::Delete(old) => {
                        applied.deleted += 1;
                        deletes.push(old.product_id.as_str());
                    }
                }
            }
            if !up.product_id.is_empty() {
                tx.execute(
                    &self.stmts.upsert,
                    &[
                        &up.id,
                        &up.product_id,
                        &up.store_id,
                        &up.title,
                        &up.price,
                        &up.active,
                        &up.inventory,
                        &up.image,
                    ],
                )
                .await?;
            }
            if !deletes.is_empty() {
                tx.execute(&self.stmts.delete, &[&deletes]).await?;
            }
            if self.enqueue_tags && !tags.is_empty() {
                let tags: Vec<String> = tags.into_iter().collect();
                applied.tags = tags.len();
                tx.execute(&self.stmts.enqueue, &[&tags, &commit_time])
                    .await?;
            }
        }
        if let Some(lsn) = lsn {
            tx.execute(
                &self.stmts.checkpoint,
                &[&self.slot, &PgLsn::from(lsn.0), &self.reset_checkpoint],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Recomputes every product (backfill, TRUNCATE, a delete without product id) in
    /// keyset pages of `batch.max_products`, so memory stays bounded; the checkpoint moves
    /// to `lsn` only with the last page, so a crash midway redoes the whole pass.
    pub async fn apply_all(
        &mut self,
        xids: &[u32],
        lsn: Option<Lsn>,
        commit_time: Option<SystemTime>,
        mut progress: impl FnMut(usize),
    ) -> anyhow::Result<Applied> {
        // Before the first page is listed: a new product inserted by a not yet visible
        // transaction of this batch would otherwise be missing from the list.
        crate::visibility::wait_visible(&self.client, xids).await?;
        let mut total = Applied::default();
        let mut after = String::new();
        loop {
            let mut ids: Vec<String> = self
                .client
                .query(&self.stmts.page, &[&after, &self.page_size])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let last_page = (ids.len() as i64) < self.page_size;
            let page_lsn = if last_page { lsn } else { None };
            total.add(self.apply(&mut ids, &[], page_lsn, commit_time).await?);
            progress(total.products);
            match ids.last() {
                Some(last) if !last_page => after = last.clone(),
                _ => return Ok(total),
            }
        }
    }
}

/// The stored checkpoint of `slot`, if any.
pub async fn read_checkpoint(
    client: &Client,
    schema: &str,
    slot: &str,
) -> anyhow::Result<Option<Lsn>> {
    let sql = format!(
        "SELECT lsn FROM {}.checkpoint WHERE slot_name = $1",
        crate::summary::quote_ident(schema)
    );
    let row = client.query_opt(&sql, &[&slot]).await?;
    Ok(row.map(|r| Lsn(u64::from(r.get::<_, PgLsn>(0)))))
}

/// Converts rows as they arrive, so a large batch never holds both the wire rows and
/// their `SummaryRow` copies (the wire rows were the largest item of the peak heap).
async fn rows(stream: RowStream) -> anyhow::Result<Vec<SummaryRow>> {
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(row) = stream.try_next().await? {
        out.push(SummaryRow::from_row(&row).context("reading a summary row")?);
    }
    Ok(out)
}

/// Column arrays for the set-based upsert (one statement per batch, not one per row).
#[derive(Default)]
struct Upserts<'a> {
    id: Vec<String>,
    product_id: Vec<&'a str>,
    store_id: Vec<&'a str>,
    title: Vec<&'a str>,
    price: Vec<i32>,
    active: Vec<bool>,
    inventory: Vec<i32>,
    image: Vec<Option<&'a str>>,
}

impl<'a> Upserts<'a> {
    fn push(&mut self, r: &'a SummaryRow) {
        // Only used when the row is new; an existing row keeps its id (ON CONFLICT).
        self.id.push(new_id());
        self.product_id.push(&r.product_id);
        self.store_id.push(&r.store_id);
        self.title.push(&r.title);
        self.price.push(r.price);
        self.active.push(r.active);
        self.inventory.push(r.inventory_available);
        self.image.push(r.primary_image_url.as_deref());
    }
}

/// A collision-resistant id in the style of Prisma's cuid(): 'c', the time, a counter
/// and randomness, base36. Prisma sets no database default, so the worker makes ids.
pub fn new_id() -> String {
    use rand::Rng;
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64;
    let count = COUNTER.fetch_add(1, Ordering::Relaxed) as u64 % 36u64.pow(4);
    let random: u64 = rand::thread_rng().gen_range(0..36u64.pow(12));
    let mut s = String::with_capacity(25);
    s.push('c');
    push_base36(&mut s, millis, 8);
    push_base36(&mut s, count, 4);
    push_base36(&mut s, random, 12);
    s
}

fn push_base36(s: &mut String, mut v: u64, width: usize) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = vec![b'0'; width];
    for slot in buf.iter_mut().rev() {
        *slot = DIGITS[(v % 36) as usize];
        v /= 36;
    }
    s.push_str(std::str::from_utf8(&buf).expect("ascii"));
}

/// Converts pgoutput's commit time (µs since 2000-01-01) to wall-clock time.
pub fn pg_time(micros: i64) -> SystemTime {
    const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    if micros >= 0 {
        base + Duration::from_micros(micros as u64)
    } else {
        base - Duration::from_micros(micros.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_cuids_and_differ() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 25);
        assert!(a.starts_with('c'));
        assert_ne!(a, b);
    }

    #[test]
    fn lock_key_is_stable() {
        assert_eq!(lock_key("cdc_worker"), lock_key("cdc_worker"));
        assert_ne!(lock_key("cdc_worker"), lock_key("other"));
        assert!(lock_key("x") >= 0);
    }

    #[test]
    fn pg_epoch() {
        let t = pg_time(0);
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            946_684_800
        );
    }
}
