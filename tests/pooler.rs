//! A transaction-mode pooler (PgBouncer) between the worker and Postgres lends one backend
//! to whichever client needs it next, so a session advisory lock no longer means
//! leadership. The worker must refuse it with a message that says what to do, before it
//! changes anything. Uses a real `pgbouncer` (Debian package `pgbouncer`).

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{kill_group, slot_count, spawn_on_free_port, wait_until, Cluster, WorkerProcess};

struct PgBouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // runuser forks pgbouncer rather than exec'ing it: end the whole process group.
        kill_group(&mut self.child);
    }
}

/// Starts pgbouncer in transaction mode in front of the shared cluster, as the `postgres`
/// OS user when we are root (it refuses to run as root).
fn pgbouncer(cluster: &Cluster, user: &str, password: &str) -> PgBouncer {
    let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("pgbouncer is not installed (Debian: apt-get install pgbouncer)");
    // Removed with the PgBouncer.
    let tmp = tempfile::Builder::new()
        .prefix("pgbouncer-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(
        dir.join("users.txt"),
        format!("\"{user}\" \"{password}\"\n"),
    )
    .unwrap();
    let is_root = unsafe { libc::geteuid() } == 0;
    let spawn = |port: u16| {
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
                 listen_port = {port}\nunix_socket_dir =\nauth_type = plain\nauth_file = {}\n\
                 pool_mode = transaction\nlogfile = {}\nignore_startup_parameters = extra_float_digits\n",
                cluster.port,
                dir.join("users.txt").display(),
                dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        if is_root {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let mut cmd = if is_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", bin]);
            c
        } else {
            Command::new(bin)
        };
        cmd.process_group(0)
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pgbouncer")
    };
    let (child, port) = spawn_on_free_port("pgbouncer", Duration::from_secs(20), spawn, |_| {
        std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
    });
    PgBouncer {
        child,
        port,
        _dir: tmp,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_pooler_is_refused_before_anything_changes() {
    let cluster = Cluster::shared();
    let (db, c) = cluster.seeded_db("pooler", 3).await;
    // The worker refuses before it needs any privilege, so a bare login role will do.
    let role = format!("{}_bouncer", db.name);
    let direct = db.create_role(&role, "bouncer-pw").await;
    let bouncer = pgbouncer(cluster, &role, "bouncer-pw");
    let via_pooler = direct.replacen(
        &format!(":{}/", cluster.port),
        &format!(":{}/", bouncer.port),
        1,
    );
    assert_ne!(via_pooler, direct);
    wait_until(Duration::from_secs(10), "pgbouncer to accept", || async {
        tokio_postgres::connect(&via_pooler, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    // Another client of the same pool, busy the whole time (as the worker's own monitor
    // is): the probe must not be fooled by backends changing hands under it.
    let (noise, conn) = tokio_postgres::connect(&via_pooler, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let noise =
        tokio::spawn(
            async move { while noise.simple_query("SELECT pg_sleep(0.002)").await.is_ok() {} },
        );

    for (what, url) in [
        ("through pgbouncer", via_pooler.clone()),
        (
            "with Prisma's pgbouncer=true",
            format!("{direct}?pgbouncer=true"),
        ),
    ] {
        for cmd in ["setup", "run"] {
            let out = WorkerProcess::run_to_end(&db, &[cmd], &[("DATABASE_URL", &url)]);
            assert_eq!(out.code, Some(2), "{cmd} {what}:\n{}", out.output);
            assert!(
                out.output.contains("connection pooler") || out.output.contains("PgBouncer"),
                "{cmd} {what} names the problem:\n{}",
                out.output
            );
            assert!(
                out.output.contains("direct connection"),
                "and the fix:\n{}",
                out.output
            );
        }
    }
    noise.abort();
    // Nothing was created.
    assert_eq!(slot_count(&c, &db.slot()).await, 0);
}
