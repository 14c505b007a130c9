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
use picloud_core::{InvocationRecord, InvocationReply, Outcome, Shutdown, now_unix_ms};
use picloud_sandbox::{Host, ModuleCache, ModuleSet, RunInput, RunResult, Sandbox};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cache::{AstCache, Compiled};
use crate::pool::Pool;
use crate::records::Recorder;

pub struct Server {
    pub bus: Bus,
    pub pool: Pool,
    pub cache: AstCache,
    pub host: Arc<dyn Host>,
    pub modules: ModuleCache,
    pub recorder: Recorder,
    pub executor_id: String,
    pub runtime: Handle,
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
    fn complete_blocking(mut self, result: RunResult) {
        if let Some(inv) = self.inv.take() {
            let server = self.server.clone();
            let reply = server.record(&inv, result, self.started_at, self.started);
            if let Err(e) = server.runtime.block_on(server.bus.reply(&inv, &reply)) {
                tracing::warn!(error = %e, invocation = %reply.id, "cannot reply");
            }
        }
    }

    /// Replies and records, from a tokio task.
    async fn complete(mut self, result: RunResult) {
        if let Some(inv) = self.inv.take() {
            let reply = self
                .server
                .record(&inv, result, self.started_at, self.started);
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
            let reply = server.record(&inv, result, started_at, started);
            if let Err(e) = server.bus.reply(&inv, &reply).await {
                tracing::warn!(error = %e, "cannot reply");
            }
        });
    }
}

impl Server {
    pub async fn run(
        self,
        incoming: impl Stream<Item = IncomingInvocation> + Send + 'static,
        shutdown: Shutdown,
    ) {
        let this = Arc::new(self);
        // In flight at once: what the workers and their queue can hold. The
        // pool itself rejects beyond that; this also bounds the tasks that
        // are still fetching a version.
        let total = this.pool.threads() * 4 + 256;
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
                        this.cache
                            .get(&i.request.script, i.request.version)
                            .is_some_and(|c| {
                                c.modules.iter().all(|(m, v)| this.modules.contains(m, *v))
                            })
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

    /// Builds the reply for `result` and records the invocation.
    fn record(
        &self,
        inv: &IncomingInvocation,
        result: RunResult,
        started_at: DateTime<Utc>,
        started: Instant,
    ) -> InvocationReply {
        let req = &inv.request;
        let http_status = match &result.outcome {
            Outcome::Response(r) => Some(r.status),
            _ => None,
        };
        self.recorder.record(InvocationRecord {
            id: req.id,
            script: req.script.clone(),
            version: req.version,
            trigger: req.event.kind,
            status: result.outcome.status(),
            http_status,
            started_at,
            duration_us: started.elapsed().as_micros() as u64,
            log: result.log,
            error: result.error,
            executor: self.executor_id.clone(),
            trace_id: req.event.trace_id,
            attempt: 1,
            parent_id: None,
            response: None,
            public: false,
        });
        InvocationReply {
            id: req.id,
            outcome: result.outcome,
        }
    }

    /// Resolves the script and its modules, then queues the job (or answers
    /// at once when it cannot run).
    async fn dispatch(&self, pending: Pending) {
        let Some(req) = pending.inv.as_ref().map(|i| &i.request) else {
            return;
        };
        let remaining_ms = req.deadline_unix_ms - now_unix_ms();
        if remaining_ms <= 0 {
            let r = plain(Outcome::Expired, "deadline passed before the job started");
            return pending.complete(r).await;
        }
        let deadline = Instant::now() + Duration::from_millis(remaining_ms as u64);

        let cached = self.cache.get(&req.script, req.version);
        let source = match cached {
            Some(_) => None,
            None => match self.bus.get_version(&req.script, req.version).await {
                Ok(Some(doc)) => Some(doc),
                Ok(None) => {
                    let detail =
                        format!("version {} of {} not on the bus", req.version, req.script);
                    let r = plain(
                        Outcome::Unavailable {
                            message: "this script version is no longer available".into(),
                        },
                        detail,
                    );
                    return pending.complete(r).await;
                }
                Err(e) => {
                    let r = plain(
                        Outcome::Unavailable {
                            message: "the script could not be loaded".into(),
                        },
                        format!("cannot fetch version: {e}"),
                    );
                    return pending.complete(r).await;
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
            match self.module_set(pinned).await {
                Ok(set) => set,
                Err(detail) => {
                    let r = plain(
                        Outcome::Unavailable {
                            message: "a module of this script could not be loaded".into(),
                        },
                        detail,
                    );
                    return pending.complete(r).await;
                }
            }
        };

        let host = self.host.clone();
        let cache = self.cache.clone();
        let job = Box::new(move |sandbox: &mut Sandbox| {
            // It may have waited in the queue: a caller that has given up
            // gets no work done for it.
            if Instant::now() >= deadline {
                return pending
                    .complete_blocking(plain(Outcome::Expired, "deadline passed while queued"));
            }
            let compiled = match (cached, source) {
                (Some(c), _) => c,
                (None, Some(doc)) => match sandbox.compile(&doc.source, &doc.limits) {
                    Ok(ast) => {
                        let c = Arc::new(Compiled {
                            ast,
                            limits: doc.limits,
                            modules: doc.modules,
                        });
                        cache.insert(&doc.script, doc.version, c.clone());
                        c
                    }
                    Err(e) => {
                        let r = plain(
                            Outcome::ScriptError {
                                message: "the script failed".into(),
                            },
                            format!("stored version does not compile: {e}"),
                        );
                        return pending.complete_blocking(r);
                    }
                },
                (None, None) => unreachable!("either cached or fetched"),
            };
            let result = match pending.inv.as_ref() {
                Some(inv) => sandbox.run(
                    &compiled.ast,
                    &compiled.limits,
                    deadline,
                    RunInput {
                        event: &inv.request.event,
                        request: inv.request.request.as_ref(),
                        modules,
                        host,
                    },
                ),
                None => return,
            };
            pending.complete_blocking(result);
        });
        // On a full queue the job (and its `Pending`) is dropped, and the
        // guard answers "saturated".
        let _ = self.pool.try_submit(job);
    }

    /// The pinned modules, with the sources of those not yet evaluated here.
    async fn module_set(
        &self,
        pinned: std::collections::BTreeMap<String, u32>,
    ) -> Result<ModuleSet, String> {
        let mut sources = std::collections::HashMap::new();
        for (name, version) in &pinned {
            if self.modules.contains(name, *version) {
                continue;
            }
            match self.bus.get_module(name, *version).await {
                Ok(Some(doc)) => {
                    sources.insert(name.clone(), doc.source);
                }
                Ok(None) => {
                    return Err(format!("module {name} version {version} is not on the bus"));
                }
                Err(e) => return Err(format!("cannot fetch module {name}: {e}")),
            }
        }
        Ok(ModuleSet { pinned, sources })
    }
}

fn saturated() -> Outcome {
    Outcome::Unavailable {
        message: "the executor is saturated; retry later".into(),
    }
}

fn plain(outcome: Outcome, error: impl Into<String>) -> RunResult {
    RunResult {
        outcome,
        log: String::new(),
        error: Some(error.into()),
    }
}
