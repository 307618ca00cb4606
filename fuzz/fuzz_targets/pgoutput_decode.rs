//! Fuzzes the pgoutput decoder: it faces bytes from the network, so no
//! input may panic, hang or allocate without bound.
//!
//! Run with `cargo +nightly fuzz run pgoutput_decode` from the repo root.
//!
//! The decoder module is compiled in directly via `#[path]` instead of
//! depending on the `cdc-worker` crate: that would drag tokio, reqwest,
//! rustls etc. through sanitizer instrumentation for no benefit. This works
//! because `src/stream/pgoutput.rs` only uses `bytes` and `thiserror`; if it ever
//! grows `crate::` imports, switch to a path dependency on `..`.
#![no_main]

#[path = "../../src/stream/pgoutput.rs"]
#[allow(dead_code)]
mod pgoutput;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let buf = Bytes::copy_from_slice(data);
    // The same bytes read outside a stream block and inside one (where most messages
    // carry an xid after the tag).
    for result in [
        pgoutput::decode(&buf),
        pgoutput::decode_in_stream(&buf).map(|(_, message)| message),
    ] {
        match result {
            Ok(message) => touch(&message),
            Err(err) => {
                // Formatting must not panic either, and offsets must be in range.
                let _ = err.to_string();
                assert!(err.offset() <= data.len(), "{err:?} offset past end");
            }
        }
    }
});

/// Reads every value so the infallible accessors are exercised on whatever
/// the validator accepted.
fn touch(message: &pgoutput::LogicalMessage) {
    use pgoutput::{LogicalMessage, OldTuple};
    let mut tuples = Vec::new();
    match message {
        LogicalMessage::Insert { new, .. } => tuples.push(new),
        LogicalMessage::Update { old, new, .. } => {
            tuples.extend(old.as_ref().map(OldTuple::tuple));
            tuples.push(new);
        }
        LogicalMessage::Delete { old, .. } => tuples.push(old.tuple()),
        LogicalMessage::Relation(rel) => {
            for column in &rel.columns {
                assert_eq!(
                    rel.column_index(&column.name)
                        .map(|i| rel.columns[i].name == column.name),
                    Some(true)
                );
            }
        }
        _ => {}
    }
    for tuple in tuples {
        let n = tuple.iter().map(|v| v.as_str().map_or(0, str::len)).count();
        assert_eq!(n, tuple.len());
        assert!(tuple.get(tuple.len()).is_none());
        if !tuple.is_empty() {
            assert!(tuple.get(tuple.len() - 1).is_some());
        }
    }
}
