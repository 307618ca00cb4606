//! The replication pipeline against a real PostgreSQL (wal_level=logical): every kind of
//! source change reaches ProductSummary, no-op updates write nothing, and the worker
//! survives kill -9, idles without piling up WAL, and runs as a non-superuser over TLS.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    drift, slot_and_checkpoint, slot_count, summary_of, summary_rows, wait_converged, wait_until,
    Cluster, TestDb, WorkerProcess,
};
use tokio_postgres::Client;

/// A database with a few products, set up, and a running worker.
async fn started(hint: &str, products: i32) -> (TestDb, Client, WorkerProcess) {
    let (db, c) = Cluster::shared().prepared_db(hint, products).await;
    let w = WorkerProcess::start(&db, &["run"], &[]);
    (db, c, w)
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_backfills_and_is_idempotent() {
    let (db, c) = Cluster::shared().seeded_db("setup_backfill", 250).await;
    // A product without a USD price has no row.
    c.batch_execute("DELETE FROM \"Price\" WHERE \"productId\" = 'p7'")
        .await
        .unwrap();
    let first = db.setup(&[], &[]);
    assert!(first.output.contains("backfill done"), "{}", first.output);
    assert_eq!(summary_rows(&c).await, 249);
    assert_eq!(drift(&c).await, 0);
    let row = summary_of(&c, "p1").await.unwrap();
    assert_eq!(row.get::<_, i32>(4), 14, "2 x (10 - 3)");
    let id: String = row.get(7);
    assert!(id.starts_with('c') && id.len() == 25, "cuid-like id: {id}");

    let second = db.setup(&[], &[]);
    assert!(
        second.output.contains("no backfill needed"),
        "{}",
        second.output
    );
    let identity: String = c
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE relname = 'Inventory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity, "f", "child tables get REPLICA IDENTITY FULL");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_change_reaches_the_summary() {
    let (_db, c, _w) = started("every_change", 30).await;

    // Inventory: insert, update, delete.
    c.batch_execute("UPDATE \"Inventory\" SET quantity = 50 WHERE id = 'inv1-1'")
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "inventory update", || async {
        summary_of(&c, "p1").await.unwrap().get::<_, i32>(4) == 47 + 7
    })
    .await;
    c.batch_execute(
        "INSERT INTO \"Inventory\" VALUES ('inv1-3', 'p1', 'l3', 5, 10); \
         DELETE FROM \"Inventory\" WHERE id = 'inv2-1';",
    )
    .await
    .unwrap();
    wait_converged(
        &c,
        "inventory insert (negative availability counts 0) and delete",
    )
    .await;
    assert_eq!(summary_of(&c, "p2").await.unwrap().get::<_, i32>(4), 7);

    // Price: other currency has no effect; USD removed drops the row; USD added adds it.
    let before = summary_of(&c, "p3")
        .await
        .unwrap()
        .get::<_, chrono_free::Ts>(6);
    c.batch_execute("INSERT INTO \"Price\" VALUES ('eur3', 'p3', 'EUR', 1)")
        .await
        .unwrap();
    c.batch_execute("DELETE FROM \"Price\" WHERE id = 'usd4'")
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "USD price removed", || async {
        summary_of(&c, "p4").await.is_none()
    })
    .await;
    assert_eq!(
        summary_of(&c, "p3")
            .await
            .unwrap()
            .get::<_, chrono_free::Ts>(6),
        before,
        "a price in another currency must not touch the row"
    );
    c.batch_execute("INSERT INTO \"Price\" VALUES ('usd4b', 'p4', 'USD', 999)")
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "USD price added", || async {
        summary_of(&c, "p4")
            .await
            .is_some_and(|r| r.get::<_, i32>(2) == 999)
    })
    .await;

    // Product: update, move to another store, insert, delete with cascades.
    c.batch_execute(
        "UPDATE \"Product\" SET title = 'Renamed', active = false WHERE id = 'p5'; \
         UPDATE \"Product\" SET \"storeId\" = 'elsewhere' WHERE id = 'p6'; \
         INSERT INTO \"Product\"(id, \"storeId\", title) VALUES ('new1', 's1', 'New'); \
         INSERT INTO \"Price\" VALUES ('usdnew1', 'new1', 'USD', 5); \
         DELETE FROM \"Product\" WHERE id = 'p8';",
    )
    .await
    .unwrap();
    wait_converged(&c, "product changes").await;
    assert_eq!(
        summary_of(&c, "p6").await.unwrap().get::<_, String>(0),
        "elsewhere"
    );
    assert!(summary_of(&c, "p8").await.is_none());
    let new1 = summary_of(&c, "new1").await.unwrap();
    assert_eq!((new1.get::<_, i32>(2), new1.get::<_, i32>(4)), (5, 0));
    assert_eq!(new1.get::<_, Option<String>>(5), None);

    // Images: the lowest position wins, ties by id; deleting it falls back.
    c.batch_execute(
        "INSERT INTO \"ProductImage\" VALUES ('a-first', 'p9', 'https://cdn/first.jpg', 0), \
                                             ('b-tie', 'p9', 'https://cdn/tie.jpg', 0)",
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(5), "image added", || async {
        summary_of(&c, "p9")
            .await
            .unwrap()
            .get::<_, Option<String>>(5)
            .as_deref()
            == Some("https://cdn/first.jpg")
    })
    .await;
    c.batch_execute("DELETE FROM \"ProductImage\" WHERE id = 'a-first'")
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "image deleted", || async {
        summary_of(&c, "p9")
            .await
            .unwrap()
            .get::<_, Option<String>>(5)
            .as_deref()
            == Some("https://cdn/tie.jpg")
    })
    .await;

    // A child row moved to another product recomputes both.
    c.batch_execute("UPDATE \"Inventory\" SET \"productId\" = 'p11', \"locationId\" = 'moved' WHERE id = 'inv10-1'")
        .await
        .unwrap();
    wait_converged(&c, "inventory row moved between products").await;
    assert_eq!(drift(&c).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn noop_update_writes_nothing() {
    let (_db, c, _w) = started("noop", 5).await;
    let before = summary_of(&c, "p1").await.unwrap();
    c.batch_execute(
        "UPDATE \"Product\" SET title = title WHERE id = 'p1'; \
         UPDATE \"Inventory\" SET quantity = quantity WHERE \"productId\" = 'p1'; \
         UPDATE \"Price\" SET amount = amount WHERE \"productId\" = 'p1'",
    )
    .await
    .unwrap();
    // A later real change proves the no-op transaction has been processed.
    c.batch_execute("UPDATE \"Product\" SET title = 'changed' WHERE id = 'p2'")
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "later change applied", || async {
        summary_of(&c, "p2").await.unwrap().get::<_, String>(1) == "changed"
    })
    .await;
    let after = summary_of(&c, "p1").await.unwrap();
    assert_eq!(
        before.get::<_, chrono_free::Ts>(6),
        after.get::<_, chrono_free::Ts>(6),
        "updatedAt must not move on a no-op update"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_schema_change_toast_and_big_transactions() {
    let (_db, c, _w) = started("truncate_etc", 400).await;

    // A large TOASTed description, then an update of another column of that product:
    // the description arrives as "unchanged TOAST" and must not matter.
    c.batch_execute(
        "UPDATE \"Product\" SET description = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 20000) g) WHERE id = 'p1'",
    )
    .await
    .unwrap();
    c.batch_execute("UPDATE \"Product\" SET title = 'toasted' WHERE id = 'p1'")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "update beside a TOASTed column",
        || async { summary_of(&c, "p1").await.unwrap().get::<_, String>(1) == "toasted" },
    )
    .await;

    // A column added while streaming: pgoutput sends a new Relation message.
    c.batch_execute(
        "ALTER TABLE \"Inventory\" ADD COLUMN note text; \
         UPDATE \"Inventory\" SET quantity = 100, note = 'x' WHERE id = 'inv2-1'",
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(5),
        "change after ALTER TABLE",
        || async { summary_of(&c, "p2").await.unwrap().get::<_, i32>(4) == 97 + 7 },
    )
    .await;

    // One transaction touching hundreds of products.
    c.batch_execute("UPDATE \"Inventory\" SET reserved = 0")
        .await
        .unwrap();
    wait_converged(&c, "transaction over 400 products").await;
    assert_eq!(summary_of(&c, "p300").await.unwrap().get::<_, i32>(4), 20);

    // TRUNCATE of a source table recomputes everything.
    c.batch_execute("TRUNCATE \"Inventory\"").await.unwrap();
    wait_converged(&c, "TRUNCATE Inventory").await;
    assert_eq!(summary_of(&c, "p3").await.unwrap().get::<_, i32>(4), 0);
    c.batch_execute("TRUNCATE \"Product\" CASCADE")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "TRUNCATE Product empties the summary",
        || async { summary_rows(&c).await == 0 },
    )
    .await;
}

/// The slot's confirmed LSN, and the checkpoint stored with the summary.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_burst_loses_nothing() {
    let (db, c, mut w) = started("kill9", 500).await;
    let writer_db = db.client().await;
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    let burst = tokio::spawn(async move {
        for i in 0..3000 {
            let p = format!("p{}", 1 + (i * 7) % 500);
            writer_db
                .execute(
                    "UPDATE \"Inventory\" SET quantity = quantity + 1 WHERE \"productId\" = $1 AND \"locationId\" = 'l1'",
                    &[&p],
                )
                .await
                .unwrap();
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    // Watch the invariant while the burst runs, and kill the worker in the middle of it:
    // after 1000 of its 3000 commits, however fast the machine.
    let mut killed_at = None;
    while !burst.is_finished() {
        let (confirmed, checkpoint) = slot_and_checkpoint(&c, &db.slot()).await;
        assert!(
            confirmed <= checkpoint,
            "slot confirmed {confirmed:X} passed the stored checkpoint {checkpoint:X}"
        );
        let n = written.load(Ordering::SeqCst);
        if killed_at.is_none() && n >= 1000 {
            w.kill9();
            killed_at = Some(n);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    burst.await.unwrap();
    let killed_at = killed_at.expect("the burst ended before 1000 commits were seen");
    eprintln!("killed after {killed_at} of 3000 commits");
    assert!(killed_at < 3000, "the burst ended before the kill");
    let _w2 = WorkerProcess::start(&db, &["run"], &[]);
    wait_converged(&c, "summary equals source after kill -9 and restart").await;
    let (confirmed, checkpoint) = slot_and_checkpoint(&c, &db.slot()).await;
    assert!(confirmed <= checkpoint);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_published_tables_do_not_pile_up_wal() {
    let (db, c, _w) = started("idle", 5).await;
    c.batch_execute("CREATE TABLE unrelated (id serial primary key, v text)")
        .await
        .unwrap();
    for _ in 0..5 {
        c.batch_execute(
            "INSERT INTO unrelated (v) SELECT md5(g::text) FROM generate_series(1, 2000) g",
        )
        .await
        .unwrap();
    }
    let head: i64 = c
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .unwrap()
        .get(0);
    wait_until(
        Duration::from_secs(20),
        "slot confirmed LSN reaches the WAL head written by other tables",
        || async { slot_and_checkpoint(&c, &db.slot()).await.0 >= head as u64 },
    )
    .await;
}

/// SIGTERM in the middle of a backlog (2000 transactions committed while the worker was
/// down, in batches of at most 20 products): the worker finishes what it has in hand and
/// exits 0. The checkpoint it leaves is the end of the last transaction it applied, the
/// slot confirms exactly that, and the products of that transaction and of every earlier
/// one are recomputed, those of later ones not (but the one it was reading, recomputed
/// anyway). The next start goes on from there.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_in_a_backlog_finishes_the_batch_and_exits_0() {
    const PRODUCTS: usize = 400;
    const COMMITS: usize = 2000;
    let (db, c) = Cluster::shared()
        .seeded_db("sigterm", PRODUCTS as i32)
        .await;
    let config = db.config_file("[batch]\nmax_pending = 20\n");
    db.setup(&["--config", &config], &[]);
    let wal_now = || async {
        let lsn: i64 = c
            .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
            .await
            .unwrap()
            .get(0);
        lsn as u64
    };
    // Commit k (1-based) sets product p{(k-1) % 400 + 1}'s l1 quantity to k; `after[k]` is
    // the WAL position right after it committed (`after[0]`: before the first), so commit
    // k's record lies in (after[k-1], after[k]].
    let mut after = vec![wal_now().await];
    for k in 1..=COMMITS {
        let p = format!("p{}", (k - 1) % PRODUCTS + 1);
        c.execute(
            "UPDATE \"Inventory\" SET quantity = $2 WHERE \"productId\" = $1 AND \"locationId\" = 'l1'",
            &[&p, &(k as i32)],
        )
        .await
        .unwrap();
        after.push(wal_now().await);
    }
    let mut w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
    // The first batch with a checkpoint applied: the backlog is being worked through.
    wait_until(Duration::from_secs(30), "a first batch applied", || async {
        w.output()
            .lines()
            .any(|l| l.contains("applied batch") && !l.contains("lsn=None"))
    })
    .await;
    w.sigterm();
    let status = w.wait_exit(Duration::from_secs(30));
    let log = w.output();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        w.log_tail(20)
    );
    assert!(log.contains("stopped cleanly"), "{}", w.log_tail(20));

    let (confirmed, checkpoint) = slot_and_checkpoint(&c, &db.slot()).await;
    // The commit whose record holds the checkpoint: after[m-1] < checkpoint <= after[m].
    let m = after.partition_point(|&a| a < checkpoint);
    eprintln!(
        "SIGTERM after commit {m} of {COMMITS}: checkpoint {checkpoint:X}, slot {confirmed:X}"
    );
    assert!(
        m < COMMITS,
        "the backlog was applied to its end before the SIGTERM"
    );
    assert!(
        m > 0,
        "the checkpoint {checkpoint:X} is below the first commit"
    );
    let last_applied = log
        .lines()
        .rfind(|l| l.contains("applied batch") && !l.contains("lsn=None"))
        .and_then(|l| l.split("lsn=Some(\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("an applied batch with its LSN in the log")
        .to_string();
    assert_eq!(
        lsn_text(checkpoint),
        last_applied,
        "the checkpoint is the last applied batch's commit"
    );
    assert_eq!(
        confirmed, checkpoint,
        "the slot confirms the last applied commit"
    );
    // A product is recomputed from the source as it is now (the whole backlog committed),
    // so it shows its final value once a commit of it was applied, and the seeded 14
    // before.
    let product = |k: usize| format!("p{}", (k - 1) % PRODUCTS + 1);
    let last_commit = |p: &str| (1..=COMMITS).rev().find(|&k| product(k) == p).unwrap();
    let applied: std::collections::HashSet<String> = (1..=m).map(product).collect();
    let shown = c
        .query(
            "SELECT \"productId\", \"inventoryAvailable\" FROM \"ProductSummary\"",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(shown.len(), PRODUCTS);
    for r in shown {
        let (p, v): (String, i32) = (r.get(0), r.get(1));
        let done = last_commit(&p) as i32 + 4;
        let ok = if applied.contains(&p) {
            v == done
        } else if m < COMMITS && p == product(m + 1) {
            // The transaction being read when the stream stopped is recomputed too.
            v == done || v == 14
        } else {
            v == 14
        };
        assert!(
            ok,
            "{p} shows {v} with the checkpoint at commit {m}: applied through commit {m}, \
             and only those, should show"
        );
    }

    let _w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
    wait_converged(&c, "the rest of the backlog after the restart").await;
}

/// An LSN as Postgres and the worker print it (`16/B374D848`).
fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// What an admin does once (README, "Privileges"): a role with its grants, and the
/// objects only a table owner may create. Returns the role's URL and name.
async fn least_privilege_role(db: &TestDb, c: &tokio_postgres::Client) -> (String, String) {
    let url = db.create_role(&format!("w_{}", db.name), "pw-s3cret").await;
    let role = format!("w_{}", db.name);
    c.batch_execute(&format!(
        "GRANT CREATE ON DATABASE \"{db}\" TO {role};
         GRANT SELECT ON \"Product\", \"Inventory\", \"Price\", \"ProductImage\" TO {role};
         GRANT CREATE ON SCHEMA public TO {role};
         ALTER TABLE \"Inventory\" REPLICA IDENTITY FULL;
         ALTER TABLE \"Price\" REPLICA IDENTITY FULL;
         ALTER TABLE \"ProductImage\" REPLICA IDENTITY FULL;
         CREATE PUBLICATION {slot} FOR TABLE \"Product\", \"Inventory\", \"Price\", \"ProductImage\";",
        db = db.name,
        slot = db.slot(),
    ))
    .await
    .unwrap();
    (url, role)
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_as_a_non_superuser_over_tls() {
    let (db, c) = Cluster::shared().seeded_db("least_privilege", 20).await;
    let (url, role) = least_privilege_role(&db, &c).await;
    let tls_url = format!("{url}?sslmode=require");
    let env = [("DATABASE_URL", tls_url.as_str())];
    let setup = db.setup(&[], &env);
    assert!(!setup.output.contains("pw-s3cret"), "password in logs");
    let w = WorkerProcess::start(&db, &["run"], &env);
    c.batch_execute("UPDATE \"Inventory\" SET quantity = 1 WHERE id = 'inv1-1'")
        .await
        .unwrap();
    wait_converged(&c, "change applied by the non-superuser worker over TLS").await;
    let ssl: bool = c
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "every connection of the worker uses TLS");
    assert!(!w.output().contains("pw-s3cret"), "password in logs");
}

/// Issue 18, item 7: `DATABASE_URL` with `/`, `?` or `#` in the password, written raw (the
/// worker's connections read the userinfo up to the first `@`): setup and run connect with
/// it, query and replication connection alike, and neither they nor an error after an
/// `sslmode` typo show any of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_with_url_delimiters_connects_and_never_shows() {
    let (db, c) = Cluster::shared().seeded_db("url_delims", 5).await;
    let (url, role) = least_privilege_role(&db, &c).await;
    let mut w = None;
    for ch in ['/', '?', '#'] {
        let password = format!("Zq{ch}Xv9");
        db.create_role(&role, &password).await;
        let encoded = format!("Zq%{:02X}Xv9", ch as u8);
        let raw = url.replacen("pw-s3cret", &password, 1);
        let raw = raw.replacen(&encoded, &password, 1);
        assert!(raw.contains(&format!(":{password}@")), "{raw}");
        let env = [("DATABASE_URL", raw.as_str())];
        let setup = WorkerProcess::run_to_end(&db, &["setup"], &env);
        assert!(setup.success, "{ch:?}: {}", setup.output);
        let typo = format!("{raw}?sslmode=requir");
        let bad = WorkerProcess::run_to_end(&db, &["setup"], &[("DATABASE_URL", typo.as_str())]);
        assert!(!bad.success, "{ch:?}: {}", bad.output);
        assert!(
            bad.output.contains("sslmode=requir"),
            "{ch:?}: {}",
            bad.output
        );
        for out in [&setup.output, &bad.output] {
            assert!(!out.contains("Zq") && !out.contains("Xv9"), "{ch:?}: {out}");
        }
        if ch == '#' {
            w = Some(WorkerProcess::start(&db, &["run"], &env));
        }
    }
    let w = w.unwrap();
    c.batch_execute("UPDATE \"Inventory\" SET quantity = 2 WHERE id = 'inv1-1'")
        .await
        .unwrap();
    wait_converged(&c, "a change streamed over the replication connection").await;
    let log = w.output();
    assert!(!log.contains("Zq") && !log.contains("Xv9"), "{log}");
}

/// A server that accepts the TCP connection and then never answers (a frozen proxy, a hung
/// host) must not hold a command forever: tokio-postgres bounds only the TCP connect, the
/// worker bounds the whole startup by the URL's `connect_timeout` (as libpq does).
#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_accepts_and_never_answers_times_out() {
    let db = Cluster::shared().create_db("silent_server").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts every connection and keeps it open without a byte (the kernel completes the
    // handshake; holding the streams keeps them from being closed).
    let held = std::thread::spawn(move || {
        let mut streams = Vec::new();
        for s in listener.incoming().take(4) {
            streams.push(s);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let url = format!("postgresql://nobody:pw@127.0.0.1:{port}/shop?connect_timeout=2");
    let started = Instant::now();
    let out = WorkerProcess::run_to_end(&db, &["setup"], &[("DATABASE_URL", url.as_str())]);
    let took = started.elapsed();
    assert!(!out.success, "{}", out.output);
    assert!(
        out.output.contains("took longer than 2s"),
        "names the limit: {}",
        out.output
    );
    println!("setup against a silent server gave up after {took:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_clearly_before_touching_anything() {
    let db = Cluster::shared().create_db("bad_input").await;
    let c = db.client().await;
    c.batch_execute("DROP TABLE \"Price\"").await.unwrap();
    let out = WorkerProcess::run_to_end(&db, &["setup"], &[]);
    assert!(!out.success);
    assert!(
        out.output.contains("\"public\".\"Price\" does not exist"),
        "{}",
        out.output
    );
    assert_eq!(
        slot_count(&c, &db.slot()).await,
        0,
        "nothing created after a failed check"
    );

    // A slot of another plugin under our name.
    let db2 = Cluster::shared().create_db("bad_slot").await;
    let c2 = db2.client().await;
    c2.batch_execute(&format!(
        "SELECT pg_create_logical_replication_slot('{}', 'test_decoding')",
        db2.slot()
    ))
    .await
    .unwrap();
    let out = WorkerProcess::run_to_end(&db2, &["setup"], &[]);
    assert!(!out.success);
    assert!(out.output.contains("not pgoutput"), "{}", out.output);

    // A wrong password: a clear error that does not echo it.
    let wrong = db2.url.replacen("://postgres:", "://postgres:wr0ng-", 1);
    let out = WorkerProcess::run_to_end(&db2, &["run"], &[("DATABASE_URL", wrong.as_str())]);
    assert!(!out.success);
    assert!(!out.output.contains("wr0ng-"), "{}", out.output);

    // run before setup says to run setup.
    let db3 = Cluster::shared().create_db("not_set_up").await;
    let out = WorkerProcess::run_to_end(&db3, &["run"], &[]);
    assert!(!out.success);
    assert!(out.output.contains("cdc-worker setup"), "{}", out.output);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_when_the_leader_dies() {
    let (db, c, mut leader) = started("standby", 10).await;
    leader
        .wait_for_log(Duration::from_secs(10), support::STREAMING)
        .await;
    let standby = WorkerProcess::start(&db, &["run"], &[]);
    standby
        .wait_for_log(Duration::from_secs(10), "waiting as standby")
        .await;
    leader.kill9();
    let t = Instant::now();
    c.batch_execute("UPDATE \"Product\" SET title = 'after failover' WHERE id = 'p1'")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "standby applies after the leader died",
        || async { summary_of(&c, "p1").await.unwrap().get::<_, String>(1) == "after failover" },
    )
    .await;
    eprintln!("failover took {:?}", t.elapsed());
    assert!(standby.output().contains("took over as leader"));
}

/// updatedAt is `timestamp(3)`; compare it as text so the test needs no chrono.
mod chrono_free {
    use tokio_postgres::types::{FromSql, Type};

    #[derive(Debug, PartialEq, Eq)]
    pub struct Ts(i64);

    impl<'a> FromSql<'a> for Ts {
        fn from_sql(
            _: &Type,
            raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Ts(postgres_protocol::types::timestamp_from_sql(raw)?))
        }
        fn accepts(ty: &Type) -> bool {
            *ty == Type::TIMESTAMP
        }
    }
}

/// sslmode=verify-full checks the server certificate against sslrootcert and the host
/// name, on the query connection and the replication connection alike.
#[tokio::test(flavor = "multi_thread")]
async fn verify_full_checks_the_certificate_on_both_connections() {
    let cluster = Cluster::shared();
    let Some(cert) = cluster.ssl_cert.clone() else {
        support::skip(
            "external_server",
            "the CA of the server of CDC_TEST_DATABASE_URL is not known here",
        );
        return;
    };
    let (db, c, _w) = started("verify_full", 5).await;
    drop(_w);
    // The test certificate names localhost. (pgwire-replication refuses verify-full with an
    // IP address for a host; managed Postgres is reached by name anyway.)
    let good = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url.replacen("@127.0.0.1:", "@localhost:", 1),
        cert.display()
    );
    assert_ne!(
        good,
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            db.url,
            cert.display()
        )
    );
    let w = WorkerProcess::start(&db, &["run"], &[("DATABASE_URL", &good)]);
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    c.batch_execute("UPDATE \"Product\" SET title = 'verified' WHERE id = 'p1'")
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "change applied over verify-full",
        || async { summary_of(&c, "p1").await.unwrap().get::<_, String>(1) == "verified" },
    )
    .await;
    drop(w);

    // Against the public roots instead of the test CA, the certificate is refused: by
    // `setup` and `run` (whose query connection comes first)...
    let untrusted = format!(
        "{}?sslmode=verify-full",
        db.url.replacen("@127.0.0.1:", "@localhost:", 1)
    );
    for cmd in ["setup", "run"] {
        let out = WorkerProcess::run_to_end(&db, &[cmd], &[("DATABASE_URL", &untrusted)]);
        assert_eq!(out.code, Some(2), "{cmd}:\n{}", out.output);
        assert!(
            out.output.to_lowercase().contains("certificate"),
            "{cmd}: the error should name the certificate:\n{}",
            out.output
        );
    }
    // ...and by the replication connection itself, with `run`'s settings (authenticated,
    // not started: IDENTIFY_SYSTEM needs the TLS session).
    let identify = |url: String| {
        let slot = db.slot();
        async move {
            let database = cdc_worker::pg::connect::Database::parse(&url).unwrap();
            let mut repl = pgwire_replication::ReplicationClient::connect_gated(
                database.replication(&slot, &slot),
            )
            .await
            .map_err(|e| e.to_string())?;
            repl.identify_system().await.map_err(|e| e.to_string())
        }
    };
    let err = identify(untrusted)
        .await
        .expect_err("an untrusted certificate accepted");
    assert!(
        err.to_lowercase().contains("certificate"),
        "the replication connection's error should name the certificate: {err}"
    );
    // The same connection with the test CA is accepted.
    identify(good)
        .await
        .expect("the replication connection verifies the test CA");
}

/// A batch of more products than `batch.max_products` is applied in several transactions;
/// the checkpoint moves with the last one. A crash after the first part (failpoint
/// `apply-part`) leaves exactly one part applied and the checkpoint before the
/// transaction, so the next start streams it again and applies it, in 8 parts of 50.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_larger_than_max_products_is_applied_in_parts() {
    let (db, c) = Cluster::shared().seeded_db("parts", 400).await;
    let config = db.config_file("[batch]\nmax_products = 50\n");
    db.setup(&["--config", &config], &[]);
    let mut crashed = WorkerProcess::start(
        &db,
        &["--config", &config, "run"],
        &[("FAILPOINTS", "apply-part=return")],
    );
    crashed
        .wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    c.batch_execute("UPDATE \"Inventory\" SET reserved = 0")
        .await
        .unwrap();
    let status = crashed.wait_exit(Duration::from_secs(60));
    assert!(
        !status.success() && crashed.output().contains("failpoint=\"apply-part\""),
        "the worker should abort after the first part ({status:?}):\n{}",
        crashed.log_tail(20)
    );
    let applied: i64 = c
        .query_one(
            "SELECT count(*) FROM \"ProductSummary\" WHERE \"inventoryAvailable\" = 20",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 50, "one part of 50 products committed");

    let w = WorkerProcess::start(&db, &["--config", &config, "run"], &[]);
    wait_converged(&c, "400 products applied in parts of 50").await;
    wait_until(Duration::from_secs(10), "the batch's last part", || async {
        w.output().contains("part=8 parts=8")
    })
    .await;
    let log = w.output();
    let parts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("applied part of a batch"))
        .collect();
    eprintln!("{} parts applied after the restart", parts.len());
    assert!(
        parts.len() == 8 && parts.iter().all(|l| l.contains("parts=8 products=50")),
        "one batch of 400 products in 8 parts of 50:\n{}",
        parts.join("\n")
    );
    // Streamed again from the checkpoint: the crash had not moved it past the transaction.
    let batches = log
        .lines()
        .filter(|l| l.contains("applied batch") && l.contains("products=400"))
        .count();
    assert_eq!(batches, 1, "one batch of 400 products:\n{}", w.log_tail(20));
    let (confirmed, checkpoint) = slot_and_checkpoint(&c, &db.slot()).await;
    assert!(confirmed <= checkpoint);
}

/// A DELETE whose old row lacks the product id (replica identity reset to the primary
/// key) cannot be routed; the worker recomputes every product instead of stopping.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_without_product_id_recomputes_everything() {
    let (_db, c, w) = started("no_identity", 20).await;
    c.batch_execute("ALTER TABLE \"Inventory\" REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    c.batch_execute("DELETE FROM \"Inventory\" WHERE id = 'inv3-1'")
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "the delete applied", || async {
        summary_of(&c, "p3").await.unwrap().get::<_, i32>(4) == 7
    })
    .await;
    assert_eq!(drift(&c).await, 0);
    let log = w.output();
    assert!(
        log.contains("recomputing every product") && log.contains("REPLICA IDENTITY FULL"),
        "the log should say why and how to fix it:\n{}",
        w.log_tail(20)
    );
}

/// Issue 18, item 6: images that belong to no product (a nullable `productId`). Their
/// delete carries the whole old row (REPLICA IDENTITY FULL) with a NULL product id: no
/// product to recompute, and nothing wrong with the replica identity. It used to be taken
/// for a missing id: every product recomputed, and the log blamed the identity.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_rows_of_no_product_recomputes_nothing() {
    let (_db, c, w) = started("null_product", 20).await;
    w.wait_for_log(Duration::from_secs(20), support::STREAMING)
        .await;
    c.batch_execute(
        "ALTER TABLE \"ProductImage\" ALTER COLUMN \"productId\" DROP NOT NULL;
         INSERT INTO \"ProductImage\" (id, \"productId\", url) \
           SELECT 'loose' || g, NULL, 'https://cdn/loose.jpg' FROM generate_series(1, 3) g;
         DELETE FROM \"ProductImage\" WHERE \"productId\" IS NULL;",
    )
    .await
    .unwrap();
    // Batches are applied in order: once this later change is in, so is the delete.
    c.batch_execute("UPDATE \"Product\" SET title = 'after' WHERE id = 'p5'")
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the later change", || async {
        summary_of(&c, "p5").await.unwrap().get::<_, String>(1) == "after"
    })
    .await;
    assert_eq!(drift(&c).await, 0);
    let log = w.output();
    assert!(
        !log.contains("recomputing every product") && !log.contains("recomputed every product"),
        "a row of no product made the worker recompute every product:\n{}",
        w.log_tail(20)
    );
    assert!(
        !log.contains("carried no product id"),
        "the log blames the replica identity:\n{}",
        w.log_tail(20)
    );
}

/// Sums `key=N` over the worker's "applied batch" lines.
fn batch_total(log: &str, key: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("applied batch"))
        .filter_map(|l| {
            l.split_whitespace().find_map(|w| {
                w.strip_prefix(key)?
                    .strip_prefix('=')?
                    .parse::<usize>()
                    .ok()
            })
        })
        .sum()
}

/// A backlog (transactions committed while the worker was down) is read by the first
/// batch's recompute already: the later batches skip the products it covered, so each
/// product is recomputed once, not once per queued transaction. A change committed after
/// that recompute is still applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_recomputes_each_product_once() {
    let (db, c) = Cluster::shared().prepared_db("backlog_once", 200).await;
    for _ in 0..4 {
        c.batch_execute("UPDATE \"Inventory\" SET quantity = quantity + 1")
            .await
            .unwrap();
    }
    let w = WorkerProcess::start(&db, &["run"], &[]);
    wait_converged(&c, "the backlog of four transactions").await;
    wait_until(Duration::from_secs(30), "the backlog's batches", || async {
        batch_total(&w.output(), "skipped") >= 200
    })
    .await;
    let log = w.output();
    assert_eq!(
        batch_total(&log, "products"),
        200,
        "each product recomputed once:\n{}",
        w.log_tail(20)
    );

    // Live again: a new transaction was not seen by that recompute.
    c.batch_execute("UPDATE \"Inventory\" SET quantity = 99 WHERE \"productId\" = 'p7'")
        .await
        .unwrap();
    wait_converged(&c, "a change after the backlog").await;
    let row = summary_of(&c, "p7").await.unwrap();
    assert_eq!(row.get::<_, i32>("inventoryAvailable"), 2 * (99 - 3));
}

/// `products` products (analyzed, so the worker knows how many), a worker with
/// `max_pending` set up, then one transaction that changes every price twice (cut every
/// `max_pending` products), then `run` until the summary has converged and the
/// transaction's last cut is applied. Returns the running worker and the database.
/// `no_temp`: the worker runs as a least-privilege role on a database where PUBLIC may
/// not create temporary tables. With `products` above 5 x `max_pending` the cuts are
/// applied as cuts; at or below, the first cut becomes a pass over every product (`bulk`).
async fn run_after_a_transaction_touching_everything_twice(
    name: &str,
    products: i32,
    max_pending: usize,
    no_temp: bool,
) -> (WorkerProcess, TestDb) {
    let (db, c) = Cluster::shared().seeded_db(name, products).await;
    c.batch_execute("ANALYZE \"Product\"").await.unwrap();
    let config = db.config_file(&format!("[batch]\nmax_pending = {max_pending}\n"));
    let mut url = None;
    if no_temp {
        c.batch_execute(&format!(
            "REVOKE TEMPORARY ON DATABASE \"{}\" FROM PUBLIC",
            db.name
        ))
        .await
        .unwrap();
        url = Some(least_privilege_role(&db, &c).await.0);
    }
    let env: Vec<(&str, &str)> = url.iter().map(|u| ("DATABASE_URL", u.as_str())).collect();
    db.setup(&["--config", &config], &env);
    c.batch_execute(
        "BEGIN; UPDATE \"Price\" SET amount = amount + 1; \
         UPDATE \"Price\" SET amount = amount + 1; COMMIT;",
    )
    .await
    .unwrap();
    let w = WorkerProcess::start(&db, &["--config", &config, "run"], &env);
    wait_converged(&c, "one transaction touching every product twice").await;
    wait_until(
        Duration::from_secs(30),
        "the transaction's last cut",
        || async {
            w.output()
                .lines()
                .any(|l| l.contains("applied batch") && l.contains("transactions=1"))
        },
    )
    .await;
    (w, db)
}

/// A transaction larger than `max_pending` is handed to apply in cuts; each cut carries
/// the transaction's xid, so a later cut can skip the products an earlier cut already
/// recomputed (the transaction was visible to it). Without the xid a cut proves nothing
/// and nothing is skipped.
#[tokio::test(flavor = "multi_thread")]
async fn cuts_of_a_large_transaction_keep_its_xid() {
    // 120 changes of 60 products, cut every 10.
    let (w, _db) =
        run_after_a_transaction_touching_everything_twice("cut_xid", 60, 10, false).await;
    let log = w.output();
    assert!(
        batch_total(&log, "skipped") > 0,
        "a later cut skipped what an earlier one recomputed:\n{log}"
    );
}

/// Past `max_pending` covered products the set moves to a temporary table instead of
/// starting again: a transaction touching more products than memory may hold, twice,
/// recomputes each product once. (Kept in memory only, the second pass recomputed what
/// the first pass's earlier cuts covered.)
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_larger_than_memory_recomputes_each_product_once() {
    // 240 changes of 120 products, cut every 20.
    let (w, _db) =
        run_after_a_transaction_touching_everything_twice("covered_spill", 120, 20, false).await;
    let log = w.output();
    assert_eq!(
        (batch_total(&log, "products"), batch_total(&log, "skipped")),
        (120, 120),
        "each product recomputed once, its second change skipped:\n{log}"
    );
    assert!(log.contains("covered products moved to a temporary table"));
}

/// A role that may not create temporary tables: the covered set stays in memory (each
/// product may be recomputed more than once), the summary is still exact, and the log
/// says why and what to grant.
#[tokio::test(flavor = "multi_thread")]
async fn without_temporary_tables_the_covered_set_stays_in_memory() {
    let (w, _db) =
        run_after_a_transaction_touching_everything_twice("covered_no_temp", 120, 20, true).await;
    let log = w.output();
    assert!(
        log.contains("may not create temporary tables")
            && log.contains("GRANT TEMPORARY ON DATABASE"),
        "{log}"
    );
    assert!(!log.contains("moved to a temporary table"), "{log}");
    assert!(batch_total(&log, "products") > 120, "{log}");
}

/// A transaction whose first cut holds a fifth or more of the catalog is recomputed in
/// one pass over every product; the rest of its changes are dropped as they arrive (the
/// pass saw the transaction) instead of being batched and looked up. A transaction the
/// pass did not see is still applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_rewriting_a_fifth_of_the_catalog_is_one_pass() {
    // 200 changes of 100 products, the first cut at 20: a fifth.
    let (w, db) =
        run_after_a_transaction_touching_everything_twice("bulk_pass", 100, 20, false).await;
    let log = w.output();
    assert!(
        log.contains("recomputing every product") && log.contains("a fifth or more"),
        "{log}"
    );
    assert_eq!(
        batch_total(&log, "products"),
        100,
        "one pass, nothing recomputed again:\n{log}"
    );
    assert!(
        batch_total(&log, "covered_changes") > 0,
        "the rest of the transaction was dropped, not batched:\n{log}"
    );
    let c = db.client().await;
    c.batch_execute("UPDATE \"Price\" SET amount = 7 WHERE \"productId\" = 'p7'")
        .await
        .unwrap();
    wait_converged(&c, "a change after the pass").await;
    let row = summary_of(&c, "p7").await.unwrap();
    assert_eq!(row.get::<_, i32>("price"), 7);
}
