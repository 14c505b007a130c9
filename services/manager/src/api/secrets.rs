//! Secrets: `PUT|DELETE /secrets/{name}`, `GET /secrets` (names and
//! timestamps only; no endpoint ever returns a value).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use picloud_http::{ApiError, JsonBody};
use serde::{Deserialize, Serialize};

use super::{Shared, internal, script_name};

/// Largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    value: String,
}

#[derive(Serialize)]
pub struct SecretView {
    name: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

pub async fn put(
    State(state): State<Shared>,
    Path(name): Path<String>,
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

pub async fn delete(
    State(state): State<Shared>,
    Path(name): Path<String>,
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
            "no secret named {:?}",
            name.as_str()
        )))
    }
}

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
