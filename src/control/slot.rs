//! Slot lifecycle and recovery: where streaming may safely start, checked at every start.
//!
//! The invariant (DESIGN.md 6): the slot exists, belongs to this database and pgoutput,
//! and `confirmed_flush_lsn <= stored checkpoint <= the server's current WAL position`.
//! Anything else (the slot missing after a failover or a restore, lost to
//! max_slot_wal_keep_size, advanced by someone else; a checkpoint copied from another
//! server) means changes may be missing between the two positions. Streaming on would
//! never see them, so the worker says why in one log line and recomputes every product
//! (enqueueing the tags of rows that changed) before it streams from the slot.
//!
//! Recovery is durable: a "recompute pending" mark is written to the checkpoint row
//! before the slot is touched, and cleared only in the transaction that stores the new
//! checkpoint after the last recomputed page. A crash anywhere in between finds the mark
//! at the next start (of `run` or `setup`) and does the recompute again.

use std::time::Instant;

use anyhow::Context;
use pgwire_replication::Lsn;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::apply::Applier;
use crate::config::Config;
use crate::error::definite;
use crate::failpoints::{self, crash_point};
use crate::pg::server;
use crate::pg::sql::qualified;
use crate::state::{self, checkpoint};

/// Why every product is recomputed before streaming; the label of
/// `cdc_slot_recovered_total{reason}` and the text of the durable mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// `setup` on a database without a checkpoint: the first backfill.
    Setup,
    /// The slot does not exist but a checkpoint does: a failover to a server without a
    /// copy of the slot, a restore, a provider dropping idle slots.
    Missing,
    /// Postgres invalidated the slot (its WAL was removed).
    Lost,
    /// The slot confirmed more than was applied: something else advanced it.
    SlotAhead,
    /// The checkpoint is beyond the server's WAL: the database was restored or moved.
    CheckpointAhead,
    /// A recompute that had begun (its mark says why) did not finish.
    Resumed(String),
}

impl Reason {
    pub fn label(&self) -> &str {
        match self {
            Reason::Setup => "setup",
            Reason::Missing => "missing",
            Reason::Lost => "lost",
            Reason::SlotAhead => "slot_ahead",
            Reason::CheckpointAhead => "checkpoint_ahead",
            Reason::Resumed(_) => "resumed",
        }
    }

    fn explain(&self) -> String {
        match self {
            Reason::Setup => "first backfill".into(),
            Reason::Missing => "the replication slot does not exist although a checkpoint does \
                (a failover to a server without the slot, a restore, or the slot was dropped)"
                .into(),
            Reason::Lost => "the replication slot is lost: Postgres removed WAL it still needed \
                (max_slot_wal_keep_size)"
                .into(),
            Reason::SlotAhead => "invariant violated: the slot's confirmed_flush_lsn is ahead of \
                the stored checkpoint (another consumer or pg_replication_slot_advance moved it)"
                .into(),
            Reason::CheckpointAhead => "invariant violated: the stored checkpoint is ahead of the \
                server's current WAL position (the database was restored, copied or failed over)"
                .into(),
            Reason::Resumed(why) => {
                format!("a recompute begun earlier ({why}) did not finish (crash or stop)")
            }
        }
    }
}

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotRow {
    pub plugin: Option<String>,
    pub kind: String,
    /// The slot's database is the one we are connected to.
    pub in_this_database: bool,
    pub database: Option<String>,
    pub lost: bool,
    pub confirmed_flush: Option<Lsn>,
    /// The walsender streaming it, if any.
    pub active_pid: Option<i32>,
}

/// Everything the start-up decision reads, in one place so it can be tested as data.
#[derive(Debug, Clone)]
pub struct Observed {
    pub slot: Option<SlotRow>,
    pub checkpoint: Option<Lsn>,
    /// The durable "recompute pending" mark.
    pub pending: Option<String>,
    pub server_lsn: Lsn,
}

/// What to do before streaming.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// All invariants hold: stream from the checkpoint.
    Stream(Lsn),
    /// Recompute every product first; `recreate`: the slot must be (re)created.
    Recompute { reason: Reason, recreate: bool },
    /// `run` on a database `setup` never prepared.
    NotSetUp,
}

/// The start-up decision. `setup`: called by `cdc-worker setup`, which may do the first
/// backfill; `run` refuses a database without any checkpoint instead.
pub fn decide(o: &Observed, setup: bool) -> Decision {
    // A slot whose confirmed position is beyond the server's WAL (restored from a file
    // copy) cannot be streamed from either.
    let recreate = match &o.slot {
        None => true,
        Some(s) => s.lost || s.confirmed_flush.is_none_or(|c| c > o.server_lsn),
    };
    let recompute = |reason| Decision::Recompute { reason, recreate };
    if let Some(why) = &o.pending {
        return recompute(Reason::Resumed(why.clone()));
    }
    let Some(checkpoint) = o.checkpoint else {
        return if setup {
            recompute(Reason::Setup)
        } else {
            Decision::NotSetUp
        };
    };
    match &o.slot {
        None => recompute(Reason::Missing),
        Some(s) if s.lost => recompute(Reason::Lost),
        _ if checkpoint > o.server_lsn => recompute(Reason::CheckpointAhead),
        Some(s) if s.confirmed_flush.is_some_and(|c| c > checkpoint) => {
            recompute(Reason::SlotAhead)
        }
        _ => Decision::Stream(checkpoint),
    }
}

/// Where to stream from, and the recovery that came first, if any.
#[derive(Debug)]
pub struct Start {
    pub lsn: Lsn,
    pub recovered: Option<Recovered>,
}

#[derive(Debug)]
pub struct Recovered {
    pub reason: Reason,
    pub recreated: bool,
}

/// How `prepare` is called.
pub struct Mode {
    /// `cdc-worker setup` (may do the first backfill) rather than `run`.
    pub setup: bool,
    /// Enqueue the cache tags of rows the recompute changes. False only for a summary
    /// table `setup` has just created: no page can have cached it.
    pub tags: bool,
}

/// Checks the start-up invariants and, when one fails, recovers before returning the LSN
/// to stream from. The caller holds the leader lock on the applier's connection, so no one
/// else touches the slot meanwhile; the recompute runs on that connection too.
pub async fn prepare(cfg: &Config, applier: &mut Applier, mode: Mode) -> anyhow::Result<Start> {
    let client = applier.client();
    let observed = observe(client, cfg).await?;
    if let Some(slot) = &observed.slot {
        check_ours(slot, cfg)?;
    }
    let (reason, recreate) = match decide(&observed, mode.setup) {
        Decision::Stream(lsn) => {
            end_stale_walsender(client, cfg, &observed).await?;
            return Ok(Start {
                lsn,
                recovered: None,
            });
        }
        Decision::NotSetUp => return Err(definite(state::not_set_up(cfg))),
        Decision::Recompute { reason, recreate } => (reason, recreate),
    };
    let show = |l: Option<Lsn>| l.map(|l| l.to_string()).unwrap_or_else(|| "none".into());
    if recreate && reason != Reason::Setup && !cfg.recover_lost_slot {
        return Err(definite(format!(
            "{} (slot {}). Fix: set recover_lost_slot = true (the default) for one start of \
             `run` or `setup`, to let the worker recreate the slot and recompute every product",
            reason.explain(),
            cfg.slot
        )));
    }
    let fields = (
        show(observed.checkpoint),
        show(observed.slot.as_ref().and_then(|s| s.confirmed_flush)),
        observed.server_lsn.to_string(),
    );
    if reason == Reason::Setup {
        tracing::info!(slot = %cfg.slot, "no checkpoint yet: creating the slot and backfilling the summary");
    } else {
        tracing::error!(
            slot = %cfg.slot,
            reason = reason.label(),
            checkpoint = %fields.0,
            slot_confirmed_flush = %fields.1,
            server_lsn = %fields.2,
            recreate_slot = recreate,
            "{}: changes may be missing; recomputing every product before streaming",
            reason.explain()
        );
    }
    // Durable before anything changes: a crash from here on resumes the recompute.
    checkpoint::mark(client, cfg, reason.label()).await?;
    crash_point(failpoints::RECOMPUTE_MARKED);
    if recreate {
        end_stale_walsender(client, cfg, &observed).await?;
        if observed.slot.is_some() {
            client
                .execute("SELECT pg_drop_replication_slot($1)", &[&cfg.slot])
                .await
                .with_context(|| format!("dropping replication slot {}", cfg.slot))?;
            crash_point(failpoints::SLOT_DROPPED);
        }
        create(client, cfg).await?;
        crash_point(failpoints::SLOT_RECREATED);
    }
    let lsn = confirmed_flush(client, cfg).await?;
    let what = if reason == Reason::Setup {
        "backfill"
    } else {
        "recompute"
    };
    recompute(cfg, applier, lsn, mode.tags, what).await?;
    if reason != Reason::Setup {
        tracing::info!(slot = %cfg.slot, from = %lsn, reason = reason.label(), "recovered: every product recomputed; streaming from the slot");
    }
    Ok(Start {
        lsn,
        recovered: Some(Recovered {
            reason,
            recreated: recreate,
        }),
    })
}

/// Recomputes every product and, with the last page, stores `lsn` as the checkpoint and
/// clears the recompute mark (one transaction). Everything committed before the slot's
/// start is read (after waiting for it to be visible); everything after is streamed.
async fn recompute(
    cfg: &Config,
    applier: &mut Applier,
    lsn: Lsn,
    tags: bool,
    what: &str,
) -> anyhow::Result<()> {
    crate::apply::visibility::wait_settled(applier.client()).await?;
    let total: i64 = applier
        .client()
        .query_one(
            &format!(
                "SELECT count(*) FROM {}",
                qualified(&cfg.tables.schema, &cfg.tables.product)
            ),
            &[],
        )
        .await?
        .get(0);
    tracing::info!(products = total, "{what} of the summary");
    let started = Instant::now();
    let mut last_report = Instant::now();
    let applied = applier
        .recompute_all(lsn, tags, |done| {
            crash_point(failpoints::RECOMPUTE_PAGE);
            if last_report.elapsed().as_secs() >= 2 {
                last_report = Instant::now();
                let pct = if total > 0 {
                    100.0 * done as f64 / total as f64
                } else {
                    100.0
                };
                tracing::info!(done, total, "{what} {pct:.0}%");
            }
        })
        .await?;
    tracing::info!(
        products = applied.products,
        inserted = applied.inserted,
        updated = applied.updated,
        deleted = applied.deleted,
        tags = applied.tags,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
        "{what} done"
    );
    Ok(())
}

/// Reads the slot, the checkpoint with its mark, and the server's WAL position.
async fn observe(client: &Client, cfg: &Config) -> anyhow::Result<Observed> {
    let slot = client
        .query_opt(
            "SELECT plugin::text, slot_type::text, database::text, \
                    wal_status IS NOT DISTINCT FROM 'lost', confirmed_flush_lsn, active_pid, \
                    database IS NOT DISTINCT FROM current_database() \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.slot],
        )
        .await?
        .map(|r| SlotRow {
            plugin: r.get(0),
            kind: r.get(1),
            database: r.get(2),
            lost: r.get(3),
            confirmed_flush: r.get::<_, Option<PgLsn>>(4).map(|l| Lsn(u64::from(l))),
            active_pid: r.get(5),
            in_this_database: r.get(6),
        });
    let stored = checkpoint::read_with_mark(client, cfg).await?;
    let server: PgLsn = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                    ELSE pg_current_wal_lsn() END",
            &[],
        )
        .await?
        .get(0);
    Ok(Observed {
        slot,
        checkpoint: stored.lsn,
        pending: stored.recompute_reason,
        server_lsn: Lsn(u64::from(server)),
    })
}

/// A slot of this name that is not a pgoutput slot of this database is someone else's:
/// never drop, recreate or stream it.
fn check_ours(slot: &SlotRow, cfg: &Config) -> anyhow::Result<()> {
    if slot.kind != "logical" || slot.plugin.as_deref() != Some("pgoutput") {
        return Err(definite(format!(
            "replication slot {} exists but is a {} slot for plugin {}, not pgoutput, so it is \
             not this worker's. Fix: choose another name with CDC_SLOT, or drop it: \
             SELECT pg_drop_replication_slot('{}')",
            cfg.slot,
            slot.kind,
            slot.plugin.as_deref().unwrap_or("none"),
            cfg.slot
        )));
    }
    if !slot.in_this_database {
        return Err(definite(format!(
            "replication slot {} belongs to database {}, not this one, so it is not this \
             worker's. Fix: choose another name with CDC_SLOT",
            cfg.slot,
            slot.database.as_deref().unwrap_or("none")
        )));
    }
    Ok(())
}

/// A walsender still streaming our slot while we hold the leader lock belongs to a
/// previous leader whose connection died without the server noticing (a half-open TCP
/// connection): it would keep the slot busy until wal_sender_timeout. Holding the lock
/// proves that leader is gone, so end it.
async fn end_stale_walsender(
    client: &Client,
    cfg: &Config,
    observed: &Observed,
) -> anyhow::Result<()> {
    let Some(pid) = observed.slot.as_ref().and_then(|s| s.active_pid) else {
        return Ok(());
    };
    // Only a walsender of ours: another tool streaming the slot is refused later with
    // "slot is active", which says what is wrong.
    let ended = client
        .query_opt(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_replication \
             WHERE pid = $1 AND application_name LIKE 'cdc-worker/%'",
            &[&pid],
        )
        .await?
        .is_some_and(|r| r.get::<_, bool>(0));
    if !ended {
        return Ok(());
    }
    tracing::warn!(
        slot = %cfg.slot,
        pid,
        "the slot was still streamed by a walsender of a previous leader (a dead connection the server had not noticed); ended it"
    );
    Ok(())
}

/// Creates the slot (through SQL, before the recompute reads anything: every change
/// committed after its consistent point is streamed, everything before it is read by the
/// recompute, which waits for it to be visible first). From Postgres 17 on it is a
/// failover slot (`failover_slot`, on by default), which the server synchronizes to
/// physical standbys that have `sync_replication_slots` on, so a promoted standby has it.
pub async fn create(client: &Client, cfg: &Config) -> anyhow::Result<Lsn> {
    // 17+: a failover slot is synchronized to standbys that ask for it, so it survives
    // their promotion (arguments: name, plugin, temporary, two_phase, failover).
    let failover = cfg.failover_slot && server::supports_failover_slots(client).await?;
    let sql = if failover {
        "SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
    } else {
        "SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')"
    };
    let lsn: PgLsn = client
        .query_one(sql, &[&cfg.slot])
        .await
        .with_context(|| format!("creating replication slot {}", cfg.slot))?
        .get(0);
    let lsn = Lsn(u64::from(lsn));
    tracing::info!(slot = %cfg.slot, %lsn, failover, "created the replication slot");
    Ok(lsn)
}

async fn confirmed_flush(client: &Client, cfg: &Config) -> anyhow::Result<Lsn> {
    let lsn: Option<PgLsn> = client
        .query_opt(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.slot],
        )
        .await?
        .and_then(|r| r.get(0));
    lsn.map(|l| Lsn(u64::from(l))).ok_or_else(|| {
        anyhow::anyhow!(
            "replication slot {} vanished during recovery; will retry",
            cfg.slot
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(confirmed: u64) -> SlotRow {
        SlotRow {
            plugin: Some("pgoutput".into()),
            kind: "logical".into(),
            database: Some("shop".into()),
            in_this_database: true,
            lost: false,
            confirmed_flush: Some(Lsn(confirmed)),
            active_pid: None,
        }
    }

    fn observed(slot: Option<SlotRow>, checkpoint: Option<u64>, server: u64) -> Observed {
        Observed {
            slot,
            checkpoint: checkpoint.map(Lsn),
            pending: None,
            server_lsn: Lsn(server),
        }
    }

    fn recompute(reason: Reason, recreate: bool) -> Decision {
        Decision::Recompute { reason, recreate }
    }

    #[test]
    fn streams_when_every_invariant_holds() {
        assert_eq!(
            decide(&observed(Some(slot(100)), Some(150), 200), false),
            Decision::Stream(Lsn(150))
        );
        assert_eq!(
            decide(&observed(Some(slot(150)), Some(150), 150), false),
            Decision::Stream(Lsn(150))
        );
    }

    #[test]
    fn every_violation_recomputes() {
        assert_eq!(
            decide(&observed(None, Some(150), 200), false),
            recompute(Reason::Missing, true)
        );
        let mut lost = slot(100);
        lost.lost = true;
        assert_eq!(
            decide(&observed(Some(lost), Some(150), 200), false),
            recompute(Reason::Lost, true)
        );
        assert_eq!(
            decide(&observed(Some(slot(180)), Some(150), 200), false),
            recompute(Reason::SlotAhead, false)
        );
        assert_eq!(
            decide(&observed(Some(slot(100)), Some(300), 200), false),
            recompute(Reason::CheckpointAhead, false)
        );
        // A slot beyond the server's WAL cannot be streamed from either.
        assert_eq!(
            decide(&observed(Some(slot(250)), Some(300), 200), false),
            recompute(Reason::CheckpointAhead, true)
        );
    }

    #[test]
    fn a_pending_mark_always_resumes() {
        let mut o = observed(Some(slot(100)), Some(100), 200);
        o.pending = Some("lost".into());
        assert_eq!(
            decide(&o, false),
            recompute(Reason::Resumed("lost".into()), false)
        );
        // Crashed after the drop, before the create.
        o.slot = None;
        assert_eq!(
            decide(&o, false),
            recompute(Reason::Resumed("lost".into()), true)
        );
    }

    #[test]
    fn no_checkpoint_is_setup_for_setup_and_an_error_for_run() {
        assert_eq!(
            decide(&observed(None, None, 200), false),
            Decision::NotSetUp
        );
        assert_eq!(
            decide(&observed(Some(slot(100)), None, 200), false),
            Decision::NotSetUp
        );
        assert_eq!(
            decide(&observed(None, None, 200), true),
            recompute(Reason::Setup, true)
        );
        assert_eq!(
            decide(&observed(Some(slot(100)), None, 200), true),
            recompute(Reason::Setup, false)
        );
    }
}
