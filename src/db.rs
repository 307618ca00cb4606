//! Connections: one parsed `DATABASE_URL` gives both the query connection
//! (tokio-postgres) and the replication connection (pgwire-replication), with the same
//! TLS settings, and a form of the URL that is safe to log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{ReplicationConfig, TlsConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::Client;

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
    host: String,
    port: u16,
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
    pub fn parse(url: &str) -> anyhow::Result<Database> {
        let shown = redact_url(url);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
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
        if let Some(path) = &root_cert {
            if let Err(e) = std::fs::metadata(path) {
                anyhow::bail!(
                    "DATABASE_URL {shown}: sslrootcert={} cannot be read ({e})",
                    path.display()
                );
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
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
        if pg.get_user().is_none() {
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
            pg,
            ssl,
            root_cert,
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

    /// Opens a query connection and drives it on a background task.
    pub async fn connect(&self, application_name: &str) -> Result<Client, tokio_postgres::Error> {
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
        .with_application_name(format!("cdc-worker/{slot}"))
    }

    fn rustls_config(&self) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions");
        match self.ssl {
            // libpq's require and prefer encrypt without checking who answers; the same here.
            SslMode::Prefer | SslMode::Require | SslMode::Disable => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = self.root_store();
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("root store is not empty");
                let verifier: Arc<dyn ServerCertVerifier> = if self.ssl == SslMode::VerifyCa {
                    Arc::new(ChainOnly(inner))
                } else {
                    inner
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        }
    }

    fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let from_file = self.root_cert.as_ref().and_then(|path| {
            let pem = std::fs::read(path)
                .map_err(|e| tracing::error!(path = %path.display(), error = %e, "cannot read sslrootcert"))
                .ok()?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                .filter_map(Result::ok)
                .collect();
            Some(certs)
        });
        match from_file {
            Some(certs) => {
                roots.add_parsable_certificates(certs);
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        roots
    }
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

/// Prepares `sql`, naming the statement in the error: a failure here usually means a
/// table, column or the summary query does not match the database.
pub async fn prepare(client: &Client, sql: &str) -> anyhow::Result<tokio_postgres::Statement> {
    use anyhow::Context as _;
    client
        .prepare(sql)
        .await
        .with_context(|| format!("preparing: {sql}"))
}

/// Replaces the password of a Postgres URL with `***`, for messages about a URL we could
/// not even parse.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".into();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("{user}@{host}")
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, q)) => {
            let q: Vec<String> = q
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some(("password", _)) => "password=***".to_string(),
                    _ => p.to_string(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn percent_decode(s: &str) -> String {
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
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn verify_full_with_root_cert() {
        let dir = std::env::temp_dir().join(format!("cdcw-ca {}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "").unwrap();
        let url = format!(
            "postgres://u:p@h/d?sslmode=verify-full&sslrootcert={}/ca.pem",
            dir.display().to_string().replace(' ', "%20")
        );
        let db = Database::parse(&url).unwrap();
        assert_eq!(db.ssl, SslMode::VerifyFull);
        assert_eq!(db.root_cert, Some(dir.join("ca.pem")));
        assert!(db.replication("s", "p").tls.mode.verifies_hostname());
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

    #[test]
    fn bad_sslmode_is_named_and_password_hidden() {
        let err = Database::parse("postgres://u:hunter2@h/d?sslmode=sometimes")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sslmode=sometimes"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
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

    #[test]
    fn redacts_password_everywhere() {
        assert_eq!(
            redact_url("postgresql://a:b@h:1/d?password=x&sslmode=require"),
            "postgresql://a:***@h:1/d?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://h/d"), "postgres://h/d");
    }
}
