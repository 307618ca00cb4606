//! Every run is recorded in `<schema>.reconcile_history`; `--history` shows the trend.

use std::time::SystemTime;

use anyhow::Context as _;
use serde::Serialize;
use tokio_postgres::Client;

use super::report::Report;
use crate::config::Config;
use crate::summary::quote_ident;

/// Appends the run to `<schema>.reconcile_history`.
pub(super) async fn record(
    client: &Client,
    cfg: &Config,
    report: &Report,
    started_at: SystemTime,
) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO {}.reconcile_history (started_at, finished_at, checked, discrepancies, \
         missing, orphaned, different, fields, fixed, store, settled) \
         VALUES ($1, now(), $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        quote_ident(&cfg.schema)
    );
    let fields = serde_json::to_value(&report.fields)?;
    client
        .execute(
            &sql,
            &[
                &started_at,
                &(report.checked as i64),
                &(report.discrepancies as i64),
                &(report.missing as i64),
                &(report.orphaned as i64),
                &(report.different as i64),
                &fields,
                &report.fixed.map(|f| f as i64),
                &report.store,
                &report.settled,
            ],
        )
        .await
        .context("recording the run in the history table")?;
    Ok(())
}

/// One recorded run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: i64,
    pub started_at: String,
    pub duration_seconds: f64,
    pub checked: i64,
    pub discrepancies: i64,
    pub rate: f64,
    pub missing: i64,
    pub orphaned: i64,
    pub different: i64,
    pub fields: serde_json::Value,
    pub fixed: Option<i64>,
    pub settled: bool,
    pub store: Option<String>,
}

/// The most recent `limit` runs, newest first.
pub async fn history(client: &Client, cfg: &Config, limit: u32) -> anyhow::Result<Vec<Run>> {
    let sql = format!(
        "SELECT id, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
         extract(epoch FROM finished_at - started_at)::float8, checked, discrepancies, missing, \
         orphaned, different, fields, fixed, settled, store \
         FROM {}.reconcile_history ORDER BY id DESC LIMIT $1",
        quote_ident(&cfg.schema)
    );
    let rows = client.query(&sql, &[&i64::from(limit)]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let checked: i64 = r.get(3);
            let discrepancies: i64 = r.get(4);
            Run {
                id: r.get(0),
                started_at: r.get(1),
                duration_seconds: (r.get::<_, f64>(2) * 1000.0).round() / 1000.0,
                checked,
                discrepancies,
                rate: if checked == 0 {
                    0.0
                } else {
                    discrepancies as f64 / checked as f64
                },
                missing: r.get(5),
                orphaned: r.get(6),
                different: r.get(7),
                fields: r.get(8),
                fixed: r.get(9),
                settled: r.get(10),
                store: r.get(11),
            }
        })
        .collect())
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
