//! cdc-worker library
