//! Configuration: a TOML file (`config/cdc-worker.toml` documents every key) with
//! environment overrides, validated once at start-up so that a bad value stops the
//! program before it touches anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::redact::redact_url;

/// A configuration problem: always names the setting and says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Postgres URL (`DATABASE_URL`). The same URL a Prisma app uses; Prisma-only query
    /// parameters such as `schema=` are ignored.
    pub database_url: String,
    /// Logical replication slot (`CDC_SLOT`).
    pub slot: String,
    /// Publication covering exactly the source tables (`CDC_PUBLICATION`).
    pub publication: String,
    /// Schema holding the worker's own state (`CDC_SCHEMA`).
    pub schema: String,
    /// Currency whose Price row becomes ProductSummary.price (`CDC_CURRENCY`).
    pub currency: String,
    /// When Postgres invalidates the slot (max_slot_wal_keep_size), recreate it and
    /// recompute every product instead of stopping.
    pub recover_lost_slot: bool,
    /// Create the slot with `failover = true` on PostgreSQL 17+, so that physical standbys
    /// running with `sync_replication_slots = on` keep a synchronized copy and the worker
    /// streams on from it after a promotion instead of recomputing every product.
    pub failover_slot: bool,
    /// pgoutput protocol: 2 (the default) streams large transactions while they run
    /// (`streaming 'on'`), so at their commit only the recompute is left; 1 sends each
    /// transaction only after its commit, for a server or proxy that mishandles streaming.
    pub pgoutput_protocol: u32,
    pub tables: Tables,
    pub batch: Batch,
    pub revalidate: Revalidate,
    pub metrics: Metrics,
}

/// Where the source and summary tables live. The reference schema is the default, so a
/// shop whose tables are named differently edits this section (and `summary_query`)
/// instead of the code.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tables {
    /// Schema of the app's tables.
    pub schema: String,
    /// The summary table (created by `setup` when missing).
    pub summary: String,
    /// Every table the summary reads, with the column that holds the product id
    /// (for the product table itself, its primary key). These form the publication.
    pub sources: BTreeMap<String, String>,
    /// The source table whose rows are the products (its key is the product id).
    pub product: String,
    /// Path of a file with the summary query; empty means the built-in
    /// `sql/summary_query.sql` for the reference schema.
    pub summary_query_file: String,
    /// Column names of the summary table (Prisma's `@map`); the defaults are the model's
    /// field names.
    pub summary_columns: SummaryColumns,
}

/// The summary table's column names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummaryColumns {
    pub id: String,
    pub product_id: String,
    pub store_id: String,
    pub title: String,
    pub price: String,
    pub active: String,
    pub inventory_available: String,
    pub primary_image_url: String,
    pub updated_at: String,
}

impl Default for SummaryColumns {
    fn default() -> Self {
        SummaryColumns {
            id: "id".into(),
            product_id: "productId".into(),
            store_id: "storeId".into(),
            title: "title".into(),
            price: "price".into(),
            active: "active".into(),
            inventory_available: "inventoryAvailable".into(),
            primary_image_url: "primaryImageUrl".into(),
            updated_at: "updatedAt".into(),
        }
    }
}

impl SummaryColumns {
    /// Each name through `f` (the quoted names SQL is built from).
    pub fn map(&self, f: impl Fn(&str) -> String) -> SummaryColumns {
        SummaryColumns {
            id: f(&self.id),
            product_id: f(&self.product_id),
            store_id: f(&self.store_id),
            title: f(&self.title),
            price: f(&self.price),
            active: f(&self.active),
            inventory_available: f(&self.inventory_available),
            primary_image_url: f(&self.primary_image_url),
            updated_at: f(&self.updated_at),
        }
    }

    /// (config key, column name) in the table's order.
    pub fn all(&self) -> [(&'static str, &str); 9] {
        [
            ("id", &self.id),
            ("product_id", &self.product_id),
            ("store_id", &self.store_id),
            ("title", &self.title),
            ("price", &self.price),
            ("active", &self.active),
            ("inventory_available", &self.inventory_available),
            ("primary_image_url", &self.primary_image_url),
            ("updated_at", &self.updated_at),
        ]
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batch {
    /// Most products recomputed in one apply transaction (a larger batch is applied in
    /// several, the checkpoint moving with the last).
    pub max_products: usize,
    /// Most distinct dirty products held while apply is busy. Under backlog, batches grow
    /// up to this, so repeated changes to the same products coalesce; it bounds the
    /// worker's memory (about 10 bytes per product id plus the id's own length; two
    /// batches, one filling and one being applied, at most). It also bounds the products
    /// an earlier recompute covered kept in memory; past it they go to a temporary table.
    pub max_pending: usize,
    /// Interval of the heartbeat message written to the WAL, so that the slot and the
    /// lag-in-seconds metric advance even while the published tables are idle.
    pub heartbeat_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Revalidate {
    /// Next.js revalidation endpoints (`CDC_REVALIDATE_URLS`, comma-separated). Each
    /// self-hosted Next.js instance keeps its own tag cache, so list them all.
    pub urls: Vec<String>,
    /// HMAC secret shared with the route handler (`CDC_REVALIDATE_SECRET`).
    pub secret: String,
    /// Tags of a changed summary row. `{productId}` and `{storeId}` are replaced.
    pub tags: Vec<String>,
    /// Extra tags when inventoryAvailable changed.
    pub inventory_tags: Vec<String>,
    /// Most distinct tags in one POST.
    pub max_batch_tags: usize,
    /// How long the deliverer waits for more tags before it sends.
    pub window_ms: u64,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// How long one batch of tags is retried (with backoff) against an endpoint that keeps
    /// failing (any answer but a 2xx, or no answer) before it is parked in
    /// `outbox_failed` and the endpoint moves on. Long enough to ride out a deploy, a
    /// secret rotation or clock skew; parked tags are sent again with
    /// `cdc-worker revalidate --failed`.
    pub give_up_after_secs: u64,
    /// Hot tags: the least time between two revalidations of one tag, by the template
    /// that renders it (a key of this map must be one of `tags` or `inventory_tags`,
    /// written exactly as there). A tag of such a template is sent at once when its
    /// last revalidation is at least this long ago; otherwise it is held (durably, in
    /// `<schema>.outbox_held`) and sent when the interval has passed, every repeat in
    /// between coalescing into that one. The last one is never dropped: a tag enqueued
    /// at t is sent by t + interval. Templates not named here are sent at once.
    pub min_interval_ms: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Address of the `/metrics`, `/healthz` and `/readyz` endpoints
    /// (`CDC_METRICS_ADDR`); empty disables them.
    pub addr: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: String::new(),
            slot: "cdc_worker".into(),
            publication: "cdc_worker".into(),
            schema: "cdc_worker".into(),
            currency: "USD".into(),
            recover_lost_slot: true,
            failover_slot: true,
            pgoutput_protocol: 2,
            tables: Tables::default(),
            batch: Batch::default(),
            revalidate: Revalidate::default(),
            metrics: Metrics::default(),
        }
    }
}

impl Default for Tables {
    fn default() -> Self {
        let sources = [
            ("Product", "id"),
            ("Inventory", "productId"),
            ("Price", "productId"),
            ("ProductImage", "productId"),
        ];
        Tables {
            schema: "public".into(),
            summary: "ProductSummary".into(),
            sources: sources
                .into_iter()
                .map(|(t, c)| (t.to_string(), c.to_string()))
                .collect(),
            product: "Product".into(),
            summary_query_file: String::new(),
            summary_columns: SummaryColumns::default(),
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            max_products: 20_000,
            max_pending: 200_000,
            heartbeat_secs: 10,
        }
    }
}

impl Default for Revalidate {
    fn default() -> Self {
        Revalidate {
            urls: Vec::new(),
            secret: String::new(),
            tags: vec![
                "product:{productId}".into(),
                "store:{storeId}:products".into(),
            ],
            inventory_tags: vec!["inventory:{productId}".into()],
            max_batch_tags: 500,
            window_ms: 10,
            timeout_ms: 5_000,
            give_up_after_secs: 900,
            min_interval_ms: BTreeMap::new(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            addr: "0.0.0.0:9187".into(),
        }
    }
}

/// The longest `revalidate.min_interval_ms`: one hour. Held tags whose last release is
/// older than this are as good as new, which lets the worker forget them.
pub const MAX_MIN_INTERVAL_MS: u64 = 3_600_000;

/// The built-in summary query for the reference schema.
pub const DEFAULT_SUMMARY_QUERY: &str = include_str!("../sql/summary_query.sql");

/// The default config file, used when `--config` is not given and it exists.
pub const DEFAULT_PATH: &str = "config/cdc-worker.toml";

impl Config {
    /// Reads the file (when given or present at the default path), applies environment
    /// overrides, and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => Self::from_file(p)?,
            None if Path::new(DEFAULT_PATH).exists() => Self::from_file(Path::new(DEFAULT_PATH))?,
            None => Config::default(),
        };
        cfg.apply_env(env);
        cfg.normalize_urls()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            bad(format!(
                "{} is not a valid config file: {} (see config/cdc-worker.toml for every key)",
                path.display(),
                describe_toml_error(&text, &e)
            ))
        })
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let set = |target: &mut String, key: &str| {
            if let Some(v) = env(key).filter(|v| !v.is_empty()) {
                *target = v;
            }
        };
        set(&mut self.database_url, "DATABASE_URL");
        set(&mut self.slot, "CDC_SLOT");
        set(&mut self.publication, "CDC_PUBLICATION");
        set(&mut self.schema, "CDC_SCHEMA");
        set(&mut self.currency, "CDC_CURRENCY");
        set(&mut self.revalidate.secret, "CDC_REVALIDATE_SECRET");
        if let Some(v) = env("CDC_PGOUTPUT_PROTOCOL").filter(|v| !v.is_empty()) {
            // Not a number: 0, which validation refuses with the accepted values.
            self.pgoutput_protocol = v.trim().parse().unwrap_or(0);
        }
        // Empty is meaningful here: it disables the listener.
        if let Some(addr) = env("CDC_METRICS_ADDR") {
            self.metrics.addr = addr;
        }
        if let Some(urls) = env("CDC_REVALIDATE_URLS") {
            self.revalidate.urls = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(String::from)
                .collect();
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.database_url.is_empty() {
            return Err(bad(
                "DATABASE_URL is not set: export DATABASE_URL=postgresql://user:password@host:5432/db \
                 (or set database_url in the config file)",
            ));
        }
        for (what, env, value) in [
            ("slot", "CDC_SLOT", &self.slot),
            ("publication", "CDC_PUBLICATION", &self.publication),
            ("schema", "CDC_SCHEMA", &self.schema),
        ] {
            if !is_simple_identifier(value) {
                return Err(bad(format!(
                    "{what} {value:?} ({env}) must be 1-63 characters of lowercase letters, digits and \
                     underscores, starting with a letter or underscore"
                )));
            }
        }
        if self.currency.is_empty() || self.currency.len() > 16 {
            return Err(bad(format!(
                "currency {:?} (CDC_CURRENCY) must be a currency code such as USD",
                self.currency
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (field, column) in self.tables.summary_columns.all() {
            if column.is_empty() || column.len() > 63 {
                return Err(bad(format!(
                    "tables.summary_columns.{field}: {column:?} is not a column name (1-63 characters)"
                )));
            }
            if !seen.insert(column) {
                return Err(bad(format!(
                    "tables.summary_columns: {column:?} is named for two columns"
                )));
            }
        }
        if !self.tables.sources.contains_key(&self.tables.product) {
            return Err(bad(format!(
                "tables.product {:?} must be one of tables.sources",
                self.tables.product
            )));
        }
        if self.batch.max_products == 0 || self.batch.max_pending == 0 {
            return Err(bad(
                "batch.max_products and batch.max_pending must be at least 1",
            ));
        }
        if !matches!(self.pgoutput_protocol, 1 | 2) {
            return Err(bad(format!(
                "pgoutput_protocol = {} (CDC_PGOUTPUT_PROTOCOL) is not supported: 2 (the \
                 default) streams large transactions while they run, 1 sends each after its \
                 commit",
                self.pgoutput_protocol
            )));
        }
        if self.batch.heartbeat_secs == 0 {
            return Err(bad("batch.heartbeat_secs must be at least 1"));
        }
        if self.revalidate.max_batch_tags == 0 {
            return Err(bad("revalidate.max_batch_tags must be at least 1"));
        }
        if self.revalidate.give_up_after_secs == 0 {
            return Err(bad(
                "revalidate.give_up_after_secs must be at least 1 (default 900: 15 minutes)",
            ));
        }
        if !self.revalidate.urls.is_empty() && self.revalidate.secret.is_empty() {
            return Err(bad(
                "CDC_REVALIDATE_URLS is set but CDC_REVALIDATE_SECRET is empty: set the secret the \
                 Next.js route handler verifies",
            ));
        }
        for template in self
            .revalidate
            .tags
            .iter()
            .chain(&self.revalidate.inventory_tags)
        {
            check_tag_template(template)?;
        }
        self.check_min_intervals()?;
        Ok(())
    }

    /// `revalidate.min_interval_ms`: each key one of the configured templates, each value
    /// at most [`MAX_MIN_INTERVAL_MS`].
    fn check_min_intervals(&self) -> Result<(), ConfigError> {
        let r = &self.revalidate;
        for (template, &ms) in &r.min_interval_ms {
            if !r.tags.contains(template) && !r.inventory_tags.contains(template) {
                let known: Vec<String> = r
                    .tags
                    .iter()
                    .chain(&r.inventory_tags)
                    .map(|t| format!("{t:?}"))
                    .collect();
                return Err(bad(format!(
                    "revalidate.min_interval_ms: {template:?} is not a tag template; a key must be \
                     one of revalidate.tags or revalidate.inventory_tags, written exactly as there: {}",
                    known.join(", ")
                )));
            }
            if ms > MAX_MIN_INTERVAL_MS {
                return Err(bad(format!(
                    "revalidate.min_interval_ms {template:?} = {ms}: at most {MAX_MIN_INTERVAL_MS} \
                     (one hour); pages carrying the tag stay stale up to this long after a change"
                )));
            }
        }
        Ok(())
    }

    /// Puts every revalidation URL into its normal form and drops repeats. A URL listed
    /// twice would get every tag twice, and its delivery cursor (keyed by the URL) would
    /// be shared by two deliverers; `HTTP://Shop:80/x` and `http://shop/x` are the same
    /// endpoint. A path's trailing slash is kept: by URL rules `/x/` and `/x` are different
    /// resources (and Next.js redirects one to the other).
    fn normalize_urls(&mut self) -> Result<(), ConfigError> {
        let mut urls: Vec<String> = Vec::new();
        // Delivery cursors are keyed by the redacted URL (no secret in the state tables),
        // so two endpoints must not differ only in what redaction hides.
        let mut keys = std::collections::BTreeSet::new();
        for raw in &self.revalidate.urls {
            let url = normalize_endpoint(raw)?;
            let shown = redact_url(&url);
            if urls.contains(&url) {
                tracing::warn!(url = %shown, "revalidate URL listed twice (CDC_REVALIDATE_URLS / revalidate.urls); sending to it once");
                continue;
            }
            if !keys.insert(shown.clone()) {
                return Err(bad(format!(
                    "two revalidate URLs (CDC_REVALIDATE_URLS) differ only in credentials or query \
                     values, both shown as {shown}: list each Next.js endpoint once, or tell them \
                     apart by host, port or path"
                )));
            }
            urls.push(url);
        }
        self.revalidate.urls = urls;
        Ok(())
    }

    /// The source tables as (schema, table): what the publication must cover exactly.
    pub fn source_tables(&self) -> std::collections::BTreeSet<(String, String)> {
        self.tables
            .sources
            .keys()
            .map(|t| (self.tables.schema.clone(), t.clone()))
            .collect()
    }

    /// The summary query: from `tables.summary_query_file`, or the built-in one.
    pub fn summary_query(&self) -> Result<String, ConfigError> {
        if self.tables.summary_query_file.is_empty() {
            return Ok(DEFAULT_SUMMARY_QUERY.to_string());
        }
        let path = PathBuf::from(&self.tables.summary_query_file);
        std::fs::read_to_string(&path)
            .map_err(|e| bad(format!("tables.summary_query_file {}: {e}", path.display())))
    }

    /// Whether the slot is read with streaming of in-progress transactions (protocol 2).
    pub fn streaming(&self) -> bool {
        self.pgoutput_protocol >= 2
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.batch.heartbeat_secs)
    }
}

/// A TOML error as line, column, the key the line sets and the parser's message, without
/// the source line the parser would quote under it: the line may be `database_url`'s or
/// `revalidate.secret`'s, and an error goes to stderr and the journal. Quoted values in
/// the message ("invalid type: string \"...\"") are left out for the same reason.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = scrub_quoted(&e.message().trim().replace('\n', "; "));
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or_default();
    // Only a bare key followed by `=`: anything else on the line could be a value.
    let key: String = line_text
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    let sets_key = !key.is_empty()
        && line_text.trim_start()[key.len()..]
            .trim_start()
            .starts_with('=');
    if sets_key {
        format!("line {line}, column {column} (key {key}): {message}")
    } else {
        format!("line {line}, column {column}: {message}")
    }
}

/// `text` with the value of every `string "..."` (how serde shows a string it did not
/// expect) replaced by `"..."`.
fn scrub_quoted(text: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i + MARK.len()]);
        // Skip to the closing quote (a backslash escapes the next character).
        let mut escaped = false;
        let mut end = rest.len();
        for (j, d) in rest[i + MARK.len()..].char_indices() {
            if escaped {
                escaped = false;
            } else if d == '\\' {
                escaped = true;
            } else if d == '"' {
                end = i + MARK.len() + j + 1;
                break;
            }
        }
        out.push_str("...\"");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `raw` as one http(s) URL in normal form (scheme and host lowercase, default port and
/// fragment dropped, an empty path as `/`).
pub fn normalize_endpoint(raw: &str) -> Result<String, ConfigError> {
    let shown = redact_url(raw);
    let mut url = reqwest::Url::parse(raw).map_err(|e| {
        bad(format!(
            "revalidate URL {shown} (CDC_REVALIDATE_URLS) is not a valid URL ({e}); expected \
             e.g. https://shop.example.com/api/revalidate"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(bad(format!(
            "revalidate URL {shown} (CDC_REVALIDATE_URLS) must start with http:// or https:// \
             and name a host"
        )));
    }
    url.set_fragment(None);
    Ok(url.to_string())
}

/// Names we put into SQL unquoted-safe (slot, publication, schema): keep them simple so
/// that no quoting rule can go wrong.
pub fn is_simple_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Next.js silently ignores a tag longer than 256 characters or one with a comma, so a
/// template that could produce one is refused up front. Ids are assumed at most 64
/// characters (cuid, uuid and friends are shorter).
fn check_tag_template(t: &str) -> Result<(), ConfigError> {
    const MAX_ID: usize = 64;
    let stripped = t.replace("{productId}", "").replace("{storeId}", "");
    if stripped.contains('{') || stripped.contains('}') {
        return Err(bad(format!(
            "tag template {t:?}: only {{productId}} and {{storeId}} can be substituted"
        )));
    }
    if t.contains(',') {
        return Err(bad(format!(
            "tag template {t:?} contains a comma, which Next.js does not accept in a tag"
        )));
    }
    let placeholders = t.matches("{productId}").count() + t.matches("{storeId}").count();
    if stripped.len() + placeholders * MAX_ID > 256 {
        return Err(bad(format!(
            "tag template {t:?} can exceed 256 characters, the most Next.js accepts in a tag"
        )));
    }
    if t.is_empty() {
        return Err(bad("an empty tag template is not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_overrides_defaults() {
        let cfg = Config::load_with_env(
            None,
            env(&[
                ("DATABASE_URL", "postgresql://u:p@h/db"),
                ("CDC_SLOT", "s1"),
                ("CDC_CURRENCY", "EUR"),
                ("CDC_REVALIDATE_URLS", "http://a/x, http://b/y"),
                ("CDC_REVALIDATE_SECRET", "k"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.slot, "s1");
        assert_eq!(cfg.publication, "cdc_worker");
        assert_eq!(cfg.currency, "EUR");
        assert_eq!(cfg.revalidate.urls, vec!["http://a/x", "http://b/y"]);
    }

    #[test]
    fn missing_database_url_names_the_variable() {
        let err = Config::load_with_env(None, env(&[])).unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn bad_slot_name_is_refused() {
        let err = Config::load_with_env(
            None,
            env(&[("DATABASE_URL", "postgres://x/y"), ("CDC_SLOT", "My-Slot")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CDC_SLOT"), "{err}");
    }

    #[test]
    fn urls_without_secret_are_refused() {
        let err = Config::load_with_env(
            None,
            env(&[
                ("DATABASE_URL", "postgres://x/y"),
                ("CDC_REVALIDATE_URLS", "http://a"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CDC_REVALIDATE_SECRET"), "{err}");
    }

    #[test]
    fn revalidate_urls_are_normalized_and_deduplicated() {
        let cfg = Config::load_with_env(
            None,
            env(&[
                ("DATABASE_URL", "postgres://x/y"),
                ("CDC_REVALIDATE_SECRET", "k"),
                (
                    "CDC_REVALIDATE_URLS",
                    "HTTP://Shop-1.Example:80/api/revalidate, http://shop-1.example/api/revalidate,\
                     https://shop-2.example/api/revalidate#x, http://shop-1.example/api/revalidate/,\
                     https://shop-2.example:443/api/revalidate, http://shop-3.example",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(
            cfg.revalidate.urls,
            vec![
                "http://shop-1.example/api/revalidate",
                "https://shop-2.example/api/revalidate",
                // a different resource by URL rules (Next.js redirects it)
                "http://shop-1.example/api/revalidate/",
                "http://shop-3.example/",
            ]
        );
    }

    #[test]
    fn revalidate_urls_differing_only_in_secrets_are_refused_without_showing_them() {
        let err = Config::load_with_env(
            None,
            env(&[
                ("DATABASE_URL", "postgres://x/y"),
                ("CDC_REVALIDATE_SECRET", "k"),
                (
                    "CDC_REVALIDATE_URLS",
                    "http://u:pw1@a/r?token=t1,http://u:pw2@a/r?token=t2",
                ),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("http://***@a/r?token=***"), "{err}");
        for secret in ["pw1", "pw2", "t1", "t2"] {
            assert!(!err.contains(secret), "{err}");
        }
        let err = Config::load_with_env(
            None,
            env(&[
                ("DATABASE_URL", "postgres://x/y"),
                ("CDC_REVALIDATE_SECRET", "k"),
                ("CDC_REVALIDATE_URLS", "ftp://u:hunter2@a/r"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("http://"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn tag_templates_are_checked() {
        assert!(check_tag_template("product:{productId}").is_ok());
        assert!(check_tag_template("a,b:{productId}").is_err());
        assert!(check_tag_template("{tenant}:{productId}").is_err());
        assert!(check_tag_template(&"x".repeat(250)).is_ok());
        assert!(check_tag_template(&format!("{}{{productId}}", "x".repeat(200))).is_err());
    }

    fn with_file(name: &str, text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        Config::load_with_env(Some(&p), env(&[("DATABASE_URL", "postgres://x/y")]))
    }

    #[test]
    fn min_interval_names_a_template() {
        let cfg = with_file(
            "interval-ok.toml",
            "[revalidate]\nmin_interval_ms = { \"store:{storeId}:products\" = 1000, \"inventory:{productId}\" = 0 }\n",
        )
        .unwrap();
        assert_eq!(
            cfg.revalidate.min_interval_ms["store:{storeId}:products"],
            1000
        );
        // Not a template (lowercase i): refused, naming it and the templates there are.
        let err = with_file(
            "interval-typo.toml",
            "[revalidate]\nmin_interval_ms = { \"store:{storeid}:products\" = 1000 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"store:{storeid}:products\" is not a tag template"),
            "{err}"
        );
        assert!(err.contains("\"store:{storeId}:products\""), "{err}");
        // A rendered tag is not a template either.
        let err = with_file(
            "interval-tag.toml",
            "[revalidate]\nmin_interval_ms = { \"store:s1:products\" = 1000 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("store:s1:products"), "{err}");
        let err = with_file(
            "interval-long.toml",
            "[revalidate]\nmin_interval_ms = { \"product:{productId}\" = 3600001 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("at most 3600000"), "{err}");
        // Negative values are a type error from the parser, naming the key.
        let err = with_file(
            "interval-negative.toml",
            "[revalidate]\nmin_interval_ms = { \"product:{productId}\" = -1 }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("min_interval_ms"), "{err}");
    }

    /// Issue 18: a TOML syntax error quoted the offending line, a mistyped `database_url`
    /// or `secret` line included, on stderr and in the journal.
    #[test]
    fn a_toml_error_names_line_and_column_but_quotes_nothing() {
        for (name, text, line, key) in [
            (
                "url-unterminated.toml",
                "slot = \"s\"\ndatabase_url = \"postgresql://app:Zq/Xv9@db/shop\n",
                2,
                Some("database_url"),
            ),
            (
                "url-no-equals.toml",
                "database_url \"postgresql://app:Zq?Xv9@db/shop\"\n",
                1,
                None,
            ),
            (
                "secret-bad-escape.toml",
                "[revalidate]\nsecret = \"Zq\\qXv9\"\n",
                2,
                Some("secret"),
            ),
            (
                "secret-wrong-type.toml",
                "[revalidate]\nurls = \"https://u:ZqXv9@shop/api\"\n",
                2,
                Some("urls"),
            ),
        ] {
            let err = with_file(name, text).unwrap_err().to_string();
            assert!(
                !err.contains("Zq") && !err.contains("Xv9"),
                "{name}: the secret is in: {err}"
            );
            assert!(
                err.contains(&format!("line {line}, column ")),
                "{name}: {err}"
            );
            if let Some(key) = key {
                assert!(err.contains(&format!("(key {key})")), "{name}: {err}");
            }
            assert!(!err.contains('\n'), "{name}: one line: {err}");
        }
    }

    #[test]
    fn scrubs_quoted_values() {
        assert_eq!(
            scrub_quoted("invalid type: string \"a\\\"b\", expected a sequence"),
            "invalid type: string \"...\", expected a sequence"
        );
        assert_eq!(scrub_quoted("unknown field `x`"), "unknown field `x`");
    }

    #[test]
    fn shipped_config_file_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_PATH);
        let cfg =
            Config::load_with_env(Some(&path), env(&[("DATABASE_URL", "postgres://x/y")])).unwrap();
        let def = Config::default();
        assert_eq!(cfg.slot, def.slot);
        assert_eq!(cfg.tables.sources, def.tables.sources);
        assert_eq!(cfg.revalidate.tags, def.revalidate.tags);
        assert_eq!(cfg.batch.max_products, def.batch.max_products);
        assert_eq!(cfg.pgoutput_protocol, def.pgoutput_protocol);
        assert!(cfg.streaming());
        assert_eq!(
            cfg.revalidate.give_up_after_secs,
            def.revalidate.give_up_after_secs
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "slott = \"x\"\n").unwrap();
        let err = Config::load_with_env(Some(&p), env(&[("DATABASE_URL", "postgres://x/y")]))
            .unwrap_err();
        assert!(err.to_string().contains("slott"), "{err}");
    }

    #[test]
    fn pgoutput_protocol_is_1_or_2() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Config::load_with_env(Some(&p), env(&[("DATABASE_URL", "postgres://x/y")]))
        };
        assert!(!load("pgoutput_protocol = 1\n").unwrap().streaming());
        let from_env = Config::load_with_env(
            None,
            env(&[
                ("DATABASE_URL", "postgres://x/y"),
                ("CDC_PGOUTPUT_PROTOCOL", "1"),
            ]),
        )
        .unwrap();
        assert!(!from_env.streaming());
        let err = load("pgoutput_protocol = 3\n").unwrap_err().to_string();
        assert!(err.contains("pgoutput_protocol = 3"), "{err}");
    }

    #[test]
    fn example_configs_load() {
        for path in [
            "config/cdc-worker.toml",
            "config/examples/prisma/cdc-worker.toml",
            "config/examples/snake_case/cdc-worker.toml",
        ] {
            let cfg = Config::load_with_env(Some(Path::new(path)), |k| {
                (k == "DATABASE_URL").then(|| "postgresql://u@h/d".to_string())
            })
            .unwrap_or_else(|e| panic!("{path}: {e}"));
            cfg.summary_query()
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }
}
