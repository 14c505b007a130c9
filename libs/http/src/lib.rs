//! HTTP plumbing every role shares.
//!
//! - [`error`]: the JSON error shape (`{"error": {"code", "message"}}`) and
//!   the one place an error becomes a public answer; bearer-token checks.
//! - [`JsonBody`]: a JSON body extractor whose rejections are JSON errors too.
//! - [`health`]: `/healthz` and `/readyz` from a list of readiness checks.
//! - [`tasks`]: a role's background tasks; one that dies fails `/readyz`.
//! - [`metrics`](mod@metrics): `GET /metrics`, and the request metrics
//!   every listener records (by surface and status).
//! - [`serve`](mod@serve): bind, serve within [`ServeLimits`] (timeouts and a
//!   connection cap), drain on shutdown.

#![forbid(unsafe_code)]

pub mod error;
pub mod health;
pub mod metrics;
pub mod serve;
pub mod tasks;

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{FromRequest, Request};
use picloud_core::Shutdown;
use serde::de::DeserializeOwned;

pub use error::{ApiError, TokenHash};
pub use health::{ReadyCheck, health_router, ready_when};
pub use metrics::metrics_router;
pub use serve::ServeLimits;
pub use tasks::Tasks;

/// A JSON request body. Unlike `axum::Json`, a bad body is answered with our
/// JSON error shape and a message that says what is wrong.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(e.status(), "payload_too_large", "request body is too large")
            } else {
                ApiError::body_read(&e, None)
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Binds `listen` and serves `router` within `limits` until `shutdown`,
/// then drains.
pub async fn serve(
    listen: SocketAddr,
    router: Router,
    shutdown: Shutdown,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    serve_on(listener, router, shutdown, limits).await
}

/// Serves on an already-bound listener (tests bind port 0 first).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
    limits: ServeLimits,
) -> std::io::Result<()> {
    serve::serve_with(listener, router, shutdown, limits).await
}
