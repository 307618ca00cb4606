//! The commands and the lifecycle around the pipeline: [`setup`] prepares a database,
//! [`run`] is the daemon (leadership, sessions, the wiring of stream, apply and outbox),
//! [`slot`] checks the slot and checkpoint at every start and recovers, [`guard`] checks
//! again what setup checked (publication, replica identity) at every session start and
//! while streaming, [`leader`] keeps one instance streaming, [`revalidate`] is the
//! operator's manual trigger, [`status`] answers "is it healthy" from the database,
//! [`teardown`] removes what setup created.

pub mod guard;
pub mod leader;
pub mod revalidate;
pub mod run;
pub mod setup;
pub mod slot;
pub mod status;
pub mod teardown;
