//! `cdc-worker setup`: check, plan, apply (DESIGN.md invariant 13: setup changes nothing
//! until every check that can fail has passed).
//!
//! 1. [`check`] runs every check that can fail, reading only: the server, the role, the
//!    source tables, the summary table's shape and the query, the publication, the state
//!    schema, the slot name. The first failure stops setup with one line naming the
//!    problem and the fix, and the database is exactly as it was.
//! 2. [`plan`] turns what the checks found into the statements that create what is
//!    missing (state schema, summary table, replica identity, publication).
//! 3. [`apply`] runs them in one transaction, so a failure there (a concurrent change)
//!    leaves nothing half done either; then the slot is created and the summary
//!    backfilled (`slot::prepare`), which cannot run inside a transaction.
//!
//! Idempotent: a second run checks, plans nothing but the state schema's idempotent DDL,
//! and finds the slot and checkpoint in place.

use std::collections::BTreeSet;

use anyhow::Context;
use tokio_postgres::Client;

use super::{leader, slot};
use crate::apply::Applier;
use crate::config::Config;
use crate::error::definite;
use crate::pg::connect::Database;
use crate::pg::server;
use crate::pg::sql::{qualified, quote_ident};
use crate::shop::layout::Layout;

pub async fn run(cfg: &Config) -> anyhow::Result<()> {
    let db = Database::parse(&cfg.database_url)?;
    let client = db
        .connect("cdc-worker/setup")
        .await
        .with_context(|| format!("connecting to {}", db.display()))?;
    tracing::info!(database = %db.display(), "checking the database");
    leader::refuse_pooler(&db, &client, cfg).await?;
    let found = check(&client, cfg).await?;
    let changes = plan(cfg, &found);
    apply(&client, &changes).await?;
    // The slot and the checkpoint are the leader's to change; a running worker checks them
    // at its own start and recovers by itself.
    if !leader::try_lead(&client, cfg).await? {
        tracing::info!(slot = %cfg.slot, "a worker is running for this slot; it keeps the slot and the checkpoint itself: setup complete");
        return Ok(());
    }
    // A summary table that existed before (the app's migrations made it, pages may have
    // cached its rows) gets the tags of every row the backfill changes.
    let tags = found.layout.summary_exists;
    if tags && cfg.revalidate.urls.is_empty() {
        tracing::warn!("the summary table existed before setup: pages that cached its rows are revalidated only when CDC_REVALIDATE_URLS is set for setup too (or later with `cdc-worker revalidate`)");
    }
    let mut applier = Applier::new(client, cfg).await?;
    let mode = slot::Mode { setup: true, tags };
    match slot::prepare(cfg, &mut applier, mode).await?.recovered {
        None => tracing::info!(
            slot = %cfg.slot,
            "slot and checkpoint exist and agree; no backfill needed (`cdc-worker reconcile --fix` repairs drift)"
        ),
        Some(r) => tracing::info!(reason = r.reason.label(), "summary backfilled"),
    }
    tracing::info!("setup complete: start the worker with `cdc-worker run`");
    Ok(())
}

/// What the checks found, read before anything changes: all `plan` needs.
struct Found {
    /// Product id type, the summary query's columns, whether the summary table exists.
    layout: Layout,
    /// Source tables whose replica identity must become FULL.
    replica_full: Vec<String>,
    /// The publication does not exist yet.
    create_publication: bool,
}

/// The role setup runs as.
struct Role {
    name: String,
    is_super: bool,
}

/// Every check that can fail, in order, before anything is changed. Each reads only and
/// fails with a definite error naming the problem and the fix. A new check goes into this
/// list, never into `apply`.
async fn check(client: &Client, cfg: &Config) -> anyhow::Result<Found> {
    server::check_version(client).await?;
    check_wal_level(client).await?;
    let role = check_role(client).await?;
    let replica_full = check_sources(client, cfg, &role).await?;
    // The product key's type, the summary query's columns, an existing summary table's
    // shape and the role's privileges on it.
    let layout = Layout::load(client, cfg).await?;
    if !layout.summary_exists {
        check_may_create_summary(client, cfg, &role).await?;
    }
    let create_publication = check_publication(client, cfg, &role).await?;
    crate::state::check_creatable(client, cfg).await?;
    check_slot(client, cfg).await?;
    Ok(Found {
        layout,
        replica_full,
        create_publication,
    })
}

async fn check_wal_level(client: &Client) -> anyhow::Result<()> {
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        return Err(definite(server::wal_level_error(client, &wal_level).await));
    }
    Ok(())
}

/// The role may create and stream a replication slot.
async fn check_role(client: &Client) -> anyhow::Result<Role> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let role = Role {
        name: row.get(0),
        is_super: row.get(1),
    };
    let can_replicate: bool = row.get(2);
    if !role.is_super && !can_replicate && !server::has_replication_role(client).await? {
        return Err(definite(
            server::replication_error(client, &role.name).await,
        ));
    }
    Ok(role)
}

/// Each source table exists, has its product id column, is readable, and either its
/// replica identity already carries the product id or the role may set it to FULL.
/// Returns the tables that need FULL.
async fn check_sources(client: &Client, cfg: &Config, role: &Role) -> anyhow::Result<Vec<String>> {
    let user = &role.name;
    let schema = &cfg.tables.schema;
    let mut replica_full = Vec::new();
    for (table, column) in &cfg.tables.sources {
        let row = client
            .query_opt(
                &format!(
                    "SELECT {}, pg_has_role(c.relowner, 'USAGE'), \
                            has_table_privilege(c.oid, 'SELECT'), \
                            EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
                                    AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                    server::identity_carries("c", "$3::text")
                ),
                &[schema, table, column],
            )
            .await?;
        let name = qualified(schema, table);
        let Some(row) = row else {
            return Err(definite(format!(
                "source table {name} does not exist. Fix: create it (run the app's migrations), \
                 or correct tables.schema / tables.sources in the config"
            )));
        };
        let (identity_has_column, owner, select, has_column): (bool, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if !has_column {
            return Err(definite(format!(
                "table {name} has no column {}, which tables.sources names as its product id",
                quote_ident(column)
            )));
        }
        if !select {
            return Err(definite(format!(
                "role {user} cannot read {name}. Fix: GRANT SELECT ON {name} TO {}",
                quote_ident(user)
            )));
        }
        // A DELETE carries the old row's replica identity only. With the default identity
        // (the primary key) a child table's delete says which row went but not which
        // product it belonged to; FULL makes the old row, product id included, part of it.
        if !identity_has_column {
            if !owner && !role.is_super {
                return Err(definite(format!(
                    "{name} needs REPLICA IDENTITY FULL so that a DELETE names its product, and \
                     role {user} does not own it. Fix (as the owner): ALTER TABLE {name} REPLICA \
                     IDENTITY FULL"
                )));
            }
            replica_full.push(table.clone());
        }
    }
    Ok(replica_full)
}

/// The role may create the missing summary table in the tables' schema.
async fn check_may_create_summary(
    client: &Client,
    cfg: &Config,
    role: &Role,
) -> anyhow::Result<()> {
    let schema = &cfg.tables.schema;
    let may: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) \
                    AND has_schema_privilege($1, 'CREATE')",
            &[schema],
        )
        .await?
        .get(0);
    if !may {
        return Err(definite(format!(
            "the summary table {} does not exist and role {} may not create it. Fix: GRANT \
             CREATE ON SCHEMA {} TO {} (setup then creates it), or create it with the app's \
             migrations (sql/product_summary.sql)",
            qualified(schema, &cfg.tables.summary),
            role.name,
            quote_ident(schema),
            quote_ident(&role.name)
        )));
    }
    Ok(())
}

/// An existing publication covers exactly the source tables; a missing one may be
/// created by this role (CREATE on the database, owner of every table). Returns whether
/// it must be created.
async fn check_publication(client: &Client, cfg: &Config, role: &Role) -> anyhow::Result<bool> {
    let want = cfg.source_tables();
    let list = |tables: &BTreeSet<(String, String)>| {
        tables
            .iter()
            .map(|(n, t)| qualified(n, t))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let want_list = list(&want);
    let pubname = &cfg.publication;
    match server::publication_tables(client, pubname).await? {
        Some(have) if have == want => Ok(false),
        Some(have) => Err(definite(format!(
            "publication {pubname} covers [{}] but the summary reads [{want_list}]. Fix: ALTER \
             PUBLICATION {} SET TABLE {want_list}",
            list(&have),
            quote_ident(pubname)
        ))),
        None => {
            let tables: Vec<String> = cfg.tables.sources.keys().cloned().collect();
            let row = client
                .query_one(
                    "SELECT has_database_privilege(current_database(), 'CREATE'), \
                            coalesce(bool_and(pg_has_role(c.relowner, 'USAGE')), true) \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname = ANY($2)",
                    &[&cfg.tables.schema, &tables],
                )
                .await?;
            let (create, owner): (bool, bool) = (row.get(0), row.get(1));
            let may = role.is_super || (create && owner);
            if !may {
                return Err(definite(format!(
                    "publication {pubname} does not exist and role {} may not create it (it \
                     needs CREATE on the database and to own the tables). Fix: have the \
                     tables' owner run: CREATE PUBLICATION {} FOR TABLE {want_list}",
                    role.name,
                    quote_ident(pubname)
                )));
            }
            Ok(true)
        }
    }
}

/// The slot name is free, or holds a pgoutput slot of this database (the worker's own);
/// a missing slot can be created (`max_replication_slots` not used up).
async fn check_slot(client: &Client, cfg: &Config) -> anyhow::Result<()> {
    match server::slot_row(client, &cfg.slot).await? {
        Some(s) => slot::check_ours(&s, cfg),
        None if server::free_slot_count(client).await? < 1 => Err(definite(format!(
            "replication slot {} cannot be created: every one of max_replication_slots is in \
             use (SELECT slot_name, database, active FROM pg_replication_slots). Fix: drop an \
             abandoned slot, or raise max_replication_slots and restart Postgres",
            cfg.slot
        ))),
        None => Ok(()),
    }
}

/// One statement of the plan, with what it does (logged once done) and what to do when it
/// fails.
struct Change {
    sql: String,
    done: Option<String>,
    fix: String,
}

/// The statements that create what the checks found missing, in order.
fn plan(cfg: &Config, found: &Found) -> Vec<Change> {
    let state = crate::state::schema(cfg);
    let mut changes = vec![Change {
        sql: crate::state::create_sql(cfg),
        // Idempotent DDL: nothing worth a line when it finds everything in place.
        done: None,
        fix: format!(
            "creating the state schema {state}. Fix: GRANT CREATE ON DATABASE to the worker's \
             role, or create the schema for it: CREATE SCHEMA {state} AUTHORIZATION <role>"
        ),
    }];
    if !found.layout.summary_exists {
        changes.push(Change {
            sql: found.layout.create_table_sql(cfg),
            done: Some(format!(
                "created the summary table {}",
                found.layout.summary
            )),
            fix: "creating the summary table".into(),
        });
    }
    for table in &found.replica_full {
        let name = qualified(&cfg.tables.schema, table);
        changes.push(Change {
            sql: format!("ALTER TABLE {name} REPLICA IDENTITY FULL"),
            done: Some(format!(
                "set REPLICA IDENTITY FULL on {name}, so a DELETE carries the product id of the row"
            )),
            fix: format!("setting REPLICA IDENTITY FULL on {name}"),
        });
    }
    if found.create_publication {
        let tables = cfg
            .tables
            .sources
            .keys()
            .map(|t| qualified(&cfg.tables.schema, t))
            .collect::<Vec<_>>()
            .join(", ");
        let publication = quote_ident(&cfg.publication);
        changes.push(Change {
            sql: format!("CREATE PUBLICATION {publication} FOR TABLE {tables}"),
            done: Some(format!(
                "created the publication {publication} for {tables}"
            )),
            fix: format!(
                "creating publication {publication}. Fix: run setup as the tables' owner once, or \
                 have the owner run: CREATE PUBLICATION {publication} FOR TABLE {tables}"
            ),
        });
    }
    changes
}

/// Runs the plan in one transaction: all of it or nothing.
async fn apply(client: &Client, changes: &[Change]) -> anyhow::Result<()> {
    client.batch_execute("BEGIN").await?;
    for change in changes {
        if let Err(e) = client.batch_execute(&change.sql).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(anyhow::Error::new(e).context(change.fix.clone()));
        }
    }
    client.batch_execute("COMMIT").await?;
    for done in changes.iter().filter_map(|c| c.done.as_deref()) {
        tracing::info!("{done}");
    }
    Ok(())
}
