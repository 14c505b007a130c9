//! `ANY /fn/{name}[/{*rest}]`, and any path a script's custom route
//! matches (the router's fallback): one HTTP request, one invocation.
//!
//! | what happened                      | caller gets                         |
//! |------------------------------------|-------------------------------------|
//! | script answered                    | its response                        |
//! | no such script / no route matches  | 404 `not_found`                     |
//! | body over the limit                | 413 `payload_too_large`             |
//! | no executor listening / saturated  | 503 `no_executor` / `unavailable`   |
//! | no answer before the deadline      | 504 `timeout`                       |
//! | script failed                      | 500 `script_error` (redacted)       |
//! | a sandbox limit ended it           | 500 `limit_exceeded`, naming it     |
//!
//! Every answer carries `x-picloud-invocation-id`, the key to the full
//! record in the admin API.
//!
//! With `Prefer: respond-async` the call becomes a job: a manager records it
//! (deduplicating on `Idempotency-Key` for 24 h) and makes it durable in
//! JetStream, then the caller gets `202 {"invocation_id", "status_url"}` and
//! `Location: /status/{id}` (public; the random id is its only key). A key
//! returns the earlier invocation only for the same request (see
//! [`crate::idempotency`]): another request gets 422
//! `idempotency_key_reused`, a retry while the first submission is still
//! being accepted 409 `idempotency_key_in_use`. The job holds the caller's
//! credential headers only if the script's version keeps them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use percent_encoding::percent_decode_str;
use picloud_bus::{Bus, CallError, InvokeError};
use picloud_core::{
    AsyncAnswer, AsyncSubmit, EventInput, HttpRequestInput, InvocationRequest, Job, Outcome,
    ScriptName, ScriptResponse, Uuid, now_unix_ms,
};
use picloud_http::{ApiError, ErrorCode};

use crate::idempotency;
use crate::routes::RouteTable;

pub const INVOCATION_HEADER: &str = "x-picloud-invocation-id";

pub struct GatewayState {
    pub bus: Bus,
    pub routes: RouteTable,
    pub grace_ms: u64,
    /// Attempts of an async HTTP job.
    pub max_attempts: u32,
}

type Shared = Arc<GatewayState>;

#[derive(Clone)]
struct BodyLimit(usize);

/// Where a request goes: a script by name (`/fn`), or wherever the custom
/// route table says.
enum Dest {
    Fn { name: String, rest: String },
    Custom,
}

pub fn router(state: Shared, max_request_bytes: usize) -> Router {
    let limit = BodyLimit(max_request_bytes);
    let fn_limit = limit.clone();
    let rest_limit = limit.clone();
    Router::new()
        .route(
            "/fn/{name}",
            any(
                move |state: State<Shared>, Path(name): Path<String>, q, req| {
                    let rest = String::new();
                    handle(state, Dest::Fn { name, rest }, fn_limit.0, q, req)
                },
            ),
        )
        .route(
            "/fn/{name}/{*rest}",
            any(
                move |state: State<Shared>, Path((name, rest)): Path<(String, String)>, q, req| {
                    handle(state, Dest::Fn { name, rest }, rest_limit.0, q, req)
                },
            ),
        )
        // Every path no other route of the process takes.
        .fallback(move |state: State<Shared>, q, req| handle(state, Dest::Custom, limit.0, q, req))
        .with_state(state)
}

async fn handle(
    State(state): State<Shared>,
    dest: Dest,
    max_body: usize,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
    req: Request,
) -> Response {
    let asynchronous = wants_async(req.headers());
    // An async call's id is its status URL's only secret: fully random.
    let id = if asynchronous {
        Uuid::new_v4()
    } else {
        Uuid::now_v7()
    };
    let answer = match query {
        Ok(Query(query)) => invoke(&state, id, asynchronous, dest, max_body, query, req).await,
        Err(e) => Err(ApiError::bad_request(format!(
            "invalid query string: {}",
            e.body_text()
        ))),
    };
    let mut resp = answer.unwrap_or_else(IntoResponse::into_response);
    if !resp.headers().contains_key(INVOCATION_HEADER)
        && let Ok(v) = HeaderValue::from_str(&id.to_string())
    {
        resp.headers_mut().insert(INVOCATION_HEADER, v);
    }
    resp
}

/// `Prefer: respond-async` (RFC 7240), among other preferences or alone.
fn wants_async(headers: &HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|p| {
                p.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("respond-async")
            })
        })
    })
}

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v.to_str().ok().map(str::trim).filter(|k| {
        !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic())
    });
    match key {
        Some(k) => Ok(Some(k.to_owned())),
        None => Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))),
    }
}

/// Hands the call to a manager, which answers once the job is durable in
/// JetStream: 202 with the status URL.
async fn submit_async(
    state: &GatewayState,
    id: Uuid,
    route: picloud_bus::Route,
    request: HttpRequestInput,
    key: Option<String>,
    fingerprint: Option<String>,
) -> Result<Response, ApiError> {
    let job = Job {
        id,
        script: route.script,
        event: EventInput::http(id),
        request: Some(request),
        parent_id: None,
        subscription_id: None,
        schedule_id: None,
        max_attempts: state.max_attempts,
        public: true,
        chain: Default::default(),
    };
    let submit = AsyncSubmit {
        job,
        version: route.version,
        idempotency_key: key,
        fingerprint,
    };
    let answer = state
        .bus
        .request::<picloud_bus::wire::AsyncSubmitCall>(&submit, Duration::from_secs(10))
        .await;
    let (id, existing) = match answer {
        Ok(AsyncAnswer::Accepted {
            invocation_id,
            existing,
        }) => (invocation_id, existing),
        Ok(AsyncAnswer::Refused { message }) => return Err(ApiError::unavailable(message)),
        // Nothing about the earlier call (no id, no status) is shown.
        Ok(AsyncAnswer::KeyReused) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used with a different request (method, path, body or credentials); use a new key for a new request",
            ));
        }
        Ok(AsyncAnswer::KeyInFlight) => {
            let mut resp = ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::IdempotencyKeyInUse,
                "a request with this Idempotency-Key is still being accepted; retry",
            )
            .into_response();
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return Ok(resp);
        }
        Err(CallError::TooLarge(n)) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("the request is too large to queue ({n} bytes with its envelope)"),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "async submission failed");
            return Err(ApiError::unavailable(
                "the job could not be queued right now; retry",
            ));
        }
    };
    let location = format!("/status/{id}");
    let body = crate::openapi::Accepted {
        invocation_id: id,
        status_url: location.clone(),
        existing,
    };
    let mut resp = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    let headers = resp.headers_mut();
    for (name, value) in [
        ("location", location),
        ("preference-applied", "respond-async".to_owned()),
        (INVOCATION_HEADER, id.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
async fn invoke(
    state: &GatewayState,
    id: Uuid,
    asynchronous: bool,
    dest: Dest,
    max_body: usize,
    query: BTreeMap<String, String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (route, path, params) =
        resolve(state, dest, req.method().as_str(), req.uri().path()).await?;
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, max_body).await?;
    let mut request = HttpRequestInput {
        method: parts.method.as_str().to_owned(),
        path,
        params,
        query,
        headers: flatten_headers(&parts.headers),
        body: body_text(&bytes),
    };
    if asynchronous {
        let key = idempotency_key(&parts.headers)?;
        let fingerprint = key
            .as_ref()
            .map(|_| idempotency::fingerprint(&parts.method, &parts.uri, &bytes, &parts.headers));
        if !route.keep_credentials {
            idempotency::strip_credentials(&mut request.headers);
        }
        return submit_async(state, id, route, request, key, fingerprint).await;
    }
    let wait = Duration::from_millis(route.wall_time_ms + state.grace_ms);
    let invocation = InvocationRequest {
        id,
        script: route.script,
        version: route.version,
        deadline_unix_ms: now_unix_ms() + wait.as_millis() as i64,
        event: EventInput::http(id),
        request: Some(request),
    };
    match state.bus.invoke(&invocation, wait).await {
        Ok(reply) => outcome_response(reply.outcome, id),
        Err(InvokeError::NoExecutor) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NoExecutor,
            "no executor is available to run the script",
        )),
        Err(InvokeError::TimedOut) => Err(timeout()),
        Err(InvokeError::TooLarge(n)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("the request is too large to dispatch ({n} bytes with its envelope)"),
        )),
        Err(InvokeError::Bus(e)) => {
            tracing::warn!(error = %e, "invocation failed on the bus");
            Err(ApiError::unavailable("the message bus is unavailable"))
        }
    }
}

/// The script a request goes to, the path its script sees and what its
/// custom route captured.
async fn resolve(
    state: &GatewayState,
    dest: Dest,
    method: &str,
    raw: &str,
) -> Result<(picloud_bus::Route, String, BTreeMap<String, String>), ApiError> {
    let (name, path, params) = match dest {
        Dest::Fn { name, rest } => (name, format!("/{rest}"), BTreeMap::new()),
        Dest::Custom => {
            let path = percent_decode_str(raw).decode_utf8_lossy().into_owned();
            let Some(m) = state.routes.find(method, raw) else {
                let shown: String = path.chars().take(200).collect();
                return Err(ApiError::not_found(format!(
                    "no route matches {method} {}",
                    picloud_core::quote(&shown)
                )));
            };
            (m.script.to_string(), path, m.params)
        }
    };
    let not_found =
        || ApiError::not_found(format!("no script named {}", picloud_core::quote(&name)));
    let script = ScriptName::parse(&name).map_err(|_| not_found())?;
    let route = state
        .routes
        .lookup(&state.bus, script.as_str())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "route lookup failed");
            ApiError::unavailable("the message bus is unavailable")
        })?
        .ok_or_else(not_found)?;
    Ok((route, path, params))
}

fn timeout() -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Timeout,
        "the script did not answer before its deadline",
    )
}

async fn read_body(body: Body, max: usize) -> Result<axum::body::Bytes, ApiError> {
    to_bytes(body, max)
        .await
        .map_err(|e| ApiError::body_read(&e, Some(max)))
}

/// The body as the script sees it (invalid UTF-8 replaced).
fn body_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn flatten_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    out
}

fn outcome_response(outcome: Outcome, id: Uuid) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Response(r) => Ok(script_response(r)),
        Outcome::ScriptError { message } => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::ScriptError,
            format!("{message}; see invocation {id} for details"),
        )),
        Outcome::LimitExceeded { message } => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::LimitExceeded,
            message,
        )),
        Outcome::Unavailable { message } => Err(ApiError::unavailable(message)),
        Outcome::Expired => Err(timeout()),
        Outcome::Busy {
            message,
            retry_after_secs,
        } => {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyRequests,
                message,
            )
            .into_response();
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs),
            );
            Ok(resp)
        }
    }
}

fn script_response(r: ScriptResponse) -> Response {
    let mut resp = Response::new(Body::from(r.body));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let headers = resp.headers_mut();
    for (name, value) in r.headers {
        // The sandbox validated both; skip anything that still does not parse.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(n, v);
        }
    }
    resp
}
