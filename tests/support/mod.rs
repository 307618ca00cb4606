//! Integration-test harness: a Postgres cluster per test run, a fresh database per test,
//! and a handle on the `cdc-worker` binary as a child process; and the helpers the test
//! files share: prepared databases, an in-process revalidation endpoint, state queries,
//! metrics scrapes.
//!
//! Use it from a `tests/*.rs` file with `mod support;`. A helper a second test file needs
//! belongs here (or in `tests/nextjs_support/` for the storefront's), not in a copy.
//!
//! The local cluster is defined once, in `scripts/test-cluster.sh`; this module shells out to
//! it. Set `CDC_TEST_DATABASE_URL` (a `postgresql://` URL of a superuser on a server with
//! `wal_level=logical`) to run the tests against an existing server instead.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::fs::{self, File};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;

mod endpoint;
mod ports;
mod recovered;
mod skip;
mod stale;
#[allow(unused_imports)] // each test binary uses a different part
pub use endpoint::{revalidate_env, Answer, Delivery, Endpoint, CLOSED_PORT_URL};
#[allow(unused_imports)]
pub use ports::{
    free_port, kill_group, listener, spawn_on_free_port, wait_listening, Listener, CLOSED_PORT,
};
#[allow(unused_imports)]
pub use recovered::{assert_recovered, product_tags, ExpectedTags};
#[allow(unused_imports)]
pub use skip::{skip, skip_allowed, ALLOW_SKIP_ENV, SKIP_LOG_ENV, SKIP_PREFIX};
#[allow(unused_imports)]
pub use stale::pid_in_name;

/// The reference source schema (the shop's tables) loaded into every test database.
pub const SOURCE_SCHEMA_SQL: &str = include_str!("../../sql/source_schema.sql");

/// Environment variable naming an existing server to test against instead of a local cluster.
pub const DATABASE_URL_ENV: &str = "CDC_TEST_DATABASE_URL";

/// The worker's log line when its session starts streaming (src/control/run.rs). Wait
/// for this, not for "streaming" alone: the line announcing a recompute "before
/// streaming" contains that word too, and would let a test go on before the session is up.
pub const STREAMING: &str = "control::run: streaming";
/// The same line with `CDC_LOG_FORMAT=json`.
pub const STREAMING_JSON: &str = r#""message":"streaming","slot""#;
/// The worker's log line when it recomputes every product before streaming
/// (src/control/slot.rs).
pub const RECOMPUTE: &str = "recomputing every product before streaming";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cluster_script() -> PathBuf {
    manifest_dir().join("scripts/test-cluster.sh")
}

/// Runs `scripts/test-cluster.sh <args>` (with `CDC_TEST_PG_DIR` when `dir` is given) and
/// returns its stdout; panics with its stderr on failure.
fn run_script(dir: Option<&Path>, args: &[&str]) -> String {
    run_script_with(dir, None, args)
}

/// [`run_script`] with `PG_BINDIR` set to `bindir` (a cluster of another version than the
/// test run's).
fn run_script_with(dir: Option<&Path>, bindir: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(cluster_script()).args(args).stdin(Stdio::null());
    if let Some(dir) = dir {
        cmd.env("CDC_TEST_PG_DIR", dir);
    }
    if let Some(bindir) = bindir {
        cmd.env("PG_BINDIR", bindir);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cluster_script().display()));
    if !out.status.success() {
        panic!(
            "scripts/test-cluster.sh {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).expect("script output is UTF-8")
}

/// Splits a `postgresql://user:pw@host:port/db?params` URL into (prefix up to and including
/// the `/` before the database, query string including `?` or empty).
fn split_url(url: &str) -> (String, String) {
    let scheme_end = url
        .find("://")
        .unwrap_or_else(|| panic!("{DATABASE_URL_ENV} must be a postgresql:// URL"))
        + 3;
    let rest = &url[scheme_end..];
    let (before_query, query) = match rest.find('?') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = match before_query.find('/') {
        Some(i) => &before_query[..i],
        None => before_query,
    };
    (
        format!("{}{}/", &url[..scheme_end], authority),
        query.to_string(),
    )
}

/// A Postgres server the tests can use: the shared one or a private one.
pub struct Cluster {
    pub port: u16,
    pub host: String,
    /// PGDATA of a local cluster; empty for an external server (`CDC_TEST_DATABASE_URL`).
    pub data_dir: PathBuf,
    /// The server's self-signed certificate (a usable root for `sslmode=verify-full`), for a
    /// local cluster.
    pub ssl_cert: Option<PathBuf>,
    /// The server log of a local cluster.
    pub log_file: Option<PathBuf>,
    /// `postgresql://postgres:PASSWORD@127.0.0.1:PORT/` (ends before the database name).
    url_prefix: String,
    /// `?...` query parameters of an external URL, or empty.
    url_query: String,
    /// `CDC_TEST_PG_DIR` of a local cluster (None for external).
    script_dir: Option<PathBuf>,
    private: bool,
    /// `PostgreSQL 18.4`... of a local cluster (from `postgres --version`); empty for external.
    pub server_version: String,
    /// `PG_BINDIR` of a cluster of another version than the test run's ([`Cluster::private_version`]).
    bindir: Option<PathBuf>,
}

impl Cluster {
    /// The shared cluster for this test run: the server of `CDC_TEST_DATABASE_URL` if set,
    /// else the local cluster of `scripts/test-cluster.sh`, started (or reused) on first use.
    /// Several test processes may call this at once (the script serializes them with a file
    /// lock). The cluster is left running at exit; `make test` stops it.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let c = match std::env::var(DATABASE_URL_ENV) {
                Ok(url) if !url.trim().is_empty() => Cluster::external(url.trim()),
                _ => Cluster::local(None, false),
            };
            // Once per test binary, so a matrix run's output says which server each suite ran on.
            if c.is_local() {
                eprintln!("test cluster: {} on port {}", c.server_version, c.port);
                c.drop_stale();
            }
            c
        })
    }

    /// Drops what test processes that are gone left behind (see `stale.rs`): their
    /// databases, slots and roles on this cluster, and their private clusters (stopped,
    /// then deleted). Called once per test process when the shared local cluster is first
    /// used; what a test process still running made is never touched.
    fn drop_stale(&self) {
        let admin_url = self.admin_url("postgres");
        let dropped =
            on_own_runtime(move || async move { stale::drop_stale_objects(&admin_url).await })
                .expect("dropping stale test objects");
        match dropped {
            Ok(d) if d.is_empty() => {}
            Ok(d) => eprintln!(
                "dropped {} stale object(s) of earlier test runs: {}",
                d.len(),
                d.join(", ")
            ),
            Err(e) => panic!("dropping stale test objects: {}", describe(&e)),
        }
        let Some(dir) = &self.script_dir else { return };
        let private_root = PathBuf::from(format!("{}-private", dir.display()));
        for stale_dir in stale::stale_private_dirs(&private_root) {
            // The script stops it with the binaries that started it; nothing to stop is fine.
            let _ = Command::new("bash")
                .arg(cluster_script())
                .arg("stop")
                .env("CDC_TEST_PG_DIR", &stale_dir)
                .stdin(Stdio::null())
                .output();
            let _ = fs::remove_dir_all(&stale_dir);
            let _ = fs::remove_file(format!("{}.lock", stale_dir.display()));
            eprintln!(
                "removed the private cluster {} of an earlier test run",
                stale_dir.display()
            );
        }
    }

    /// A private local cluster that a test may stop, crash and restart. Stopped and deleted
    /// on drop (kept if the test panicked, for its log, until the next test run's first
    /// use of the shared cluster removes it). Always local, even when
    /// `CDC_TEST_DATABASE_URL` is set.
    pub fn private(name: &str) -> Cluster {
        Cluster::local(Some(Self::private_dir(name)), true)
    }

    /// Like [`Cluster::private`], on PostgreSQL `major` whatever the test run's version:
    /// `scripts/install-pg.sh MAJOR` provides the binaries (fetching them if needed).
    pub fn private_version(name: &str, major: u32) -> Cluster {
        let out = Command::new("bash")
            .arg(manifest_dir().join("scripts/install-pg.sh"))
            .arg(major.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("running scripts/install-pg.sh");
        assert!(
            out.status.success(),
            "scripts/install-pg.sh {major} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bindir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        let default_dir = run_script_with(None, Some(&bindir), &["default-dir"]);
        let dir = PathBuf::from(format!("{}-private", default_dir.trim())).join(format!(
            "{}-{}-{}",
            sanitize(name, 30),
            std::process::id(),
            next_id()
        ));
        let t = Instant::now();
        run_script_with(Some(&dir), Some(&bindir), &["start"]);
        let mut c = Cluster::local_started(Some(dir), true, t);
        c.bindir = Some(bindir);
        c
    }

    /// The directory `scripts/test-cluster.sh` uses when `CDC_TEST_PG_DIR` is unset.
    fn default_dir() -> PathBuf {
        PathBuf::from(run_script(None, &["default-dir"]).trim())
    }

    fn private_dir(name: &str) -> PathBuf {
        let shared_dir = Self::default_dir();
        PathBuf::from(format!("{}-private", shared_dir.display())).join(format!(
            "{}-{}-{}",
            sanitize(name, 30),
            std::process::id(),
            next_id()
        ))
    }

    /// A private physical standby of this private cluster, streaming from it through a
    /// physical slot (`scripts/test-cluster.sh standby-of`); on 17+ it synchronizes the
    /// primary's failover slots. May stop and restart this cluster to copy it, so call it
    /// before connecting to this one. Stopped and deleted on drop, like [`Cluster::private`].
    pub fn standby(&self, name: &str) -> Cluster {
        assert!(self.private, "only a private cluster can get a standby");
        let primary_dir = self.script_dir.as_deref().expect("a local cluster");
        let dir = Self::private_dir(name);
        let t = Instant::now();
        run_script(
            Some(&dir),
            &["standby-of", primary_dir.to_str().expect("UTF-8 path")],
        );
        Cluster::local_started(Some(dir), true, t)
    }

    /// Promotes this standby (`pg_ctl promote -w`): it accepts writes when this returns.
    pub fn promote(&self) {
        self.script("promote");
    }

    /// The server's major version (15, 16, ...), asked from the server.
    pub async fn major_version(&self) -> u32 {
        let c = self.admin_client("postgres").await;
        let num: String = c
            .query_one("SHOW server_version_num", &[])
            .await
            .expect("SHOW server_version_num")
            .get(0);
        num.parse::<u32>().expect("server_version_num is a number") / 10000
    }

    fn local(dir: Option<PathBuf>, private: bool) -> Cluster {
        let t = Instant::now();
        run_script(dir.as_deref(), &["start"]);
        Self::local_started(dir, private, t)
    }

    fn local_started(dir: Option<PathBuf>, private: bool, t: Instant) -> Cluster {
        // `info` needs no binaries of the cluster's own version.
        let info = parse_info(&run_script(dir.as_deref(), &["info"]));
        let port: u16 = info["PORT"].parse().expect("PORT is a number");
        let host = info["HOST"].clone();
        let (url_prefix, url_query) = split_url(&info["URL"]);
        if t.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "test cluster {} ready on port {port} in {:?}",
                info["DATA_DIR"],
                t.elapsed()
            );
        }
        Cluster {
            port,
            host,
            data_dir: PathBuf::from(&info["DATA_DIR"]),
            ssl_cert: Some(PathBuf::from(&info["SSL_CERT"])),
            log_file: Some(PathBuf::from(&info["LOG"])),
            url_prefix,
            url_query,
            script_dir: dir.or_else(|| {
                Some(
                    Path::new(&info["DATA_DIR"])
                        .parent()
                        .expect("DATA_DIR has a parent")
                        .to_path_buf(),
                )
            }),
            private,
            server_version: info.get("SERVER_VERSION").cloned().unwrap_or_default(),
            bindir: None,
        }
    }

    fn external(url: &str) -> Cluster {
        let config: tokio_postgres::Config = url
            .parse()
            .unwrap_or_else(|e| panic!("{DATABASE_URL_ENV} is not a valid URL: {e}"));
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let (url_prefix, url_query) = split_url(url);
        Cluster {
            port,
            host,
            data_dir: PathBuf::new(),
            ssl_cert: None,
            log_file: None,
            url_prefix,
            url_query,
            script_dir: None,
            private: false,
            server_version: String::new(),
            bindir: None,
        }
    }

    /// Whether this is a local cluster that the harness controls (it can be restarted).
    pub fn is_local(&self) -> bool {
        self.script_dir.is_some()
    }

    fn script(&self, cmd: &str) {
        if !self.private && cmd != "start" {
            panic!("cannot {cmd} the shared cluster, which other tests are using: use Cluster::private");
        }
        let dir = self.script_dir.as_deref().unwrap_or_else(|| {
            panic!("cannot {cmd} an external server ({DATABASE_URL_ENV}); use Cluster::private")
        });
        run_script_with(Some(dir), self.bindir.as_deref(), &[cmd]);
    }

    /// Stops the server (`pg_ctl stop -m fast`) and starts it again on the same port.
    pub fn restart(&self) {
        self.script("restart");
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`): clients are disconnected.
    pub fn stop(&self) {
        self.script("stop");
    }

    /// Kills the server without a shutdown checkpoint (`pg_ctl stop -m immediate`), as a
    /// crash would; `start` then runs crash recovery.
    pub fn crash(&self) {
        self.script("crash");
    }

    /// Starts the server again (same port, same data).
    pub fn start(&self) {
        self.script("start");
    }

    /// The superuser (`postgres`, with password) URL of database `db` on this server.
    pub fn admin_url(&self, db: &str) -> String {
        format!("{}{}{}", self.url_prefix, db, self.url_query)
    }

    /// A URL for `user`/`password` on database `db`, with this server's host, port and
    /// query parameters.
    pub fn url_for(&self, user: &str, password: &str, db: &str) -> String {
        build_url(&self.url_prefix, &self.url_query, user, password, db)
    }

    /// A superuser client on database `db`; the connection task is spawned on the current
    /// tokio runtime.
    pub async fn admin_client(&self, db: &str) -> tokio_postgres::Client {
        connect(&self.admin_url(db)).await
    }

    /// A fresh database named after the test (`hint`, sanitized, plus a unique suffix), with
    /// `sql/source_schema.sql` loaded. Dropped on drop of the `TestDb` unless the test
    /// panicked or `CDC_TEST_KEEP_DBS` is set.
    pub async fn create_db(&self, hint: &str) -> TestDb {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "t_{}_{}_{}_{:x}",
            sanitize(hint, 36),
            std::process::id(),
            next_id(),
            nanos & 0xffff
        );
        let admin = self.admin_client("postgres").await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", describe(&e)));
        drop(admin);
        let url = self.admin_url(&name);
        let client = connect(&url).await;
        client
            .batch_execute(SOURCE_SCHEMA_SQL)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "loading sql/source_schema.sql into {name}: {}",
                    describe(&e)
                )
            });
        TestDb {
            name,
            url,
            admin_url: self.admin_url("postgres"),
            cluster_url_prefix: self.url_prefix.clone(),
            cluster_url_query: self.url_query.clone(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.private {
            return;
        }
        let Some(dir) = self.script_dir.clone() else {
            return;
        };
        let mut cmd = Command::new("bash");
        cmd.arg(cluster_script())
            .arg("stop")
            .env("CDC_TEST_PG_DIR", &dir)
            .stdin(Stdio::null());
        if let Err(e) = cmd.output() {
            eprintln!("could not stop private cluster {}: {e}", dir.display());
        }
        if std::thread::panicking() {
            eprintln!(
                "keeping private cluster {} (server log: {})",
                dir.display(),
                dir.join("server.log").display()
            );
        } else {
            // Files belong to the postgres OS user, but root (or the owner) may delete them.
            let _ = fs::remove_dir_all(&dir);
            let _ = fs::remove_file(format!("{}.lock", dir.display()));
            // The `...-private` folder of these, once no other private cluster is in it
            // (remove_dir removes only an empty one).
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// `scheme://user:password@host:port/db?query` from a `split_url` prefix and query.
fn build_url(prefix: &str, query: &str, user: &str, password: &str, db: &str) -> String {
    let scheme_end = prefix.find("://").unwrap() + 3;
    let authority = &prefix[scheme_end..prefix.len() - 1];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    format!(
        "{}{}:{}@{}/{}{}",
        &prefix[..scheme_end],
        percent_encode(user),
        percent_encode(password),
        host_port,
        db,
        query
    )
}

fn parse_info(s: &str) -> std::collections::HashMap<String, String> {
    s.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Lowercase ASCII letters, digits and `_`, at most `max` characters.
fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(max);
    if out.is_empty() {
        out.push('x');
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Connects without TLS and spawns the connection task on the current tokio runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {}", redact(url), describe(&e)));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            // Expected when a test restarts the server under an open connection.
            eprintln!("harness connection closed: {e}");
        }
    });
    client
}

/// The first column of every row `sql` returns, in the order the rows come; panics with
/// the server's message and the statement if it fails.
pub async fn column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Vec<T> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{}\n{sql}", describe(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// An error with the server's message, which `tokio_postgres::Error`'s Display omits.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// The URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A database of its own for one test, on the shared (or a private) cluster.
pub struct TestDb {
    pub name: String,
    /// Superuser URL of this database.
    pub url: String,
    admin_url: String,
    cluster_url_prefix: String,
    cluster_url_query: String,
}

impl TestDb {
    /// A superuser client on this database; the connection task is spawned on the current
    /// tokio runtime.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Creates (or, if it exists, updates the password of) role `role` with LOGIN REPLICATION
    /// and returns a URL for it on this database. Grants are the caller's business.
    ///
    /// Roles are cluster-wide and outlive the database: for a name of the test's own, derive
    /// it from `self.name` (e.g. `format!("{}_worker", db.name)`); roles named `t_*` are
    /// dropped when the shared cluster next starts.
    pub async fn create_role(&self, role: &str, password: &str) -> String {
        let client = self.client().await;
        let ident = role.replace('"', "\"\"");
        let lit = password.replace('\'', "''");
        let create = format!("CREATE ROLE \"{ident}\" LOGIN REPLICATION PASSWORD '{lit}'");
        let alter = format!("ALTER ROLE \"{ident}\" LOGIN REPLICATION PASSWORD '{lit}'");
        for attempt in 0..5 {
            match client.batch_execute(&create).await {
                Ok(()) => break,
                Err(e) => {
                    let code = e.code().map(|c| c.code().to_string());
                    // 42710 duplicate_object; 23505 unique_violation when two tests race.
                    if matches!(code.as_deref(), Some("42710") | Some("23505")) {
                        match client.batch_execute(&alter).await {
                            Ok(()) => break,
                            Err(e) if attempt < 4 => {
                                eprintln!("ALTER ROLE {role}: {e}; retrying");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("ALTER ROLE {role}: {}", describe(&e)),
                        }
                    } else {
                        panic!("CREATE ROLE {role}: {}", describe(&e));
                    }
                }
            }
        }
        build_url(
            &self.cluster_url_prefix,
            &self.cluster_url_query,
            role,
            password,
            &self.name,
        )
    }

    /// Drops the database now (terminating its sessions and dropping its replication slots).
    async fn drop_now(admin_url: &str, name: &str) -> Result<(), tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::connect(admin_url, NoTls).await?;
        tokio::spawn(conn);
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await?;
        for _ in 0..50 {
            let dropped = client
                .query(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE database = $1 AND NOT active",
                    &[&name],
                )
                .await;
            let left: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                    &[&name],
                )
                .await?
                .get(0);
            if dropped.is_ok() && left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "keeping database {} of the failed test: {}",
                self.name,
                redact(&self.url)
            );
            return;
        }
        if std::env::var_os("CDC_TEST_KEEP_DBS").is_some() {
            return;
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let res = on_own_runtime(move || async move {
            tokio::time::timeout(Duration::from_secs(30), TestDb::drop_now(&admin_url, &name)).await
        });
        match res {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => eprintln!("could not drop test database {}: {e}", self.name),
            Some(Err(_)) => eprintln!("timed out dropping test database {}", self.name),
            None => eprintln!("panic while dropping test database {}", self.name),
        }
    }
}

/// Runs `f()` to its end on a tokio runtime of its own, on a thread of its own: for drops
/// and one-time set-up that may run inside a test's runtime, where blocking on another
/// future would panic. None if it panicked.
fn on_own_runtime<F, Fut, T>(f: F) -> Option<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f())
    })
    .join()
    .ok()
}

/// Polls `f` every 50 ms until it returns true; panics mentioning `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `cdc-worker` binary cargo built for this test run.
pub fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cdc-worker"))
}

/// Directory for child-process logs: `target/tmp/process-logs`.
fn log_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("process-logs");
    fs::create_dir_all(&dir).expect("create log dir");
    dir
}

/// A child process (normally `cdc-worker`) whose stdout and stderr go to a log file under
/// `target/tmp/process-logs/`. Killed (SIGKILL) on drop; if the test panicked, the log path and
/// its tail are printed.
pub struct WorkerProcess {
    child: Child,
    name: String,
    pub log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl WorkerProcess {
    /// Spawns `cdc-worker ARGS` with `envs` added to the environment (`RUST_LOG` defaults to
    /// `info`, `RUST_BACKTRACE` to 1). `name` labels the log file.
    pub fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> WorkerProcess {
        Self::spawn_program(name, &worker_bin(), args, envs)
    }

    /// Like [`WorkerProcess::spawn`] for any program.
    pub fn spawn_program(
        name: &str,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> WorkerProcess {
        let log_path = log_dir().join(format!(
            "{}-{}-{}.log",
            sanitize(name, 60),
            std::process::id(),
            next_id()
        ));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        WorkerProcess {
            child,
            name: name.to_string(),
            log_path,
            exit: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: libc::c_int) {
        if self.exit.is_some() {
            return;
        }
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (so the
        // pid cannot have been reused).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// SIGKILL, then reap it.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if self.exit.is_none() {
            self.exit = Some(self.child.wait().expect("wait for killed child"));
        }
    }

    /// SIGTERM (graceful shutdown request); does not wait.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGINT; does not wait.
    pub fn sigint(&self) {
        self.signal(libc::SIGINT);
    }

    /// The exit status if it has exited (non-blocking).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits up to `timeout` for it to exit; panics (with the log's tail) if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} (pid {}) did not exit within {timeout:?}; log {}:\n{}",
                    self.name,
                    self.pid(),
                    self.log_path.display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it has written so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut f = match File::open(&self.log_path) {
            Ok(f) => f,
            Err(e) => return format!("(cannot open log: {e})"),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the log contains `needle`; panics with the log's tail after `timeout`.
    pub async fn wait_for_log(&self, timeout: Duration, needle: &str) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if Instant::now() >= deadline {
                panic!(
                    "{}: no {needle:?} in the log within {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log_path.display(),
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address its metrics listener bound, as it logged it (`serving /metrics ...
    /// addr=127.0.0.1:PORT`, text or JSON logs): start the worker with
    /// `CDC_METRICS_ADDR=127.0.0.1:0` ([`METRICS_ANY_PORT`]) so no two listeners race for
    /// a port. Waits up to 30 s for the line.
    pub async fn metrics_addr(&self) -> String {
        self.wait_for_log(Duration::from_secs(30), "serving /metrics")
            .await;
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .expect("the line just seen");
        let addr = line
            .split_once("addr=")
            .or_else(|| line.split_once("\"addr\":\""))
            .map(|(_, rest)| {
                rest.split(|ch: char| ch.is_whitespace() || ch == '"')
                    .next()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        assert!(
            addr.parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.port() != 0),
            "no bound address in {line:?}"
        );
        addr.to_string()
    }
}

/// `CDC_METRICS_ADDR` for a worker whose listener picks its own port; read it back with
/// [`WorkerProcess::metrics_addr`].
pub const METRICS_ANY_PORT: &str = "127.0.0.1:0";

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let was_running = self.exit.is_none();
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (pid {}, {}) log {} (last 40 lines):\n{}\n---",
                self.name,
                self.pid(),
                if was_running {
                    "killed at test end".to_string()
                } else {
                    format!("{:?}", self.exit)
                },
                self.log_path.display(),
                self.log_tail(40)
            );
        }
    }
}

// ---- Running the worker against a TestDb ----------------------------------------------

impl TestDb {
    /// The worker's slot and publication for this database. Slots are cluster-wide, so each
    /// test's worker gets its own, named after its database.
    pub fn slot(&self) -> String {
        self.name.to_lowercase()
    }

    /// The environment that points a worker at this database: its own slot and
    /// publication, no metrics listener (tests run in parallel), debug logs.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.url.clone()),
            ("CDC_SLOT".into(), self.slot()),
            ("CDC_PUBLICATION".into(), self.slot()),
            ("CDC_METRICS_ADDR".into(), String::new()),
            ("CDC_LOG".into(), "info,cdc_worker=debug".into()),
        ]
    }
}

/// A worker command that ran to its end.
pub struct Finished {
    pub success: bool,
    pub code: Option<i32>,
    pub output: String,
}

impl WorkerProcess {
    /// Starts `cdc-worker ARGS` against `db`; `extra` overrides the defaults of
    /// [`TestDb::worker_env`].
    pub fn start(db: &TestDb, args: &[&str], extra: &[(&str, &str)]) -> WorkerProcess {
        let mut env = db.worker_env();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        WorkerProcess::spawn(&format!("{}-{}", db.name, args.join("-")), args, &env)
    }

    /// Runs `cdc-worker ARGS` against `db` to its end (at most two minutes).
    pub fn run_to_end(db: &TestDb, args: &[&str], extra: &[(&str, &str)]) -> Finished {
        let mut p = WorkerProcess::start(db, args, extra);
        let status = p.wait_exit(Duration::from_secs(120));
        Finished {
            success: status.success(),
            code: status.code(),
            output: p.log(),
        }
    }

    /// Everything it has written so far.
    pub fn output(&self) -> String {
        self.log()
    }
}

// ---- Source data and the summary it should produce ------------------------------------

const SUMMARY_QUERY: &str = include_str!("../../sql/summary_query.sql");

/// Rows on which the summary table and the summary query disagree (both directions).
pub async fn drift(c: &tokio_postgres::Client) -> i64 {
    let query = SUMMARY_QUERY
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("$1", "'USD'");
    let sql = format!(
        "WITH want AS (SELECT product_id, store_id, title, price, active, inventory_available, \
         primary_image_url FROM ({query}) q), \
         have AS (SELECT \"productId\", \"storeId\", title, price, active, \"inventoryAvailable\", \
         \"primaryImageUrl\" FROM \"ProductSummary\") \
         SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM have) a) + \
                (SELECT count(*) FROM (SELECT * FROM have EXCEPT SELECT * FROM want) b)"
    );
    c.query_one(&sql, &[]).await.unwrap().get(0)
}

/// `cdc-worker reconcile --json` against `db` (`extra` overrides its environment): the
/// report (the JSON object on stdout, after the log lines on stderr) and the run.
pub fn reconcile_report(db: &TestDb, extra: &[(&str, &str)]) -> (serde_json::Value, Finished) {
    let out = WorkerProcess::run_to_end(db, &["reconcile", "--json"], extra);
    (json_report(&out.output), out)
}

/// The slot's `confirmed_flush_lsn` and the worker's stored checkpoint, as bytes from 0/0.
pub async fn slot_and_checkpoint(c: &tokio_postgres::Client, slot: &str) -> (u64, u64) {
    let row = c
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0')::int8, \
                    (SELECT (lsn - '0/0')::int8 FROM cdc_worker.checkpoint WHERE slot_name = $1) \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
}

pub async fn wait_converged(c: &tokio_postgres::Client, what: &str) {
    wait_until(Duration::from_secs(10), what, || async {
        drift(c).await == 0
    })
    .await;
}

/// Products p{from}..=p{to} in stores s{n % 3}, each with a USD price, two inventory rows
/// and an image.
pub async fn seed(c: &tokio_postgres::Client, from: i32, to: i32) {
    c.batch_execute(&format!(
        "INSERT INTO \"Product\"(id, \"storeId\", title) SELECT 'p'||g, 's'||(g % 3), 'Product '||g FROM generate_series({from},{to}) g;
         INSERT INTO \"Price\"(id, \"productId\", currency, amount) SELECT 'usd'||g, 'p'||g, 'USD', 100*g FROM generate_series({from},{to}) g;
         INSERT INTO \"Inventory\"(id, \"productId\", \"locationId\", quantity, reserved) SELECT 'inv'||g||'-'||l, 'p'||g, 'l'||l, 10, 3 FROM generate_series({from},{to}) g, generate_series(1,2) l;
         INSERT INTO \"ProductImage\"(id, \"productId\", url, position) SELECT 'img'||g, 'p'||g, 'https://cdn/'||g||'.jpg', 1 FROM generate_series({from},{to}) g;"
    ))
    .await
    .unwrap();
}

pub async fn summary_of(c: &tokio_postgres::Client, product: &str) -> Option<tokio_postgres::Row> {
    c.query_opt(
        "SELECT \"storeId\", title, price, active, \"inventoryAvailable\", \"primaryImageUrl\", \"updatedAt\", id \
         FROM \"ProductSummary\" WHERE \"productId\" = $1",
        &[&product],
    )
    .await
    .unwrap()
}

// ---- Prepared test databases ----------------------------------------------------------

impl Cluster {
    /// A fresh database ([`Cluster::create_db`]) with products p1..=p{products} ([`seed`]),
    /// and a client on it. Not set up: see [`Cluster::prepared_db`].
    pub async fn seeded_db(&self, hint: &str, products: i32) -> (TestDb, tokio_postgres::Client) {
        let db = self.create_db(hint).await;
        let c = db.client().await;
        seed(&c, 1, products).await;
        (db, c)
    }

    /// [`Cluster::seeded_db`], then `cdc-worker setup` ([`TestDb::setup`]): the summary is
    /// backfilled and the slot exists; no worker runs yet.
    pub async fn prepared_db(&self, hint: &str, products: i32) -> (TestDb, tokio_postgres::Client) {
        let (db, c) = self.seeded_db(hint, products).await;
        db.setup(&[], &[]);
        (db, c)
    }
}

impl TestDb {
    /// Runs `cdc-worker ARGS setup` against this database to its end and panics with its
    /// output unless it succeeded. `args` are the global options (`--config PATH`), `env` as
    /// for [`WorkerProcess::start`]. Returns the run, for what a test checks in its output.
    pub fn setup(&self, args: &[&str], env: &[(&str, &str)]) -> Finished {
        let args: Vec<&str> = args.iter().copied().chain(["setup"]).collect();
        let out = WorkerProcess::run_to_end(self, &args, env);
        assert!(out.success, "setup failed:\n{}", out.output);
        out
    }

    /// `target/tmp/<database name><suffix>`: a path of this test's own (the database name is
    /// unique) for a file or directory it hands the worker.
    pub fn tmp_path(&self, suffix: &str) -> PathBuf {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}{suffix}", self.name))
    }

    /// Writes `toml` to a config file of this test's own (`target/tmp/<database name>.toml`)
    /// and returns its path, for `--config`.
    pub fn config_file(&self, toml: &str) -> String {
        let path = self.tmp_path(".toml");
        fs::write(&path, toml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.display().to_string()
    }
}

// ---- The worker's state and reports --------------------------------------------------------

/// The slot's confirmed flush LSN (as a number), if the slot exists.
pub async fn slot_confirmed(c: &tokio_postgres::Client, slot: &str) -> Option<u64> {
    c.query_opt(
        "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .map(|r| r.get::<_, i64>(0) as u64)
}

/// A logical slot a test creates outside its own database (e.g. in `postgres`), where
/// dropping the test database would not drop it: dropped when this guard is, also when
/// the test panics, so it never holds WAL for later runs.
pub struct SlotGuard {
    admin_url: String,
    db: String,
    pub name: String,
}

impl SlotGuard {
    /// Creates the pgoutput slot `name` in database `db` of `cluster`.
    pub async fn create(cluster: &Cluster, db: &str, name: &str) -> SlotGuard {
        cluster
            .admin_client(db)
            .await
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&name],
            )
            .await
            .unwrap_or_else(|e| panic!("creating slot {name} in {db}: {}", describe(&e)));
        SlotGuard {
            admin_url: cluster.admin_url("postgres"),
            db: db.to_string(),
            name: name.to_string(),
        }
    }
}

impl SlotGuard {
    /// Whether the slot is still there, in the database it was created in (a worker must
    /// never drop or use a slot of its name that another database owns).
    pub async fn is_there(&self) -> bool {
        let (c, conn) = tokio_postgres::connect(&self.admin_url, NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND database = $2)",
            &[&self.name, &self.db],
        )
        .await
        .unwrap()
        .get(0)
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let res = on_own_runtime(move || async move {
            let (c, conn) = tokio_postgres::connect(&url, NoTls).await?;
            tokio::spawn(conn);
            c.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&name],
            )
            .await
        });
        if !matches!(res, Some(Ok(_))) {
            eprintln!("could not drop slot {}: {res:?}", self.name);
        }
    }
}

/// How many replication slots are named `slot` (of any database): 0 or 1.
pub async fn slot_count(c: &tokio_postgres::Client, slot: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .get(0)
}

/// The tags waiting in the worker's outbox (`cdc_worker.outbox`), sorted, repeats included.
pub async fn outbox_tags(c: &tokio_postgres::Client) -> Vec<String> {
    column(
        c,
        "SELECT unnest(tags) AS tag FROM cdc_worker.outbox ORDER BY tag",
    )
    .await
}

/// How many outbox tags some endpoint has not been served yet: rows above the lowest
/// delivery cursor (`cdc_worker.outbox_cursor`). Delivered rows stay in the outbox until
/// every endpoint has them and the next trim runs, so the table's size says nothing.
pub async fn outbox_pending(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(tag_count), 0)::int8 FROM cdc_worker.outbox WHERE id > \
         coalesce((SELECT min(delivered_id) FROM cdc_worker.outbox_cursor), 0)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// How many rows the summary table (`"ProductSummary"`) has.
pub async fn summary_rows(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM \"ProductSummary\"", &[])
        .await
        .unwrap()
        .get(0)
}

/// The report a `--json` command (`reconcile --json`) prints among the log lines of its
/// output: the pretty-printed object from a line `{` to the next line `}`. Panics with the
/// output if there is none.
pub fn json_report(output: &str) -> serde_json::Value {
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.iter().position(|l| *l == "{");
    let end = start.and_then(|s| lines[s..].iter().position(|l| *l == "}").map(|n| s + n));
    let (Some(start), Some(end)) = (start, end) else {
        panic!("no JSON report in the output:\n{output}");
    };
    serde_json::from_str(&lines[start..=end].join("\n"))
        .unwrap_or_else(|e| panic!("no JSON report in the output ({e}):\n{output}"))
}

// ---- The worker's metrics listener (CDC_METRICS_ADDR) --------------------------------------

/// GET `http://{addr}{path}` with `http`: the status and the body.
pub async fn scrape(http: &reqwest::Client, addr: &str, path: &str) -> (u16, String) {
    let resp = http
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The body of `http://{addr}/metrics`, whatever the status.
pub async fn metrics_text(addr: &str) -> String {
    scrape(&reqwest::Client::new(), addr, "/metrics").await.1
}

/// The value of the first sample in `metrics` whose line starts with `series`: a name and a
/// space (`"cdc_leader "`), a name and its labels, or a name's prefix.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The value of the unlabelled metric `name` at `http://{addr}/metrics`; panics with the
/// metrics if there is none.
pub async fn metric(addr: &str, name: &str) -> f64 {
    let text = metrics_text(addr).await;
    metric_value(&text, &format!("{name} "))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Waits up to `timeout` until the sample `series` (as for [`metric_value`]) at
/// `http://{addr}/metrics` is `want`.
pub async fn wait_metric(addr: &str, series: &str, want: f64, timeout: Duration) {
    wait_until(
        timeout,
        &format!("{series} is {want} at http://{addr}/metrics"),
        || async { metric_value(&metrics_text(addr).await, series) == Some(want) },
    )
    .await;
}

// ---- A TCP proxy between the worker and Postgres ----------------------------------------

/// Forwards TCP connections on 127.0.0.1:`port` to a target port that can change
/// (`retarget`, e.g. to a promoted standby); `cut()` closes every open connection, as a
/// network failure would; `freeze()` stops forwarding on every open one without closing
/// anything (a cut without RST: the kernel still acknowledges, nothing passes).
pub struct Proxy {
    pub port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    frozen: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Proxy {
    /// Listens on a free port (spawned on the current tokio runtime).
    pub async fn start(target: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let (freeze_tx, freeze_rx) = tokio::sync::watch::channel(false);
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(target));
        let to = target.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = listener.accept().await.unwrap();
                let mut cut = rx.clone();
                cut.mark_unchanged();
                let mut frozen = freeze_rx.clone();
                let port = to.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        return;
                    };
                    let froze = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        _ = cut.changed() => false,
                        f = frozen.wait_for(|f| *f) => f.is_ok(),
                    };
                    if froze {
                        // Hold both sockets open, forwarding nothing, until cut.
                        let _ = cut.changed().await;
                    }
                });
            }
        });
        Proxy {
            port,
            target,
            generation: std::sync::Arc::new(tx),
            frozen: std::sync::Arc::new(freeze_tx),
        }
    }

    /// Closes every open connection; new ones are accepted at once.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Open connections stop passing anything, and stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// The network is back: frozen connections are closed (their peers see the end at
    /// last), new ones pass again.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
        self.cut();
    }

    /// New connections go to `port`; open ones are cut.
    pub fn retarget(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
        self.cut();
    }

    /// `url` with its port (`:PORT/`) replaced by the proxy's.
    pub fn url(&self, url: &str, port: u16) -> String {
        let via = url.replacen(&format!(":{port}/"), &format!(":{}/", self.port), 1);
        assert_ne!(via, url, "no :{port}/ in the URL");
        via
    }
}

/// The directory of the PostgreSQL server binaries the clusters run, as
/// scripts/test-cluster.sh picks it (the single definition: $PG_BINDIR, else the newest
/// /usr/lib/postgresql/*/bin, ...).
pub fn pg_bindir() -> PathBuf {
    PathBuf::from(run_script(None, &["bindir"]).trim())
}
