//! The gateway's route table.
//!
//! A watch on the bus's route bucket keeps an in-memory copy current, so the
//! hot path is a map lookup. A miss is not trusted (the watch may be catching
//! up, e.g. right after start): it falls back to a direct read of the bucket,
//! so an unknown script is a 404 only when the bus says so.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use picloud_bus::{Bus, BusError, Route, RouteChange};
use picloud_core::Shutdown;

#[derive(Clone, Default)]
pub struct RouteTable {
    inner: Arc<RwLock<HashMap<String, Route>>>,
}

impl RouteTable {
    pub fn cached(&self, script: &str) -> Option<Route> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(script)
            .cloned()
    }

    /// The cached route, or the bus's answer on a miss.
    pub async fn lookup(&self, bus: &Bus, script: &str) -> Result<Option<Route>, BusError> {
        if let Some(r) = self.cached(script) {
            return Ok(Some(r));
        }
        bus.get_route(script).await
    }

    fn apply(&self, change: RouteChange) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match change {
            RouteChange::Put(route) => {
                map.insert(route.script.clone(), route);
            }
            RouteChange::Deleted(script) => {
                map.remove(&script);
            }
        }
    }

    /// Follows the route bucket until shutdown, re-opening the watch if it
    /// fails.
    pub async fn follow(self, bus: Bus, shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match bus.watch_routes().await {
                Ok(mut changes) => loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        n = changes.next() => n,
                    };
                    match next {
                        Some(Ok(change)) => {
                            backoff = Duration::from_millis(100);
                            self.apply(change);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "route watch error");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch routes"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
