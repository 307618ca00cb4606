//! What an operator sees and does: the Prometheus metrics and the health probes, on a
//! leader and on a standby, and JSON logs; `status`, `teardown`, and a `setup` that
//! changes nothing when it refuses.

mod support;

use std::time::Duration;

use support::{
    column, drift, metric_value, scrape, seed, wait_converged, Cluster, SlotGuard, TestDb,
    WorkerProcess, CLOSED_PORT_URL, METRICS_ANY_PORT,
};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_probes_on_leader_and_standby() {
    let (db, c) = Cluster::shared().prepared_db("operations", 10).await;
    // A heartbeat a second: empty batches (heartbeats, idle keepalives) come often.
    let config = db.config_file("[batch]\nheartbeat_secs = 1\n");
    let nowhere = CLOSED_PORT_URL;
    let leader = WorkerProcess::start(
        &db,
        &["--config", &config, "run"],
        &[
            ("CDC_METRICS_ADDR", METRICS_ANY_PORT),
            ("CDC_LOG_FORMAT", "json"),
            ("CDC_REVALIDATE_URLS", nowhere),
            ("CDC_REVALIDATE_SECRET", "s3cret"),
        ],
    );
    let leader_addr = leader.metrics_addr().await;
    leader
        .wait_for_log(Duration::from_secs(20), support::STREAMING_JSON)
        .await;
    c.batch_execute("UPDATE \"Inventory\" SET quantity = 99 WHERE id = 'inv1-1'")
        .await
        .unwrap();
    wait_converged(&c, "inventory change").await;

    let http = reqwest::Client::new();
    let (status, m) = scrape(&http, &leader_addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "cdc_replication_lag_bytes",
        "cdc_replication_lag_seconds",
        "cdc_apply_latency_seconds",
        "cdc_revalidate_latency_seconds",
        "cdc_changes_total",
        "cdc_summary_rows_written_total",
        "cdc_batch_size",
        "cdc_outbox_pending",
        "cdc_outbox_oldest_age_seconds",
        "cdc_revalidate_requests_total",
        "cdc_slot_wal_status",
        "cdc_slot_safe_wal_size_bytes",
        "cdc_reconcile_discrepancies",
        "cdc_leader",
    ] {
        // OpenMetrics names a counter's family without the _total of its samples.
        let family = name.trim_end_matches("_total");
        assert!(
            m.contains(&format!("# HELP {family} ")),
            "{name} missing from /metrics:\n{m}"
        );
    }
    assert_eq!(metric_value(&m, "cdc_leader "), Some(1.0));
    assert_eq!(
        metric_value(&m, "cdc_changes_total{table=\"Inventory\",op=\"update\"}"),
        Some(1.0),
        "{m}"
    );
    // Issue 19: the version, the process, and every counter with known label values at
    // 0 before its first event (so increase() alerts see the first one).
    assert_eq!(
        metric_value(
            &m,
            &format!(
                "cdc_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric_value(&m, "process_resident_memory_bytes ").unwrap() > 1e6,
        "{m}"
    );
    assert!(metric_value(&m, "process_open_fds ").unwrap() >= 3.0, "{m}");
    assert!(
        metric_value(&m, "process_cpu_seconds_total ").unwrap() > 0.0,
        "{m}"
    );
    assert!(
        metric_value(&m, "process_start_time_seconds ").unwrap() > 1.6e9,
        "{m}"
    );
    for zero in [
        "cdc_recovery_recomputes_total{reason=\"lost\"}",
        "cdc_slot_recreated_total{reason=\"missing\"}",
        "cdc_apply_passes_total{reason=\"truncate\"}",
        "cdc_apply_passes_total{reason=\"bulk\"}",
        "cdc_changes_total{table=\"Price\",op=\"delete\"}",
        "cdc_outbox_held_overdue_seconds",
    ] {
        assert_eq!(metric_value(&m, zero), Some(0.0), "{zero} in:\n{m}");
    }
    assert_eq!(
        metric_value(
            &m,
            &format!("cdc_revalidate_requests_total{{endpoint=\"{nowhere}\",outcome=\"failed\"}}")
        ),
        Some(0.0),
        "{m}"
    );
    // cdc_batch_size counts the batches that recompute products: one change, one batch,
    // however many heartbeats passed meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, m) = scrape(&http, &leader_addr, "/metrics").await;
    assert_eq!(metric_value(&m, "cdc_batch_size_count "), Some(1.0), "{m}");
    assert_eq!(metric_value(&m, "cdc_batch_size_sum "), Some(1.0), "{m}");
    // A pass over every product is counted with its reason.
    c.batch_execute("TRUNCATE \"ProductImage\"").await.unwrap();
    support::wait_metric(
        &leader_addr,
        "cdc_apply_passes_total{reason=\"truncate\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    wait_converged(&c, "the truncate").await;
    assert!(metric_value(&m, "cdc_summary_rows_written_total").unwrap() >= 1.0);
    assert!(metric_value(&m, "cdc_apply_latency_seconds_count").unwrap() >= 1.0);
    assert_eq!(scrape(&http, &leader_addr, "/healthz").await.0, 200);
    assert_eq!(scrape(&http, &leader_addr, "/readyz").await.0, 200);

    // The monitor fills the gauges that only the database knows.
    support::wait_metric(
        &leader_addr,
        "cdc_slot_wal_status{status=\"reserved\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;

    let standby = WorkerProcess::start(&db, &["run"], &[("CDC_METRICS_ADDR", METRICS_ANY_PORT)]);
    let standby_addr = standby.metrics_addr().await;
    standby
        .wait_for_log(Duration::from_secs(20), "waiting as standby")
        .await;
    assert_eq!(scrape(&http, &standby_addr, "/healthz").await.0, 200);
    let (status, why) = scrape(&http, &standby_addr, "/readyz").await;
    assert_eq!(status, 503, "a standby is alive but not ready");
    assert!(why.contains("not streaming"), "{why}");
    let (_, m) = scrape(&http, &standby_addr, "/metrics").await;
    assert_eq!(metric_value(&m, "cdc_leader "), Some(0.0));

    // --log-format json: every line the leader wrote is a JSON object.
    let log = leader.output();
    assert!(!log.is_empty());
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}

/// Everything of this database an operator's change could touch, one line per object:
/// schemas, relations with their kind and replica identity, publications and their
/// tables, this database's slots. Equal before and after means nothing changed.
async fn catalog(c: &tokio_postgres::Client) -> Vec<String> {
    column(
        c,
        "SELECT 'schema ' || nspname FROM pg_namespace \
           WHERE nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast_temp%' \
         UNION ALL \
         SELECT 'relation ' || n.nspname || '.' || c.relname || ' kind=' || c.relkind::text \
                || ' identity=' || c.relreplident::text || ' owner=' || c.relowner::regrole::text \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
            AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%' \
         UNION ALL SELECT 'publication ' || pubname FROM pg_publication \
         UNION ALL SELECT 'publication table ' || p.pubname || ' ' || r.prrelid::regclass::text \
           FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
         UNION ALL SELECT 'slot ' || slot_name FROM pg_replication_slots \
           WHERE database = current_database() \
         ORDER BY 1",
    )
    .await
}

/// Issue 19 item 3 (DESIGN.md invariant 13): `setup` in a second database of the server
/// whose slot name the first database's worker already has is refused, and the second
/// database is left exactly as it was: no state schema, no summary table, no publication,
/// no replica identity changed.
#[tokio::test(flavor = "multi_thread")]
async fn setup_refused_for_a_taken_slot_name_changes_nothing() {
    let first = Cluster::shared().create_db("setup_first").await;
    let c1 = first.client().await;
    seed(&c1, 1, 3).await;
    let setup = WorkerProcess::run_to_end(&first, &["setup"], &[]);
    assert!(setup.success, "{}", setup.output);

    let second = Cluster::shared().create_db("setup_second").await;
    let c2 = second.client().await;
    seed(&c2, 1, 3).await;
    let before = catalog(&c2).await;
    assert!(
        !before.iter().any(|l| l.contains("ProductSummary")),
        "{before:#?}"
    );
    let taken = first.slot();
    let out = WorkerProcess::run_to_end(&second, &["setup"], &[("CDC_SLOT", &taken)]);
    assert_eq!(out.code, Some(2), "{}", out.output);
    assert!(
        out.output
            .contains(&format!("belongs to database {}", first.name))
            && out.output.contains("CDC_SLOT"),
        "{}",
        out.output
    );
    assert_eq!(
        catalog(&c2).await,
        before,
        "setup changed the database it refused"
    );

    // With a slot name of its own it sets up.
    let setup = WorkerProcess::run_to_end(&second, &["setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    assert_ne!(catalog(&c2).await, before);
}

/// `setup` creates what passed its checks in one transaction: a change that fails after
/// others succeeded (here `CREATE PUBLICATION`, the last one, refused by an event trigger
/// after the state schema, the summary table and REPLICA IDENTITY FULL went through)
/// leaves the database exactly as it was, and the output names what failed.
#[tokio::test(flavor = "multi_thread")]
async fn setup_failing_at_its_last_change_leaves_nothing_behind() {
    let db = Cluster::shared().create_db("setup_midway").await;
    let c = db.client().await;
    seed(&c, 1, 3).await;
    c.batch_execute(
        "CREATE FUNCTION refuse_publication() RETURNS event_trigger LANGUAGE plpgsql \
           AS $$ BEGIN RAISE EXCEPTION 'publications are refused here'; END $$; \
         CREATE EVENT TRIGGER refuse_publication ON ddl_command_start \
           WHEN TAG IN ('CREATE PUBLICATION') EXECUTE FUNCTION refuse_publication();",
    )
    .await
    .unwrap();
    let before = catalog(&c).await;
    let out = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(!out.success, "{}", out.output);
    assert!(
        out.output.contains("creating publication")
            && out.output.contains("publications are refused here"),
        "{}",
        out.output
    );
    assert_eq!(
        catalog(&c).await,
        before,
        "setup left part of its changes behind"
    );
    c.batch_execute("DROP EVENT TRIGGER refuse_publication")
        .await
        .unwrap();
    let setup = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    let after = catalog(&c).await;
    for created in [
        "schema cdc_worker".to_string(),
        "relation public.ProductSummary kind=r".into(),
        "relation public.Inventory kind=r identity=f".into(),
        format!("publication {}", db.slot()),
    ] {
        assert!(
            after.iter().any(|l| l.starts_with(&created)),
            "{created} missing: {after:#?}"
        );
    }
}

/// `status --json` as a value, with its exit code.
fn status_json(db: &TestDb, extra: &[(&str, &str)]) -> (Option<i32>, serde_json::Value) {
    let out = WorkerProcess::run_to_end(db, &["status", "--json"], extra);
    // The JSON object is everything from the first line that opens it.
    let start = out
        .output
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| out.output.starts_with('{').then_some(0))
        .unwrap_or_else(|| panic!("no JSON in:\n{}", out.output));
    let v = serde_json::Deserializer::from_str(&out.output[start..])
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("not JSON:\n{}", out.output));
    (out.code, v)
}

/// Slots of this database, and a slot of our name anywhere: what could hold WAL for us.
async fn our_slots(c: &tokio_postgres::Client, slot: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_replication_slots \
         WHERE database = current_database() OR slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

/// Issue 19 items 1 and 2 against a running installation: `status` (text and JSON, and
/// its exit codes) before and while a worker runs; `teardown` refusing while the worker
/// leads, `--dry-run` changing nothing, `--force --yes` ending the worker's sessions and
/// removing the slot, the publication and the state schema (the summary and REPLICA
/// IDENTITY stay); then the worker stops on its own, nothing of ours holds WAL, and
/// `setup` works again from scratch.
#[tokio::test(flavor = "multi_thread")]
async fn status_and_teardown_on_a_running_installation() {
    let db = Cluster::shared().create_db("status_teardown").await;
    let c = db.client().await;
    seed(&c, 1, 10).await;

    // Not set up: unusable.
    let (code, v) = status_json(&db, &[]);
    assert_eq!(code, Some(2), "{v:#}");
    assert_eq!(v["health"], "unusable", "{v:#}");
    assert_eq!(v["set_up"], false, "{v:#}");

    let setup = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    // Set up, no worker running: degraded, and it says why.
    let (code, v) = status_json(&db, &[]);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["health"], "degraded", "{v:#}");
    assert!(v["leader"].is_null(), "{v:#}");
    assert!(v["problems"].to_string().contains("leader lock"), "{v:#}");

    // A worker delivering to an endpoint that does not answer: tags wait in the outbox.
    let nowhere = CLOSED_PORT_URL;
    let env = [
        ("CDC_REVALIDATE_URLS", nowhere),
        ("CDC_REVALIDATE_SECRET", "s3cret"),
    ];
    let mut w = WorkerProcess::start(&db, &["run"], &env);
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    c.batch_execute("UPDATE \"Price\" SET amount = 4242 WHERE id = 'usd3'")
        .await
        .unwrap();
    wait_converged(&c, "the price change").await;
    let mut last = serde_json::Value::Null;
    support::wait_until(
        Duration::from_secs(20),
        "status healthy with the tags pending",
        || {
            let (code, v) = status_json(&db, &env);
            let ok = code == Some(0)
                && v["outbox"]["endpoints"][0]["pending"].as_i64().unwrap_or(0) > 0
                && v["lag"]["last_commit_age_seconds"].as_f64().is_some();
            last = v;
            async move { ok }
        },
    )
    .await;
    let v = last;
    assert_eq!(v["health"], "healthy", "{v:#}");
    assert_eq!(v["leader"]["application_name"], "cdc-worker/apply", "{v:#}");
    assert!(v["slot"]["active_pid"].as_i64().is_some(), "{v:#}");
    assert_eq!(v["slot"]["state"], "ok", "{v:#}");
    assert!(
        v["lag"]["slot_behind_bytes"].as_i64().unwrap() >= 0,
        "{v:#}"
    );
    assert!(
        v["lag"]["last_commit_age_seconds"].as_f64().unwrap() < 60.0,
        "{v:#}"
    );
    assert!(v["recompute"].is_null(), "{v:#}");
    let endpoint = &v["outbox"]["endpoints"][0];
    assert_eq!(endpoint["configured"], true, "{v:#}");
    assert_eq!(endpoint["parked_tags"], 0, "{v:#}");
    // `pending` counts tags, not outbox rows: the price change put its product and store
    // tags into one row.
    let waiting = support::outbox_tags(&c).await;
    assert!(waiting.len() >= 2, "{waiting:?}");
    assert_eq!(endpoint["pending"], waiting.len(), "{v:#}\n{waiting:?}");
    // The text report: the same facts for a person, the same exit code.
    let text = WorkerProcess::run_to_end(&db, &["status"], &env);
    assert_eq!(text.code, Some(0), "{}", text.output);
    for needle in [
        "cdc-worker status: HEALTHY",
        "leader     pid ",
        "cdc-worker/apply",
        "slot       active (walsender pid",
        "last applied commit",
        "pending",
        "reconcile  never run",
    ] {
        assert!(
            text.output.contains(needle),
            "{needle:?} in:\n{}",
            text.output
        );
    }
    // A threshold below the current lag degrades it.
    let strict = WorkerProcess::run_to_end(&db, &["status", "--max-lag-seconds", "0"], &env);
    assert_eq!(strict.code, Some(1), "{}", strict.output);
    assert!(
        strict.output.contains("--max-lag-seconds"),
        "{}",
        strict.output
    );

    // While the worker leads, teardown refuses and changes nothing.
    let before = catalog(&c).await;
    let refused = WorkerProcess::run_to_end(&db, &["teardown", "--yes"], &[]);
    assert_eq!(refused.code, Some(1), "{}", refused.output);
    assert!(
        refused.output.contains("refused") && refused.output.contains("--force"),
        "{}",
        refused.output
    );
    let dry = WorkerProcess::run_to_end(&db, &["teardown", "--dry-run"], &[]);
    assert_eq!(dry.code, Some(0), "{}", dry.output);
    for needle in [
        "pg_drop_replication_slot(",
        "DROP PUBLICATION",
        "DROP TABLE \"cdc_worker\".\"checkpoint\"",
        "DROP SCHEMA \"cdc_worker\"",
        "kept: summary table",
        "kept: REPLICA IDENTITY FULL",
        "dry run: nothing was changed",
    ] {
        assert!(
            dry.output.contains(needle),
            "{needle:?} in:\n{}",
            dry.output
        );
    }
    assert_eq!(
        catalog(&c).await,
        before,
        "refusal and dry run changed nothing"
    );
    assert!(w.is_running());

    let torn = WorkerProcess::run_to_end(&db, &["teardown", "--force", "--yes"], &[]);
    assert_eq!(torn.code, Some(0), "{}", torn.output);
    assert!(torn.output.contains("ended sessions"), "{}", torn.output);
    assert!(
        torn.output.contains("dropped replication slot"),
        "{}",
        torn.output
    );
    // The worker, its sessions ended, waited as a standby and stops: not set up.
    let status = w.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{}", w.log_tail(20));
    assert!(w.output().contains("not set up"), "{}", w.log_tail(20));

    assert_eq!(
        our_slots(&c, &db.slot()).await,
        0,
        "a slot of ours holds WAL"
    );
    let after = catalog(&c).await;
    assert!(
        !after
            .iter()
            .any(|l| l.contains("cdc_worker") || l.starts_with("publication")),
        "{after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|l| l.contains("public.ProductSummary kind=r")),
        "the summary stays: {after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|l| l.contains("public.Price kind=r identity=f")),
        "REPLICA IDENTITY stays: {after:#?}"
    );
    let (code, v) = status_json(&db, &[]);
    assert_eq!(code, Some(2), "{v:#}");
    assert!(v["slot"].is_null(), "{v:#}");

    // From scratch again: setup backfills, a worker streams.
    let setup = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    let _w = WorkerProcess::start(&db, &["run"], &[]);
    c.batch_execute("UPDATE \"Price\" SET amount = 77 WHERE id = 'usd4'")
        .await
        .unwrap();
    wait_converged(&c, "a change after setting up again").await;
}

/// `teardown` without a running worker: without a terminal it needs --yes; --drop-summary
/// takes the summary too; a second run finds nothing left; a state schema that holds
/// something else is kept (only the worker's tables go), and a slot of that name in
/// another database is never dropped.
#[tokio::test(flavor = "multi_thread")]
async fn teardown_asks_keeps_what_is_not_ours_and_runs_again() {
    let db = Cluster::shared().create_db("teardown_keep").await;
    let c = db.client().await;
    seed(&c, 1, 3).await;
    let setup = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    c.batch_execute("CREATE TABLE cdc_worker.notes (t text)")
        .await
        .unwrap();
    let before = catalog(&c).await;
    let asked = WorkerProcess::run_to_end(&db, &["teardown"], &[]);
    assert_eq!(asked.code, Some(1), "{}", asked.output);
    assert!(asked.output.contains("pass --yes"), "{}", asked.output);
    assert_eq!(catalog(&c).await, before);

    let out = WorkerProcess::run_to_end(&db, &["teardown", "--yes", "--drop-summary"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.output);
    assert!(
        out.output
            .contains("kept: schema \"cdc_worker\" itself: it also holds notes"),
        "{}",
        out.output
    );
    let after = catalog(&c).await;
    assert_eq!(our_slots(&c, &db.slot()).await, 0);
    assert!(
        after
            .iter()
            .any(|l| l.contains("relation cdc_worker.notes")),
        "{after:#?}"
    );
    assert!(
        !after
            .iter()
            .any(|l| l.contains("cdc_worker.checkpoint") || l.contains("ProductSummary")),
        "{after:#?}"
    );
    let again = WorkerProcess::run_to_end(&db, &["teardown", "--yes"], &[]);
    assert_eq!(again.code, Some(0), "{}", again.output);
    assert!(
        again.output.contains("nothing of the worker's is left"),
        "{}",
        again.output
    );

    // Set up again (the summary table is created anew), then a slot of our name that
    // another database owns: teardown leaves it alone and says so.
    let setup = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(setup.success, "{}", setup.output);
    assert_eq!(drift(&c).await, 0);
    c.execute("SELECT pg_drop_replication_slot($1)", &[&db.slot()])
        .await
        .unwrap();
    let foreign = SlotGuard::create(Cluster::shared(), "postgres", &db.slot()).await;
    let out = WorkerProcess::run_to_end(&db, &["teardown", "--yes"], &[]);
    let foreign_left = foreign.is_there().await;
    assert_eq!(out.code, Some(0), "{}", out.output);
    assert!(
        out.output.contains("belongs to database postgres"),
        "{}",
        out.output
    );
    assert!(foreign_left, "the other database's slot was dropped");
}
