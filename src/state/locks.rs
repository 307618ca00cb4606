//! The advisory locks every worker process agrees on. Keys are derived from names in the
//! configuration, so two processes configured alike take the same lock.

use crate::config::Config;

/// Class of the apply lock (transaction scope). Every writer of the summary and the outbox
/// (the daemon, `reconcile --fix`, the release of held tags) takes it, so that each reads
/// the source after the previous one committed and outbox ids become visible in order.
pub const APPLY_CLASS: i32 = 0x6364_0001;

/// Class of the leader lock (session scope): the instance holding it streams the slot,
/// others wait as standbys.
pub const LEADER_CLASS: i32 = 0x6364_0002;

/// Takes a transaction-scoped lock: `$1` the class, `$2` the key.
pub const XACT_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock($1::int4, $2::int4)";

/// Tries a session-scoped lock once: `$1` the class, `$2` the key.
pub const TRY_SESSION_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1::int4, $2::int4)";

/// The apply lock's key: one per state schema (one summary, one outbox).
pub fn apply_key(cfg: &Config) -> i32 {
    key(&cfg.schema)
}

/// The leader lock's key: one per slot.
pub fn leader_key(cfg: &Config) -> i32 {
    key(&cfg.slot)
}

/// Stable 31-bit key of a name.
fn key(name: &str) -> i32 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable() {
        assert_eq!(key("cdc_worker"), key("cdc_worker"));
        assert_ne!(key("cdc_worker"), key("other"));
        assert!(key("x") >= 0);
        // A change of the hash would let an old and a new worker both lead one slot.
        assert_eq!(key(""), 0x011c_9dc5);
    }
}
