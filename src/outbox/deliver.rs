//! Deliver: drains the outbox to every configured Next.js endpoint. Each endpoint has its
//! own task and its own cursor, so one instance being down neither blocks nor repeats the
//! others; the replication stream never waits for any of them. Tags are coalesced
//! (deduplicated, bounded per request), signed, and retried with backoff and jitter on
//! every failure, whatever the endpoint answered, for `revalidate.give_up_after_secs`;
//! only then are they parked in `outbox_failed` (never dropped), from where
//! `cdc-worker revalidate --failed` sends them again.
//!
//! Endpoints are stored, logged and labelled by their redacted URL ([`redact_url`]):
//! credentials in a revalidation URL never reach a log, a metric or a state table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::Config;
use crate::ops::metrics::Metrics;
use crate::pg::connect::Database;
use crate::redact::{redact_answer, redact_url};
use crate::state::{self, outbox};

/// How often an endpoint task looks at the outbox without being woken, to pick up tags
/// enqueued by other processes (`reconcile --fix`).
const POLL: Duration = Duration::from_millis(500);

/// `x-cdc-signature` for `body` at `t_ms`: `t=<ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t_ms: u128, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{t_ms}.{body}").as_bytes());
    format!("t={t_ms},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// How a POST ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Anything else: no answer, a timeout, a redirect, any status but 2xx. Retried: a
    /// 401 while a secret rotates, a 404 or 502 while a deploy swaps instances, all pass.
    /// `why` is safe to show (no URL in it).
    Failed {
        status: Option<u16>,
        why: String,
    },
}

/// The body of a request: `{"tags": [...], "source": "cdc-worker", "committed_at": {...}}`.
/// `committed_at` maps a tag to the commit time (unix ms) of the newest source change it
/// revalidates, for the tags that come from streamed changes (none for `cdc-worker
/// revalidate`): the app can then show how long the pipeline took from that commit to its
/// summary row and to the revalidation. Receivers ignore fields they do not know.
pub fn body(tags: &[String], committed: &BTreeMap<String, SystemTime>) -> String {
    // Only this request's tags: a delivery sent in parts shares one map.
    let committed: serde_json::Map<String, serde_json::Value> = tags
        .iter()
        .filter_map(|tag| {
            let t = committed.get(tag)?;
            let ms = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as u64;
            Some((tag.clone(), ms.into()))
        })
        .collect();
    serde_json::json!({ "tags": tags, "source": "cdc-worker", "committed_at": committed })
        .to_string()
}

/// POSTs one signed batch of tags (`committed`: see [`body`]). A failure's `why` is safe
/// to log, store and print: what the endpoint answered may echo URLs with credentials, or
/// the secret, and may be a whole error page ([`redact_answer`]).
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    tags: &[String],
    committed: &BTreeMap<String, SystemTime>,
) -> Outcome {
    match send(http, url, secret, body(tags, committed)).await {
        Outcome::Failed { status, why } => Outcome::Failed {
            status,
            why: redact_answer(&why, &[secret]),
        },
        delivered => delivered,
    }
}

/// The most of an error answer's body that is read: [`redact_answer`] keeps far less,
/// and an endpoint streaming megabytes of error page must not hold delivery up.
const ANSWER_READ_BYTES: usize = 64 * 1024;

async fn send(http: &reqwest::Client, url: &str, secret: &str, body: String) -> Outcome {
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let sent = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-cdc-signature", signature(secret, now_ms, &body))
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Err(e) => {
            return Outcome::Failed {
                status: None,
                why: error_text(e),
            }
        }
        Ok(resp) => resp,
    };
    let status = resp.status();
    if status.is_success() {
        return Outcome::Delivered;
    }
    if status.is_redirection() {
        // Not followed (see http_client); say where it pointed, redacted.
        let target = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| resp.url().join(l).ok())
            .map_or_else(|| "nowhere".to_string(), |u| redact_url(u.as_str()));
        return Outcome::Failed {
            status: Some(status.as_u16()),
            why: format!(
                "HTTP {status} redirect to {target}: not followed; configure the URL that \
                 answers the POST itself"
            ),
        };
    }
    let mut resp = resp;
    let mut body = Vec::new();
    while body.len() < ANSWER_READ_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(ANSWER_READ_BYTES);
    let text = String::from_utf8_lossy(&body);
    Outcome::Failed {
        status: Some(status.as_u16()),
        why: format!("HTTP {status}: {text}"),
    }
}

/// A reqwest error with its causes, without the URL it carries (which may hold
/// credentials).
fn error_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Exponential backoff with full jitter, capped.
pub fn backoff(attempt: u32) -> Duration {
    let base_ms = 200u64.saturating_mul(1 << attempt.min(8)).min(30_000);
    Duration::from_millis(rand::thread_rng().gen_range(base_ms / 2..=base_ms))
}

/// The HTTP client for revalidation. Redirects are not followed: reqwest would turn the
/// POST into a GET (a login page's 200 would count as delivered) and send the signature
/// to whatever host the redirect names. A 3xx is a failure like any other.
pub fn http_client(cfg: &Config) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.revalidate.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cdc-worker/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("building the HTTP client")
}

/// Spawns one delivery task per endpoint; they run until aborted.
pub fn spawn(
    cfg: &Config,
    db: &Database,
    metrics: Arc<Metrics>,
    enqueued: &watch::Sender<u64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let http = http_client(cfg);
    let all_keys: Vec<String> = cfg.revalidate.urls.iter().map(|u| redact_url(u)).collect();
    let migrated = Arc::new(tokio::sync::OnceCell::new());
    cfg.revalidate
        .urls
        .iter()
        .map(|url| {
            let endpoint = Endpoint {
                url: url.clone(),
                key: redact_url(url),
                all_keys: all_keys.clone(),
                migrated: migrated.clone(),
                secret: cfg.revalidate.secret.clone(),
                schema: state::schema(cfg),
                max_tags: cfg.revalidate.max_batch_tags,
                window: Duration::from_millis(cfg.revalidate.window_ms),
                give_up: Duration::from_secs(cfg.revalidate.give_up_after_secs),
                http: http.clone(),
                metrics: metrics.clone(),
                enqueued: enqueued.subscribe(),
            };
            let db = db.clone();
            tokio::spawn(async move { endpoint.run(db).await })
        })
        .collect()
}

struct Endpoint {
    /// The URL requests go to; shown nowhere.
    url: String,
    /// `redact_url(url)`: what logs, metrics and the state tables call this endpoint.
    key: String,
    all_keys: Vec<String>,
    /// Set once the stored endpoint keys were migrated (by the first task to get there).
    migrated: Arc<tokio::sync::OnceCell<()>>,
    secret: String,
    schema: String,
    max_tags: usize,
    window: Duration,
    give_up: Duration,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    /// Bumped by apply whenever it enqueued tags. A watch, not a Notify: each endpoint
    /// sees every bump even if it was busy sending when it happened.
    enqueued: watch::Receiver<u64>,
}

/// One coalesced delivery: the distinct tags of outbox rows up to `last_id`, sent in
/// requests of at most `max_tags`.
struct Pending {
    last_id: i64,
    tags: Vec<String>,
    /// Commit times, one per tag of every row (a tag of two rows counts twice), for the
    /// latency metric.
    commit_times: Vec<(SystemTime, usize)>,
    /// Per tag, the newest commit time among its rows (sent with the tags).
    committed: BTreeMap<String, SystemTime>,
}

impl Endpoint {
    /// Reconnects to the database on failure; never returns.
    async fn run(mut self, db: Database) {
        let mut attempt = 0;
        loop {
            match db.connect("cdc-worker/deliver").await {
                Ok(mut client) => {
                    attempt = 0;
                    let migrated = self
                        .migrated
                        .get_or_try_init(|| {
                            outbox::migrate_endpoint_keys(&mut client, &self.schema)
                        })
                        .await;
                    if let Err(e) = migrated {
                        tracing::warn!(error = %format!("{e:#}"), "cannot migrate the stored endpoint keys; retrying");
                    } else if let Err(e) = self.serve(&client).await {
                        tracing::warn!(endpoint = %self.key, error = %format!("{e:#}"), "delivery interrupted; resuming");
                    }
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.key, error = %e, "deliverer cannot reach the database");
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    async fn serve(&mut self, client: &Client) -> anyhow::Result<()> {
        let s = &self.schema;
        client
            .execute(&outbox::cursor_init_sql(s), &[&self.key])
            .await?;
        let mut cursor: i64 = client
            .query_one(&outbox::cursor_read_sql(s), &[&self.key])
            .await?
            .get(0);
        let fetch = client.prepare(&outbox::fetch_sql(s)).await?;
        let advance = client.prepare(&outbox::cursor_advance_sql(s)).await?;
        let record_failure = client.prepare(&outbox::park_sql(s)).await?;
        // Rows every configured endpoint has received are done.
        let trim = client.prepare(&outbox::trim_sql(s)).await?;
        let mut last_trim = Instant::now();
        loop {
            let Some(pending) = self.next_batch(client, &fetch, cursor).await? else {
                // Nothing to send: sleep until woken by apply or the poll interval.
                let _ = tokio::time::timeout(POLL, self.enqueued.changed()).await;
                // Let the rest of a burst arrive, so one request carries it.
                tokio::time::sleep(self.window).await;
                continue;
            };
            self.deliver(client, &pending, &record_failure).await?;
            client
                .execute(&advance, &[&self.key, &pending.last_id])
                .await?;
            cursor = pending.last_id;
            if last_trim.elapsed() >= Duration::from_secs(1) {
                client.execute(&trim, &[&self.all_keys]).await?;
                last_trim = Instant::now();
            }
        }
    }

    /// Reads outbox rows after the cursor, in id order, while they add up to at most
    /// `max_tags` distinct tags. A first row with more (a pass that revalidates every
    /// product, or a `max_batch_tags` lowered since) is taken whole and sent in parts: the
    /// cursor moves past a row only when all of it was delivered.
    async fn next_batch(
        &self,
        client: &Client,
        fetch: &tokio_postgres::Statement,
        cursor: i64,
    ) -> anyhow::Result<Option<Pending>> {
        let rows = client
            .query(fetch, &[&cursor, &(self.max_tags as i64)])
            .await?;
        let mut seen = BTreeSet::new();
        let mut pending = Pending {
            last_id: cursor,
            tags: Vec::new(),
            commit_times: Vec::new(),
            committed: BTreeMap::new(),
        };
        for row in &rows {
            let tags: Vec<String> = row.get(1);
            let new = tags.iter().filter(|t| !seen.contains(*t)).count();
            if !seen.is_empty() && seen.len() + new > self.max_tags {
                break;
            }
            let commit_time = row.get::<_, Option<SystemTime>>(2);
            if let Some(t) = commit_time {
                pending.commit_times.push((t, tags.len()));
            }
            for tag in tags {
                if let Some(t) = commit_time {
                    let newest = pending.committed.entry(tag.clone()).or_insert(t);
                    *newest = (*newest).max(t);
                }
                if seen.insert(tag.clone()) {
                    pending.tags.push(tag);
                }
            }
            pending.last_id = row.get(0);
        }
        Ok((pending.last_id > cursor).then_some(pending))
    }

    /// Delivers `pending` in requests of at most `max_tags` tags, each as [`Self::send`]
    /// does; the latency metric is observed once all are delivered.
    async fn deliver(
        &self,
        client: &Client,
        pending: &Pending,
        record_failure: &tokio_postgres::Statement,
    ) -> anyhow::Result<()> {
        for part in pending.tags.chunks(self.max_tags) {
            self.send(client, part, &pending.committed, record_failure)
                .await?;
        }
        let now = SystemTime::now();
        for &(t, tags) in &pending.commit_times {
            let latency = now.duration_since(t).unwrap_or_default().as_secs_f64();
            for _ in 0..tags {
                self.metrics.revalidate_latency.observe(latency);
            }
        }
        Ok(())
    }

    /// Sends until the endpoint accepts, retrying every failure with backoff; after
    /// `give_up` of failures the tags are parked in `outbox_failed` (kept, counted by
    /// `cdc_outbox_failed_tags`, sent again by `revalidate --failed`) so that one
    /// endpoint broken for good does not hold its later tags forever.
    async fn send(
        &self,
        client: &Client,
        tags: &[String],
        committed: &BTreeMap<String, SystemTime>,
        record_failure: &tokio_postgres::Statement,
    ) -> anyhow::Result<()> {
        let mut attempt = 0;
        let first_failure = Instant::now();
        loop {
            let (status, why) = match post(&self.http, &self.url, &self.secret, tags, committed)
                .await
            {
                Outcome::Delivered => {
                    self.metrics.record_request(&self.key, "ok");
                    if attempt > 0 {
                        tracing::info!(endpoint = %self.key, attempts = attempt + 1, "endpoint is back; delivered");
                    }
                    tracing::debug!(endpoint = %self.key, tags = tags.len(), "revalidated");
                    return Ok(());
                }
                Outcome::Failed { status, why } => (status, why),
            };
            let failing_for = first_failure.elapsed();
            if failing_for >= self.give_up {
                self.metrics.record_request(&self.key, "failed");
                tracing::error!(endpoint = %self.key, status, error = %why, tags = tags.len(),
                    attempts = attempt + 1, failing_for = ?failing_for,
                    "revalidation kept failing; tags parked in outbox_failed (send them again with `cdc-worker revalidate --failed` once the endpoint works; check the URL, the secret and the route handler)");
                client
                    .execute(
                        record_failure,
                        &[&self.key, &tags, &status.map(i32::from), &why],
                    )
                    .await?;
                return Ok(());
            }
            self.metrics.record_request(&self.key, "retry");
            // Never sleep past the give-up time: parking happens on time.
            let wait = backoff(attempt).min(self.give_up - failing_for);
            if attempt == 0 || attempt % 10 == 0 {
                tracing::warn!(endpoint = %self.key, status, error = %why, retry_in = ?wait, attempt = attempt + 1,
                    give_up_in = ?(self.give_up - failing_for),
                    "revalidation failed; tags stay in the outbox and are retried");
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // Computed independently: printf '1700000000000.{"tags":["a"]}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            signature("s3cret", 1_700_000_000_000, r#"{"tags":["a"]}"#),
            "t=1700000000000,v1=8e0af4502aead9e5944c54e6365b3813f6fd3af01aad97b5bcc8f80ac9d32cd7"
        );
    }

    #[test]
    fn the_body_carries_each_tag_s_newest_commit_time() {
        let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let tags = vec!["product:p1".to_string(), "store:s1:products".to_string()];
        let committed = BTreeMap::from([("product:p1".to_string(), at(1_700_000_000_123))]);
        let v: serde_json::Value = serde_json::from_str(&body(&tags, &committed)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "tags": ["product:p1", "store:s1:products"],
                "source": "cdc-worker",
                "committed_at": { "product:p1": 1_700_000_000_123u64 },
            })
        );
        let none: serde_json::Value = serde_json::from_str(&body(&tags, &BTreeMap::new())).unwrap();
        assert_eq!(none["committed_at"], serde_json::json!({}));
        // A delivery sent in parts shares one map: each part carries only its own tags.
        let mut shared = committed.clone();
        shared.insert("product:p9".into(), at(1_700_000_000_999));
        let part: serde_json::Value = serde_json::from_str(&body(&tags, &shared)).unwrap();
        assert_eq!(
            part["committed_at"],
            serde_json::json!({ "product:p1": 1_700_000_000_123u64 })
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(0) <= Duration::from_millis(200));
        assert!(backoff(3) >= Duration::from_millis(800));
        assert!(backoff(30) <= Duration::from_secs(30));
    }
}
