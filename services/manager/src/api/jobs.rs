//! `/api/v1/jobs`: the jobs still in the stream (waiting, waiting out a
//! retry pause, or running), for an operator to see what is stuck, replay
//! it now with a fresh attempt count, or discard it. Jobs that used up
//! their attempts are dead letters (`/dead-letters`), not here.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use picloud_bus::QueuedJob;
use picloud_core::{InvocationRecord, Uuid};
use picloud_http::{ApiError, ErrorBody, ErrorCode, JsonPath, JsonQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Shared, internal, script_name};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobQuery {
    /// Only this script's jobs.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    script: Option<String>,
    /// Only jobs with a larger `seq` (the last one of the previous page).
    #[param(value_type = Option<u64>, minimum = 0)]
    after: Option<String>,
    /// Most shown (default 100, at most 1,000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A job's id in a path: its queue sequence number.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct SeqParam {
    /// The job's `seq` (a positive whole number).
    #[param(minimum = 1)]
    seq: u64,
}

/// A job still to be done, with what its invocation record says of its
/// attempts so far.
#[derive(Serialize, ToSchema)]
pub struct JobView {
    /// Its stream sequence: the id to replay or discard it by.
    seq: u64,
    script: String,
    queued_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invocation_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    trigger: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    /// `waiting` until an attempt is recorded; then the last attempt's
    /// status (`error` while it waits to be retried).
    #[schema(value_type = String)]
    state: &'static str,
    /// Attempts recorded so far (0 when none ran yet).
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_attempt_at: Option<DateTime<Utc>>,
    /// Why the stored job cannot be read (it can only be discarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    unreadable: Option<String>,
}

impl JobView {
    fn new(q: QueuedJob, record: Option<&InvocationRecord>) -> Self {
        let (job, unreadable) = match q.job {
            Ok(job) => (Some(job), None),
            Err(e) => (None, Some(e)),
        };
        let ran = record.filter(|r| r.attempt > 0);
        Self {
            seq: q.seq,
            script: q.script,
            queued_at: q.queued_at,
            invocation_id: job.as_ref().map(|j| j.id),
            trigger: job.as_ref().map(|j| j.event.kind.as_str()),
            topic: job.as_ref().and_then(|j| j.event.topic.clone()),
            max_attempts: job.as_ref().map(|j| j.max_attempts),
            state: ran.map_or("waiting", |r| r.status.as_str()),
            attempts: ran.map_or(0, |r| r.attempt),
            last_error: ran.and_then(|r| r.error.clone()),
            last_attempt_at: ran.map(|r| r.started_at),
            unreadable,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    params(JobQuery),
    responses(
        (status = 200, description = "the jobs still queued, oldest first", body = Vec<JobView>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
        (status = 503, description = "the job queue cannot be read now", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Shared>,
    JsonQuery(q): JsonQuery<JobQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    // Any whole number: past the largest sequence there is just nothing.
    let after = match q.after.as_deref() {
        None => 0,
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
            a.parse::<u64>().unwrap_or(u64::MAX)
        }
        Some(a) => {
            return Err(ApiError::bad_request(format!(
                "invalid after {}: use a job id (a whole number)",
                picloud_core::quote(a)
            )));
        }
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "invalid limit {limit}: use 1 to 1000"
        )));
    }
    let jobs = state
        .bus
        .queued_jobs(script.as_ref().map(|s| s.as_str()), after, limit)
        .await
        .map_err(unavailable)?;
    let ids: Vec<Uuid> = jobs
        .iter()
        .filter_map(|j| j.job.as_ref().ok().map(|j| j.id))
        .collect();
    let records: HashMap<Uuid, InvocationRecord> = state
        .store
        .get_invocations(&ids)
        .await
        .map_err(internal)?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    Ok(Json(
        jobs.into_iter()
            .map(|j| {
                let record = j.job.as_ref().ok().and_then(|job| records.get(&job.id));
                JobView::new(j, record)
            })
            .collect(),
    ))
}

/// `GET /api/v1/jobs/{seq}`: one queued job.
#[utoipa::path(get, path = "/api/v1/jobs/{seq}", tag = "jobs",
    params(SeqParam),
    responses(
        (status = 200, description = "the job", body = JobView),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 404, description = "no such job in the queue", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
        (status = 503, description = "the job queue cannot be read now", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<Shared>,
    JsonPath(seq): JsonPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = queued(&state, &seq).await?;
    let record = match &job.job {
        Ok(j) => state.store.get_invocation(j.id).await.map_err(internal)?,
        Err(_) => None,
    };
    Ok(Json(JobView::new(job, record.as_ref())))
}

/// `POST /api/v1/jobs/{seq}/replay`: queue the job again now, its attempts
/// counted from 1, and remove the stuck copy. The copy is queued (in the
/// outbox) before the old message goes, so a failure between the two
/// leaves two deliveries of one invocation id (its effects still apply
/// once), never none.
#[utoipa::path(post, path = "/api/v1/jobs/{seq}/replay", tag = "jobs",
    params(SeqParam),
    responses(
        (status = 202, description = "queued again: `{\"replayed\": seq, \"invocation_id\"}`", body = Object),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 404, description = "no such job in the queue", body = ErrorBody),
        (status = 409, description = "the job cannot be read (`unreadable_job`)", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
        (status = 503, description = "the job queue cannot be read now", body = ErrorBody),
    ))]
pub async fn replay(
    State(state): State<Shared>,
    JsonPath(seq): JsonPath<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let queued = queued(&state, &seq).await?;
    let job = queued.job.map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::UnreadableJob,
            format!(
                "job {} cannot be read ({e}); it can only be discarded",
                queued.seq
            ),
        )
    })?;
    state.store.requeue_job(&job).await.map_err(internal)?;
    state
        .bus
        .remove_queued_job(queued.seq)
        .await
        .map_err(unavailable)?;
    tracing::info!(seq = queued.seq, invocation = %job.id, "stuck job replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "replayed": queued.seq, "invocation_id": job.id })),
    ))
}

/// `DELETE /api/v1/jobs/{seq}`: the operator gives up on the job. An
/// attempt running now still finishes; none starts after it.
#[utoipa::path(delete, path = "/api/v1/jobs/{seq}", tag = "jobs",
    params(SeqParam),
    responses(
        (status = 204, description = "removed from the queue"),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 404, description = "no such job in the queue", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
        (status = 503, description = "the job queue cannot be read now", body = ErrorBody),
    ))]
pub async fn discard(
    State(state): State<Shared>,
    JsonPath(seq): JsonPath<String>,
) -> Result<StatusCode, ApiError> {
    let queued = queued(&state, &seq).await?;
    if !state
        .bus
        .remove_queued_job(queued.seq)
        .await
        .map_err(unavailable)?
    {
        return Err(gone(queued.seq));
    }
    if let Ok(job) = &queued.job {
        state
            .store
            .record_discarded_job(job.id)
            .await
            .map_err(internal)?;
    }
    tracing::info!(seq = queued.seq, "stuck job discarded");
    Ok(StatusCode::NO_CONTENT)
}

async fn queued(state: &Shared, raw: &str) -> Result<QueuedJob, ApiError> {
    let seq = raw.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid job id {raw:?}: a job's id is its positive sequence number"
        ))
    })?;
    state
        .bus
        .queued_job(seq)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| gone(seq))
}

fn gone(seq: u64) -> ApiError {
    ApiError::not_found(format!(
        "no job {seq} in the queue (it finished, was discarded, or never existed)"
    ))
}

fn unavailable(e: picloud_bus::BusError) -> ApiError {
    tracing::warn!(error = %e, "jobs stream unavailable");
    ApiError::unavailable("the job queue (NATS JetStream) cannot be read now; try again")
}
