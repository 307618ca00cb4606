//! What tests of earlier runs left behind: a failed test keeps its database (for a look)
//! and its private cluster (for its log); a killed run drops nothing. Their slots hold
//! WAL for every later run. Everything a test makes is named after the pid of its test
//! process (`t_<hint>_<pid>_<n>_<hex>` databases, slots and roles derived from them,
//! `<name>-<pid>-<n>` private cluster directories), so what belongs to a process that is
//! gone can be told from what another test run, going on right now, still uses.

use std::path::Path;
use std::time::Duration;

/// The pid in a name made by the harness: the first of three `_`-separated tokens
/// `<pid>_<n>_<hex>` (scanned from the right, so suffixes such as `_worker` or `_slot`
/// after a database name do not matter) in a name starting with `t_` or containing `_t_`.
pub fn pid_in_name(name: &str) -> Option<u32> {
    if !(name.starts_with("t_") || name.contains("_t_")) {
        return None;
    }
    let tokens: Vec<&str> = name.split('_').collect();
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let hex = |t: &str| (1..=4).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_hexdigit());
    (2..tokens.len().saturating_sub(2))
        .rev()
        .find(|&i| digits(tokens[i]) && digits(tokens[i + 1]) && hex(tokens[i + 2]))
        .and_then(|i| tokens[i].parse().ok())
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `name` was made by a test process that no longer exists.
fn stale(name: &str) -> bool {
    pid_in_name(name).is_some_and(|pid| pid != std::process::id() && !alive(pid))
}

/// Drops, on the server of `admin_url` (the `postgres` database), the databases, slots
/// and roles of test processes that are gone. Returns what it dropped.
pub async fn drop_stale_objects(admin_url: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut dropped = Vec::new();
    // Slots first (any database, the `postgres` one included): a database with a slot
    // cannot be dropped, and a slot alone holds WAL too.
    let slots = c
        .query(
            "SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE slot_name LIKE 't\\_%'",
            &[],
        )
        .await?;
    for r in slots {
        let (slot, active): (String, Option<i32>) = (r.get(0), r.get(1));
        if !stale(&slot) {
            continue;
        }
        if let Some(pid) = active {
            c.execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await?;
        }
        // The walsender may take a moment to end.
        for _ in 0..50 {
            if c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
                .is_ok()
            {
                dropped.push(format!("slot {slot}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let dbs = c
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE 't\\_%'",
            &[],
        )
        .await?;
    for r in dbs {
        let db: String = r.get(0);
        if stale(&db) {
            let sql = format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                db.replace('"', "\"\"")
            );
            match c.batch_execute(&sql).await {
                Ok(()) => dropped.push(format!("database {db}")),
                Err(e) => eprintln!("could not drop stale test database {db}: {e}"),
            }
        }
    }
    let roles = c
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname LIKE '%t\\_%'",
            &[],
        )
        .await?;
    for r in roles {
        let role: String = r.get(0);
        // A role that still owns something elsewhere stays; nothing holds WAL for it.
        let sql = format!("DROP ROLE IF EXISTS \"{}\"", role.replace('"', "\"\""));
        if stale(&role) && c.batch_execute(&sql).await.is_ok() {
            dropped.push(format!("role {role}"));
        }
    }
    Ok(dropped)
}

/// The directories under `private_root` of private clusters whose test process is gone
/// (`<name>-<pid>-<n>`).
pub fn stale_private_dirs(private_root: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(private_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let mut parts = name.rsplitn(3, '-');
            let (_n, pid) = (parts.next(), parts.next());
            pid.and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| pid != std::process::id() && !alive(pid))
        })
        .map(|e| e.path())
        .collect()
}
