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
//!
//! Two more facts are checked against what the checkpoint recorded with the last
//! recompute ([`checkpoint::Stamp`]): the definition of a summary row (the query, the
//! currency, the columns, the id types; DESIGN.md 9) and the server (system identifier and
//! timeline; DESIGN.md 12). Another definition recomputes every product; another server
//! means a failover or restore may have lost writes that pages were already rendered from,
//! which no recompute can see (source and summary agree on the older value), so every
//! product's tags are sent with the recompute. So are they on every recovery below that
//! may hide such a loss (see [`Reason::expires_every_page`]).

use std::time::Instant;

use anyhow::Context;
use pgwire_replication::Lsn;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::apply::{Applier, TagMode};
use crate::config::Config;
use crate::error::definite;
use crate::failpoints::{self, crash_point};
use crate::pg::server::{self, ServerId, SlotRow};
use crate::pg::sql::qualified;
use crate::shop::definition::Definition;
use crate::state;
use crate::state::checkpoint::{self, Stamp};

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
    /// What defines a summary row changed (what, for the log), or none was recorded.
    DefinitionChanged(String),
    /// The server is another one, or on another timeline, than the checkpoint recorded.
    ServerChanged { stored: ServerId, now: ServerId },
    /// A source table was missing from the publication (`control::guard`): its changes
    /// were not streamed. Only ever the text of a mark, so only ever resumed.
    PublicationChanged,
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
            Reason::DefinitionChanged(_) => "definition_changed",
            Reason::ServerChanged { .. } => "server_changed",
            Reason::PublicationChanged => "publication_changed",
            Reason::Resumed(_) => "resumed",
        }
    }

    /// Whether the recompute sends the tags of every product, not only of the rows it
    /// changes. The pages of a shop show what the summary held when they were rendered.
    /// After a failover or a restore the database may have lost writes the worker had
    /// applied and revalidated: source and summary then agree on the older value, the
    /// recompute changes nothing, and a page would show the lost value for as long as it
    /// is cached. Every recovery of the slot or checkpoint may be such a case (a missing
    /// slot is what a failover to a server without it looks like), so all of them expire
    /// every page. A changed definition, a table missing from the publication and the
    /// first backfill lose no write: the summary holds what the pages show, and the rows
    /// that change get their tags.
    pub fn expires_every_page(&self) -> bool {
        match self {
            Reason::Resumed(label) => !matches!(
                label.as_str(),
                "setup" | "definition_changed" | "publication_changed"
            ),
            Reason::Setup | Reason::DefinitionChanged(_) | Reason::PublicationChanged => false,
            _ => true,
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
            Reason::DefinitionChanged(what) => format!(
                "the definition of a summary row changed since the last recompute ({what}): \
                 rows computed before keep the old definition"
            ),
            Reason::ServerChanged { stored, now } => format!(
                "the server is not the one the checkpoint was written on ({stored} -> {now}): \
                 a failover or restore may have lost writes whose pages are cached"
            ),
            Reason::PublicationChanged => "a source table was missing from the publication, \
                so its changes were not streamed"
                .into(),
            Reason::Resumed(why) => format!(
                "a recompute owed since an earlier start ({why}) has not finished (a crash, a \
                 stop, or a stop until something was fixed)"
            ),
        }
    }
}

/// Everything the start-up decision reads, in one place so it can be tested as data.
#[derive(Debug, Clone)]
pub struct Observed {
    pub slot: Option<SlotRow>,
    pub checkpoint: Option<Lsn>,
    /// The durable "recompute pending" mark.
    pub pending: Option<String>,
    pub server_lsn: Lsn,
    /// What differs between the definition recorded with the checkpoint and this
    /// configuration's (`None`: nothing, or no checkpoint yet).
    pub definition_change: Option<String>,
    /// The server recorded with the checkpoint and the current one, when they differ.
    pub server_change: Option<(ServerId, ServerId)>,
}

/// What to do before streaming.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// All invariants hold: stream from the checkpoint.
    Stream(Lsn),
    /// Recompute every product first; `recreate`: the slot must be (re)created;
    /// `every_page`: send the tags of every product, not only of rows that change.
    Recompute {
        reason: Reason,
        recreate: bool,
        every_page: bool,
    },
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
    // What is wrong now, whether or not an earlier recompute is still owed: a pending mark
    // decides the reason, but must not hide that this start also needs every page expired
    // (a failover while a definition recompute was unfinished).
    let fresh = o.checkpoint.and_then(|checkpoint| match &o.slot {
        None => Some(Reason::Missing),
        Some(s) if s.lost => Some(Reason::Lost),
        _ if checkpoint > o.server_lsn => Some(Reason::CheckpointAhead),
        Some(s) if s.confirmed_flush.is_some_and(|c| c > checkpoint) => Some(Reason::SlotAhead),
        _ => match (&o.server_change, &o.definition_change) {
            (Some((stored, now)), _) => Some(Reason::ServerChanged {
                stored: *stored,
                now: *now,
            }),
            (None, Some(what)) => Some(Reason::DefinitionChanged(what.clone())),
            (None, None) => None,
        },
    });
    let every_page =
        fresh.as_ref().is_some_and(Reason::expires_every_page) || o.server_change.is_some();
    let reason = match (&o.pending, fresh, o.checkpoint) {
        (Some(why), _, _) => Reason::Resumed(why.clone()),
        (None, Some(reason), _) => reason,
        (None, None, Some(checkpoint)) => return Decision::Stream(checkpoint),
        (None, None, None) if setup => Reason::Setup,
        (None, None, None) => return Decision::NotSetUp,
    };
    Decision::Recompute {
        every_page: every_page || reason.expires_every_page(),
        reason,
        recreate,
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
    let (observed, now) = observe(client, cfg, applier.definition()).await?;
    if let Some(slot) = &observed.slot {
        check_ours(slot, cfg)?;
    }
    let (reason, recreate, every_page) = match decide(&observed, mode.setup) {
        Decision::Stream(lsn) => {
            end_stale_walsender(client, cfg, &observed).await?;
            if now.server_unrecorded {
                // A checkpoint of an earlier version: nothing to compare with yet. Expiring
                // every page at every upgrade would be the price of guessing; from now on
                // a change of server is seen.
                checkpoint::record_server(client, cfg, now.stamp.server).await?;
            }
            return Ok(Start {
                lsn,
                recovered: None,
            });
        }
        Decision::NotSetUp => return Err(definite(state::not_set_up(cfg))),
        Decision::Recompute {
            reason,
            recreate,
            every_page,
        } => (reason, recreate, every_page),
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
    let then = if every_page && mode.tags {
        "recomputing every product before streaming, and sending every product's tags (cached pages may show what no longer exists)"
    } else {
        "recomputing every product before streaming"
    };
    let server = observed
        .server_change
        .map(|(stored, now)| format!("{stored} -> {now}"));
    if reason == Reason::Setup {
        tracing::info!(slot = %cfg.slot, "no checkpoint yet: creating the slot and backfilling the summary");
    } else if matches!(reason, Reason::DefinitionChanged(_)) {
        // The operator's own change: expected, but said once, with what changed.
        tracing::warn!(slot = %cfg.slot, reason = reason.label(), "{}; {then}", reason.explain());
    } else {
        tracing::error!(
            slot = %cfg.slot,
            reason = reason.label(),
            checkpoint = %fields.0,
            slot_confirmed_flush = %fields.1,
            server_lsn = %fields.2,
            recreate_slot = recreate,
            server_changed = server.as_deref().unwrap_or("no"),
            "{}: changes may be missing; {then}",
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
    let tags = match (mode.tags, every_page) {
        (false, _) => TagMode::None,
        (true, false) => TagMode::Changed,
        (true, true) => TagMode::Every,
    };
    recompute(cfg, applier, lsn, tags, &now.stamp, what).await?;
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

/// Recomputes every product and, with the last page, stores `lsn` as the checkpoint,
/// records `stamp` and clears the recompute mark (one transaction). Everything committed
/// before the slot's start is read (after waiting for it to be visible); everything after
/// is streamed.
async fn recompute(
    cfg: &Config,
    applier: &mut Applier,
    lsn: Lsn,
    tags: TagMode,
    stamp: &Stamp,
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
        .recompute_all(lsn, tags, stamp, |done| {
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

/// What this start computes with, beside the observed facts.
struct Now {
    /// The definition of this configuration and the current server, recorded by a
    /// recompute's last page.
    stamp: Stamp,
    /// The checkpoint exists but recorded no server (an earlier version wrote it).
    server_unrecorded: bool,
}

/// Reads the slot, the checkpoint with its mark and stamp, the server's WAL position and
/// identity, and compares the recorded definition with `definition`.
///
/// A checkpoint that recorded no definition (a state schema of an earlier version) counts
/// as a changed definition: what the rows were computed with is unknown, and the upgrade
/// may well come with a new query. A recompute that finds nothing to change writes
/// nothing and sends no tag, so the price of being sure is one pass over the catalog at
/// the first start of this version. No recorded server is only recorded
/// ([`prepare`]): a change of server expires every page, which is no price to pay for
/// not knowing.
async fn observe(
    client: &Client,
    cfg: &Config,
    definition: &Definition,
) -> anyhow::Result<(Observed, Now)> {
    let slot = server::slot_row(client, &cfg.slot).await?;
    let stored = checkpoint::read_with_mark(client, cfg).await?;
    let identity = server::identity(client).await?;
    let definition_change = match (&stored.definition, stored.lsn) {
        (Some(recorded), _) => definition.changed_from(recorded),
        (None, Some(_)) => {
            Some("none recorded: the checkpoint was written by an earlier version".into())
        }
        (None, None) => None,
    };
    let observed = Observed {
        slot,
        checkpoint: stored.lsn,
        pending: stored.recompute_reason,
        server_lsn: server::current_wal_lsn(client).await?,
        definition_change,
        server_change: stored
            .server
            .filter(|s| *s != identity)
            .map(|s| (s, identity)),
    };
    let now = Now {
        stamp: Stamp {
            definition: definition.to_json(),
            server: identity,
        },
        server_unrecorded: stored.server.is_none() && stored.lsn.is_some(),
    };
    Ok((observed, now))
}

/// A slot of this name that is not a pgoutput slot of this database is someone else's:
/// never drop, recreate or stream it. `setup` asks before it changes anything.
pub fn check_ours(slot: &SlotRow, cfg: &Config) -> anyhow::Result<()> {
    match slot.not_ours(&cfg.slot) {
        Some(why) => Err(definite(why)),
        None => Ok(()),
    }
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
            definition_change: None,
            server_change: None,
        }
    }

    fn recompute(reason: Reason, recreate: bool) -> Decision {
        Decision::Recompute {
            every_page: reason.expires_every_page(),
            reason,
            recreate,
        }
    }

    const A: ServerId = ServerId {
        system_identifier: 7,
        timeline: 1,
    };
    const B: ServerId = ServerId {
        system_identifier: 7,
        timeline: 2,
    };

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

    /// The metrics export every recovery reason at 0 from the start: the list there
    /// must hold every label a recovery can have here.
    #[test]
    fn every_recovery_reason_is_exported_from_the_start() {
        use crate::ops::metrics::RECOVERY_REASONS;
        let reasons = [
            Reason::Missing,
            Reason::Lost,
            Reason::SlotAhead,
            Reason::CheckpointAhead,
            Reason::DefinitionChanged("the summary query".into()),
            Reason::ServerChanged {
                stored: crate::pg::server::ServerId {
                    system_identifier: 1,
                    timeline: 1,
                },
                now: crate::pg::server::ServerId {
                    system_identifier: 1,
                    timeline: 2,
                },
            },
            Reason::PublicationChanged,
            Reason::Resumed("lost".into()),
        ];
        for r in &reasons {
            assert!(RECOVERY_REASONS.contains(&r.label()), "{}", r.label());
        }
        assert_eq!(RECOVERY_REASONS.len(), reasons.len());
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

    #[test]
    fn a_changed_definition_recomputes_without_expiring_every_page() {
        let mut o = observed(Some(slot(100)), Some(150), 200);
        o.definition_change = Some("currency USD -> EUR".into());
        assert_eq!(
            decide(&o, false),
            Decision::Recompute {
                reason: Reason::DefinitionChanged("currency USD -> EUR".into()),
                recreate: false,
                every_page: false
            }
        );
        // The slot's own problems come first; the recompute covers the definition too.
        o.slot = None;
        assert_eq!(decide(&o, false), recompute(Reason::Missing, true));
        // No checkpoint: setup's backfill records the definition, nothing to compare.
        o.checkpoint = None;
        assert_eq!(decide(&o, true), recompute(Reason::Setup, true));
    }

    #[test]
    fn another_server_recomputes_and_expires_every_page() {
        let mut o = observed(Some(slot(100)), Some(150), 200);
        o.server_change = Some((A, B));
        o.definition_change = Some("the summary query".into());
        assert_eq!(
            decide(&o, false),
            Decision::Recompute {
                reason: Reason::ServerChanged { stored: A, now: B },
                recreate: false,
                every_page: true
            }
        );
        // An unfinished definition recompute is resumed, and the failover since then
        // still expires every page.
        o.pending = Some("definition_changed".into());
        assert_eq!(
            decide(&o, false),
            Decision::Recompute {
                reason: Reason::Resumed("definition_changed".into()),
                recreate: false,
                every_page: true
            }
        );
        o.server_change = None;
        assert_eq!(
            decide(&o, false),
            recompute(Reason::Resumed("definition_changed".into()), false)
        );
        assert!(!Reason::Resumed("definition_changed".into()).expires_every_page());
        assert!(Reason::Resumed("server_changed".into()).expires_every_page());
        assert!(Reason::Resumed("missing".into()).expires_every_page());
    }

    #[test]
    fn every_recovery_of_the_slot_expires_every_page() {
        for r in [
            Reason::Missing,
            Reason::Lost,
            Reason::SlotAhead,
            Reason::CheckpointAhead,
            Reason::ServerChanged { stored: A, now: B },
        ] {
            assert!(r.expires_every_page(), "{r:?}");
            assert!(
                Reason::Resumed(r.label().into()).expires_every_page(),
                "{r:?}"
            );
        }
        for r in [
            Reason::Setup,
            Reason::DefinitionChanged(String::new()),
            Reason::PublicationChanged,
        ] {
            assert!(!r.expires_every_page(), "{r:?}");
        }
    }
}
