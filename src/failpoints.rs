//! Named crash (and stall) points for the fault tests (the `fail` crate, as supabase/etl uses it):
//! `FAILPOINTS=slot-recreated=return cdc-worker run` aborts the process at exactly that
//! moment, like a kill -9 there. Inert unless `FAILPOINTS` names one. Every name is a
//! constant here, so a test and the code it crashes cannot drift apart.

/// Recovery: the durable recompute mark is written, nothing else has changed yet.
pub const RECOMPUTE_MARKED: &str = "recompute-marked";
/// Recovery: the old slot is dropped, the new one not yet created.
pub const SLOT_DROPPED: &str = "slot-dropped";
/// Recovery: the slot is recreated, no product recomputed yet.
pub const SLOT_RECREATED: &str = "slot-recreated";
/// Recovery or backfill: after each page of the recompute of every product.
pub const RECOMPUTE_PAGE: &str = "recompute-page";
/// Apply: a part of a batch larger than `batch.max_products` committed, not the last (the
/// checkpoint has not moved yet).
pub const APPLY_PART: &str = "apply-part";

/// Stream loop: right after a batch is handed over, the loop stops reading for the
/// milliseconds given (`FAILPOINTS=stream-stall=1*return(12000)`): apply gets no batch
/// meanwhile, as during a long decode, and only its keep-alive keeps the leader's session
/// open.
pub const STREAM_STALL: &str = "stream-stall";

/// How long to stall at `name` when `FAILPOINTS` configures it with `return(ms)`; `None`
/// otherwise.
pub fn stall(name: &'static str) -> Option<std::time::Duration> {
    fail::fail_point!(name, |ms: Option<String>| ms
        .and_then(|m| m.parse().ok())
        .map(std::time::Duration::from_millis));
    None
}

/// Aborts the process here when `FAILPOINTS` configures `name`; otherwise does nothing.
pub fn crash_point(name: &'static str) {
    fail::fail_point!(name, |_| {
        tracing::error!(failpoint = name, "failpoint reached: aborting the process");
        std::process::abort()
    });
}
