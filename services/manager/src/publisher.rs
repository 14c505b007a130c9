//! Keeps the bus in step with Postgres.
//!
//! Postgres is the source of truth for scripts; the bus's route and version
//! buckets are what gateways and executors read. After every change the
//! manager calls [`Publisher::publish_script`], which publishes what the
//! database says *now* (not what the request wrote), one script at a time
//! under a lock, so concurrent deploys and rollbacks cannot leave the route
//! on an older version than the database.
//!
//! When a bus write fails (NATS down), nothing is lost: a full sync is
//! requested, and it retries with backoff until the buckets equal the
//! database (routes and versions of deleted scripts removed too). It also
//! runs once at start. No timer runs while in sync.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use picloud_bus::{Bus, BusError, ModuleDoc, Route, VersionDoc};
use picloud_core::{Backoff, Shutdown};
use picloud_store::{ModuleVersionRow, Store, VersionRow};
use tokio::sync::{Mutex, Notify};

#[derive(Clone)]
pub struct Publisher {
    store: Store,
    bus: Bus,
    wake: Arc<Notify>,
    lock: Arc<Mutex<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] picloud_store::StoreError),
}

impl Publisher {
    pub fn new(store: Store, bus: Bus) -> Self {
        Self {
            store,
            bus,
            wake: Arc::new(Notify::new()),
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Makes the bus show `script` as the database has it now: its active
    /// version routed, or no route when the script is gone. On failure a
    /// background sync is requested before the error is returned.
    pub async fn publish_script(
        &self,
        script: &str,
        deleted_versions: &[u32],
    ) -> Result<(), PublishError> {
        let result = self.publish_locked(script, deleted_versions).await;
        if result.is_err() {
            self.request_sync();
        }
        result
    }

    async fn publish_locked(
        &self,
        script: &str,
        deleted_versions: &[u32],
    ) -> Result<(), PublishError> {
        let _guard = self.lock.lock().await;
        match self.store.active_version(script).await? {
            Some(v) => {
                self.publish_pins(&v).await?;
                self.bus.put_version(&doc(&v)).await?;
                self.bus.put_route(&route(&v)).await?;
            }
            None => {
                self.bus.delete_route(script).await?;
                self.bus.purge_versions(script, deleted_versions).await?;
            }
        }
        Ok(())
    }

    /// Puts a new module version on the bus.
    pub async fn publish_module(&self, m: &ModuleVersionRow) -> Result<(), PublishError> {
        let result = self.bus.put_module(&module_doc(m)).await;
        if result.is_err() {
            self.request_sync();
        }
        Ok(result?)
    }

    /// Makes sure every module version `v` pins is on the bus (they were put
    /// there when deployed; this repairs a failed or lost write).
    async fn publish_pins(&self, v: &VersionRow) -> Result<(), PublishError> {
        for (name, version) in &v.modules {
            if self.bus.get_module(name, *version).await?.is_some() {
                continue;
            }
            if let Some(m) = self.store.module_version(name, *version).await? {
                self.bus.put_module(&module_doc(&m)).await?;
            }
        }
        Ok(())
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
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
            loop {
                match self.sync_all().await {
                    Ok(n) => {
                        tracing::info!(scripts = n, "bus in sync with the database");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff.ceiling(), "bus sync failed")
                    }
                }
                if picloud_bus::pause_or_stop(&mut backoff, &shutdown).await {
                    return;
                }
            }
        }
    }

    async fn sync_all(&self) -> Result<usize, PublishError> {
        let _guard = self.lock.lock().await;
        let active = self.store.active_versions().await?;
        for v in &active {
            self.publish_pins(v).await?;
            self.bus.put_version(&doc(v)).await?;
            self.bus.put_route(&route(v)).await?;
        }
        let live: HashSet<&str> = active.iter().map(|v| v.script.as_str()).collect();
        for name in self.bus.route_names().await? {
            if !live.contains(name.as_str()) {
                self.bus.delete_route(&name).await?;
            }
        }
        for (script, version) in self.bus.version_keys().await? {
            if !live.contains(script.as_str()) {
                self.bus.purge_versions(&script, &[version]).await?;
            }
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
        modules: v.modules.clone(),
    }
}

fn module_doc(m: &ModuleVersionRow) -> ModuleDoc {
    ModuleDoc {
        module: m.module.clone(),
        version: m.version,
        source: m.source.clone(),
    }
}

fn route(v: &VersionRow) -> Route {
    Route {
        script: v.script.clone(),
        version: v.version,
        wall_time_ms: v.limits.wall_time_ms,
        keep_credentials: v.keep_credentials,
        http_routes: v.routes.clone(),
    }
}
