//! Subscriptions (`topic pattern → script`) and dead letters.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use picloud_core::Uuid;
use picloud_core::job::validate_pattern;
use picloud_http::{ApiError, JsonBody};
use picloud_store::{DeadLetterRow, SubscriptionRow};
use serde::{Deserialize, Serialize};

use super::invocations::parse_id;
use super::{Shared, internal, script_name};

/// Attempts of an event delivery when the subscription does not say.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const MAX_ATTEMPTS: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    script: String,
    topic: String,
    #[serde(default)]
    max_attempts: Option<u32>,
}

#[derive(Serialize)]
pub struct SubscriptionView {
    id: Uuid,
    script: String,
    topic: String,
    max_attempts: u32,
    created_at: DateTime<Utc>,
}

impl From<SubscriptionRow> for SubscriptionView {
    fn from(r: SubscriptionRow) -> Self {
        Self {
            id: r.id,
            script: r.script,
            topic: r.topic,
            max_attempts: r.max_attempts,
            created_at: r.created_at,
        }
    }
}

pub async fn create(
    State(state): State<Shared>,
    JsonBody(body): JsonBody<NewSubscription>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let script = script_name(&body.script)?;
    validate_pattern(&body.topic)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_topic", e.to_string()))?;
    let max_attempts = body.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(ApiError::bad_request(format!(
            "max_attempts must be 1 to {MAX_ATTEMPTS}"
        )));
    }
    if state
        .store
        .get_script(script.as_str())
        .await
        .map_err(internal)?
        .is_none()
    {
        return Err(ApiError::not_found(format!("no script named {script}")));
    }
    let row = state
        .store
        .create_subscription(script.as_str(), &body.topic, max_attempts)
        .await
        .map_err(internal)?;
    tracing::info!(id = %row.id, script = %row.script, topic = %row.topic, "subscribed");
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[derive(Deserialize)]
pub struct ListQuery {
    script: Option<String>,
}

pub async fn list(
    State(state): State<Shared>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<SubscriptionView>>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    let rows = state
        .store
        .list_subscriptions(script.as_ref().map(|s| s.as_str()))
        .await
        .map_err(internal)?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

pub async fn delete(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    if state
        .store
        .delete_subscription(id)
        .await
        .map_err(internal)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no subscription {id}")))
    }
}

#[derive(Serialize)]
pub struct DeadLetterView {
    id: Uuid,
    invocation_id: Uuid,
    script: String,
    subscription_id: Option<Uuid>,
    topic: Option<String>,
    error: String,
    attempts: u32,
    created_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
}

impl From<DeadLetterRow> for DeadLetterView {
    fn from(r: DeadLetterRow) -> Self {
        Self {
            id: r.id,
            invocation_id: r.invocation_id,
            script: r.script,
            subscription_id: r.subscription_id,
            topic: r.job.event.topic,
            error: r.error,
            attempts: r.attempts,
            created_at: r.created_at,
            replayed_at: r.replayed_at,
        }
    }
}

#[derive(Deserialize)]
pub struct DeadLetterQuery {
    script: Option<String>,
    limit: Option<u32>,
}

pub async fn dead_letters(
    State(state): State<Shared>,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let rows = state
        .store
        .list_dead_letters(script.as_ref().map(|s| s.as_str()), limit)
        .await
        .map_err(internal)?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

/// `GET /api/v1/dead-letters/{id}`: one dead letter (for `picloud
/// dead-letters show`).
pub async fn dead_letter(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterView>, ApiError> {
    let id = parse_id(&id)?;
    let row = state
        .store
        .get_dead_letter(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {id}")))?;
    Ok(Json(row.into()))
}

pub async fn replay(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = parse_id(&id)?;
    match state.store.replay_dead_letter(id).await.map_err(internal)? {
        None => Err(ApiError::not_found(format!("no dead letter {id}"))),
        Some(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_replayed",
            format!("dead letter {id} was replayed already"),
        )),
        Some(true) => {
            tracing::info!(dead_letter = %id, "replayed");
            Ok((
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "replayed": id })),
            ))
        }
    }
}

/// `DELETE /api/v1/dead-letters/{id}`: the operator gives up on the job.
/// Its invocation record stays (as the failure it was).
pub async fn discard(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    if state
        .store
        .discard_dead_letter(id)
        .await
        .map_err(internal)?
    {
        tracing::info!(dead_letter = %id, "discarded");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no dead letter {id}")))
    }
}
