//! What a summary row is and how two of them differ. Apply compares rows in SQL
//! ([`super::sql::write`]); reconcile's fence re-reads differing rows and classifies them
//! with [`diff`]. Both compare the same six fields; change them together.

use std::collections::HashMap;

use tokio_postgres::Row;

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

/// A summary row for unit tests: product `id` in `store` with `inv` available.
#[cfg(test)]
pub fn test_row(id: &str, store: &str, inv: i32) -> SummaryRow {
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

#[cfg(test)]
mod tests {
    use super::test_row as row;
    use super::*;

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
}
