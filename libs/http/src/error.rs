//! The JSON error shape of every HTTP API, and bearer-token checking.
//!
//! [`ApiError`] is the one place an error becomes a public answer: it carries
//! a stable `code` and a message written for the caller. Internal causes are
//! logged where they happen and never put into an `ApiError`'s message; use
//! [`ApiError::internal`] for those, which logs and answers a fixed text.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every error code an API answers with: the `code` of
/// `{"error": {"code", "message"}}`. Clients branch on it; the message is
/// for people. Adding a variant is a compatible change; renaming one is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed (body, query, path or header).
    BadRequest,
    /// No such resource, or no such endpoint.
    NotFound,
    /// The path exists but not with this method (see the `Allow` header).
    MethodNotAllowed,
    /// The admin token is missing or wrong.
    Unauthorized,
    /// A dependency (message bus, executor capacity) is unavailable; retry.
    Unavailable,
    /// The request body did not arrive in time.
    RequestTimeout,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// A server fault; the operator's logs have the details.
    Internal,
    /// A script or module name is not valid.
    InvalidName,
    /// A script or module source is not acceptable (e.g. contains NUL).
    InvalidSource,
    /// A script or module source is larger than allowed.
    SourceTooLarge,
    /// The source does not compile; `details` has `line` and `column`.
    CompileError,
    /// An `import` names a missing module or makes a cycle.
    ImportError,
    /// A cron expression is not valid or never fires.
    InvalidCron,
    /// A time zone is not a known IANA name.
    InvalidTimezone,
    /// A subscription topic pattern is not valid.
    InvalidTopic,
    /// The dead letter was replayed already.
    AlreadyReplayed,
    /// An `Idempotency-Key` was used with a different request.
    IdempotencyKeyReused,
    /// A request with this `Idempotency-Key` is still being accepted.
    IdempotencyKeyInUse,
    /// No executor is listening.
    NoExecutor,
    /// The script did not answer before its deadline.
    Timeout,
    /// The script failed.
    ScriptError,
    /// A sandbox limit ended the script.
    LimitExceeded,
    /// The script runs as many invocations as it may; see `Retry-After`.
    TooManyRequests,
    /// A custom route is not valid (syntax, reserved prefix, bounds).
    InvalidRoute,
    /// A custom route overlaps one another script holds; `details.held_by`.
    RouteConflict,
    /// A queued job cannot be read; it can only be discarded.
    UnreadableJob,
    /// A `Last-Event-ID` that no live-log stream sent.
    InvalidLastEventId,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: &'static [ErrorCode] = &[
        Self::BadRequest,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Unauthorized,
        Self::Unavailable,
        Self::RequestTimeout,
        Self::PayloadTooLarge,
        Self::Internal,
        Self::InvalidName,
        Self::InvalidSource,
        Self::SourceTooLarge,
        Self::CompileError,
        Self::ImportError,
        Self::InvalidCron,
        Self::InvalidTimezone,
        Self::InvalidTopic,
        Self::AlreadyReplayed,
        Self::IdempotencyKeyReused,
        Self::IdempotencyKeyInUse,
        Self::NoExecutor,
        Self::Timeout,
        Self::ScriptError,
        Self::LimitExceeded,
        Self::TooManyRequests,
        Self::InvalidRoute,
        Self::RouteConflict,
        Self::UnreadableJob,
        Self::InvalidLastEventId,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unauthorized => "unauthorized",
            Self::Unavailable => "unavailable",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Internal => "internal",
            Self::InvalidName => "invalid_name",
            Self::InvalidSource => "invalid_source",
            Self::SourceTooLarge => "source_too_large",
            Self::CompileError => "compile_error",
            Self::ImportError => "import_error",
            Self::InvalidCron => "invalid_cron",
            Self::InvalidTimezone => "invalid_timezone",
            Self::InvalidTopic => "invalid_topic",
            Self::AlreadyReplayed => "already_replayed",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyKeyInUse => "idempotency_key_in_use",
            Self::NoExecutor => "no_executor",
            Self::Timeout => "timeout",
            Self::ScriptError => "script_error",
            Self::LimitExceeded => "limit_exceeded",
            Self::TooManyRequests => "too_many_requests",
            Self::InvalidRoute => "invalid_route",
            Self::RouteConflict => "route_conflict",
            Self::UnreadableJob => "unreadable_job",
            Self::InvalidLastEventId => "invalid_last_event_id",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Structured extras for the caller (a compile error's line and column).
    pub details: Option<serde_json::Value>,
}

/// The body of every error answer: `{"error": {"code", "message",
/// "details"?}}` (`Error` in the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// For people; it names things as they were written.
    pub message: String,
    /// Structured extras (a compile error's `line` and `column`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = code;
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "a valid 'Authorization: Bearer <token>' header is required",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }

    /// A request body that could not be read: 408 when it came too slowly,
    /// 413 when it was too large (`limit`, if known, is named), else 400.
    /// Never shows the underlying error, whose text names library types.
    pub fn body_read(err: &(dyn std::error::Error + 'static), limit: Option<usize>) -> Self {
        if crate::serve::is_body_timeout(err) {
            return Self::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                "the request body did not arrive in time",
            );
        }
        let too_large = {
            let mut next = Some(err);
            let mut found = false;
            while let Some(e) = next {
                found |= e.is::<http_body_util::LengthLimitError>();
                next = e.source();
            }
            found
        };
        if too_large {
            return Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                match limit {
                    Some(max) => format!("request body is larger than {max} bytes"),
                    None => "request body is too large".into(),
                },
            );
        }
        Self::bad_request("the request body could not be read")
    }

    /// Logs `cause` for the operator and answers a fixed, detail-free 500.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error; the operator's logs have the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// A bearer token, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Checks an `Authorization` header value in constant time (over the
    /// digests, so the token's length leaks nothing either).
    pub fn verify_header(&self, header: Option<&str>) -> bool {
        // The scheme is case-insensitive (RFC 9110).
        let Some(token) = header.and_then(|h| {
            let (scheme, rest) = h.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest)
        }) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        presented.ct_eq(&self.0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn token_check() {
        let h = TokenHash::of("s3cret");
        assert!(h.verify_header(Some("Bearer s3cret")));
        assert!(h.verify_header(Some("bearer s3cret")));
        assert!(!h.verify_header(Some("Bearer s3cre")));
        assert!(!h.verify_header(Some("s3cret")));
        assert!(!h.verify_header(Some("Basic s3cret")));
        assert!(!h.verify_header(None));
    }
}
