//! The wire protocol: every message that crosses NATS, in one place, with
//! its subject, its payload type and (for a request) its reply type.
//!
//! The payload types themselves are plain data defined where their
//! meaning lives (`picloud_core` for jobs, commits and records, [`crate`]
//! for nodes and logs) and re-exported here; this module is the one map
//! from a subject to what travels on it.
//!
//! - **Requests** ([`Rpc`]): a typed request/reply, used by both ends
//!   through [`Bus::request`](crate::Bus::request) and
//!   [`Bus::serve_rpc`](crate::Bus::serve_rpc), so a caller and a server
//!   cannot disagree on a subject or a type.
//! - **Streams and broadcasts** ([`Topic`]): one-way messages (jobs,
//!   events, records, logs, node announcements), with the subject they are
//!   published on.
//!
//! Every message the bus sends carries the header [`VERSION_HEADER`] with
//! [`WIRE_VERSION`]; a message without it is from a release before the
//! header (version 1, the same payloads). A receiver drops (and logs) a
//! message of a newer version than its own instead of misreading it.
//! Payload changes stay additive (new fields optional); the byte fixtures
//! in `libs/bus/tests/fixtures/` are messages as version 1 wrote them and
//! must keep decoding (`libs/bus/tests/wire.rs`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::nodes::{NodeAnnouncement, NodeInfo};
pub use picloud_core::{
    AsyncAnswer, AsyncSubmit, Commit, CommitReply, DeadLetter, EventMessage, InvocationRecord,
    InvocationReply, InvocationRequest, Job, KvEntry, KvVersion, LogEvent,
    effects::{KvAnswer, KvGet, KvList},
};

use crate::{BusError, Names};

/// The version of the messages this build writes.
pub const WIRE_VERSION: u32 = 1;
/// The NATS header carrying a message's [`WIRE_VERSION`].
pub const VERSION_HEADER: &str = "Picloud-Wire";

/// The headers every message of this build carries.
pub fn headers() -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(VERSION_HEADER, WIRE_VERSION.to_string().as_str());
    headers
}

/// The wire version of a received message: 1 without the header (releases
/// before it), `None` when unreadable.
pub fn version_of(headers: Option<&async_nats::HeaderMap>) -> Option<u32> {
    match headers.and_then(|h| h.get(VERSION_HEADER)) {
        None => Some(1),
        Some(v) => v.as_str().parse().ok(),
    }
}

/// True when this build can read a message with these headers.
pub fn readable(headers: Option<&async_nats::HeaderMap>) -> bool {
    version_of(headers).is_some_and(|v| v <= WIRE_VERSION)
}

/// The one gate every reader of a bus message passes (directly, or through
/// [`read`]): `Ok` when this build can read a message with these headers,
/// else [`BusError::Newer`] after a warning naming the subject and the
/// version. The caller then drops the message (a live-log batch, a node's
/// answer, a reply: the call fails) or leaves it for a node of the newer
/// release (a job or a record batch: not acked, redelivered).
pub fn check(subject: &str, headers: Option<&async_nats::HeaderMap>) -> Result<(), BusError> {
    let version = version_of(headers);
    if version.is_some_and(|v| v <= WIRE_VERSION) {
        return Ok(());
    }
    tracing::warn!(
        subject,
        version = ?version,
        ours = WIRE_VERSION,
        "not reading a message of a newer wire version"
    );
    Err(BusError::Newer {
        subject: subject.to_owned(),
        version,
    })
}

/// Decodes a received message as `T` once [`check`] accepts its version.
pub fn read<T: DeserializeOwned>(
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<T, BusError> {
    check(subject, headers)?;
    crate::decode(subject, payload)
}

/// A request/reply call across the bus: its subject, what is asked, what
/// is answered, and who serves it (a queue group: one member answers).
pub trait Rpc {
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Reply: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The subject `request` is sent on.
    fn subject(names: &Names, request: &Self::Request) -> String;
    /// What the servers subscribe to (that subject, or a wildcard over it).
    fn serve_subject(names: &Names) -> String;
    /// The queue group serving it.
    fn group(names: &Names) -> String {
        names.manager_group()
    }
}

/// A call the managers serve on one fixed subject.
macro_rules! manager_call {
    ($(#[$doc:meta])* $name:ident, $request:ty, $reply:ty, $subject:ident) => {
        $(#[$doc])*
        pub enum $name {}
        impl Rpc for $name {
            type Request = $request;
            type Reply = $reply;
            fn subject(names: &Names, _: &Self::Request) -> String {
                names.$subject()
            }
            fn serve_subject(names: &Names) -> String {
                names.$subject()
            }
        }
    };
}

manager_call!(
    /// Executor → manager: one kv key of a script.
    KvGetCall, KvGet, KvAnswer<Option<KvEntry>>, kv_get_subject
);
manager_call!(
    /// Executor → manager: a script's keys under a prefix.
    KvListCall, KvList, KvAnswer<Vec<(String, KvVersion)>>, kv_list_subject
);
manager_call!(
    /// Executor → manager: apply a successful invocation's effects.
    CommitCall, Commit, CommitReply, commit_subject
);
manager_call!(
    /// Executor → manager: a job failed its last attempt.
    DeadLetterCall, DeadLetter, CommitReply, dead_letter_subject
);
manager_call!(
    /// Gateway → manager: accept an async HTTP call.
    AsyncSubmitCall, AsyncSubmit, AsyncAnswer, async_submit_subject
);
manager_call!(
    /// Executor → manager: a secret's value (never stored on the bus).
    SecretCall, SecretAsk, SecretAnswer, secrets_subject
);

/// Gateway → executor: a sync invocation, on its script's subject, served
/// by the executors' queue group.
pub enum InvokeCall {}
impl Rpc for InvokeCall {
    type Request = InvocationRequest;
    type Reply = InvocationReply;
    fn subject(names: &Names, request: &Self::Request) -> String {
        names.invoke_subject(&request.script)
    }
    fn serve_subject(names: &Names) -> String {
        names.invoke_wildcard()
    }
    fn group(names: &Names) -> String {
        names.executor_group()
    }
}

/// Executor → manager, on [`Names::secrets_subject`]: a secret's value.
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretAsk {
    pub name: String,
}

/// The answer: the value, `None` (no such secret), or an error safe to show
/// the script.
#[derive(Serialize, Deserialize)]
pub struct SecretAnswer {
    pub value: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

impl std::fmt::Debug for SecretAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret's value is never printed.
        f.debug_struct("SecretAnswer")
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("error", &self.error)
            .finish()
    }
}

/// A one-way message kind: what is published and where.
pub trait Topic {
    type Payload;
    /// Where one message about `key` (a script, a topic, or nothing) goes.
    fn subject(names: &Names, key: &str) -> String;
}

/// An async job, durable in `{P}_JOBS` (`key`: the script).
pub enum Jobs {}
impl Topic for Jobs {
    type Payload = Job;
    fn subject(names: &Names, key: &str) -> String {
        names.job_subject(key)
    }
}

/// The doorbell rung once a job is stored (`key`: the script; empty body).
pub enum JobReady {}
impl Topic for JobReady {
    type Payload = ();
    fn subject(names: &Names, key: &str) -> String {
        names.job_ready_subject(key)
    }
}

/// An emitted event, durable in `{P}_EVENTS` (`key`: the topic).
pub enum Events {}
impl Topic for Events {
    type Payload = EventMessage;
    fn subject(names: &Names, key: &str) -> String {
        names.event_subject(key)
    }
}

/// A batch of invocation records in `{P}_RECORDS` (a JSON array, built by
/// [`RecordBatchBuf`](crate::RecordBatchBuf); `key` unused).
pub enum Records {}
impl Topic for Records {
    type Payload = Vec<InvocationRecord>;
    fn subject(names: &Names, _key: &str) -> String {
        names.records_subject()
    }
}

/// A batch of a script's log events in `{P}_LOGS` (`key`: the script).
pub enum Logs {}
impl Topic for Logs {
    type Payload = Vec<LogEvent>;
    fn subject(names: &Names, key: &str) -> String {
        names.logs_subject(key)
    }
}

/// A role instance's start or stop (`key` unused).
pub enum NodeAnnounce {}
impl Topic for NodeAnnounce {
    type Payload = NodeAnnouncement;
    fn subject(names: &Names, _key: &str) -> String {
        names.nodes_announce_subject()
    }
}

/// A ping every role instance answers with its [`NodeInfo`] (many replies
/// to one inbox, so not an [`Rpc`]; `key` unused).
pub enum NodesPing {}
impl Topic for NodesPing {
    type Payload = ();
    fn subject(names: &Names, _key: &str) -> String {
        names.nodes_ping_subject()
    }
}
