//! The manager's scrape-time readings (see `picloud_metrics::Probe`): jobs
//! waiting in JetStream and the outbox's lag in Postgres, read only when
//! someone scrapes `/metrics` or asks `GET /api/v1/nodes`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use picloud_bus::Bus;
use picloud_metrics::{Probe, Reading};
use picloud_store::Store;
use serde::Serialize;

/// A reading that takes longer is left out (a scrape must stay quick even
/// when Postgres or NATS is slow).
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The queue figures of a cluster, as `GET /api/v1/nodes` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueLag {
    pub jobs_pending: Option<u64>,
    pub outbox_pending_rows: Option<i64>,
    pub outbox_oldest_row_age_seconds: Option<f64>,
}

impl QueueLag {
    /// Reads both sources at once, each within [`READ_TIMEOUT`].
    pub async fn read(bus: &Bus, store: &Store) -> Self {
        let (jobs, outbox) = tokio::join!(
            tokio::time::timeout(READ_TIMEOUT, bus.jobs_pending()),
            tokio::time::timeout(READ_TIMEOUT, store.outbox_lag()),
        );
        let jobs = jobs.ok().and_then(Result::ok);
        let outbox = outbox.ok().and_then(Result::ok);
        Self {
            jobs_pending: jobs,
            outbox_pending_rows: outbox.map(|(rows, _)| rows),
            outbox_oldest_row_age_seconds: outbox.map(|(_, age)| age),
        }
    }

    fn readings(&self) -> Vec<Reading> {
        let mut out = Vec::new();
        if let Some(n) = self.jobs_pending {
            out.push(Reading {
                name: "picloud_jobs_pending",
                help: "Async jobs stored in JetStream and not yet acknowledged (waiting, retrying or running)",
                value: n as f64,
            });
        }
        if let Some(n) = self.outbox_pending_rows {
            out.push(Reading {
                name: "picloud_outbox_pending_rows",
                help: "Outbox rows not yet published to JetStream",
                value: n as f64,
            });
        }
        if let Some(age) = self.outbox_oldest_row_age_seconds {
            out.push(Reading {
                name: "picloud_outbox_oldest_row_age_seconds",
                help: "Age of the oldest unpublished outbox row (0 when the outbox is empty)",
                value: age,
            });
        }
        out
    }
}

/// The manager's probe: [`QueueLag`] as metrics.
struct Lag {
    bus: Bus,
    store: Store,
}

impl Probe for Lag {
    fn read(&self) -> BoxFuture<'static, Vec<Reading>> {
        let (bus, store) = (self.bus.clone(), self.store.clone());
        Box::pin(async move { QueueLag::read(&bus, &store).await.readings() })
    }
}

/// Registers the manager's probe with the process's metrics.
pub fn register(bus: Bus, store: Store) {
    picloud_metrics::global().set_probe("manager_queue_lag", Arc::new(Lag { bus, store }));
}
