//! Changes in flight are not discrepancies: both sides of differing ids are read again
//! after a WAL fence the daemon must pass (see the module doc of `reconcile`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Statement};

use super::report::Discrepancy;
use super::SETTLE_ROUNDS;
use crate::config::Config;
use crate::shop::layout::Layout;
use crate::shop::sql;
use crate::shop::summary::{diff, Change, SummaryRow};
use crate::state::checkpoint;

/// Reads both sides of given ids, and waits for the daemon through WAL fences.
pub(super) struct Checker {
    client: Client,
    detail: Statement,
    currency: String,
    schema: String,
    slot: String,
    timeout: Duration,
    /// Set once a fence was not passed in time: the daemon is evidently not running, so
    /// later pages do not wait again.
    pub(super) unsettled: bool,
}

impl Checker {
    pub(super) async fn new(
        client: Client,
        cfg: &Config,
        layout: &Layout,
        timeout: Duration,
    ) -> anyhow::Result<Checker> {
        let detail = crate::pg::prepare(&client, &sql::both_sides(layout)).await?;
        Ok(Checker {
            client,
            detail,
            currency: cfg.currency.clone(),
            schema: cfg.schema.clone(),
            slot: cfg.slot.clone(),
            timeout,
            unsettled: false,
        })
    }

    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// The discrepancies among `ids` that persist, unchanged, once the daemon has applied
    /// everything committed before they were read (see the module doc), and how many
    /// products were still changing after [`SETTLE_ROUNDS`] fences (in flight, not counted).
    pub(super) async fn persistent(
        &mut self,
        ids: Vec<String>,
    ) -> anyhow::Result<(Vec<Discrepancy>, u64)> {
        let mut pending = self.detail(&ids).await?;
        let mut confirmed = Vec::new();
        for _ in 0..SETTLE_ROUNDS {
            if pending.is_empty() || !self.settle().await? {
                // Without a daemon to wait for, differences count as they are.
                confirmed.append(&mut pending);
                break;
            }
            let ids: Vec<String> = pending.iter().map(|d| d.product_id.clone()).collect();
            let again = self.detail(&ids).await?;
            let before: HashMap<&str, &Discrepancy> =
                pending.iter().map(|d| (d.product_id.as_str(), d)).collect();
            let mut changing = Vec::new();
            for d in again {
                if before.get(d.product_id.as_str()) == Some(&&d) {
                    confirmed.push(d);
                } else {
                    tracing::debug!(product_id = %d.product_id, "still changing after a fence");
                    changing.push(d);
                }
            }
            pending = changing;
        }
        let in_flight = pending.len() as u64;
        if in_flight > 0 {
            tracing::info!(
                products = in_flight,
                "rows still changing after {SETTLE_ROUNDS} fences are being written right now: counted as in flight, not as discrepancies"
            );
        }
        confirmed.sort_by(|a, b| a.product_id.cmp(&b.product_id));
        Ok((confirmed, in_flight))
    }

    /// Both sides of `ids`, classified with [`diff`]; equal rows are dropped.
    pub(super) async fn detail(&self, ids: &[String]) -> anyhow::Result<Vec<Discrepancy>> {
        let rows = self
            .client
            .query(&self.detail, &[&self.currency, &ids])
            .await?;
        let mut desired = Vec::new();
        let mut current = Vec::new();
        for row in &rows {
            let r = SummaryRow::from_row(row).context("reading a summary row")?;
            if row.get::<_, bool>(7) {
                desired.push(r);
            } else {
                current.push(r);
            }
        }
        let found: Vec<Discrepancy> = diff(&desired, &current)
            .into_iter()
            .map(|c| match c {
                Change::Insert(new) => Discrepancy {
                    product_id: new.product_id.clone(),
                    desired: Some(new.clone()),
                    actual: None,
                },
                Change::Update { old, new } => Discrepancy {
                    product_id: new.product_id.clone(),
                    desired: Some(new.clone()),
                    actual: Some(old.clone()),
                },
                Change::Delete(old) => Discrepancy {
                    product_id: old.product_id.clone(),
                    desired: None,
                    actual: Some(old.clone()),
                },
            })
            .collect();
        Ok(found)
    }

    /// Writes a fence into the WAL and waits until the daemon's checkpoint passes it.
    /// False when it did not within the timeout (then never waits again).
    pub(super) async fn settle(&mut self) -> anyhow::Result<bool> {
        if self.unsettled {
            return Ok(false);
        }
        if self.timeout.is_zero() {
            tracing::warn!("--settle-timeout 0: differences are counted without waiting for the daemon; some may be changes still in flight");
            self.unsettled = true;
            return Ok(false);
        }
        let fence = match self
            .client
            .query_one(
                "SELECT pg_logical_emit_message(true, 'cdc_worker.fence', '')",
                &[],
            )
            .await
        {
            Ok(row) => u64::from(row.get::<_, PgLsn>(0)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write a WAL fence; differences are counted as they are, some may be changes still in flight");
                self.unsettled = true;
                return Ok(false);
            }
        };
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let checkpoint = checkpoint::read(&self.client, &self.schema, &self.slot).await?;
            match checkpoint {
                Some(lsn) if lsn.0 >= fence => return Ok(true),
                None => {
                    tracing::warn!(slot = %self.slot, "no checkpoint for the slot, so the daemon cannot be waited for: differences are counted as they are, some may be changes still in flight");
                    self.unsettled = true;
                    return Ok(false);
                }
                Some(_) => {}
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    slot = %self.slot,
                    timeout = ?self.timeout,
                    "the daemon did not apply a WAL fence in time (is `cdc-worker run` running?): \
                     differences are counted as they are, some may be changes still in flight"
                );
                self.unsettled = true;
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}
