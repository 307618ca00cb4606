//! The end state every fault test demands (README, "Reliability"; DESIGN.md invariants 2
//! and 3): the summary equals the source, `reconcile` reports 0, every cache tag the
//! test's changes caused reached every endpoint after the last change that caused it, and
//! nothing waits in the outbox any more. One definition, so no fault test checks less.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::endpoint::Endpoint;
use super::{json_report, outbox_pending, wait_converged, wait_until, TestDb, WorkerProcess};

/// The cache tags a test's changes cause, each with the moment its last cause was sent.
/// Clones share the record.
#[derive(Clone, Default)]
pub struct ExpectedTags(Arc<Mutex<HashMap<String, Instant>>>);

impl ExpectedTags {
    pub fn new() -> ExpectedTags {
        ExpectedTags::default()
    }

    /// Records that a change sent at `at` causes `tags`. Take `at` before sending the
    /// statement: the worker may deliver the tag before the statement's answer is read.
    pub fn caused<I: IntoIterator<Item = String>>(&self, at: Instant, tags: I) {
        let mut m = self.0.lock().unwrap();
        for tag in tags {
            let last = m.entry(tag).or_insert(at);
            *last = (*last).max(at);
        }
    }

    /// How many distinct tags are expected.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many expected tags start with `prefix` (`"store:"`, ...).
    pub fn count(&self, prefix: &str) -> usize {
        let m = self.0.lock().unwrap();
        m.keys().filter(|t| t.starts_with(prefix)).count()
    }

    /// The tags of `expected` that have not reached `e` at or after their last cause.
    pub fn missing_at<T: Clone + Send + 'static>(&self, e: &Endpoint<T>) -> Vec<String> {
        let mut newest: HashMap<String, Instant> = HashMap::new();
        for d in e.deliveries() {
            for tag in d.tags {
                let at = newest.entry(tag).or_insert(d.at);
                *at = (*at).max(d.at);
            }
        }
        let m = self.0.lock().unwrap();
        let mut missing: Vec<String> = m
            .iter()
            .filter(|(tag, cause)| newest.get(*tag).is_none_or(|at| at < *cause))
            .map(|(tag, _)| tag.clone())
            .collect();
        missing.sort();
        missing
    }
}

/// The tags the default templates give a change of product `id` in store `store`:
/// `product:{id}`, `store:{store}:products`, and `inventory:{id}` when its available
/// stock changed (or its summary row appeared or vanished).
pub fn product_tags(id: &str, store: &str, inventory: bool) -> Vec<String> {
    let mut tags = vec![format!("product:{id}"), format!("store:{store}:products")];
    if inventory {
        tags.push(format!("inventory:{id}"));
    }
    tags
}

/// The recovered state, awaited: converged, `reconcile --json` reports 0 (and exits 0),
/// every tag of `expected` delivered to each of `endpoints` after its last cause, and
/// nothing pending in the outbox. `expected` must not be empty: a fault test that caused
/// no tag proves nothing about delivery.
pub async fn assert_recovered<T: Clone + Send + 'static>(
    db: &TestDb,
    c: &tokio_postgres::Client,
    endpoints: &[&Endpoint<T>],
    expected: &ExpectedTags,
) {
    assert!(
        !expected.is_empty(),
        "the test expects no tag: nothing to check"
    );
    wait_converged(c, "the summary equals the source after the fault").await;
    let out = WorkerProcess::run_to_end(db, &["reconcile", "--json"], &[]);
    let json = json_report(&out.output);
    assert_eq!(
        json["discrepancies"], 0,
        "reconcile after the fault: {json}"
    );
    assert!(
        out.success,
        "reconcile exit {:?}:\n{}",
        out.code, out.output
    );
    for e in endpoints {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let missing = expected.missing_at(e);
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} expected tags never reached {} after their last cause, e.g. {:?}",
                missing.len(),
                expected.len(),
                e.url,
                &missing[..missing.len().min(8)]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_until(
        Duration::from_secs(30),
        "nothing pending in the outbox",
        || async { outbox_pending(c).await == 0 },
    )
    .await;
    eprintln!(
        "recovered: reconcile 0; {} expected tags delivered ({} product, {} store, {} inventory)",
        expected.len(),
        expected.count("product:"),
        expected.count("store:"),
        expected.count("inventory:")
    );
}
