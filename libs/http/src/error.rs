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

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Structured extras for the caller (a compile error's line and column).
    pub details: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid 'Authorization: Bearer <token>' header is required",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A request body that could not be read: 408 when it came too slowly,
    /// 413 when it was too large (`limit`, if known, is named), else 400.
    /// Never shows the underlying error, whose text names library types.
    pub fn body_read(err: &(dyn std::error::Error + 'static), limit: Option<usize>) -> Self {
        if crate::serve::is_body_timeout(err) {
            return Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
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
                "payload_too_large",
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
            "internal",
            "internal error; the operator's logs have the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                details: self.details.as_ref(),
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
