//! The outbox tables: `outbox` (tags waiting for delivery, written with the summary change
//! that caused them: one row per apply transaction, holding its distinct tags and their
//! count), `outbox_cursor` (how far each endpoint was served), `outbox_failed`
//! (tags parked after an endpoint kept failing) and `outbox_held` (hot tags waiting for
//! their interval). Every statement on them is built here; `state` is the quoted schema.
//!
//! Rows of `outbox` and `outbox_held` are written only under the apply lock
//! ([`super::locks`]), so outbox ids become visible in increasing order and a cursor that
//! moves past an id never skips one that commits later.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::redact::redact_url;

/// Apply's enqueue: `$1` the transaction's distinct tags, `$2` the source commit time. One
/// row for all of them, not one per tag: a row per tag cost as much WAL as the shop's own
/// updates (a heap and an index entry per tag, then a delete each; bench/RESULTS.md,
/// issue 21), and the deliverers read tags in id order anyway.
pub fn enqueue_sql(state: &str) -> String {
    format!(
        "INSERT INTO {state}.outbox (tags, tag_count, commit_time) \
         VALUES ($1::text[], cardinality($1::text[]), $2)"
    )
}

/// Apply's hold of hot tags (`$1` tags, `$2` their intervals in ms, `$3` the source commit
/// time): makes each tag pending unless it already is. Returns one row per tag made
/// pending. See `outbox::hold` for why nothing is lost.
pub fn hold_sql(state: &str) -> String {
    format!(
        "INSERT INTO {state}.outbox_held AS h (tag, due_at, min_interval_ms, commit_time) \
         SELECT t.tag, now(), t.ms, $3 FROM unnest($1::text[], $2::int8[]) AS t(tag, ms) \
         ON CONFLICT (tag) DO UPDATE SET \
           due_at = greatest(now(), h.released_at + EXCLUDED.min_interval_ms * interval '1 millisecond'), \
           min_interval_ms = EXCLUDED.min_interval_ms, commit_time = EXCLUDED.commit_time \
         WHERE h.due_at IS NULL \
         RETURNING 1"
    )
}

/// Moves every due held tag into the outbox (one row, with the oldest commit time they
/// cover: the latency metric then counts from the oldest change) and records its release;
/// returns the count of tags. Run only under the apply lock.
pub fn release_sql(state: &str) -> String {
    format!(
        "WITH r AS (UPDATE {state}.outbox_held SET due_at = NULL, released_at = now() \
                    WHERE due_at <= now() RETURNING tag, commit_time), \
              o AS (INSERT INTO {state}.outbox (tags, tag_count, commit_time) \
                    SELECT array_agg(tag ORDER BY tag), count(*), min(commit_time) FROM r \
                    HAVING count(*) > 0 RETURNING tag_count) \
         SELECT coalesce(sum(tag_count), 0)::int8 FROM o"
    )
}

/// Seconds until the earliest held tag is due (negative: overdue; null: none pending).
pub fn next_due_sql(state: &str) -> String {
    format!(
        "SELECT extract(epoch FROM min(due_at) - clock_timestamp())::float8 \
         FROM {state}.outbox_held WHERE due_at IS NOT NULL"
    )
}

/// Forgets held-tag rows idle for longer than `$1` ms (longer than any interval): such a
/// row is as good as none.
pub fn forget_idle_sql(state: &str) -> String {
    format!(
        "DELETE FROM {state}.outbox_held WHERE due_at IS NULL \
         AND released_at < now() - $1::int8 * interval '1 millisecond'"
    )
}

/// Creates the cursor of endpoint `$1` at 0 unless it exists.
pub fn cursor_init_sql(state: &str) -> String {
    format!(
        "INSERT INTO {state}.outbox_cursor (endpoint, delivered_id) VALUES ($1, 0) \
         ON CONFLICT (endpoint) DO NOTHING"
    )
}

/// The cursor of endpoint `$1`.
pub fn cursor_read_sql(state: &str) -> String {
    format!("SELECT delivered_id FROM {state}.outbox_cursor WHERE endpoint = $1")
}

/// Moves the cursor of endpoint `$1` to `$2`.
pub fn cursor_advance_sql(state: &str) -> String {
    format!(
        "UPDATE {state}.outbox_cursor SET delivered_id = $2, updated_at = now() WHERE endpoint = $1"
    )
}

/// The outbox rows after id `$1`, in id order, that start before `$2` tags have been
/// counted: enough to fill a request of `$2` distinct tags, and at most one row past it,
/// judged from `tag_count` so that the rows left out are never read (a pass that
/// revalidates every product writes rows of thousands of tags).
pub fn fetch_sql(state: &str) -> String {
    format!(
        "SELECT id, tags, commit_time FROM \
           (SELECT id, tags, commit_time, sum(tag_count) OVER (ORDER BY id) - tag_count AS before \
            FROM {state}.outbox WHERE id > $1 ORDER BY id LIMIT $2) r \
         WHERE before < $2 ORDER BY id"
    )
}

/// Deletes the rows every configured endpoint (`$1`, their keys) has received; nothing
/// while one of them has no cursor yet.
pub fn trim_sql(state: &str) -> String {
    format!(
        "DELETE FROM {state}.outbox WHERE id <= (SELECT min(delivered_id) FROM {state}.outbox_cursor \
         WHERE endpoint = ANY($1)) AND (SELECT count(*) FROM {state}.outbox_cursor \
         WHERE endpoint = ANY($1)) = cardinality($1)"
    )
}

/// Parks tags (`$1` endpoint, `$2` tags, `$3` last status, `$4` last answer, redacted by
/// the caller: `redact::redact_answer`). The answer is cut at
/// [`ANSWER_MAX_CHARS`](crate::redact::ANSWER_MAX_CHARS) here too, so that the table's
/// bound does not depend on every caller.
pub fn park_sql(state: &str) -> String {
    format!(
        "INSERT INTO {state}.outbox_failed (endpoint, tags, status, response) \
         VALUES ($1, $2, $3, left($4::text, {}))",
        crate::redact::ANSWER_MAX_CHARS
    )
}

/// Every parked row, oldest first.
pub fn parked_sql(state: &str) -> String {
    format!(
        "SELECT id, endpoint, tags, status, failed_at::text FROM {state}.outbox_failed ORDER BY id"
    )
}

/// Deletes parked row `$1` (it was delivered).
pub fn unpark_sql(state: &str) -> String {
    format!("DELETE FROM {state}.outbox_failed WHERE id = $1")
}

/// Tags not yet delivered to every endpoint of `$1` (their keys), and the age in seconds
/// of the oldest.
pub fn pending_sql(state: &str) -> String {
    format!(
        "SELECT coalesce(sum(tag_count), 0)::int8, extract(epoch FROM now() - min(enqueued_at))::float8 \
         FROM {state}.outbox WHERE id > coalesce((SELECT min(delivered_id) FROM {state}.outbox_cursor \
         WHERE endpoint = ANY($1)), 0)"
    )
}

/// How many tags are parked.
pub fn parked_tags_sql(state: &str) -> String {
    format!("SELECT coalesce(sum(cardinality(tags)), 0)::int8 FROM {state}.outbox_failed")
}

/// How many held tags are pending, and how many seconds the most overdue of them is past
/// its due time (0 when none is). A held tag is released at its due time by the leader;
/// one far past it means no leader is releasing tags.
pub fn held_pending_sql(state: &str) -> String {
    format!(
        "SELECT count(*)::int8, \
                coalesce(greatest(extract(epoch FROM max(now() - due_at)), 0), 0)::float8 \
         FROM {state}.outbox_held WHERE due_at IS NOT NULL"
    )
}

/// One endpoint's delivery as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    /// The redacted URL (the key of `outbox_cursor` and `outbox_failed`).
    pub endpoint: String,
    /// The endpoint is in the configuration `status` was given.
    pub configured: bool,
    /// Tags of outbox rows not yet delivered to it.
    pub pending: i64,
    /// Age of the oldest of them.
    pub oldest_pending_seconds: Option<f64>,
    /// Tags parked in `outbox_failed` for it, in how many rows, the last when.
    pub parked_tags: i64,
    pub parked_rows: i64,
    pub last_parked_at: Option<String>,
}

/// Every endpoint the state tables know (a cursor or parked rows) and every configured
/// one (`configured`: their keys), with what waits for each. Read only.
pub async fn endpoints(
    client: &Client,
    state: &str,
    configured: &[String],
) -> anyhow::Result<Vec<EndpointStatus>> {
    let rows = client
        .query(
            &format!(
                "WITH e AS (SELECT endpoint, delivered_id FROM {state}.outbox_cursor \
                            UNION ALL SELECT k, 0 FROM unnest($1::text[]) k \
                            WHERE k NOT IN (SELECT endpoint FROM {state}.outbox_cursor)), \
                      f AS (SELECT endpoint, count(*)::int8 AS n, sum(cardinality(tags))::int8 AS tags, \
                                   to_char(max(failed_at) AT TIME ZONE 'UTC', \
                                           'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS last \
                            FROM {state}.outbox_failed GROUP BY endpoint) \
                 SELECT coalesce(e.endpoint, f.endpoint), \
                        (SELECT sum(o.tag_count)::int8 FROM {state}.outbox o WHERE o.id > e.delivered_id), \
                        (SELECT extract(epoch FROM now() - min(o.enqueued_at))::float8 \
                           FROM {state}.outbox o WHERE o.id > e.delivered_id), \
                        coalesce(f.tags, 0), coalesce(f.n, 0), f.last \
                 FROM e FULL JOIN f ON f.endpoint = e.endpoint ORDER BY 1"
            ),
            &[&configured],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let endpoint: String = r.get(0);
            EndpointStatus {
                configured: configured.contains(&endpoint),
                endpoint,
                pending: r.get::<_, Option<i64>>(1).unwrap_or(0),
                oldest_pending_seconds: r.get(2),
                parked_tags: r.get(3),
                parked_rows: r.get(4),
                last_parked_at: r.get(5),
            }
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

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
