//! The outbox stage: cache tags out of the outbox and into every Next.js endpoint.
//!
//! Apply writes the tags of the rows it changed ([`tags`] renders them) into the outbox in
//! its own transaction; [`deliver`] drains it per endpoint, signed, coalesced and retried,
//! and [`hold`] releases the tags of throttled templates once their interval has passed.
//! The tables themselves belong to [`crate::state::outbox`].

pub mod deliver;
pub mod hold;
pub mod tags;
