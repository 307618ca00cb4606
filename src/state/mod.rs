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

/// Creates the state schema and its tables (`setup`); idempotent.
pub async fn create(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let state = schema(cfg);
    client
        .batch_execute(&DDL.replace("{schema}", &state))
        .await
        .with_context(|| {
            format!(
                "creating the state schema {state}. Fix: GRANT CREATE ON DATABASE to the worker's \
                 role, or create the schema for it: CREATE SCHEMA {state} AUTHORIZATION <role>"
            )
        })
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
/// mark column, `outbox_held`, the definition and server columns): the upgrade part of the DDL adds it, cheap and idempotent.
/// The worker's role owns its state schema (setup created it). Run before anything else
/// reads the state, so a database never set up gets the clear message.
pub async fn ensure(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    let state = schema(cfg);
    let current = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, (SELECT count(*) = 4 FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND NOT attisdropped AND attname IN \
             ('recompute_reason', 'definition', 'system_identifier', 'timeline')), \
             to_regclass($2) IS NOT NULL",
            &[
                &format!("{state}.checkpoint"),
                &format!("{state}.outbox_held"),
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
            "upgrading the state schema {state} (checkpoint.recompute_reason, definition, \
             system_identifier, timeline, outbox_held: new in this version). Fix: run `cdc-worker setup` once as the state schema's owner"
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
