//! The shop changes its own definitions and schema (issue 18, item 4; DESIGN.md 9, 10):
//! a changed summary query or currency, a query that reads a table outside the sources, a
//! table dropped from the publication by a migration, a replica identity reset to
//! DEFAULT, a column renamed under the query. None of them may leave the summary wrong
//! without a word: each ends with the summary equal to the source, or a stop with one
//! line that names the problem and its fix.

mod support;

use std::time::Duration;

use support::{
    column, drift, json_report, metric_value, metrics_text, seed, summary_of, wait_until, Cluster,
    TestDb, WorkerProcess,
};
use tokio_postgres::Client;

const BUILT_IN_QUERY: &str = include_str!("../sql/summary_query.sql");

use support::STREAMING;

use support::RECOMPUTE;

fn tmp(db: &TestDb, name: &str) -> String {
    db.tmp_path(&format!("-{name}")).display().to_string()
}

/// Writes `query` to a file of this test and a config naming it (plus `extra` TOML lines
/// at the top level of the file, before any table); returns the config's path.
fn config_with_query(db: &TestDb, query: &str, extra: &str) -> String {
    let query_path = tmp(db, "query.sql");
    std::fs::write(&query_path, query).unwrap();
    let config = tmp(db, "config.toml");
    std::fs::write(
        &config,
        format!("{extra}\n[tables]\nsummary_query_file = {query_path:?}\n"),
    )
    .unwrap();
    config
}

async fn outbox_tags(c: &Client) -> Vec<String> {
    column(
        c,
        "SELECT DISTINCT unnest(tags) AS tag FROM cdc_worker.outbox ORDER BY tag",
    )
    .await
}

async fn titles(c: &Client) -> Vec<String> {
    column(
        c,
        "SELECT title FROM \"ProductSummary\" ORDER BY \"productId\"",
    )
    .await
}

/// A database with products p1..p20, set up with the config `config` writes for it.
async fn set_up(hint: &str, config: impl FnOnce(&TestDb) -> String) -> (TestDb, Client, String) {
    let db = Cluster::shared().create_db(hint).await;
    let c = db.client().await;
    seed(&c, 1, 20).await;
    let config = config(&db);
    let setup = WorkerProcess::run_to_end(&db, &["--config", &config, "setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    (db, c, config)
}

/// A config with a heartbeat every second (the guard checks at every heartbeat).
fn fast_heartbeat(db: &TestDb) -> String {
    let config = tmp(db, "config.toml");
    std::fs::write(&config, "[batch]\nheartbeat_secs = 1\n").unwrap();
    config
}

/// `cdc-worker reconcile --json` with `config` and `env`; its discrepancy count.
fn reconcile(db: &TestDb, config: &str, env: &[(&str, &str)]) -> i64 {
    let out = WorkerProcess::run_to_end(db, &["--config", config, "reconcile", "--json"], env);
    json_report(&out.output)["discrepancies"]
        .as_i64()
        .expect("discrepancies")
}

/// Runs `run` until it logs "streaming", then stops it with SIGTERM; returns its log.
async fn run_until_streaming(db: &TestDb, config: &str, env: &[(&str, &str)]) -> String {
    let mut w = WorkerProcess::start(db, &["--config", config, "run"], env);
    w.wait_for_log(Duration::from_secs(60), STREAMING).await;
    w.sigterm();
    assert!(
        w.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        w.log()
    );
    w.log()
}

/// A changed summary query, then a changed currency, each noticed at the next start:
/// one log line saying what changed, every product recomputed (the tags of the rows that
/// changed enqueued, the recovery metric counting it); an unchanged definition, written
/// differently, recomputes nothing. A state schema of an earlier version (no definition
/// recorded) is recomputed once, which changes and enqueues nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_definition_recomputes_every_product() {
    let db = Cluster::shared().create_db("definition_changed").await;
    let c = db.client().await;
    seed(&c, 1, 30).await;
    c.batch_execute(
        "INSERT INTO \"Price\"(id, \"productId\", currency, amount) \
         SELECT 'eur'||g, 'p'||g, 'EUR', 90*g FROM generate_series(1, 20) g",
    )
    .await
    .unwrap();
    let config = config_with_query(&db, BUILT_IN_QUERY, "");
    let tags_env = [
        // Nothing listens there: the tags stay in the outbox, where the test reads them.
        ("CDC_REVALIDATE_URLS", "http://127.0.0.1:9/api/revalidate"),
        ("CDC_REVALIDATE_SECRET", "s"),
    ];
    let setup = WorkerProcess::run_to_end(&db, &["--config", &config, "setup"], &tags_env);
    assert!(setup.success, "{}", setup.output);
    assert!(titles(&c).await.iter().all(|t| t.starts_with("Product ")));

    // The same query with other layout and comments is the same definition, a file that
    // ends it with `;` and a comment without a newline too.
    let reformatted = format!(
        "-- reformatted\n{};\n/* same */ -- the end",
        BUILT_IN_QUERY.replace("    ", "\t")
    );
    let config = config_with_query(&db, &reformatted, "");
    let log = run_until_streaming(&db, &config, &tags_env).await;
    assert!(!log.contains(RECOMPUTE), "{log}");

    // A new expression for a column.
    let upper = BUILT_IN_QUERY.replace("p.\"title\"          ", "upper(p.\"title\")");
    assert_ne!(upper, BUILT_IN_QUERY);
    let config = config_with_query(&db, &upper, "");
    c.batch_execute("DELETE FROM cdc_worker.outbox")
        .await
        .unwrap();
    let mut env = tags_env.to_vec();
    env.push(("CDC_METRICS_ADDR", support::METRICS_ANY_PORT));
    let mut w = WorkerProcess::start(&db, &["--config", &config, "run"], &env);
    let metrics = w.metrics_addr().await;
    w.wait_for_log(Duration::from_secs(60), STREAMING).await;
    let log = w.log();
    let line = log
        .lines()
        .find(|l| l.contains(RECOMPUTE))
        .unwrap_or_else(|| panic!("no recompute line:\n{log}"));
    assert!(
        line.contains("definition_changed") && line.contains("the summary query"),
        "{line}"
    );
    assert!(titles(&c).await.iter().all(|t| t.starts_with("PRODUCT ")));
    let tags = outbox_tags(&c).await;
    for p in 1..=30 {
        assert!(tags.contains(&format!("product:p{p}")), "{tags:?}");
    }
    assert_eq!(
        metric_value(
            &metrics_text(&metrics).await,
            "cdc_recovery_recomputes_total{reason=\"definition_changed\"} "
        ),
        Some(1.0)
    );
    w.sigterm();
    assert!(w.wait_exit(Duration::from_secs(30)).success());

    // Another currency: products without a EUR price leave the summary.
    let mut env = tags_env.to_vec();
    env.push(("CDC_CURRENCY", "EUR"));
    let log = run_until_streaming(&db, &config, &env).await;
    assert!(log.contains("currency USD -> EUR"), "{log}");
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM \"ProductSummary\" WHERE price = 90 * substr(\"productId\", 2)::int",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!((rows, titles(&c).await.len()), (20, 20));
    assert!(summary_of(&c, "p25").await.is_none());
    assert_eq!(reconcile(&db, &config, &[("CDC_CURRENCY", "EUR")]), 0);

    // A state schema of the previous version: no definition recorded. One recompute,
    // which finds nothing to change; the server is recorded without one.
    c.batch_execute(
        "ALTER TABLE cdc_worker.checkpoint DROP COLUMN definition, \
         DROP COLUMN system_identifier, DROP COLUMN timeline; \
         DELETE FROM cdc_worker.outbox",
    )
    .await
    .unwrap();
    let log = run_until_streaming(&db, &config, &env).await;
    assert!(log.contains("state schema upgraded"), "{log}");
    assert!(log.contains("none recorded"), "{log}");
    assert!(log.contains("inserted=0 updated=0 deleted=0"), "{log}");
    assert_eq!(outbox_tags(&c).await, Vec::<String>::new());
    let recorded: (bool, bool) = {
        let r = c
            .query_one(
                "SELECT definition IS NOT NULL, system_identifier IS NOT NULL FROM cdc_worker.checkpoint",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(recorded, (true, true));
    let log = run_until_streaming(&db, &config, &env).await;
    assert!(!log.contains(RECOMPUTE), "{log}");
}

/// A custom query that joins a table outside `[tables.sources]` (directly, or through a
/// view) is refused by `setup` before anything is created, and by `run` at its start, in
/// one line naming the table and the config line that fixes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_reading_a_table_outside_the_sources_is_refused() {
    let db = Cluster::shared().create_db("reads_outside").await;
    let c = db.client().await;
    seed(&c, 1, 5).await;
    c.batch_execute(
        "CREATE TABLE \"Promo\" (id text PRIMARY KEY, \"productId\" text NOT NULL, pct int NOT NULL);
         INSERT INTO \"Promo\" VALUES ('x1', 'p1', 10);
         CREATE VIEW \"PriceWithPromo\" AS SELECT pr.*, coalesce(pm.pct, 0) AS pct
           FROM \"Price\" pr LEFT JOIN \"Promo\" pm ON pm.\"productId\" = pr.\"productId\";",
    )
    .await
    .unwrap();
    let with_promo = BUILT_IN_QUERY.replace(
        "pr.\"amount\"                                AS price",
        "(pr.\"amount\" * (100 - coalesce((SELECT pct FROM \"Promo\" pm WHERE pm.\"productId\" = p.\"id\"), 0)) / 100)::int4 AS price",
    );
    assert_ne!(with_promo, BUILT_IN_QUERY);
    let config = config_with_query(&db, &with_promo, "");
    let setup = WorkerProcess::run_to_end(&db, &["--config", &config, "setup"], &[]);
    assert!(!setup.success, "{}", setup.output);
    let line = setup
        .output
        .lines()
        .find(|l| l.contains("\"public\".\"Promo\""))
        .unwrap_or_else(|| panic!("no line names Promo:\n{}", setup.output));
    assert!(
        line.contains("not in [tables.sources]")
            && line.contains("`Promo = \"productId\"` under [tables.sources]"),
        "{line}"
    );
    // Nothing was created.
    let created: (bool, i64, i64) = {
        let r = c
            .query_one(
                "SELECT to_regnamespace('cdc_worker') IS NOT NULL, \
                 (SELECT count(*) FROM pg_publication), \
                 (SELECT count(*) FROM pg_replication_slots WHERE database = current_database())",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(created, (false, 0, 0));

    // Set up with the built-in query; `run` with a query that reads Promo through a view.
    let plain = config_with_query(&db, BUILT_IN_QUERY, "");
    let setup = WorkerProcess::run_to_end(&db, &["--config", &plain, "setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    let through_view = BUILT_IN_QUERY.replace("JOIN \"Price\" pr", "JOIN \"PriceWithPromo\" pr");
    assert_ne!(through_view, BUILT_IN_QUERY);
    let config = config_with_query(&db, &through_view, "");
    let run = WorkerProcess::run_to_end(&db, &["--config", &config, "run"], &[]);
    assert!(!run.success, "{}", run.output);
    assert!(
        run.output
            .contains("reads table \"public\".\"Promo\", which is not in [tables.sources]"),
        "{}",
        run.output
    );
    assert!(!run.output.contains(STREAMING), "{}", run.output);
    // `reconcile` checks the same before it reads anything, and records no run.
    let check = WorkerProcess::run_to_end(&db, &["--config", &config, "reconcile"], &[]);
    assert!(!check.success, "{}", check.output);
    assert!(
        check
            .output
            .contains("reads table \"public\".\"Promo\", which is not in [tables.sources]"),
        "{}",
        check.output
    );
    let runs: i64 = c
        .query_one("SELECT count(*) FROM cdc_worker.reconcile_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 0);
}

/// A summary query that calls a function of the shop that is not IMMUTABLE: the check
/// cannot see which tables the function reads, so `setup`, `run` and `reconcile` say so
/// in a warning naming it (and go on: the function may well read only sources). An
/// IMMUTABLE one is not named.
#[tokio::test(flavor = "multi_thread")]
async fn a_function_the_check_cannot_see_into_is_named_in_a_warning() {
    let db = Cluster::shared().create_db("reads_opaque").await;
    let c = db.client().await;
    seed(&c, 1, 5).await;
    c.batch_execute(
        "CREATE FUNCTION shop_title(t text) RETURNS text STABLE LANGUAGE sql \
           AS $$ SELECT upper(t) $$; \
         CREATE FUNCTION shop_trim(t text) RETURNS text IMMUTABLE LANGUAGE sql \
           AS $$ SELECT btrim(t) $$;",
    )
    .await
    .unwrap();
    let query = BUILT_IN_QUERY.replace(
        "p.\"title\"                                  AS title",
        "shop_trim(shop_title(p.\"title\"))            AS title",
    );
    assert_ne!(query, BUILT_IN_QUERY);
    let config = config_with_query(&db, &query, "");
    let warned = |out: &str| {
        out.lines()
            .any(|l| l.contains("shop_title(text), which is not IMMUTABLE"))
            && !out.contains("shop_trim(text), which")
    };
    let setup = WorkerProcess::run_to_end(&db, &["--config", &config, "setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    assert!(warned(&setup.output), "{}", setup.output);
    let log = run_until_streaming(&db, &config, &[]).await;
    assert!(warned(&log), "{log}");
    let check = WorkerProcess::run_to_end(&db, &["--config", &config, "reconcile"], &[]);
    assert!(check.success, "{}", check.output);
    assert!(warned(&check.output), "{}", check.output);
    assert_eq!(titles(&c).await[0], "PRODUCT 1");
}

/// A publication the shop made `FOR TABLES IN SCHEMA` (15+) names its tables in no
/// `pg_publication_rel` row. Setup and run's guard read `pg_publication_tables`, which
/// expands it: a schema publication of exactly the source tables is accepted by setup,
/// and run streams through it for several guard checks without calling a table missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_publication_of_the_sources_is_accepted() {
    let db = Cluster::shared().create_db("schema_pub").await;
    let c = db.client().await;
    seed(&c, 1, 5).await;
    c.batch_execute(&format!(
        "CREATE PUBLICATION \"{}\" FOR TABLES IN SCHEMA public",
        db.slot()
    ))
    .await
    .unwrap();
    let config = fast_heartbeat(&db);
    let setup = WorkerProcess::run_to_end(&db, &["--config", &config, "setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    let w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
    w.wait_for_log(Duration::from_secs(30), STREAMING).await;
    c.batch_execute("UPDATE \"Price\" SET amount = 5151 WHERE id = 'usd2'")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the price in the summary",
        || async {
            summary_of(&c, "p2")
                .await
                .is_some_and(|r| r.get::<_, i32>(2) == 5151)
        },
    )
    .await;
    // Several heartbeats, each with the guard's publication check.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(drift(&c).await, 0);
    let log = w.output();
    assert!(
        !log.contains("ALTER PUBLICATION") && !log.contains("publication_changed"),
        "{}",
        w.log_tail(20)
    );
}

/// A migration drops and recreates `Price` while `run` streams (new amounts, and the new
/// table neither in the publication nor REPLICA IDENTITY FULL). The worker stops within
/// a few heartbeats with the `ALTER PUBLICATION` that fixes it, refuses to start again
/// until it is fixed, and after the fix recomputes every product: the summary is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_dropped_from_the_publication_stops_run_until_fixed() {
    let (db, c, config) = set_up("publication_lost", fast_heartbeat).await;
    let mut w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
    w.wait_for_log(Duration::from_secs(60), STREAMING).await;

    c.batch_execute(
        "BEGIN;
         CREATE TABLE \"Price_new\" (LIKE \"Price\" INCLUDING ALL);
         INSERT INTO \"Price_new\" SELECT id, \"productId\", currency, amount + 5 FROM \"Price\";
         DROP TABLE \"Price\";
         ALTER TABLE \"Price_new\" RENAME TO \"Price\";
         COMMIT;
         UPDATE \"Price\" SET amount = 1 WHERE id = 'usd1';",
    )
    .await
    .unwrap();
    let status = w.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{}", w.log());
    let fix = "ALTER PUBLICATION \"";
    let log = w.log();
    assert!(
        log.lines()
            .any(|l| l.contains("does not carry \"public\".\"Price\"") && l.contains(fix)),
        "{log}"
    );
    // Not fixed: the next start stops the same way, before streaming.
    let again = WorkerProcess::run_to_end(&db, &["--config", &config, "run"], &[]);
    assert!(
        !again.success && again.output.contains(fix),
        "{}",
        again.output
    );
    assert!(!again.output.contains(STREAMING), "{}", again.output);

    c.batch_execute(&format!(
        "ALTER PUBLICATION \"{}\" ADD TABLE \"Price\"; \
         ALTER TABLE \"Price\" REPLICA IDENTITY FULL",
        db.slot()
    ))
    .await
    .unwrap();
    let w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
    w.wait_for_log(Duration::from_secs(60), STREAMING).await;
    assert!(
        w.log().contains("publication_changed"),
        "the start after the fix says why it recomputes:\n{}",
        w.log()
    );
    support::wait_converged(&c, "converged after the fix").await;
    assert_eq!(summary_of(&c, "p1").await.unwrap().get::<_, i32>(2), 1);
    assert_eq!(summary_of(&c, "p2").await.unwrap().get::<_, i32>(2), 205);
    c.batch_execute("UPDATE \"Price\" SET amount = 2 WHERE id = 'usd1'")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the new Price streams", || async {
        summary_of(&c, "p1").await.unwrap().get::<_, i32>(2) == 2
    })
    .await;
}

/// `REPLICA IDENTITY DEFAULT` on `ProductImage` while `run` streams, then an image moved
/// to another product: the update carries no old row, so the worker cannot know the
/// product the image left, and recomputes every product; it logs the `ALTER TABLE` that
/// fixes it and raises `cdc_replica_identity_weak{table}` until the identity is FULL again.
#[tokio::test(flavor = "multi_thread")]
async fn a_weakened_replica_identity_is_never_silent() {
    let (db, c, config) = set_up("identity_weak", fast_heartbeat).await;
    let w = WorkerProcess::start(
        &db,
        &["--config", &config, "run"],
        &[("CDC_METRICS_ADDR", support::METRICS_ANY_PORT)],
    );
    let metrics = w.metrics_addr().await;
    w.wait_for_log(Duration::from_secs(60), STREAMING).await;
    let weak = "cdc_replica_identity_weak{table=\"ProductImage\"}";
    assert_eq!(
        metric_value(&metrics_text(&metrics).await, &format!("{weak} ")),
        Some(0.0)
    );

    c.batch_execute(
        "ALTER TABLE \"ProductImage\" REPLICA IDENTITY DEFAULT;
         UPDATE \"ProductImage\" SET \"productId\" = 'p2', position = 0 WHERE id = 'img1';",
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(20), "the image left p1", || async {
        summary_of(&c, "p1")
            .await
            .is_some_and(|r| r.get::<_, Option<String>>(5).is_none())
    })
    .await;
    assert_eq!(drift(&c).await, 0);
    let fix = "ALTER TABLE \"public\".\"ProductImage\" REPLICA IDENTITY FULL";
    wait_until(Duration::from_secs(10), "the fix in the log", || async {
        w.log().contains(fix)
    })
    .await;
    assert_eq!(
        metric_value(&metrics_text(&metrics).await, &format!("{weak} ")),
        Some(1.0)
    );

    c.batch_execute(&format!(
        "{fix}; UPDATE \"ProductImage\" SET position = 2 WHERE id = 'img3'"
    ))
    .await
    .unwrap();
    wait_until(Duration::from_secs(20), "the metric cleared", || async {
        metric_value(&metrics_text(&metrics).await, &format!("{weak} ")) == Some(0.0)
    })
    .await;
}

/// A migration renames a column the summary query reads while `run` streams. The next
/// change cannot be applied: the worker stops with one line naming the problem and the
/// fix, and acknowledges nothing past it; it refuses to start on the old query; after the
/// query is fixed it recomputes every product and the summary is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_column_renamed_under_the_query_stops_until_the_query_is_fixed() {
    let (db, c, config) = set_up("renamed_column", |db| {
        config_with_query(db, BUILT_IN_QUERY, "")
    })
    .await;
    let mut w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
    w.wait_for_log(Duration::from_secs(60), STREAMING).await;

    c.batch_execute("ALTER TABLE \"Price\" RENAME COLUMN amount TO amount_cents")
        .await
        .unwrap();
    let before: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    c.batch_execute("UPDATE \"Price\" SET amount_cents = 777 WHERE id = 'usd1'")
        .await
        .unwrap();
    let status = w.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{}", w.log());
    let log = w.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the summary query no longer runs"))
        .collect();
    assert!(
        lines.len() == 1 && lines[0].contains("amount") && lines[0].contains("Fix:"),
        "{log}"
    );
    // Nothing past the update was acknowledged or stored.
    let (slot_ok, checkpoint_ok): (bool, bool) = {
        let r = c
            .query_one(
                "SELECT (SELECT confirmed_flush_lsn <= $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $2), \
                        (SELECT lsn <= $1::text::pg_lsn FROM cdc_worker.checkpoint WHERE slot_name = $2)",
                &[&before, &db.slot()],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(slot_ok && checkpoint_ok, "acknowledged past the change");
    assert_eq!(summary_of(&c, "p1").await.unwrap().get::<_, i32>(2), 100);

    let again = WorkerProcess::run_to_end(&db, &["--config", &config, "run"], &[]);
    assert!(!again.success, "{}", again.output);
    assert!(
        again.output.contains("does not run against this database")
            && again.output.contains("amount"),
        "{}",
        again.output
    );

    let fixed = BUILT_IN_QUERY.replace("pr.\"amount\"  ", "pr.amount_cents");
    assert_ne!(fixed, BUILT_IN_QUERY);
    let config = config_with_query(&db, &fixed, "");
    let w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
    w.wait_for_log(Duration::from_secs(60), STREAMING).await;
    assert!(w.log().contains("definition_changed"), "{}", w.log());
    wait_until(Duration::from_secs(20), "the update applied", || async {
        summary_of(&c, "p1").await.unwrap().get::<_, i32>(2) == 777
    })
    .await;
    assert_eq!(reconcile(&db, &config, &[]), 0);
}

/// A replica identity USING INDEX whose index holds the product id carries it in every
/// old row, so setup and run judge it the same way (one SQL, `pg::server::identity_carries`):
/// setup leaves it as it is instead of forcing FULL, and run neither warns nor raises the
/// weak-identity metric. Before, setup counted only FULL or the primary key and rewrote it.
#[tokio::test(flavor = "multi_thread")]
async fn an_identity_index_with_the_product_id_is_enough_for_setup_and_run() {
    let db = Cluster::shared().create_db("identity_index").await;
    let c = db.client().await;
    seed(&c, 1, 5).await;
    c.batch_execute(
        "ALTER TABLE \"ProductImage\" REPLICA IDENTITY DEFAULT;
         CREATE UNIQUE INDEX image_product_id ON \"ProductImage\" (\"productId\", id);
         ALTER TABLE \"ProductImage\" REPLICA IDENTITY USING INDEX image_product_id;",
    )
    .await
    .unwrap();
    let config = fast_heartbeat(&db);
    let setup = WorkerProcess::run_to_end(&db, &["--config", &config, "setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    let identity: Vec<String> = column(
        &c,
        "SELECT relreplident::text FROM pg_class WHERE relname = 'ProductImage'",
    )
    .await;
    assert_eq!(identity, ["i"], "setup rewrote a sufficient identity");
    let log = run_until_streaming(&db, &config, &[]).await;
    assert!(
        !log.contains("\"ProductImage\" REPLICA IDENTITY FULL"),
        "run called a sufficient identity weak:\n{log}"
    );
}
