//! Tests of the test harness itself (tests/support): the cluster, test databases, roles,
//! TLS, private clusters that restart, child processes, and the shared helpers' parsers and
//! revalidation endpoint.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::{wait_until, Answer, Cluster, Endpoint, WorkerProcess};

async fn count_products(c: &tokio_postgres::Client) -> i64 {
    c.query_one(r#"SELECT count(*) FROM "Product""#, &[])
        .await
        .unwrap()
        .get(0)
}

async fn setting(c: &tokio_postgres::Client, name: &str) -> String {
    c.query_one("SELECT setting FROM pg_settings WHERE name = $1", &[&name])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn test_db_has_logical_wal_and_the_source_schema() {
    let db = Cluster::shared().create_db("Schema check!").await;
    assert!(db.name.starts_with("t_schema_check__"), "{}", db.name);
    let c = db.client().await;
    assert_eq!(setting(&c, "wal_level").await, "logical");
    let current: String = c
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, db.name);
    for table in ["Product", "ProductImage", "Inventory", "Price"] {
        let found: Option<String> = c
            .query_one("SELECT to_regclass($1)::text", &[&format!("\"{table}\"")])
            .await
            .unwrap()
            .get(0);
        assert!(found.is_some(), "table {table} missing");
    }
}

#[tokio::test]
async fn local_cluster_has_the_promised_settings() {
    let cluster = Cluster::shared();
    if !cluster.is_local() {
        support::skip(
            "external_server",
            "the server of CDC_TEST_DATABASE_URL is not a local cluster",
        );
        return;
    }
    let c = cluster.admin_client("postgres").await;
    let num = |s: String| s.parse::<u32>().unwrap();
    assert!(num(setting(&c, "max_replication_slots").await) >= 100);
    assert!(num(setting(&c, "max_wal_senders").await) >= 100);
    assert!(num(setting(&c, "max_connections").await) >= 300);
    assert_eq!(setting(&c, "fsync").await, "off");
    assert_eq!(setting(&c, "ssl").await, "on");
    assert_eq!(setting(&c, "password_encryption").await, "scram-sha-256");
    assert!(cluster.data_dir.join("PG_VERSION").exists());
    assert_eq!(
        cluster.admin_url("x"),
        format!(
            "postgresql://postgres:cdc-test-password@127.0.0.1:{}/x",
            cluster.port
        )
    );
}

#[tokio::test]
async fn two_test_dbs_are_distinct() {
    let cluster = Cluster::shared();
    let a = cluster.create_db("distinct").await;
    let b = cluster.create_db("distinct").await;
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);
    let ca = a.client().await;
    let cb = b.client().await;
    ca.execute(
        r#"INSERT INTO "Product" ("id", "storeId", "title") VALUES ('p1', 's1', 'only in a')"#,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        (count_products(&ca).await, count_products(&cb).await),
        (1, 0)
    );
}

#[tokio::test]
async fn test_db_is_dropped_with_its_slots() {
    let cluster = Cluster::shared();
    let db = cluster.create_db("dropped").await;
    let name = db.name.clone();
    db.client()
        .await
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&format!("{name}_slot")],
        )
        .await
        .unwrap();
    drop(db);
    let admin = cluster.admin_client("postgres").await;
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1) \
                  + (SELECT count(*) FROM pg_replication_slots WHERE database = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "database {name} or its slot survived the drop");
}

#[tokio::test]
async fn created_role_logs_in_with_its_password_and_can_replicate() {
    let db = Cluster::shared().create_db("role").await;
    let role = format!("{}_worker", db.name);
    let url = db.create_role(&role, "s3cret p@ss'word").await;
    assert!(url.contains(&db.name));
    // Creating it again (e.g. a rerun) updates it instead of failing.
    let url = db.create_role(&role, "s3cret p@ss'word").await;
    let c = support::connect(&url).await;
    let (user, is_super, can_repl): (String, bool, bool) = {
        let r = c
            .query_one(
                "SELECT current_user::text, rolsuper, rolreplication FROM pg_roles \
                 WHERE rolname = current_user",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        (user.as_str(), is_super, can_repl),
        (role.as_str(), false, true)
    );
    // REPLICATION is enough to create a logical slot (dropped with the database).
    c.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&format!("{}_s", db.name)],
    )
    .await
    .unwrap();
    // A wrong password is refused (scram-sha-256 on TCP, not trust).
    let bad = url.replace("s3cret", "wrong");
    assert!(tokio_postgres::connect(&bad, tokio_postgres::NoTls)
        .await
        .is_err());
}

fn tls_connector(root_pem: &Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(root_pem).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[tokio::test]
async fn tls_with_sslmode_require() {
    let cluster = Cluster::shared();
    let Some(cert) = &cluster.ssl_cert else {
        support::skip(
            "external_server",
            "the certificate of the server of CDC_TEST_DATABASE_URL is not known here",
        );
        return;
    };
    let db = cluster.create_db("tls").await;
    let url = format!("{}?sslmode=require", db.url);
    // From Rust, with rustls trusting the cluster's self-signed certificate (so this also
    // proves the certificate names 127.0.0.1).
    let (client, conn) = tokio_postgres::connect(&url, tls_connector(cert))
        .await
        .expect("TLS connection");
    tokio::spawn(conn);
    let (ssl, version): (bool, String) = {
        let r = client
            .query_one(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(ssl);
    assert!(version.starts_with("TLS"), "{version}");
    // And from libpq, the way a user would, when psql is installed.
    match Command::new("psql")
        .args([
            &url,
            "-XAtc",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
        }
        Err(e) => support::skip("psql", &format!("psql cannot run: {e}")),
    }
}

#[tokio::test]
async fn private_cluster_survives_restart_and_crash() {
    let cluster = Cluster::private("restart test");
    assert_ne!(cluster.port, Cluster::shared().port);
    let db = cluster.create_db("restart").await;
    let c = db.client().await;
    c.execute(
        r#"INSERT INTO "Product" ("id", "storeId", "title") VALUES ('p1', 's1', 'kept')"#,
        &[],
    )
    .await
    .unwrap();
    let port = cluster.port;

    cluster.restart();
    // The old session is gone; a new one on the same port sees the committed row.
    assert!(c.query_one("SELECT 1", &[]).await.is_err());
    let c = db.client().await;
    assert_eq!(count_products(&c).await, 1);

    cluster.stop();
    assert!(tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .is_err());
    cluster.start();
    let c = db.client().await;
    c.execute(
        r#"INSERT INTO "Product" ("id", "storeId", "title") VALUES ('p2', 's1', 'kept too')"#,
        &[],
    )
    .await
    .unwrap();

    cluster.crash();
    cluster.start();
    let c = db.client().await;
    assert_eq!(count_products(&c).await, 2);
    assert_eq!(cluster.port, port);
}

#[tokio::test]
async fn worker_process_signals_and_logs() {
    let sh = Path::new("/bin/sh");
    let script = "echo started; trap 'echo got TERM; exit 7' TERM; while :; do sleep 0.05; done";
    let mut p = WorkerProcess::spawn_program("sh-term", sh, &["-c", script], &[("X", "1")]);
    p.wait_for_log(Duration::from_secs(10), "started").await;
    assert!(p.is_running());
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(7));
    assert!(p.log().contains("got TERM"), "{}", p.log());
    assert!(p.log_path.starts_with(env!("CARGO_TARGET_TMPDIR")));

    let mut p = WorkerProcess::spawn_program(
        "sh-kill",
        sh,
        &["-c", "echo $X; sleep 30"],
        &[("X", "env-ok")],
    );
    p.wait_for_log(Duration::from_secs(10), "env-ok").await;
    p.kill9();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(p.wait_exit(Duration::from_secs(1)).signal(), Some(9));

    // The real binary is built and runs (`--help` succeeds both for the stub and for clap).
    assert!(support::worker_bin().exists());
    let mut w = WorkerProcess::spawn("worker-help", &["--help"], &[]);
    assert!(
        w.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        w.log()
    );
}

#[tokio::test]
async fn wait_until_polls_until_true() {
    let start = std::time::Instant::now();
    wait_until(Duration::from_secs(5), "time passes", || async move {
        start.elapsed() > Duration::from_millis(120)
    })
    .await;
}

#[test]
fn json_report_is_the_object_among_the_log_lines() {
    let output = "2026-01-01T00:00:00Z  INFO reconcile started\n{\n  \"checked\": 3,\n  \"fields\": {\n    \"title\": 1\n  }\n}\n2026-01-01T00:00:01Z  INFO reconcile finished {rate}\n";
    let r = support::json_report(output);
    assert_eq!(r["checked"], 3);
    assert_eq!(r["fields"]["title"], 1);
    assert_eq!(support::json_report("{\n  \"a\": 1\n}\n")["a"], 1);
}

#[test]
fn metric_value_reads_the_first_matching_sample() {
    let m = "# HELP cdc_leader Leader.\ncdc_leader 1\ncdc_changes_total{table=\"Price\",op=\"update\"} 3\ncdc_leader_since 9\n";
    assert_eq!(support::metric_value(m, "cdc_leader "), Some(1.0));
    assert_eq!(
        support::metric_value(m, "cdc_changes_total{table=\"Price\""),
        Some(3.0)
    );
    assert_eq!(support::metric_value(m, "cdc_missing "), None);
}

#[tokio::test]
async fn endpoint_answers_as_set_and_records_what_it_accepted() {
    let e = Endpoint::start(Answer::Status(503)).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let post = |body: &'static str| http.post(&e.url).body(body).send();
    assert_eq!(post(r#"{"tags":["a"]}"#).await.unwrap().status(), 503);
    e.set(Answer::Redirect("http://127.0.0.1:9/login".into()));
    let resp = post(r#"{"tags":["a"]}"#).await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "http://127.0.0.1:9/login");
    assert!(e.tags().is_empty(), "refused requests are not deliveries");
    e.set(Answer::Ok);
    for body in [r#"{"tags":["a","b"]}"#, r#"{"tags":["a"]}"#, "not json"] {
        assert_eq!(post(body).await.unwrap().status(), 200);
    }
    assert_eq!(e.requests(), 5);
    assert_eq!(
        e.seen()[0],
        ("POST".to_string(), "/api/revalidate".to_string())
    );
    assert_eq!(e.tags(), ["a", "b", "a"]);
    assert_eq!((e.count("a"), e.count("b"), e.got("c")), (2, 1, false));
    assert_eq!(e.deliveries().len(), 3);
    assert!(e.first("a").unwrap() <= e.first("b").unwrap());
}

#[tokio::test]
#[should_panic(expected = "waiting until the impossible happens")]
async fn wait_until_panics_with_what_on_timeout() {
    wait_until(
        Duration::from_millis(200),
        "the impossible happens",
        || async { false },
    )
    .await;
}

#[tokio::test]
async fn shared_cluster_runs_the_version_of_its_binaries_in_a_directory_of_its_own() {
    let cluster = Cluster::shared();
    if !cluster.is_local() {
        support::skip(
            "external_server",
            "the server of CDC_TEST_DATABASE_URL is not a local cluster",
        );
        return;
    }
    let c = cluster.admin_client("postgres").await;
    let running: String = c
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    // "PostgreSQL 15.18 (Debian 15.18-0+deb12u1)" from `postgres --version` vs "15.18 (Debian ...)".
    assert_eq!(cluster.server_version, format!("PostgreSQL {running}"));
    let major = cluster.major_version().await;
    let dir = cluster.data_dir.parent().unwrap().display().to_string();
    assert!(
        dir.ends_with(&format!("-pg{major}")),
        "clusters of different versions must not share {dir}"
    );
}

#[tokio::test]
async fn standby_replays_the_primary_and_takes_writes_once_promoted() {
    let primary = Cluster::private("primary");
    let standby = primary.standby("standby");
    assert_ne!(primary.port, standby.port);
    let db = primary.create_db("standby").await;
    let c = db.client().await;
    c.execute(
        r#"INSERT INTO "Product" ("id", "storeId", "title") VALUES ('p1', 's1', 'replicated')"#,
        &[],
    )
    .await
    .unwrap();
    let on_standby = standby.url_for("postgres", "cdc-test-password", &db.name);
    wait_until(
        Duration::from_secs(20),
        "the standby has the row",
        || async {
            match tokio_postgres::connect(&on_standby, tokio_postgres::NoTls).await {
                Ok((s, conn)) => {
                    tokio::spawn(conn);
                    s.query_one(r#"SELECT count(*) FROM "Product""#, &[])
                        .await
                        .is_ok_and(|r| r.get::<_, i64>(0) == 1)
                }
                Err(_) => false,
            }
        },
    )
    .await;
    let s = support::connect(&on_standby).await;
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);
    assert!(s.execute(r#"DELETE FROM "Product""#, &[]).await.is_err());

    primary.stop();
    standby.promote();
    let s = support::connect(&on_standby).await;
    s.execute(
        r#"INSERT INTO "Product" ("id", "storeId", "title") VALUES ('p2', 's1', 'after')"#,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(count_products(&s).await, 2);
    // The TestDb lives on the (stopped) primary: keep its drop from waiting for it.
    std::mem::forget(db);
}

#[test]
fn the_pid_is_found_in_every_name_the_harness_makes() {
    let db = "t_fault_kill9_4242_17_3f0a";
    assert_eq!(support::pid_in_name(db), Some(4242));
    for name in [
        format!("{db}_worker"),
        format!("{db}_slot"),
        format!("w_{db}"),
    ] {
        assert_eq!(support::pid_in_name(&name), Some(4242), "{name}");
    }
    // Digits in the test's hint are not taken for the pid.
    assert_eq!(support::pid_in_name("t_epoch1_2_3_77_5_ab"), Some(77));
    assert_eq!(support::pid_in_name("cdc_worker"), None);
    assert_eq!(support::pid_in_name("t_no_numbers"), None);
}

#[test]
fn a_port_is_ours_only_while_a_process_of_ours_listens_there() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let me = std::process::id();
    assert_eq!(support::listener(port, me), support::Listener::Ours);
    // PID 1 is not us: the listener is someone else's for it.
    assert_eq!(support::listener(port, 1), support::Listener::Other(me));
    drop(l);
    assert_eq!(support::listener(port, me), support::Listener::Nobody);
    // A child that exits before it listens is reported, not waited for.
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .args(["-c", "exit 3"])
        .process_group(0)
        .spawn()
        .unwrap();
    let err = support::wait_listening(&mut child, port, Duration::from_secs(10)).unwrap_err();
    assert!(err.contains("exited"), "{err}");
}

#[test]
#[should_panic(expected = "A skip fails unless it is allowed")]
fn a_skip_that_is_not_allowed_fails() {
    support::skip("not_allowed_anywhere", "this test asks to be skipped");
}
