//! Postgres facts the pipeline builds on, with no knowledge of the pipeline: connections
//! ([`connect`]), what kind of server it is ([`server`]), snapshots ([`snapshot`]) and names
//! in SQL ([`sql`]).

pub mod connect;
pub mod server;
pub mod snapshot;
pub mod sql;

pub use sql::prepare;
