//! The worker's own state: one schema (`schema` in the config, default `cdc_worker`), never
//! among the app's tables, and this module is its only owner. The DDL
//! (`sql/state_schema.sql`) and its upgrades, the checkpoint and the recompute mark, the
//! outbox tables, the reconcile history and the advisory-lock keys are defined here;
//! everyone else asks for a statement or calls a function here, and nothing here knows
//! about the pipeline above it.

pub mod checkpoint;
pub mod history;
pub mod locks;
pub mod outbox;

use anyhow::Context as _;
use tokio_postgres::Client;

use crate::config::Config;
use crate::error::definite;
use crate::pg::sql::quote_ident;

const DDL: &str = include_str!("../../sql/state_schema.sql");

/// The state schema's name, quoted: what every statement on its tables is built from.
pub fn schema(cfg: &Config) -> String {
    quote_ident(&cfg.schema)
}

/// The tables of the state schema, every one `sql/state_schema.sql` creates (a unit test
/// keeps the two in step): what `teardown` drops, and what a state schema may hold.
pub const TABLES: [&str; 6] = [
    "checkpoint",
    "outbox",
    "outbox_cursor",
    "outbox_failed",
    "reconcile_history",
    "outbox_held",
];

/// The DDL that creates the state schema and its tables, and upgrades one an earlier
/// version created (`setup`); idempotent.
pub fn create_sql(cfg: &Config) -> String {
    DDL.replace("{schema}", &schema(cfg))
}

/// `setup`'s check, before anything changes: the role may create the state schema, or may
/// create and upgrade tables in the one that exists.
pub async fn check_creatable(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT current_user::text, n.oid IS NOT NULL, \
                    coalesce(has_schema_privilege(n.oid, 'USAGE, CREATE'), false), \
                    has_database_privilege(current_database(), 'CREATE'), \
                    (SELECT string_agg(c.relname, ', ' ORDER BY c.relname) FROM pg_class c \
                      WHERE c.relnamespace = n.oid AND c.relname = ANY($2) \
                        AND NOT pg_has_role(c.relowner, 'USAGE')) \
             FROM (SELECT $1::text AS name) x LEFT JOIN pg_namespace n ON n.nspname = x.name",
            &[&cfg.schema, &&TABLES[..]],
        )
        .await?;
    let (user, exists, may_use, may_create, foreign): (String, bool, bool, bool, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let (state, role) = (schema(cfg), quote_ident(&user));
    if exists && !may_use {
        return Err(definite(format!(
            "role {user} may not create tables in the state schema {state}. Fix: GRANT USAGE, \
             CREATE ON SCHEMA {state} TO {role}, or ALTER SCHEMA {state} OWNER TO {role}"
        )));
    }
    if let Some(tables) = foreign {
        return Err(definite(format!(
            "the state schema {state} holds tables of another role ({tables}), which role \
             {user} cannot upgrade. Fix: run setup as their owner, or ALTER TABLE ... OWNER TO \
             {role} for each"
        )));
    }
    if !exists && !may_create {
        return Err(definite(format!(
            "role {user} may not create the state schema {state}. Fix: GRANT CREATE ON \
             DATABASE to {role}, or create the schema for it: CREATE SCHEMA {state} \
             AUTHORIZATION {role}"
        )));
    }
    Ok(())
}

/// What of the state schema exists, read only (`status`, `teardown`).
#[derive(Debug, Clone, Default)]
pub struct Installed {
    pub schema: bool,
    /// The tables of [`TABLES`] it holds.
    pub tables: Vec<String>,
    /// Everything else in it (`relname (relkind)`): not the worker's, never dropped by it.
    pub others: Vec<String>,
    /// Slots other than `cfg.slot` with a checkpoint here: another worker shares it.
    pub other_slots: Vec<String>,
}

impl Installed {
    pub fn has(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t == table)
    }
}

/// Reads what of the state schema exists; changes nothing (a schema of an earlier version
/// is reported as it is, not upgraded).
pub async fn installed(client: &Client, cfg: &Config) -> anyhow::Result<Installed> {
    let schema_exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&cfg.schema],
        )
        .await?
        .get(0);
    let mut found = Installed {
        schema: schema_exists,
        ..Installed::default()
    };
    if !schema_exists {
        return Ok(found);
    }
    // Indexes and the sequences of bigserial columns belong to their tables; anything
    // else in the schema is someone else's.
    let rows = client
        .query(
            "SELECT c.relname::text, c.relkind::text, \
                    EXISTS (SELECT 1 FROM pg_depend d JOIN pg_class t ON t.oid = d.refobjid \
                             WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                               AND d.deptype IN ('a', 'i') AND t.relnamespace = n.oid \
                               AND t.relname = ANY($2)) \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind NOT IN ('i', 'I', 't') ORDER BY 1",
            &[&cfg.schema, &&TABLES[..]],
        )
        .await?;
    for r in &rows {
        let (name, kind, owned): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        if TABLES.contains(&name.as_str()) && (kind == "r" || kind == "p") {
            found.tables.push(name);
        } else if !owned {
            found.others.push(format!("{name} ({kind})"));
        }
    }
    if found.has("checkpoint") {
        found.other_slots = client
            .query(
                &format!(
                    "SELECT slot_name FROM {}.checkpoint WHERE slot_name <> $1 ORDER BY 1",
                    schema(cfg)
                ),
                &[&cfg.slot],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    Ok(found)
}

/// `teardown`'s statements for the state schema, given what exists: every table of the
/// worker's that is there, then the schema itself. The caller runs the schema's drop
/// so that a schema still holding something else is kept (`DROP SCHEMA` without CASCADE
/// refuses then); nothing here drops what the worker did not create.
pub fn drop_sql(cfg: &Config, found: &Installed) -> (Vec<String>, String) {
    let state = schema(cfg);
    let tables = TABLES
        .iter()
        .filter(|t| found.has(t))
        .map(|t| format!("DROP TABLE {state}.{}", quote_ident(t)))
        .collect();
    (tables, format!("DROP SCHEMA {state}"))
}

/// Deletes only `cfg.slot`'s checkpoint (a state schema shared with another slot's worker).
pub fn forget_slot_sql(cfg: &Config) -> String {
    format!(
        "DELETE FROM {}.checkpoint WHERE slot_name = {}",
        schema(cfg),
        crate::pg::sql::quote_literal(&cfg.slot)
    )
}

/// The part of the DDL that brings a state schema an earlier version set up to this
/// version (everything from the `-- ==== upgrade` line on).
fn upgrade_ddl() -> &'static str {
    let at = DDL
        .find("-- ==== upgrade")
        .expect("sql/state_schema.sql has an upgrade part");
    &DDL[at..]
}

/// A state schema set up by an earlier version lacks what this one added (the recompute
/// mark column, `outbox_held`, the definition and server columns, the outbox's tag
/// arrays): the upgrade part of the DDL adds it, cheap and idempotent.
/// The worker's role owns its state schema (setup created it). Run before anything else
/// reads the state, so a database never set up gets the clear message.
pub async fn ensure(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let state = schema(cfg);
    let current = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, (SELECT count(*) = 5 FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND NOT attisdropped AND attname IN \
             ('recompute_reason', 'commit_time', 'definition', 'system_identifier', 'timeline')) \
             AND (SELECT count(*) FILTER (WHERE attname = 'tags') = 1 \
                         AND count(*) FILTER (WHERE attname = 'tag') = 0 \
                  FROM pg_attribute WHERE attrelid = to_regclass($3) AND NOT attisdropped), \
             to_regclass($2) IS NOT NULL",
            &[
                &format!("{state}.checkpoint"),
                &format!("{state}.outbox_held"),
                &format!("{state}.outbox"),
            ],
        )
        .await;
    match current {
        Ok(row) if !row.get::<_, bool>(0) => return Err(definite(not_set_up(cfg))),
        Ok(row) if row.get::<_, bool>(1) && row.get::<_, bool>(2) => return Ok(()),
        Ok(_) => {}
        // to_regclass of a schema that does not exist is null, not an error; this is
        // for a role that cannot see it at all.
        Err(e) if matches!(e.code().map(|c| c.code()), Some("42P01" | "3F000")) => {
            return Err(definite(not_set_up(cfg)))
        }
        Err(e) => return Err(e.into()),
    }
    let sql = upgrade_ddl().replace("{schema}", &state);
    client.batch_execute(&sql).await.with_context(|| {
        format!(
            "upgrading the state schema {state} (checkpoint.recompute_reason, commit_time, \
             definition, system_identifier, timeline, outbox_held, outbox.tags: new in this \
             version). Fix: \
             run `cdc-worker setup` once as the state schema's owner"
        )
    })?;
    tracing::info!(schema = %state, "state schema upgraded to this version");
    Ok(())
}

/// "Run setup first", naming the slot and the schema.
pub fn not_set_up(cfg: &Config) -> String {
    format!(
        "no checkpoint for slot {} in schema {}: the database is not set up. Fix: run `cdc-worker setup` first",
        cfg.slot, cfg.schema
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_lists_every_table_of_the_ddl() {
        let created: Vec<&str> = DDL
            .lines()
            .filter_map(|l| l.strip_prefix("CREATE TABLE IF NOT EXISTS {schema}."))
            .map(|rest| rest.split([' ', '(']).next().unwrap())
            .collect();
        let mut listed = TABLES.to_vec();
        let mut created_sorted = created.clone();
        listed.sort_unstable();
        created_sorted.sort_unstable();
        assert_eq!(listed, created_sorted);
    }
}
