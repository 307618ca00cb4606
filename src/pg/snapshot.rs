//! Postgres snapshots (`pg_current_snapshot()`), read as text and judged in Rust, so the
//! 64-bit xid arithmetic (epochs, wraparound) is tested on its own. Apply waits on them
//! (`apply::visibility`); the covered set and the passes over every product keep one to
//! decide which streamed transactions a recompute already read.

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
