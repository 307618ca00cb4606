//! Every run is recorded in `<schema>.reconcile_history`; `--history` shows the trend.

use std::time::SystemTime;

use tokio_postgres::Client;

use super::report::Report;
use crate::config::Config;
pub use crate::state::history::Run;
use crate::state::history::{insert, recent, NewRun};

/// Appends the run to `<schema>.reconcile_history`.
pub(super) async fn record(
    client: &Client,
    cfg: &Config,
    report: &Report,
    started_at: SystemTime,
) -> anyhow::Result<()> {
    let run = NewRun {
        started_at,
        checked: report.checked as i64,
        discrepancies: report.discrepancies as i64,
        missing: report.missing as i64,
        orphaned: report.orphaned as i64,
        different: report.different as i64,
        fields: serde_json::to_value(&report.fields)?,
        fixed: report.fixed.map(|f| f as i64),
        store: report.store.as_deref(),
        settled: report.settled,
    };
    insert(client, cfg, &run).await
}

/// The most recent `limit` runs, newest first.
pub async fn history(client: &Client, cfg: &Config, limit: u32) -> anyhow::Result<Vec<Run>> {
    recent(client, cfg, limit).await
}

/// The history for a person, newest first.
pub fn history_table(runs: &[Run]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if runs.is_empty() {
        s.push_str("no reconcile runs recorded yet\n");
        return s;
    }
    let _ = writeln!(
        s,
        "{:>6}  {:<20} {:>8} {:>10} {:>13} {:>10} {:>8} {:>8} {:>9} {:>7} {:>7}  store",
        "id",
        "started (UTC)",
        "seconds",
        "checked",
        "discrepancies",
        "rate",
        "missing",
        "orphaned",
        "different",
        "fixed",
        "settled"
    );
    for r in runs {
        let fixed = r.fixed.map_or("-".to_string(), |f| f.to_string());
        let _ = writeln!(
            s,
            "{:>6}  {:<20} {:>8.1} {:>10} {:>13} {:>10.6} {:>8} {:>8} {:>9} {:>7} {:>7}  {}",
            r.id,
            r.started_at,
            r.duration_seconds,
            r.checked,
            r.discrepancies,
            r.rate,
            r.missing,
            r.orphaned,
            r.different,
            fixed,
            if r.settled { "yes" } else { "no" },
            r.store.as_deref().unwrap_or("(all)")
        );
    }
    s
}
