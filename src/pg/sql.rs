//! Names in SQL. Table, column and schema names come from the configuration and are
//! spliced into statements with `format!`; values never are (they stay `$n` parameters).
//! Every name goes through [`quote_ident`], so a name with a quote, a capital or a space
//! is still one identifier.

use tokio_postgres::Client;

/// `"name"` with embedded quotes doubled: table and column names come from config.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled, for the few statements printed for a person to
/// read or run (`teardown --dry-run`) that cannot take parameters.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// Prepares `sql`, naming the statement in the error: a failure here usually means a
/// table, column or the summary query does not match the database.
pub async fn prepare(client: &Client, sql: &str) -> anyhow::Result<tokio_postgres::Statement> {
    use anyhow::Context as _;
    client
        .prepare(sql)
        .await
        .with_context(|| format!("preparing: {sql}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(qualified("public", "Pro\"d"), "\"public\".\"Pro\"\"d\"");
        assert_eq!(quote_ident("productId"), "\"productId\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
