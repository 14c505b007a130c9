//! What the sync and async paths share: getting a script version ready to
//! run, recording an invocation, and running a script whose effects must be
//! committed (re-running it when a key it read changed meanwhile).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use picloud_bus::{Bus, CallError, VersionDoc};
use picloud_core::{
    Chain, Commit, CommitReply, EventInput, HttpRequestInput, InvocationRecord, Outcome, Trigger,
};
use picloud_sandbox::{Host, ModuleCache, ModuleSet, RunInput, RunResult, Sandbox};
use tokio::runtime::Handle;
use uuid::Uuid;

use crate::cache::{AstCache, Compiled};
use crate::overlay::{InFlightReads, Overlay, Unsettled};

/// Re-runs after a conflicting commit before the invocation gives up (the
/// async path then retries the job later; sync answers 503: contention
/// passes).
pub const MAX_RERUNS: usize = 16;
/// The longest a commit may take.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A script version on its way to a worker: its cached AST, or the source
/// to compile there, and its modules.
pub struct Prepared {
    cached: Option<Arc<Compiled>>,
    source: Option<VersionDoc>,
    pub modules: ModuleSet,
}

/// Fetches what `script` version `version` needs that this executor lacks.
/// `Err` is the result to report (the version or a module is unavailable).
pub async fn prepare(
    bus: &Bus,
    cache: &AstCache,
    module_cache: &ModuleCache,
    script: &str,
    version: u32,
) -> Result<Prepared, Box<RunResult>> {
    let cached = cache.get(script, version);
    let source = match cached {
        Some(_) => None,
        None => match bus.get_version(script, version).await {
            Ok(Some(doc)) => Some(doc),
            Ok(None) => {
                return Err(Box::new(plain(
                    Outcome::Unavailable {
                        message: "this script version is no longer available".into(),
                    },
                    format!("version {version} of {script} not on the bus"),
                )));
            }
            Err(e) => {
                return Err(Box::new(plain(
                    Outcome::Unavailable {
                        message: "the script could not be loaded".into(),
                    },
                    format!("cannot fetch version: {e}"),
                )));
            }
        },
    };
    let pinned = match (&cached, &source) {
        (Some(c), _) => c.modules.clone(),
        (None, Some(doc)) => doc.modules.clone(),
        (None, None) => Default::default(),
    };
    let modules = if pinned.is_empty() {
        ModuleSet::default()
    } else {
        module_set(bus, module_cache, pinned)
            .await
            .map_err(|detail| {
                plain(
                    Outcome::Unavailable {
                        message: "a module of this script could not be loaded".into(),
                    },
                    detail,
                )
            })?
    };
    Ok(Prepared {
        cached,
        source,
        modules,
    })
}

/// True when the version and its modules are all cached here (no fetch).
pub fn is_ready(cache: &AstCache, modules: &ModuleCache, script: &str, version: u32) -> bool {
    cache
        .get(script, version)
        .is_some_and(|c| c.modules.iter().all(|(m, v)| modules.contains(m, *v)))
}

impl Prepared {
    /// On the worker: the compiled script (compiling and caching a fetched
    /// source).
    pub fn compile(
        self,
        sandbox: &mut Sandbox,
        cache: &AstCache,
    ) -> Result<(Arc<Compiled>, ModuleSet), Box<RunResult>> {
        let compiled = match (self.cached, self.source) {
            (Some(c), _) => c,
            (None, Some(doc)) => match sandbox.compile(&doc.source, &doc.limits) {
                Ok(ast) => {
                    let c = Arc::new(Compiled {
                        ast,
                        inputs: picloud_sandbox::Inputs::of(&doc.source, doc.modules.len()),
                        limits: doc.limits,
                        modules: doc.modules,
                    });
                    cache.insert(&doc.script, doc.version, c.clone());
                    c
                }
                Err(e) => {
                    return Err(Box::new(plain(
                        Outcome::ScriptError {
                            message: "the script failed".into(),
                        },
                        format!("stored version does not compile: {e}"),
                    )));
                }
            },
            (None, None) => unreachable!("prepare yields a cached AST or a source"),
        };
        Ok((compiled, self.modules))
    }
}

async fn module_set(
    bus: &Bus,
    cache: &ModuleCache,
    pinned: BTreeMap<String, u32>,
) -> Result<ModuleSet, String> {
    let mut sources = std::collections::HashMap::new();
    for (name, version) in &pinned {
        if cache.contains(name, *version) {
            continue;
        }
        match bus.get_module(name, *version).await {
            Ok(Some(doc)) => {
                sources.insert(name.clone(), doc.source);
            }
            Ok(None) => return Err(format!("module {name} version {version} is not on the bus")),
            Err(e) => return Err(format!("cannot fetch module {name}: {e}")),
        }
    }
    Ok(ModuleSet { pinned, sources })
}

/// The parts of an invocation record known before it runs.
#[derive(Debug, Clone)]
pub struct RecordBase {
    pub id: Uuid,
    pub script: String,
    pub version: u32,
    pub trigger: Trigger,
    pub trace_id: Uuid,
    pub attempt: u32,
    pub parent_id: Option<Uuid>,
    /// Async HTTP: the response is kept and the status URL may show it.
    pub public: bool,
    pub executor: String,
    pub started_at: DateTime<Utc>,
    pub started: Instant,
}

impl RecordBase {
    /// The record of `result` (copying; see [`into_record`](Self::into_record)).
    pub fn record(&self, result: &RunResult) -> InvocationRecord {
        self.clone()
            .into_record(&result.outcome, result.log.clone(), result.error.clone())
    }

    /// The record of a run that ended with `outcome`, taking the parts it
    /// owns (the hot path allocates nothing more).
    pub fn into_record(
        self,
        outcome: &Outcome,
        log: String,
        error: Option<String>,
    ) -> InvocationRecord {
        let response = match outcome {
            Outcome::Response(r) => Some(r),
            _ => None,
        };
        InvocationRecord {
            id: self.id,
            script: self.script,
            version: self.version,
            trigger: self.trigger,
            status: outcome.status(),
            // What the caller got: the script's status, or for a sync
            // HTTP call that failed, the gateway's error status.
            http_status: match (response, self.trigger, self.public) {
                (Some(r), _, _) => Some(r.status),
                (None, Trigger::Http, false) => Some(outcome.caller_status()),
                (None, _, _) => None,
            },
            started_at: self.started_at,
            duration_us: self.started.elapsed().as_micros() as u64,
            log,
            error,
            executor: self.executor,
            trace_id: self.trace_id,
            attempt: self.attempt,
            parent_id: self.parent_id,
            response: if self.public { response.cloned() } else { None },
            public: self.public,
        }
    }
}

/// Counts an invocation that ran to an end (once per invocation or job
/// attempt) in the process's metrics.
pub fn observe(base: &RecordBase, outcome: &Outcome) {
    let limit = match outcome {
        Outcome::LimitExceeded { message } => Some(picloud_metrics::limit_label(message)),
        _ => None,
    };
    picloud_metrics::global().invocation(
        &base.script,
        base.trigger.as_str(),
        outcome.status().as_str(),
        limit,
        base.started.elapsed(),
    );
}

/// How a run ended, commit included.
pub enum Settled {
    /// Nothing to commit (no kv, no emits), or the script failed.
    Plain(RunResult),
    /// Its effects and record are committed (now, or by an earlier delivery).
    Committed(RunResult),
    /// It succeeded but could not be committed (the reason): nothing of it
    /// was applied.
    NotCommitted(RunResult, String),
}

/// One invocation's inputs, for [`run_committed`].
pub struct Invocation<'a> {
    pub script: &'a str,
    pub event: &'a EventInput,
    pub request: Option<&'a HttpRequestInput>,
    pub deadline: Instant,
    /// When its wall time began: before the worker compiled the version, so
    /// a first compile counts against `wall_time_ms`.
    pub started: Instant,
    pub host: Arc<dyn Host>,
    /// Its place in its trace, handed on to the jobs its emits create.
    pub chain: Chain,
    /// Where its writes wait for their commit, readable by the script's
    /// next runs here.
    pub overlay: &'a Arc<Overlay>,
}

/// Runs the script on this worker thread; when it succeeded with effects,
/// commits them through a manager, re-running it (fresh reads) whenever the
/// commit reports a conflict, at most [`MAX_RERUNS`] times. (The async path
/// runs the same steps, [`run_once`] and [`judge_commit`], but sends the
/// commit off the worker: see `crate::jobs`.)
pub fn run_committed(
    sandbox: &mut Sandbox,
    compiled: &Compiled,
    modules: ModuleSet,
    inv: &Invocation<'_>,
    base: &RecordBase,
    bus: &Bus,
    runtime: &Handle,
) -> Settled {
    let mut started = inv.started;
    for _ in 0..=MAX_RERUNS {
        let ran = run_once(sandbox, compiled, modules.clone(), inv, started, base);
        // A re-run (after a conflict) gets a wall time of its own.
        started = Instant::now();
        let (result, commit, unsettled) = match ran {
            Ran::Done(settled) => return settled,
            Ran::Unsure(result, read) => {
                if runtime.block_on(read.all_committed(COMMIT_TIMEOUT)) {
                    return Settled::Plain(result);
                }
                continue;
            }
            Ran::Commit(result, commit, unsettled, _) => (result, commit, unsettled),
        };
        let reply = runtime.block_on(send_commit(bus, &commit));
        unsettled.settle(applied(&reply));
        if let Some(settled) = judge_commit(result, reply, bus) {
            return settled;
        }
    }
    too_much_contention()
}

/// What one run of an invocation left to do.
pub enum Ran {
    /// Nothing to commit (no effects that need one, the script failed, or
    /// its commit is over `max_commit_bytes`).
    Done(Settled),
    /// The run succeeded; this commit must be applied before it counts.
    /// Its writes wait in the overlay until it is settled; it read the
    /// writes in flight of the `InFlightReads`.
    Commit(RunResult, Box<Commit>, Unsettled, InFlightReads),
    /// The run failed after reading writes still in flight: its failure
    /// stands once they all committed; if one did not, it may come from a
    /// value that never existed, and the run goes again.
    Unsure(RunResult, InFlightReads),
}

/// Runs the script once on this worker thread (its wall time from
/// `started`) and says whether its effects must be committed.
pub fn run_once(
    sandbox: &mut Sandbox,
    compiled: &Compiled,
    modules: ModuleSet,
    inv: &Invocation<'_>,
    started: Instant,
    base: &RecordBase,
) -> Ran {
    InFlightReads::begin();
    let result = sandbox.run(
        &compiled.ast,
        &compiled.limits,
        inv.deadline,
        RunInput {
            script: inv.script,
            event: inv.event,
            request: inv.request,
            inputs: compiled.inputs,
            modules,
            host: inv.host.clone(),
            started,
        },
    );
    // A run without kv or emits commits nothing: a job's record then goes
    // with the record batches, and the job is acknowledged once that is
    // stored (see `crate::jobs`).
    let read = InFlightReads::take();
    let must_commit =
        matches!(result.outcome, Outcome::Response(_)) && result.effects.needs_commit();
    if !must_commit {
        return finished(result, read);
    }
    let version = (!result.effects.writes.is_empty()).then(picloud_core::effects::run_version);
    let commit = Commit {
        record: base.record(&result),
        effects: result.effects.clone(),
        chain: inv.chain,
        version,
    };
    let size = commit.encoded_len();
    if size > compiled.limits.max_commit_bytes {
        let failed = over_commit_limit(result, size, compiled.limits.max_commit_bytes);
        return finished(failed, read);
    }
    // Before the script's slot goes to its next run, which may read them.
    let unsettled = inv.overlay.register(
        inv.script,
        &commit.effects.reads,
        &commit.effects.writes,
        version.unwrap_or_default(),
    );
    Ran::Commit(result, Box::new(commit), unsettled, read)
}

/// A run with nothing to commit: done, unless it failed after reading
/// writes still in flight.
fn finished(result: RunResult, read: InFlightReads) -> Ran {
    let failed = !matches!(result.outcome, Outcome::Response(_));
    if failed && !read.is_empty() {
        return Ran::Unsure(result, read);
    }
    Ran::Done(Settled::Plain(result))
}

/// Whether `reply` says the commit applied its own writes (an invocation
/// committed by an earlier delivery did not: its writes were another run's).
pub fn applied(reply: &Result<CommitReply, CallError>) -> bool {
    matches!(reply, Ok(CommitReply::Committed))
}

/// Sends `commit` to a manager and waits for its answer.
pub async fn send_commit(bus: &Bus, commit: &Commit) -> Result<CommitReply, CallError> {
    bus.request::<picloud_bus::wire::CommitCall>(commit, COMMIT_TIMEOUT)
        .await
}

/// What a commit's `reply` makes of the run that produced `result`;
/// `None` on a conflict (a key it read changed meanwhile): run it again.
pub fn judge_commit(
    result: RunResult,
    reply: Result<CommitReply, CallError>,
    bus: &Bus,
) -> Option<Settled> {
    Some(match reply {
        Ok(CommitReply::Committed | CommitReply::AlreadyCommitted) => Settled::Committed(result),
        Ok(CommitReply::Conflict) => {
            picloud_metrics::global().kv_commit_conflict();
            return None;
        }
        Ok(CommitReply::Failed { message }) => Settled::NotCommitted(result, message),
        // Permanent: the same commit would be refused again, so this is the
        // invocation's failure (a job spends an attempt), never a retry.
        Ok(CommitReply::Refused { message }) => Settled::Plain(failed_commit(
            result,
            Outcome::ScriptError {
                message: "the invocation's changes were refused by the store".into(),
            },
            format!("commit refused: {message}"),
        )),
        Err(CallError::TooLarge(n)) => {
            // `max_commit_bytes` is set above what the bus carries (the run
            // passed `max_commit_bytes` itself in `run_once`).
            let limit = bus.max_payload();
            Settled::Plain(over_commit_limit(result, n, limit))
        }
        Err(e) => Settled::NotCommitted(result, e.to_string()),
    })
}

/// The end of an invocation whose commit conflicted on every run.
pub fn too_much_contention() -> Settled {
    Settled::NotCommitted(
        plain(
            Outcome::Unavailable {
                message: "too many concurrent updates to the same keys; retry".into(),
            },
            format!("kv commit conflicted {} times", MAX_RERUNS + 1),
        ),
        "kv contention".into(),
    )
}

/// A successful run whose commit can never succeed, turned into a failure
/// with `outcome` (public) and `error` (the record's detail). Its log is
/// kept; its effects are dropped (nothing of it applies).
fn failed_commit(result: RunResult, outcome: Outcome, error: String) -> RunResult {
    RunResult {
        outcome,
        log: result.log,
        lines: result.lines,
        error: Some(error),
        effects: Default::default(),
    }
}

/// The failure of a run whose commit (`size` bytes) is over `limit`.
fn over_commit_limit(result: RunResult, size: usize, limit: usize) -> RunResult {
    let message = format!(
        "commit size limit exceeded: the invocation's changes take {size} bytes, \
         more than max_commit_bytes ({limit})"
    );
    failed_commit(
        result,
        Outcome::LimitExceeded {
            message: message.clone(),
        },
        message,
    )
}

pub fn plain(outcome: Outcome, error: impl Into<String>) -> RunResult {
    RunResult {
        outcome,
        log: String::new(),
        lines: Vec::new(),
        error: Some(error.into()),
        effects: Default::default(),
    }
}
