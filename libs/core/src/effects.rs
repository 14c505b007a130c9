//! What an invocation changes, and how the change reaches Postgres.
//!
//! A script's `kv::set`/`kv::delete` and `emit` calls are buffered as
//! [`Effects`] while it runs, together with the version of every key (and
//! every listed prefix) it read. When it succeeds, the executor sends a
//! [`Commit`] to a manager, which applies it in one transaction only if
//! every read is still current; otherwise the executor re-runs the script.
//! A failing script sends nothing, so it changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chain::Chain;
use crate::invocation::InvocationRecord;
use crate::job::Job;

/// A kv key's version: 0 when the key does not exist. Every write gives the
/// key a new, never reused version, so "same version" means "same value".
/// A write without a [`Commit::version`] takes the next of a sequence; a
/// commit's own version is drawn at random from [`RUN_VERSIONS`], above
/// anything the sequence will reach (see [`Commit::version`]).
pub type KvVersion = i64;

/// Where a run's own versions are drawn from: `[2^62, 2^63)`.
pub const RUN_VERSIONS: std::ops::Range<KvVersion> = (1 << 62)..KvVersion::MAX;

/// A fresh version for one run's writes, from [`RUN_VERSIONS`].
pub fn run_version() -> KvVersion {
    // 62 random bits: two runs drawing the same one is as likely as two
    // UUIDs v7 of one millisecond colliding, which the invocation ids
    // (effects once) already take as never.
    let bits = uuid::Uuid::new_v4().as_u64_pair().0 >> 2;
    RUN_VERSIONS.start | bits as KvVersion
}

/// Longest kv key, in bytes.
pub const MAX_KV_KEY_BYTES: usize = 512;
/// Most keys one `kv::list` returns.
pub const MAX_KV_LIST: usize = 1_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Effects {
    /// Keys read from the store, with the version seen.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reads: BTreeMap<String, KvVersion>,
    /// Prefixes listed, with the keys and versions seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<ListRead>,
    /// Final value of every written key; `None` deletes it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub writes: BTreeMap<String, Option<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emits: Vec<Emit>,
}

impl Effects {
    /// True when the invocation touched kv or emitted: its result must go
    /// through a commit (reads too: the commit proves they were consistent).
    pub fn needs_commit(&self) -> bool {
        self.touches_kv() || !self.emits.is_empty()
    }

    /// True when the invocation read, listed or wrote kv: its commit takes
    /// locks and checks what it read.
    pub fn touches_kv(&self) -> bool {
        self.can_conflict() || !self.writes.is_empty()
    }

    /// True when the invocation read or listed kv: its commit checks that
    /// what it saw is still current, and conflicts when it is not. (Blind
    /// writes, a record and emits never conflict.)
    pub fn can_conflict(&self) -> bool {
        !(self.reads.is_empty() && self.lists.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRead {
    pub prefix: String,
    /// Sorted by key.
    pub entries: Vec<(String, KvVersion)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emit {
    pub topic: String,
    pub payload: serde_json::Value,
}

/// One stored kv entry, as a read returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvEntry {
    pub value: serde_json::Value,
    pub version: KvVersion,
}

/// Executor → manager: apply a successful invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub record: InvocationRecord,
    pub effects: Effects,
    /// The invocation's place in its trace: its emits' jobs go one hop
    /// further and share its remaining budget.
    #[serde(default)]
    pub chain: Chain,
    /// The version every key it writes gets, drawn by the executor
    /// ([`run_version`]) so that its next run of the script may read
    /// these writes before they are committed (and say so with this
    /// version in its reads); `None`: the store's sequence picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<KvVersion>,
}

impl Commit {
    /// Bytes of its JSON form (what crosses the bus), counted without
    /// building it.
    pub fn encoded_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // Serialising plain data with string map keys into a writer that
        // never fails cannot fail; a count of what was written is kept
        // either way.
        let _ = serde_json::to_writer(&mut count, self);
        count.0
    }
}

/// Executor → manager: a job failed its last attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub record: InvocationRecord,
    pub job: Job,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum CommitReply {
    /// Applied, with the invocation record.
    Committed,
    /// This invocation id was committed before (a redelivery): nothing done.
    AlreadyCommitted,
    /// A key it read has changed since: re-run it.
    Conflict,
    /// Not applied because a dependency (the database) was unavailable;
    /// safe to retry later.
    Failed { message: String },
    /// Not applied, and it never will be: the database refused the data
    /// itself (a value it cannot hold, a constraint). Retrying repeats the
    /// failure, so it is the invocation's failure: a job spends an attempt.
    Refused { message: String },
}

/// Executor → manager: read one key of `script`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvGet {
    pub script: String,
    pub key: String,
}

/// Executor → manager: list `script`'s keys under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvList {
    pub script: String,
    pub prefix: String,
}

/// A manager's answer to a kv read: the value or an error safe to show the
/// script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvAnswer<T> {
    Ok(T),
    Err(String),
}
