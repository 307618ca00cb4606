//! What kind of server the worker talks to: whether its version is supported, which
//! managed-Postgres provider runs it (so that a setup error names the provider's own
//! switch instead of `ALTER SYSTEM`), and what state the replication slot is in as far as
//! failover and invalidation go.
//!
//! Everything here reads catalogs and settings only; nothing changes the server.

use std::collections::BTreeSet;

use pgwire_replication::Lsn;
use serde::Serialize;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;

use crate::error::definite;
use crate::pg::sql::quote_ident;

/// The oldest server the worker runs against: PostgreSQL 15. 14 reached its end of life
/// in November 2026, and 15 is the oldest version the test suite runs on (`make test`); a
/// version nobody tests is a version that silently breaks.
pub const MIN_SERVER_VERSION_NUM: i32 = 150000;

/// From 17 on a logical slot can be created with `failover = true` and synchronized to
/// physical standbys (`sync_replication_slots`), so it survives a promotion.
pub const FAILOVER_SLOTS_VERSION_NUM: i32 = 170000;

/// Refuses servers older than [`MIN_SERVER_VERSION_NUM`] with one line that says what to do.
/// `version` is `server_version` (e.g. "14.23"), for the message.
pub fn check_version_num(num: i32, version: &str) -> Result<(), String> {
    if num < MIN_SERVER_VERSION_NUM {
        return Err(format!(
            "PostgreSQL {version} is not supported (server_version_num {num} < {MIN_SERVER_VERSION_NUM}): \
             cdc-worker needs PostgreSQL 15 or newer. Fix: upgrade the server (pg_upgrade, or \
             the provider's major-version upgrade)"
        ));
    }
    Ok(())
}

/// The server's `server_version_num`, or a definite error if it is too old to run against.
pub async fn check_version(client: &Client) -> anyhow::Result<i32> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, current_setting('server_version')",
            &[],
        )
        .await?;
    let (num, version): (i32, String) = (row.get(0), row.get(1));
    check_version_num(num, &version).map_err(definite)?;
    Ok(num)
}

/// Whether the server can create failover slots (17+).
pub async fn supports_failover_slots(client: &Client) -> anyhow::Result<bool> {
    let num: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await?
        .get(0);
    Ok(num >= FAILOVER_SLOTS_VERSION_NUM)
}

/// Which server and which history of it: `pg_control_system()`'s system identifier (a
/// new one for every initdb; a physical standby shares its primary's) and the timeline
/// of the WAL being written (a promotion or a point-in-time restore starts a new one).
/// Either differing from what the checkpoint recorded means the database may have lost
/// writes the worker already applied and revalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerId {
    pub system_identifier: i64,
    pub timeline: i32,
}

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "system {} timeline {}",
            self.system_identifier, self.timeline
        )
    }
}

/// The server's [`ServerId`]. The timeline is the one of the WAL file being written
/// (`pg_walfile_name` of the insert position), not `pg_control_checkpoint()`'s: after a
/// promotion that one names the old timeline until the checkpoint the promotion requests
/// has completed, a spread checkpoint that takes a while on a busy server. On a server in
/// recovery (no insert position) the last checkpoint's timeline is all there is.
pub async fn identity(client: &Client) -> anyhow::Result<ServerId> {
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier FROM pg_control_system()), \
                    CASE WHEN pg_is_in_recovery() \
                         THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
                         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int4 \
                    END",
            &[],
        )
        .await?;
    Ok(ServerId {
        system_identifier: row.get(0),
        timeline: row.get(1),
    })
}

/// Who runs the server, as far as its settings and roles tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Amazon RDS for PostgreSQL (`rds.*` settings).
    Rds,
    /// Amazon Aurora PostgreSQL (`rds.*` settings and `aurora_version()`).
    Aurora,
    /// Google Cloud SQL for PostgreSQL (`cloudsql.*` flags).
    CloudSql,
    /// Azure Database for PostgreSQL flexible server (`azure.*` parameters).
    Azure,
    /// Neon (`neon.*` settings).
    Neon,
    /// Supabase (the `supautils` extension's settings, or its `supabase_admin` role).
    Supabase,
    /// Anything else: a self-hosted server, or a provider we do not recognise (Crunchy
    /// Bridge, for one, has no setting of its own to tell it by).
    SelfHosted,
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::Rds => "Amazon RDS",
            Provider::Aurora => "Amazon Aurora",
            Provider::CloudSql => "Google Cloud SQL",
            Provider::Azure => "Azure Database for PostgreSQL",
            Provider::Neon => "Neon",
            Provider::Supabase => "Supabase",
            Provider::SelfHosted => "self-hosted",
        }
    }

    /// Decides from the names of the server's settings (`pg_settings.name`) and two facts
    /// that no setting shows. Pure, so each provider's rule is unit-tested.
    pub fn from_settings<'a>(
        settings: impl IntoIterator<Item = &'a str>,
        has_aurora_version: bool,
        has_supabase_admin: bool,
    ) -> Provider {
        let mut rds = false;
        let mut found = None;
        for name in settings {
            let prefix = name.split('.').next().unwrap_or("");
            match prefix {
                "rds" => rds = true,
                "cloudsql" => found = found.or(Some(Provider::CloudSql)),
                "azure" => found = found.or(Some(Provider::Azure)),
                "neon" => found = found.or(Some(Provider::Neon)),
                "supautils" => found = found.or(Some(Provider::Supabase)),
                _ => {}
            }
        }
        if rds {
            return if has_aurora_version {
                Provider::Aurora
            } else {
                Provider::Rds
            };
        }
        found.unwrap_or(if has_supabase_admin {
            Provider::Supabase
        } else {
            Provider::SelfHosted
        })
    }

    /// How to get `wal_level = logical` on this provider.
    pub fn wal_level_fix(self) -> &'static str {
        match self {
            Provider::Rds => {
                "set rds.logical_replication = 1 in the instance's custom DB parameter group, \
                 then reboot the instance"
            }
            Provider::Aurora => {
                "set rds.logical_replication = 1 in the DB cluster parameter group, then reboot \
                 the writer instance"
            }
            Provider::CloudSql => {
                "set the database flag cloudsql.logical_decoding = on (console: Edit > Flags), \
                 which restarts the instance"
            }
            Provider::Azure => {
                "set the server parameter wal_level = logical (portal: Server parameters), then \
                 restart the server"
            }
            Provider::Neon => {
                "enable logical replication in the Neon console (Project settings), which \
                 restarts the project's computes and cannot be undone"
            }
            Provider::Supabase => {
                "Supabase runs with wal_level = logical; connect directly to the database \
                 (not through the connection pooler) and check the project's settings"
            }
            Provider::SelfHosted => {
                "ALTER SYSTEM SET wal_level = logical; then restart Postgres (on a managed \
                 service: enable logical replication in its parameter group / flags)"
            }
        }
    }

    /// How to give `user` the right to create and stream a replication slot.
    pub fn replication_fix(self, user: &str) -> String {
        let role = quote_ident(user);
        match self {
            // rds_superuser cannot grant the REPLICATION attribute; this role stands in for it.
            Provider::Rds | Provider::Aurora => format!(
                "GRANT rds_replication TO {role} (as the master user; RDS does not grant the \
                 REPLICATION attribute itself)"
            ),
            Provider::CloudSql => format!(
                "ALTER USER {role} WITH REPLICATION (as a cloudsqlsuperuser, e.g. the postgres user)"
            ),
            Provider::Azure => format!(
                "ALTER ROLE {role} WITH REPLICATION (as the server's admin user, a member of \
                 azure_pg_admin)"
            ),
            Provider::Neon => format!(
                "ALTER ROLE {role} WITH REPLICATION (as a role created in the Neon console, a \
                 member of neon_superuser)"
            ),
            Provider::Supabase => format!(
                "ALTER ROLE {role} WITH REPLICATION as the postgres user (Postgres 17+); on \
                 older Supabase projects, run the worker as the postgres user"
            ),
            Provider::SelfHosted => format!("ALTER ROLE {role} REPLICATION (as a superuser)"),
        }
    }
}

/// One well-known setting of each provider.
const PROVIDER_SETTINGS: [&str; 6] = [
    "rds.logical_replication",
    "cloudsql.logical_decoding",
    "azure.extensions",
    "neon.tenant_id",
    "neon.timeline_id",
    "supautils.reserved_roles",
];

/// Detects the provider from the server's settings and roles.
pub async fn detect_provider(client: &Client) -> anyhow::Result<Provider> {
    // pg_settings lists the settings a provider's own module defines; current_setting()
    // also sees a known name set only as a placeholder (per database or role), which
    // pg_settings hides.
    let names: Vec<String> = client
        .query(
            "SELECT name FROM pg_settings \
             WHERE name LIKE 'rds.%' OR name LIKE 'cloudsql.%' OR name LIKE 'azure.%' \
                OR name LIKE 'neon.%' OR name LIKE 'supautils.%' \
             UNION SELECT n FROM unnest($1::text[]) n WHERE current_setting(n, true) IS NOT NULL",
            &[&&PROVIDER_SETTINGS[..]],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let row = client
        .query_one(
            "SELECT to_regproc('aurora_version') IS NOT NULL, \
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'supabase_admin')",
            &[],
        )
        .await?;
    Ok(Provider::from_settings(
        names.iter().map(String::as_str),
        row.get(0),
        row.get(1),
    ))
}

/// Whether the current role may use replication slots without the REPLICATION attribute,
/// through a provider's stand-in role (RDS and Aurora: membership in `rds_replication`).
pub async fn has_replication_role(client: &Client) -> anyhow::Result<bool> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') \
                    AND pg_has_role('rds_replication', 'MEMBER')",
            &[],
        )
        .await?
        .get(0))
}

/// setup's message when `wal_level` is not `logical`, with the provider's own fix.
pub async fn wal_level_error(client: &Client, wal_level: &str) -> String {
    let provider = detect_provider(client)
        .await
        .unwrap_or(Provider::SelfHosted);
    format!(
        "wal_level is '{wal_level}', logical replication needs 'logical'. Fix ({}): {}",
        provider.name(),
        provider.wal_level_fix()
    )
}

/// setup's message when the role may not replicate, with the provider's own fix.
pub async fn replication_error(client: &Client, user: &str) -> String {
    let provider = detect_provider(client)
        .await
        .unwrap_or(Provider::SelfHosted);
    format!(
        "role {user} lacks the REPLICATION attribute. Fix ({}): {}",
        provider.name(),
        provider.replication_fix(user)
    )
}

/// The replication slot as far as failover and invalidation go. Columns a server version
/// does not have are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// `wal_status`: reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
    /// 16+: the slot conflicts with recovery (on a standby) or was invalidated.
    pub conflicting: Option<bool>,
    /// 17+: created with `failover = true`, so standbys with `sync_replication_slots`
    /// keep a copy that survives their promotion.
    pub failover: Option<bool>,
    /// 17+: this is a standby's synchronized copy (or was, before a promotion).
    pub synced: Option<bool>,
    /// 17+: why Postgres invalidated it (wal_removed, rows_removed, wal_level_insufficient,
    /// 18: idle_timeout).
    pub invalidation_reason: Option<String>,
    pub confirmed_flush: Option<PgLsn>,
}

impl SlotState {
    /// One word for logs and the `cdc_slot_state` metric's label: `ok`, or why not.
    pub fn summary(&self) -> String {
        if let Some(reason) = &self.invalidation_reason {
            return format!("invalidated_{reason}");
        }
        if self.wal_status.as_deref() == Some("lost") {
            return "lost".into();
        }
        if self.conflicting == Some(true) {
            return "conflicting".into();
        }
        match self.wal_status.as_deref() {
            Some("unreserved") => "unreserved".into(),
            _ => "ok".into(),
        }
    }
}

/// Logs the slot's state once (at each session start), and warns when a 17+ server's slot
/// is not a failover slot although `failover_slot` asks for one (made by an older version
/// or with failover_slot = false: a promoted standby will not have it).
pub async fn log_slot_state(client: &Client, slot: &str, want_failover: bool) {
    match slot_state(client, slot).await {
        Ok(Some(s)) => {
            let show = |v: Option<bool>| v.map_or("n/a (< 17)".to_string(), |b| b.to_string());
            tracing::info!(
                slot,
                state = %s.summary(),
                wal_status = s.wal_status.as_deref().unwrap_or("none"),
                failover = %show(s.failover),
                synced = %show(s.synced),
                invalidation_reason = s.invalidation_reason.as_deref().unwrap_or("none"),
                "replication slot state"
            );
            if want_failover && s.failover == Some(false) {
                tracing::warn!(slot, "the slot is not a failover slot, so a promoted standby will not have it and the worker will recompute every product after a failover. Fix: drop the slot while the worker is stopped (SELECT pg_drop_replication_slot('{slot}')); the worker recreates it as a failover slot and recomputes once");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "cannot read the slot's state"),
    }
}

/// Reads the slot's failover and invalidation state with the columns this server version
/// has; `None` when there is no slot of that name.
pub async fn slot_state(client: &Client, slot: &str) -> anyhow::Result<Option<SlotState>> {
    let num: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await?
        .get(0);
    let sql = slot_state_sql(num);
    let row = client.query_opt(&sql, &[&slot]).await?;
    Ok(row.map(|r| SlotState {
        wal_status: r.get(0),
        conflicting: r.get(1),
        failover: r.get(2),
        synced: r.get(3),
        invalidation_reason: r.get(4),
        confirmed_flush: r.get(5),
    }))
}

/// The `pg_replication_slots` query for a server version: `conflicting` exists from 16,
/// `failover`, `synced` and `invalidation_reason` from 17.
fn slot_state_sql(num: i32) -> String {
    let conflicting = if num >= 160000 {
        "conflicting"
    } else {
        "NULL::bool"
    };
    let (failover, synced, reason) = if num >= FAILOVER_SLOTS_VERSION_NUM {
        ("failover", "synced", "invalidation_reason::text")
    } else {
        ("NULL::bool", "NULL::bool", "NULL::text")
    };
    format!(
        "SELECT wal_status::text, {conflicting}, {failover}, {synced}, {reason}, confirmed_flush_lsn \
         FROM pg_replication_slots WHERE slot_name = $1"
    )
}

/// A replication slot as `pg_replication_slots` shows it: whose it is, where it stands,
/// who streams it.
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

impl SlotRow {
    /// Why a slot named `name` is not a worker's slot of this database (another plugin,
    /// a physical slot, another database), as one line with the fix; `None` when it is.
    /// Such a slot is someone else's: never dropped, recreated or streamed.
    pub fn not_ours(&self, name: &str) -> Option<String> {
        if self.kind != "logical" || self.plugin.as_deref() != Some("pgoutput") {
            return Some(format!(
                "replication slot {name} exists but is a {} slot for plugin {}, not pgoutput, \
                 so it is not this worker's. Fix: choose another name with CDC_SLOT, or drop \
                 it: SELECT pg_drop_replication_slot('{name}')",
                self.kind,
                self.plugin.as_deref().unwrap_or("none"),
            ));
        }
        if !self.in_this_database {
            return Some(format!(
                "replication slot {name} belongs to database {}, not this one, so it is not \
                 this worker's. Fix: choose another name with CDC_SLOT",
                self.database.as_deref().unwrap_or("none")
            ));
        }
        None
    }
}

/// The slot named `slot`, if there is one.
pub async fn slot_row(client: &Client, slot: &str) -> anyhow::Result<Option<SlotRow>> {
    Ok(client
        .query_opt(
            "SELECT plugin::text, slot_type::text, database::text, \
                    wal_status IS NOT DISTINCT FROM 'lost', confirmed_flush_lsn, active_pid, \
                    database IS NOT DISTINCT FROM current_database() \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
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
        }))
}

/// Whether another replication slot can be created: `max_replication_slots` is not used
/// up. (Creating one fails otherwise, after whatever came before it.)
pub async fn free_slot_count(client: &Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int8 - \
                    (SELECT count(*) FROM pg_replication_slots)",
            &[],
        )
        .await?
        .get(0))
}

/// SQL: whether the replica identity of table `class` (a `pg_class` alias) carries the
/// column named by the text expression `column`: the identity is FULL, or the column is
/// in the primary key (DEFAULT) or in the replica identity index (USING INDEX). One
/// definition for setup's check and run's re-check, so they never disagree.
pub fn identity_carries(class: &str, column: &str) -> String {
    format!(
        "({class}.relreplident = 'f' OR EXISTS ( \
           SELECT 1 FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
           WHERE i.indrelid = {class}.oid AND a.attname = {column} \
             AND (({class}.relreplident = 'd' AND i.indisprimary) \
                  OR ({class}.relreplident = 'i' AND i.indisreplident))))"
    )
}

/// The tables publication `name` covers, as (schema, table); `None` when it does not
/// exist. Read from `pg_publication_tables`, which expands `FOR ALL TABLES` and
/// `FOR TABLES IN SCHEMA` into the tables they stand for (`pg_publication_rel` lists only
/// tables named one by one, so such a publication would look empty).
pub async fn publication_tables(
    client: &Client,
    name: &str,
) -> anyhow::Result<Option<BTreeSet<(String, String)>>> {
    // No row: no such publication; one row of NULLs: a publication of no table.
    let rows = client
        .query(
            "SELECT t.schemaname::text, t.tablename::text FROM pg_publication p \
             LEFT JOIN pg_publication_tables t ON t.pubname = p.pubname WHERE p.pubname = $1",
            &[&name],
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.iter()
            .filter_map(|r| {
                Some((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<String>>(1)?,
                ))
            })
            .collect(),
    ))
}

/// A server session, as `pg_stat_activity` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub pid: i32,
    pub application_name: String,
    /// The client's address; `None` for a Unix socket (or a role that may not see it).
    pub client_addr: Option<String>,
    /// When the session began (UTC, ISO 8601).
    pub since: Option<String>,
    /// How long ago that was.
    pub seconds: Option<f64>,
    /// `client backend`, `walsender`...
    pub backend_type: Option<String>,
}

const SESSION_COLUMNS: &str = "a.pid, coalesce(a.application_name, ''), host(a.client_addr), \
     to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
     extract(epoch FROM now() - a.backend_start)::float8, a.backend_type";

fn session_of(r: &tokio_postgres::Row) -> Session {
    Session {
        pid: r.get(0),
        application_name: r.get(1),
        client_addr: r.get(2),
        since: r.get(3),
        seconds: r.get(4),
        backend_type: r.get(5),
    }
}

/// The session with backend `pid`, if it still exists.
pub async fn session(client: &Client, pid: i32) -> anyhow::Result<Option<Session>> {
    let row = client
        .query_opt(
            &format!("SELECT {SESSION_COLUMNS} FROM pg_stat_activity a WHERE a.pid = $1"),
            &[&pid],
        )
        .await?;
    Ok(row.as_ref().map(session_of))
}

/// Ends backend `pid` (`pg_terminate_backend`) if it still exists; whether it was
/// signalled. (One that has just ended would get the server's warning "is not a
/// PostgreSQL backend process".)
pub async fn terminate(client: &Client, pid: i32) -> anyhow::Result<bool> {
    Ok(client
        .query_opt(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?
        .is_some_and(|r| r.get(0)))
}

/// The session holding the session-level advisory lock (`class`, `key`) of this
/// database, if any.
pub async fn advisory_lock_holder(
    client: &Client,
    class: i32,
    key: i32,
) -> anyhow::Result<Option<Session>> {
    // Two-key advisory locks show the keys as classid and objid, with objsubid 2.
    let row = client
        .query_opt(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM pg_locks l \
                 LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
                   AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid \
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 LIMIT 1"
            ),
            &[&class, &key],
        )
        .await?;
    Ok(row.as_ref().map(session_of))
}

/// Sessions on this database (walsenders included) whose `application_name` starts
/// with `prefix`, other than this one.
pub async fn sessions_named(client: &Client, prefix: &str) -> anyhow::Result<Vec<Session>> {
    let rows = client
        .query(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM pg_stat_activity a \
                 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
                   AND starts_with(a.application_name, $1) ORDER BY a.pid"
            ),
            &[&prefix],
        )
        .await?;
    Ok(rows.iter().map(session_of).collect())
}

/// The server's current WAL position (on a standby: the last replayed).
pub async fn current_wal_lsn(client: &Client) -> anyhow::Result<Lsn> {
    let lsn: PgLsn = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                    ELSE pg_current_wal_lsn() END",
            &[],
        )
        .await?
        .get(0);
    Ok(Lsn(u64::from(lsn)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_below_15_are_refused_with_the_number_and_the_fix() {
        let err = check_version_num(140023, "14.23").unwrap_err();
        assert!(err.contains("server_version_num 140023 < 150000"), "{err}");
        assert!(err.contains("PostgreSQL 14.23"), "{err}");
        assert!(err.contains("Fix: upgrade"), "{err}");
        assert!(check_version_num(149999, "14.99").is_err());
        assert!(check_version_num(130000, "13.0").is_err());
    }

    #[test]
    fn versions_from_15_on_are_accepted() {
        for num in [150000, 150018, 160014, 170010, 180004, 190000] {
            assert_eq!(check_version_num(num, "x"), Ok(()), "{num}");
        }
    }

    #[test]
    fn provider_from_settings() {
        let p = |s: &[&str], aurora, supa| Provider::from_settings(s.iter().copied(), aurora, supa);
        assert_eq!(
            p(&["wal_level", "max_wal_senders"], false, false),
            Provider::SelfHosted
        );
        assert_eq!(
            p(&["rds.logical_replication", "rds.force_ssl"], false, false),
            Provider::Rds
        );
        assert_eq!(
            p(&["rds.logical_replication"], true, false),
            Provider::Aurora
        );
        assert_eq!(
            p(&["cloudsql.logical_decoding"], false, false),
            Provider::CloudSql
        );
        assert_eq!(p(&["azure.extensions"], false, false), Provider::Azure);
        assert_eq!(p(&["neon.timeline_id"], false, false), Provider::Neon);
        assert_eq!(
            p(&["supautils.reserved_roles"], false, false),
            Provider::Supabase
        );
        assert_eq!(p(&[], false, true), Provider::Supabase);
        // An `aurora_version` function alone (someone's own) is not Aurora.
        assert_eq!(p(&[], true, false), Provider::SelfHosted);
    }

    #[test]
    fn each_provider_names_its_own_switch_and_privilege() {
        assert!(Provider::Rds
            .wal_level_fix()
            .contains("rds.logical_replication = 1"));
        assert!(Provider::Aurora
            .wal_level_fix()
            .contains("DB cluster parameter group"));
        assert!(Provider::CloudSql
            .wal_level_fix()
            .contains("cloudsql.logical_decoding = on"));
        assert!(Provider::Azure
            .wal_level_fix()
            .contains("wal_level = logical"));
        assert!(Provider::Neon.wal_level_fix().contains("Neon console"));
        assert!(Provider::SelfHosted
            .wal_level_fix()
            .contains("ALTER SYSTEM"));
        assert!(Provider::Rds
            .replication_fix("cdc")
            .starts_with("GRANT rds_replication TO \"cdc\""));
        assert!(Provider::CloudSql
            .replication_fix("Cdc User")
            .starts_with("ALTER USER \"Cdc User\" WITH REPLICATION"));
        assert!(Provider::SelfHosted
            .replication_fix("cdc")
            .starts_with("ALTER ROLE \"cdc\" REPLICATION"));
    }

    #[test]
    fn slot_state_reads_only_the_columns_a_version_has() {
        let v15 = slot_state_sql(150018);
        assert!(
            v15.contains("NULL::bool, NULL::bool, NULL::bool, NULL::text"),
            "{v15}"
        );
        let v16 = slot_state_sql(160014);
        assert!(
            v16.contains("wal_status::text, conflicting, NULL::bool"),
            "{v16}"
        );
        let v17 = slot_state_sql(170010);
        assert!(
            v17.contains("conflicting, failover, synced, invalidation_reason::text"),
            "{v17}"
        );
    }

    #[test]
    fn slot_state_summary() {
        let ok = SlotState {
            wal_status: Some("reserved".into()),
            conflicting: Some(false),
            failover: Some(true),
            synced: Some(false),
            invalidation_reason: None,
            confirmed_flush: None,
        };
        assert_eq!(ok.summary(), "ok");
        let lost15 = SlotState {
            wal_status: Some("lost".into()),
            conflicting: None,
            failover: None,
            synced: None,
            invalidation_reason: None,
            confirmed_flush: None,
        };
        assert_eq!(lost15.summary(), "lost");
        let idle18 = SlotState {
            invalidation_reason: Some("idle_timeout".into()),
            ..ok.clone()
        };
        assert_eq!(idle18.summary(), "invalidated_idle_timeout");
    }
}
