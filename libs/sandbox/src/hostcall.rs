//! What crosses the [`crate::Host`] trait: an outbound HTTP call and its
//! reply, and the typed error every host call returns. Kept apart from
//! `http.rs` (the Rhai side) and `capture.rs` (the per-run state), which
//! both use these types, so neither depends on the other's module.

use std::time::Duration;

/// One outbound request, as the script described it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub body: Option<HttpBody>,
    /// What the script asked for; the host bounds it further.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HttpBody {
    Text(String),
    Json(serde_json::Value),
}

/// The answer to an [`HttpCall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    /// Lower-case names; a name may repeat.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was cut at the response-size limit.
    pub truncated: bool,
}

/// Why a host call failed. Both messages are safe to show the script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// A catchable error (denied by policy, timed out, refused, the store
    /// unreachable, …).
    #[error("{0}")]
    Failed(String),
    /// A limit was broken: the invocation ends, naming it.
    #[error("{0}")]
    Limit(String),
}

/// Prefix of the termination token a broken host-call limit raises; the
/// rest of the token is the limit's public message.
pub(crate) const LIMIT_TOKEN: &str = "picloud:limit:";
