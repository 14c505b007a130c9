//! `GET /metrics` (Prometheus text format) on every listener that merges
//! [`metrics_router`], and the HTTP request metrics every listener records
//! in [`crate::serve`].

use axum::Router;
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::{ApiError, TokenHash};

/// `GET /metrics` for this process. With `token` (`PICLOUD_METRICS_TOKEN`),
/// a scrape must send `Authorization: Bearer <token>`; without, it is open
/// like `/healthz` (keep it off public routes: see docs/operations.md).
pub fn metrics_router(token: Option<&str>) -> Router {
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(TokenHash::of);
    Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let token = token.clone();
            async move {
                if let Some(token) = token {
                    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
                    if !token.verify_header(header) {
                        return ApiError::unauthorized().into_response();
                    }
                }
                let text = picloud_metrics::global().render().await;
                ([(CONTENT_TYPE, picloud_metrics::CONTENT_TYPE)], text).into_response()
            }
        }),
    )
}

/// The `surface` label of a request path: a small fixed set.
pub fn surface(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "fn" => "fn",
        "api" => "api",
        "status" => "status",
        "healthz" | "readyz" => "health",
        "metrics" => "metrics",
        "dashboard" => "dashboard",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surfaces_are_bounded() {
        assert_eq!(surface("/fn/hello/x"), "fn");
        assert_eq!(surface("/api/v1/scripts"), "api");
        assert_eq!(surface("/status/abc"), "status");
        assert_eq!(surface("/readyz"), "health");
        assert_eq!(surface("/metrics"), "metrics");
        assert_eq!(surface("/anything/a-stranger/sends"), "other");
        assert_eq!(surface(""), "other");
    }
}
