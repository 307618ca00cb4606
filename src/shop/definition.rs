//! What defines a summary row, recorded so that a change is noticed (DESIGN.md 9): the
//! summary query (normalized: layout, comments and case do not count), the currency, the
//! summary table and its column mapping, and the id types. Stored with the checkpoint by
//! the transaction that finishes a recompute of every product; a start that finds another
//! one recomputes every product first (`control::slot`, reason `definition_changed`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::Layout;
use super::query_text;
use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// SHA-256 (hex) of the normalized summary query.
    pub query: String,
    pub currency: String,
    /// The summary table, qualified and quoted.
    pub summary_table: String,
    /// `tables.summary_columns`: config key -> column name.
    pub columns: BTreeMap<String, String>,
    pub product_id_type: String,
    pub store_id_type: String,
}

impl Definition {
    pub fn of(layout: &Layout, cfg: &Config) -> Definition {
        let normalized = query_text::normalize(layout.query());
        Definition {
            query: hex::encode(Sha256::digest(normalized.as_bytes())),
            currency: cfg.currency.clone(),
            summary_table: layout.summary.clone(),
            columns: cfg
                .tables
                .summary_columns
                .all()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            product_id_type: layout.id_type.clone(),
            store_id_type: layout.store_type.clone(),
        }
    }

    /// The stored form (jsonb).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a Definition serializes")
    }

    /// What differs from the stored definition, for the log line: `None` when nothing
    /// does. A stored value this version cannot read counts as different.
    pub fn changed_from(&self, stored: &serde_json::Value) -> Option<String> {
        let Ok(old) = serde_json::from_value::<Definition>(stored.clone()) else {
            return Some("the recorded definition is unreadable".into());
        };
        let mut what = Vec::new();
        if old.query != self.query {
            what.push("the summary query (tables.summary_query_file)".to_string());
        }
        if old.currency != self.currency {
            what.push(format!("currency {} -> {}", old.currency, self.currency));
        }
        if old.summary_table != self.summary_table {
            what.push(format!(
                "summary table {} -> {}",
                old.summary_table, self.summary_table
            ));
        }
        if old.columns != self.columns {
            let keys = self
                .columns
                .iter()
                .filter(|(k, v)| old.columns.get(*k) != Some(v))
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            what.push(format!("tables.summary_columns ({keys})"));
        }
        if (&old.product_id_type, &old.store_id_type)
            != (&self.product_id_type, &self.store_id_type)
        {
            what.push(format!(
                "id types {}/{} -> {}/{}",
                old.product_id_type, old.store_id_type, self.product_id_type, self.store_id_type
            ));
        }
        (!what.is_empty()).then(|| what.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> Definition {
        Definition {
            query: "q1".into(),
            currency: "USD".into(),
            summary_table: "\"public\".\"ProductSummary\"".into(),
            columns: [("title".to_string(), "title".to_string())].into(),
            product_id_type: "text".into(),
            store_id_type: "text".into(),
        }
    }

    #[test]
    fn equal_definitions_do_not_differ() {
        assert_eq!(def().changed_from(&def().to_json()), None);
    }

    #[test]
    fn each_part_is_named() {
        let old = def().to_json();
        let mut d = def();
        d.currency = "EUR".into();
        assert_eq!(d.changed_from(&old).unwrap(), "currency USD -> EUR");
        let mut d = def();
        d.query = "q2".into();
        d.columns.insert("title".into(), "name".into());
        let why = d.changed_from(&old).unwrap();
        assert!(
            why.contains("summary query") && why.contains("summary_columns (title)"),
            "{why}"
        );
        let mut d = def();
        d.product_id_type = "bigint".into();
        assert!(d
            .changed_from(&old)
            .unwrap()
            .contains("id types text/text -> bigint/text"));
        assert!(def()
            .changed_from(&serde_json::json!({"v": 2}))
            .unwrap()
            .contains("unreadable"));
    }
}
