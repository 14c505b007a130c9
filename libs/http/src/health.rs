//! `/healthz` (the process answers) and `/readyz` (every dependency of every
//! role in this process answers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use futures::future::BoxFuture;

/// One readiness check: `Ok` when ready, otherwise what is not.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A readiness check from a cheap synchronous test: ready while `ok()`
/// holds, otherwise "`what`" is reported as not ready.
pub fn ready_when(what: &'static str, ok: impl Fn() -> bool + Send + Sync + 'static) -> ReadyCheck {
    let ok = Arc::new(ok);
    Arc::new(move || {
        let ready = ok();
        Box::pin(async move { if ready { Ok(()) } else { Err(what.to_owned()) } })
    })
}

/// Set once the process is stopping: `/readyz` then answers 503 "shutting
/// down" while the role still serves, so a load balancer's health check
/// takes it out before it closes its listener (`Config::drain_ms`).
static DRAINING: AtomicBool = AtomicBool::new(false);

/// Marks this process as stopping (see [`DRAINING`]); for the binary's
/// signal handler.
pub fn set_draining() {
    DRAINING.store(true, Ordering::Relaxed);
}

pub fn health_router(checks: Vec<ReadyCheck>) -> Router {
    let checks = Arc::new(checks);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let checks = checks.clone();
                async move {
                    let mut failing = Vec::new();
                    if DRAINING.load(Ordering::Relaxed) {
                        failing.push("shutting down".to_owned());
                    }
                    for check in checks.iter() {
                        if let Err(what) = check().await {
                            failing.push(what);
                        }
                    }
                    if failing.is_empty() {
                        (StatusCode::OK, "ready".to_owned())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {}", failing.join("; ")),
                        )
                    }
                }
            }),
        )
}
