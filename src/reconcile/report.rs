//! What one reconcile run found: counts per kind and field, a sample, the exit code for
//! cron, and the table printed for people.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::shop::summary::{differing_fields, Field, SummaryRow};

/// How many discrepancies are listed by id in the report.
const SAMPLE_SIZE: usize = 10;

/// The outcome of one run; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Products compared: ids present in the source, in the table, or both.
    pub checked: u64,
    /// Products whose row is missing, orphaned or different.
    pub discrepancies: u64,
    /// discrepancies / checked (0 when nothing was checked).
    pub rate: f64,
    /// In the source, not in the table.
    pub missing: u64,
    /// In the table, not in the source.
    pub orphaned: u64,
    /// In both, with at least one field different.
    pub different: u64,
    /// Per column: products on which it differs (a product can count in several).
    pub fields: BTreeMap<&'static str, u64>,
    /// With --fix: discrepancies repaired and verified.
    pub fixed: Option<u64>,
    /// With --fix: discrepancies still there after the repair.
    pub unfixed: Option<u64>,
    /// False when the daemon did not pass a fence in time, so differences still in
    /// flight may have been counted.
    pub settled: bool,
    /// Products that differed but whose rows were still changing after every fence
    /// (written right now, and applied by the daemon meanwhile): not discrepancies.
    pub in_flight: u64,
    pub duration_seconds: f64,
    pub store: Option<String>,
    /// Up to 10 of the discrepancies, for a first look.
    pub sample: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub product_id: String,
    pub kind: Kind,
    pub fields: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Missing,
    Orphaned,
    Different,
}

impl Report {
    pub(super) fn new(store: Option<String>, fix: bool) -> Report {
        Report {
            checked: 0,
            discrepancies: 0,
            rate: 0.0,
            missing: 0,
            orphaned: 0,
            different: 0,
            fields: Field::ALL.iter().map(|f| (f.column(), 0)).collect(),
            fixed: fix.then_some(0),
            unfixed: fix.then_some(0),
            settled: true,
            in_flight: 0,
            duration_seconds: 0.0,
            store,
            sample: Vec::new(),
        }
    }

    pub(super) fn count(&mut self, d: &Discrepancy) {
        self.discrepancies += 1;
        let (kind, fields) = match (&d.desired, &d.actual) {
            (Some(_), None) => {
                self.missing += 1;
                (Kind::Missing, Vec::new())
            }
            (None, Some(_)) => {
                self.orphaned += 1;
                (Kind::Orphaned, Vec::new())
            }
            (Some(want), Some(have)) => {
                self.different += 1;
                let fields: Vec<&'static str> =
                    differing_fields(have, want).map(Field::column).collect();
                for f in &fields {
                    *self.fields.entry(f).or_default() += 1;
                }
                (Kind::Different, fields)
            }
            (None, None) => unreachable!("a discrepancy has at least one side"),
        };
        if self.sample.len() < SAMPLE_SIZE {
            self.sample.push(Sample {
                product_id: d.product_id.clone(),
                kind,
                fields,
            });
        }
    }

    /// The exit code for cron: 0 when the rate is at most `max_rate` (with --fix: when
    /// every discrepancy was repaired), 1 otherwise. Errors exit 2 in main.
    pub fn exit_code(&self, max_rate: f64) -> u8 {
        match self.unfixed {
            Some(unfixed) => u8::from(unfixed > 0),
            None => u8::from(self.rate > max_rate),
        }
    }
}

/// One product whose row disagrees with the summary query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Discrepancy {
    pub(super) product_id: String,
    /// What the summary query says (None: the row should not exist).
    pub(super) desired: Option<SummaryRow>,
    /// What the table holds (None: there is no row).
    pub(super) actual: Option<SummaryRow>,
}

/// The summary for a person.
pub fn report_table(r: &Report, max_rate: f64) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let scope = match &r.store {
        Some(store) => format!("store {store}"),
        None => "all stores".to_string(),
    };
    let _ = writeln!(
        s,
        "ProductSummary reconcile ({scope}): {} products checked in {:.1} s",
        r.checked, r.duration_seconds
    );
    let verdict = if r.rate > max_rate { "above" } else { "within" };
    let _ = writeln!(
        s,
        "  discrepancies  {:>10}   rate {:.6} ({verdict} --max-rate {max_rate})",
        r.discrepancies, r.rate
    );
    let _ = writeln!(s, "    missing      {:>10}", r.missing);
    let _ = writeln!(s, "    orphaned     {:>10}", r.orphaned);
    let _ = writeln!(s, "    different    {:>10}", r.different);
    for f in Field::ALL {
        let n = r.fields.get(f.column()).copied().unwrap_or(0);
        let _ = writeln!(s, "      {:<19}{n:>7}", f.column());
    }
    if let (Some(fixed), Some(unfixed)) = (r.fixed, r.unfixed) {
        let _ = writeln!(
            s,
            "  fixed          {fixed:>10}   still differing {unfixed}"
        );
    }
    if r.in_flight > 0 {
        let _ = writeln!(
            s,
            "  in flight      {:>10}   (still being written after every fence; not counted)",
            r.in_flight
        );
    }
    if !r.settled {
        let _ = writeln!(
            s,
            "  warning: the daemon did not pass a WAL fence in time; changes still in flight may be counted"
        );
    }
    for d in &r.sample {
        let detail = if d.fields.is_empty() {
            String::new()
        } else {
            format!(" ({})", d.fields.join(", "))
        };
        let kind = match d.kind {
            Kind::Missing => "missing",
            Kind::Orphaned => "orphaned",
            Kind::Different => "different",
        };
        let _ = writeln!(s, "  e.g. {} {kind}{detail}", d.product_id);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> SummaryRow {
        SummaryRow {
            product_id: id.into(),
            store_id: "s1".into(),
            title: "T".into(),
            price: 100,
            active: true,
            inventory_available: 3,
            primary_image_url: None,
        }
    }

    #[test]
    fn counts_each_kind_and_field() {
        let mut r = Report::new(None, false);
        r.count(&Discrepancy {
            product_id: "a".into(),
            desired: Some(row("a")),
            actual: None,
        });
        r.count(&Discrepancy {
            product_id: "b".into(),
            desired: None,
            actual: Some(row("b")),
        });
        let mut changed = row("c");
        changed.title = "U".into();
        changed.price = 1;
        r.count(&Discrepancy {
            product_id: "c".into(),
            desired: Some(row("c")),
            actual: Some(changed),
        });
        assert_eq!((r.missing, r.orphaned, r.different), (1, 1, 1));
        assert_eq!(r.discrepancies, 3);
        assert_eq!(r.fields["title"], 1);
        assert_eq!(r.fields["price"], 1);
        assert_eq!(r.fields["storeId"], 0);
        assert_eq!(r.fields.len(), Field::ALL.len());
        assert_eq!(r.sample[2].fields, vec!["title", "price"]);
    }

    #[test]
    fn exit_codes() {
        let mut r = Report::new(None, false);
        r.rate = 0.001;
        assert_eq!(r.exit_code(0.001), 0);
        r.rate = 0.0011;
        assert_eq!(r.exit_code(0.001), 1);
        let mut f = Report::new(None, true);
        f.rate = 0.5;
        assert_eq!(f.exit_code(0.001), 0, "all repaired");
        f.unfixed = Some(1);
        assert_eq!(f.exit_code(1.0), 1, "not all repaired");
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(Report::new(Some("s".into()), false)).unwrap();
        for key in [
            "checked",
            "discrepancies",
            "rate",
            "missing",
            "orphaned",
            "different",
            "fields",
            "fixed",
            "settled",
            "duration_seconds",
            "store",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert!(v["fixed"].is_null());
        assert_eq!(v["fields"]["inventoryAvailable"], 0);
    }
}
