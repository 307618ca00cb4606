//! What the caller should do with an error: retry it (transient) or stop and tell the
//! operator how to fix it (definite).

use std::fmt;

/// A problem no retry can fix: bad configuration, a missing table or privilege, a lost
/// slot. The message names the problem and the fix.
#[derive(Debug)]
pub struct Definite(pub String);

impl fmt::Display for Definite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Definite {}

/// Shorthand for returning a definite error.
pub fn definite(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Definite(msg.into()))
}

/// Whether retrying with backoff may succeed: connection loss, a restarting server, a
/// slot still held by another process, serialization failures. Anything we cannot
/// classify is treated as definite so that it is seen instead of retried forever.
pub fn is_transient(err: &anyhow::Error) -> bool {
    for cause in err.chain() {
        if cause.downcast_ref::<Definite>().is_some() {
            return false;
        }
        if let Some(e) = cause.downcast_ref::<tokio_postgres::Error>() {
            return match e.code() {
                // No SQLSTATE: the connection broke, or timed out.
                None => true,
                Some(code) => is_transient_sqlstate(code.code()),
            };
        }
        if let Some(e) = cause.downcast_ref::<pgwire_replication::PgWireError>() {
            return match e {
                pgwire_replication::PgWireError::Server(msg) => {
                    sqlstate_of(msg).is_some_and(is_transient_sqlstate)
                }
                e => e.is_transient(),
            };
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
    }
    false
}

fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, ...)
        || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
        || code == "40001" // serialization failure
        || code == "40P01" // deadlock
        || code == "55006" // object in use: the slot is held by another walsender
        || code == "55P03" // lock not available
}

/// pgwire-replication renders server errors as "message (SQLSTATE xxxxx)".
pub fn sqlstate_of(msg: &str) -> Option<&str> {
    let start = msg.rfind("SQLSTATE ")? + "SQLSTATE ".len();
    msg.get(start..start + 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert!(!is_transient(&definite("wal_level")));
        let io = anyhow::Error::new(std::io::Error::other("reset"));
        assert!(is_transient(&io));
        let slot_busy = anyhow::Error::new(pgwire_replication::PgWireError::Server(
            "replication slot \"s\" is active for PID 7 (SQLSTATE 55006)".into(),
        ));
        assert!(is_transient(&slot_busy));
        let missing = anyhow::Error::new(pgwire_replication::PgWireError::Server(
            "replication slot \"s\" does not exist (SQLSTATE 42704)".into(),
        ));
        assert!(!is_transient(&missing));
        assert!(!is_transient(&anyhow::anyhow!("something odd")));
    }
}
