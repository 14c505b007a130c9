//! Taking invocations from the bus, running them, replying.
//!
//! Every received invocation gets a reply, whatever happens: a response, a
//! script or limit error, "unavailable" (saturated, unknown version), or
//! "expired" (its caller's deadline passed before it could start, so running
//! it would be wasted work).
//!
//! The hot path hands off once: the subscriber task resolves the script
//! (cache, or the bus on a miss) and queues a job; the worker thread runs it
//! and publishes the reply itself. A [`Pending`] travels with the job and
//! guarantees the reply: if the job is dropped unrun (queue full) or its
//! worker panics, the guard answers for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use picloud_bus::{Bus, IncomingInvocation};
use picloud_core::{InvocationReply, Outcome, Shutdown, now_unix_ms};
use picloud_sandbox::{Host, ModuleCache, RunResult, Sandbox};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::AstCache;
use crate::fair::{self, ScriptSlots, Turn};
use crate::live::LiveLog;
use crate::pool::Pool;
use crate::records::Recorder;
use crate::run::{self, RecordBase, Settled, plain};

pub struct Server {
    pub bus: Bus,
    pub pool: Pool,
    pub cache: AstCache,
    pub host: Arc<dyn Host>,
    pub modules: ModuleCache,
    pub recorder: Recorder,
    /// Every invocation's log lines and end, for followers.
    pub live: LiveLog,
    pub executor_id: String,
    pub runtime: Handle,
    /// Per-script concurrency caps, shared by sync calls and async jobs.
    pub slots: Arc<ScriptSlots>,
    /// Runs' writes until their commits are settled (the host reads it).
    pub overlay: Arc<crate::overlay::Overlay>,
}

/// An accepted invocation that still owes its caller a reply.
struct Pending {
    server: Arc<Server>,
    inv: Option<IncomingInvocation>,
    started_at: DateTime<Utc>,
    started: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Pending {
    /// Replies and records, from a worker thread.
    fn complete_blocking(self, result: RunResult) {
        self.settle_blocking(Settled::Plain(result));
    }

    /// Replies and records a run that may have committed, from a worker thread.
    fn settle_blocking(mut self, settled: Settled) {
        if let Some(inv) = self.inv.take() {
            let server = self.server.clone();
            let reply = server.record(&inv, settled, self.started_at, self.started);
            if let Err(e) = server.runtime.block_on(server.bus.reply(&inv, &reply)) {
                tracing::warn!(error = %e, invocation = %reply.id, "cannot reply");
            }
        }
    }

    /// Replies and records, from a tokio task.
    async fn complete(mut self, result: RunResult) {
        if let Some(inv) = self.inv.take() {
            let reply =
                self.server
                    .record(&inv, Settled::Plain(result), self.started_at, self.started);
            if let Err(e) = self.server.bus.reply(&inv, &reply).await {
                tracing::warn!(error = %e, invocation = %reply.id, "cannot reply");
            }
        }
    }
}

impl Drop for Pending {
    /// The job never completed: it was dropped unrun (the queue was full)
    /// or its worker panicked. Answer for it, without blocking.
    fn drop(&mut self) {
        let Some(inv) = self.inv.take() else { return };
        let server = self.server.clone();
        let (started_at, started) = (self.started_at, self.started);
        self.server.runtime.spawn(async move {
            let result = plain(
                saturated(),
                "the job could not run (queue full or worker crashed)",
            );
            let reply = server.record(&inv, Settled::Plain(result), started_at, started);
            if let Err(e) = server.bus.reply(&inv, &reply).await {
                tracing::warn!(error = %e, "cannot reply");
            }
        });
    }
}

/// Invocations in flight at once on an executor with `threads` workers:
/// what the workers and their queue can hold, plus room for calls that wait
/// in their script's queue ([`crate::fair`]). The pool itself rejects beyond
/// its queue; this also bounds the tasks that are still fetching a version.
pub fn in_flight_limit(threads: usize) -> usize {
    threads * 4 + 256
}

impl Server {
    /// Records a run that no commit stored, and sends it to the live log.
    pub fn record_run(&self, base: &RecordBase, result: &RunResult) {
        let record = base.record(result);
        self.live.invocation(&record, &result.lines);
        self.recorder.record(record);
    }

    pub async fn run(
        this: Arc<Self>,
        incoming: impl Stream<Item = IncomingInvocation> + Send + 'static,
        shutdown: Shutdown,
    ) {
        let total = in_flight_limit(this.pool.threads());
        let in_flight = Arc::new(Semaphore::new(total));
        let mut incoming = Box::pin(incoming);
        loop {
            let inv = tokio::select! {
                _ = shutdown.cancelled() => break,
                inv = incoming.next() => inv,
            };
            let Some(inv) = inv else { break };
            let this = this.clone();
            match in_flight.clone().try_acquire_owned() {
                Ok(permit) => {
                    let pending = Pending {
                        server: this.clone(),
                        inv: Some(inv),
                        started_at: Utc::now(),
                        started: Instant::now(),
                        _permit: permit,
                    };
                    // Cached scripts are queued right here, with no extra
                    // task; a miss fetches from the bus in a task of its own.
                    let ready = pending.inv.as_ref().is_some_and(|i| {
                        run::is_ready(
                            &this.cache,
                            &this.modules,
                            &i.request.script,
                            i.request.version,
                        )
                    });
                    if ready {
                        this.dispatch(pending).await;
                    } else {
                        tokio::spawn(async move { this.dispatch(pending).await });
                    }
                }
                Err(_) => {
                    tokio::spawn(async move {
                        let reply = InvocationReply {
                            id: inv.request.id,
                            outcome: saturated(),
                        };
                        if let Err(e) = this.bus.reply(&inv, &reply).await {
                            tracing::warn!(error = %e, "cannot reply");
                        }
                    });
                }
            }
        }
        // Unsubscribe first: new invocations go to other executors (or get
        // an instant "no executor") instead of waiting in our buffer.
        drop(incoming);
        // The flush's round trip returns once the server has processed the
        // UNSUB: from then on no request is routed here.
        if let Err(e) = this.bus.flush().await {
            tracing::warn!(error = %e, "cannot flush the unsubscribe");
        }
        // Let running invocations finish and reply (bounded by their own
        // deadlines), so a clean shutdown drops nothing it accepted.
        let _ = tokio::time::timeout(
            Duration::from_secs(70),
            in_flight.acquire_many(total as u32),
        )
        .await;
    }

    /// What the record of `inv` starts with.
    fn base(
        &self,
        inv: &IncomingInvocation,
        started_at: DateTime<Utc>,
        started: Instant,
    ) -> RecordBase {
        let req = &inv.request;
        RecordBase {
            id: req.id,
            script: req.script.clone(),
            version: req.version,
            trigger: req.event.kind,
            trace_id: req.event.trace_id,
            attempt: 1,
            parent_id: None,
            public: false,
            executor: self.executor_id.clone(),
            started_at,
            started,
        }
    }

    /// Records the invocation (unless a commit stored it) and builds the reply.
    fn record(
        &self,
        inv: &IncomingInvocation,
        settled: Settled,
        started_at: DateTime<Utc>,
        started: Instant,
    ) -> InvocationReply {
        let base = self.base(inv, started_at, started);
        let outcome = match settled {
            Settled::Plain(RunResult {
                outcome,
                log,
                lines,
                error,
                ..
            }) => {
                run::observe(&base, &outcome);
                let record = base.into_record(&outcome, log, error);
                self.live.invocation(&record, &lines);
                self.recorder.record(record);
                outcome
            }
            Settled::Committed(result) => {
                run::observe(&base, &result.outcome);
                self.live.invocation(&base.record(&result), &result.lines);
                result.outcome
            }
            Settled::NotCommitted(result, why) => {
                // Nothing of it was applied: its caller must not see success.
                let mut failed = plain(
                    Outcome::Unavailable {
                        message: match result.outcome {
                            Outcome::Unavailable { message } => message,
                            _ => "the invocation's changes could not be saved; retry".into(),
                        },
                    },
                    format!("not committed: {why}"),
                );
                failed.log = result.log;
                failed.lines = result.lines;
                run::observe(&base, &failed.outcome);
                self.record_run(&base, &failed);
                failed.outcome
            }
        };
        InvocationReply {
            id: inv.request.id,
            outcome,
        }
    }

    /// Resolves the script and its modules, then queues the job (or answers
    /// at once when it cannot run).
    async fn dispatch(self: &Arc<Self>, pending: Pending) {
        let Some(req) = pending.inv.as_ref().map(|i| &i.request) else {
            return;
        };
        let remaining_ms = req.deadline_unix_ms - now_unix_ms();
        if remaining_ms <= 0 {
            let r = plain(Outcome::Expired, "deadline passed before the job started");
            return pending.complete(r).await;
        }
        let deadline = Instant::now() + Duration::from_millis(remaining_ms as u64);
        let prepared = match run::prepare(
            &self.bus,
            &self.cache,
            &self.modules,
            &req.script,
            req.version,
        )
        .await
        {
            Ok(p) => p,
            Err(r) => return pending.complete(*r).await,
        };
        let script = req.script.clone();
        let server = self.clone();
        let run: fair::Waiter = Box::new(move |turn: Turn<'_>| match turn {
            Turn::Run(slot, sandbox) => server.run_sync(sandbox, slot, pending, prepared, deadline),
            Turn::Refused(why) => {
                let r = match why {
                    fair::NoSlot::QueueFull => plain(fair::busy(), "the script's queue is full"),
                    fair::NoSlot::Expired => plain(
                        Outcome::Expired,
                        "deadline passed waiting for the script's turn",
                    ),
                };
                server.runtime.spawn(pending.complete(r));
            }
        });
        // Past its script's cap a call waits in that script's queue, holding
        // no worker another script needs, until a run of the script ends and
        // hands it the slot; when that queue is full it is refused at once
        // (429 at the gateway).
        if let Some((slot, run)) = self.slots.admit(&script, Some(deadline), run) {
            // On a full pool the job (and its `Pending`) is dropped, and the
            // guard answers "saturated".
            let _ = self.pool.try_submit(slot.start(run));
        }
    }

    /// Runs a sync call on this worker, holding its script's `slot` until
    /// it has run, and replies.
    fn run_sync(
        &self,
        sandbox: &mut Sandbox,
        slot: fair::ScriptSlot,
        pending: Pending,
        prepared: run::Prepared,
        deadline: Instant,
    ) {
        // Held until the run is over.
        let _slot = slot;
        // It may have waited in the queue: a caller that has given up gets
        // no work done for it.
        if Instant::now() >= deadline {
            return pending
                .complete_blocking(plain(Outcome::Expired, "deadline passed while queued"));
        }
        let started = Instant::now();
        let (compiled, modules) = match prepared.compile(sandbox, &self.cache) {
            Ok(c) => c,
            Err(r) => return pending.complete_blocking(*r),
        };
        let Some(inv) = pending.inv.as_ref() else {
            return;
        };
        let base = self.base(inv, pending.started_at, pending.started);
        let settled = run::run_committed(
            sandbox,
            &compiled,
            modules,
            &run::Invocation {
                script: &inv.request.script,
                event: &inv.request.event,
                request: inv.request.request.as_ref(),
                deadline,
                started,
                host: self.host.clone(),
                chain: Default::default(),
                overlay: &self.overlay,
            },
            &base,
            &self.bus,
            &self.runtime,
        );
        pending.settle_blocking(settled);
    }
}

fn saturated() -> Outcome {
    Outcome::Unavailable {
        message: "the executor is saturated; retry later".into(),
    }
}
