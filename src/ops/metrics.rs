//! Every metric the worker exports, defined in one place so names stay consistent, and
//! the HTTP endpoint that serves them with the health probes.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    pub table: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub lag_bytes: Gauge,
    pub lag_seconds: FloatGauge,
    pub apply_latency: Histogram,
    pub revalidate_latency: Histogram,
    pub changes: Family<ChangeLabels, Counter>,
    pub rows_written: Counter,
    pub skipped_products: Counter,
    pub batch_size: Histogram,
    pub outbox_pending: Gauge,
    pub outbox_oldest_age: FloatGauge,
    pub outbox_failed_tags: Gauge,
    pub held_tags: Gauge,
    pub held_overdue: FloatGauge,
    pub held_released: Counter,
    pub held_coalesced: Counter,
    pub revalidate_requests: Family<RequestLabels, Counter>,
    pub slot_wal_status: Family<StatusLabels, Gauge>,
    pub slot_safe_wal_size: Gauge,
    pub reconcile_discrepancies: Gauge,
    pub leader: Gauge,
    pub slot_recreated: Family<ReasonLabels, Counter>,
    pub recomputes: Family<ReasonLabels, Counter>,
    pub passes: Family<ReasonLabels, Counter>,
    pub slot_failover: Gauge,
    pub slot_state: Family<StateLabels, Gauge>,
    pub replica_identity_weak: Family<TableLabels, Gauge>,
    /// The label `slot_state` is 1 for, so that a change can zero it.
    last_slot_state: std::sync::Mutex<String>,
    /// Commit time (unix µs) of the newest source transaction applied, for lag_seconds.
    last_applied_commit: AtomicI64,
    /// Whether the stream is running (readyz).
    streaming: AtomicBool,
    /// /readyz fails above this lag.
    ready_max_lag: Duration,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
    .into_iter()
}

/// Why every product was recomputed in one pass: the `reason` of
/// `cdc_apply_passes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A TRUNCATE of a source table.
    Truncate,
    /// A DELETE whose old row did not carry the product id (replica identity).
    DeleteWithoutProductId,
    /// An UPDATE of a table whose replica identity does not carry the product id, so the
    /// product the row moved away from is unknown.
    WeakReplicaIdentity,
    /// A batch cut at `max_pending` that is a fifth or more of the catalog (`apply::bulk`).
    Bulk,
    /// A start-up invariant failed (`control::slot`; its own reason is in
    /// `cdc_recovery_recomputes_total{reason}`).
    Recovery,
}

impl Pass {
    pub const ALL: [Pass; 5] = [
        Pass::Truncate,
        Pass::DeleteWithoutProductId,
        Pass::WeakReplicaIdentity,
        Pass::Bulk,
        Pass::Recovery,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Pass::Truncate => "truncate",
            Pass::DeleteWithoutProductId => "delete_without_product_id",
            Pass::WeakReplicaIdentity => "weak_replica_identity",
            Pass::Bulk => "bulk",
            Pass::Recovery => "recovery",
        }
    }
}

/// The `reason` of `cdc_recovery_recomputes_total` and `cdc_slot_recreated_total`: what
/// `control::slot::Reason::label` gives for a recovery (a unit test there keeps the two
/// in step), exported at 0 from the start so that `increase()` alerts work before the
/// first recovery.
pub const RECOVERY_REASONS: [&str; 8] = [
    "missing",
    "lost",
    "slot_ahead",
    "checkpoint_ahead",
    "definition_changed",
    "server_changed",
    "publication_changed",
    "resumed",
];

/// Operations of `cdc_changes_total{op}`.
pub const CHANGE_OPS: [&str; 4] = ["insert", "update", "delete", "truncate"];

/// Outcomes of `cdc_revalidate_requests_total{outcome}`.
pub const REQUEST_OUTCOMES: [&str; 3] = ["ok", "retry", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

impl Metrics {
    /// The heartbeat interval (an idle but healthy worker's lag stays below it, so
    /// readiness allows three of them, at least 30 s), and the label values known from
    /// the start: every counter with a known label set is exported at 0 before its first
    /// event, so that `increase()` and `rate()` alerts see the first one.
    pub fn new(cfg: &crate::config::Config) -> Arc<Metrics> {
        let heartbeat = cfg.heartbeat();
        let mut registry = Registry::default();
        let m = Metrics {
            lag_bytes: Gauge::default(),
            lag_seconds: FloatGauge::default(),
            apply_latency: Histogram::new(latency_buckets()),
            revalidate_latency: Histogram::new(latency_buckets()),
            changes: Family::default(),
            rows_written: Counter::default(),
            skipped_products: Counter::default(),
            batch_size: Histogram::new([1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0]),
            outbox_pending: Gauge::default(),
            outbox_oldest_age: FloatGauge::default(),
            outbox_failed_tags: Gauge::default(),
            held_tags: Gauge::default(),
            held_overdue: FloatGauge::default(),
            held_released: Counter::default(),
            held_coalesced: Counter::default(),
            revalidate_requests: Family::default(),
            slot_wal_status: Family::default(),
            slot_safe_wal_size: Gauge::default(),
            reconcile_discrepancies: Gauge::default(),
            leader: Gauge::default(),
            slot_recreated: Family::default(),
            recomputes: Family::default(),
            passes: Family::default(),
            slot_failover: Gauge::default(),
            slot_state: Family::default(),
            replica_identity_weak: Family::default(),
            last_slot_state: std::sync::Mutex::new(String::new()),
            last_applied_commit: AtomicI64::new(0),
            streaming: AtomicBool::new(false),
            ready_max_lag: (heartbeat * 3).max(Duration::from_secs(30)),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "cdc_build",
            "The worker's version",
            prometheus_client::metrics::info::Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
        );
        r.register_collector(Box::new(super::process::ProcessCollector));
        r.register(
            "cdc_replication_lag_bytes",
            "WAL head minus the slot's confirmed LSN",
            m.lag_bytes.clone(),
        );
        r.register(
            "cdc_replication_lag_seconds",
            "Now minus the commit time of the newest applied source transaction (heartbeats keep it meaningful when idle)",
            m.lag_seconds.clone(),
        );
        r.register(
            "cdc_apply_latency_seconds",
            "Source commit to summary commit",
            m.apply_latency.clone(),
        );
        r.register(
            "cdc_revalidate_latency_seconds",
            "Source commit to a 2xx from Next.js",
            m.revalidate_latency.clone(),
        );
        r.register(
            "cdc_changes",
            "Row changes decoded from the WAL",
            m.changes.clone(),
        );
        r.register(
            "cdc_summary_rows_written",
            "ProductSummary rows inserted, updated or deleted",
            m.rows_written.clone(),
        );
        r.register(
            "cdc_apply_skipped_products",
            "Dirty products not recomputed: an earlier recompute in this session already read \
             every transaction of their batch (a backlog's later batches)",
            m.skipped_products.clone(),
        );
        r.register(
            "cdc_batch_size",
            "Distinct products per apply transaction",
            m.batch_size.clone(),
        );
        r.register(
            "cdc_outbox_pending",
            "Cache tags not yet delivered to every endpoint",
            m.outbox_pending.clone(),
        );
        r.register(
            "cdc_outbox_oldest_age_seconds",
            "Age of the oldest undelivered cache tag",
            m.outbox_oldest_age.clone(),
        );
        r.register(
            "cdc_outbox_failed_tags",
            "Cache tags parked in outbox_failed after retries ran out; `cdc-worker revalidate --failed` sends them again",
            m.outbox_failed_tags.clone(),
        );
        r.register(
            "cdc_outbox_held_tags",
            "Tags of throttled templates (revalidate.min_interval_ms) waiting for their interval in outbox_held",
            m.held_tags.clone(),
        );
        r.register(
            "cdc_outbox_held_overdue_seconds",
            "How far the most overdue held tag is past its due time (its last revalidation + min_interval_ms); above a few seconds no leader is releasing held tags",
            m.held_overdue.clone(),
        );
        r.register(
            "cdc_outbox_held_released",
            "Tags of throttled templates moved into the outbox (at once, or when their interval had passed)",
            m.held_released.clone(),
        );
        r.register(
            "cdc_outbox_held_coalesced",
            "Tags of throttled templates that joined the same tag already held: revalidations saved",
            m.held_coalesced.clone(),
        );
        r.register(
            "cdc_revalidate_requests",
            "Revalidation requests by endpoint (redacted URL) and outcome (ok, retry, failed: retries ran out, tags parked)",
            m.revalidate_requests.clone(),
        );
        r.register(
            "cdc_slot_wal_status",
            "1 for the slot's current wal_status (reserved, extended, unreserved, lost)",
            m.slot_wal_status.clone(),
        );
        r.register(
            "cdc_slot_safe_wal_size_bytes",
            "Bytes of WAL that can still be written before the slot is in danger of being lost (-1: unlimited)",
            m.slot_safe_wal_size.clone(),
        );
        r.register(
            "cdc_reconcile_discrepancies",
            "Discrepancies found by the last recorded reconcile run",
            m.reconcile_discrepancies.clone(),
        );
        r.register(
            "cdc_leader",
            "1 on the instance that holds the slot, 0 on a standby",
            m.leader.clone(),
        );
        r.register(
            "cdc_slot_recreated",
            "Times the slot was recreated (missing, lost) before a full recompute, by reason",
            m.slot_recreated.clone(),
        );
        r.register(
            "cdc_recovery_recomputes",
            "Full recomputes done at start because a slot/checkpoint invariant failed, by reason",
            m.recomputes.clone(),
        );
        r.register(
            "cdc_apply_passes",
            "Passes over every product, by reason (truncate, delete_without_product_id, weak_replica_identity, bulk, recovery)",
            m.passes.clone(),
        );
        r.register(
            "cdc_slot_failover",
            "1: the slot is a failover slot (17+, synchronized to standbys that ask); 0: it is not; -1: the server has no failover slots (< 17)",
            m.slot_failover.clone(),
        );
        r.register(
            "cdc_slot_state",
            "1 for the slot's state: ok, unreserved, conflicting, lost, or invalidated_<invalidation_reason> (17+)",
            m.slot_state.clone(),
        );
        r.register(
            "cdc_replica_identity_weak",
            "1 for a source table whose REPLICA IDENTITY does not carry its product id column: \
             every UPDATE of it recomputes every product until ALTER TABLE ... REPLICA IDENTITY FULL",
            m.replica_identity_weak.clone(),
        );
        for reason in RECOVERY_REASONS {
            let labels = ReasonLabels {
                reason: reason.to_string(),
            };
            let _ = m.recomputes.get_or_create(&labels);
            let _ = m.slot_recreated.get_or_create(&labels);
        }
        for pass in Pass::ALL {
            let _ = m.passes.get_or_create(&ReasonLabels {
                reason: pass.label().to_string(),
            });
        }
        for table in cfg.tables.sources.keys() {
            for op in CHANGE_OPS {
                let _ = m.changes.get_or_create(&ChangeLabels {
                    table: table.clone(),
                    op: op.to_string(),
                });
            }
        }
        for url in &cfg.revalidate.urls {
            for outcome in REQUEST_OUTCOMES {
                let _ = m.revalidate_requests.get_or_create(&RequestLabels {
                    endpoint: crate::redact::redact_url(url),
                    outcome: outcome.to_string(),
                });
            }
        }
        Arc::new(Metrics { registry, ..m })
    }

    /// A batch was handed to apply. Empty batches (a heartbeat, an idle keepalive that
    /// only moves the checkpoint, a pass over every product) recompute no dirty products
    /// and would drown the distribution in zeros.
    pub fn record_batch(&self, products: usize) {
        if products > 0 {
            self.batch_size.observe(products as f64);
        }
    }

    /// A pass over every product.
    pub fn record_pass(&self, pass: Pass) {
        self.passes
            .get_or_create(&ReasonLabels {
                reason: pass.label().to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        if let Some(age) = self.applied_age() {
            self.lag_seconds.set(age.as_secs_f64());
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn record_change(&self, table: &str, op: &str) {
        self.changes
            .get_or_create(&ChangeLabels {
                table: table.to_string(),
                op: op.to_string(),
            })
            .inc();
    }

    /// A batch committed; `commit` is the source commit time of its newest transaction.
    pub fn record_applied(&self, commit: Option<SystemTime>, oldest: Option<SystemTime>) {
        let now = SystemTime::now();
        if let Some(t) = commit {
            let micros = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros() as i64;
            self.last_applied_commit
                .fetch_max(micros, Ordering::Relaxed);
        }
        for t in [commit, oldest].into_iter().flatten() {
            self.apply_latency
                .observe(now.duration_since(t).unwrap_or_default().as_secs_f64());
        }
    }

    /// Time since the newest applied source commit.
    pub fn applied_age(&self) -> Option<Duration> {
        let micros = self.last_applied_commit.load(Ordering::Relaxed);
        (micros > 0).then(|| {
            let t = SystemTime::UNIX_EPOCH + Duration::from_micros(micros as u64);
            SystemTime::now().duration_since(t).unwrap_or_default()
        })
    }

    /// A recovery recompute at start (`slot::prepare`).
    pub fn record_recovery(&self, reason: &str, recreated: bool) {
        let labels = ReasonLabels {
            reason: reason.to_string(),
        };
        self.recomputes.get_or_create(&labels).inc();
        self.record_pass(Pass::Recovery);
        if recreated {
            self.slot_recreated.get_or_create(&labels).inc();
        }
    }

    /// Whether `table`'s replica identity lacks its product id column (`control::guard`,
    /// and every Relation message of the stream).
    pub fn set_replica_identity_weak(&self, table: &str, weak: bool) {
        self.replica_identity_weak
            .get_or_create(&TableLabels {
                table: table.to_string(),
            })
            .set(i64::from(weak));
    }

    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
        self.leader.set(i64::from(on));
    }

    /// Streaming, and the newest applied commit is recent (heartbeats keep it so).
    pub fn is_ready(&self) -> Result<(), String> {
        if !self.streaming.load(Ordering::Relaxed) {
            return Err("not streaming (standby, starting, or reconnecting)".into());
        }
        let max = self.ready_max_lag;
        match self.applied_age() {
            Some(age) if age > max => Err(format!(
                "lag {:.1}s exceeds {}s",
                age.as_secs_f64(),
                max.as_secs()
            )),
            _ => Ok(()),
        }
    }

    pub fn set_slot_status(&self, status: &str) {
        for s in ["reserved", "extended", "unreserved", "lost"] {
            self.slot_wal_status
                .get_or_create(&StatusLabels {
                    status: s.to_string(),
                })
                .set(i64::from(s == status));
        }
    }

    /// The slot's failover and invalidation state (`server::slot_state`).
    pub fn set_slot_state(&self, s: &crate::pg::server::SlotState) {
        self.slot_failover.set(s.failover.map_or(-1, i64::from));
        let state = s.summary();
        let mut last = self
            .last_slot_state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *last != state && !last.is_empty() {
            self.slot_state
                .get_or_create(&StateLabels {
                    state: last.clone(),
                })
                .set(0);
        }
        self.slot_state
            .get_or_create(&StateLabels {
                state: state.clone(),
            })
            .set(1);
        *last = state;
    }

    /// `endpoint` must be the redacted URL (`db::redact_url`): labels are public.
    pub fn record_request(&self, endpoint: &str, outcome: &str) {
        self.revalidate_requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(addr: &str, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on CDC_METRICS_ADDR {addr}: {e} (set another address, or \"\" to disable)")
    })?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let m = metrics.clone();
    let r = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    match r.is_ready() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series the shipped alert rules and dashboard query is one the worker
    /// exports: a renamed metric must not leave an alert silently matching nothing.
    #[test]
    fn deploy_examples_query_only_exported_series() {
        let m = Metrics::new(&crate::config::Config::default());
        let mut exported = std::collections::BTreeSet::new();
        for line in m.render().lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let mut parts = rest.split(' ');
            let (family, kind) = (parts.next().unwrap(), parts.next().unwrap());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_count", "_sum"],
                "info" => &["_info"],
                _ => &[""],
            };
            for s in suffixes {
                exported.insert(format!("{family}{s}"));
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in [
            "config/deploy/prometheus-alerts.yml",
            "config/deploy/grafana-dashboard.json",
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let names = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("cdc_") || w.starts_with("process_"))
                .filter(|w| !w.starts_with("cdc_worker"));
            for name in names {
                assert!(
                    exported.contains(name),
                    "{file} queries {name}, which is not exported"
                );
            }
        }
    }
    use crate::pg::server::SlotState;

    #[test]
    fn slot_state_is_one_hot_and_failover_is_minus_one_before_17() {
        let m = Metrics::new(&crate::config::Config::default());
        let ok = SlotState {
            wal_status: Some("reserved".into()),
            conflicting: Some(false),
            failover: Some(true),
            synced: Some(false),
            invalidation_reason: None,
            confirmed_flush: None,
        };
        m.set_slot_state(&ok);
        let out = m.render();
        assert!(out.contains("cdc_slot_failover 1"), "{out}");
        assert!(out.contains("cdc_slot_state{state=\"ok\"} 1"), "{out}");
        m.set_slot_state(&SlotState {
            invalidation_reason: Some("wal_removed".into()),
            ..ok.clone()
        });
        let out = m.render();
        assert!(out.contains("cdc_slot_state{state=\"ok\"} 0"), "{out}");
        assert!(
            out.contains("cdc_slot_state{state=\"invalidated_wal_removed\"} 1"),
            "{out}"
        );
        m.set_slot_state(&SlotState {
            failover: None,
            ..ok
        });
        assert!(m.render().contains("cdc_slot_failover -1"));
    }

    /// The shipped alerts and dashboard query only metrics the worker exports: a renamed
    /// metric would otherwise leave an alert that never fires.
    #[test]
    fn the_shipped_alerts_and_dashboard_use_exported_metrics() {
        let m = Metrics::new(&crate::config::Config::default());
        let exported = m.render();
        for (file, text) in [
            (
                "prometheus-alerts.yml",
                include_str!("../../config/deploy/prometheus-alerts.yml"),
            ),
            (
                "grafana-dashboard.json",
                include_str!("../../config/deploy/grafana-dashboard.json"),
            ),
        ] {
            // The expressions only (annotations name tables such as cdc_worker.outbox).
            let mut names: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("expr"))
                .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
                .filter(|w| w.starts_with("cdc_"))
                .collect();
            names.dedup();
            assert!(names.len() > 5, "{file}: {names:?}");
            for name in names {
                let family = ["_total", "_bucket", "_sum", "_count", "_info"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                assert!(
                    exported.contains(&format!("# TYPE {family} ")),
                    "{file} uses {name}, which the worker does not export"
                );
            }
        }
        assert!(include_str!("../../config/deploy/prometheus-alerts.yml")
            .contains("cdc_replica_identity_weak"));
    }
}
