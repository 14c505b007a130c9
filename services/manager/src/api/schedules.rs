//! Cron schedules: `POST|GET /schedules`, `GET|PATCH|DELETE /schedules/{id}`,
//! `GET /schedules/preview`.
//!
//! A schedule is validated whole (expression, zone, script) before anything
//! is written; every answer shows the next five firing times.

use axum::Json;
use axum::extract::State;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use chrono::{DateTime, Utc};
use picloud_core::Uuid;
use picloud_core::schedule::{CatchUp, CronSchedule, Overlap, ScheduleError};
use picloud_http::{ApiError, ErrorBody, ErrorCode, JsonBody, JsonPath, JsonQuery};
use picloud_store::schedules::{ScheduleChange, ScheduleRow, ScheduleSpec, Update};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::openapi::IdParam;
use super::{Shared, internal, script_name};

/// Most attempts a schedule may ask for.
const MAX_ATTEMPTS: u32 = 100;
/// Firing times shown with a schedule.
const NEXT_RUNS: usize = 5;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// The script to run.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    script: String,
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with
    /// seconds first.
    #[schema(example = "*/5 * * * *")]
    cron: String,
    /// An IANA zone name.
    #[serde(default = "utc")]
    #[schema(default = "UTC", example = "Europe/Berlin")]
    timezone: String,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default = "enabled")]
    #[schema(default = true)]
    enabled: bool,
    /// Attempts of each firing (default: the operator's setting).
    #[serde(default, deserialize_with = "picloud_core::whole::strict_opt")]
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
}

fn utc() -> String {
    "UTC".into()
}

fn enabled() -> bool {
    true
}

/// Absent fields keep their value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    script: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    catch_up: Option<CatchUp>,
    overlap: Option<Overlap>,
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "picloud_core::whole::strict_opt")]
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleView {
    id: Uuid,
    script: String,
    cron: String,
    timezone: String,
    catch_up: CatchUp,
    overlap: Overlap,
    enabled: bool,
    max_attempts: u32,
    /// The next firing times (none while disabled).
    next_runs: Vec<DateTime<Utc>>,
    /// The scheduled instant of the last firing.
    last_fired_at: Option<DateTime<Utc>>,
    last_invocation_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ScheduleRow> for ScheduleView {
    fn from(row: ScheduleRow) -> Self {
        let next_runs = match CronSchedule::parse(&row.spec.cron, &row.spec.timezone) {
            Ok(s) if row.spec.enabled && row.next_fire_at.is_some() => {
                s.upcoming(Utc::now(), NEXT_RUNS)
            }
            _ => Vec::new(),
        };
        let ScheduleSpec {
            script,
            cron,
            timezone,
            catch_up,
            overlap,
            enabled,
            max_attempts,
        } = row.spec;
        Self {
            id: row.id,
            script,
            cron,
            timezone,
            catch_up,
            overlap,
            enabled,
            max_attempts,
            next_runs,
            last_fired_at: row.last_fired_at,
            last_invocation_id: row.last_invocation_id,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this script's.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    script: Option<String>,
}

/// `POST /schedules`: a new schedule, validated whole.
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules",
    request_body = CreateBody,
    responses(
        (status = 201, description = "created (`Location` names it)", body = ScheduleView),
        (status = 400, description = "bad body, name, cron expression, zone or max_attempts", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such script", body = ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<Shared>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, HeaderMap, Json<ScheduleView>), ApiError> {
    let spec = ScheduleSpec {
        script: existing_script(&state, &body.script).await?,
        cron: body.cron,
        timezone: body.timezone,
        catch_up: body.catch_up,
        overlap: body.overlap,
        enabled: body.enabled,
        max_attempts: attempts(body.max_attempts.unwrap_or(state.max_attempts))?,
    };
    let schedule = CronSchedule::parse(&spec.cron, &spec.timezone).map_err(refused)?;
    let row = state
        .store
        .create_schedule(&spec, schedule.next_after(Utc::now()))
        .await
        .map_err(internal)?;
    tracing::info!(schedule = %row.id, script = %spec.script, cron = %spec.cron, "schedule created");
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/schedules/{}", row.id)) {
        headers.insert(LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers, Json(row.into())))
}

/// `GET /schedules[?script=]`.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules",
    params(ListQuery),
    responses(
        (status = 200, description = "the schedules", body = Vec<ScheduleView>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Shared>,
    JsonQuery(q): JsonQuery<ListQuery>,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    let rows = state
        .store
        .list_schedules(script.as_ref().map(|s| s.as_str()))
        .await
        .map_err(internal)?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewQuery {
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with
    /// seconds first.
    #[param(example = "*/5 * * * *")]
    cron: String,
    /// An IANA zone name (default `UTC`).
    #[param(example = "Europe/Berlin")]
    timezone: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct PreviewView {
    /// The next five firing times after now.
    next_runs: Vec<DateTime<Utc>>,
}

/// `GET /schedules/preview?cron=&timezone=`: the next firings of an
/// expression in a zone, before anything is created (the dashboard's form).
#[utoipa::path(get, path = "/api/v1/schedules/preview", tag = "schedules",
    params(PreviewQuery),
    responses(
        (status = 200, description = "the next five firing times", body = PreviewView),
        (status = 400, description = "bad cron expression or zone", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
    ))]
pub async fn preview(JsonQuery(q): JsonQuery<PreviewQuery>) -> Result<Json<PreviewView>, ApiError> {
    let zone = q.timezone.unwrap_or_else(utc);
    let schedule = CronSchedule::parse(&q.cron, &zone).map_err(refused)?;
    Ok(Json(PreviewView {
        next_runs: schedule.upcoming(Utc::now(), NEXT_RUNS),
    }))
}

/// `GET /schedules/{id}`.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(IdParam),
    responses(
        (status = 200, description = "the schedule", body = ScheduleView),
        (status = 400, description = "invalid id", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such schedule", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let id = schedule_id(&id)?;
    state
        .store
        .get_schedule(id)
        .await
        .map_err(internal)?
        .map(|row| Json(row.into()))
        .ok_or_else(|| missing(id))
}

/// `PATCH /schedules/{id}`: absent fields keep their value.
#[utoipa::path(patch, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(IdParam),
    request_body = PatchBody,
    responses(
        (status = 200, description = "the schedule as changed", body = ScheduleView),
        (status = 400, description = "bad id, body, cron expression, zone or max_attempts", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such schedule or script", body = ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn patch(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
    JsonBody(body): JsonBody<PatchBody>,
) -> Result<Json<ScheduleView>, ApiError> {
    let id = schedule_id(&id)?;
    let script = match &body.script {
        Some(s) => Some(existing_script(&state, s).await?),
        None => None,
    };
    let max_attempts = body.max_attempts.map(attempts).transpose()?;
    let now = Utc::now();
    let update = state
        .store
        .update_schedule(id, |current| {
            let old = &current.spec;
            let spec = ScheduleSpec {
                script: script.unwrap_or_else(|| old.script.clone()),
                cron: body.cron.unwrap_or_else(|| old.cron.clone()),
                timezone: body.timezone.unwrap_or_else(|| old.timezone.clone()),
                catch_up: body.catch_up.unwrap_or(old.catch_up),
                overlap: body.overlap.unwrap_or(old.overlap),
                enabled: body.enabled.unwrap_or(old.enabled),
                max_attempts: max_attempts.unwrap_or(old.max_attempts),
            };
            let schedule = CronSchedule::parse(&spec.cron, &spec.timezone).map_err(refused)?;
            // A new time, or coming back on: start from now (instants that
            // passed while disabled never fire). Otherwise keep the place.
            let retimed = spec.cron != old.cron
                || spec.timezone != old.timezone
                || (spec.enabled && !old.enabled);
            let next_fire_at = if retimed {
                schedule.next_after(now)
            } else {
                current.next_fire_at
            };
            Ok(ScheduleChange { spec, next_fire_at })
        })
        .await
        .map_err(internal)?;
    match update {
        Update::Updated(row) => {
            tracing::info!(schedule = %id, "schedule updated");
            Ok(Json(row.into()))
        }
        Update::Missing => Err(missing(id)),
        Update::Refused(e) => Err(e),
    }
}

/// `DELETE /schedules/{id}`.
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", tag = "schedules",
    params(IdParam),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "invalid id", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such schedule", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = schedule_id(&id)?;
    if state.store.delete_schedule(id).await.map_err(internal)? {
        tracing::info!(schedule = %id, "schedule deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing(id))
    }
}

/// A valid name of a script that exists (not deleted).
async fn existing_script(state: &Shared, raw: &str) -> Result<String, ApiError> {
    let name = script_name(raw)?;
    match state
        .store
        .get_script(name.as_str())
        .await
        .map_err(internal)?
    {
        Some(_) => Ok(name.as_str().to_owned()),
        None => Err(ApiError::not_found(format!(
            "no script named {}",
            picloud_core::quote(name.as_str())
        ))),
    }
}

fn attempts(n: u32) -> Result<u32, ApiError> {
    if (1..=MAX_ATTEMPTS).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::bad_request(format!(
            "invalid max_attempts {n}: use 1 to {MAX_ATTEMPTS}"
        )))
    }
}

fn refused(e: ScheduleError) -> ApiError {
    let code = match e {
        ScheduleError::TimeZone { .. } => ErrorCode::InvalidTimezone,
        ScheduleError::Expression { .. } | ScheduleError::NeverFires { .. } => {
            ErrorCode::InvalidCron
        }
    };
    ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
}

fn schedule_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(format!("invalid schedule id {}", picloud_core::quote(raw)))
    })
}

fn missing(id: Uuid) -> ApiError {
    ApiError::not_found(format!("no schedule {id}"))
}
