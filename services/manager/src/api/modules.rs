//! Shared modules: `PUT /modules/{name}`, `GET /modules`, `GET /modules/{name}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use picloud_core::quote;
use picloud_http::{ApiError, ErrorBody, JsonBody, JsonPath};
use picloud_store::{ModuleRow, ModuleVersionRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openapi::NameParam;
use super::scripts::{
    compile_error, import_error, sha256_hex, source_too_large, source_without_nul,
};
use super::{Shared, internal, script_name};
use crate::imports;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModuleBody {
    /// The Rhai source.
    source: String,
}

#[derive(Serialize, ToSchema)]
pub struct ModuleView {
    name: String,
    latest_version: u32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct ModuleVersionView {
    module: String,
    version: u32,
    sha256: String,
    imports: Vec<String>,
    created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

fn view(r: ModuleVersionRow, with_source: bool) -> ModuleVersionView {
    ModuleVersionView {
        module: r.module,
        version: r.version,
        sha256: r.sha256,
        imports: r.imports,
        created_at: r.created_at,
        source: with_source.then_some(r.source),
    }
}

impl From<ModuleRow> for ModuleView {
    fn from(r: ModuleRow) -> Self {
        Self {
            name: r.name,
            latest_version: r.latest_version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Checks the syntax and the imports (every one exists, no cycle), runs no
/// module code, stores a new version and puts it on the bus. Scripts pick it
/// up when they are next deployed.
#[utoipa::path(put, path = "/api/v1/modules/{name}", tag = "modules",
    params(NameParam),
    request_body = ModuleBody,
    responses(
        (status = 200, description = "a new version", body = ModuleVersionView),
        (status = 201, description = "the first version of a new module", body = ModuleVersionView),
        (status = 400, description = "bad name or body; a compile error has `details`", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "the body or source is too large", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
        (status = 503, description = "stored but not yet published (message bus down)", body = ErrorBody),
    ))]
pub async fn deploy(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
    JsonBody(body): JsonBody<ModuleBody>,
) -> Result<Response, ApiError> {
    let name = script_name(&name)?;
    if body.source.len() > state.max_source_bytes {
        return Err(source_too_large(body.source.len(), state.max_source_bytes));
    }
    source_without_nul(&body.source)?;
    let imports = state
        .compiler
        .check(body.source.clone(), state.max_limits.clone())
        .await
        .map_err(internal)?
        .map_err(compile_error)?;
    imports::check_module(&state.store, name.as_str(), &imports)
        .await
        .map_err(import_error)?;
    let row = state
        .store
        .create_module_version(
            name.as_str(),
            &body.source,
            &sha256_hex(&body.source),
            &imports,
        )
        .await
        .map_err(internal)?;
    if let Err(e) = state.publisher.publish_module(&row).await {
        tracing::warn!(error = %e, module = %name, "module stored but not yet on the bus");
        return Err(ApiError::unavailable(format!(
            "module version {} was stored but the message bus is unavailable; it will be published automatically",
            row.version
        )));
    }
    tracing::info!(module = %name, version = row.version, "module deployed");
    let status = if row.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(row, false))).into_response())
}

#[utoipa::path(get, path = "/api/v1/modules", tag = "modules",
    responses(
        (status = 200, description = "every module", body = Vec<ModuleView>),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn list(State(state): State<Shared>) -> Result<Json<Vec<ModuleView>>, ApiError> {
    let rows = state.store.list_modules().await.map_err(internal)?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

/// The latest version, with its source.
#[utoipa::path(get, path = "/api/v1/modules/{name}", tag = "modules",
    params(NameParam),
    responses(
        (status = 200, description = "the latest version, with its source", body = ModuleVersionView),
        (status = 400, description = "invalid name", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such module", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
) -> Result<Json<ModuleVersionView>, ApiError> {
    let name = script_name(&name)?;
    let row = state
        .store
        .latest_module_version(name.as_str())
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no module named {}", quote(name.as_str()))))?;
    Ok(Json(view(row, true)))
}
