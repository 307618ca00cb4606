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
//! Visibility is decided here, in Rust, from the text form of `pg_current_snapshot()`
//! (`xmin:xmax:xip,...`, 64-bit xids), so the epoch arithmetic can be tested on its own.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::GenericClient;

/// A `pg_snapshot`: every xid below `xmin` has ended, none at or above `xmax` had, and
/// `xip` lists the ones in between still in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Parses `pg_snapshot`'s text form.
    pub fn parse(text: &str) -> anyhow::Result<Snapshot> {
        let bad = || anyhow::anyhow!("unexpected pg_snapshot text {text:?}");
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let xmax = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let xip = match parts.next().ok_or_else(bad)? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().map_err(|_| bad()))
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(Snapshot { xmin, xmax, xip })
    }

    /// The 64-bit form of a 32-bit xid as pgoutput sends it. The epoch is not on the wire;
    /// a live xid is always within 2^31 of the current one (wraparound protection keeps it
    /// so), so it is the xid8 with these low bits nearest to `xmax`. A streamed xid may be
    /// at or above `xmax` (its commit is flushed but not yet visible, and an older
    /// transaction still holds `xmax` back), so "nearest", not "at or below".
    pub fn xid8(&self, xid: u32) -> u64 {
        const EPOCH: u64 = 1 << 32;
        const HALF: u64 = 1 << 31;
        let candidate = (self.xmax & !(EPOCH - 1)) | u64::from(xid);
        if candidate > self.xmax.saturating_add(HALF) && candidate >= EPOCH {
            candidate - EPOCH
        } else if candidate.saturating_add(HALF) < self.xmax {
            candidate + EPOCH
        } else {
            candidate
        }
    }

    /// `pg_visible_in_snapshot` for a transaction known to have ended.
    pub fn sees(&self, xid8: u64) -> bool {
        xid8 < self.xmin || (xid8 < self.xmax && !self.xip.contains(&xid8))
    }
}

/// The current statement's snapshot. Only meaningful at READ COMMITTED or outside a
/// transaction: a REPEATABLE READ snapshot never moves, and a wait on it never ends.
pub async fn current(client: &impl GenericClient) -> anyhow::Result<Snapshot> {
    let text: String = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await?
        .get(0);
    Snapshot::parse(&text)
}

/// Waits until a new statement's snapshot sees every one of `xids` (transactions that
/// were streamed, so have committed); returns that snapshot (`None` without xids). Every
/// later statement of the session sees at least as much.
pub async fn wait_visible(
    client: &impl GenericClient,
    xids: &[u32],
) -> anyhow::Result<Option<Snapshot>> {
    if xids.is_empty() {
        return Ok(None);
    }
    let started = Instant::now();
    let mut warned = false;
    loop {
        let snap = current(client).await?;
        let pending = xids.iter().filter(|&&x| !snap.sees(snap.xid8(x))).count();
        if pending == 0 {
            return Ok(Some(snap));
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EPOCH: u64 = 1 << 32;

    #[test]
    fn parses_snapshot_text() {
        assert_eq!(
            Snapshot::parse("10:20:12,15").unwrap(),
            Snapshot {
                xmin: 10,
                xmax: 20,
                xip: vec![12, 15]
            }
        );
        assert_eq!(Snapshot::parse("7:7:").unwrap().xip, Vec::<u64>::new());
        assert!(Snapshot::parse("7:x:").is_err());
        assert!(Snapshot::parse("7").is_err());
    }

    #[test]
    fn visibility_follows_pg_visible_in_snapshot() {
        let s = Snapshot::parse("10:20:12,15").unwrap();
        assert!(s.sees(9));
        assert!(s.sees(11));
        assert!(!s.sees(12));
        assert!(!s.sees(20));
        assert!(!s.sees(21));
    }

    #[test]
    fn an_xid_just_above_xmax_in_epoch_1_stays_in_epoch_1() {
        // The bug this replaces: xid 760 streamed while an older transaction holds xmax at
        // 1:750 was mapped to epoch 0 and judged visible.
        let s = Snapshot {
            xmin: EPOCH + 740,
            xmax: EPOCH + 750,
            xip: vec![EPOCH + 745],
        };
        assert_eq!(s.xid8(760), EPOCH + 760);
        assert!(!s.sees(s.xid8(760)));
        assert_eq!(s.xid8(749), EPOCH + 749);
        assert!(s.sees(s.xid8(749)));
    }

    #[test]
    fn epoch_boundaries() {
        // xmax just past a wrap: an old xid near u32::MAX is from the previous epoch.
        let s = Snapshot {
            xmin: EPOCH + 3,
            xmax: EPOCH + 5,
            xip: vec![],
        };
        assert_eq!(s.xid8(u32::MAX), EPOCH - 1);
        // xmax just before a wrap: a new xid past it is in the next epoch.
        let s = Snapshot {
            xmin: 2 * EPOCH - 10,
            xmax: 2 * EPOCH - 5,
            xip: vec![],
        };
        assert_eq!(s.xid8(3), 2 * EPOCH + 3);
        // Epoch 0 never maps below zero.
        let s = Snapshot {
            xmin: 3,
            xmax: 5,
            xip: vec![],
        };
        assert_eq!(s.xid8(u32::MAX - 2), u64::from(u32::MAX - 2));
    }

    proptest! {
        /// Any xid8 within 2^31 of xmax (in either direction) maps back to itself from its
        /// low 32 bits, at any epoch.
        #[test]
        fn xid8_round_trips_near_xmax(epoch in 0u64..1000, low in 0u64..EPOCH, delta in -(1i64 << 31) + 1..(1i64 << 31)) {
            let xmax = epoch * EPOCH + low;
            let xid8 = xmax as i64 + delta;
            prop_assume!(xid8 >= 3);
            let s = Snapshot { xmin: xmax.saturating_sub(1), xmax, xip: vec![] };
            prop_assert_eq!(s.xid8(xid8 as u32), xid8 as u64);
        }
    }
}
