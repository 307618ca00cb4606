//! The shop's side of the contract: where its tables are and what their columns are
//! called ([`layout`]), what one summary row is ([`summary`]), and every statement built
//! from both ([`sql`]). Apply, reconcile, setup and the manual revalidation all read the
//! shop through here, so nothing else assumes the reference schema's names or text ids.

pub mod definition;
pub mod layout;
pub mod query_text;
pub mod reads;
pub mod sql;
pub mod summary;
