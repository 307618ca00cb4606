//! Connections: one parsed `DATABASE_URL` gives both the query connection
//! (tokio-postgres) and the replication connection (pgwire-replication), with the same
//! TLS settings, and a form of the URL that is safe to log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{ReplicationConfig, TlsConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::Client;

use crate::redact::{redact_url, PostgresUrl};

/// The longest a new connection may take from the TCP connect to ready for queries, unless
/// `DATABASE_URL` says `connect_timeout` (which, as in libpq, then bounds the whole of it).
const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// libpq's sslmode values; tokio-postgres alone knows only the first three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A parsed `DATABASE_URL`.
#[derive(Clone)]
pub struct Database {
    pg: tokio_postgres::Config,
    pub ssl: SslMode,
    pub root_cert: Option<PathBuf>,
    /// The TLS settings of the query connections, built (and the root file read) once at
    /// parse time: a bad `sslrootcert` is a configuration error at start, never a panic or
    /// a silent fall-back to the public roots at some later connect.
    tls: Arc<rustls::ClientConfig>,
    host: String,
    port: u16,
    /// `connect_timeout` of the URL, if given.
    connect_timeout: Option<Duration>,
}

/// Query parameters Prisma puts into its URLs; meaningless to us, so dropped rather than
/// refused (the worker should accept the app's own DATABASE_URL unchanged).
const PRISMA_PARAMS: &[&str] = &[
    "schema",
    "connection_limit",
    "pool_timeout",
    "pgbouncer",
    "socket_timeout",
    "statement_cache_size",
    "sslaccept",
    "sslcert",
    "sslidentity",
    "sslpassword",
];

impl Database {
    /// Parses `DATABASE_URL`. The URL is split the way redaction reads it
    /// ([`PostgresUrl`]: the userinfo runs to the first `@`), so every error shows it
    /// with the password hidden whatever characters the password holds, and a `?` in the
    /// password is never taken for the start of the query (which would drop `sslmode`).
    pub fn parse(url: &str) -> anyhow::Result<Database> {
        let shown = redact_url(url);
        let parts = PostgresUrl::split(url);
        if parts.as_ref().is_some_and(|p| p.ambiguous) {
            anyhow::bail!(
                "DATABASE_URL {shown} has more than one '@' before the host, so it is unclear                  where the password ends. Fix: write an '@' in the user name or password as %40"
            );
        }
        let query = parts.as_ref().and_then(|p| p.query).unwrap_or("");
        let mut ssl = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => {
                    ssl = match v {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => anyhow::bail!(
                            "DATABASE_URL {shown}: sslmode={other} is not one of disable, prefer, \
                             require, verify-ca, verify-full"
                        ),
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v))),
                k if PRISMA_PARAMS.contains(&k) => {}
                _ => kept.push(pair),
            }
        }
        let tls = Arc::new(
            tls_config(ssl, root_cert.as_deref())
                .map_err(|why| anyhow::anyhow!("DATABASE_URL {shown}: {why}"))?,
        );
        // tokio-postgres gets the userinfo percent-encoded whole, so that it reads the
        // same user and password whatever they hold; an empty one (`scheme://@host`)
        // when there is none, so that an `@` in a query value is never taken for it.
        let rebuilt = match &parts {
            Some(p) => {
                let userinfo = p
                    .userinfo
                    .map_or_else(String::new, |u| match u.split_once(':') {
                        Some((user, password)) => format!("{}:{}", encode(user), encode(password)),
                        None => encode(u),
                    });
                let query = if kept.is_empty() {
                    String::new()
                } else {
                    format!("?{}", kept.join("&"))
                };
                format!("{}://{userinfo}@{}{query}", p.scheme, p.host_path)
            }
            // Not a URL (`host=... user=...`): as tokio-postgres reads it.
            None => url.to_string(),
        };
        let mut pg: tokio_postgres::Config = rebuilt.parse().map_err(|e| {
            anyhow::anyhow!(
                "DATABASE_URL {shown} is not a valid Postgres URL ({e}); expected \
                 postgresql://user:password@host:5432/database"
            )
        })?;
        let host = match pg.get_hosts() {
            [Host::Tcp(h)] => h.clone(),
            [Host::Unix(p)] => p.display().to_string(),
            [] => "localhost".to_string(),
            _ => anyhow::bail!("DATABASE_URL {shown}: give exactly one host"),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        if pg.get_user().is_none_or(str::is_empty) {
            anyhow::bail!("DATABASE_URL {shown} has no user name");
        }
        if pg.get_dbname().is_none() {
            let user = pg.get_user().unwrap_or_default().to_string();
            pg.dbname(&user);
        }
        pg.ssl_mode(match ssl {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        Ok(Database {
            connect_timeout: pg.get_connect_timeout().copied(),
            pg,
            ssl,
            root_cert,
            tls,
            host,
            port,
        })
    }

    pub fn user(&self) -> &str {
        self.pg.get_user().unwrap_or_default()
    }

    pub fn dbname(&self) -> &str {
        self.pg.get_dbname().unwrap_or_default()
    }

    /// `user@host:port/db`, never the password: what logs and errors show.
    pub fn display(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user(),
            self.host,
            self.port,
            self.dbname()
        )
    }

    /// Opens a query connection and drives it on a background task. The whole of it (TCP,
    /// TLS, authentication, startup) is bounded by [`Database::startup_timeout`]:
    /// tokio-postgres bounds only the TCP connect, and a peer that accepts the connection
    /// and then says nothing (a frozen proxy, a hung server) would otherwise hold the caller
    /// forever.
    pub async fn connect(&self, application_name: &str) -> anyhow::Result<Client> {
        let limit = self.startup_timeout();
        match tokio::time::timeout(limit, self.connect_unbounded(application_name)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(self.startup_timed_out("connecting")),
        }
    }

    /// How long a new connection (query or replication) may take until it is ready:
    /// `connect_timeout` of `DATABASE_URL` when given (as libpq reads it), else 30 s.
    pub fn startup_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(DEFAULT_STARTUP_TIMEOUT)
    }

    /// The (transient) error of a connection that did not become ready in time.
    pub fn startup_timed_out(&self, what: &str) -> anyhow::Error {
        anyhow::Error::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "{what} to {} took longer than {}s (TCP, TLS and startup; connect_timeout in \
                 DATABASE_URL sets the limit)",
                self.display(),
                self.startup_timeout().as_secs()
            ),
        ))
    }

    async fn connect_unbounded(
        &self,
        application_name: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut cfg = self.pg.clone();
        cfg.application_name(application_name);
        // A network cut without RST must end in an error, not an await that lasts as long
        // as the kernel's defaults (hours): TCP keepalives and a user timeout on every
        // query connection, and a bounded connect so a moved host is retried afresh.
        cfg.keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(10));
        }
        let client = if self.ssl == SslMode::Disable {
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "query connection closed");
                }
            });
            client
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.rustls_config());
            let (client, conn) = cfg.connect(tls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "query connection closed");
                }
            });
            client
        };
        Ok(client)
    }

    /// The same target and credentials for the replication connection.
    pub fn replication(&self, slot: &str, publication: &str) -> ReplicationConfig {
        let password = self
            .pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let tls = match self.ssl {
            SslMode::Disable => TlsConfig::disabled(),
            SslMode::Prefer => TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..TlsConfig::default()
            },
            SslMode::Require => TlsConfig::require(),
            SslMode::VerifyCa => TlsConfig::verify_ca(self.root_cert.clone()),
            SslMode::VerifyFull => TlsConfig::verify_full(self.root_cert.clone()),
        };
        ReplicationConfig::new(
            self.host.clone(),
            self.user(),
            password,
            self.dbname(),
            slot,
            publication,
        )
        .with_port(self.port)
        .with_tls(tls)
        .with_application_name(replication_application(slot))
    }

    fn rustls_config(&self) -> rustls::ClientConfig {
        (*self.tls).clone()
    }
}

/// The `application_name` of the replication connection of `slot` (how the server's views
/// tell its walsender apart).
pub fn replication_application(slot: &str) -> String {
    format!("cdc-worker/{slot}")
}

/// The rustls settings for `ssl`: what libpq's sslmode means, with the CA certificates of
/// `root_cert` (else the public roots) when the server is verified.
fn tls_config(ssl: SslMode, root_cert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    // Read even when the sslmode does not verify: a file named explicitly but broken is a
    // mistake worth stopping for, whichever mode is set today.
    let roots = root_store(root_cert)?;
    Ok(match ssl {
        // libpq's require and prefer encrypt without checking who answers; the same here.
        SslMode::Prefer | SslMode::Require | SslMode::Disable => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("cannot verify the server with these CA certificates: {e}"))?;
            let verifier: Arc<dyn ServerCertVerifier> = if ssl == SslMode::VerifyCa {
                Arc::new(ChainOnly(inner))
            } else {
                inner
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    })
}

/// The CA certificates of `sslrootcert`, or the public (Mozilla) roots without one. A file
/// that cannot be read or holds no usable certificate is an error naming it, so that a
/// typo never quietly widens trust to every public CA.
fn root_store(root_cert: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let Some(path) = root_cert else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return Ok(roots);
    };
    let fix = "Fix: point sslrootcert at the PEM file (-----BEGIN CERTIFICATE-----) of the CA \
               that signed the server's certificate, readable by the worker";
    let pem = std::fs::read(path)
        .map_err(|e| format!("sslrootcert={} cannot be read ({e}). {fix}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "sslrootcert={} is not valid PEM ({e}). {fix}",
                path.display()
            )
        })?;
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert={} contains no usable CA certificate ({ignored} unparsable). {fix}",
            path.display()
        ));
    }
    Ok(roots)
}

/// sslmode=require: encrypted, unauthenticated (as libpq does).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// sslmode=verify-ca: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `s` (still percent-encoded, as in a URL) with every byte but the unreserved ones
/// percent-encoded: decoding it gives back what decoding `s` gives.
fn encode(s: &str) -> String {
    percent_decode_bytes(s)
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

/// Leniently, as libpq and tokio-postgres do: a `%` not followed by two hex digits stays.
fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prisma_url_and_drops_prisma_params() {
        let db = Database::parse(
            "postgresql://shop:s%40cret@db.internal:6543/shop?schema=public&connection_limit=5&sslmode=require",
        )
        .unwrap();
        assert_eq!(db.ssl, SslMode::Require);
        assert_eq!(db.display(), "shop@db.internal:6543/shop");
        let repl = db.replication("s", "p");
        assert_eq!(repl.password, "s@cret");
        assert_eq!(repl.port, 6543);
        assert!(repl.tls.mode.requires_tls());
    }

    /// A self-signed CA made for these tests (`openssl req -x509 -newkey ec ...`); only its
    /// public certificate.
    const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUBIoP6ksUm8QRe2u00HRWg/AYHP0wCgYIKoZIzj0EAwIw
IjEgMB4GA1UEAwwXY2RjLXdvcmtlciB1bml0LXRlc3QgQ0EwIBcNMjYxMTI1MDcw
MTM2WhgPMjEyNjExMDEwNzAxMzZaMCIxIDAeBgNVBAMMF2NkYy13b3JrZXIgdW5p
dC10ZXN0IENBMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0A0Taho+3r+Df7oc
PLKKy3fL7xZa8SVkmGrwhghR3cJ1YTlmURKk3tHwwYSond6qG7Blt0f7ZB1xB+sY
4EFmq6NTMFEwHQYDVR0OBBYEFPBAJ5bzY2TRQZrht8AbGdgr9S8dMB8GA1UdIwQY
MBaAFPBAJ5bzY2TRQZrht8AbGdgr9S8dMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI
zj0EAwIDSQAwRgIhAPeyfkdgJmp3Izlc0tnKsbH9iAm+aLYTht3tgeTf3WDQAiEA
j6L4grw/+dVah8Wcl+ZWl4+oQzfE6hJB69RBSSijMrc=
-----END CERTIFICATE-----
";

    /// A fresh directory under the system temp dir (with a space, as paths may have),
    /// removed when the returned guard is dropped.
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("cdcw-{name} "))
            .tempdir()
            .unwrap()
    }

    fn url_with_root(path: &Path, mode: &str) -> String {
        format!(
            "postgres://u:p@h/d?sslmode={mode}&sslrootcert={}",
            path.display().to_string().replace(' ', "%20")
        )
    }

    #[test]
    fn verify_full_with_root_cert() {
        let tmp = temp_dir("ca");
        let dir = tmp.path();
        std::fs::write(dir.join("ca.pem"), TEST_CA_PEM).unwrap();
        let db = Database::parse(&url_with_root(&dir.join("ca.pem"), "verify-full")).unwrap();
        assert_eq!(db.ssl, SslMode::VerifyFull);
        assert_eq!(db.root_cert, Some(dir.join("ca.pem")));
        assert!(db.replication("s", "p").tls.mode.verifies_hostname());
        let _ = db.rustls_config();
        let missing =
            Database::parse("postgres://u:p@h/d?sslmode=verify-full&sslrootcert=/nope.pem")
                .err()
                .unwrap()
                .to_string();
        assert!(
            missing.contains("sslrootcert=/nope.pem cannot be read"),
            "{missing}"
        );
    }

    /// An empty (or certificate-less) root file used to pass parsing and then panic on the
    /// first connection (`expect` on an empty root store).
    #[test]
    fn root_cert_without_a_certificate_is_a_configuration_error() {
        let tmp = temp_dir("noca");
        let dir = tmp.path();
        for (file, content) in [
            ("empty.pem", ""),
            (
                "key-only.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
            (
                "garbage.pem",
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            ),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, content).unwrap();
            for mode in ["verify-full", "verify-ca", "require"] {
                let err = Database::parse(&url_with_root(&path, mode))
                    .err()
                    .unwrap_or_else(|| panic!("{file} with sslmode={mode} was accepted"))
                    .to_string();
                assert!(err.contains(&path.display().to_string()), "{err}");
                assert!(err.contains("Fix: point sslrootcert at"), "{err}");
            }
        }
    }

    /// A root file that exists but cannot be read (here: a directory) used to pass the
    /// start-up check and then fall back to the public roots at connect time.
    #[test]
    fn unreadable_root_cert_is_a_configuration_error_not_a_fallback() {
        let tmp = temp_dir("dirca");
        let dir = tmp.path();
        let err = Database::parse(&url_with_root(dir, "verify-full"))
            .err()
            .expect("a directory as sslrootcert was accepted")
            .to_string();
        assert!(err.contains("cannot be read"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains("Fix:"), "{err}");
    }

    #[test]
    fn bad_sslmode_is_named_and_password_hidden() {
        let err = Database::parse("postgres://u:hunter2@h/d?sslmode=sometimes")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sslmode=sometimes"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// Issue 18: a password with `/`, `?` or `#` (and the other delimiters) connects as
    /// written, keeps the query's sslmode, and no error shows any of it.
    #[test]
    fn passwords_with_url_delimiters_parse_and_stay_hidden() {
        for c in ['/', '?', '#', ':', '%', '&', '=', '@'] {
            let raw = format!("Zq{c}Xv9");
            // `@` must be encoded to be unambiguous; the others may be written raw.
            let written = if c == '@' {
                "Zq%40Xv9".to_string()
            } else {
                raw.clone()
            };
            let db = Database::parse(&format!(
                "postgresql://app:{written}@db.internal:6543/shop?sslmode=verify-ca&schema=x"
            ))
            .unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert_eq!(
                db.ssl,
                SslMode::VerifyCa,
                "{c:?}: the query keeps its sslmode"
            );
            assert_eq!(db.display(), "app@db.internal:6543/shop", "{c:?}");
            assert_eq!(db.replication("s", "p").password, raw, "{c:?}");
            assert_eq!(
                db.pg.get_password(),
                Some(raw.as_bytes()),
                "{c:?}: both connections send the same password"
            );
            // Every error path: an sslmode typo, a bad port, a bad sslrootcert, no user.
            for url in [
                format!("postgresql://app:{written}@db/shop?sslmode=requir"),
                format!("postgresql://app:{written}@db:notaport/shop"),
                format!("postgresql://app:{written}@db/shop?sslmode=verify-full&sslrootcert=/nope"),
                format!("postgresql://:{written}@db/shop"),
                format!("postgresql://app:{raw}@db/shop?sslmode=requir"),
            ] {
                let Err(e) = Database::parse(&url) else {
                    panic!("{url} parsed");
                };
                let e = format!("{e:#}");
                assert!(
                    !e.contains("Zq") && !e.contains("Xv9"),
                    "{c:?}: the password shows in: {e}"
                );
            }
        }
        // A raw `@` in the password: refused, with the fix, and hidden.
        let e = Database::parse("postgresql://app:Zq@Xv9@db/shop")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("%40") && !e.contains("Zq") && !e.contains("Xv9"),
            "{e}"
        );
        // An `@` in a query value is no userinfo.
        let db = Database::parse("postgresql://app:pw@db/shop?application_name=a@b").unwrap();
        assert_eq!(db.display(), "app@db:5432/shop");
    }

    #[test]
    fn garbage_url_does_not_leak_password() {
        let err = Database::parse("postgres://u:hunter2@h:notaport/d")
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("DATABASE_URL"), "{err}");
    }
}
