//! What `setup` checked, checked again while `run` runs (DESIGN.md 10): the publication
//! carries every source table, and each source table's replica identity carries its
//! product id column. Migrations break both without a word: dropping and recreating a
//! table leaves it out of a `FOR TABLE` publication (its changes are simply not streamed
//! any more), and a table recreated or altered back to `REPLICA IDENTITY DEFAULT` sends
//! updates without the old row, so an `UPDATE ... SET "productId"` names only the new
//! product.
//!
//! - A table missing from the publication stops the worker, at the start of every session
//!   and within a heartbeat while it streams ([`watch`]), with the `ALTER PUBLICATION` that
//!   fixes it. It cannot be repaired by recomputing: its changes would go on missing. The
//!   worker does not add it itself either: that needs the table's owner, which the
//!   worker's role normally is not. Before stopping it writes the durable recompute mark
//!   (`publication_changed`): the changes made while the table was out were never
//!   streamed, and the checkpoint may already be past them, so the start after the fix
//!   recomputes every product.
//! - A weakened identity is not a reason to stop: the stream says, in the Relation message
//!   before a table's first change, what identity each change was written with, and the
//!   router recomputes every product for each update it cannot attribute
//!   (`stream::route`). Stopping would not help either: those changes stay in the WAL as
//!   they were written. Here it is reported: one log line with the `ALTER TABLE` that
//!   fixes it, and `cdc_replica_identity_weak{table}` (alert `CdcWorkerReplicaIdentity`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::slot::Reason;
use crate::config::Config;
use crate::error::definite;
use crate::ops::metrics::Metrics;
use crate::pg::connect::Database;
use crate::pg::server;
use crate::pg::sql::{qualified, quote_ident};
use crate::state::checkpoint;

/// The source tables as the catalog has them now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sources {
    pub publication_exists: bool,
    /// Source tables the publication does not carry.
    pub unpublished: Vec<String>,
    /// Source table -> whether its replica identity lacks its product id column.
    pub weak_identity: BTreeMap<String, bool>,
}

/// Reads the publication's tables and each source table's replica identity.
pub async fn inspect(client: &Client, cfg: &Config) -> anyhow::Result<Sources> {
    let t = &cfg.tables;
    // The same reading of the publication as setup's and teardown's.
    let published = server::publication_tables(client, &cfg.publication).await?;
    let (tables, columns): (Vec<&String>, Vec<&String>) = t.sources.iter().unzip();
    let identities = client
        .query(
            &format!(
                "SELECT c.relname::text, {} \
                 FROM unnest($2::text[], $3::text[]) s(tbl, col) \
                 JOIN pg_class c ON c.relname = s.tbl \
                 JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = $1",
                server::identity_carries("c", "s.col")
            ),
            &[&t.schema, &tables, &columns],
        )
        .await?;
    Ok(Sources {
        unpublished: match &published {
            Some(have) => cfg
                .source_tables()
                .into_iter()
                .filter(|st| !have.contains(st))
                .map(|(_, table)| table)
                .collect(),
            None => Vec::new(),
        },
        publication_exists: published.is_some(),
        weak_identity: identities
            .iter()
            .map(|r| (r.get(0), !r.get::<_, bool>(1)))
            .collect(),
    })
}

/// The `ALTER TABLE` that gives `table` an identity that carries every column.
pub fn identity_fix(cfg: &Config, table: &str) -> String {
    format!(
        "ALTER TABLE {} REPLICA IDENTITY FULL",
        qualified(&cfg.tables.schema, table)
    )
}

/// The publication's problem, if any, as the message that stops the worker.
fn publication_problem(cfg: &Config, s: &Sources) -> Option<String> {
    let publication = quote_ident(&cfg.publication);
    if !s.publication_exists {
        return Some(format!(
            "publication {publication} does not exist, so no change of the source tables is \
             streamed. Fix: run `cdc-worker setup` (it creates it), then start the worker; \
             every product is recomputed"
        ));
    }
    if s.unpublished.is_empty() {
        return None;
    }
    let tables = s
        .unpublished
        .iter()
        .map(|t| qualified(&cfg.tables.schema, t))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "publication {publication} does not carry {tables}, which the summary reads (a \
         migration that drops and recreates a table leaves it out of a FOR TABLE \
         publication): its changes are not streamed. Fix (as the table's owner): ALTER \
         PUBLICATION {publication} ADD TABLE {tables}; then start the worker: every product \
         is recomputed, so the changes made meanwhile reach the summary"
    ))
}

/// Keeps `cdc_replica_identity_weak` and says once, per table and change, what is weak.
pub struct IdentityReport {
    metrics: Arc<Metrics>,
    last: BTreeMap<String, bool>,
}

impl IdentityReport {
    pub fn new(metrics: Arc<Metrics>) -> IdentityReport {
        IdentityReport {
            metrics,
            last: BTreeMap::new(),
        }
    }

    pub fn update(&mut self, cfg: &Config, weak_identity: &BTreeMap<String, bool>) {
        for (table, &weak) in weak_identity {
            self.metrics.set_replica_identity_weak(table, weak);
            let before = self.last.insert(table.clone(), weak);
            if weak && before != Some(true) {
                tracing::error!(
                    table = %table,
                    fix = %identity_fix(cfg, table),
                    "the replica identity of {table} does not carry its product id column {}: \
                     an UPDATE that moves a row to another product names only the new one, so \
                     every such UPDATE recomputes every product until it is fixed",
                    quote_ident(&cfg.tables.sources[table])
                );
            } else if !weak && before == Some(true) {
                tracing::info!(table = %table, "the replica identity of {table} carries its product id again");
            }
        }
    }
}

/// Marks the recompute that the start after the fix owes (only on a database that has a
/// checkpoint: one never set up gets `setup`'s message instead) and returns the error.
async fn stop(client: &Client, cfg: &Config, message: String) -> anyhow::Error {
    match checkpoint::read(client, &cfg.schema, &cfg.slot).await {
        Ok(Some(_)) => {
            if let Err(e) = checkpoint::mark(client, cfg, Reason::PublicationChanged.label()).await
            {
                return e.context(message);
            }
        }
        Ok(None) => {}
        Err(e) => return e.context(message),
    }
    definite(message)
}

/// At the start of every session, before anything is streamed: stops on a publication
/// that does not carry every source table; reports weak identities.
pub async fn at_session_start(
    client: &Client,
    cfg: &Config,
    report: &mut IdentityReport,
) -> anyhow::Result<()> {
    let sources = inspect(client, cfg).await?;
    report.update(cfg, &sources.weak_identity);
    match publication_problem(cfg, &sources) {
        Some(message) => Err(stop(client, cfg, message).await),
        None => Ok(()),
    }
}

/// While the session streams: the same checks every `every`, on a connection of its own.
/// Returns only with the error that ends the session (a publication that lost a table);
/// a failed check (connection lost) is tried again at the next tick.
pub async fn watch(
    db: Database,
    cfg: Config,
    mut report: IdentityReport,
    every: Duration,
) -> anyhow::Error {
    let mut client: Option<Client> = None;
    loop {
        tokio::time::sleep(every).await;
        if client.is_none() {
            client = db.connect("cdc-worker/guard").await.ok();
        }
        let Some(c) = &client else { continue };
        match inspect(c, &cfg).await {
            Ok(sources) => {
                report.update(&cfg, &sources.weak_identity);
                if let Some(message) = publication_problem(&cfg, &sources) {
                    return stop(c, &cfg, message).await;
                }
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "checking the publication failed; trying again");
                client = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publication_message_names_the_table_and_the_fix() {
        let cfg = Config::default();
        let mut s = Sources {
            publication_exists: true,
            ..Sources::default()
        };
        assert_eq!(publication_problem(&cfg, &s), None);
        s.unpublished = vec!["Price".into()];
        let m = publication_problem(&cfg, &s).unwrap();
        assert!(
            m.contains("does not carry \"public\".\"Price\"")
                && m.contains("ALTER PUBLICATION \"cdc_worker\" ADD TABLE \"public\".\"Price\""),
            "{m}"
        );
        s.publication_exists = false;
        assert!(publication_problem(&cfg, &s)
            .unwrap()
            .contains("does not exist"));
    }
}
