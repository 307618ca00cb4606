//! Which relations the summary query reads, and the refusal of any that is not a source
//! table (DESIGN.md 9): the publication carries the changes of `[tables.sources]` only, so
//! a query that also reads, say, `"Promo"` or `store` would keep rows computed from that
//! table's old contents forever, with no error anywhere.
//!
//! How: Postgres records, for a view, every relation and function its query refers to
//! (`pg_depend` of the view's rewrite rule). The query becomes a view for a moment, inside
//! a transaction that is rolled back, so nothing is left behind. A view cannot have
//! parameters: `$1` (the currency) becomes `NULL::text` (it is bound as text everywhere,
//! and `Layout` prepared the query with `$1` typed text), which changes no reference to a
//! relation. Views the query reads are followed to the relations they read. Functions are
//! opaque: a user function that is not IMMUTABLE may read tables the check cannot see, so
//! it gets a warning naming it.

use tokio_postgres::Client;

use super::query_text;
use crate::config::Config;
use crate::error::definite;
use crate::pg::sql::{qualified, quote_ident};

/// A relation the query reads: schema, name, `relkind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub schema: String,
    pub name: String,
    pub kind: String,
}

/// The relations (through views) and the non-immutable user functions the query refers
/// to, read from a view created and rolled back on `client` (which must not be inside a
/// transaction).
pub async fn reads(client: &Client, query: &str) -> anyhow::Result<(Vec<Read>, Vec<String>)> {
    let body = query_text::bind_params(query, |_| "(NULL::text)".into());
    // TEMPORARY needs the TEMP privilege (PUBLIC has it by default); without it, a schema
    // of its own serves (setup's role may create schemas: it creates the state schema).
    // Both are rolled back.
    let mut last_error = None;
    for schema in ["pg_temp", "cdc_worker_reads_probe"] {
        let create = if schema == "pg_temp" {
            format!("CREATE TEMPORARY VIEW cdc_worker_reads AS SELECT 1 AS one FROM ({body}\n) s")
        } else {
            format!(
                "CREATE SCHEMA {schema}; \
                 CREATE VIEW {schema}.cdc_worker_reads AS SELECT 1 AS one FROM ({body}\n) s"
            )
        };
        client.batch_execute("BEGIN").await?;
        let result = probe(client, &create, &format!("{schema}.cdc_worker_reads")).await;
        client.batch_execute("ROLLBACK").await?;
        match result {
            Ok(found) => return Ok(found),
            // 42501: no TEMP privilege (or no CREATE on the database for the fallback).
            Err(e) if e.code().map(|c| c.code()) == Some("42501") => last_error = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    let e = last_error.expect("both attempts failed");
    Err(definite(format!(
        "cannot check which tables the summary query reads: {}. Fix: GRANT TEMPORARY ON \
         DATABASE to the worker's role (PUBLIC has it by default)",
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string())
    )))
}

async fn probe(
    client: &Client,
    create: &str,
    view: &str,
) -> Result<(Vec<Read>, Vec<String>), tokio_postgres::Error> {
    client.batch_execute(create).await?;
    // The rule's dependencies on relations (its own view excluded), following views to
    // what they read; a view itself is not a read.
    let relations = client
        .query(
            "WITH RECURSIVE refs(oid) AS ( \
               SELECT d.refobjid FROM pg_rewrite r JOIN pg_depend d \
                 ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class \
                WHERE r.ev_class = $1::text::regclass \
               UNION \
               SELECT d.refobjid FROM refs JOIN pg_class c ON c.oid = refs.oid AND c.relkind = 'v' \
                 JOIN pg_rewrite r ON r.ev_class = c.oid \
                 JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
                AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class) \
             SELECT DISTINCT n.nspname::text, c.relname::text, c.relkind::text \
             FROM refs JOIN pg_class c ON c.oid = refs.oid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind <> 'v' ORDER BY 1, 2",
            &[&view],
        )
        .await?
        .iter()
        .map(|r| Read {
            schema: r.get(0),
            name: r.get(1),
            kind: r.get(2),
        })
        .collect();
    // Built-in functions are pinned and never recorded; what is recorded is the shop's.
    let functions = client
        .query(
            "SELECT DISTINCT p.oid::regprocedure::text FROM pg_rewrite r JOIN pg_depend d \
               ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid \
              AND d.refclassid = 'pg_proc'::regclass \
             JOIN pg_proc p ON p.oid = d.refobjid \
             WHERE r.ev_class = $1::text::regclass AND p.provolatile <> 'i' ORDER BY 1",
            &[&view],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((relations, functions))
}

/// Refuses a summary query that reads a relation outside `[tables.sources]`, in one line
/// naming it and the config line that fixes it; warns about functions it cannot see into.
pub async fn check(client: &Client, cfg: &Config, query: &str) -> anyhow::Result<()> {
    let (relations, functions) = reads(client, query).await?;
    let t = &cfg.tables;
    let source = |r: &Read| r.schema == t.schema && t.sources.contains_key(&r.name);
    if let Some(r) = relations.iter().find(|r| !source(r)) {
        return Err(definite(outside_sources(client, cfg, r).await?));
    }
    for f in functions {
        tracing::warn!(
            function = %f,
            "the summary query calls {f}, which is not IMMUTABLE: the worker cannot see which \
             tables it reads. If it reads a table outside [tables.sources], that table's \
             changes never reach the summary"
        );
    }
    Ok(())
}

/// The refusal of `r`, with the config line that fixes it when `r` has a column named like
/// the other sources' product id columns.
async fn outside_sources(client: &Client, cfg: &Config, r: &Read) -> anyhow::Result<String> {
    let t = &cfg.tables;
    let name = qualified(&r.schema, &r.name);
    let which = match t.summary_query_file.as_str() {
        "" => "the built-in summary query".to_string(),
        file => format!("the summary query {file}"),
    };
    let what = match r.kind.as_str() {
        "m" => "materialized view",
        "f" => "foreign table",
        "S" => "sequence",
        _ => "table",
    };
    if r.schema == t.schema && r.name == t.summary {
        return Ok(format!(
            "{which} reads the summary table {name} itself: rows would depend on the order \
             products are recomputed in. Fix: read only the source tables in the query"
        ));
    }
    let not_streamed = format!(
        "{which} reads {what} {name}, which is not in [tables.sources]: its changes are not \
         streamed, so summary rows would keep what it held when they were computed"
    );
    if r.schema != t.schema || !matches!(r.kind.as_str(), "r" | "p") {
        return Ok(format!(
            "{not_streamed}. Fix: stop reading it in the query (only tables of tables.schema \
             = {:?} can be sources)",
            t.schema
        ));
    }
    let candidates: Vec<&String> = t
        .sources
        .iter()
        .filter(|(table, _)| **table != t.product)
        .map(|(_, column)| column)
        .collect();
    let column: Option<String> = client
        .query_opt(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::text::regclass \
             AND attname = ANY($2) AND attnum > 0 AND NOT attisdropped LIMIT 1",
            &[&name, &candidates],
        )
        .await?
        .map(|row| row.get(0));
    let line = format!(
        "{} = {}",
        toml_key(&r.name),
        column.map_or_else(
            || "\"<its product id column>\"".to_string(),
            |c| format!("{c:?}")
        )
    );
    Ok(format!(
        "{not_streamed}. Fix: add `{line}` under [tables.sources] in the config (and the \
         table to the publication: ALTER PUBLICATION {} ADD TABLE {name}), or stop reading \
         it in the query",
        quote_ident(&cfg.publication)
    ))
}

/// A table name as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_are_quoted_when_needed() {
        assert_eq!(toml_key("store"), "store");
        assert_eq!(toml_key("Promo"), "Promo");
        assert_eq!(toml_key("my promo"), "\"my promo\"");
    }
}
