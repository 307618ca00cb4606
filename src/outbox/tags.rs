//! Which cache tags a summary change touches, rendered from the configured templates
//! (`revalidate.tags`, `revalidate.inventory_tags`), and which of them are held
//! (`revalidate.min_interval_ms`, see [`super::hold`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;

/// What a summary change means for cache tags: the product, its store (the old one too
/// when it moved), and whether its stock changed (a new or vanished row counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touched<'a> {
    pub product_id: &'a str,
    pub store_id: &'a str,
    pub old_store: Option<&'a str>,
    pub inventory_changed: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shop::summary::{test_row as row, Change, SummaryRow};

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

    /// What apply reads back for a change (its SQL returns the same four facts).
    fn touched<'a>(change: &Change<'a>) -> Touched<'a> {
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

    fn update_tags(old: &SummaryRow, new: &SummaryRow) -> Vec<String> {
        let mut tags = Tags::default();
        templates().tags_of(&touched(&Change::Update { old, new }), &mut tags);
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
        templates().tags_of(&touched(&Change::Insert(&long)), &mut tags);
        assert_eq!(
            tags.now.into_iter().collect::<Vec<_>>(),
            vec!["store:s1:products"]
        );
        let comma = row("a,b", "s1", 5);
        let mut tags = Tags::default();
        templates().tags_of(&touched(&Change::Insert(&comma)), &mut tags);
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
            &touched(&Change::Update {
                old: &row("p", "s1", 5),
                new: &row("p", "s2", 4),
            }),
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
}
