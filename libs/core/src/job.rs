//! Async work: jobs (one script run that must happen at least once, with its
//! effects applied once), the events scripts emit, and the ids that tie them
//! together.
//!
//! A job's `id` is its invocation id, and the key that makes its effects
//! apply once. It is derived where the job can be created more than once for
//! the same reason — an event reaching one subscription, a cron instant of
//! one schedule — so every copy has the same id.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chain::Chain;
use crate::invocation::{EventInput, HttpRequestInput, Trigger};

/// Namespace of PiCloud's derived (v5) ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_5d0e_2b7a_4c43_9a51_0d3e_8f62_b4a7);

/// The invocation id of `event` delivered to `subscription`.
pub fn event_job_id(event: Uuid, subscription: Uuid) -> Uuid {
    derived(&[b"event-job", event.as_bytes(), subscription.as_bytes()])
}

/// The id of the `index`-th event emitted by `invocation` (stable across
/// re-runs of the same invocation).
pub fn emitted_event_id(invocation: Uuid, index: usize) -> Uuid {
    derived(&[
        b"emit",
        invocation.as_bytes(),
        &(index as u64).to_be_bytes(),
    ])
}

/// The event (and invocation) id of `schedule` firing for `instant`.
pub fn cron_event_id(schedule: Uuid, instant: DateTime<Utc>) -> Uuid {
    derived(&[
        b"cron",
        schedule.as_bytes(),
        &instant.timestamp_millis().to_be_bytes(),
    ])
}

fn derived(parts: &[&[u8]]) -> Uuid {
    let mut name = Vec::with_capacity(64);
    for p in parts {
        // Length-prefixed, so no two part lists share a name.
        name.extend_from_slice(&(p.len() as u32).to_be_bytes());
        name.extend_from_slice(p);
    }
    Uuid::new_v5(&NAMESPACE, &name)
}

/// One script run to do at least once (an event delivery, an async HTTP
/// call, a cron firing). `event.attempt` is filled in by the executor from
/// the message's delivery count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The invocation id; effects apply once per id.
    pub id: Uuid,
    pub script: String,
    pub event: EventInput,
    /// The HTTP request of an async HTTP invocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HttpRequestInput>,
    /// The invocation whose emit caused this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    /// Attempts before the job becomes a dead letter (at least 1).
    pub max_attempts: u32,
    /// Whether the invocation's status may be read at the public status URL
    /// (async HTTP only: its id was handed to an outside caller).
    #[serde(default)]
    pub public: bool,
    /// Its hop count and invocation budget in its trace (a root's is the
    /// default).
    #[serde(default)]
    pub chain: Chain,
}

impl Job {
    pub fn trigger(&self) -> Trigger {
        self.event.kind
    }
}

/// An emitted event as the event stream keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    pub id: Uuid,
    pub topic: String,
    pub payload: serde_json::Value,
    pub trace_id: Uuid,
    /// The invocation that emitted it.
    pub source: Uuid,
    pub emitted_at: DateTime<Utc>,
    /// Hops from the trace's root to this event (1 for an event emitted by
    /// a call from outside).
    #[serde(default)]
    pub hop: u32,
}

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic {}: {reason}", crate::quote(topic))]
pub struct TopicError {
    pub topic: String,
    pub reason: &'static str,
}

/// Longest topic or pattern.
pub const MAX_TOPIC_LEN: usize = 200;

/// Checks an emitted topic: dot-separated tokens of letters, digits, `-`
/// and `_` (it becomes a NATS subject suffix; no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_tokens(topic, false)
}

/// Checks a subscription pattern: a topic whose tokens may also be `*`
/// (one token) or, last, `>` (one or more tokens), as in NATS.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    check_tokens(pattern, true)
}

fn check_tokens(s: &str, wildcards: bool) -> Result<(), TopicError> {
    let err = |reason| {
        Err(TopicError {
            topic: s.chars().take(MAX_TOPIC_LEN).collect(),
            reason,
        })
    };
    if s.is_empty() {
        return err("it is empty");
    }
    if s.len() > MAX_TOPIC_LEN {
        return err("it is longer than 200 bytes");
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return err("it has an empty token (leading, trailing or double dot)");
        }
        if *t == "*" || *t == ">" {
            if !wildcards {
                return err("wildcards (* and >) are for subscriptions, not emits");
            }
            if *t == ">" && i + 1 != tokens.len() {
                return err("'>' may only be the last token");
            }
            continue;
        }
        if !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return err("tokens may hold only ASCII letters, digits, '-' and '_'");
        }
    }
    Ok(())
}

/// Whether `topic` matches subscription `pattern` (NATS rules).
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_nats() {
        assert!(topic_matches("orders.created", "orders.created"));
        assert!(topic_matches("orders.*", "orders.created"));
        assert!(!topic_matches("orders.*", "orders.created.eu"));
        assert!(topic_matches("orders.>", "orders.created.eu"));
        assert!(!topic_matches("orders.>", "orders"));
        assert!(topic_matches(">", "a"));
        assert!(topic_matches("*.created", "users.created"));
        assert!(!topic_matches("orders", "orders.created"));
        assert!(!topic_matches("orders.created", "orders"));
    }

    #[test]
    fn topics_are_checked() {
        assert!(validate_topic("orders.created-1_x").is_ok());
        assert!(validate_topic("orders.*").is_err());
        assert!(validate_topic("a..b").is_err());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("a b").is_err());
        assert!(validate_topic(&"a".repeat(201)).is_err());
        assert!(validate_pattern("orders.*.eu").is_ok());
        assert!(validate_pattern("orders.>").is_ok());
        assert!(validate_pattern(">.x").is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let (e, s) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(event_job_id(e, s), event_job_id(e, s));
        assert_ne!(event_job_id(e, s), event_job_id(s, e));
        let i = Uuid::new_v4();
        assert_ne!(emitted_event_id(i, 0), emitted_event_id(i, 1));
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(cron_event_id(s, t), cron_event_id(s, t));
        assert_ne!(
            cron_event_id(s, t),
            cron_event_id(s, t + chrono::Duration::seconds(1))
        );
    }
}

/// Gateway → manager: accept an async HTTP call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsyncSubmit {
    pub job: Job,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the request the key came with: method, path and
    /// query, body, credential headers. The key returns the earlier
    /// invocation only for the same fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// Request headers that carry the caller's credentials. Async jobs drop
/// them before they are queued unless the script's version keeps them
/// (`keep_credentials`); the idempotency fingerprint hashes them.
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// A manager's answer to an [`AsyncSubmit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsyncAnswer {
    /// Durable in JetStream as this invocation (`existing`: an earlier call
    /// with the same idempotency key).
    Accepted { invocation_id: Uuid, existing: bool },
    /// The idempotency key belongs to another request (422; says nothing
    /// about that request's invocation).
    KeyReused,
    /// A submission with the same key is still being accepted (409).
    KeyInFlight,
    /// Not accepted; safe to show the caller.
    Refused { message: String },
}
