//! Scripts and versions.

use axum::Json;
use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use picloud_core::routes::RouteSpec;
use picloud_core::{LimitOverrides, Limits, quote};
use picloud_http::{ApiError, ErrorBody, ErrorCode, JsonBody, JsonPath};
use picloud_store::{NewVersion, ScriptRow, StoreError, VersionRow};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::openapi::NameParam;
use super::{Shared, internal, script_name};
use crate::imports::{self, ImportError};
use picloud_sandbox::CompileError;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    /// The Rhai source.
    source: String,
    #[serde(default, deserialize_with = "picloud_core::whole::object")]
    limits: LimitOverrides,
    /// Async jobs keep the caller's `Authorization`, `Cookie` and
    /// `Proxy-Authorization` headers (default: dropped before queueing).
    #[serde(default)]
    keep_credentials: bool,
    /// Custom HTTP routes (`"GET /users/:id"`); absent: none. They belong
    /// to the version: a redeploy states them again.
    #[serde(default)]
    routes: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    #[serde(deserialize_with = "picloud_core::whole::strict")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    version: u32,
}

#[derive(Serialize, ToSchema)]
pub struct ScriptView {
    name: String,
    active_version: u32,
    latest_version: u32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The active version's custom routes.
    routes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionView {
    script: String,
    version: u32,
    sha256: String,
    limits: Limits,
    modules: BTreeMap<String, u32>,
    keep_credentials: bool,
    routes: Vec<String>,
    created_at: DateTime<Utc>,
    /// The source (only where one version is shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ScriptDetail {
    #[serde(flatten)]
    script: ScriptView,
    active: VersionView,
}

impl From<ScriptRow> for ScriptView {
    fn from(r: ScriptRow) -> Self {
        Self {
            name: r.name,
            active_version: r.active_version,
            latest_version: r.latest_version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            routes: r.routes,
        }
    }
}

fn version_view(v: VersionRow, with_source: bool) -> VersionView {
    VersionView {
        script: v.script,
        version: v.version,
        sha256: v.sha256,
        limits: v.limits,
        modules: v.modules,
        keep_credentials: v.keep_credentials,
        routes: v.routes,
        created_at: v.created_at,
        source: with_source.then_some(v.source),
    }
}

fn no_script(name: &str) -> ApiError {
    ApiError::not_found(format!("no script named {}", quote(name)))
}

/// `PUT /scripts/{name}`: compile, store a new version, make it active.
#[utoipa::path(put, path = "/api/v1/scripts/{name}", tag = "scripts",
    params(NameParam),
    request_body = DeployBody,
    responses(
        (status = 200, description = "a new version, now active", body = VersionView),
        (status = 201, description = "the first version of a new script", body = VersionView),
        (status = 400, description = "bad name or body; a compile error has `details`", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "the body or source is too large", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
        (status = 503, description = "stored but not yet active (message bus down)", body = ErrorBody),
    ))]
pub async fn deploy(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
    JsonBody(body): JsonBody<DeployBody>,
) -> Result<Response, ApiError> {
    let name = script_name(&name)?;
    if body.source.len() > state.max_source_bytes {
        return Err(source_too_large(body.source.len(), state.max_source_bytes));
    }
    source_without_nul(&body.source)?;
    let routes = parse_routes(&body.routes)?;
    let limits = state.limits.resolve(&body.limits, &state.max_limits);
    let imports = state
        .compiler
        .check(body.source.clone(), limits.clone())
        .await
        .map_err(internal)?
        .map_err(compile_error)?;
    // Pin the module versions current now; redeploying picks up newer ones.
    let modules = imports::pin(&state.store, &imports)
        .await
        .map_err(import_error)?;
    let sha = sha256_hex(&body.source);
    let new = NewVersion {
        source: &body.source,
        sha256: &sha,
        limits: &limits,
        modules: &modules,
        keep_credentials: body.keep_credentials,
        routes: &routes,
    };
    let version = state
        .store
        .create_version_with(name.as_str(), new)
        .await
        .map_err(store_error)?;
    if let Err(e) = state.publisher.publish_script(name.as_str(), &[]).await {
        // Stored, so not lost: the publisher retries until the bus has it.
        tracing::warn!(error = %e, script = %name, "version stored but not yet on the bus");
        return Err(ApiError::unavailable(format!(
            "version {} was stored but could not be activated yet (message bus unavailable); it will be activated automatically",
            version.version
        )));
    }
    tracing::info!(script = %name, version = version.version, "deployed");
    let status = if version.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(version_view(version, false))).into_response())
}

/// `GET /scripts`: every script.
#[utoipa::path(get, path = "/api/v1/scripts", tag = "scripts",
    responses(
        (status = 200, description = "every script", body = Vec<ScriptView>),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn list(State(state): State<Shared>) -> Result<Json<Vec<ScriptView>>, ApiError> {
    let rows = state.store.list_scripts().await.map_err(internal)?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

/// `GET /scripts/{name}`: the script and its active version, with source.
#[utoipa::path(get, path = "/api/v1/scripts/{name}", tag = "scripts",
    params(NameParam),
    responses(
        (status = 200, description = "the script and its active version", body = ScriptDetail),
        (status = 400, description = "invalid name", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such script", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
) -> Result<Json<ScriptDetail>, ApiError> {
    let name = script_name(&name)?;
    let script = state
        .store
        .get_script(name.as_str())
        .await
        .map_err(internal)?
        .ok_or_else(|| no_script(name.as_str()))?;
    let active = state
        .store
        .get_version(name.as_str(), script.active_version)
        .await
        .map_err(internal)?
        .ok_or_else(|| internal("active version row missing"))?;
    Ok(Json(ScriptDetail {
        script: script.into(),
        active: version_view(active, true),
    }))
}

/// `DELETE /scripts/{name}`: the script, its versions, subscriptions,
/// schedules and state.
#[utoipa::path(delete, path = "/api/v1/scripts/{name}", tag = "scripts",
    params(NameParam),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "invalid name", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such script", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
        (status = 503, description = "deleted, but its endpoint may answer until the message bus is back", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
) -> Result<StatusCode, ApiError> {
    let name = script_name(&name)?;
    let versions = state
        .store
        .delete_script(name.as_str())
        .await
        .map_err(internal)?
        .ok_or_else(|| no_script(name.as_str()))?;
    // Its subscriptions, schedules and state go with it.
    state
        .store
        .forget_script(name.as_str())
        .await
        .map_err(internal)?;
    if let Err(e) = state
        .publisher
        .publish_script(name.as_str(), &versions)
        .await
    {
        // The database no longer has it; the publisher keeps retrying until
        // the route is gone too. Say so rather than pretend.
        tracing::warn!(error = %e, script = %name, "script deleted but route not yet removed");
        return Err(ApiError::unavailable(
            "script deleted, but the message bus is unavailable: its endpoint may answer until the bus is back",
        ));
    }
    tracing::info!(script = %name, "deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /scripts/{name}/versions`: every version, without sources.
#[utoipa::path(get, path = "/api/v1/scripts/{name}/versions", tag = "scripts",
    params(NameParam),
    responses(
        (status = 200, description = "every version, oldest first", body = Vec<VersionView>),
        (status = 400, description = "invalid name", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such script", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn versions(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
) -> Result<Json<Vec<VersionView>>, ApiError> {
    let name = script_name(&name)?;
    let rows = state
        .store
        .list_versions(name.as_str())
        .await
        .map_err(internal)?;
    if rows.is_empty() {
        return Err(no_script(name.as_str()));
    }
    Ok(Json(
        rows.into_iter().map(|v| version_view(v, false)).collect(),
    ))
}

/// `GET /scripts/{name}/versions/{version}`: one version, with its source.
#[utoipa::path(get, path = "/api/v1/scripts/{name}/versions/{version}", tag = "scripts",
    params(NameParam, ("version" = u32, Path, description = "a version number", minimum = 1, maximum = 4294967295_u64)),
    responses(
        (status = 200, description = "the version, with its source", body = VersionView),
        (status = 400, description = "invalid name or version", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such script or version", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn version(
    State(state): State<Shared>,
    JsonPath((name, version)): JsonPath<(String, String)>,
) -> Result<Json<VersionView>, ApiError> {
    let name = script_name(&name)?;
    let version: u32 = version
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid version {}", quote(&version))))?;
    let row = state
        .store
        .get_version(name.as_str(), version)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "script {} has no version {version}",
                quote(name.as_str())
            ))
        })?;
    Ok(Json(version_view(row, true)))
}

/// `POST /scripts/{name}/rollback {"version": N}`: make an older (or any
/// existing) version the active one.
#[utoipa::path(post, path = "/api/v1/scripts/{name}/rollback", tag = "scripts",
    params(NameParam),
    request_body = RollbackBody,
    responses(
        (status = 200, description = "the version now active", body = VersionView),
        (status = 400, description = "invalid name or body", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such script or version", body = ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
        (status = 503, description = "made active, but not yet in effect (message bus down)", body = ErrorBody),
    ))]
pub async fn rollback(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
    JsonBody(body): JsonBody<RollbackBody>,
) -> Result<Json<VersionView>, ApiError> {
    let name = script_name(&name)?;
    let row = state
        .store
        .activate(name.as_str(), body.version)
        .await
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "script {} has no version {}",
                quote(name.as_str()),
                body.version
            ))
        })?;
    if let Err(e) = state.publisher.publish_script(name.as_str(), &[]).await {
        tracing::warn!(error = %e, script = %name, "rollback stored but not yet on the bus");
        return Err(ApiError::unavailable(format!(
            "version {} was made active but the message bus is unavailable; it will take effect automatically",
            row.version
        )));
    }
    tracing::info!(script = %name, version = row.version, "rolled back");
    Ok(Json(version_view(row, false)))
}

/// The routes of a deploy, validated and normalised (`get /a` → `GET /a`).
fn parse_routes(routes: &[String]) -> Result<Vec<String>, ApiError> {
    RouteSpec::parse_all(routes)
        .map(|specs| specs.iter().map(ToString::to_string).collect())
        .map_err(|e| ApiError::bad_request(e.0).with_code(ErrorCode::InvalidRoute))
}

/// A route conflict is the caller's 409, naming the route and its holder;
/// anything else from the store is internal.
fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::RouteConflict(c) => ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::RouteConflict,
            c.to_string(),
        )
        .with_details(serde_json::json!({
            "route": c.route,
            "held_by": { "script": c.script, "route": c.held },
        })),
        other => internal(other),
    }
}

pub(super) fn sha256_hex(source: &str) -> String {
    Sha256::digest(source.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Postgres `text` cannot hold NUL, and a source needs none (a string
/// literal writes it as `"\x00"`): refused at the edge, naming the field,
/// instead of failing in the database.
pub(super) fn source_without_nul(source: &str) -> Result<(), ApiError> {
    if source.contains('\0') {
        return Err(ApiError::bad_request(
            "source may not contain NUL (U+0000); write it as \"\\x00\" in a string literal",
        )
        .with_code(ErrorCode::InvalidSource));
    }
    Ok(())
}

pub(super) fn source_too_large(len: usize, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::SourceTooLarge,
        format!("source is {len} bytes; the limit is {max} bytes"),
    )
}

pub(super) fn compile_error(e: CompileError) -> ApiError {
    ApiError::bad_request(format!("compile error: {e}"))
        .with_code(ErrorCode::CompileError)
        .with_details(serde_json::json!({ "line": e.line, "column": e.column }))
}

pub(super) fn import_error(e: ImportError) -> ApiError {
    match e {
        ImportError::Store(e) => internal(e),
        other => ApiError::bad_request(other.to_string()).with_code(ErrorCode::ImportError),
    }
}
