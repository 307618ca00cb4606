//! cdc-worker library
pub mod pgoutput;
