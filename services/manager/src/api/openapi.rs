//! The OpenAPI 3.1 document of every HTTP endpoint a PiCloud serves, at
//! `GET /api/v1/openapi.json` (public). It is generated from the handlers'
//! `#[utoipa::path]` attributes and their request and response types; the
//! gateway's `/fn` part comes from `picloud_gateway::openapi`.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use picloud_core::Uuid;
use picloud_http::{ErrorBody, ErrorCode};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};

use super::{
    invocations, jobs, logs, modules, nodes, schedules, scripts, secrets, stats, subscriptions,
};

/// A script, module or secret name in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct NameParam {
    /// Lower-case letters, digits, `-` and `_`; starts with a letter or digit.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    name: String,
}

/// A UUID in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct IdParam {
    id: Uuid,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "PiCloud",
        description = "Upload a Rhai script, get an HTTP endpoint. The admin API \
            (`/api/v1`) needs `Authorization: Bearer <admin token>`; `/fn`, `/status`, \
            the health endpoints, `/metrics` and this document do not. Every error is \
            `{\"error\": {\"code\", \"message\", \"details\"?}}`."
    ),
    paths(
        scripts::list,
        scripts::get,
        scripts::deploy,
        scripts::delete,
        scripts::versions,
        scripts::version,
        scripts::rollback,
        modules::list,
        modules::get,
        modules::deploy,
        secrets::list,
        secrets::put,
        secrets::delete,
        schedules::list,
        schedules::create,
        schedules::preview,
        schedules::get,
        schedules::patch,
        schedules::delete,
        invocations::list,
        invocations::get,
        logs::invocation_logs,
        logs::script_logs,
        subscriptions::list,
        subscriptions::create,
        subscriptions::delete,
        subscriptions::dead_letters,
        subscriptions::dead_letter,
        subscriptions::discard,
        subscriptions::replay,
        jobs::list,
        jobs::get,
        jobs::replay,
        jobs::discard,
        stats::stats,
        stats::topology,
        nodes::list,
        invocations::public_status,
        document,
        healthz,
        readyz,
        metrics,
    ),
    components(schemas(ErrorCode, ErrorBody)),
    modifiers(&BearerToken),
    security(("admin_token" = [])),
    tags(
        (name = "scripts", description = "Scripts and their versions"),
        (name = "modules", description = "Shared modules scripts import"),
        (name = "secrets", description = "Encrypted values scripts read"),
        (name = "schedules", description = "Cron schedules"),
        (name = "subscriptions", description = "Topic subscriptions"),
        (name = "dead letters", description = "Jobs that failed every attempt"),
        (name = "invocations", description = "The invocation log"),
        (name = "logs", description = "Live and recent log lines of scripts and invocations"),
        (name = "jobs", description = "Jobs still queued: stuck ones can be replayed or discarded"),
        (name = "observability", description = "Stats, the event topology and the running nodes"),
        (name = "functions", description = "Calling scripts (no token)"),
        (name = "operations", description = "Health, metrics and this document (no token)"),
    )
)]
struct ApiDoc;

/// The `admin_token` security scheme: `Authorization: Bearer <token>`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`picloud up` prints it and keeps it in the data directory)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole document: the admin API, `/status`, health, metrics, the
/// gateway's `/fn` and the dashboard.
pub fn document_value() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(picloud_gateway::openapi::GatewayDoc::openapi());
    doc.merge(crate::dashboard::DashboardDoc::openapi());
    name_operations(&mut doc);
    doc
}

/// Gives every operation an id unique in the document, from its method and
/// path (`get_scripts_by_name_versions`): utoipa names one after its handler
/// function, and several modules have a `list` or a `get`, which typed
/// clients generated from the document (the dashboard's) would merge.
fn name_operations(doc: &mut utoipa::openapi::OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let mut words = Vec::new();
        for seg in path.trim_start_matches("/api/v1").split('/') {
            match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(param) => words.push(format!("by_{param}")),
                None if !seg.is_empty() => words.push(seg.to_owned()),
                None => {}
            }
        }
        // `/dashboard/` is not `/dashboard`.
        if path.len() > 1 && path.ends_with('/') {
            words.push("slash".to_owned());
        }
        let tail: String = words
            .join("_")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        for (method, op) in [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ] {
            if let Some(op) = op {
                op.operation_id = Some(format!("{method}_{tail}"));
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "this OpenAPI document", content_type = "application/json", body = Object)))]
pub async fn document() -> impl IntoResponse {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| {
        document_value()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    ([(CONTENT_TYPE, "application/json")], json.as_str())
}

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn healthz() {}

/// Every dependency of every role in this process answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "`ready`", content_type = "text/plain", body = String),
        (status = 503, description = "`not ready: ` and what is not", content_type = "text/plain", body = String),
    ))]
#[allow(dead_code)]
fn readyz() {}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
#[allow(dead_code)]
fn metrics() {}
