//! Postgres snapshots (`pg_current_snapshot()`), read as text and judged in Rust, so the
//! 64-bit xid arithmetic (epochs, wraparound) is tested on its own. Apply waits on them
//! (`apply::visibility`); the covered set and the passes over every product keep one
//! ([`Seen`]) to decide which streamed transactions a recompute already read.

use pgwire_replication::Lsn;
use tokio_postgres::types::PgLsn;
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

/// A snapshot kept to judge transactions that are streamed later, and the WAL position
/// that bounds what it may judge.
///
/// pgoutput sends 32-bit xids, and [`Snapshot::xid8`] places one in the epoch nearest the
/// snapshot's `xmax`: right for any transaction that was alive within 2^31 xids of the
/// snapshot, wrong for one that began 2^31 or more xids later (days at a few thousand
/// writes a second), which it maps to the previous epoch and judges seen, dropping its
/// changes. A snapshot kept for a whole session outlives that. So the snapshot carries
/// `wal`, the server's WAL insert position read right after it was taken: a transaction it
/// sees committed before, so its commit record begins below `wal`. A transaction whose
/// commit record (pgoutput's Begin `final_lsn`) is at or past `wal` committed later and
/// was not seen, whatever its xid; and the stream delivers commits in WAL order, so once
/// one such transaction arrived the snapshot can judge nothing more ([`Seen::passed_by`]).
/// A transaction below `wal` was alive when the snapshot was taken (wraparound protection
/// keeps every live xid within 2^31 of the next), which is where `xid8` is right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub snapshot: Snapshot,
    /// `pg_current_wal_insert_lsn()`, read in the statement that took the snapshot.
    pub wal: Lsn,
}

impl Seen {
    /// Whether transaction `xid`, whose commit record begins at `commit_lsn`, is visible
    /// to the snapshot (`pg_visible_in_snapshot`, for a transaction known to have ended).
    pub fn saw(&self, xid: u32, commit_lsn: Lsn) -> bool {
        !self.passed_by(commit_lsn) && self.snapshot.sees(self.snapshot.xid8(xid))
    }

    /// Whether the snapshot saw every one of a batch's transactions, `last_commit` the
    /// commit LSN of the newest (commits are streamed in WAL order, so it bounds them all).
    /// Nothing proves nothing: no transactions is false.
    pub fn saw_all(&self, xids: &[u32], last_commit: Option<Lsn>) -> bool {
        !xids.is_empty()
            && last_commit.is_some_and(|l| !self.passed_by(l))
            && xids
                .iter()
                .all(|&x| self.snapshot.sees(self.snapshot.xid8(x)))
    }

    /// A transaction committing at `commit_lsn` committed after the snapshot was taken: it,
    /// and every transaction streamed after it, is not seen.
    pub fn passed_by(&self, commit_lsn: Lsn) -> bool {
        commit_lsn >= self.wal
    }
}

/// The current statement's snapshot. Only meaningful at READ COMMITTED or outside a
/// transaction: a REPEATABLE READ snapshot never moves, and a wait on it never ends.
pub async fn current(client: &impl GenericClient) -> anyhow::Result<Snapshot> {
    Ok(current_seen(client).await?.snapshot)
}

/// [`current`] with the WAL position that bounds it ([`Seen`]). The select list is
/// evaluated after the statement's snapshot was taken, so every transaction the snapshot
/// sees has its commit record below the position read.
pub async fn current_seen(client: &impl GenericClient) -> anyhow::Result<Seen> {
    let row = client
        .query_one(
            "SELECT pg_current_snapshot()::text, pg_current_wal_insert_lsn()",
            &[],
        )
        .await?;
    let text: String = row.get(0);
    let wal: PgLsn = row.get(1);
    Ok(Seen {
        snapshot: Snapshot::parse(&text)?,
        wal: Lsn(u64::from(wal)),
    })
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

    /// A snapshot with WAL insert position 1000.
    fn seen(xmin: u64, xmax: u64, xip: Vec<u64>) -> Seen {
        Seen {
            snapshot: Snapshot { xmin, xmax, xip },
            wal: Lsn(1000),
        }
    }

    #[test]
    fn a_transaction_committed_past_the_bound_was_not_seen() {
        // xid 5 of epoch 1: seen if it committed before the snapshot...
        let s = seen(EPOCH + 10, EPOCH + 20, vec![EPOCH + 15]);
        assert!(s.saw(5, Lsn(999)));
        // ...and the same 32 bits 2^32 xids later (epoch 2), committed long after: the
        // nearest-epoch rule alone maps it back to epoch 1 and says seen.
        assert!(s.snapshot.sees(s.snapshot.xid8(5)), "what xid8 alone says");
        assert!(!s.saw(5, Lsn(1000)));
        assert!(!s.saw(5, Lsn(5000)));
        assert!(s.passed_by(Lsn(1000)) && !s.passed_by(Lsn(999)));
        // A batch: every xid seen and the newest commit below the bound.
        assert!(s.saw_all(&[5, 12], Some(Lsn(900))));
        assert!(!s.saw_all(&[5, 12], Some(Lsn(1000))));
        assert!(!s.saw_all(&[5, 15], Some(Lsn(900))), "15 was in progress");
        assert!(
            !s.saw_all(&[], Some(Lsn(900))),
            "no transactions prove nothing"
        );
        assert!(!s.saw_all(&[5], None));
    }

    /// Where a snapshot's xmax lies: anywhere, or just around an epoch boundary (the
    /// low 32 bits about to wrap, or just wrapped).
    fn xmax_near_a_boundary() -> impl Strategy<Value = u64> {
        (
            0u64..6,
            prop_oneof![0u64..2000, EPOCH - 2000..EPOCH, 0u64..EPOCH],
        )
            .prop_map(|(epoch, low)| (epoch * EPOCH + low).max(3))
    }

    proptest! {
        /// Over the epoch boundary: a transaction that committed after the snapshot was
        /// taken (its commit record at or past the bound) is never judged seen, whatever
        /// its xid: one still in progress then, one begun just after, or one begun 2^31 to
        /// 2^34 xids later, whose low 32 bits `xid8` alone maps into the snapshot's epoch
        /// or the one before it (the bug of issue 18).
        #[test]
        fn later_commits_are_never_seen(
            xmax in xmax_near_a_boundary(),
            span in 0u64..1000,
            later in prop_oneof![0u64..1000, (1u64 << 31) - 1000..(1u64 << 34)],
            in_progress in any::<bool>(),
            wal in 1u64..(1 << 40),
            past in 0u64..(1 << 20),
        ) {
            let xmin = xmax.saturating_sub(span).max(3);
            let xip: Vec<u64> = if xmin < xmax { vec![xmin] } else { vec![] };
            let xid8 = match xip.first() {
                Some(&x) if in_progress => x,
                _ => xmax + later,
            };
            let s = Seen { snapshot: Snapshot { xmin, xmax, xip }, wal: Lsn(wal) };
            prop_assert!(!s.saw(xid8 as u32, Lsn(wal + past)));
            prop_assert!(!s.saw_all(&[xid8 as u32], Some(Lsn(wal + past))));
        }

        /// A transaction that committed before the snapshot was taken (its xid then within
        /// 2^31 of xmax) is judged exactly as `pg_visible_in_snapshot` judges its xid8, on
        /// both sides of an epoch boundary.
        #[test]
        fn earlier_commits_are_judged_by_the_snapshot(
            xmax in xmax_near_a_boundary(),
            span in 0u64..1000,
            delta in -(1i64 << 31) + 1..(1i64 << 31),
            wal in 1u64..(1 << 40),
            before in 1u64..(1 << 20),
        ) {
            let xid8 = xmax as i64 + delta;
            prop_assume!(xid8 >= 3);
            let xmin = xmax.saturating_sub(span).max(3);
            let xip: Vec<u64> = (xmin..xmax).step_by(7).collect();
            let s = Seen { snapshot: Snapshot { xmin, xmax, xip }, wal: Lsn(wal) };
            let commit = Lsn(wal.saturating_sub(before));
            prop_assume!(commit < s.wal);
            prop_assert_eq!(s.saw(xid8 as u32, commit), s.snapshot.sees(xid8 as u64));
        }

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
