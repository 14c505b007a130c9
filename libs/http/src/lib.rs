//! HTTP plumbing every role shares.
//!
//! - [`error`]: the JSON error shape (`{"error": {"code", "message"}}`) and
//!   the one place an error becomes a public answer; bearer-token checks.
//! - [`JsonBody`], [`JsonQuery`], [`JsonPath`]: extractors whose rejections
//!   are JSON errors too; [`no_route`] and [`method_not_allowed`]: JSON 404
//!   and 405 for what no handler serves.
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
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Request};
use axum::http::Method;
use axum::http::request::Parts;
use picloud_core::Shutdown;
use serde::de::DeserializeOwned;

pub use error::{ApiError, ErrorBody, ErrorCode, TokenHash};
pub use health::{ReadyCheck, health_router, ready_when, set_draining};
pub use metrics::metrics_router;
pub use serve::ServeLimits;
pub use tasks::Tasks;

/// A JSON request body, which must be an object. Unlike `axum::Json`, a bad
/// body is answered with our JSON error shape and a message that says what
/// is wrong.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    e.status(),
                    ErrorCode::PayloadTooLarge,
                    "request body is too large",
                )
            } else {
                ApiError::body_read(&e, None)
            }
        })?;
        // Every body is an object; serde would also fill a struct from an
        // array, positionally.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::bad_request(
                "invalid JSON body: expected an object",
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// A query string. Unlike `axum::extract::Query`, a bad one is answered
/// with our JSON error shape, naming what is wrong.
pub struct JsonQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for JsonQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| JsonQuery(q.0))
            .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}

/// Path parameters. Unlike `axum::extract::Path`, a bad one (e.g. invalid
/// percent-encoded UTF-8) is answered with our JSON error shape.
pub struct JsonPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for JsonPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| JsonPath(p.0))
            .map_err(|e| ApiError::bad_request(format!("invalid path: {}", e.body_text())))
    }
}

/// The answer for a path no route serves: a JSON 404.
pub async fn no_route(OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::not_found(format!("no endpoint at {}", uri.path()))
}

/// The answer for a known path with a method it does not take: a JSON 405
/// (axum adds the `Allow` header).
pub async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{} does not take {method}", uri.path()),
    )
}

/// Makes every route of `router` answer an unknown method with the JSON
/// 405 of [`method_not_allowed`]. Apply it to the final, merged router (it
/// changes the routes present when called).
pub fn json_method_errors(router: Router) -> Router {
    router.method_not_allowed_fallback(method_not_allowed)
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

/// Serves one role alone on `config.listen` until `shutdown`: its own
/// `routes` with `/healthz`, `/readyz` (from `ready`) and `/metrics`, every
/// unknown method answered with the JSON 405. The caller then stops the
/// role's tasks.
pub async fn serve_role(
    config: &picloud_core::Config,
    routes: Router,
    ready: ReadyCheck,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let router = json_method_errors(
        routes
            .merge(health_router(vec![ready]))
            .merge(metrics_router(config.metrics_token())),
    );
    let limits = ServeLimits::from_config(config);
    serve(config.listen, router, shutdown, limits).await
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
