//! cdc-worker keeps a denormalized `ProductSummary` table and a Next.js app's cache tags
//! correct from Postgres logical replication.
//!
//! The pipeline, one folder per stage (README "How it works"):
//!
//! ```text
//! Postgres WAL ──slot──▶ stream ──▶ apply ──▶ (checkpoint, ack)
//!                        decode      summary rows
//!                        route       tags ──▶ outbox ──▶ deliver ──▶ Next.js
//!                        batch
//! ```
//!
//! - [`stream`]: the replication connection, pgoutput decoding, routing changes to dirty
//!   product ids, batching them; acknowledges only what apply committed.
//! - [`apply`]: one transaction per batch recomputes the summary rows, enqueues the tags
//!   of rows that changed and stores the checkpoint.
//! - [`outbox`]: delivers the tags to every endpoint; holds the tags of throttled templates.
//! - [`reconcile`]: diffs the summary against the source, from cron.
//!
//! Around them: [`control`] (the commands, leadership, the slot's start-up invariants),
//! [`shop`] (the shop's tables, the summary row and every statement built from them),
//! [`state`] (the worker's own schema, its only owner), [`pg`] (Postgres facts: connections,
//! server, snapshots, names), [`ops`] (metrics, monitor). Dependencies point down only:
//! `control` → `stream`, `apply`, `outbox`, `reconcile` → `shop`, `state` → `pg`.

pub mod apply;
pub mod config;
pub mod control;
pub mod error;
pub mod failpoints;
pub mod ops;
pub mod outbox;
pub mod pg;
pub mod reconcile;
pub mod redact;
pub mod shop;
pub mod state;
pub mod stream;
