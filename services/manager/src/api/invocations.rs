//! The invocation log.

use axum::Json;
use axum::extract::State;
use picloud_core::{InvocationRecord, InvocationStatus, Trigger, Uuid, quote};
use picloud_http::{ApiError, ErrorBody, JsonPath, JsonQuery};
use picloud_store::{AttemptRow, InvocationFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::openapi::IdParam;
use super::{Shared, internal, script_name};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1_000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this script's.
    #[param(pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63)]
    script: Option<String>,
    /// Only those with this status.
    #[param(value_type = Option<InvocationStatus>)]
    status: Option<String>,
    /// Only those this started.
    #[param(value_type = Option<Trigger>)]
    trigger: Option<String>,
    /// Only those started at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Only those started before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// Most shown (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// `GET /invocations[?script=&status=&trigger=&since=&until=&limit=]`: the
/// newest first.
#[utoipa::path(get, path = "/api/v1/invocations", tag = "invocations",
    params(ListQuery),
    responses(
        (status = 200, description = "the invocations, newest first", body = Vec<InvocationRecord>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<Shared>,
    JsonQuery(q): JsonQuery<ListQuery>,
) -> Result<Json<Vec<InvocationRecord>>, ApiError> {
    let script = q.script.as_deref().map(script_name).transpose()?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            InvocationStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid status {}: use queued, ok, error, limit_exceeded, unavailable or expired",
                    quote(s)
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
                ApiError::bad_request(format!("invalid limit {}: use 1 to {MAX_LIMIT}", quote(l)))
            })?,
    };
    let trigger = q
        .trigger
        .as_deref()
        .map(|t| {
            Trigger::parse(t).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid trigger {}: use http, cron, event or manual",
                    quote(t)
                ))
            })
        })
        .transpose()?;
    let filter = InvocationFilter {
        script: script.map(|s| s.as_str().to_owned()),
        status,
        trigger,
        since: q
            .since
            .as_deref()
            .map(|t| instant("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| instant("until", t))
            .transpose()?,
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

/// One invocation with the invocations it caused (the subscribers of its
/// emits), each with theirs: an event chain reads as a tree.
#[derive(Serialize, ToSchema)]
pub struct InvocationTree {
    #[serde(flatten)]
    record: InvocationRecord,
    /// The root's every report, oldest first, the last being `record`'s
    /// own: each attempt with its time, outcome and error.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptRow>>,
    /// The invocations this one's emits caused.
    #[schema(no_recursion)]
    children: Vec<InvocationTree>,
}

/// A time in a query: RFC 3339 (`2026-12-02T10:00:00Z`).
fn instant(param: &str, text: &str) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .map_err(|_| {
            ApiError::bad_request(format!(
                "invalid {param} {}: use an RFC 3339 time such as 2026-12-02T10:00:00Z",
                quote(text)
            ))
        })
}

/// Deepest chain shown (a chain of emits can be as long as its scripts make
/// it; the tree shown is cut here).
const MAX_TREE_DEPTH: usize = 16;
/// Most invocations shown in one tree.
const MAX_TREE_NODES: usize = 1_000;

/// `GET /invocations/{id}`: the record with the tree of what it caused.
#[utoipa::path(get, path = "/api/v1/invocations/{id}", tag = "invocations",
    params(IdParam),
    responses(
        (status = 200, description = "the invocation and its event chain", body = InvocationTree),
        (status = 400, description = "invalid id", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such invocation", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
) -> Result<Json<InvocationTree>, ApiError> {
    let record = record_of(&state, &id).await?;
    let id = record.id;
    let mut attempts = state.store.earlier_attempts(id).await.map_err(internal)?;
    if record.status != InvocationStatus::Queued {
        attempts.push(AttemptRow::of(&record));
    }
    // Breadth first, level by level, bounded in depth and size.
    let mut levels: Vec<Vec<InvocationRecord>> = vec![vec![record]];
    let mut nodes = 1;
    while levels.len() < MAX_TREE_DEPTH && nodes < MAX_TREE_NODES {
        let mut next = Vec::new();
        for parent in levels.last().expect("at least the root") {
            let children = state
                .store
                .invocation_children(parent.id)
                .await
                .map_err(internal)?;
            nodes += children.len();
            next.extend(children);
            if nodes >= MAX_TREE_NODES {
                break;
            }
        }
        if next.is_empty() {
            break;
        }
        levels.push(next);
    }
    // Assemble bottom-up.
    let mut below: Vec<InvocationTree> = Vec::new();
    while let Some(level) = levels.pop() {
        let mut built = Vec::with_capacity(level.len());
        for record in level {
            let (mine, rest): (Vec<_>, Vec<_>) = below
                .into_iter()
                .partition(|t| t.record.parent_id == Some(record.id));
            below = rest;
            built.push(InvocationTree {
                record,
                attempts: None,
                children: mine,
            });
        }
        below = built;
    }
    let mut root = below.pop().expect("the root");
    root.attempts = Some(attempts);
    Ok(Json(root))
}

/// The record of invocation `raw` (an id from a path): 400 when it is not
/// an id, 404 when there is none.
pub(super) async fn record_of(state: &Shared, raw: &str) -> Result<InvocationRecord, ApiError> {
    let id = parse_id(raw)?;
    state
        .store
        .get_invocation(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no invocation {id}")))
}

pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid id {}", quote(id))))
}

/// What the public status URL of an async HTTP call shows.
#[derive(Serialize, ToSchema)]
pub struct AsyncStatus {
    invocation_id: Uuid,
    status: InvocationStatus,
    /// Final: it succeeded, or failed its last attempt (a dead letter).
    /// Until then an `error` status means "will be retried".
    done: bool,
    attempt: u32,
    /// The script's response, once it succeeded.
    response: Option<picloud_core::ScriptResponse>,
}

/// `GET /status/{id}`: public (the id is unguessable, and only async HTTP
/// invocations are shown), no token.
#[utoipa::path(get, path = "/status/{id}", tag = "functions", security(()),
    params(("id" = Uuid, Path, description = "the `invocation_id` of a 202 answer")),
    responses(
        (status = 200, description = "where the call is", body = AsyncStatus),
        (status = 400, description = "the path is not valid UTF-8", body = ErrorBody),
        (status = 404, description = "no such async call", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn public_status(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
) -> Result<Json<AsyncStatus>, ApiError> {
    let not_found = || ApiError::not_found("no such invocation");
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let record = state
        .store
        .get_invocation(id)
        .await
        .map_err(internal)?
        .filter(|r| r.public)
        .ok_or_else(not_found)?;
    let done = record.status == InvocationStatus::Ok
        || state
            .store
            .is_dead_lettered(record.id)
            .await
            .map_err(internal)?;
    Ok(Json(AsyncStatus {
        invocation_id: record.id,
        status: record.status,
        done,
        attempt: record.attempt,
        response: record.response,
    }))
}
