//! Server versions and providers: a server older than 15 is refused by `setup` and `run`
//! in one line; setup's wal_level and REPLICATION errors name the fix of the provider the
//! server belongs to (detected from its settings); the slot state query works on the
//! version the suite runs on.

mod support;

use support::{Cluster, TestDb, WorkerProcess};

/// The line every refusal of an old server contains.
const TOO_OLD: &str = "< 150000): cdc-worker needs PostgreSQL 15 or newer";

#[tokio::test(flavor = "multi_thread")]
async fn setup_and_run_refuse_postgres_14_in_one_line() {
    let cluster = Cluster::private_version("pg14", 14);
    let c = cluster.admin_client("postgres").await;
    let num: String = c
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(num.starts_with("14"), "a PostgreSQL 14 server: {num}");
    let db = cluster.create_db("too_old").await;

    for command in ["setup", "run"] {
        let out = WorkerProcess::run_to_end(&db, &[command], &[]);
        assert!(!out.success, "{command} must fail on 14:\n{}", out.output);
        let lines: Vec<&str> = out.output.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(lines.len(), 1, "{command}: one error line:\n{}", out.output);
        assert!(
            lines[0].contains(&format!("server_version_num {num} {TOO_OLD}")),
            "{command}: {}",
            lines[0]
        );
    }
    // Refused before touching anything: no slot, no state schema, no publication.
    let dbc = db.client().await;
    let touched: i64 = dbc
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots) \
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'cdc_worker') \
                  + (SELECT count(*) FROM pg_publication)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(touched, 0);
}

/// Runs setup and returns its (failing) output.
fn failed_setup(db: &TestDb, extra: &[(&str, &str)]) -> String {
    let out = WorkerProcess::run_to_end(db, &["setup"], extra);
    assert!(!out.success, "setup should fail:\n{}", out.output);
    out.output
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_level_error_names_the_providers_switch() {
    let cluster = Cluster::private("wal_replica");
    cluster
        .admin_client("postgres")
        .await
        .batch_execute("ALTER SYSTEM SET wal_level = replica")
        .await
        .unwrap();
    cluster.restart();
    let db = cluster.create_db("wal_level").await;

    let out = failed_setup(&db, &[]);
    assert!(
        out.contains("wal_level is 'replica'")
            && out.contains("Fix (self-hosted): ALTER SYSTEM SET wal_level = logical"),
        "{out}"
    );

    // What RDS and Cloud SQL define, set here as placeholders for this database only.
    let c = db.client().await;
    let name = &db.name;
    c.batch_execute(&format!(
        "ALTER DATABASE \"{name}\" SET rds.logical_replication = 'off'"
    ))
    .await
    .unwrap();
    let out = failed_setup(&db, &[]);
    assert!(
        out.contains("Fix (Amazon RDS): set rds.logical_replication = 1 in the instance's custom DB parameter group"),
        "{out}"
    );
    c.batch_execute(&format!(
        "ALTER DATABASE \"{name}\" RESET rds.logical_replication; \
         ALTER DATABASE \"{name}\" SET cloudsql.logical_decoding = 'off'"
    ))
    .await
    .unwrap();
    let out = failed_setup(&db, &[]);
    assert!(
        out.contains(
            "Fix (Google Cloud SQL): set the database flag cloudsql.logical_decoding = on"
        ),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replication_privilege_error_names_the_providers_grant() {
    // A private cluster: the test creates the cluster-wide role rds_replication.
    let cluster = Cluster::private("replication_role");
    let db = cluster.create_db("repl_role").await;
    let c = db.client().await;
    let role = format!("{}_w", db.name);
    let url = db.create_role(&role, "pw").await;
    c.batch_execute(&format!(
        "ALTER ROLE \"{role}\" NOREPLICATION; \
         ALTER DATABASE \"{db}\" SET cloudsql.logical_decoding = 'on'",
        db = db.name
    ))
    .await
    .unwrap();
    let env = [("DATABASE_URL", url.as_str())];
    let out = failed_setup(&db, &env);
    assert!(
        out.contains(&format!(
            "role {role} lacks the REPLICATION attribute. Fix (Google Cloud SQL): ALTER USER \"{role}\" WITH REPLICATION"
        )),
        "{out}"
    );

    // On RDS, membership in rds_replication stands in for the attribute: setup's check lets
    // such a role through (this vanilla server then refuses the slot itself, which RDS
    // would allow).
    c.batch_execute(&format!(
        "ALTER DATABASE \"{db}\" RESET cloudsql.logical_decoding; \
         ALTER DATABASE \"{db}\" SET rds.logical_replication = 'on'; \
         CREATE ROLE rds_replication NOLOGIN",
        db = db.name
    ))
    .await
    .unwrap();
    let out = failed_setup(&db, &env);
    assert!(
        out.contains(&format!(
            "Fix (Amazon RDS): GRANT rds_replication TO \"{role}\""
        )),
        "{out}"
    );
    c.batch_execute(&format!("GRANT rds_replication TO \"{role}\""))
        .await
        .unwrap();
    let out = failed_setup(&db, &env);
    assert!(!out.contains("lacks the REPLICATION attribute"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slot_state_reports_what_this_version_knows() {
    let db = Cluster::shared().create_db("slot_state").await;
    let c = db.client().await;
    let num: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0);
    assert!(cdc_worker::pg::server::slot_state(&c, &db.slot())
        .await
        .unwrap()
        .is_none());
    c.query_one(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&db.slot()],
    )
    .await
    .unwrap();
    let s = cdc_worker::pg::server::slot_state(&c, &db.slot())
        .await
        .unwrap()
        .expect("the slot");
    assert_eq!(s.wal_status.as_deref(), Some("reserved"));
    assert_eq!(s.summary(), "ok");
    assert_eq!(s.conflicting.is_some(), num >= 160000, "{s:?}");
    assert_eq!(s.failover, (num >= 170000).then_some(false), "{s:?}");
    assert_eq!(s.synced, (num >= 170000).then_some(false), "{s:?}");
    assert_eq!(s.invalidation_reason, None);
}
