//! The shop's layout: where its tables are and what their columns are called (from the
//! configuration), what type a product id has (from the catalog), and the SQL fragments
//! built from both. Every statement that names a summary column or binds product ids is
//! built here, so nothing else assumes the reference schema's names or text ids.
//!
//! Ids travel through the worker as their canonical text form (what pgoutput sends, what
//! `::text` gives, what tags contain) and are cast to their own type in SQL, so lookups
//! use the indexes and keyset pages follow the type's own order (2 < 10 for integers).

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::config::{Config, SummaryColumns};
use crate::error::definite;
use crate::pg::sql::{qualified, quote_ident};

/// Product and store id types the worker supports (`pg_type.typname`).
const ID_TYPES: &[&str] = &["text", "varchar", "int4", "int8", "uuid"];

#[derive(Debug, Clone)]
pub struct Layout {
    /// The summary table, qualified and quoted.
    pub summary: String,
    /// The product table, qualified and quoted, and its key column, quoted.
    pub product: String,
    pub product_key: String,
    /// The summary table's column names, quoted.
    pub col: SummaryColumns,
    /// SQL type of product ids (`bigint`, `uuid`, `text`...), as the product key has it.
    pub id_type: String,
    /// SQL type of store ids, as the summary query returns them.
    pub store_type: String,
    /// The summary table exists (setup creates it otherwise).
    pub summary_exists: bool,
    /// The summary's own `id` column has no default, so the worker makes cuid-like ids
    /// (Prisma's `@default(cuid())` runs in the client). False for identity/serial ids.
    pub generate_row_id: bool,
    /// The expression stored into `updatedAt`, for its column type.
    pub now: &'static str,
    query: String,
}

impl Layout {
    /// Reads the catalog and checks the configuration against it. Every problem is one
    /// definite error that names the table, column or query and the fix.
    pub async fn load(client: &Client, cfg: &Config) -> anyhow::Result<Layout> {
        let t = &cfg.tables;
        let product = qualified(&t.schema, &t.product);
        let key = &t.sources[&t.product];
        let id_type = product_key_type(client, cfg, &product, key).await?;
        let query = super::query_text::embeddable(&cfg.summary_query()?).to_string();
        let store_type = check_query(client, cfg, &query, &id_type.0).await?;
        super::reads::check(client, cfg, &query).await?;
        let col = t.summary_columns.map(quote_ident);
        let mut layout = Layout {
            summary: qualified(&t.schema, &t.summary),
            product,
            product_key: quote_ident(key),
            col,
            id_type: id_type.1,
            store_type: store_type.1,
            summary_exists: false,
            generate_row_id: true,
            now: NOW_TIMESTAMP,
            query,
        };
        layout
            .check_summary_table(client, cfg, &id_type.0, &store_type.0)
            .await?;
        Ok(layout)
    }

    /// `$n` (a `text[]` of ids) as an array of the id type.
    pub fn ids(&self, n: usize) -> String {
        format!("${n}::text[]::{}[]", self.id_type)
    }

    /// `$n` (one id as text) as the id type.
    pub fn id(&self, n: usize) -> String {
        format!("${n}::text::{}", self.id_type)
    }

    /// `$n` (a store id as text) as the store id type.
    pub fn store(&self, n: usize) -> String {
        format!("${n}::text::{}", self.store_type)
    }

    /// The summary query's text.
    pub fn query(&self) -> &str {
        &self.query
    }

    /// `CREATE TABLE` for a missing summary table: the Prisma model's columns and
    /// indexes, with the product and store ids in the source's own types. Room is left
    /// in every page (fillfactor 70) so that apply's updates, which never change an
    /// indexed column but a store move, stay on their page (HOT) and skip the three
    /// indexes: a third fewer buffers and ~25% less time per bulk recompute
    /// (bench/RESULTS.md).
    pub fn create_table_sql(&self, cfg: &Config) -> String {
        let c = &self.col;
        let name = &cfg.tables.summary;
        let index = |suffix: &str| quote_ident(&format!("{name}_{suffix}"));
        format!(
            "CREATE TABLE {summary} (\
                {id} TEXT NOT NULL, \
                {product_id} {id_type} NOT NULL, \
                {store_id} {store_type} NOT NULL, \
                {title} TEXT NOT NULL, \
                {price} INTEGER NOT NULL, \
                {active} BOOLEAN NOT NULL DEFAULT true, \
                {inventory} INTEGER NOT NULL DEFAULT 0, \
                {image} TEXT, \
                {updated} TIMESTAMP(3) NOT NULL, \
                CONSTRAINT {pkey} PRIMARY KEY ({id})) WITH (fillfactor = 70); \
             CREATE UNIQUE INDEX {product_key} ON {summary}({product_id}); \
             CREATE INDEX {store_idx} ON {summary}({store_id});",
            summary = self.summary,
            id = c.id,
            product_id = c.product_id,
            id_type = self.id_type,
            store_id = c.store_id,
            store_type = self.store_type,
            title = c.title,
            price = c.price,
            active = c.active,
            inventory = c.inventory_available,
            image = c.primary_image_url,
            updated = c.updated_at,
            pkey = index("pkey"),
            product_key = index(&format!("{}_key", cfg.tables.summary_columns.product_id)),
            store_idx = index(&format!("{}_idx", cfg.tables.summary_columns.store_id)),
        )
    }

    /// Checks an existing summary table's columns (names from the config, types against
    /// the ids), its unique index on the product id and the role's privileges.
    async fn check_summary_table(
        &mut self,
        client: &Client,
        cfg: &Config,
        id_typname: &str,
        store_typname: &str,
    ) -> anyhow::Result<()> {
        let rows = client
            .query(
                "SELECT a.attname::text, t.typname::text, format_type(a.atttypid, NULL), \
                        a.attnotnull, a.atthasdef OR a.attidentity <> '' \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&self.summary],
            )
            .await?;
        if rows.is_empty() {
            return Ok(());
        }
        self.summary_exists = true;
        let name = &self.summary;
        let c = &cfg.tables.summary_columns;
        // (config key, column, accepted typnames, must be not null)
        let text = &["text", "varchar"][..];
        let expected: [(&str, &str, &[&str], bool); 9] = [
            (
                "id",
                &c.id,
                &["text", "varchar", "int4", "int8", "uuid"],
                true,
            ),
            ("product_id", &c.product_id, &[id_typname], true),
            ("store_id", &c.store_id, &[store_typname], true),
            ("title", &c.title, text, true),
            ("price", &c.price, &["int4"], true),
            ("active", &c.active, &["bool"], true),
            (
                "inventory_available",
                &c.inventory_available,
                &["int4"],
                true,
            ),
            ("primary_image_url", &c.primary_image_url, text, false),
            (
                "updated_at",
                &c.updated_at,
                &["timestamp", "timestamptz"],
                true,
            ),
        ];
        for (key, column, types, not_null) in expected {
            let Some(found) = rows.iter().find(|r| r.get::<_, String>(0) == column) else {
                return Err(definite(format!(
                    "{name} has no column {} (tables.summary_columns.{key}). Fix: name the \
                     column in the config, migrate the table, or drop it and let setup create it",
                    quote_ident(column)
                )));
            };
            let (typname, shown, nn, has_default): (String, String, bool, bool) =
                (found.get(1), found.get(2), found.get(3), found.get(4));
            if !types.contains(&typname.as_str()) || (not_null && !nn) {
                return Err(definite(format!(
                    "{name}.{} is {shown}{} but must be {}{} (tables.summary_columns.{key}; \
                     product ids are {}, store ids {})",
                    quote_ident(column),
                    if nn { " not null" } else { "" },
                    types.join(" or "),
                    if not_null { " not null" } else { "" },
                    self.id_type,
                    self.store_type,
                )));
            }
            if key == "id" {
                self.generate_row_id = !has_default;
                if self.generate_row_id && !text.contains(&typname.as_str()) {
                    return Err(definite(format!(
                        "{name}.{} is {shown} without a default: the worker can only make text \
                         ids (cuid). Fix: give it a default (e.g. GENERATED BY DEFAULT AS \
                         IDENTITY) or make it text",
                        quote_ident(column)
                    )));
                }
            }
            if key == "updated_at" && typname == "timestamptz" {
                self.now = "now()";
            }
        }
        let unique: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
                   ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnatts = 1 \
                   AND a.attname = $2)",
                &[name, &c.product_id],
            )
            .await?
            .get(0);
        if !unique {
            return Err(definite(format!(
                "{name}.{col} has no unique index (Prisma's @unique). Fix: CREATE UNIQUE INDEX \
                 ON {name}({col})",
                col = self.col.product_id
            )));
        }
        let (user, privs): (String, bool) = {
            let r = client
                .query_one(
                    "SELECT current_user::text, \
                     has_table_privilege(to_regclass($1), 'SELECT, INSERT, UPDATE, DELETE')",
                    &[name],
                )
                .await?;
            (r.get(0), r.get(1))
        };
        if !privs {
            return Err(definite(format!(
                "role {user} cannot write {name}. Fix: GRANT SELECT, INSERT, UPDATE, DELETE ON \
                 {name} TO {}",
                quote_ident(&user)
            )));
        }
        Ok(())
    }
}

/// `updatedAt` as Prisma's `DateTime` stores it (timestamp(3) in UTC).
const NOW_TIMESTAMP: &str = "(now() AT TIME ZONE 'UTC')::timestamp(3)";

/// The product key's (typname, SQL type); refuses a type the worker cannot handle and a
/// key that does not identify one product.
async fn product_key_type(
    client: &Client,
    cfg: &Config,
    product: &str,
    key: &str,
) -> anyhow::Result<(String, String)> {
    let row = client
        .query_opt(
            "SELECT t.typname::text, format_type(a.atttypid, NULL), \
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid \
                            AND i.indisunique AND i.indnatts = 1 AND i.indkey[0] = a.attnum), \
                    (SELECT string_agg(k.attname, ', ') FROM pg_index i \
                       JOIN pg_attribute k ON k.attrelid = i.indrelid AND k.attnum = ANY(i.indkey) \
                      WHERE i.indrelid = a.attrelid AND i.indisprimary) \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND a.attnum > 0 \
               AND NOT a.attisdropped",
            &[&product, &key],
        )
        .await?;
    let Some(row) = row else {
        return Err(definite(format!(
            "{product} has no column {} (tables.sources names it as the product key), or the \
             table does not exist. Fix: correct tables.product / tables.sources, or run the \
             app's migrations",
            quote_ident(key)
        )));
    };
    let (typname, sql_type, unique, pk): (String, String, bool, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if !unique {
        let pk = pk.map_or_else(
            || "no primary key".to_string(),
            |k| format!("primary key ({k})"),
        );
        return Err(definite(format!(
            "{product}.{} does not identify one product ({product} has {pk}); the product id \
             must be a single unique column (composite keys are not supported). Fix: point \
             tables.sources.{} at the table's single-column key",
            quote_ident(key),
            cfg.tables.product
        )));
    }
    if !ID_TYPES.contains(&typname.as_str()) {
        return Err(definite(format!(
            "{product}.{} is {sql_type}; product ids must be text, varchar, integer, bigint or \
             uuid",
            quote_ident(key)
        )));
    }
    Ok((typname, sql_type))
}

/// Prepares the summary query to check its columns; returns the store id's (typname, SQL
/// type).
async fn check_query(
    client: &Client,
    cfg: &Config,
    query: &str,
    id_typname: &str,
) -> anyhow::Result<(String, String)> {
    let source = if cfg.tables.summary_query_file.is_empty() {
        "the built-in summary query (sql/summary_query.sql)".to_string()
    } else {
        format!("the summary query {}", cfg.tables.summary_query_file)
    };
    let stmt = client
        .prepare_typed(&format!("SELECT * FROM ({query}) s"), &[Type::TEXT])
        .await
        .map_err(|e| {
            let why = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string());
            definite(format!(
                "{source} does not run against this database: {why}. Fix: correct the query \
                 (tables.summary_query_file) or the tables it reads"
            ))
        })?;
    let text = &["text", "varchar"][..];
    let expected: [(&str, &[&str]); 7] = [
        ("product_id", &[id_typname]),
        ("store_id", ID_TYPES),
        ("title", text),
        ("price", &["int4"]),
        ("active", &["bool"]),
        ("inventory_available", &["int4"]),
        ("primary_image_url", text),
    ];
    let mut store = None;
    for (name, types) in expected {
        let Some(col) = stmt.columns().iter().find(|c| c.name() == name) else {
            return Err(definite(format!(
                "{source} returns no column {name}; it must return product_id, store_id, title, \
                 price, active, inventory_available, primary_image_url"
            )));
        };
        let ty = col.type_();
        if !types.contains(&ty.name()) {
            return Err(definite(format!(
                "{source}: column {name} is {}, but must be {} (cast it in the query)",
                ty.name(),
                types.join(" or ")
            )));
        }
        if name == "store_id" {
            store = Some((ty.name().to_string(), sql_type_of(ty.name()).to_string()));
        }
    }
    Ok(store.expect("store_id was checked"))
}

/// The SQL name of a supported id typname.
fn sql_type_of(typname: &str) -> &'static str {
    match typname {
        "int4" => "integer",
        "int8" => "bigint",
        "uuid" => "uuid",
        "varchar" => "character varying",
        _ => "text",
    }
}
