//! What an operator sees: the Prometheus [`metrics`] every stage records into, and the
//! [`monitor`] that polls what only the database knows (lag in bytes, the slot's safety,
//! the outbox backlog, the last reconcile), and the process's own [`process`] metrics.

pub mod metrics;
pub mod monitor;
pub mod process;
