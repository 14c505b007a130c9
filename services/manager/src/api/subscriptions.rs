//! Subscriptions (`topic pattern → script`) and dead letters.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use picloud_core::Uuid;
use picloud_core::job::validate_pattern;
use picloud_http::{ApiError, ErrorBody, ErrorCode, JsonBody, JsonPath, JsonQuery};
use picloud_store::{DeadLetterRow, SubscriptionRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::invocations::parse_id;
use super::openapi::IdParam;
use super::{Shared, internal, script_name};

/// Attempts of an event delivery when the subscription does not say.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const MAX_ATTEMPTS: u32 = 100;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    script: String,
    /// A topic pattern: dot-separated tokens, `*` for one token, `>` last
    /// for the rest.
    #[schema(
        example = "orders.*",
        max_length = 200,
        pattern = r"^(>|([A-Za-z0-9_-]+|\*)(\.([A-Za-z0-9_-]+|\*))*(\.>)?)$"
    )]
    topic: String,
    /// Attempts of each delivery (default 5).
    #[serde(default, deserialize_with = "picloud_core::whole::strict_opt")]
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
}

#[derive(Serialize, ToSchema)]
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

/// `POST /subscriptions`: run a script for every event on a topic pattern.
#[utoipa::path(post, path = "/api/v1/subscriptions", tag = "subscriptions",
    request_body = NewSubscription,
    responses(
        (status = 201, description = "subscribed", body = SubscriptionView),
        (status = 400, description = "bad body, name, topic or max_attempts", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such script", body = ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Shared>,
    JsonBody(body): JsonBody<NewSubscription>,
) -> Result<(StatusCode, Json<SubscriptionView>), ApiError> {
    let script = script_name(&body.script)?;
    validate_pattern(&body.topic).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidTopic,
            e.to_string(),
        )
    })?;
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
        return Err(ApiError::not_found(format!(
            "no script named {}",
            picloud_core::quote(script.as_str())
        )));
    }
    let row = state
        .store
        .create_subscription(script.as_str(), &body.topic, max_attempts)
        .await
        .map_err(internal)?;
    tracing::info!(id = %row.id, script = %row.script, topic = %row.topic, "subscribed");
    Ok((StatusCode::CREATED, Json(row.into())))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this script's.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    script: Option<String>,
}

/// `GET /subscriptions[?script=]`.
#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "subscriptions",
    params(ListQuery),
    responses(
        (status = 200, description = "the subscriptions", body = Vec<SubscriptionView>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Shared>,
    JsonQuery(q): JsonQuery<ListQuery>,
) -> Result<Json<Vec<SubscriptionView>>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    let rows = state
        .store
        .list_subscriptions(script.as_ref().map(|s| s.as_str()))
        .await
        .map_err(internal)?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

/// `DELETE /subscriptions/{id}`.
#[utoipa::path(delete, path = "/api/v1/subscriptions/{id}", tag = "subscriptions",
    params(IdParam),
    responses(
        (status = 204, description = "unsubscribed"),
        (status = 400, description = "invalid id", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such subscription", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
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

#[derive(Serialize, ToSchema)]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only this script's.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    script: Option<String>,
    /// Most shown (default 100; clamped to 1 to 1,000).
    #[param(minimum = 0, maximum = 4294967295_u64)]
    limit: Option<u32>,
}

/// `GET /dead-letters[?script=&limit=]`: jobs that failed every attempt.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "dead letters",
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "the dead letters, newest first", body = Vec<DeadLetterView>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn dead_letters(
    State(state): State<Shared>,
    JsonQuery(q): JsonQuery<DeadLetterQuery>,
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
#[utoipa::path(get, path = "/api/v1/dead-letters/{id}", tag = "dead letters",
    params(IdParam),
    responses(
        (status = 200, description = "the dead letter", body = DeadLetterView),
        (status = 400, description = "invalid id", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such dead letter", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn dead_letter(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
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

/// What a replay answers.
#[derive(Serialize, ToSchema)]
pub struct Replayed {
    /// The dead letter whose job was queued again.
    replayed: Uuid,
}

/// `POST /dead-letters/{id}/replay`: queue the job again (once).
#[utoipa::path(post, path = "/api/v1/dead-letters/{id}/replay", tag = "dead letters",
    params(IdParam),
    responses(
        (status = 202, description = "queued again", body = Replayed),
        (status = 400, description = "invalid id", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such dead letter", body = ErrorBody),
        (status = 409, description = "replayed already", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn replay(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    let id = parse_id(&id)?;
    match state.store.replay_dead_letter(id).await.map_err(internal)? {
        None => Err(ApiError::not_found(format!("no dead letter {id}"))),
        Some(false) => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::AlreadyReplayed,
            format!("dead letter {id} was replayed already"),
        )),
        Some(true) => {
            tracing::info!(dead_letter = %id, "replayed");
            Ok((StatusCode::ACCEPTED, Json(Replayed { replayed: id })))
        }
    }
}

/// `DELETE /api/v1/dead-letters/{id}`: the operator gives up on the job.
/// Its invocation record stays (as the failure it was).
#[utoipa::path(delete, path = "/api/v1/dead-letters/{id}", tag = "dead letters",
    params(IdParam),
    responses(
        (status = 204, description = "discarded"),
        (status = 400, description = "invalid id", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such dead letter", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn discard(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
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
