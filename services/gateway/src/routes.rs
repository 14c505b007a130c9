//! The gateway's route table.
//!
//! A watch on the bus's route bucket keeps an in-memory copy current, so the
//! hot path is a map lookup. A miss is not trusted (the watch may be catching
//! up, e.g. right after start): it falls back to a direct read of the bucket,
//! so an unknown script is a 404 only when the bus says so.
//!
//! The scripts' custom HTTP routes (`GET /users/:id`) are matched by a
//! [`RouteMatcher`] built from the same copy: rebuilt whole when a route
//! set changes (once per burst of changes, e.g. the bucket's history at
//! start) and swapped in, so a request reads it without taking a lock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{FutureExt, StreamExt};
use picloud_bus::{Bus, BusError, Route, RouteChange};
use picloud_core::routes::{RouteMatch, RouteMatcher};
use picloud_core::{Backoff, Shutdown};

#[derive(Clone, Default)]
pub struct RouteTable {
    inner: Arc<RwLock<HashMap<String, Route>>>,
    matcher: Arc<ArcSwap<RouteMatcher>>,
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

    /// The custom route `method path` matches (`path` as received).
    pub fn find(&self, method: &str, path: &str) -> Option<RouteMatch> {
        self.matcher.load().find(method, path)
    }

    /// Applies one change; true when a script's custom routes changed.
    fn apply(&self, change: RouteChange) -> bool {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match change {
            RouteChange::Put(route) => {
                let routes_changed = map
                    .get(&route.script)
                    .map_or(!route.http_routes.is_empty(), |old| {
                        old.http_routes != route.http_routes
                    });
                map.insert(route.script.clone(), route);
                routes_changed
            }
            RouteChange::Deleted(script) => map
                .remove(&script)
                .is_some_and(|old| !old.http_routes.is_empty()),
        }
    }

    /// Builds the matcher from the cached table and swaps it in.
    fn rebuild(&self) {
        let matcher = {
            let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
            let (matcher, skipped) = RouteMatcher::build(
                map.values()
                    .filter(|r| !r.http_routes.is_empty())
                    .map(|r| (r.script.as_str(), r.http_routes.as_slice())),
            );
            for why in skipped {
                tracing::warn!(route = %why, "custom route skipped");
            }
            matcher
        };
        tracing::debug!(routes = matcher.len(), "custom route table rebuilt");
        self.matcher.store(Arc::new(matcher));
    }

    /// Follows the route bucket until shutdown, re-opening the watch if it
    /// fails.
    pub async fn follow(self, bus: Bus, shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match bus.watch_routes().await {
                Ok(changes) => {
                    let mut changes = std::pin::pin!(changes);
                    let mut dirty = false;
                    loop {
                        // Apply what is already here, then rebuild once.
                        let next = match changes.next().now_or_never() {
                            Some(n) => n,
                            None => {
                                if std::mem::take(&mut dirty) {
                                    self.rebuild();
                                }
                                tokio::select! {
                                    _ = shutdown.cancelled() => return,
                                    n = changes.next() => n,
                                }
                            }
                        };
                        match next {
                            Some(Ok(change)) => {
                                backoff.reset();
                                dirty |= self.apply(change);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "route watch error");
                                break;
                            }
                            None => break,
                        }
                    }
                    if dirty {
                        self.rebuild();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch routes"),
            }
            if picloud_bus::pause_or_stop(&mut backoff, &shutdown).await {
                return;
            }
        }
    }
}
