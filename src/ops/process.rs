//! The standard process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, ...), read from `/proc/self` at each scrape. prometheus-client has
//! no process collector; these are the names every Prometheus client library uses, so the
//! usual dashboards and alerts (memory growth, fd exhaustion) work on the worker as is.
//! On a system without `/proc` the metrics are simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of `/proc/self`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

impl Reading {
    /// Reads the current process; `None` without a Linux `/proc`.
    pub fn now() -> Option<Reading> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        // SAFETY: sysconf only reads a constant of the C library.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        parse(&stat, &boot, &limits, open_fds, ticks as f64, page as u64)
    }
}

/// The reading from the texts of `/proc/self/stat`, `/proc/stat` and `/proc/self/limits`.
/// Pure, so the field positions are unit-tested.
fn parse(
    stat: &str,
    boot: &str,
    limits: &str,
    open_fds: u64,
    ticks_per_second: f64,
    page_size: u64,
) -> Option<Reading> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields
    // after its closing parenthesis. There, field 3 (state) is index 0.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { f.get(n - 3)?.parse().ok() };
    let (utime, stime) = (field(14)?, field(15)?);
    let start_ticks = field(22)?;
    let vsize = field(23)? as u64;
    let rss_pages = field(24)? as u64;
    let btime: f64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok());
    Some(Reading {
        cpu_seconds: (utime + stime) / ticks_per_second,
        resident_bytes: rss_pages * page_size,
        virtual_bytes: vsize,
        start_time_seconds: btime + start_ticks / ticks_per_second,
        open_fds,
        max_fds,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(r) = Reading::now() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(r.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            r.resident_bytes as f64,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            r.virtual_bytes as f64,
        )?;
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            r.start_time_seconds,
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors",
            r.open_fds as f64,
        )?;
        if let Some(max) = r.max_fds {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_texts() {
        // A command name with a space and a parenthesis, as a process may name itself.
        let stat = "4242 (cdc (worker) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    3 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let r = parse(stat, boot, limits, 12, 100.0, 4096).unwrap();
        assert_eq!(r.cpu_seconds, 3.0);
        assert_eq!(r.resident_bytes, 2560 * 4096);
        assert_eq!(r.virtual_bytes, 104_857_600);
        assert!(
            (r.start_time_seconds - 1_700_000_123.45).abs() < 1e-3,
            "{r:?}"
        );
        assert_eq!(r.open_fds, 12);
        assert_eq!(r.max_fds, Some(1024));
    }

    #[test]
    fn reads_this_process() {
        let r = Reading::now().expect("/proc is there on Linux");
        assert!(r.resident_bytes > 1 << 20, "{r:?}");
        assert!(r.open_fds >= 3, "{r:?}");
        assert!(r.start_time_seconds > 1.6e9, "{r:?}");
    }
}
