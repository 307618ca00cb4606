//! Real parts for the storefront tests: a database with a storefront's rows, `next start`
//! instances of `nextjs/`, a private `redis-server`, and reading values out of the rendered
//! HTML. Use with `mod nextjs_support;` next to `mod support;` (which this module uses as
//! `crate::support`).
#![allow(dead_code)] // each test binary uses a different part

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::{
    kill_group, revalidate_env, spawn_on_free_port, wait_listening, wait_until, Cluster, TestDb,
    WorkerProcess, STREAMING,
};

pub const SECRET: &str = "e2e-secret";

/// Store `store-a` with p1 "Alpha" (USD 1299, 10 on hand and 3 reserved: 7 available) and p2
/// "Beta" (USD 500, 4 available), without images.
pub const TWO_PRODUCTS: &str = "INSERT INTO \"Product\"(id, \"storeId\", title) VALUES ('p1', 'store-a', 'Alpha'), ('p2', 'store-a', 'Beta');
     INSERT INTO \"Price\" VALUES ('u1', 'p1', 'USD', 1299), ('u2', 'p2', 'USD', 500);
     INSERT INTO \"Inventory\" VALUES ('i1', 'p1', 'l1', 10, 3), ('i2', 'p2', 'l1', 4, 0);";

/// A database on the shared cluster with the storefront's rows `sql` (e.g. [`TWO_PRODUCTS`]),
/// set up for the worker (`cdc-worker setup`, no worker running), and a client on it.
pub async fn storefront_db(hint: &str, sql: &str) -> (TestDb, tokio_postgres::Client) {
    let db = Cluster::shared().create_db(hint).await;
    let c = db.client().await;
    c.batch_execute(sql).await.unwrap();
    db.setup(&[], &[]);
    (db, c)
}

pub fn nextjs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("nextjs")
}

/// `packages/next`, the `@cdc-worker/next` package the storefront installs a copy of.
pub fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packages/next")
}

/// Newest modification time of the files under `dir`, `node_modules` left out.
fn newest_change(dir: &Path) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let at = if meta.is_dir() {
            if entry.file_name() == "node_modules" {
                continue;
            }
            newest_change(&path)
        } else {
            meta.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(at);
    }
    newest
}

/// `npm ci && npm run build` unless a build is already there (the Makefile builds first)
/// that is newer than every file of the package: `npm ci` installs a copy of
/// `packages/next`, so a package changed since would otherwise be tested in its old form.
/// Once per test process, under a file lock (`target/tmp/nextjs-build.lock`): test
/// binaries may run at once, and two `npm ci` in one directory break each other.
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nextjs-build.lock");
        let lock = std::fs::File::create(&lock_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", lock_path.display()));
        // SAFETY: flock(2) on a descriptor we own; released when `lock` is closed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}", lock_path.display());
        let dir = nextjs_dir();
        let built = std::fs::metadata(dir.join(".next/BUILD_ID")).and_then(|m| m.modified());
        if let Ok(built) = built {
            if dir.join("node_modules").exists() && newest_change(&package_dir()) <= built {
                return;
            }
        }
        for args in [
            &["ci", "--no-audit", "--no-fund"][..],
            &["run", "build"][..],
        ] {
            let status = Command::new("npm")
                .args(args)
                .current_dir(&dir)
                .status()
                .expect("npm is installed");
            assert!(status.success(), "npm {args:?} failed in {}", dir.display());
        }
    });
}

/// A `next start` of the storefront; its whole process group is killed on drop.
pub struct NextServer {
    child: Child,
    pub base: String,
    pub log_path: PathBuf,
}

impl Drop for NextServer {
    fn drop(&mut self) {
        // `next start` runs the server in a child process: kill the whole group, or that
        // child outlives the test.
        kill_group(&mut self.child);
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            eprintln!("--- next start {} log:\n{log}\n---", self.base);
        }
    }
}

/// Starts `next start` on a free port with the database, the signing secret and `extra`
/// environment (e.g. `REDIS_URL`), and returns once it listens there (on another port if
/// the first was taken: [`spawn_on_free_port`]). See [`NextServer::wait_ready`] for when it
/// answers.
pub fn start_next(database_url: &str, extra: &[(&str, &str)]) -> NextServer {
    use std::os::unix::process::CommandExt;
    let log_path =
        |port: u16| Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("next-{port}.log"));
    let spawn = |port: u16| {
        let log = std::fs::File::create(log_path(port)).unwrap();
        let mut cmd = Command::new("npx");
        // Its own process group: `next start` runs the server in a child process, and the
        // port's owner is checked (and killed) by group.
        cmd.process_group(0)
            .args(["next", "start", "-p", &port.to_string(), "-H", "127.0.0.1"])
            .current_dir(nextjs_dir())
            .env("DATABASE_URL", database_url)
            .env("CDC_REVALIDATE_SECRET", SECRET)
            // The shared cache is on only where a test asks for it.
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().expect("starting next")
    };
    let (child, port) = spawn_on_free_port("next start", Duration::from_secs(90), spawn, |port| {
        std::fs::read_to_string(log_path(port)).unwrap_or_default()
    });
    NextServer {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log_path: log_path(port),
    }
}

impl NextServer {
    /// Waits until `path` answers 200.
    pub async fn wait_ready(&self, http: &reqwest::Client, path: &str) {
        let url = format!("{}{path}", self.base);
        wait_until(Duration::from_secs(60), "next start answers", || async {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// `cdc-worker run` delivering its tags to `next`'s /api/revalidate only, once it streams
/// (a commit made while it is still starting would time the start, not the pipeline).
pub async fn worker_telling(db: &TestDb, next: &NextServer) -> WorkerProcess {
    let endpoint = next.url("/api/revalidate");
    let worker = WorkerProcess::start(db, &["run"], &revalidate_env(&endpoint, SECRET));
    worker
        .wait_for_log(Duration::from_secs(30), STREAMING)
        .await;
    worker
}

/// GET that must answer 2xx; returns the body.
pub async fn get(http: &reqwest::Client, url: &str) -> String {
    let resp = http.get(url).send().await.unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.text().await.unwrap()
}

/// `data-value` of `field` inside the article of `product` in the rendered HTML.
pub fn field(html: &str, product: &str, field: &str) -> Option<String> {
    let start = html.find(&format!("data-product-id=\"{product}\""))?;
    let rest = &html[start..];
    let end = rest.find("</article>").unwrap_or(rest.len());
    let article = &rest[..end];
    let f = article.find(&format!("data-field=\"{field}\""))?;
    let v = article[f..].find("data-value=\"")? + f + "data-value=\"".len();
    let len = article[v..].find('"')?;
    Some(article[v..v + len].to_string())
}

/// Polls `url` until `product`'s `name` field reads `want` or `limit` passes; returns how
/// long it took after `since`, or None.
pub async fn time_until_field(
    http: &reqwest::Client,
    url: &str,
    product: &str,
    name: &str,
    want: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    loop {
        let html = get(http, url).await;
        if field(&html, product, name).as_deref() == Some(want) {
            return Some(since.elapsed());
        }
        if since.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A private `redis-server` on a free port: no persistence, never the system service.
/// Killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("redis-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a directory for redis-server");
        let path = dir.path().to_path_buf();
        let (child, port) = spawn_on_free_port(
            "redis-server",
            Duration::from_secs(10),
            |port| spawn_redis(&path, port),
            |_| std::fs::read_to_string(path.join("redis.log")).unwrap_or_default(),
        );
        RedisServer {
            child: Some(child),
            port,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: Redis gone without warning.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    /// Starts it again on the same port (empty: no persistence); panics if another
    /// process took the port meanwhile.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = spawn_redis(self.dir.path(), self.port);
        if let Err(why) = wait_listening(&mut child, self.port, Duration::from_secs(10)) {
            kill_group(&mut child);
            panic!("redis-server restarted on {}: {why}", self.port);
        }
        self.child = Some(child);
    }
}

/// `redis-server` on `port` with its files in `dir`, in a process group of its own.
fn spawn_redis(dir: &Path, port: u16) -> Child {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(dir.join("redis.log")).unwrap();
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}); install it: apt-get install redis-server")
        })
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
