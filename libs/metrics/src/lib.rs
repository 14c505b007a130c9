//! Prometheus metrics, shared by every role of a process.
//!
//! - [`Metrics`]: the process's registry and its instruments (invocations,
//!   HTTP requests, workers, cron lateness, kv conflicts, dead letters,
//!   sandbox limit hits, build info). Roles record into [`global()`]: one
//!   process serves one `/metrics`, whatever roles it runs (`picloud up`
//!   runs all three).
//! - [`labels`]: bounded label values. Script names beyond
//!   [`DEFAULT_MAX_SCRIPTS`] (configurable) fold into `script="_other"`;
//!   sandbox limit messages map to a fixed set of `limit` values.
//! - [`scrape`]: what is read only when someone scrapes: [`Probe`]s (the
//!   manager's JetStream and outbox readings) and the process's `/proc`
//!   figures, then the text encoding (`picloud_http` serves it as
//!   `GET /metrics`).
//!
//! Architecture invariant: nothing here runs on a timer. Recording is a few
//! atomic operations on the hot path; everything else happens inside a
//! scrape, so an unscraped process spends nothing on metrics.
//! The metric names are listed in docs/operations.md ("Metrics").

#![forbid(unsafe_code)]

pub mod labels;
pub mod process;
pub mod scrape;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use labels::{DEFAULT_MAX_SCRIPTS, OTHER_SCRIPTS, ScriptFold, limit_label};
pub use scrape::{CONTENT_TYPE, Probe, Reading};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    script: Arc<String>,
    trigger: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScriptTrigger {
    script: Arc<String>,
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    surface: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Surface {
    surface: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Limit {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: &'static str,
}

type Histograms<S> = Family<S, Histogram, fn() -> Histogram>;

/// Script run times: 1 ms to ~33 s.
fn duration_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

/// HTTP answers: 0.5 ms to ~16 s.
fn http_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// One process's instruments. Cheap to record into from any thread.
pub struct Metrics {
    registry: Registry,
    scripts: ScriptFold,
    invocations: Family<InvocationLabels, Counter>,
    invocation_duration: Histograms<ScriptTrigger>,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Histograms<Surface>,
    workers: Gauge,
    workers_busy: Gauge,
    cron_lateness: Histogram,
    kv_conflicts: Counter,
    dead_letters: Counter,
    limit_hits: Family<Limit, Counter>,
    scrape: scrape::Probes,
    /// Seconds since the epoch this process started (for uptime).
    started_unix: AtomicI64,
}

impl Metrics {
    /// A fresh set of instruments (tests; processes use [`global()`]).
    pub fn new(max_scripts: usize) -> Self {
        let m = Self {
            registry: Registry::default(),
            scripts: ScriptFold::new(max_scripts),
            invocations: Family::default(),
            invocation_duration: Family::new_with_constructor(duration_histogram),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(http_histogram),
            workers: Gauge::default(),
            workers_busy: Gauge::default(),
            cron_lateness: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 14),
            ),
            kv_conflicts: Counter::default(),
            dead_letters: Counter::default(),
            limit_hits: Family::default(),
            scrape: scrape::Probes::default(),
            started_unix: AtomicI64::new(process::start_unix().unwrap_or_else(process::now_unix)),
        };
        m.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "picloud_invocations",
            "Invocations run to an end, by script, trigger and outcome",
            self.invocations.clone(),
        );
        r.register(
            "picloud_invocation_duration_seconds",
            "Run time of invocations, by script and trigger",
            self.invocation_duration.clone(),
        );
        r.register(
            "picloud_http_requests",
            "HTTP requests answered, by surface (fn, api, status, health, metrics, other) and status code",
            self.http_requests.clone(),
        );
        r.register(
            "picloud_http_request_duration_seconds",
            "Time to answer an HTTP request (to its response head), by surface",
            self.http_duration.clone(),
        );
        r.register(
            "picloud_executor_workers",
            "Worker threads of the executors in this process",
            self.workers.clone(),
        );
        r.register(
            "picloud_executor_workers_busy",
            "Worker threads running a script right now",
            self.workers_busy.clone(),
        );
        r.register(
            "picloud_cron_lateness_seconds",
            "How long after its scheduled instant a cron firing was claimed",
            self.cron_lateness.clone(),
        );
        r.register(
            "picloud_kv_commit_conflicts",
            "Commits refused because a key the invocation read had changed (the invocation re-runs)",
            self.kv_conflicts.clone(),
        );
        r.register(
            "picloud_dead_letters",
            "Jobs stored as dead letters after their last attempt",
            self.dead_letters.clone(),
        );
        r.register(
            "picloud_sandbox_limit_hits",
            "Invocations ended by a sandbox limit, by limit",
            self.limit_hits.clone(),
        );
        let build = Family::<Version, Gauge>::default();
        build
            .get_or_create(&Version {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("picloud_build_info", "PiCloud's version (always 1)", build);
        self
    }

    /// Sets how many distinct script names get a label of their own.
    pub fn set_max_scripts(&self, max: usize) {
        self.scripts.set_max(max);
    }

    /// One invocation ran to an end: `outcome` is its record's status
    /// (`ok`, `error`, `limit_exceeded`, `unavailable`, `expired`), `limit`
    /// the sandbox limit that ended it (see [`limit_label`]).
    pub fn invocation(
        &self,
        script: &str,
        trigger: &'static str,
        outcome: &'static str,
        limit: Option<&'static str>,
        took: Duration,
    ) {
        let script = self.scripts.label(script);
        self.invocations
            .get_or_create(&InvocationLabels {
                script: script.clone(),
                trigger,
                outcome,
            })
            .inc();
        self.invocation_duration
            .get_or_create(&ScriptTrigger { script, trigger })
            .observe(took.as_secs_f64());
        if let Some(limit) = limit {
            self.limit_hits.get_or_create(&Limit { limit }).inc();
        }
    }

    /// One HTTP request answered with `status`.
    pub fn http_request(&self, surface: &'static str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels { surface, status })
            .inc();
        self.http_duration
            .get_or_create(&Surface { surface })
            .observe(took.as_secs_f64());
    }

    /// An executor started (`n` > 0) or stopped (`n` < 0) `n` workers.
    pub fn add_workers(&self, n: i64) {
        self.workers.inc_by(n);
    }

    /// A worker is busy until the guard is dropped.
    pub fn worker_busy(&self) -> BusyGuard<'_> {
        self.workers_busy.inc();
        BusyGuard(&self.workers_busy)
    }

    /// A cron firing was claimed `late` after its instant.
    pub fn cron_lateness(&self, late: Duration) {
        self.cron_lateness.observe(late.as_secs_f64());
    }

    pub fn kv_commit_conflict(&self) {
        self.kv_conflicts.inc();
    }

    pub fn dead_letter(&self) {
        self.dead_letters.inc();
    }

    /// When this process started, in seconds since the epoch.
    pub fn started_unix(&self) -> i64 {
        self.started_unix.load(Ordering::Relaxed)
    }
}

/// Counts a busy worker while it lives.
pub struct BusyGuard<'a>(&'a Gauge);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process's instruments (made on first use, with
/// [`DEFAULT_MAX_SCRIPTS`]; [`Metrics::set_max_scripts`] changes it).
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(|| Metrics::new(DEFAULT_MAX_SCRIPTS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recorded_values_are_rendered() {
        let m = Metrics::new(2);
        m.invocation("hello", "http", "ok", None, Duration::from_millis(3));
        m.invocation(
            "boom",
            "event",
            "limit_exceeded",
            Some("operations"),
            Duration::from_millis(1),
        );
        m.http_request("fn", 200, Duration::from_millis(2));
        m.kv_commit_conflict();
        let text = m.render().await;
        for line in [
            r#"picloud_invocations_total{script="hello",trigger="http",outcome="ok"} 1"#,
            r#"picloud_invocation_duration_seconds_count{script="hello",trigger="http"} 1"#,
            r#"picloud_sandbox_limit_hits_total{limit="operations"} 1"#,
            r#"picloud_http_requests_total{surface="fn",status="200"} 1"#,
            "picloud_kv_commit_conflicts_total 1",
            r#"picloud_build_info{version=""#,
            "process_start_time_seconds ",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[tokio::test]
    async fn scripts_past_the_bound_fold_into_other() {
        let m = Metrics::new(2);
        for s in ["a", "b", "c", "d", "a"] {
            m.invocation(s, "http", "ok", None, Duration::ZERO);
        }
        let text = m.render().await;
        assert!(text.contains(r#"script="a",trigger="http",outcome="ok"} 2"#));
        assert!(text.contains(r#"script="b",trigger="http",outcome="ok"} 1"#));
        assert!(text.contains(r#"script="_other",trigger="http",outcome="ok"} 2"#));
        assert!(!text.contains(r#"script="c""#), "{text}");
    }

    #[tokio::test]
    async fn busy_workers_come_and_go() {
        let m = Metrics::new(2);
        m.add_workers(4);
        let g = m.worker_busy();
        assert!(m.render().await.contains("picloud_executor_workers_busy 1"));
        drop(g);
        let text = m.render().await;
        assert!(text.contains("picloud_executor_workers_busy 0"));
        assert!(text.contains("picloud_executor_workers 4"));
    }
}

/// The hot path's share: what recording one sync call costs (an
/// invocation and an HTTP request). `cargo test --release -p
/// picloud-metrics -- --ignored --nocapture recording_cost`.
#[cfg(test)]
mod cost {
    use super::*;

    #[test]
    #[ignore = "a measurement, run by hand (see docs/PERFORMANCE.md)"]
    fn recording_cost() {
        let m = Metrics::new(DEFAULT_MAX_SCRIPTS);
        let n = 1_000_000u32;
        let started = std::time::Instant::now();
        for _ in 0..n {
            m.invocation("hello", "http", "ok", None, Duration::from_micros(50));
            m.http_request("fn", 200, Duration::from_micros(80));
        }
        let each = started.elapsed() / n;
        eprintln!("recording one sync call: {each:?}");
    }
}
