//! Leadership: one instance per slot streams and applies; the others wait as standbys.
//!
//! The leader holds a session advisory lock on its apply connection, which Postgres
//! releases the moment that connection's backend ends. Two things would make that
//! promise hollow, and both are checked here:
//!
//! - a connection pooler in transaction mode (PgBouncer): the "session" is lent out per
//!   transaction, so the lock belongs to whichever client the pooler hands it to next;
//! - a half-open connection (a network cut without RST): the backend keeps the lock until
//!   the server notices, which by TCP keepalive alone can take hours. The leader's
//!   session therefore carries server-side idle timeouts: its apply connection is never
//!   idle longer than a heartbeat while the process is alive (the apply task pings it
//!   when no batch came, `apply::spawn`: WAL may not flow for minutes while the
//!   walsender decodes a large transaction), so a silent one is ended by the server and
//!   a standby takes over.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::Config;
use crate::error::definite;
use crate::pg::connect::Database;
use crate::state::locks;

/// How often a standby tries to take over.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// Tries once to become the leader of `cfg.slot` on this connection.
pub async fn try_lead(client: &Client, cfg: &Config) -> anyhow::Result<bool> {
    Ok(client
        .query_one(
            locks::TRY_SESSION_LOCK_SQL,
            &[&locks::LEADER_CLASS, &locks::leader_key(cfg)],
        )
        .await?
        .get(0))
}

/// Waits until this instance holds the leader lock. Returns false on shutdown while
/// waiting. Once leader, the session gets the idle timeouts that end it on the server
/// when this process is gone.
pub async fn wait_for_leadership(
    client: &Client,
    cfg: &Config,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let mut shutdown = shutdown.clone();
    let mut logged = false;
    loop {
        if try_lead(client, cfg).await? {
            if logged {
                tracing::info!("took over as leader");
            }
            hold_only_while_alive(client, cfg).await?;
            return Ok(true);
        }
        if !logged {
            tracing::info!(slot = %cfg.slot, "another instance holds the slot; waiting as standby");
            logged = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(false),
        }
    }
}

/// The longest the leader's apply connection is idle while the leader is alive: a batch
/// is applied, or the connection pinged, at least every heartbeat interval. Twice that,
/// and a little, is the server-side limit after which the session is taken for dead.
pub fn idle_limit(cfg: &Config) -> Duration {
    cfg.heartbeat() * 2 + Duration::from_secs(5)
}

async fn hold_only_while_alive(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let ms = idle_limit(cfg).as_millis();
    // idle_session_timeout exists from Postgres 14; both are user-settable.
    client
        .batch_execute(&format!(
            "SET idle_session_timeout = {ms}; SET idle_in_transaction_session_timeout = {ms}"
        ))
        .await?;
    Ok(())
}

/// Refuses a transaction-mode pooler between the worker and Postgres. Prisma users often
/// have one in DATABASE_URL (`pgbouncer=true`). Failing that, the pooler gives itself
/// away by lending one backend to two client connections: a second connection that lands
/// on this one's backend pid (or a pid that changes between statements) is not a direct
/// session.
pub async fn refuse_pooler(db: &Database, client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let fix = "Fix: give the worker a direct connection to Postgres (the database host and \
               port, not the pooler's): the leader lock and the replication slot need a session \
               of their own";
    if cfg.database_url.contains("pgbouncer=true") {
        return Err(definite(format!(
            "DATABASE_URL goes through PgBouncer (pgbouncer=true), where a session advisory \
             lock does not mean leadership. {fix}"
        )));
    }
    let other = db.connect("cdc-worker/pooler-probe").await?;
    // A direct session keeps one backend pid, and no other connection ever has it. A
    // pooler hands the most recently released backend to the next transaction (PgBouncer
    // reuses LIFO), so queries that alternate between two connections swap backends:
    // the other lands on this one's, or this one moves to the other's. Other clients of
    // the pooler (the worker's own monitor, for one) can take a backend in between, so
    // one swap is not proof; several rounds make a miss vanishingly unlikely.
    let mine = backend_pid(client).await?;
    for _ in 0..PROBE_ROUNDS {
        let theirs = backend_pid(&other).await?;
        let now = backend_pid(client).await?;
        if theirs == mine || now != mine {
            return Err(definite(format!(
                "DATABASE_URL goes through a connection pooler in transaction mode (another \
                 connection got this one's backend, or this one's backend changed between \
                 statements: pids {mine}, {theirs}, {now}). {fix}"
            )));
        }
    }
    Ok(())
}

/// Rounds of the pooler probe; each is two one-row simple queries.
const PROBE_ROUNDS: usize = 8;

/// Through the simple protocol: a pooler that shares backends would make the named
/// statements of two connections collide before the pids could be compared.
async fn backend_pid(client: &Client) -> anyhow::Result<i32> {
    let rows = client.simple_query("SELECT pg_backend_pid()").await?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("SELECT pg_backend_pid() returned no row"))
}
