//! `cdc-worker status`: is it healthy, how far behind, is anything parked, without
//! Prometheus or psql. Reads the database only (the session is read-only), so it answers
//! the same whether or not a daemon runs, and serves as a probe or a cron check through
//! its exit code: 0 healthy, 1 degraded, 2 unusable (or no answer at all).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::Config;
use crate::pg::connect::Database;
use crate::pg::server::{self, Session, SlotRow, SlotState};
use crate::redact::redact_url;
use crate::state::{self, checkpoint, history, locks, outbox};

/// Command-line options of `status`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Print one JSON object instead of text (the same facts, the same exit code)
    #[arg(long)]
    pub json: bool,
    /// Degraded when the slot's confirmed position or the checkpoint is more than this
    /// many bytes behind the server's WAL
    #[arg(long, value_name = "BYTES", default_value_t = 1_000_000_000)]
    pub max_lag_bytes: i64,
    /// Degraded when the newest applied source commit is older than this. A running
    /// worker applies a heartbeat every batch.heartbeat_secs (10 s), so this stays small
    /// while it streams
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub max_lag_seconds: f64,
    /// Degraded when an endpoint's oldest undelivered tag is older than this
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    pub max_outbox_age_seconds: f64,
    /// Degraded when more tags than this are parked in outbox_failed
    #[arg(long, value_name = "TAGS", default_value_t = 0)]
    pub max_parked: i64,
}

/// How usable the installation is; the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Degraded,
    Unusable,
}

impl Health {
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Unusable => 2,
        }
    }
}

/// Everything `status` reports; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub health: Health,
    /// Why not healthy, one line each.
    pub problems: Vec<String>,
    /// `user@host:port/db`, no password.
    pub database: String,
    pub server_version: String,
    pub slot_name: String,
    pub publication: String,
    pub schema: String,
    /// The state schema exists and holds the checkpoint table.
    pub set_up: bool,
    /// The session of the `run` holding the leader lock.
    pub leader: Option<Session>,
    /// Other `cdc-worker run` sessions waiting to take over.
    pub standbys: usize,
    pub slot: Option<Slot>,
    pub lag: Lag,
    /// The durable recompute mark: every product is being (or must be) recomputed, and why.
    pub recompute: Option<String>,
    pub outbox: Option<Outbox>,
    /// The last recorded `reconcile` run.
    pub reconcile: Option<history::Run>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Slot {
    pub plugin: Option<String>,
    pub database: Option<String>,
    /// Why it is not this worker's slot, if it is not.
    pub not_ours: Option<String>,
    /// The walsender streaming it.
    pub active_pid: Option<i32>,
    pub wal_status: Option<String>,
    /// `ok`, `unreserved`, `conflicting`, `lost`, `invalidated_<reason>`.
    pub state: String,
    /// 17+.
    pub failover: Option<bool>,
    pub synced: Option<bool>,
    pub invalidation_reason: Option<String>,
    pub confirmed_flush_lsn: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Lag {
    pub server_lsn: String,
    pub checkpoint_lsn: Option<String>,
    /// Bytes of WAL between the checkpoint and the server's current position.
    pub checkpoint_behind_bytes: Option<i64>,
    /// Bytes of WAL the slot retains: from its confirmed position to the server's.
    pub slot_behind_bytes: Option<i64>,
    /// Seconds since the source commit time of the newest transaction applied.
    pub last_commit_age_seconds: Option<f64>,
    /// Seconds since the checkpoint was last written.
    pub checkpoint_written_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outbox {
    pub endpoints: Vec<outbox::EndpointStatus>,
    /// Tags of throttled templates waiting for their interval (`outbox_held`); `None` on
    /// a state schema of an earlier version.
    pub held: Option<i64>,
    /// How far the most overdue held tag is past its due time.
    pub held_overdue_seconds: Option<f64>,
}

/// `cdc-worker status`: prints the report and returns its exit code.
pub async fn main(cfg: &Config, args: &Args) -> anyhow::Result<ExitCode> {
    let db = Database::parse(&cfg.database_url)?;
    let client = db
        .connect("cdc-worker/status")
        .await
        .with_context(|| format!("connecting to {}", db.display()))?;
    // A status check never writes, whatever it reads.
    client
        .batch_execute("SET default_transaction_read_only = on")
        .await?;
    let status = read(&client, cfg, &db.display(), args).await?;
    let text = if args.json {
        serde_json::to_string_pretty(&status)? + "\n"
    } else {
        render(&status)
    };
    // `status | head` closes the pipe early: that is no error of the check.
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(ExitCode::from(status.health.exit_code()))
}

/// Reads every fact and judges them.
pub async fn read(
    client: &Client,
    cfg: &Config,
    database: &str,
    args: &Args,
) -> anyhow::Result<Status> {
    let server_version: String = client
        .query_one("SELECT current_setting('server_version')", &[])
        .await?
        .get(0);
    let leader =
        server::advisory_lock_holder(client, locks::LEADER_CLASS, locks::leader_key(cfg)).await?;
    // Standbys poll the leader lock on their apply connection.
    let standbys = server::sessions_named(client, "cdc-worker/apply")
        .await?
        .iter()
        .filter(|s| s.application_name == "cdc-worker/apply")
        .filter(|s| leader.as_ref().is_none_or(|l| l.pid != s.pid))
        .count();
    let row = server::slot_row(client, &cfg.slot).await?;
    let state = server::slot_state(client, &cfg.slot).await?;
    let server_lsn = server::current_wal_lsn(client).await?;
    let installed = state::installed(client, cfg).await?;
    let set_up = installed.has("checkpoint");
    let progress = if set_up {
        checkpoint::progress(client, cfg).await?
    } else {
        None
    };
    let behind = |lsn: pgwire_replication::Lsn| server_lsn.0 as i64 - lsn.0 as i64;
    let lag = Lag {
        server_lsn: server_lsn.to_string(),
        checkpoint_lsn: progress.as_ref().and_then(|p| p.lsn).map(|l| l.to_string()),
        checkpoint_behind_bytes: progress.as_ref().and_then(|p| p.lsn).map(behind),
        slot_behind_bytes: row.as_ref().and_then(|r| r.confirmed_flush).map(behind),
        last_commit_age_seconds: progress.as_ref().and_then(|p| p.commit_age_seconds),
        checkpoint_written_age_seconds: progress.as_ref().map(|p| p.written_age_seconds),
    };
    let outbox = if set_up {
        let s = state::schema(cfg);
        let configured: Vec<String> = cfg.revalidate.urls.iter().map(|u| redact_url(u)).collect();
        let endpoints = outbox::endpoints(client, &s, &configured).await?;
        let (held, overdue) = if installed.has("outbox_held") {
            let r = client.query_one(&outbox::held_pending_sql(&s), &[]).await?;
            (Some(r.get(0)), Some(r.get(1)))
        } else {
            (None, None)
        };
        Some(Outbox {
            endpoints,
            held,
            held_overdue_seconds: overdue,
        })
    } else {
        None
    };
    let reconcile = if installed.has("reconcile_history") {
        history::recent(client, cfg, 1).await?.into_iter().next()
    } else {
        None
    };
    let mut status = Status {
        health: Health::Healthy,
        problems: Vec::new(),
        database: database.to_string(),
        server_version,
        slot_name: cfg.slot.clone(),
        publication: cfg.publication.clone(),
        schema: cfg.schema.clone(),
        set_up,
        leader,
        standbys,
        slot: row.map(|r| slot(&r, state.as_ref(), &cfg.slot)),
        lag,
        recompute: progress.as_ref().and_then(|p| p.recompute_reason.clone()),
        outbox,
        reconcile,
    };
    judge(&mut status, cfg, args);
    Ok(status)
}

fn slot(row: &SlotRow, state: Option<&SlotState>, name: &str) -> Slot {
    Slot {
        plugin: row.plugin.clone(),
        database: row.database.clone(),
        not_ours: row.not_ours(name),
        active_pid: row.active_pid,
        wal_status: state.and_then(|s| s.wal_status.clone()),
        state: state.map_or_else(|| "ok".into(), SlotState::summary),
        failover: state.and_then(|s| s.failover),
        synced: state.and_then(|s| s.synced),
        invalidation_reason: state.and_then(|s| s.invalidation_reason.clone()),
        confirmed_flush_lsn: row.confirmed_flush.map(|l| l.to_string()),
    }
}

/// The health and the problems, from the facts and the thresholds. Pure, so every rule
/// is unit-tested.
pub fn judge(s: &mut Status, cfg: &Config, args: &Args) {
    let mut problems: Vec<(Health, String)> = Vec::new();
    let mut add = |h, msg: String| problems.push((h, msg));
    use Health::{Degraded, Unusable};
    if !s.set_up {
        add(
            Unusable,
            format!(
                "not set up: no checkpoint table in schema {}. Fix: run `cdc-worker setup`",
                cfg.schema
            ),
        );
    } else if s.lag.checkpoint_lsn.is_none() && s.recompute.is_none() {
        add(
            Unusable,
            format!(
                "not set up: no checkpoint for slot {}. Fix: run `cdc-worker setup`",
                cfg.slot
            ),
        );
    }
    match &s.slot {
        // Not set up says it all.
        None if !s.set_up => {}
        None => add(
            Unusable,
            format!(
                "replication slot {} does not exist: changes are not being captured. A running \
                 worker recreates it and recomputes every product at its next session start; \
                 otherwise run `cdc-worker setup`",
                cfg.slot
            ),
        ),
        Some(slot) => {
            if let Some(why) = &slot.not_ours {
                add(Unusable, why.clone());
            } else if slot.state == "lost" || slot.state.starts_with("invalidated_") {
                add(
                    Unusable,
                    format!(
                        "replication slot {} is {}: Postgres removed WAL it needed. The worker \
                         recreates it and recomputes every product at its next session start",
                        cfg.slot, slot.state
                    ),
                );
            } else if slot.state == "unreserved" {
                add(
                    Degraded,
                    format!(
                        "replication slot {} is unreserved: WAL it needs is removed at the next \
                         checkpoint (max_slot_wal_keep_size); the worker must catch up now",
                        cfg.slot
                    ),
                );
            }
        }
    }
    if s.leader.is_none() {
        add(
            Degraded,
            format!(
                "no `cdc-worker run` holds the leader lock of slot {}: nothing is streaming",
                cfg.slot
            ),
        );
    }
    if let Some(reason) = &s.recompute {
        add(
            Degraded,
            format!(
                "a recompute of every product is pending or under way (reason {reason}); the \
                 summary catches up when it finishes"
            ),
        );
    }
    for (what, bytes) in [
        ("the slot", s.lag.slot_behind_bytes),
        ("the checkpoint", s.lag.checkpoint_behind_bytes),
    ] {
        if let Some(b) = bytes.filter(|&b| b > args.max_lag_bytes) {
            add(
                Degraded,
                format!(
                    "{what} is {} behind the server's WAL (above --max-lag-bytes {})",
                    bytes_text(b),
                    args.max_lag_bytes
                ),
            );
        }
    }
    if let Some(age) = s
        .lag
        .last_commit_age_seconds
        .filter(|&a| a > args.max_lag_seconds)
    {
        add(
            Degraded,
            format!(
                "the newest applied commit is {} old (above --max-lag-seconds {})",
                seconds_text(age),
                args.max_lag_seconds
            ),
        );
    }
    if let Some(outbox) = &s.outbox {
        let parked: i64 = outbox.endpoints.iter().map(|e| e.parked_tags).sum();
        if parked > args.max_parked {
            add(
                Degraded,
                format!(
                    "{parked} cache tags are parked in {}.outbox_failed (pages stay stale). Fix \
                     the endpoint, then run `cdc-worker revalidate --failed`",
                    cfg.schema
                ),
            );
        }
        for e in &outbox.endpoints {
            if let Some(age) = e
                .oldest_pending_seconds
                .filter(|&a| a > args.max_outbox_age_seconds)
            {
                add(
                    Degraded,
                    format!(
                        "{}: the oldest undelivered tag is {} old (above \
                         --max-outbox-age-seconds {})",
                        e.endpoint,
                        seconds_text(age),
                        args.max_outbox_age_seconds
                    ),
                );
            }
        }
    }
    s.health = problems
        .iter()
        .map(|(h, _)| *h)
        .max()
        .unwrap_or(Health::Healthy);
    s.problems = problems.into_iter().map(|(_, m)| m).collect();
}

/// The report for a person.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let health = match s.health {
        Health::Healthy => "HEALTHY",
        Health::Degraded => "DEGRADED",
        Health::Unusable => "UNUSABLE",
    };
    let _ = writeln!(out, "cdc-worker status: {health}");
    for p in &s.problems {
        let _ = writeln!(out, "  ! {p}");
    }
    let mut line = |label: &str, text: String| {
        let _ = writeln!(out, "{label:<10} {text}");
    };
    line(
        "database",
        format!(
            "{} (PostgreSQL {}); slot {}, publication {}, state schema {}",
            s.database, s.server_version, s.slot_name, s.publication, s.schema
        ),
    );
    line(
        "leader",
        match &s.leader {
            Some(l) => format!("{}; standbys waiting: {}", session_text(l), s.standbys),
            None => format!(
                "none (no `cdc-worker run` is streaming); standbys waiting: {}",
                s.standbys
            ),
        },
    );
    line(
        "slot",
        match &s.slot {
            None => "missing".into(),
            Some(slot) => {
                let mut t = match slot.active_pid {
                    Some(pid) => format!("active (walsender pid {pid})"),
                    None => "inactive".into(),
                };
                let _ = write!(
                    t,
                    ", state {}, wal_status {}, confirmed {}",
                    slot.state,
                    slot.wal_status.as_deref().unwrap_or("none"),
                    slot.confirmed_flush_lsn.as_deref().unwrap_or("none")
                );
                match slot.failover {
                    Some(f) => {
                        let _ =
                            write!(t, ", failover {f}, synced {}", slot.synced.unwrap_or(false));
                    }
                    None => t.push_str(", failover n/a (< 17)"),
                }
                if let Some(r) = &slot.invalidation_reason {
                    let _ = write!(t, ", invalidated: {r}");
                }
                if let Some(why) = &slot.not_ours {
                    let _ = write!(t, " -- NOT OURS: {why}");
                }
                t
            }
        },
    );
    let lag = &s.lag;
    let mut t = format!("server WAL at {}", lag.server_lsn);
    if let Some(b) = lag.slot_behind_bytes {
        let _ = write!(t, "; slot retains {}", bytes_text(b));
    }
    match (&lag.checkpoint_lsn, lag.checkpoint_behind_bytes) {
        (Some(lsn), Some(b)) => {
            let _ = write!(t, "; checkpoint {lsn}, {} behind", bytes_text(b));
        }
        _ => t.push_str("; no checkpoint"),
    }
    match lag.last_commit_age_seconds {
        Some(a) => {
            let _ = write!(t, "; last applied commit {} ago", seconds_text(a));
        }
        None => {
            if let Some(a) = lag.checkpoint_written_age_seconds {
                let _ = write!(t, "; checkpoint written {} ago", seconds_text(a));
            }
        }
    }
    line("lag", t);
    line(
        "recompute",
        match &s.recompute {
            Some(r) => format!("pending or under way (reason {r})"),
            None => "none pending".into(),
        },
    );
    match &s.outbox {
        None => line("outbox", "n/a (not set up)".into()),
        Some(o) => {
            if o.endpoints.is_empty() {
                line(
                    "outbox",
                    "no endpoint (CDC_REVALIDATE_URLS unset here, and nothing delivered yet)"
                        .into(),
                );
            }
            for (i, e) in o.endpoints.iter().enumerate() {
                let mut t = format!("{}: {} pending", e.endpoint, e.pending);
                if let Some(a) = e.oldest_pending_seconds {
                    let _ = write!(t, " (oldest {})", seconds_text(a));
                }
                let _ = write!(t, ", {} parked", e.parked_tags);
                if let Some(at) = &e.last_parked_at {
                    let _ = write!(t, " in {} rows, last at {at}", e.parked_rows);
                }
                if !e.configured {
                    t.push_str(" (not in this configuration)");
                }
                line(if i == 0 { "outbox" } else { "" }, t);
            }
            line(
                "",
                match (o.held, o.held_overdue_seconds) {
                    (Some(n), Some(d)) if d > 0.0 => {
                        format!(
                            "held (hot tags): {n} waiting, the most overdue {} past due",
                            seconds_text(d)
                        )
                    }
                    (Some(n), _) => format!("held (hot tags): {n} waiting"),
                    _ => "held (hot tags): n/a (state schema of an earlier version)".into(),
                },
            );
        }
    }
    line(
        "reconcile",
        match &s.reconcile {
            None => "never run".into(),
            Some(r) => format!(
                "last run {}: {} checked, {} discrepancies{}{}",
                r.started_at,
                r.checked,
                r.discrepancies,
                r.fixed.map_or_else(String::new, |f| format!(", {f} fixed")),
                if r.settled { "" } else { " (not settled)" }
            ),
        },
    );
    out
}

fn session_text(s: &Session) -> String {
    let mut t = format!("pid {} {}", s.pid, s.application_name);
    if let Some(addr) = &s.client_addr {
        let _ = write!(t, " from {addr}");
    }
    if let Some(since) = &s.since {
        let _ = write!(t, ", session since {since}");
    }
    if let Some(secs) = s.seconds {
        let _ = write!(t, " ({})", seconds_text(secs));
    }
    t
}

fn bytes_text(b: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn seconds_text(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            json: false,
            max_lag_bytes: 1000,
            max_lag_seconds: 60.0,
            max_outbox_age_seconds: 300.0,
            max_parked: 0,
        }
    }

    fn healthy() -> Status {
        Status {
            health: Health::Healthy,
            problems: vec![],
            database: "u@h:5432/d".into(),
            server_version: "15.0".into(),
            slot_name: "cdc_worker".into(),
            publication: "cdc_worker".into(),
            schema: "cdc_worker".into(),
            set_up: true,
            leader: Some(Session {
                pid: 7,
                application_name: "cdc-worker/apply".into(),
                client_addr: Some("10.0.0.1".into()),
                since: Some("2026-01-01T00:00:00Z".into()),
                seconds: Some(5.0),
                backend_type: Some("client backend".into()),
            }),
            standbys: 1,
            slot: Some(Slot {
                plugin: Some("pgoutput".into()),
                database: Some("d".into()),
                not_ours: None,
                active_pid: Some(8),
                wal_status: Some("reserved".into()),
                state: "ok".into(),
                failover: None,
                synced: None,
                invalidation_reason: None,
                confirmed_flush_lsn: Some("0/10".into()),
            }),
            lag: Lag {
                server_lsn: "0/20".into(),
                checkpoint_lsn: Some("0/10".into()),
                checkpoint_behind_bytes: Some(16),
                slot_behind_bytes: Some(16),
                last_commit_age_seconds: Some(3.0),
                checkpoint_written_age_seconds: Some(3.0),
            },
            recompute: None,
            outbox: Some(Outbox {
                endpoints: vec![outbox::EndpointStatus {
                    endpoint: "http://shop/api/revalidate".into(),
                    configured: true,
                    pending: 0,
                    oldest_pending_seconds: None,
                    parked_tags: 0,
                    parked_rows: 0,
                    last_parked_at: None,
                }],
                held: Some(0),
                held_overdue_seconds: Some(0.0),
            }),
            reconcile: None,
        }
    }

    type Change = Box<dyn Fn(&mut Status)>;

    fn judged(mut s: Status) -> Status {
        judge(&mut s, &Config::default(), &args());
        s
    }

    #[test]
    fn healthy_when_every_fact_is_in_bounds() {
        let s = judged(healthy());
        assert_eq!(s.health, Health::Healthy, "{:?}", s.problems);
        assert!(render(&s).starts_with("cdc-worker status: HEALTHY\n"));
    }

    #[test]
    fn each_degrading_fact_degrades() {
        let cases: Vec<(&str, Change)> = vec![
            ("leader", Box::new(|s| s.leader = None)),
            (
                "lag bytes",
                Box::new(|s| s.lag.slot_behind_bytes = Some(1001)),
            ),
            (
                "checkpoint bytes",
                Box::new(|s| s.lag.checkpoint_behind_bytes = Some(5000)),
            ),
            (
                "lag seconds",
                Box::new(|s| s.lag.last_commit_age_seconds = Some(61.0)),
            ),
            ("recompute", Box::new(|s| s.recompute = Some("lost".into()))),
            (
                "parked",
                Box::new(|s| s.outbox.as_mut().unwrap().endpoints[0].parked_tags = 1),
            ),
            (
                "outbox age",
                Box::new(|s| {
                    s.outbox.as_mut().unwrap().endpoints[0].oldest_pending_seconds = Some(301.0)
                }),
            ),
            (
                "unreserved",
                Box::new(|s| s.slot.as_mut().unwrap().state = "unreserved".into()),
            ),
        ];
        for (what, change) in cases {
            let mut s = healthy();
            change(&mut s);
            let s = judged(s);
            assert_eq!(s.health, Health::Degraded, "{what}: {:?}", s.problems);
            assert_eq!(s.problems.len(), 1, "{what}: {:?}", s.problems);
        }
    }

    #[test]
    fn missing_lost_or_foreign_slot_and_no_setup_are_unusable() {
        let cases: Vec<(&str, Change)> = vec![
            ("missing", Box::new(|s| s.slot = None)),
            (
                "lost",
                Box::new(|s| s.slot.as_mut().unwrap().state = "lost".into()),
            ),
            (
                "invalidated",
                Box::new(|s| s.slot.as_mut().unwrap().state = "invalidated_wal_removed".into()),
            ),
            (
                "foreign",
                Box::new(|s| s.slot.as_mut().unwrap().not_ours = Some("another db".into())),
            ),
            (
                "not set up",
                Box::new(|s| {
                    s.set_up = false;
                    s.outbox = None;
                }),
            ),
            (
                "no checkpoint row",
                Box::new(|s| {
                    s.lag.checkpoint_lsn = None;
                    s.lag.checkpoint_behind_bytes = None;
                }),
            ),
        ];
        for (what, change) in cases {
            let mut s = healthy();
            change(&mut s);
            let s = judged(s);
            assert_eq!(s.health, Health::Unusable, "{what}: {:?}", s.problems);
            assert_eq!(Health::Unusable.exit_code(), 2);
        }
    }

    #[test]
    fn thresholds_are_the_flags() {
        let mut s = healthy();
        s.lag.slot_behind_bytes = Some(5000);
        let mut a = args();
        a.max_lag_bytes = 10_000;
        judge(&mut s, &Config::default(), &a);
        assert_eq!(s.health, Health::Healthy, "{:?}", s.problems);
    }

    #[test]
    fn json_has_every_section() {
        let v = serde_json::to_value(judged(healthy())).unwrap();
        for key in [
            "health",
            "problems",
            "leader",
            "standbys",
            "slot",
            "lag",
            "recompute",
            "outbox",
            "reconcile",
        ] {
            assert!(v.get(key).is_some(), "{key} missing: {v}");
        }
        assert_eq!(v["health"], "healthy");
        assert_eq!(v["lag"]["slot_behind_bytes"], 16);
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(1536), "1.5 KiB");
        assert_eq!(bytes_text(3 << 30), "3.0 GiB");
        assert_eq!(seconds_text(3.04), "3.0 s");
        assert_eq!(seconds_text(600.0), "10 min");
    }
}
