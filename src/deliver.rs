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
use crate::db::{redact_url, Database};
use crate::metrics::Metrics;
use crate::summary::quote_ident;

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

/// POSTs one signed batch of tags.
pub async fn post(http: &reqwest::Client, url: &str, secret: &str, tags: &[String]) -> Outcome {
    let body = serde_json::json!({ "tags": tags, "source": "cdc-worker" }).to_string();
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
    let text: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(500)
        .collect();
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

/// The key of a stored endpoint (`outbox_cursor.endpoint`, `outbox_failed.endpoint`):
/// its URL normalized as the config loader does, then redacted. For a configured URL
/// this is `redact_url(url)`; for a row written before endpoints were redacted (the
/// full URL as it was configured) it is what that row's endpoint is called now.
fn endpoint_key(stored: &str) -> String {
    match crate::config::normalize_endpoint(stored) {
        Ok(url) => redact_url(&url),
        Err(_) => redact_url(stored),
    }
}

/// Renames endpoint values stored in full (with any credentials in them) by earlier
/// versions to their redacted key, keeping every cursor's position: rows that now share
/// a key (a URL listed twice) keep the lowest position, so nothing is skipped, at worst
/// sent again. Idempotent and cheap when there is nothing to do.
pub async fn migrate_endpoint_keys(client: &mut Client, schema: &str) -> anyhow::Result<()> {
    let s = schema;
    let stale = |rows: &[tokio_postgres::Row]| {
        rows.iter().any(|r| {
            let e: &str = r.get(0);
            endpoint_key(e) != e
        })
    };
    let cursor_sql = format!("SELECT endpoint, delivered_id FROM {s}.outbox_cursor");
    let failed_sql = format!("SELECT DISTINCT endpoint FROM {s}.outbox_failed");
    if !stale(&client.query(&cursor_sql, &[]).await?)
        && !stale(&client.query(&failed_sql, &[]).await?)
    {
        return Ok(());
    }
    let tx = client.transaction().await?;
    // Against another process migrating (or delivering) at the same moment.
    tx.batch_execute(&format!(
        "LOCK TABLE {s}.outbox_cursor, {s}.outbox_failed IN SHARE ROW EXCLUSIVE MODE"
    ))
    .await?;
    let mut by_key: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    let mut moved = Vec::new();
    for row in tx.query(&cursor_sql, &[]).await? {
        let endpoint: String = row.get(0);
        by_key
            .entry(endpoint_key(&endpoint))
            .or_default()
            .push((endpoint, row.get(1)));
    }
    for (key, rows) in by_key {
        if rows.iter().all(|(e, _)| *e == key) {
            continue;
        }
        let resume = rows.iter().map(|(_, id)| *id).min().unwrap_or(0);
        let old: Vec<&str> = rows.iter().map(|(e, _)| e.as_str()).collect();
        tx.execute(
            &format!("DELETE FROM {s}.outbox_cursor WHERE endpoint = ANY($1)"),
            &[&old],
        )
        .await?;
        tx.execute(
            &format!("INSERT INTO {s}.outbox_cursor (endpoint, delivered_id) VALUES ($1, $2)"),
            &[&key, &resume],
        )
        .await?;
        moved.push((key, resume, rows.len()));
    }
    let mut renamed = 0;
    for row in tx.query(&failed_sql, &[]).await? {
        let endpoint: &str = row.get(0);
        let key = endpoint_key(endpoint);
        if key != endpoint {
            renamed += tx
                .execute(
                    &format!("UPDATE {s}.outbox_failed SET endpoint = $2 WHERE endpoint = $1"),
                    &[&endpoint, &key],
                )
                .await?;
        }
    }
    tx.commit().await?;
    // Logged once committed: a failed attempt is retried and says nothing.
    for (key, resume, rows) in moved {
        tracing::info!(endpoint = %key, delivered_id = resume, rows,
            "delivery cursor renamed from the full URL to its redacted form (no credentials in the state tables); delivery resumes where it stopped, nothing is skipped");
    }
    if renamed > 0 {
        tracing::info!(
            rows = renamed,
            "outbox_failed: endpoints stored as full URLs replaced by their redacted form"
        );
    }
    Ok(())
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
                schema: quote_ident(&cfg.schema),
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

/// One coalesced request: the distinct tags of outbox rows up to `last_id`.
struct Pending {
    last_id: i64,
    tags: Vec<String>,
    commit_times: Vec<SystemTime>,
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
                        .get_or_try_init(|| migrate_endpoint_keys(&mut client, &self.schema))
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
            .execute(
                &format!(
                    "INSERT INTO {s}.outbox_cursor (endpoint, delivered_id) VALUES ($1, 0) \
                     ON CONFLICT (endpoint) DO NOTHING"
                ),
                &[&self.key],
            )
            .await?;
        let mut cursor: i64 = client
            .query_one(
                &format!("SELECT delivered_id FROM {s}.outbox_cursor WHERE endpoint = $1"),
                &[&self.key],
            )
            .await?
            .get(0);
        let fetch = client
            .prepare(&format!(
                "SELECT id, tag, commit_time FROM {s}.outbox WHERE id > $1 ORDER BY id LIMIT $2"
            ))
            .await?;
        let advance = client
            .prepare(&format!(
                "UPDATE {s}.outbox_cursor SET delivered_id = $2, updated_at = now() WHERE endpoint = $1"
            ))
            .await?;
        let record_failure = client
            .prepare(&format!(
                "INSERT INTO {s}.outbox_failed (endpoint, tags, status, response) VALUES ($1, $2, $3, $4)"
            ))
            .await?;
        // Rows every configured endpoint has received are done.
        let trim = client
            .prepare(&format!(
                "DELETE FROM {s}.outbox WHERE id <= (SELECT min(delivered_id) FROM {s}.outbox_cursor \
                 WHERE endpoint = ANY($1)) AND (SELECT count(*) FROM {s}.outbox_cursor \
                 WHERE endpoint = ANY($1)) = cardinality($1)"
            ))
            .await?;
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

    /// Reads outbox rows after the cursor, in id order, until `max_tags` distinct tags.
    async fn next_batch(
        &self,
        client: &Client,
        fetch: &tokio_postgres::Statement,
        cursor: i64,
    ) -> anyhow::Result<Option<Pending>> {
        let rows = client
            .query(fetch, &[&cursor, &((self.max_tags * 4) as i64)])
            .await?;
        let mut seen = BTreeSet::new();
        let mut pending = Pending {
            last_id: cursor,
            tags: Vec::new(),
            commit_times: Vec::new(),
        };
        for row in &rows {
            let tag: String = row.get(1);
            if !seen.contains(&tag) {
                if seen.len() == self.max_tags {
                    break;
                }
                seen.insert(tag.clone());
                pending.tags.push(tag);
            }
            pending.last_id = row.get(0);
            if let Some(t) = row.get::<_, Option<SystemTime>>(2) {
                pending.commit_times.push(t);
            }
        }
        Ok((pending.last_id > cursor).then_some(pending))
    }

    /// Sends until the endpoint accepts, retrying every failure with backoff; after
    /// `give_up` of failures the tags are parked in `outbox_failed` (kept, counted by
    /// `cdc_outbox_failed_tags`, sent again by `revalidate --failed`) so that one
    /// endpoint broken for good does not hold its later tags forever.
    async fn deliver(
        &self,
        client: &Client,
        pending: &Pending,
        record_failure: &tokio_postgres::Statement,
    ) -> anyhow::Result<()> {
        let mut attempt = 0;
        let first_failure = Instant::now();
        loop {
            let (status, why) = match post(&self.http, &self.url, &self.secret, &pending.tags).await
            {
                Outcome::Delivered => {
                    self.metrics.record_request(&self.key, "ok");
                    let now = SystemTime::now();
                    for t in &pending.commit_times {
                        self.metrics
                            .revalidate_latency
                            .observe(now.duration_since(*t).unwrap_or_default().as_secs_f64());
                    }
                    if attempt > 0 {
                        tracing::info!(endpoint = %self.key, attempts = attempt + 1, "endpoint is back; delivered");
                    }
                    tracing::debug!(endpoint = %self.key, tags = pending.tags.len(), "revalidated");
                    return Ok(());
                }
                Outcome::Failed { status, why } => (status, why),
            };
            let failing_for = first_failure.elapsed();
            if failing_for >= self.give_up {
                self.metrics.record_request(&self.key, "failed");
                tracing::error!(endpoint = %self.key, status, error = %why, tags = pending.tags.len(),
                    attempts = attempt + 1, failing_for = ?failing_for,
                    "revalidation kept failing; tags parked in outbox_failed (send them again with `cdc-worker revalidate --failed` once the endpoint works; check the URL, the secret and the route handler)");
                client
                    .execute(
                        record_failure,
                        &[&self.key, &pending.tags, &status.map(i32::from), &why],
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

/// `cdc-worker revalidate`: the operator's manual trigger. Sends the tags of the given
/// products and stores to every endpoint at once (with a few retries) and reports each
/// result, instead of going through the outbox, so the operator sees what happened.
pub async fn revalidate_now(
    cfg: &Config,
    products: &[String],
    stores: &[String],
) -> anyhow::Result<bool> {
    if cfg.revalidate.urls.is_empty() {
        return Err(crate::error::definite(
            "no revalidation endpoints: set CDC_REVALIDATE_URLS (and CDC_REVALIDATE_SECRET)",
        ));
    }
    let templates = crate::summary::TagTemplates::from_config(cfg);
    let mut tags = BTreeSet::new();
    if !products.is_empty() {
        let db = Database::parse(&cfg.database_url)?;
        let client = db.connect("cdc-worker/revalidate").await?;
        let layout = crate::layout::Layout::load(&client, cfg).await?;
        let rows = client
            .query(
                &format!(
                    "SELECT t.{pid}::text, t.{}::text FROM {} t WHERE t.{pid} = ANY({})",
                    layout.col.store_id,
                    layout.summary,
                    layout.ids(1),
                    pid = layout.col.product_id,
                ),
                &[&products],
            )
            .await
            .map_err(|e| anyhow::Error::new(e).context("looking up the products' stores"))?;
        for id in products {
            let store = rows
                .iter()
                .find(|r| r.get::<_, &str>(0) == id)
                .map(|r| r.get::<_, String>(1));
            if store.is_none() {
                tracing::warn!(product = %id, "no summary row: its store tag is unknown and is not sent");
            }
            templates.product_tags(id, store.as_deref(), &mut tags);
        }
    }
    for store in stores {
        templates.store_tags(store, &mut tags);
    }
    let tags: Vec<String> = tags.into_iter().collect();
    let http = http_client(cfg);
    let mut all_ok = true;
    for url in &cfg.revalidate.urls {
        let label = redact_url(url);
        match post_with_retries(&http, url, &label, &cfg.revalidate.secret, &tags).await {
            Outcome::Delivered => println!("{label}: revalidated {}", tags.join(" ")),
            Outcome::Failed { why, .. } => {
                all_ok = false;
                println!("{label}: FAILED after retries: {why}");
            }
        }
    }
    Ok(all_ok)
}

/// A command's POST: a few quick retries, so that the operator waits seconds, not the
/// daemon's `give_up_after_secs`.
async fn post_with_retries(
    http: &reqwest::Client,
    url: &str,
    label: &str,
    secret: &str,
    tags: &[String],
) -> Outcome {
    let mut attempt = 0;
    loop {
        match post(http, url, secret, tags).await {
            Outcome::Failed { why, .. } if attempt < 4 => {
                tracing::warn!(endpoint = %label, error = %why, "retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// `cdc-worker revalidate --failed`: sends the tags parked in `outbox_failed` again, each
/// row to the endpoint that gave up on it, and deletes the rows that were delivered.
/// Prints one line per row. Returns whether every row was delivered.
pub async fn redeliver_failed(cfg: &Config) -> anyhow::Result<bool> {
    if cfg.revalidate.urls.is_empty() {
        return Err(crate::error::definite(
            "no revalidation endpoints: set CDC_REVALIDATE_URLS (and CDC_REVALIDATE_SECRET)",
        ));
    }
    let db = Database::parse(&cfg.database_url)?;
    let mut client = db.connect("cdc-worker/revalidate").await?;
    let s = quote_ident(&cfg.schema);
    // Rows written by earlier versions name the endpoint in full: rename them first, so
    // that they match the configured endpoints and nothing secret is printed.
    migrate_endpoint_keys(&mut client, &s).await.map_err(|e| {
        anyhow::anyhow!(
            "reading {s}.outbox_cursor and {s}.outbox_failed on {}: {e:#} (if they do \
                 not exist, run `cdc-worker setup` first)",
            db.display()
        )
    })?;
    let rows = client
        .query(
            &format!(
                "SELECT id, endpoint, tags, status, failed_at::text FROM {s}.outbox_failed ORDER BY id"
            ),
            &[],
        )
        .await?;
    if rows.is_empty() {
        println!("outbox_failed is empty: nothing to redeliver");
        return Ok(true);
    }
    let urls: BTreeMap<String, &String> = cfg
        .revalidate
        .urls
        .iter()
        .map(|u| (redact_url(u), u))
        .collect();
    let http = http_client(cfg);
    let (mut rows_done, mut tags_done) = (0, 0);
    for row in &rows {
        let id: i64 = row.get(0);
        let key: String = row.get(1);
        let tags: Vec<String> = row.get(2);
        let status = row
            .get::<_, Option<i32>>(3)
            .map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}"));
        let failed_at: String = row.get(4);
        let Some(url) = urls.get(&key) else {
            println!(
                "row {id}: {key} is not a configured endpoint (CDC_REVALIDATE_URLS); its {} tags \
                 stay in outbox_failed",
                tags.len()
            );
            continue;
        };
        let mut result = Outcome::Delivered;
        for chunk in tags.chunks(cfg.revalidate.max_batch_tags) {
            result = post_with_retries(&http, url, &key, &cfg.revalidate.secret, chunk).await;
            if result != Outcome::Delivered {
                break;
            }
        }
        match result {
            Outcome::Delivered => {
                client
                    .execute(
                        &format!("DELETE FROM {s}.outbox_failed WHERE id = $1"),
                        &[&id],
                    )
                    .await?;
                rows_done += 1;
                tags_done += tags.len();
                println!(
                    "row {id}: {key}: redelivered {} tags (parked {failed_at} after {status}): {}",
                    tags.len(),
                    tags.join(" ")
                );
            }
            Outcome::Failed { why, .. } => {
                println!("row {id}: {key}: FAILED again, left in outbox_failed: {why}");
            }
        }
    }
    println!(
        "redelivered {rows_done} of {} parked rows ({tags_done} tags)",
        rows.len()
    );
    Ok(rows_done == rows.len())
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
    fn backoff_grows_and_caps() {
        assert!(backoff(0) <= Duration::from_millis(200));
        assert!(backoff(3) >= Duration::from_millis(800));
        assert!(backoff(30) <= Duration::from_secs(30));
    }

    #[test]
    fn stored_full_urls_map_to_the_configured_key() {
        let configured =
            crate::config::normalize_endpoint("http://u:pw@Shop:80/r?token=t").unwrap();
        assert_eq!(redact_url(&configured), "http://***@shop/r?token=***");
        assert_eq!(
            endpoint_key("http://u:pw@Shop:80/r?token=t"),
            redact_url(&configured)
        );
        assert_eq!(
            endpoint_key("http://u:pw@shop/r?token=t"),
            redact_url(&configured)
        );
        // Already a key: unchanged (the migration is idempotent).
        assert_eq!(
            endpoint_key(&redact_url(&configured)),
            redact_url(&configured)
        );
    }
}
