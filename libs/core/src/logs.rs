//! Live log events: what a follower of a script's log receives.
//!
//! An executor turns each invocation's captured lines into [`LogEvent::Line`]s
//! and its end into one [`LogEvent::End`]; the bus carries them (see
//! `picloud_bus` for the stream), and the admin API hands them to followers
//! as Server-Sent Events in exactly this JSON form.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::InvocationStatus;

/// Which sandbox function wrote a line: `print` and `log` write `info`
/// lines, `debug` writes `debug` lines (Rhai's debug form of the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Debug,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Debug => "debug",
        }
    }
}

/// One event of a script's live log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogEvent {
    /// A line the script wrote (secrets masked, as in the record).
    Line {
        invocation: Uuid,
        attempt: u32,
        at: DateTime<Utc>,
        level: LogLevel,
        line: String,
    },
    /// The invocation ended (after its last line).
    End {
        invocation: Uuid,
        attempt: u32,
        at: DateTime<Utc>,
        status: InvocationStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_status: Option<u16>,
        duration_us: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl LogEvent {
    pub fn invocation(&self) -> Uuid {
        match self {
            Self::Line { invocation, .. } | Self::End { invocation, .. } => *invocation,
        }
    }

    pub fn is_line(&self) -> bool {
        matches!(self, Self::Line { .. })
    }
}
