//! Every statement built from the shop's layout, one function per family. Names (tables,
//! columns) come from the configuration through [`Layout`], already quoted; values are
//! always `$n` parameters, and ids travel as text and are cast to their own type here
//! ([`Layout::ids`], [`Layout::id`]), so comparisons and keyset pages use the type's own
//! order and its indexes (2 < 10 for integers).
//!
//! [`families`] lists them all: `tests/statements.rs` prepares each against shops with
//! text, integer, bigint and uuid ids, so a statement that only works for one id type
//! fails there rather than in a shop.

use crate::shop::layout::Layout;

/// Every statement family, by name, as prepared by the worker.
pub fn families(layout: &Layout) -> Vec<(&'static str, String)> {
    vec![
        ("apply write", write(layout)),
        ("pass write range", write_range(layout)),
        ("pass first page", first_page(layout)),
        ("pass next page", next_page(layout)),
        ("reconcile page bound", page_bound(layout)),
        ("reconcile store page", store_page(layout)),
        ("reconcile compare range", compare_range(layout)),
        ("reconcile compare open range", compare_open(layout)),
        ("reconcile compare ids", compare_ids(layout)),
        ("reconcile both sides", both_sides(layout)),
        ("reconcile count products", count_products(layout)),
        ("reconcile count store", count_store(layout)),
        ("revalidate stores of products", stores_of(layout)),
        ("revalidate canonical id", canonical_id(layout)),
        ("revalidate existing products", existing_products(layout)),
    ]
}

/// The set-based apply of one part (`$1` the currency, `$2` the product ids as text):
/// the summary query's rows (`d`) against the table's (`c`), the rows that differ
/// updated (inserted when new), the rows whose product has no summary row any more
/// deleted, all in one statement and one snapshot. Returns one row per changed product:
/// kind (`i`, `u`, `d`), product id, store id, old store id, whether its stock changed
/// (for the tags).
/// Equal rows are not written: a no-op source change writes nothing.
pub fn write(layout: &Layout) -> String {
    let pid = &layout.col.product_id;
    let ids = layout.ids(2);
    // The UPDATE finds its rows through the join on the product id alone: a filter
    // `= ANY($2)` there would be searched linearly per row in a generic plan.
    write_where(
        layout,
        &format!("s.product_id = ANY({ids})"),
        &format!("t.{pid} = ANY({ids})"),
        "",
    )
}

/// A page of a pass over every product: [`write`] for every product in `[$2, $3]` (the
/// first and the last id of a pass page, [`first_page`] / [`next_page`]; `$1` the
/// currency), in the source or in the summary. Each side is read by a range scan of its
/// index (one descent instead of one per id), the ids never travel as a list, and the
/// UPDATE's rows are bounded by the same range, so no estimate can turn its join into a
/// scan of the whole summary.
pub fn write_range(layout: &Layout) -> String {
    let pid = &layout.col.product_id;
    let range = |col: &str| format!("{col} >= {} AND {col} <= {}", layout.id(2), layout.id(3));
    write_where(
        layout,
        &range("s.product_id"),
        &range(&format!("t.{pid}")),
        &format!(" AND {}", range(&format!("t.{pid}"))),
    )
}

/// The apply statement over the products `source_filter` (on the summary query `s`) and
/// `table_filter` (on the summary table `t`) select; `update_filter` is appended to the
/// UPDATE's condition on `t`.
fn write_where(
    layout: &Layout,
    source_filter: &str,
    table_filter: &str,
    update_filter: &str,
) -> String {
    let c = &layout.col;
    const FIELDS: [&str; 6] = [
        "store_id",
        "title",
        "price",
        "active",
        "inventory_available",
        "primary_image_url",
    ];
    let fields = |alias: &str| {
        FIELDS
            .iter()
            .map(|f| format!("{alias}.{f}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cols = [
        &c.store_id,
        &c.title,
        &c.price,
        &c.active,
        &c.inventory_available,
        &c.primary_image_url,
    ];
    // From the joined `changed` row, and (for the upsert) from the row proposed.
    let update_sets = cols
        .iter()
        .zip(FIELDS)
        .map(|(col, f)| format!("{col} = ch.{f}"))
        .chain([format!("{} = {}", c.updated_at, layout.now)])
        .collect::<Vec<_>>()
        .join(", ");
    let upsert_sets = cols
        .iter()
        .copied()
        .chain([&c.updated_at])
        .map(|col| format!("{col} = EXCLUDED.{col}"))
        .collect::<Vec<_>>()
        .join(", ");
    // The summary's own id, when the table has no default for it: cuid-like ('c' and 24
    // hex digits of randomness; Prisma's cuid() runs in the client, not the database).
    let (id_col, id_val) = if layout.generate_row_id {
        (
            format!("{}, ", c.id),
            "'c' || substr(md5(gen_random_uuid()::text), 1, 24), ",
        )
    } else {
        (String::new(), "")
    };
    // Rows that exist are changed by a plain UPDATE (joined on the unique product id):
    // an INSERT ... ON CONFLICT would first try the insert (a new row id, a speculative
    // index entry) for every one of them, about a fifth more per product. Only new rows
    // take the upsert, which stays the safe way to add a row. Rows to delete come from `c`
    // (the rows read), so the summary's index is not searched for every id again.
    format!(
        "WITH d AS (SELECT s.* FROM ({query}) s WHERE {source_filter}), \
         c AS (SELECT t.{pid} AS product_id, t.{sid} AS store_id, t.{title} AS title, \
               t.{price} AS price, t.{active} AS active, t.{inv} AS inventory_available, \
               t.{img} AS primary_image_url FROM {summary} t WHERE {table_filter}), \
         changed AS (SELECT d.*, c.product_id IS NULL AS is_new, c.store_id AS old_store, \
               c.inventory_available IS DISTINCT FROM d.inventory_available AS inventory_changed \
               FROM d LEFT JOIN c ON c.product_id = d.product_id \
               WHERE c.product_id IS NULL OR ({d_fields}) IS DISTINCT FROM ({c_fields})), \
         updated AS (UPDATE {summary} t SET {update_sets} FROM changed ch \
               WHERE NOT ch.is_new AND t.{pid} = ch.product_id{update_filter} RETURNING 1), \
         inserted AS (INSERT INTO {summary} ({id_col}{pid}, {sid}, {title}, {price}, {active}, \
               {inv}, {img}, {updated}) \
               SELECT {id_val}product_id, store_id, title, price, active, inventory_available, \
               primary_image_url, {now} FROM changed WHERE is_new \
               ON CONFLICT ({pid}) DO UPDATE SET {upsert_sets} RETURNING 1), \
         deleted AS (DELETE FROM {summary} t USING c WHERE t.{pid} = c.product_id \
               AND NOT EXISTS (SELECT 1 FROM d WHERE d.product_id = c.product_id) \
               RETURNING t.{pid} AS product_id, t.{sid} AS store_id) \
         SELECT (CASE WHEN is_new THEN 'i' ELSE 'u' END)::\"char\", product_id::text, \
                store_id::text, old_store::text, inventory_changed FROM changed \
         UNION ALL SELECT 'd'::\"char\", product_id::text, store_id::text, NULL, true FROM deleted",
        query = layout.query(),
        summary = layout.summary,
        pid = c.product_id,
        sid = c.store_id,
        title = c.title,
        price = c.price,
        active = c.active,
        inv = c.inventory_available,
        img = c.primary_image_url,
        updated = c.updated_at,
        now = layout.now,
        d_fields = fields("d"),
        c_fields = fields("c"),
    )
}

/// Every product id that exists in the source or in the summary, in keyset pages in the id
/// type's order: the first page (`$1` the page size). Each side is limited before the
/// union so both use their index.
///
/// The outer `ORDER BY` names `ids.id`, the column of the union in its own type: a bare
/// `id` would bind to the select list's `id::text` (an output column wins over an input
/// column in `ORDER BY`), sorting 10 before 9 while the next page starts after the last id
/// compared as a number, and ids would be skipped (issue 18). Every statement here that
/// sorts or compares after casting qualifies the column for that reason.
pub fn first_page(layout: &Layout) -> String {
    format!(
        "SELECT ids.id::text FROM ((SELECT {key} AS id FROM {product} \
         ORDER BY {key} LIMIT $1) UNION (SELECT {pid} FROM {summary} \
         ORDER BY {pid} LIMIT $1)) ids ORDER BY ids.id LIMIT $1",
        key = layout.product_key,
        product = layout.product,
        summary = layout.summary,
        pid = layout.col.product_id,
    )
}

/// The page after id `$1` (`$2` the page size); see [`first_page`].
pub fn next_page(layout: &Layout) -> String {
    format!(
        "SELECT ids.id::text FROM ((SELECT {key} AS id FROM {product} \
         WHERE {key} > {after} ORDER BY {key} LIMIT $2) UNION \
         (SELECT {pid} FROM {summary} WHERE {pid} > {after} ORDER BY {pid} LIMIT $2)) ids \
         ORDER BY ids.id LIMIT $2",
        key = layout.product_key,
        product = layout.product,
        summary = layout.summary,
        pid = layout.col.product_id,
        after = layout.id(1)
    )
}

/// `(after, upto]`'s upper end for reconcile: the `$2`-th next id after `$1` (null on the
/// first page) of each side, the smaller one, so neither side has more than a page of
/// rows in the range (OFFSET over an index-only scan). Null: the last page.
pub fn page_bound(layout: &Layout) -> String {
    let (key, pid) = (&layout.product_key, &layout.col.product_id);
    format!(
        "SELECT least((SELECT {key} FROM {product} WHERE {} ORDER BY {key} \
         OFFSET $2 LIMIT 1), (SELECT {pid} FROM {summary} WHERE {} \
         ORDER BY {pid} OFFSET $2 LIMIT 1))::text",
        after(layout, key, 1),
        after(layout, pid, 1),
        product = layout.product,
        summary = layout.summary,
    )
}

/// Reconcile `--store`: the next `$3` ids after `$2` (null: from the start) in store `$4`
/// on either side (`$1` the currency), as one sorted text array. Each side is limited
/// before the union.
pub fn store_page(layout: &Layout) -> String {
    let (pid, sid) = (&layout.col.product_id, &layout.col.store_id);
    format!(
        "SELECT coalesce(array_agg(ids.id::text ORDER BY ids.id), '{{}}') FROM \
         (SELECT u.id FROM ((SELECT s.product_id AS id FROM ({query}) s WHERE {} \
         AND s.store_id = {store} ORDER BY s.product_id LIMIT $3) UNION \
         (SELECT t.{pid} FROM {summary} t WHERE {} \
         AND t.{sid} = {store} ORDER BY t.{pid} LIMIT $3)) u \
         ORDER BY u.id LIMIT $3) ids",
        after(layout, "s.product_id", 2),
        after(layout, &format!("t.{pid}"), 2),
        query = layout.query(),
        summary = layout.summary,
        store = layout.store(4),
    )
}

/// Reconcile: compares the products in `($2, $3]` (`$2` null on the first page; `$1` the
/// currency); see [`compare`].
pub fn compare_range(layout: &Layout) -> String {
    let pid = format!("t.{}", layout.col.product_id);
    let upto = |col: &str| format!("{col} <= {}", layout.id(3));
    compare(
        layout,
        &format!(
            "{} AND {}",
            after(layout, "s.product_id", 2),
            upto("s.product_id")
        ),
        &format!("{} AND {}", after(layout, &pid, 2), upto(&pid)),
    )
}

/// Reconcile: compares the products after `$2` (the last page; `$1` the currency).
pub fn compare_open(layout: &Layout) -> String {
    let pid = format!("t.{}", layout.col.product_id);
    compare(
        layout,
        &after(layout, "s.product_id", 2),
        &after(layout, &pid, 2),
    )
}

/// Reconcile `--store`: compares exactly the products `$2` (`$1` the currency).
pub fn compare_ids(layout: &Layout) -> String {
    let pid = format!("t.{}", layout.col.product_id);
    compare(
        layout,
        &format!("s.product_id = ANY({})", layout.ids(2)),
        &format!("{pid} = ANY({})", layout.ids(2)),
    )
}

/// The FULL OUTER JOIN of the summary query and the table over the filters, reduced to the
/// number of products compared and the ids that differ: rows that agree never leave the
/// server.
fn compare(layout: &Layout, source_filter: &str, table_filter: &str) -> String {
    format!(
        "SELECT count(*)::int8, coalesce(array_agg(coalesce(d.product_id, c.product_id)) \
         FILTER (WHERE d.product_id IS NULL OR c.product_id IS NULL OR \
         (d.store_id, d.title, d.price, d.active, d.inventory_available, d.primary_image_url) \
         IS DISTINCT FROM (c.store_id, c.title, c.price, c.active, \
         c.inventory_available, c.primary_image_url)), '{{}}') \
         FROM ({} WHERE {source_filter}) d FULL JOIN ({} WHERE {table_filter}) c \
         ON c.product_id = d.product_id",
        summary_select(layout),
        table_select(layout)
    )
}

/// Reconcile's fence: both sides of products `$2` (`$1` the currency) in one statement,
/// so one snapshot; the seven columns of a summary row, then whether the row is from the
/// source (true) or the table.
pub fn both_sides(layout: &Layout) -> String {
    format!(
        "SELECT d.*, true FROM ({} WHERE s.product_id = ANY({ids})) d UNION ALL \
         SELECT c.*, false FROM ({} WHERE t.{} = ANY({ids})) c",
        summary_select(layout),
        table_select(layout),
        layout.col.product_id,
        ids = layout.ids(2),
    )
}

/// How many products the source holds (reconcile's progress line).
pub fn count_products(layout: &Layout) -> String {
    format!("SELECT count(*) FROM {}", layout.product)
}

/// How many summary rows store `$1` holds (reconcile `--store`'s progress line).
pub fn count_store(layout: &Layout) -> String {
    format!(
        "SELECT count(*) FROM {} WHERE {} = {}",
        layout.summary,
        layout.col.store_id,
        layout.store(1)
    )
}

/// The store of each of products `$1` that has a summary row: (product id, store id).
pub fn stores_of(layout: &Layout) -> String {
    format!(
        "SELECT t.{pid}::text, t.{}::text FROM {} t WHERE t.{pid} = ANY({})",
        layout.col.store_id,
        layout.summary,
        layout.ids(1),
        pid = layout.col.product_id,
    )
}

/// One product id (`$1`, as typed by a person) in its canonical text form, the form tags
/// carry (`0F8C...` becomes `0f8c...` for uuids, `007` becomes `7` for integers). Fails
/// with a data exception (SQLSTATE class 22) when the text is not a value of the id type.
pub fn canonical_id(layout: &Layout) -> String {
    format!("SELECT {}::text", layout.id(1))
}

/// Which of products `$1` (canonical ids) exist in the product table.
pub fn existing_products(layout: &Layout) -> String {
    format!(
        "SELECT p.{key}::text FROM {} p WHERE p.{key} = ANY({})",
        layout.product,
        layout.ids(1),
        key = layout.product_key,
    )
}

/// `col` after the id `$n`, or everything when `$n` is null. Reconcile plans every
/// statement for its parameters (plan_cache_mode), so the null case costs nothing.
fn after(layout: &Layout, col: &str, n: usize) -> String {
    format!("(${n}::text IS NULL OR {col} > {})", layout.id(n))
}

/// The summary query as `s`, its seven columns with ids as text; callers append a `WHERE`
/// on `s.product_id` / `s.store_id` (native types). `$1` is the currency.
fn summary_select(layout: &Layout) -> String {
    format!(
        "SELECT s.product_id::text AS product_id, s.store_id::text AS store_id, \
         s.title::text AS title, s.price, s.active, s.inventory_available, \
         s.primary_image_url::text AS primary_image_url FROM ({}) s",
        layout.query()
    )
}

/// The summary table as `t`, the same seven columns under the same names.
fn table_select(layout: &Layout) -> String {
    let c = &layout.col;
    format!(
        "SELECT t.{}::text AS product_id, t.{}::text AS store_id, t.{}::text AS title, \
         t.{} AS price, t.{} AS active, t.{} AS inventory_available, \
         t.{}::text AS primary_image_url FROM {} t",
        c.product_id,
        c.store_id,
        c.title,
        c.price,
        c.active,
        c.inventory_available,
        c.primary_image_url,
        layout.summary
    )
}
