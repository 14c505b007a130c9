//! Keeps the bus in step with Postgres.
//!
//! Postgres is the source of truth for scripts; the bus's route and version
//! buckets are what gateways and executors read. A deploy writes Postgres,
//! then the bus. If the bus write fails (NATS down), the change is not lost:
//! the publisher is asked to sync, and it retries with backoff until every
//! active version is on the bus. It also syncs once at start. It sleeps
//! while there is nothing to do (no timer runs when in sync).

use std::sync::Arc;
use std::time::Duration;

use picloud_bus::{Bus, BusError, Route, VersionDoc};
use picloud_core::Shutdown;
use picloud_store::{Store, VersionRow};
use tokio::sync::Notify;

#[derive(Clone)]
pub struct Publisher {
    store: Store,
    bus: Bus,
    wake: Arc<Notify>,
}

impl Publisher {
    pub fn new(store: Store, bus: Bus) -> Self {
        Self {
            store,
            bus,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Publishes one version and makes it the script's route.
    pub async fn publish_active(&self, v: &VersionRow) -> Result<(), BusError> {
        self.bus.put_version(&doc(v)).await?;
        self.bus.put_route(&route(v)).await
    }

    pub async fn unpublish(&self, script: &str, versions: &[u32]) -> Result<(), BusError> {
        self.bus.delete_route(script).await?;
        self.bus.purge_versions(script, versions).await
    }

    /// Asks for a full sync in the background.
    pub fn request_sync(&self) {
        self.wake.notify_one();
    }

    pub async fn run(self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            let mut backoff = Duration::from_millis(200);
            loop {
                match self.sync_all().await {
                    Ok(n) => {
                        tracing::info!(scripts = n, "bus in sync with the database");
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "bus sync failed"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }

    async fn sync_all(&self) -> Result<usize, String> {
        let active = self
            .store
            .active_versions()
            .await
            .map_err(|e| e.to_string())?;
        for v in &active {
            self.publish_active(v).await.map_err(|e| e.to_string())?;
        }
        Ok(active.len())
    }
}

fn doc(v: &VersionRow) -> VersionDoc {
    VersionDoc {
        script: v.script.clone(),
        version: v.version,
        source: v.source.clone(),
        limits: v.limits.clone(),
    }
}

fn route(v: &VersionRow) -> Route {
    Route {
        script: v.script.clone(),
        version: v.version,
        wall_time_ms: v.limits.wall_time_ms,
    }
}
