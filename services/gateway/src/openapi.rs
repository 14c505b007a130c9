//! The OpenAPI description of the gateway's `/fn` endpoints. The manager
//! merges it into the document it serves at `/api/v1/openapi.json`.
//!
//! `/fn` answers whatever the script answers, so the script's own statuses
//! are the `default` response; the errors PiCloud itself answers are listed.

use picloud_core::Uuid;
use picloud_http::ErrorBody;
use serde::Serialize;
use utoipa::OpenApi;

/// The answer to a call with `Prefer: respond-async`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub invocation_id: Uuid,
    /// Where to poll the outcome (public; the id is its only key).
    #[schema(example = "/status/0191e2d4-7f3c-4c8e-9a4b-3f2e1d0c9b8a")]
    pub status_url: String,
    /// True when an earlier call with the same `Idempotency-Key` is answered.
    pub existing: bool,
}

#[derive(OpenApi)]
#[openapi(paths(call, call_path), components(schemas(Accepted)))]
pub struct GatewayDoc;

/// The headers PiCloud itself reads on `/fn` (the script sees all of them).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct CallHeaders {
    /// `respond-async` queues the call and answers `202`.
    #[param(rename = "Prefer")]
    prefer: Option<String>,
    /// With `respond-async`: one job per key and request for 24 h (1 to 255
    /// visible ASCII characters; ignored without `respond-async`).
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// What `/fn` answers: the script's own answer, or one of PiCloud's errors.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum CallResponses {
    #[response(status = 202, description = "queued (`Prefer: respond-async`)")]
    Accepted(Accepted),
    #[response(status = 400, description = "bad query string or `Idempotency-Key`")]
    BadRequest(ErrorBody),
    #[response(status = 404, description = "no such script")]
    NotFound(ErrorBody),
    #[response(status = 408, description = "the body did not arrive in time")]
    RequestTimeout(ErrorBody),
    #[response(
        status = 409,
        description = "a request with this `Idempotency-Key` is still being accepted"
    )]
    InUse(ErrorBody),
    #[response(status = 413, description = "the body is too large")]
    TooLarge(ErrorBody),
    #[response(
        status = 422,
        description = "the `Idempotency-Key` was used with another request"
    )]
    KeyReused(ErrorBody),
    #[response(
        status = 429,
        description = "the script runs as many calls as it may (`Retry-After`)"
    )]
    TooMany(ErrorBody),
    #[response(status = 500, description = "the script failed or hit a limit")]
    Failed(ErrorBody),
    #[response(
        status = 503,
        description = "no executor, or the message bus is unavailable"
    )]
    Unavailable(ErrorBody),
    #[response(
        status = 504,
        description = "the script did not answer before its deadline"
    )]
    Timeout(ErrorBody),
    #[response(
        status = "default",
        description = "the script's own answer (any status, headers and body)"
    )]
    Script,
}

/// Call a script: the request becomes its `request`; its answer is the
/// response. With `Prefer: respond-async` the call is queued and answered
/// `202` with a status URL.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/fn/{name}",
    tag = "functions",
    operation_id = "call",
    security(()),
    params(
        ("name" = String, Path, description = "the script", pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63),
        CallHeaders,
    ),
    request_body(content = inline(serde_json::Value), content_type = "*/*", description = "any body; the script sees it as text"),
    responses(CallResponses)
)]
#[allow(dead_code)]
fn call() {}

/// Like `/fn/{name}`; the script sees `/{rest}` as `request.path`.
#[utoipa::path(
    method(get, post, put, patch, delete),
    path = "/fn/{name}/{rest}",
    tag = "functions",
    operation_id = "call_path",
    security(()),
    params(
        ("name" = String, Path, description = "the script", pattern = r"^[a-z0-9][a-z0-9_-]*$", min_length = 1, max_length = 63),
        ("rest" = String, Path, description = "the rest of the path (may hold `/`)"),
        CallHeaders,
    ),
    request_body(content = inline(serde_json::Value), content_type = "*/*", description = "any body; the script sees it as text"),
    responses(CallResponses)
)]
#[allow(dead_code)]
fn call_path() {}
