//! Secrets: `PUT|DELETE /secrets/{name}`, `GET /secrets` (names and
//! timestamps only; no endpoint ever returns a value).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use picloud_http::{ApiError, ErrorBody, JsonBody, JsonPath};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openapi::NameParam;
use super::{Shared, internal, script_name};

/// Largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    /// The value (never shown again).
    #[schema(min_length = 1, max_length = 65536)]
    value: String,
}

#[derive(Serialize, ToSchema)]
pub struct SecretView {
    name: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(NameParam),
    request_body = SecretBody,
    responses(
        (status = 204, description = "stored"),
        (status = 400, description = "bad name or body", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn put(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
    JsonBody(body): JsonBody<SecretBody>,
) -> Result<StatusCode, ApiError> {
    let name = script_name(&name)?;
    if body.value.is_empty() || body.value.len() > MAX_SECRET_BYTES {
        return Err(ApiError::bad_request(format!(
            "a secret value must be 1 to {MAX_SECRET_BYTES} bytes"
        )));
    }
    let sealed = state
        .secrets
        .seal(name.as_str(), &body.value)
        .map_err(internal)?;
    state
        .store
        .put_secret(name.as_str(), &sealed)
        .await
        .map_err(internal)?;
    tracing::info!(secret = %name, "secret stored");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(NameParam),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "invalid name", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such secret", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
) -> Result<StatusCode, ApiError> {
    let name = script_name(&name)?;
    if state
        .store
        .delete_secret(name.as_str())
        .await
        .map_err(internal)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "no secret named {}",
            picloud_core::quote(name.as_str())
        )))
    }
}

#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets",
    responses(
        (status = 200, description = "names and times; never values", body = Vec<SecretView>),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn list(State(state): State<Shared>) -> Result<Json<Vec<SecretView>>, ApiError> {
    let rows = state.store.list_secrets().await.map_err(internal)?;
    Ok(Json(
        rows.into_iter()
            .map(|r| SecretView {
                name: r.name,
                created_at: r.created_at,
                updated_at: r.updated_at,
            })
            .collect(),
    ))
}
