//! `cdc-worker setup`: checks everything the worker needs before touching anything, then
//! creates what is missing (state schema, summary table, publication, replica identity,
//! slot) and backfills the summary. Idempotent: a second run checks and changes nothing.

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
    let plan = check(&client, cfg).await?;
    create(&client, cfg, &plan).await?;
    // The slot and the checkpoint are the leader's to change; a running worker checks them
    // at its own start and recovers by itself.
    if !leader::try_lead(&client, cfg).await? {
        tracing::info!(slot = %cfg.slot, "a worker is running for this slot; it keeps the slot and the checkpoint itself: setup complete");
        return Ok(());
    }
    // A summary table that existed before (the app's migrations made it, pages may have
    // cached its rows) gets the tags of every row the backfill changes.
    let tags = !plan.create_summary;
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

/// What `create` must do, decided by `check` before anything is changed.
#[derive(Debug, Default)]
struct Plan {
    create_summary: bool,
    /// `CREATE TABLE` of the summary, for `create_summary`.
    summary_ddl: String,
    create_publication: bool,
    /// Tables whose replica identity must become FULL.
    replica_full: Vec<String>,
}

async fn check(client: &Client, cfg: &Config) -> anyhow::Result<Plan> {
    server::check_version(client).await?;
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        return Err(definite(server::wal_level_error(client, &wal_level).await));
    }
    let role = client
        .query_one(
            "SELECT current_user::text, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let user: String = role.get(0);
    let (is_super, can_replicate): (bool, bool) = (role.get(1), role.get(2));
    if !is_super && !can_replicate && !server::has_replication_role(client).await? {
        return Err(definite(server::replication_error(client, &user).await));
    }

    let mut plan = Plan::default();
    let schema = &cfg.tables.schema;
    for (table, column) in &cfg.tables.sources {
        let row = client
            .query_opt(
                "SELECT c.relreplident::text, pg_has_role(c.relowner, 'USAGE'), \
                        has_table_privilege(c.oid, 'SELECT'), \
                        EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
                                AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped), \
                        EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
                                  ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                                WHERE i.indrelid = c.oid AND i.indisprimary AND a.attname = $3) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[schema, table, column],
            )
            .await?;
        let Some(row) = row else {
            return Err(definite(format!(
                "source table {} does not exist. Fix: create it (run the app's migrations), or \
                 correct tables.schema / tables.sources in the config",
                qualified(schema, table)
            )));
        };
        let (ident, owner, select, has_column, column_in_pk): (String, bool, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if !has_column {
            return Err(definite(format!(
                "table {} has no column {}, which tables.sources names as its product id",
                qualified(schema, table),
                quote_ident(column)
            )));
        }
        if !select {
            return Err(definite(format!(
                "role {user} cannot read {}. Fix: GRANT SELECT ON {} TO {}",
                qualified(schema, table),
                qualified(schema, table),
                quote_ident(&user)
            )));
        }
        // A DELETE carries the old row's replica identity only. With the default identity
        // (the primary key) a child table's delete says which row went but not which
        // product it belonged to; FULL makes the old row, product id included, part of it.
        let identity_has_column = ident == "f" || (ident == "d" && column_in_pk);
        if !identity_has_column {
            if !owner && !is_super {
                return Err(definite(format!(
                    "{} needs REPLICA IDENTITY FULL so that a DELETE names its product, and role \
                     {user} does not own it. Fix (as the owner): ALTER TABLE {} REPLICA IDENTITY FULL",
                    qualified(schema, table),
                    qualified(schema, table)
                )));
            }
            plan.replica_full.push(table.clone());
        }
    }

    // Product id type, the summary query's columns, an existing summary table.
    let layout = Layout::load(client, cfg).await?;
    plan.create_summary = !layout.summary_exists;
    plan.summary_ddl = layout.create_table_sql(cfg);

    let pubs = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_publication p \
             JOIN pg_publication_rel pr ON pr.prpubid = p.oid \
             JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.pubname = $1",
            &[&cfg.publication],
        )
        .await?;
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&cfg.publication],
        )
        .await?
        .get(0);
    if exists {
        let have: BTreeSet<(String, String)> = pubs.iter().map(|r| (r.get(0), r.get(1))).collect();
        let want: BTreeSet<(String, String)> = cfg
            .tables
            .sources
            .keys()
            .map(|t| (schema.clone(), t.clone()))
            .collect();
        if have != want {
            let list = |s: &BTreeSet<(String, String)>| {
                s.iter()
                    .map(|(n, t)| qualified(n, t))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(definite(format!(
                "publication {} covers [{}] but the summary reads [{}]. Fix: ALTER PUBLICATION {} \
                 SET TABLE {}",
                cfg.publication,
                list(&have),
                list(&want),
                cfg.publication,
                list(&want)
            )));
        }
    } else {
        plan.create_publication = true;
    }
    Ok(plan)
}

async fn create(client: &Client, cfg: &Config, plan: &Plan) -> anyhow::Result<()> {
    crate::state::create(client, cfg).await?;
    if plan.create_summary {
        let ddl = &plan.summary_ddl;
        client
            .batch_execute(ddl)
            .await
            .context("creating the summary table")?;
        tracing::info!(table = %cfg.tables.summary, "created the summary table");
    }
    for table in &plan.replica_full {
        let name = qualified(&cfg.tables.schema, table);
        client
            .batch_execute(&format!("ALTER TABLE {name} REPLICA IDENTITY FULL"))
            .await
            .with_context(|| format!("setting REPLICA IDENTITY FULL on {name}"))?;
        tracing::info!(
            table = %name,
            "set REPLICA IDENTITY FULL, so a DELETE carries the product id of the row"
        );
    }
    if plan.create_publication {
        let tables = cfg
            .tables
            .sources
            .keys()
            .map(|t| qualified(&cfg.tables.schema, t))
            .collect::<Vec<_>>()
            .join(", ");
        client
            .batch_execute(&format!(
                "CREATE PUBLICATION {} FOR TABLE {tables}",
                quote_ident(&cfg.publication)
            ))
            .await
            .with_context(|| {
                format!(
                    "creating publication {}. Fix: run setup as the tables' owner once, or have \
                     the owner run: CREATE PUBLICATION {} FOR TABLE {tables}",
                    cfg.publication, cfg.publication
                )
            })?;
        tracing::info!(publication = %cfg.publication, %tables, "created the publication");
    }
    Ok(())
}
