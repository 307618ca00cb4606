//! When may a recompute read the source? Postgres streams a transaction as soon as its
//! commit record is flushed, a moment before other sessions can see its rows (and, with a
//! synchronous standby configured, possibly much longer). A recompute in that moment reads
//! the old rows and, with no later change to the product, keeps them forever. So every
//! read of the source waits here first:
//!
//! - [`wait_visible`]: a batch waits until the snapshot sees each transaction it streamed;
//! - [`wait_settled`]: a full recompute (backfill, recovery) that must cover everything
//!   committed before a slot's start waits until the transactions that were still in the
//!   snapshot's in-progress list when it began have ended.
//!
//! Visibility is judged in Rust from the text form of `pg_current_snapshot()`
//! ([`crate::pg::snapshot`]), so the epoch arithmetic is tested on its own.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::GenericClient;

use crate::pg::snapshot::{current, current_seen, Seen};

/// Waits until a new statement's snapshot sees every one of `xids` (transactions that
/// were streamed, so have committed); returns that snapshot with its WAL bound (`None`
/// without xids). Every later statement of the session sees at least as much.
pub async fn wait_visible(
    client: &impl GenericClient,
    xids: &[u32],
) -> anyhow::Result<Option<Seen>> {
    if xids.is_empty() {
        return Ok(None);
    }
    let started = Instant::now();
    let mut warned = false;
    loop {
        // Freshly taken, the snapshot places every streamed xid in the right epoch (they
        // have committed, so they were alive within 2^31 xids of now).
        let seen = current_seen(client).await?;
        let snap = &seen.snapshot;
        let pending = xids.iter().filter(|&&x| !snap.sees(snap.xid8(x))).count();
        if pending == 0 {
            return Ok(Some(seen));
        }
        if !warned && started.elapsed() > Duration::from_secs(5) {
            tracing::warn!(
                invisible = pending,
                "transactions already streamed are still not visible after 5 s \
                 (a commit waiting for synchronous replication?); waiting"
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How long a transaction may stay "in progress" in the commit log before it is taken to
/// commit later. A commit record is followed by the commit-log update within microseconds
/// in the same backend; a transaction still in progress this long after the snapshot was
/// taken commits after the slot's start, and is streamed.
const STILL_RUNNING: Duration = Duration::from_secs(2);

/// Before a full recompute that must cover everything committed up to a slot's start:
/// a transaction committed just before that point may still be invisible (the window
/// [`wait_visible`] closes for streamed ones), yet it will never be streamed. Takes a
/// snapshot now (after the slot's start is fixed) and waits until each transaction in its
/// in-progress list is visible, aborted, or still running after [`STILL_RUNNING`] (then it
/// commits later and is streamed). Never waits on a long transaction that has not
/// committed.
pub async fn wait_settled(client: &impl GenericClient) -> anyhow::Result<()> {
    let snap = current(client).await?;
    if snap.xip.is_empty() {
        return Ok(());
    }
    let xip: Vec<String> = snap.xip.iter().map(u64::to_string).collect();
    let started = Instant::now();
    let mut warned = false;
    loop {
        // Committed but not yet visible, or in progress (might be a commit mid-way).
        let rows = client
            .query(
                "SELECT pg_xact_status(x) FROM unnest($1::text[]::xid8[]) AS x \
                 WHERE NOT pg_visible_in_snapshot(x, pg_current_snapshot()) \
                   AND pg_xact_status(x) IS DISTINCT FROM 'aborted'",
                &[&xip],
            )
            .await
            .context("waiting for transactions in progress at the recompute's start")?;
        let committed = rows
            .iter()
            .filter(|r| r.get::<_, Option<String>>(0).as_deref() == Some("committed"))
            .count();
        if rows.is_empty() || (committed == 0 && started.elapsed() >= STILL_RUNNING) {
            return Ok(());
        }
        if !warned && committed > 0 && started.elapsed() > Duration::from_secs(5) {
            tracing::warn!(
                invisible = committed,
                "committed transactions are still not visible after 5 s \
                 (waiting for synchronous replication?); waiting before the recompute reads"
            );
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
