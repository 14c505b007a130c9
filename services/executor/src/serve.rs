//! Taking invocations from the bus, running them, replying.
//!
//! Every received invocation gets a reply, whatever happens: a response, a
//! script or limit error, "unavailable" (saturated, unknown version), or
//! "expired" (its caller's deadline passed before it could start, so running
//! it would be wasted work).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use picloud_bus::{Bus, IncomingInvocation};
use picloud_core::{
    InvocationRecord, InvocationReply, InvocationRequest, Outcome, Shutdown, now_unix_ms,
};
use picloud_sandbox::{Host, ModuleCache, ModuleSet, RunInput, RunResult};
use tokio::sync::{Semaphore, oneshot};

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
        let in_flight = Arc::new(Semaphore::new(this.pool.threads() * 4 + 256));
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
                    tokio::spawn(async move {
                        this.handle(inv).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(async move { this.reject_saturated(inv).await });
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
        let total = this.pool.threads() as u32 * 4 + 256;
        let _ = tokio::time::timeout(Duration::from_secs(70), in_flight.acquire_many(total)).await;
    }

    async fn reject_saturated(&self, inv: IncomingInvocation) {
        let reply = InvocationReply {
            id: inv.request.id,
            outcome: saturated(),
        };
        if let Err(e) = self.bus.reply(&inv, &reply).await {
            tracing::warn!(error = %e, "cannot reply");
        }
    }

    async fn handle(&self, inv: IncomingInvocation) {
        let started_at = chrono::Utc::now();
        let started = Instant::now();
        let req = &inv.request;
        let result = self.execute(req).await;
        let reply = InvocationReply {
            id: req.id,
            outcome: result.outcome,
        };
        if let Err(e) = self.bus.reply(&inv, &reply).await {
            tracing::warn!(error = %e, invocation = %req.id, "cannot reply");
        }
        let http_status = match &reply.outcome {
            Outcome::Response(r) => Some(r.status),
            _ => None,
        };
        self.recorder.record(InvocationRecord {
            id: req.id,
            script: req.script.clone(),
            version: req.version,
            trigger: req.event.kind,
            status: reply.outcome.status(),
            http_status,
            started_at,
            duration_us: started.elapsed().as_micros() as u64,
            log: result.log,
            error: result.error,
            executor: self.executor_id.clone(),
            trace_id: req.event.trace_id,
        });
    }

    async fn execute(&self, req: &InvocationRequest) -> RunResult {
        let remaining_ms = req.deadline_unix_ms - now_unix_ms();
        if remaining_ms <= 0 {
            return plain(Outcome::Expired, "deadline passed before the job started");
        }
        let deadline = Instant::now() + Duration::from_millis(remaining_ms as u64);

        let cached = self.cache.get(&req.script, req.version);
        let source = match cached {
            Some(_) => None,
            None => match self.bus.get_version(&req.script, req.version).await {
                Ok(Some(doc)) => Some(doc),
                Ok(None) => {
                    return plain(
                        Outcome::Unavailable {
                            message: "this script version is no longer available".into(),
                        },
                        format!("version {} of {} not on the bus", req.version, req.script),
                    );
                }
                Err(e) => {
                    return plain(
                        Outcome::Unavailable {
                            message: "the script could not be loaded".into(),
                        },
                        format!("cannot fetch version: {e}"),
                    );
                }
            },
        };

        let pinned = match (&cached, &source) {
            (Some(c), _) => c.modules.clone(),
            (None, Some(doc)) => doc.modules.clone(),
            (None, None) => Default::default(),
        };
        let modules = match self.module_set(pinned).await {
            Ok(set) => set,
            Err(detail) => {
                return plain(
                    Outcome::Unavailable {
                        message: "a module of this script could not be loaded".into(),
                    },
                    detail,
                );
            }
        };
        let (tx, rx) = oneshot::channel();
        let job_req = req.clone();
        let host = self.host.clone();
        let cache = self.cache.clone();
        let job = Box::new(move |sandbox: &mut picloud_sandbox::Sandbox| {
            // It may have waited in the queue: a caller that has given up
            // gets no work done for it.
            if Instant::now() >= deadline {
                let _ = tx.send(plain(Outcome::Expired, "deadline passed while queued"));
                return;
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
                        let _ = tx.send(plain(
                            Outcome::ScriptError {
                                message: "the script failed".into(),
                            },
                            format!("stored version does not compile: {e}"),
                        ));
                        return;
                    }
                },
                (None, None) => unreachable!("either cached or fetched"),
            };
            let result = sandbox.run(
                &compiled.ast,
                &compiled.limits,
                deadline,
                RunInput {
                    event: &job_req.event,
                    request: job_req.request.as_ref(),
                    modules,
                    host,
                },
            );
            let _ = tx.send(result);
        });
        if self.pool.try_submit(job).is_err() {
            return plain(saturated(), "worker pool and queue full");
        }
        rx.await.unwrap_or_else(|_| {
            plain(
                Outcome::ScriptError {
                    message: "the script failed".into(),
                },
                "the worker running the script crashed",
            )
        })
    }
}

impl Server {
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
