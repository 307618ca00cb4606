//! What an operator sees: the Prometheus metrics and the health probes, on a leader and on
//! a standby, and JSON logs.

mod support;

use std::time::Duration;

use support::{metric_value, scrape, wait_converged, Cluster, WorkerProcess, METRICS_ANY_PORT};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_probes_on_leader_and_standby() {
    let (db, c) = Cluster::shared().prepared_db("operations", 10).await;
    let leader = WorkerProcess::start(
        &db,
        &["run"],
        &[
            ("CDC_METRICS_ADDR", METRICS_ANY_PORT),
            ("CDC_LOG_FORMAT", "json"),
        ],
    );
    let leader_addr = leader.metrics_addr().await;
    leader
        .wait_for_log(Duration::from_secs(20), "streaming")
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
    assert!(metric_value(&m, "cdc_summary_rows_written_total").unwrap() >= 1.0);
    assert!(metric_value(&m, "cdc_apply_latency_seconds_count").unwrap() >= 1.0);
    assert_eq!(scrape(&http, &leader_addr, "/healthz").await.0, 200);
    assert_eq!(scrape(&http, &leader_addr, "/readyz").await.0, 200);

    // The monitor fills the gauges that only the database knows.
    support::wait_until(
        Duration::from_secs(10),
        "slot status in the metrics",
        || async {
            let (_, m) = scrape(&http, &leader_addr, "/metrics").await;
            metric_value(&m, "cdc_slot_wal_status{status=\"reserved\"}") == Some(1.0)
        },
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
