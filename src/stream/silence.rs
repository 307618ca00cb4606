//! A silent stream: a dead connection, or a walsender busy for us?
//!
//! The heartbeat puts a message into the WAL every heartbeat interval, so a stream that
//! stays silent for three of them is suspect. But silence is also what a healthy
//! walsender sends while it decodes a large transaction: after a restart it re-reads from
//! the slot's restart point and sends nothing until it reaches that transaction's commit
//! (a million-row import: seconds to minutes). Ending the session then restarts the same
//! decode from the same place, forever, while WAL piles up behind the slot.
//!
//! So silence alone ends nothing. The replication client (`pgwire-replication` 0.5) makes
//! its socket itself and offers no way to set TCP keepalives or a user timeout on it, so
//! the evidence comes from the server, read over a fresh query connection (which has
//! both): the walsender that holds our slot (`pg_replication_slots.active_pid`, our
//! `application_name`), what it waits on (`pg_stat_activity`), and when it last heard this
//! worker's status messages (`pg_stat_replication.reply_time`, stamped with our own clock;
//! visible to a superuser or a member of `pg_read_all_stats`). [`judge`] decides:
//!
//! - no walsender holds the slot, or another process does: dead;
//! - it heard us within a few status intervals: the connection carries our messages, so
//!   it is alive, and the walsender has nothing for us yet: wait;
//! - it is working (on CPU, reading WAL or spill files: no `Client` or `Activity` wait):
//!   it decodes for us: wait. Were our connection dead after all, the server ends this
//!   walsender after `wal_sender_timeout` without our messages, and the next look finds
//!   no walsender;
//! - otherwise (idle, or blocked writing to us, and not hearing us): dead.
//!
//! A look that fails or takes longer than [`LOOK_TIMEOUT`] (the network is gone too)
//! counts as dead.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::pg::connect::Database;

/// How long one look at the server may take before the silence counts as a dead
/// connection.
const LOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a silence is, and what the server says about it.
pub struct Silence {
    db: Database,
    slot: String,
    application: String,
    heartbeat: Duration,
    /// How often the replication client sends a status message while nothing arrives.
    status_every: Duration,
    /// When the current silence began to be waited out (the first look that found the
    /// walsender busy), for the log.
    waiting_since: Option<Instant>,
    /// When the waiting was last logged at info level.
    logged: Option<Instant>,
}

/// What a look at the server found.
#[derive(Debug, Clone, PartialEq)]
pub struct Walsender {
    pub pid: i32,
    /// `pg_stat_activity.application_name` (null for another role's session).
    pub application: Option<String>,
    /// `pg_stat_replication.state` and `sent_lsn` (null without `pg_read_all_stats`).
    pub state: Option<String>,
    pub sent_lsn: Option<String>,
    /// `wait_event_type` and `wait_event`; none: on CPU.
    pub wait: Option<(String, String)>,
    /// How long ago the walsender last heard a status message of ours (`reply_time`, our
    /// clock), if visible.
    pub heard_us: Option<Duration>,
}

/// [`judge`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The connection is alive and the walsender has nothing for us yet: why we think so.
    Busy(String),
    /// The connection is dead: why.
    Dead(String),
}

impl Silence {
    pub fn new(db: Database, slot: &str, heartbeat: Duration) -> Silence {
        Silence {
            db,
            slot: slot.to_string(),
            application: crate::pg::connect::replication_application(slot),
            heartbeat,
            status_every: status_interval(heartbeat),
            waiting_since: None,
            logged: None,
        }
    }

    /// How long the stream may be silent before the server is asked: three heartbeats.
    pub fn after(&self) -> Duration {
        self.heartbeat * 3
    }

    /// Something arrived: the silence, if one was being waited out, is over.
    pub fn heard(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            tracing::info!(
                silent_secs = (since.elapsed() + self.after()).as_secs(),
                "the walsender sent data again: the long decode is over"
            );
            self.logged = None;
        }
    }

    /// The stream has been silent for [`Silence::after`]: asks the server. Ok to keep
    /// waiting (logged), or the error that ends the session (transient: it reconnects).
    pub async fn judge(&mut self) -> anyhow::Result<()> {
        let silent = self.after().as_secs();
        let verdict = match tokio::time::timeout(LOOK_TIMEOUT, self.look()).await {
            Ok(Ok(w)) => judge(w.as_ref(), &self.application, self.fresh()),
            Ok(Err(e)) => Verdict::Dead(format!("the server could not be asked about it ({e:#})")),
            Err(_) => Verdict::Dead(format!(
                "the server did not answer a question about it within {}s",
                LOOK_TIMEOUT.as_secs()
            )),
        };
        match verdict {
            Verdict::Busy(why) => {
                let since = *self.waiting_since.get_or_insert_with(Instant::now);
                // Once when the waiting begins, then every minute.
                if self
                    .logged
                    .is_none_or(|l| l.elapsed() >= Duration::from_secs(60))
                {
                    self.logged = Some(Instant::now());
                    tracing::info!(
                        slot = %self.slot,
                        silent_secs = since.elapsed().as_secs() + silent,
                        "nothing arrived from Postgres for {silent}s or more, but {why}: \
                         waiting for a long decode rather than reconnecting (which would \
                         start it again)"
                    );
                } else {
                    tracing::debug!(%why, "still waiting for a long decode");
                }
                Ok(())
            }
            Verdict::Dead(why) => Err(anyhow::Error::new(std::io::Error::other(format!(
                "nothing arrived from Postgres for {silent}s although a heartbeat is written \
                 every {}s, and {why}: the replication connection is dead",
                self.heartbeat.as_secs()
            )))),
        }
    }

    /// A status message of ours younger than this proves the connection carries them:
    /// two status intervals and a margin for a busy walsender to read it.
    fn fresh(&self) -> Duration {
        self.status_every * 2 + Duration::from_secs(2)
    }

    /// The walsender holding the slot, on a connection of its own (keepalives, a user
    /// timeout; closed after the look, so a server's `idle_session_timeout` never ends
    /// it between looks).
    async fn look(&self) -> anyhow::Result<Option<Walsender>> {
        let client = self.db.connect("cdc-worker/liveness").await?;
        let row = client
            .query_opt(
                "SELECT s.active_pid, a.application_name, r.state, r.sent_lsn::text, \
                        extract(epoch FROM r.reply_time)::float8, \
                        a.wait_event_type, a.wait_event \
                 FROM pg_replication_slots s \
                 LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid \
                 LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
                 WHERE s.slot_name = $1 AND s.active_pid IS NOT NULL",
                &[&self.slot],
            )
            .await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        Ok(row.map(|r| {
            let (wait_type, wait_event): (Option<String>, Option<String>) = (r.get(5), r.get(6));
            Walsender {
                pid: r.get(0),
                application: r.get(1),
                state: r.get(2),
                sent_lsn: r.get(3),
                wait: wait_type.zip(wait_event),
                heard_us: r
                    .get::<_, Option<f64>>(4)
                    .map(|at| Duration::from_secs_f64((now - at).max(0.0))),
            }
        }))
    }
}

/// How often the replication client sends a status message while nothing arrives (its
/// wakeup interval): at most a heartbeat, so that [`judge`] has fresh evidence, and at
/// most 5 s.
pub fn status_interval(heartbeat: Duration) -> Duration {
    heartbeat.min(Duration::from_secs(5))
}

/// The verdict on a silent stream from what the server shows of the walsender holding the
/// slot (`None`: no walsender holds it). `application` is ours; `fresh` how recent a
/// status message of ours must be to prove the connection carries them.
pub fn judge(w: Option<&Walsender>, application: &str, fresh: Duration) -> Verdict {
    let Some(w) = w else {
        return Verdict::Dead("no walsender holds the slot any more".into());
    };
    if w.application.as_deref() != Some(application) {
        return Verdict::Dead(format!(
            "the slot is held by another process (pid {}, application {})",
            w.pid,
            w.application
                .as_deref()
                .unwrap_or("not visible to this role")
        ));
    }
    let doing = match &w.wait {
        None => "working".to_string(),
        Some((kind, event)) => format!("waiting on {kind}/{event}"),
    };
    let what = format!(
        "its walsender (pid {}, {}, {doing}{})",
        w.pid,
        w.state
            .as_deref()
            .unwrap_or("state not visible to this role"),
        w.sent_lsn
            .as_deref()
            .map(|l| format!(", sent up to {l}"))
            .unwrap_or_default()
    );
    // Idle, or blocked on the client: nothing on the server side keeps it from sending.
    let working = !matches!(&w.wait, Some((kind, _)) if kind == "Client" || kind == "Activity");
    match w.heard_us {
        Some(age) if age <= fresh => Verdict::Busy(format!(
            "{what} heard this worker {:.1}s ago",
            age.as_secs_f64()
        )),
        _ if working => Verdict::Busy(format!("{what} is decoding for this worker")),
        Some(age) => Verdict::Dead(format!(
            "{what} last heard this worker {:.0}s ago",
            age.as_secs_f64()
        )),
        None => Verdict::Dead(format!("{what} has nothing to decode")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "cdc-worker/cdc_worker";
    const FRESH: Duration = Duration::from_secs(4);

    fn walsender(wait: Option<(&str, &str)>, heard_us: Option<u64>) -> Walsender {
        Walsender {
            pid: 42,
            application: Some(APP.into()),
            state: Some("streaming".into()),
            sent_lsn: Some("0/1000".into()),
            wait: wait.map(|(k, e)| (k.into(), e.into())),
            heard_us: heard_us.map(Duration::from_secs),
        }
    }

    fn busy(v: &Verdict) -> bool {
        matches!(v, Verdict::Busy(_))
    }

    #[test]
    fn a_walsender_that_hears_us_or_works_for_us_is_waited_for() {
        // Decoding on CPU, reading WAL or spill files: busy, heard or not.
        for wait in [
            None,
            Some(("IO", "WALRead")),
            Some(("IO", "ReorderBufferRead")),
        ] {
            for heard in [Some(1), Some(300), None] {
                let v = judge(Some(&walsender(wait, heard)), APP, FRESH);
                assert!(busy(&v), "{wait:?} {heard:?}: {v:?}");
            }
        }
        // Idle but our status messages arrive: the connection is alive.
        let v = judge(
            Some(&walsender(Some(("Activity", "WalSenderMain")), Some(2))),
            APP,
            FRESH,
        );
        assert!(busy(&v), "{v:?}");
    }

    #[test]
    fn no_walsender_another_process_or_an_idle_one_that_does_not_hear_us_is_dead() {
        assert!(matches!(judge(None, APP, FRESH), Verdict::Dead(_)));
        let mut other = walsender(None, Some(1));
        other.application = Some("pg_recvlogical".into());
        assert!(
            matches!(judge(Some(&other), APP, FRESH), Verdict::Dead(w) if w.contains("another process"))
        );
        for wait in [
            ("Activity", "WalSenderMain"),
            ("Client", "WalSenderWriteData"),
        ] {
            for heard in [Some(30), None] {
                let v = judge(Some(&walsender(Some(wait), heard)), APP, FRESH);
                assert!(!busy(&v), "{wait:?} {heard:?}: {v:?}");
            }
        }
    }

    #[test]
    fn status_messages_come_at_least_every_heartbeat() {
        assert_eq!(
            status_interval(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            status_interval(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
    }
}
