//! Real parts for the storefront tests: `next start` instances of `nextjs/`, a private
//! `redis-server`, and reading values out of the rendered HTML. Use with
//! `mod nextjs_support;` next to `mod support;`.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, wait_until, TestDb, WorkerProcess};

pub const SECRET: &str = "e2e-secret";

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
pub fn ensure_built() {
    // The tests of one binary run on parallel threads: one build at a time.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
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
        // SAFETY: kill(2) on the process group of our own, not yet reaped, child.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            eprintln!("--- next start {} log:\n{log}\n---", self.base);
        }
    }
}

/// Starts `next start` on a free port with the database, the signing secret and `extra`
/// environment (e.g. `REDIS_URL`). Does not wait for it: see [`NextServer::wait_ready`].
pub fn start_next(database_url: &str, extra: &[(&str, &str)]) -> NextServer {
    let port = free_port();
    let log_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("next-{port}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("npx");
    cmd.process_group(0)
        .args(["next", "start", "-p", &port.to_string(), "-H", "127.0.0.1"])
        .current_dir(nextjs_dir())
        .env("DATABASE_URL", database_url)
        .env("CDC_REVALIDATE_SECRET", SECRET)
        // The shared cache is on only where a test asks for it.
        .env_remove("REDIS_URL")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("starting next");
    NextServer {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log_path,
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
    let worker = WorkerProcess::start(
        db,
        &["run"],
        &[
            ("CDC_REVALIDATE_URLS", endpoint.as_str()),
            ("CDC_REVALIDATE_SECRET", SECRET),
        ],
    );
    worker
        .wait_for_log(Duration::from_secs(30), "streaming")
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
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = free_port();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = RedisServer {
            child: None,
            port,
            dir,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it: apt-get install redis-server")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: Redis gone without warning.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
