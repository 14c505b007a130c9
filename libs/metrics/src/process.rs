//! The process's own figures, read from `/proc` at scrape time, with the
//! names every Prometheus client library uses (`process_*`), so standard
//! dashboards and alerts work unchanged.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Seconds since the epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// When this process started, in seconds since the epoch: the boot time
/// (`/proc/stat`'s `btime`) plus the process's start in ticks after boot
/// (`/proc/self/stat` field 22). `None` where `/proc` does not say.
pub fn start_unix() -> Option<i64> {
    let btime: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3: field 22 is the 20th.
    let ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(btime + (ticks / TICKS_PER_SECOND) as i64)
}

/// The host's one-minute load average (`/proc/loadavg`).
pub fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// What `/proc/self` says now (`None` for what it does not say: another OS).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessFigures {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
}

/// Clock ticks per second of `/proc/self/stat`'s times: 100 on every Linux
/// architecture Rust supports (the kernel's USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_SIZE: u64 = 4096;

impl ProcessFigures {
    pub fn read() -> Self {
        let mut f = Self::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // The command name (field 2) may hold spaces: split after its ')'.
            if let Some((_, rest)) = stat.rsplit_once(')') {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                // rest starts at field 3 (state): field n is fields[n - 3].
                let num = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
                if let (Some(utime), Some(stime)) = (num(14), num(15)) {
                    f.cpu_seconds = Some((utime + stime) as f64 / TICKS_PER_SECOND);
                }
                f.threads = num(20);
                f.virtual_bytes = num(23);
                f.resident_bytes = num(24).map(|pages| pages * PAGE_SIZE);
            }
        }
        f.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        f.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
            });
        f
    }
}

/// Registers this scrape's process metrics in `registry`.
pub(crate) fn register(registry: &mut Registry, started_unix: i64) {
    let f = ProcessFigures::read();
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(v);
            registry.register(name, help, g);
        }
    };
    gauge(
        registry,
        "process_start_time_seconds",
        "Start time of the process since the epoch, in seconds",
        Some(started_unix as f64),
    );
    gauge(
        registry,
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        f.resident_bytes.map(|v| v as f64),
    );
    gauge(
        registry,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        f.virtual_bytes.map(|v| v as f64),
    );
    gauge(
        registry,
        "process_open_fds",
        "Open file descriptors",
        f.open_fds.map(|v| v as f64),
    );
    gauge(
        registry,
        "process_max_fds",
        "Limit of open file descriptors",
        f.max_fds.map(|v| v as f64),
    );
    gauge(
        registry,
        "process_threads",
        "OS threads of the process",
        f.threads.map(|v| v as f64),
    );
    if let Some(cpu) = f.cpu_seconds {
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(cpu);
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            c,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_is_read() {
        let f = ProcessFigures::read();
        assert!(f.resident_bytes.unwrap() > 0);
        assert!(f.open_fds.unwrap() > 0);
        assert!(f.max_fds.unwrap() > 0);
        assert!(f.cpu_seconds.is_some());
        let started = start_unix().unwrap();
        assert!(
            (now_unix() - 3600..=now_unix()).contains(&started),
            "{started}"
        );
    }
}
