//! The invocation log.

use axum::Json;
use axum::extract::{Path, Query, State};
use picloud_core::{InvocationRecord, InvocationStatus, Uuid};
use picloud_http::ApiError;
use picloud_store::InvocationFilter;
use serde::Deserialize;

use super::{Shared, internal, script_name};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1_000;

#[derive(Deserialize)]
pub struct ListQuery {
    script: Option<String>,
    status: Option<String>,
    limit: Option<String>,
}

pub async fn list(
    State(state): State<Shared>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<InvocationRecord>>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            InvocationStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid status {s:?}: use ok, error, limit_exceeded, unavailable or expired"
                ))
            })
        })
        .transpose()?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(format!("invalid limit {l:?}: use 1 to {MAX_LIMIT}"))
            })?,
    };
    let filter = InvocationFilter {
        script: script.map(|s| s.as_str().to_owned()),
        status,
        limit,
    };
    Ok(Json(
        state
            .store
            .list_invocations(&filter)
            .await
            .map_err(internal)?,
    ))
}

pub async fn get(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<InvocationRecord>, ApiError> {
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid invocation id {id:?}")))?;
    state
        .store
        .get_invocation(id)
        .await
        .map_err(internal)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no invocation {id}")))
}
