//! What happens when someone scrapes: the [`Probe`]s are read (at once,
//! each within [`PROBE_TIMEOUT`]), the process's `/proc` figures are read,
//! and everything is encoded in the Prometheus text format (0.0.4).
//!
//! A probe is the async counterpart of a `prometheus_client` collector: it
//! reads a value that lives elsewhere (JetStream's pending jobs, the
//! outbox's rows in Postgres) at scrape time, so nothing polls those sources
//! while nobody scrapes. A probe that fails or is late leaves its metrics
//! out of that scrape rather than reporting a stale value.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::Metrics;

/// The longest a probe may take; a scrape waits at most this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One gauge value read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub name: &'static str,
    pub help: &'static str,
    pub value: f64,
}

/// A source of [`Reading`]s, read on every scrape and never otherwise.
pub trait Probe: Send + Sync + 'static {
    /// The readings now; none when the source cannot answer.
    fn read(&self) -> BoxFuture<'static, Vec<Reading>>;
}

/// The registered probes, by key: registering a key again replaces the
/// probe (a role restarted in the same process, as tests do).
#[derive(Default)]
pub(crate) struct Probes {
    probes: Mutex<BTreeMap<&'static str, Arc<dyn Probe>>>,
    /// One scrape reads the probes at a time: a burst of scrapes does not
    /// become a burst of database queries.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Metrics {
    /// Reads `probe` on every scrape, under `key`.
    pub fn set_probe(&self, key: &'static str, probe: Arc<dyn Probe>) {
        self.scrape
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, probe);
    }

    /// Reads the probes and `/proc`, and encodes every metric.
    pub async fn render(&self) -> String {
        let probes: Vec<Arc<dyn Probe>> = self
            .scrape
            .probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let readings = {
            let _turn = self.scrape.one_at_a_time.lock().await;
            futures::future::join_all(
                probes
                    .iter()
                    .map(|p| tokio::time::timeout(PROBE_TIMEOUT, p.read())),
            )
            .await
        };
        let mut now = Registry::default();
        let mut seen = std::collections::HashSet::new();
        for r in readings.into_iter().flatten().flatten() {
            // Two probes naming one metric would make the text invalid.
            if seen.insert(r.name) {
                let g = Gauge::<f64, AtomicU64>::default();
                g.set(r.value);
                now.register(r.name, r.help, g);
            }
        }
        crate::process::register(&mut now, self.started_unix());
        let mut out = String::with_capacity(8 << 10);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_text::encode(&mut out, &now);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Probe for Fixed {
        fn read(&self) -> BoxFuture<'static, Vec<Reading>> {
            let value = self.0;
            Box::pin(async move {
                vec![Reading {
                    name: "picloud_jobs_pending",
                    help: "test",
                    value,
                }]
            })
        }
    }

    struct Stuck;
    impl Probe for Stuck {
        fn read(&self) -> BoxFuture<'static, Vec<Reading>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn probes_are_read_on_scrape_and_a_stuck_one_is_left_out() {
        let m = Metrics::new(10);
        m.set_probe("jobs", Arc::new(Fixed(3.0)));
        assert!(m.render().await.contains("picloud_jobs_pending 3"));
        // Registered again under its key: replaced, not doubled.
        m.set_probe("jobs", Arc::new(Fixed(5.0)));
        m.set_probe("stuck", Arc::new(Stuck));
        let started = std::time::Instant::now();
        let text = m.render().await;
        assert!(started.elapsed() < PROBE_TIMEOUT * 2);
        assert!(text.contains("picloud_jobs_pending 5"), "{text}");
        assert_eq!(text.matches("# TYPE picloud_jobs_pending").count(), 1);
    }
}
