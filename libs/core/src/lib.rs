//! PiCloud's shared vocabulary.
//!
//! Everything more than one role must agree on lives here, and nothing else:
//!
//! - [`name`]: validated script names ([`ScriptName`]).
//! - [`limits`]: per-invocation sandbox limits, operator maxima and per-script
//!   overrides ([`Limits`], [`LimitOverrides`]).
//! - [`invocation`]: what travels between gateway, executor and manager: the
//!   invocation request, its reply and its record.
//! - [`job`], [`effects`]: async jobs, events, and the kv writes and emits an
//!   invocation commits.
//! - [`logs`]: live log events (a script's lines and each invocation's
//!   end), as followers receive them.
//! - [`chain`]: the hop count and invocation budget that bound event chains.
//! - [`schedule`]: cron expressions in time zones, and what a scheduler
//!   does with due instants (catch-up, overlap).
//! - [`backoff`]: capped exponential backoff with jitter for retries of
//!   unavailable dependencies ([`Backoff`]).
//! - [`routes`]: custom HTTP routes of scripts (`GET /users/:id`): parsing,
//!   conflicts, and the matcher gateways build ([`routes::RouteMatcher`]).
//! - [`config`]: the process configuration (environment and optional TOML).
//!
//! Architecture invariant: this crate performs no network or database I/O
//! (it reads only its config file and the environment). It knows nothing of NATS
//! subjects (the bus crate owns them), SQL (the store crate owns it) or HTTP
//! serving (the http crate owns it).

#![forbid(unsafe_code)]

pub mod backoff;
pub mod chain;
pub mod config;
pub mod effects;
pub mod invocation;
pub mod job;
pub mod limits;
pub mod logs;
pub mod name;
pub mod routes;
pub mod schedule;
pub mod secret;
pub mod time;
pub mod whole;

pub use backoff::Backoff;
pub use chain::Chain;
pub use config::{Config, ConfigArgs, is_root};
pub use effects::{Commit, CommitReply, DeadLetter, Effects, Emit, KvEntry, KvVersion, ListRead};
pub use invocation::{
    EventInput, HttpRequestInput, InvocationRecord, InvocationReply, InvocationRequest,
    InvocationStatus, Outcome, ScriptResponse, Trigger,
};
pub use job::{AsyncAnswer, AsyncSubmit, CREDENTIAL_HEADERS, EventMessage, Job};
pub use limits::{LimitOverrides, Limits};
pub use logs::{LogEvent, LogLevel};
pub use name::{NameError, ScriptName};
pub use secret::Secret;
pub use uuid::Uuid;

/// `s` in double quotes, escaped as in JSON: a name or value as a user
/// writes it, for messages (never Rust's `{:?}` form).
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// Graceful-shutdown signal shared by every task of a process: cancel it once,
/// every role drains and returns.
pub type Shutdown = tokio_util::sync::CancellationToken;

/// Milliseconds since the Unix epoch, the unit of every deadline on the wire.
pub fn now_unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
