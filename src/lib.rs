//! cdc-worker keeps a denormalized `ProductSummary` table and a Next.js app's cache tags
//! correct from Postgres logical replication.
//!
//! The pipeline, one module per stage:
//! stream ([`run`]) → decode ([`pgoutput`]) → route ([`route`]) → batch ([`batch`]) →
//! apply ([`apply`], with [`summary`] defining a row and its tags) → ack ([`run`]);
//! apply also fills the outbox that [`deliver`] drains to Next.js, and holds the tags of
//! throttled templates in [`hold`] until their interval has passed.
//!
//! Around it: [`slot`] checks the slot/checkpoint invariants at every start and recovers,
//! [`leader`] keeps one instance streaming, [`visibility`] decides when a streamed change
//! may be read.

pub mod apply;
pub mod batch;
pub mod bulk;
pub mod config;
pub mod covered;
pub mod db;
pub mod deliver;
pub mod error;
pub mod hold;
pub mod ids;
pub mod layout;
pub mod leader;
pub mod metrics;
pub mod monitor;
pub mod pgoutput;
pub mod reconcile;
pub mod route;
pub mod run;
pub mod server;
pub mod setup;
pub mod slot;
pub mod summary;
pub mod visibility;
