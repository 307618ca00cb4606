//! Skips that are seen. A test that cannot run here (no `pg_resetwal` of the server's
//! version, failover slots below 17, an external server whose certificate is unknown)
//! would pass as "ok" if it just returned. [`skip`] makes that a failure unless the run
//! allows that skip by name, and records every allowed skip for the summary of
//! `scripts/test-versions.sh`.

use std::io::Write;

/// Comma-separated names of the skips a run allows, e.g. `epoch1,failover_slot`.
/// `scripts/test-versions.sh` adds the ones a server version implies (`failover_slot`
/// below 17).
pub const ALLOW_SKIP_ENV: &str = "CDC_TEST_ALLOW_SKIP";

/// A file each allowed skip appends its line to (`scripts/test-versions.sh` sets it and
/// prints the lines in its summary). cargo test hides the output of passing tests, so
/// the line on stderr alone would not reach the summary.
pub const SKIP_LOG_ENV: &str = "CDC_TEST_SKIP_LOG";

/// The fixed start of every skip line.
pub const SKIP_PREFIX: &str = "SKIPPED TEST:";

/// Whether `CDC_TEST_ALLOW_SKIP` names `name`.
pub fn skip_allowed(name: &str) -> bool {
    std::env::var(ALLOW_SKIP_ENV)
        .unwrap_or_default()
        .split(',')
        .any(|n| n.trim() == name)
}

/// Call right before a test returns early because it cannot run here: panics (the test
/// fails) unless `CDC_TEST_ALLOW_SKIP` names `name`; otherwise prints
/// `SKIPPED TEST: <name>: <why> (<test>)` and appends it to `CDC_TEST_SKIP_LOG`.
pub fn skip(name: &str, why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string();
    if !skip_allowed(name) {
        panic!(
            "{test} cannot run here: {why}. A skip fails unless it is allowed: set \
             {ALLOW_SKIP_ENV}={name} to skip it on purpose"
        );
    }
    let line = format!("{SKIP_PREFIX} {name}: {why} ({test})");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            panic!("cannot record the skip in {}: {e}", path.to_string_lossy());
        }
    }
}
