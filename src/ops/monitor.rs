//! Monitor: polls what only the database knows (WAL lag in bytes, the slot's wal_status
//! and safe_wal_size, the outbox backlog, the last reconcile result) into the metrics,
//! and warns as the slot's safety degrades.

use std::sync::Arc;
use std::time::Duration;

use super::metrics::Metrics;
use crate::config::Config;
use crate::pg::connect::Database;
use crate::pg::server;
use crate::redact::redact_url;
use crate::state::{self, history, outbox};

const EVERY: Duration = Duration::from_secs(2);

/// Runs until aborted; database errors are logged at debug and retried.
pub async fn run(cfg: Config, db: Database, metrics: Arc<Metrics>) {
    let mut last_status = String::new();
    let mut last_state = String::new();
    loop {
        match db.connect("cdc-worker/monitor").await {
            Ok(client) => loop {
                match poll(&client, &cfg, &metrics, &mut last_status, &mut last_state).await {
                    Ok(()) => tokio::time::sleep(EVERY).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "monitor query failed");
                        break;
                    }
                }
            },
            Err(e) => tracing::debug!(error = %e, "monitor cannot connect"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

async fn poll(
    client: &tokio_postgres::Client,
    cfg: &Config,
    metrics: &Metrics,
    last_status: &mut String,
    last_state: &mut String,
) -> Result<(), tokio_postgres::Error> {
    let s = state::schema(cfg);
    if let Some(row) = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, wal_status::text, \
                    safe_wal_size::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.slot],
        )
        .await?
    {
        metrics
            .lag_bytes
            .set(row.get::<_, Option<i64>>(0).unwrap_or(0));
        let status: String = row.get::<_, Option<String>>(1).unwrap_or_default();
        metrics.set_slot_status(&status);
        metrics
            .slot_safe_wal_size
            .set(row.get::<_, Option<i64>>(2).unwrap_or(-1));
        if status != *last_status {
            match status.as_str() {
                "reserved" => {}
                "extended" => {
                    tracing::warn!(slot = %cfg.slot, "slot wal_status is 'extended': its WAL exceeds max_wal_size and is kept only because of the slot")
                }
                "unreserved" => {
                    tracing::error!(slot = %cfg.slot, "slot wal_status is 'unreserved': WAL it needs will be removed at the next checkpoint; the slot is about to be lost")
                }
                "lost" => tracing::error!(slot = %cfg.slot, "slot wal_status is 'lost'"),
                _ => {}
            }
            *last_status = status;
        }
    }
    match server::slot_state(client, &cfg.slot).await {
        Ok(Some(state)) => {
            metrics.set_slot_state(&state);
            let summary = state.summary();
            if summary != *last_state {
                if summary.starts_with("invalidated_") || summary == "conflicting" {
                    tracing::error!(slot = %cfg.slot, state = %summary, "the replication slot is unusable; the worker recreates it and recomputes every product at its next session start");
                } else if !last_state.is_empty() {
                    tracing::info!(slot = %cfg.slot, state = %summary, "replication slot state changed");
                }
                *last_state = summary;
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot read the slot's state"),
    }
    let row = client
        .query_one(
            &outbox::pending_sql(&s),
            // Cursors are keyed by the redacted URL (outbox::deliver).
            &[&cfg
                .revalidate
                .urls
                .iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()],
        )
        .await?;
    metrics.outbox_pending.set(row.get(0));
    metrics
        .outbox_oldest_age
        .set(row.get::<_, Option<f64>>(1).unwrap_or(0.0));
    let parked = client.query_one(&outbox::parked_tags_sql(&s), &[]).await?;
    metrics.outbox_failed_tags.set(parked.get(0));
    // Missing until the leader upgraded a state schema of an earlier version.
    if let Ok(row) = client.query_one(&outbox::held_pending_sql(&s), &[]).await {
        metrics.held_tags.set(row.get(0));
        metrics.held_overdue.set(row.get(1));
    }
    // The history table appears with the first reconcile run.
    if let Ok(Some(row)) = client
        .query_opt(&history::last_discrepancies_sql(&s), &[])
        .await
    {
        metrics.reconcile_discrepancies.set(row.get(0));
    }
    Ok(())
}
