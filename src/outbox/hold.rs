//! Hot tags (`revalidate.min_interval_ms`): a tag of a throttled template is revalidated
//! at most once per interval, and never dropped.
//!
//! Everything is in Postgres (`<schema>.outbox_held`, one row per tag), written under the
//! apply lock, so a crash or a new leader changes nothing:
//!
//! - apply, in the transaction of the summary change, upserts the tag ([`outbox::hold_sql`]): a tag
//!   with no pending row becomes pending, due at `greatest(now(), released_at +
//!   interval)`; a tag already pending is left alone (the repeat coalesces into it).
//!   Then, still in that transaction, every due row moves into the outbox
//!   ([`outbox::release_sql`]): a tag not revalidated for an interval goes out as fast as
//!   an immediate one.
//! - the release task ([`spawn`]) sleeps until the earliest `due_at` (or until apply held
//!   something) and moves due rows into the outbox under the same lock.
//!
//! Why nothing is lost: a change committed at t either finds its tag pending, and that
//! row is released after the change committed (the release waits for the apply lock,
//! held until commit) and no later than its due time, itself at most t + interval; or it
//! makes the row pending, due at most t + interval. Either way the tag enters the outbox
//! after the change's commit and by t + interval, and the deliverers take it from there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::Client;

use super::deliver::backoff;
use crate::config::{Config, MAX_MIN_INTERVAL_MS};
use crate::ops::metrics::Metrics;
use crate::pg::connect::Database;
use crate::state::{self, locks, outbox};

/// How often the release task looks without being woken, for rows held by other
/// processes (`reconcile --fix`).
const POLL: Duration = Duration::from_millis(500);

/// How often rows idle for longer than any interval are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// Spawns the release task; it runs until aborted. `wake` is bumped by apply when it
/// held tags; `enqueued` wakes the deliverers after a release.
pub fn spawn(
    cfg: &Config,
    db: &Database,
    metrics: Arc<Metrics>,
    wake: watch::Receiver<u64>,
    enqueued: Arc<watch::Sender<u64>>,
) -> tokio::task::JoinHandle<()> {
    let releaser = Releaser {
        state: state::schema(cfg),
        lock_key: locks::apply_key(cfg),
        metrics,
        wake,
        enqueued,
    };
    let db = db.clone();
    tokio::spawn(async move { releaser.run(db).await })
}

struct Releaser {
    state: String,
    lock_key: i32,
    metrics: Arc<Metrics>,
    wake: watch::Receiver<u64>,
    enqueued: Arc<watch::Sender<u64>>,
}

impl Releaser {
    /// Reconnects on failure; never returns.
    async fn run(mut self, db: Database) {
        let mut attempt = 0;
        loop {
            match db.connect("cdc-worker/release").await {
                Ok(mut client) => {
                    attempt = 0;
                    if let Err(e) = self.serve(&mut client).await {
                        tracing::warn!(error = %format!("{e:#}"), "releasing held tags interrupted; resuming");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the release of held tags cannot reach the database")
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    async fn serve(&mut self, client: &mut Client) -> anyhow::Result<()> {
        let s = &self.state;
        let next = client.prepare(&outbox::next_due_sql(s)).await?;
        let lock = client.prepare(locks::XACT_LOCK_SQL).await?;
        let release = client.prepare(&outbox::release_sql(s)).await?;
        let forget = client.prepare(&outbox::forget_idle_sql(s)).await?;
        let mut last_forget = Instant::now();
        loop {
            let wait: Option<f64> = client.query_one(&next, &[]).await?.get(0);
            let forget_now = last_forget.elapsed() >= FORGET_EVERY;
            if wait.is_some_and(|w| w <= 0.0) || forget_now {
                // READ COMMITTED whatever the database default: the lock is the first
                // statement, and the release must see what apply committed meanwhile.
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
                    .start()
                    .await?;
                tx.execute(&lock, &[&locks::APPLY_CLASS, &self.lock_key])
                    .await?;
                let released: i64 = tx.query_one(&release, &[]).await?.get(0);
                if forget_now {
                    tx.execute(&forget, &[&(MAX_MIN_INTERVAL_MS as i64)])
                        .await?;
                }
                tx.commit().await?;
                if forget_now {
                    last_forget = Instant::now();
                }
                if released > 0 {
                    self.metrics.held_released.inc_by(released as u64);
                    self.enqueued.send_modify(|n| *n += 1);
                    tracing::debug!(tags = released, "held tags released into the outbox");
                }
                continue;
            }
            // Until the earliest due time (a millisecond past it), a wake-up from apply,
            // or the poll interval.
            let sleep = wait.map_or(POLL, |w| {
                Duration::from_secs_f64(w).min(POLL) + Duration::from_millis(1)
            });
            let deadline = tokio::time::Instant::now() + sleep;
            if tokio::time::timeout_at(deadline, self.wake.changed())
                .await
                .is_ok_and(|r| r.is_err())
            {
                // Apply is gone (the session is ending): sleep instead of spinning.
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}
