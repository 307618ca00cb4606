//! `reconcile_history`: one row per `cdc-worker reconcile` run, so the discrepancy count is
//! visible as a trend.

use std::time::SystemTime;

use anyhow::Context as _;
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::Config;
use crate::pg::sql::quote_ident;

/// A run to record.
#[derive(Debug)]
pub struct NewRun<'a> {
    pub started_at: SystemTime,
    pub checked: i64,
    pub discrepancies: i64,
    pub missing: i64,
    pub orphaned: i64,
    pub different: i64,
    /// Column name -> products on which it differed.
    pub fields: serde_json::Value,
    pub fixed: Option<i64>,
    pub store: Option<&'a str>,
    pub settled: bool,
}

/// Appends `run` (finished now).
pub async fn insert(client: &Client, cfg: &Config, run: &NewRun<'_>) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO {}.reconcile_history (started_at, finished_at, checked, discrepancies, \
         missing, orphaned, different, fields, fixed, store, settled) \
         VALUES ($1, now(), $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        quote_ident(&cfg.schema)
    );
    client
        .execute(
            &sql,
            &[
                &run.started_at,
                &run.checked,
                &run.discrepancies,
                &run.missing,
                &run.orphaned,
                &run.different,
                &run.fields,
                &run.fixed,
                &run.store,
                &run.settled,
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
pub async fn recent(client: &Client, cfg: &Config, limit: u32) -> anyhow::Result<Vec<Run>> {
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

/// The discrepancy count of the latest run (no row before the first run).
pub fn last_discrepancies_sql(state: &str) -> String {
    format!("SELECT discrepancies::int8 FROM {state}.reconcile_history ORDER BY id DESC LIMIT 1")
}
