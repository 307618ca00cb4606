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
                // A server certificate we do not trust: `run` would retry it forever.
                None if untrusted_certificate(e) => false,
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
                pgwire_replication::PgWireError::Tls(msg) => is_cut_handshake(msg),
                e => e.is_transient(),
            };
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
    }
    false
}

/// Whether a TLS handshake failed because the server's certificate is not trusted
/// (unknown issuer, another host name, expired): no retry fixes that. The rustls error
/// sits in an io::Error's payload, which `source()` skips, hence `get_ref`.
fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let is_cert = |e: &(dyn std::error::Error + 'static)| {
        matches!(
            e.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_))
        )
    };
    let mut cur = Some(e);
    while let Some(err) = cur {
        let payload = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|p| p as &(dyn std::error::Error + 'static));
        if is_cert(err) || payload.is_some_and(is_cert) {
            return true;
        }
        cur = err.source();
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

/// A TLS handshake that the network ended (a proxy or a restart cutting the connection
/// mid-handshake) rather than one the server's certificate or settings refused. The
/// transport gives only text (`TLS handshake failed: <io error>`), and the io error of a
/// cut says so: end of file, reset, broken pipe, timeout. A certificate problem names the
/// certificate and stays definite (retrying would never fix it).
fn is_cut_handshake(msg: &str) -> bool {
    let Some(why) = msg.strip_prefix("TLS handshake failed: ") else {
        return false;
    };
    let why = why.to_ascii_lowercase();
    !why.contains("certificate")
        && ["eof", "reset", "broken pipe", "timed out", "aborted"]
            .iter()
            .any(|w| why.contains(w))
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
        // A proxy cut during the handshake (seen in tests/faults.rs): reconnect.
        let cut = |m: &str| anyhow::Error::new(pgwire_replication::PgWireError::Tls(m.into()));
        assert!(is_transient(&cut(
            "TLS handshake failed: tls handshake eof"
        )));
        assert!(is_transient(&cut(
            "TLS handshake failed: Connection reset by peer (os error 104)"
        )));
        // The server's certificate is not trusted: no retry fixes that.
        assert!(!is_transient(&cut(
            "TLS handshake failed: invalid peer certificate: UnknownIssuer"
        )));
        assert!(!is_transient(&cut("server does not support TLS")));
    }

    /// tokio-postgres reports a refused certificate as an io::Error carrying the rustls
    /// error; `run` used to retry that forever.
    #[test]
    fn an_untrusted_certificate_is_found_inside_the_io_error() {
        let refused = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(untrusted_certificate(&refused));
        let cut = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert!(!untrusted_certificate(&cut));
    }
}
