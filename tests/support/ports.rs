//! Ports of child processes without races. A port that was free a moment ago (bind to 0,
//! read the number, close) may be taken by anyone before the child binds it, and a
//! readiness probe on that port may then answer for another test's process. So:
//!
//! - a child that can bind port 0 and say which port it got does so (the worker's
//!   metrics listener: [`crate::support::WorkerProcess::metrics_addr`]);
//! - a child that must be told its port (`next start -p`, `redis-server --port`,
//!   pgbouncer) is started by [`spawn_on_free_port`], which waits until a process of the
//!   child's own process group listens there (read from `/proc`), and starts it again on
//!   another port if the child exited (the port was taken) or another process holds it;
//! - a port that must refuse connections is [`CLOSED_PORT`], never a "free" one.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A port nothing listens on (9, discard; below 1024, so no test process binds it).
pub const CLOSED_PORT: u16 = 9;

/// A TCP port that was free a moment ago. Hand it only to [`spawn_on_free_port`]: anyone
/// may take it before the child binds it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Who listens on a port.
#[derive(Debug, PartialEq, Eq)]
pub enum Listener {
    /// Nobody (yet).
    Nobody,
    /// A process of the process group we asked about.
    Ours,
    /// Some other process (its pid).
    Other(u32),
}

/// Whether a process in process group `pgid` (or the process `pgid` itself) listens on
/// TCP `port` (any local address), from `/proc/net/tcp{,6}` and `/proc/*/fd`.
pub fn listener(port: u16, pgid: u32) -> Listener {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return Listener::Nobody;
    }
    let holders = pids_holding(&inodes);
    if holders.is_empty() {
        // The socket's process was not found (it is starting or just ended): look again.
        return Listener::Nobody;
    }
    if holders
        .iter()
        .any(|&pid| pid == pgid || process_group(pid) == Some(pgid))
    {
        Listener::Ours
    } else {
        Listener::Other(holders[0])
    }
}

/// The socket inodes in state LISTEN on `port`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9); st 0A is LISTEN.
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                if let Ok(inode) = f[9].parse() {
                    out.push(inode);
                }
            }
        }
    }
    out
}

/// The pids with an open file descriptor on one of the sockets `inodes`.
fn pids_holding(inodes: &[u64]) -> Vec<u32> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go while we look: whatever cannot be read is not it.
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| wanted.iter().any(|w| Path::new(w) == target))
        });
        if holds {
            pids.push(pid);
        }
    }
    pids
}

/// The process group of `pid` (field 5 of `/proc/PID/stat`).
pub fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(2)?.parse().ok()
}

/// Kills `child`'s whole process group (it must lead one: `process_group(0)`) and reaps it.
pub fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) on the process group of our own child, not reaped yet.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Waits until a process of `child`'s process group listens on `port`. Err with the
/// reason if the child exits first, another process listens there, or `timeout` passes.
pub fn wait_listening(child: &mut Child, port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match listener(port, child.id()) {
            Listener::Ours => return Ok(()),
            Listener::Other(pid) => {
                return Err(format!(
                    "another process (pid {pid}) listens on port {port}"
                ))
            }
            Listener::Nobody => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "exited ({status}) before it listened on port {port}"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("did not listen on port {port} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `spawn(port)` on a free port and returns it once a process of its process group
/// listens there (the child must lead its own process group: `process_group(0)`); on a
/// conflict (the child exited, another process took the port) starts it again on another
/// port. `log(port)` names the child's log, for the message of a failure.
pub fn spawn_on_free_port(
    what: &str,
    timeout: Duration,
    mut spawn: impl FnMut(u16) -> Child,
    log: impl Fn(u16) -> String,
) -> (Child, u16) {
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let mut child = spawn(port);
        match wait_listening(&mut child, port, timeout) {
            Ok(()) => return (child, port),
            Err(why) => {
                kill_group(&mut child);
                eprintln!("{what}: {why}; trying another port");
                failures.push(format!("{why}; log:\n{}", log(port)));
            }
        }
    }
    panic!("{what} never listened:\n{}", failures.join("\n---\n"));
}
