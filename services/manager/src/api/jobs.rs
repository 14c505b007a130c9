//! `/api/v1/jobs`: the jobs still in the stream (waiting, waiting out a
//! retry pause, or running), for an operator to see what is stuck, replay
//! it now with a fresh attempt count, or discard it. Jobs that used up
//! their attempts are dead letters (`/dead-letters`), not here.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use picloud_bus::QueuedJob;
use picloud_core::{InvocationRecord, Uuid};
use picloud_http::ApiError;
use serde::{Deserialize, Serialize};

use super::{Shared, internal, script_name};

#[derive(Deserialize)]
pub struct JobQuery {
    script: Option<String>,
    /// Only jobs with a larger `seq` (the last one of the previous page).
    after: Option<u64>,
    limit: Option<usize>,
}

/// A job still to be done, with what its invocation record says of its
/// attempts so far.
#[derive(Serialize)]
pub struct JobView {
    /// Its stream sequence: the id to replay or discard it by.
    seq: u64,
    script: String,
    queued_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invocation_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trigger: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_attempts: Option<u32>,
    /// `waiting` until an attempt is recorded; then the last attempt's
    /// status (`error` while it waits to be retried).
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

pub async fn list(
    State(state): State<Shared>,
    Query(q): Query<JobQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let jobs = state
        .bus
        .queued_jobs(
            script.as_ref().map(|s| s.as_str()),
            q.after.unwrap_or(0),
            limit,
        )
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

pub async fn get(
    State(state): State<Shared>,
    Path(seq): Path<String>,
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
pub async fn replay(
    State(state): State<Shared>,
    Path(seq): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let queued = queued(&state, &seq).await?;
    let job = queued.job.map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "unreadable_job",
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
pub async fn discard(
    State(state): State<Shared>,
    Path(seq): Path<String>,
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
