//! What a summary row is, how two of them differ, and which cache tags a difference
//! touches. Apply compares rows in SQL (`apply::write_sql`) and renders tags here;
//! reconcile's fence re-reads differing rows and classifies them with [`diff`]. Both
//! compare the same six fields; change them together.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_postgres::Row;

use crate::config::Config;

/// One ProductSummary row, without the worker-generated `id` and `updatedAt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    pub product_id: String,
    pub store_id: String,
    pub title: String,
    pub price: i32,
    pub active: bool,
    pub inventory_available: i32,
    pub primary_image_url: Option<String>,
}

impl SummaryRow {
    /// From a row whose first seven columns are in the order of the struct (both the
    /// summary query and our SELECT of the table are written that way).
    pub fn from_row(row: &Row) -> Result<SummaryRow, tokio_postgres::Error> {
        Ok(SummaryRow {
            product_id: row.try_get(0)?,
            store_id: row.try_get(1)?,
            title: row.try_get(2)?,
            price: row.try_get(3)?,
            active: row.try_get(4)?,
            inventory_available: row.try_get(5)?,
            primary_image_url: row.try_get(6)?,
        })
    }
}

/// The columns a summary row can disagree on (named as in the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    StoreId,
    Title,
    Price,
    Active,
    InventoryAvailable,
    PrimaryImageUrl,
}

impl Field {
    pub const ALL: [Field; 6] = [
        Field::StoreId,
        Field::Title,
        Field::Price,
        Field::Active,
        Field::InventoryAvailable,
        Field::PrimaryImageUrl,
    ];

    pub fn column(self) -> &'static str {
        match self {
            Field::StoreId => "storeId",
            Field::Title => "title",
            Field::Price => "price",
            Field::Active => "active",
            Field::InventoryAvailable => "inventoryAvailable",
            Field::PrimaryImageUrl => "primaryImageUrl",
        }
    }

    fn differs(self, a: &SummaryRow, b: &SummaryRow) -> bool {
        match self {
            Field::StoreId => a.store_id != b.store_id,
            Field::Title => a.title != b.title,
            Field::Price => a.price != b.price,
            Field::Active => a.active != b.active,
            Field::InventoryAvailable => a.inventory_available != b.inventory_available,
            Field::PrimaryImageUrl => a.primary_image_url != b.primary_image_url,
        }
    }
}

/// The fields on which `a` and `b` disagree.
pub fn differing_fields<'a>(
    a: &'a SummaryRow,
    b: &'a SummaryRow,
) -> impl Iterator<Item = Field> + 'a {
    let (a, b) = (a, b);
    Field::ALL.into_iter().filter(move |f| f.differs(a, b))
}

/// How the table must change to match the source for one product.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a> {
    /// The product has a summary row in the source but none in the table.
    Insert(&'a SummaryRow),
    Update {
        old: &'a SummaryRow,
        new: &'a SummaryRow,
    },
    /// The table has a row whose product is gone (or lost its price).
    Delete(&'a SummaryRow),
}

/// Compares the rows the summary query produced with the rows the table holds, for the
/// same set of product ids. Equal rows produce nothing: a no-op source update must not
/// write the summary or revalidate anything.
pub fn diff<'a>(desired: &'a [SummaryRow], current: &'a [SummaryRow]) -> Vec<Change<'a>> {
    let mut current_by_id: HashMap<&str, &SummaryRow> =
        current.iter().map(|r| (r.product_id.as_str(), r)).collect();
    let mut changes = Vec::new();
    for new in desired {
        match current_by_id.remove(new.product_id.as_str()) {
            None => changes.push(Change::Insert(new)),
            Some(old) if old != new => changes.push(Change::Update { old, new }),
            Some(_) => {}
        }
    }
    // What remains has no source row. Sorted so tags and logs are deterministic.
    let mut orphans: Vec<&SummaryRow> = current_by_id.into_values().collect();
    orphans.sort_by(|a, b| a.product_id.cmp(&b.product_id));
    changes.extend(orphans.into_iter().map(Change::Delete));
    changes
}

/// What a summary change means for cache tags: the product, its store (the old one too
/// when it moved), and whether its stock changed (a new or vanished row counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touched<'a> {
    pub product_id: &'a str,
    pub store_id: &'a str,
    pub old_store: Option<&'a str>,
    pub inventory_changed: bool,
}

impl<'a> From<&Change<'a>> for Touched<'a> {
    fn from(change: &Change<'a>) -> Touched<'a> {
        let (row, old, inventory_changed) = match change {
            Change::Insert(new) => (*new, None, true),
            Change::Delete(old) => (*old, None, true),
            Change::Update { old, new } => (
                *new,
                Some(old.store_id.as_str()),
                old.inventory_available != new.inventory_available,
            ),
        };
        Touched {
            product_id: &row.product_id,
            store_id: &row.store_id,
            old_store: old,
            inventory_changed,
        }
    }
}

/// Renders the cache tags of summary changes from the configured templates.
#[derive(Debug, Clone)]
pub struct TagTemplates {
    always: Vec<String>,
    inventory: Vec<String>,
    /// `revalidate.min_interval_ms`: template -> least milliseconds between two
    /// revalidations of one of its tags. Templates not in it (or at 0) are immediate.
    min_interval_ms: BTreeMap<String, u64>,
}

/// The tags of summary changes, by how they are sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tags {
    /// Into the outbox at once.
    pub now: BTreeSet<String>,
    /// Tags of throttled templates, with their template's interval in milliseconds:
    /// through `outbox_held` (see `hold`).
    pub throttled: BTreeMap<String, u64>,
}

impl Tags {
    /// Adds `tag`, throttled by `interval_ms` when that is above 0. A tag that some
    /// template makes immediate is immediate; of two intervals the shorter applies.
    pub fn insert(&mut self, tag: String, interval_ms: u64) {
        if interval_ms == 0 {
            self.throttled.remove(&tag);
            self.now.insert(tag);
        } else if !self.now.contains(&tag) {
            let ms = self.throttled.entry(tag).or_insert(interval_ms);
            *ms = (*ms).min(interval_ms);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.now.is_empty() && self.throttled.is_empty()
    }
}

impl TagTemplates {
    pub fn from_config(cfg: &Config) -> TagTemplates {
        TagTemplates {
            always: cfg.revalidate.tags.clone(),
            inventory: cfg.revalidate.inventory_tags.clone(),
            min_interval_ms: cfg.revalidate.min_interval_ms.clone(),
        }
    }

    /// Tags of one change: the row's tags for its store (and for its old store when the
    /// product moved, so the old listing drops it), plus the inventory tags when
    /// inventoryAvailable changed or the row appeared or vanished.
    pub fn tags_of(&self, change: &Touched<'_>, out: &mut Tags) {
        let Touched {
            product_id,
            store_id,
            old_store,
            inventory_changed,
        } = *change;
        let mut render = |templates: &[String], store: &str| {
            for t in templates {
                let tag = t
                    .replace("{productId}", product_id)
                    .replace("{storeId}", store);
                // Next.js ignores such a tag without a word; say so here instead.
                if tag.len() > 256 || tag.contains(',') {
                    tracing::warn!(%tag, "cache tag longer than 256 characters or with a comma: Next.js would ignore it; not sent");
                    continue;
                }
                out.insert(tag, self.min_interval_ms.get(t).copied().unwrap_or(0));
            }
        };
        render(&self.always, store_id);
        if let Some(old_store) = old_store.filter(|s| *s != store_id) {
            render(&self.always, old_store);
        }
        if inventory_changed {
            render(&self.inventory, store_id);
        }
    }
}

impl TagTemplates {
    /// Every tag of a product, for a manual revalidation; store tags only when the store
    /// is known.
    pub fn product_tags(
        &self,
        product_id: &str,
        store_id: Option<&str>,
        out: &mut BTreeSet<String>,
    ) {
        for t in self.always.iter().chain(&self.inventory) {
            let tag = t.replace("{productId}", product_id);
            match store_id {
                Some(store) => {
                    out.insert(tag.replace("{storeId}", store));
                }
                None if !t.contains("{storeId}") => {
                    out.insert(tag);
                }
                None => {}
            }
        }
    }

    /// The tags of a store listing: templates that name a store but no product.
    pub fn store_tags(&self, store_id: &str, out: &mut BTreeSet<String>) {
        for t in self.always.iter().chain(&self.inventory) {
            if t.contains("{storeId}") && !t.contains("{productId}") {
                out.insert(t.replace("{storeId}", store_id));
            }
        }
    }
}

/// `"name"` with embedded quotes doubled: table and column names come from config.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, store: &str, inv: i32) -> SummaryRow {
        SummaryRow {
            product_id: id.into(),
            store_id: store.into(),
            title: "T".into(),
            price: 100,
            active: true,
            inventory_available: inv,
            primary_image_url: None,
        }
    }

    fn templates() -> TagTemplates {
        TagTemplates {
            always: vec![
                "product:{productId}".into(),
                "store:{storeId}:products".into(),
            ],
            inventory: vec!["inventory:{productId}".into()],
            min_interval_ms: BTreeMap::new(),
        }
    }

    #[test]
    fn diff_finds_insert_update_delete_and_skips_equal() {
        let desired = vec![row("a", "s1", 1), row("b", "s1", 2), row("c", "s1", 3)];
        let current = vec![row("b", "s1", 2), row("c", "s2", 3), row("d", "s1", 0)];
        let changes = diff(&desired, &current);
        assert_eq!(
            changes,
            vec![
                Change::Insert(&desired[0]),
                Change::Update {
                    old: &current[1],
                    new: &desired[2]
                },
                Change::Delete(&current[2]),
            ]
        );
    }

    #[test]
    fn differing_fields_lists_each() {
        let a = row("a", "s1", 1);
        let mut b = a.clone();
        assert_eq!(differing_fields(&a, &b).count(), 0);
        b.title = "U".into();
        b.primary_image_url = Some("x".into());
        assert_eq!(
            differing_fields(&a, &b).collect::<Vec<_>>(),
            vec![Field::Title, Field::PrimaryImageUrl]
        );
    }

    fn update_tags(old: &SummaryRow, new: &SummaryRow) -> Vec<String> {
        let mut tags = Tags::default();
        templates().tags_of(&(&Change::Update { old, new }).into(), &mut tags);
        assert!(tags.throttled.is_empty());
        tags.now.into_iter().collect()
    }

    #[test]
    fn move_between_stores_tags_both_stores() {
        assert_eq!(
            update_tags(&row("p", "s1", 5), &row("p", "s2", 5)),
            vec!["product:p", "store:s1:products", "store:s2:products"]
        );
    }

    #[test]
    fn inventory_tag_only_when_inventory_changed() {
        let old = row("p", "s1", 5);
        assert!(update_tags(&old, &row("p", "s1", 4)).contains(&"inventory:p".to_string()));
        let mut retitled = old.clone();
        retitled.title = "New".into();
        assert_eq!(
            update_tags(&old, &retitled),
            vec!["product:p", "store:s1:products"]
        );
    }

    #[test]
    fn unusable_tags_are_not_sent() {
        let mut long = row("p", "s1", 5);
        long.product_id = "x".repeat(300);
        let mut tags = Tags::default();
        templates().tags_of(&(&Change::Insert(&long)).into(), &mut tags);
        assert_eq!(
            tags.now.into_iter().collect::<Vec<_>>(),
            vec!["store:s1:products"]
        );
        let comma = row("a,b", "s1", 5);
        let mut tags = Tags::default();
        templates().tags_of(&(&Change::Insert(&comma)).into(), &mut tags);
        assert_eq!(
            tags.now.into_iter().collect::<Vec<_>>(),
            vec!["store:s1:products"]
        );
    }

    #[test]
    fn throttled_templates_are_held_and_the_rest_sent_at_once() {
        let mut t = templates();
        t.min_interval_ms
            .insert("store:{storeId}:products".into(), 1000);
        let mut tags = Tags::default();
        t.tags_of(
            &(&Change::Update {
                old: &row("p", "s1", 5),
                new: &row("p", "s2", 4),
            })
                .into(),
            &mut tags,
        );
        assert_eq!(
            tags.now.iter().collect::<Vec<_>>(),
            vec!["inventory:p", "product:p"]
        );
        assert_eq!(
            tags.throttled.into_iter().collect::<Vec<_>>(),
            vec![
                ("store:s1:products".to_string(), 1000),
                ("store:s2:products".to_string(), 1000)
            ]
        );
    }

    #[test]
    fn a_tag_immediate_by_one_template_is_immediate() {
        let mut tags = Tags::default();
        tags.insert("x".into(), 500);
        tags.insert("x".into(), 200);
        assert_eq!(tags.throttled["x"], 200);
        tags.insert("x".into(), 0);
        tags.insert("x".into(), 700);
        assert!(tags.throttled.is_empty());
        assert!(tags.now.contains("x"));
    }

    #[test]
    fn quoting() {
        assert_eq!(qualified("public", "Pro\"d"), "\"public\".\"Pro\"\"d\"");
    }
}
