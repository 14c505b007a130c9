//! The admin API: `/api/v1/...`, JSON in and out, bearer token required.

mod invocations;
mod jobs;
pub mod logs;
mod modules;
mod nodes;
pub mod openapi;
mod schedules;
mod scripts;
mod secrets;
mod stats;
mod subscriptions;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use picloud_core::{Limits, ScriptName};
use picloud_http::{ApiError, ErrorCode, TokenHash};
use picloud_store::Store;

use crate::compiler::Compiler;
use crate::publisher::Publisher;

pub struct AppState {
    pub store: Store,
    pub bus: picloud_bus::Bus,
    pub publisher: Publisher,
    pub compiler: Compiler,
    pub token: TokenHash,
    pub limits: Limits,
    pub max_limits: Limits,
    pub max_source_bytes: usize,
    /// Attempts of a schedule's firing when it does not set its own.
    pub max_attempts: u32,
    pub secrets: Arc<crate::secrets::SecretBox>,
    /// How live-log followers are served.
    pub follow: logs::FollowSettings,
}

pub type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    // JSON escaping can double a source's size; leave room for the envelope.
    let body_limit = state.max_source_bytes * 2 + (64 << 10);
    let api = Router::new()
        .route("/scripts", get(scripts::list))
        .route(
            "/scripts/{name}",
            get(scripts::get)
                .put(scripts::deploy)
                .delete(scripts::delete),
        )
        .route("/scripts/{name}/versions", get(scripts::versions))
        .route("/scripts/{name}/logs", get(logs::script_logs))
        .route("/scripts/{name}/versions/{version}", get(scripts::version))
        .route("/scripts/{name}/rollback", post(scripts::rollback))
        .route("/modules", get(modules::list))
        .route("/modules/{name}", get(modules::get).put(modules::deploy))
        .route("/secrets", get(secrets::list))
        .route("/secrets/{name}", put(secrets::put).delete(secrets::delete))
        .route("/schedules", get(schedules::list).post(schedules::create))
        .route("/schedules/preview", get(schedules::preview))
        .route(
            "/schedules/{id}",
            get(schedules::get)
                .patch(schedules::patch)
                .delete(schedules::delete),
        )
        .route("/invocations", get(invocations::list))
        .route("/invocations/{id}", get(invocations::get))
        .route("/invocations/{id}/logs", get(logs::invocation_logs))
        .route(
            "/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/subscriptions/{id}",
            axum::routing::delete(subscriptions::delete),
        )
        .route("/nodes", get(nodes::list))
        .route("/dead-letters", get(subscriptions::dead_letters))
        .route(
            "/dead-letters/{id}",
            get(subscriptions::dead_letter).delete(subscriptions::discard),
        )
        .route("/dead-letters/{id}/replay", post(subscriptions::replay))
        .route("/stats", get(stats::stats))
        .route("/topology", get(stats::topology))
        .route("/jobs", get(jobs::list))
        .route("/jobs/{seq}", get(jobs::get).delete(jobs::discard))
        .route("/jobs/{seq}/replay", post(jobs::replay))
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state.clone());
    // The status URL of an async HTTP call is public: its id is the secret.
    let public = Router::new()
        .route("/status/{id}", get(invocations::public_status))
        .route("/api/v1/openapi.json", get(openapi::document))
        .with_state(state);
    Router::new().nest("/api/v1", api).merge(public)
}

async fn authorize(
    State(state): State<Shared>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !state.token.verify_header(header) {
        return Err(ApiError::unauthorized());
    }
    Ok(next.run(req).await)
}

fn script_name(raw: &str) -> Result<ScriptName, ApiError> {
    ScriptName::parse(raw).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            ErrorCode::InvalidName,
            format!("invalid name {}: {e}", picloud_core::quote(raw)),
        )
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e)
}
