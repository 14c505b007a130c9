//! Cron schedules: `POST|GET /schedules`, `GET|PATCH|DELETE /schedules/{id}`.
//!
//! A schedule is validated whole (expression, zone, script) before anything
//! is written; every answer shows the next five firing times.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use chrono::{DateTime, Utc};
use picloud_core::Uuid;
use picloud_core::schedule::{CatchUp, CronSchedule, Overlap, ScheduleError};
use picloud_http::{ApiError, JsonBody};
use picloud_store::schedules::{ScheduleChange, ScheduleRow, ScheduleSpec, Update};
use serde::{Deserialize, Serialize};

use super::{Shared, internal, script_name};

/// Most attempts a schedule may ask for.
const MAX_ATTEMPTS: u32 = 100;
/// Firing times shown with a schedule.
const NEXT_RUNS: usize = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    script: String,
    cron: String,
    #[serde(default = "utc")]
    timezone: String,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(default)]
    overlap: Overlap,
    #[serde(default = "enabled")]
    enabled: bool,
    max_attempts: Option<u32>,
}

fn utc() -> String {
    "UTC".into()
}

fn enabled() -> bool {
    true
}

/// Absent fields keep their value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    script: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    catch_up: Option<CatchUp>,
    overlap: Option<Overlap>,
    enabled: Option<bool>,
    max_attempts: Option<u32>,
}

#[derive(Serialize)]
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

#[derive(Deserialize)]
pub struct ListQuery {
    script: Option<String>,
}

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

pub async fn list(
    State(state): State<Shared>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ScheduleView>>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    let rows = state
        .store
        .list_schedules(script.as_ref().map(|s| s.as_str()))
        .await
        .map_err(internal)?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

pub async fn get(
    State(state): State<Shared>,
    Path(id): Path<String>,
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

pub async fn patch(
    State(state): State<Shared>,
    Path(id): Path<String>,
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

pub async fn delete(
    State(state): State<Shared>,
    Path(id): Path<String>,
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
            "no script named {:?}",
            name.as_str()
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
        ScheduleError::TimeZone { .. } => "invalid_timezone",
        ScheduleError::Expression { .. } | ScheduleError::NeverFires { .. } => "invalid_cron",
    };
    ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
}

fn schedule_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid schedule id {raw:?}")))
}

fn missing(id: Uuid) -> ApiError {
    ApiError::not_found(format!("no schedule {id}"))
}
