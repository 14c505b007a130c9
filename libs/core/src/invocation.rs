//! What travels between the roles for one invocation.
//!
//! `InvocationRequest` goes gateway → executor, `InvocationReply` comes back,
//! and `InvocationRecord` goes executor → manager (batched, off the hot path).
//! All are JSON on the wire.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What started an invocation (`event.kind` in scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Http,
    Cron,
    Event,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Cron => "cron",
            Trigger::Event => "event",
            Trigger::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Http, Self::Cron, Self::Event, Self::Manual]
            .into_iter()
            .find(|t| t.as_str() == s)
    }
}

/// The `event` value every script sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventInput {
    pub id: Uuid,
    pub kind: Trigger,
    pub topic: Option<String>,
    pub payload: serde_json::Value,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub attempt: u32,
    pub trace_id: Uuid,
}

impl EventInput {
    /// The event of an HTTP invocation `id` (its own trace, first attempt).
    pub fn http(id: Uuid) -> Self {
        Self {
            id,
            kind: Trigger::Http,
            topic: None,
            payload: serde_json::Value::Null,
            scheduled_at: None,
            attempt: 1,
            trace_id: id,
        }
    }
}

/// The `request` value of an HTTP invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRequestInput {
    pub method: String,
    /// The path below `/fn/{name}`, starting with `/` (`/` when none).
    pub path: String,
    pub params: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationRequest {
    pub id: Uuid,
    pub script: String,
    pub version: u32,
    /// Absolute deadline; an executor drops the job once it has passed
    /// (the caller has given up).
    pub deadline_unix_ms: i64,
    pub event: EventInput,
    pub request: Option<HttpRequestInput>,
}

/// An HTTP-shaped result of a successful script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScriptResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Why an invocation produced no response. The `message` is already safe for
/// a public caller; details stay in the invocation record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Response(ScriptResponse),
    /// The script failed (runtime error, thrown value, bad result).
    ScriptError {
        message: String,
    },
    /// A sandbox limit ended the script; `message` names the limit.
    LimitExceeded {
        message: String,
    },
    /// The executor could not take the job (saturated, script missing).
    Unavailable {
        message: String,
    },
    /// The job's deadline passed before it could start.
    Expired,
    /// The script already runs as many invocations as its concurrency cap
    /// allows on this executor: try again after `retry_after_secs`.
    Busy {
        message: String,
        retry_after_secs: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvocationReply {
    pub id: Uuid,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvocationStatus {
    /// Accepted (async) and not yet run to an end.
    Queued,
    Ok,
    Error,
    LimitExceeded,
    Unavailable,
    Expired,
}

impl InvocationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvocationStatus::Queued => "queued",
            InvocationStatus::Ok => "ok",
            InvocationStatus::Error => "error",
            InvocationStatus::LimitExceeded => "limit_exceeded",
            InvocationStatus::Unavailable => "unavailable",
            InvocationStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Ok,
            Self::Error,
            Self::LimitExceeded,
            Self::Unavailable,
            Self::Expired,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl Outcome {
    pub fn status(&self) -> InvocationStatus {
        match self {
            Outcome::Response(_) => InvocationStatus::Ok,
            Outcome::ScriptError { .. } => InvocationStatus::Error,
            Outcome::LimitExceeded { .. } => InvocationStatus::LimitExceeded,
            Outcome::Unavailable { .. } => InvocationStatus::Unavailable,
            Outcome::Expired => InvocationStatus::Expired,
            Outcome::Busy { .. } => InvocationStatus::Unavailable,
        }
    }

    /// The HTTP status a sync caller gets for this outcome (the gateway
    /// answers it; the record keeps it).
    pub fn caller_status(&self) -> u16 {
        match self {
            Outcome::Response(r) => r.status,
            Outcome::ScriptError { .. } | Outcome::LimitExceeded { .. } => 500,
            Outcome::Unavailable { .. } => 503,
            Outcome::Expired => 504,
            Outcome::Busy { .. } => 429,
        }
    }
}

/// The durable record of one invocation, written by the manager. Its JSON
/// is also the admin API's, so every field but the two that only some
/// invocations have (`parent_id`, `response`) is always present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationRecord {
    pub id: Uuid,
    pub script: String,
    pub version: u32,
    pub trigger: Trigger,
    pub status: InvocationStatus,
    /// The HTTP status the script answered with, when it answered.
    #[serde(default)]
    pub http_status: Option<u16>,
    pub started_at: DateTime<Utc>,
    pub duration_us: u64,
    /// Captured `log`/`print` output, capped by the script's limit.
    #[serde(default)]
    pub log: String,
    /// The full error, for the operator only.
    #[serde(default)]
    pub error: Option<String>,
    pub executor: String,
    pub trace_id: Uuid,
    /// 1 for the first try of a job; sync HTTP is always 1.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The invocation whose emit caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<Uuid>,
    /// The script's response, kept for async HTTP (the status URL shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ScriptResponse>,
    /// Readable at the public status URL (async HTTP only).
    #[serde(default)]
    pub public: bool,
}

fn first_attempt() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for s in [
            InvocationStatus::Queued,
            InvocationStatus::Ok,
            InvocationStatus::Error,
            InvocationStatus::LimitExceeded,
            InvocationStatus::Unavailable,
            InvocationStatus::Expired,
        ] {
            assert_eq!(InvocationStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(InvocationStatus::parse("nope"), None);
    }
}
