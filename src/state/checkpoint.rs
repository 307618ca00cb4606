//! The checkpoint: per slot, the LSN up to which every change is in the summary, and the
//! durable "recompute pending" mark. Apply writes the LSN in the transaction of the rows
//! it covers ([`write_sql`]); the slot is never told more than what is stored here.

use anyhow::Context as _;
use pgwire_replication::Lsn;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::config::Config;
use crate::pg::server::ServerId;
use crate::pg::sql::quote_ident;

/// Apply's checkpoint write (`$1` slot, `$2` LSN, `$3` reset, `$4` the source commit time
/// of the newest transaction applied, if the batch had one, `$5` definition, `$6` system
/// identifier, `$7` timeline). While streaming the checkpoint only moves forward
/// (`greatest`), so a replayed batch can never move it back; a recompute of every product
/// sets it to the slot's start (`$3` true; possibly lower, after a restore), clears the
/// recompute mark and records what the rows were computed with and where ([`Stamp`]), all
/// in the transaction of the last page. `commit_time` is what `status` shows as the last
/// applied commit; a recompute read everything committed before it began, so it counts as
/// now then.
pub fn write_sql(state: &str) -> String {
    format!(
        "INSERT INTO {state}.checkpoint AS c (slot_name, lsn, commit_time, definition, \
         system_identifier, timeline) \
         VALUES ($1, $2, CASE WHEN $3 THEN coalesce($4::timestamptz, now()) ELSE $4 END, \
         CASE WHEN $3 THEN $5::jsonb END, CASE WHEN $3 THEN $6::int8 END, \
         CASE WHEN $3 THEN $7::int4 END) \
         ON CONFLICT (slot_name) DO UPDATE SET lsn = CASE WHEN $3 THEN EXCLUDED.lsn \
         ELSE greatest(c.lsn, EXCLUDED.lsn) END, \
         recompute_reason = CASE WHEN $3 THEN NULL ELSE c.recompute_reason END, \
         commit_time = CASE WHEN $3 THEN EXCLUDED.commit_time \
         ELSE greatest(c.commit_time, EXCLUDED.commit_time) END, \
         definition = CASE WHEN $3 THEN EXCLUDED.definition ELSE c.definition END, \
         system_identifier = CASE WHEN $3 THEN EXCLUDED.system_identifier \
         ELSE c.system_identifier END, \
         timeline = CASE WHEN $3 THEN EXCLUDED.timeline ELSE c.timeline END, \
         updated_at = now()"
    )
}

/// What a recompute of every product records with its last page: the definition of a row
/// it computed with ([`crate::shop::definition::Definition::to_json`]) and the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    pub definition: serde_json::Value,
    pub server: ServerId,
}

/// The stored checkpoint of `slot` in state schema `schema`, if any.
pub async fn read(client: &Client, schema: &str, slot: &str) -> anyhow::Result<Option<Lsn>> {
    let sql = format!(
        "SELECT lsn FROM {}.checkpoint WHERE slot_name = $1",
        quote_ident(schema)
    );
    let row = client.query_opt(&sql, &[&slot]).await?;
    Ok(row.map(|r| Lsn(u64::from(r.get::<_, PgLsn>(0)))))
}

/// The checkpoint row as the start-up decision reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// `None` when there is no row, or only the 0/0 placeholder of a mark written before
    /// the first checkpoint.
    pub lsn: Option<Lsn>,
    /// The durable recompute mark: why every product must be recomputed before streaming.
    pub recompute_reason: Option<String>,
    /// What the rows were computed with, when recorded ([`Stamp`]).
    pub definition: Option<serde_json::Value>,
    /// Where, when recorded.
    pub server: Option<ServerId>,
}

/// Reads the checkpoint of `cfg.slot` with its mark and stamp.
pub async fn read_with_mark(client: &Client, cfg: &Config) -> anyhow::Result<Stored> {
    let state = quote_ident(&cfg.schema);
    let row = client
        .query_opt(
            &format!(
                "SELECT lsn, recompute_reason, definition, system_identifier, timeline \
                 FROM {state}.checkpoint WHERE slot_name = $1"
            ),
            &[&cfg.slot],
        )
        .await?;
    Ok(match row {
        Some(r) => {
            let lsn = Lsn(u64::from(r.get::<_, PgLsn>(0)));
            let server = match (r.get(3), r.get(4)) {
                (Some(system_identifier), Some(timeline)) => Some(ServerId {
                    system_identifier,
                    timeline,
                }),
                _ => None,
            };
            Stored {
                lsn: Some(lsn).filter(|l| l.0 != 0),
                recompute_reason: r.get(1),
                definition: r.get(2),
                server,
            }
        }
        None => Stored::default(),
    })
}

/// Records the server of a checkpoint that has none (a state schema of an earlier
/// version): from here on a change of server is noticed.
pub async fn record_server(client: &Client, cfg: &Config, server: ServerId) -> anyhow::Result<()> {
    let state = quote_ident(&cfg.schema);
    client
        .execute(
            &format!(
                "UPDATE {state}.checkpoint SET system_identifier = $2, timeline = $3 \
                 WHERE slot_name = $1 AND system_identifier IS NULL"
            ),
            &[&cfg.slot, &server.system_identifier, &server.timeline],
        )
        .await
        .context("recording the server with the checkpoint")?;
    Ok(())
}

/// Writes the durable "recompute pending" mark (inserting a 0/0 checkpoint when there is
/// none yet). An earlier mark's reason is kept: the recompute it asked for is the one
/// still owed.
pub async fn mark(client: &Client, cfg: &Config, reason: &str) -> anyhow::Result<()> {
    let state = quote_ident(&cfg.schema);
    client
        .execute(
            &format!(
                "INSERT INTO {state}.checkpoint AS c (slot_name, lsn, recompute_reason) \
                 VALUES ($1, '0/0', $2) ON CONFLICT (slot_name) DO UPDATE \
                 SET recompute_reason = coalesce(c.recompute_reason, EXCLUDED.recompute_reason), \
                     updated_at = now()"
            ),
            &[&cfg.slot, &reason],
        )
        .await
        .context("writing the recompute mark")?;
    Ok(())
}

/// The checkpoint as `status` shows it.
#[derive(Debug, Clone)]
pub struct Progress {
    pub lsn: Option<Lsn>,
    /// The durable recompute mark: a recompute of every product is owed or under way.
    pub recompute_reason: Option<String>,
    /// Seconds since the source commit time of the newest transaction applied (`None`
    /// before the first, or on a state schema of an earlier version).
    pub commit_age_seconds: Option<f64>,
    /// Seconds since the checkpoint row was last written.
    pub written_age_seconds: f64,
}

/// The checkpoint of `cfg.slot` for `status`, read only. `commit_time` is read through
/// `to_jsonb`, so a state schema that an earlier version set up (without the column) is
/// read as it is, never upgraded by a status check.
pub async fn progress(client: &Client, cfg: &Config) -> anyhow::Result<Option<Progress>> {
    let state = quote_ident(&cfg.schema);
    let row = client
        .query_opt(
            &format!(
                "SELECT lsn, to_jsonb(c)->>'recompute_reason', \
                        extract(epoch FROM now() - (to_jsonb(c)->>'commit_time')::timestamptz)::float8, \
                        extract(epoch FROM now() - updated_at)::float8 \
                 FROM {state}.checkpoint c WHERE slot_name = $1"
            ),
            &[&cfg.slot],
        )
        .await?;
    Ok(row.map(|r| Progress {
        lsn: Some(Lsn(u64::from(r.get::<_, PgLsn>(0)))).filter(|l| l.0 != 0),
        recompute_reason: r.get(1),
        commit_age_seconds: r.get(2),
        written_age_seconds: r.get(3),
    }))
}
