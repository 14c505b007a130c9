//! Async jobs: pulled from the shared durable consumer, run on the worker
//! pool, committed, then settled.
//!
//! Every job ends in exactly one of:
//! - **ack**: it succeeded and its record (and effects) are committed;
//! - **retry**: it failed an attempt below its `max_attempts`, or could not
//!   be committed (manager or database down, kv contention), or failed
//!   after a kv read the store could not answer (see [`JobHost`]): NAK
//!   with a delay, never an immediate redelivery;
//! - **terminate**: it failed its last attempt and the dead letter is
//!   stored (if storing fails, it is retried instead: nothing is dropped).
//!
//! While a job runs, progress acks keep JetStream from handing it to another
//! executor; if this executor dies, the job comes back after the ack wait and
//! its effects still apply once (the commit is keyed by the invocation id).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use picloud_bus::IncomingJob;
use picloud_core::{
    CommitReply, Config, DeadLetter, KvEntry, KvVersion, Limits, Outcome, Shutdown,
};
use picloud_sandbox::{Host, HostError, HttpCall, HttpReply, RunResult, Sandbox};
use tokio::sync::{Semaphore, oneshot};

use crate::run::{self, RecordBase, Settled, plain};
use crate::serve::Server;

const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Retry timing, from the configuration.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub ack_wait: Duration,
    pub config: Config,
}

/// Pulls and runs jobs until `shutdown`; then lets running jobs finish.
pub async fn run(server: Arc<Server>, settings: JobSettings, shutdown: Shutdown) {
    let slots = server.pool.threads() * 2;
    let in_flight = Arc::new(Semaphore::new(slots));
    let settings = Arc::new(settings);
    let mut backoff = Duration::from_millis(200);
    'outer: loop {
        let jobs = match server.bus.jobs(settings.ack_wait, slots).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot open the job consumer");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let mut jobs = Box::pin(jobs);
        loop {
            // Take a job only with a free slot: a pulled job waits here, and
            // its ack wait runs meanwhile.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                p = in_flight.clone().acquire_owned() => p.expect("never closed"),
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                n = jobs.next() => n,
            };
            match next {
                Some(Ok(job)) => {
                    let (server, settings) = (server.clone(), settings.clone());
                    tokio::spawn(async move {
                        handle(server, settings, job).await;
                        drop(permit);
                    });
                }
                // Missed heartbeats and the like: the stream recovers.
                Some(Err(e)) => tracing::debug!(error = %e, "job consumer hiccup"),
                None => {
                    tracing::warn!("job consumer ended; reopening");
                    continue 'outer;
                }
            }
        }
    }
    // Unstarted jobs we hold are not acked: they return after the ack wait.
    let _ = tokio::time::timeout(
        Duration::from_secs(70),
        in_flight.acquire_many(slots as u32),
    )
    .await;
}

async fn handle(server: Arc<Server>, settings: Arc<JobSettings>, incoming: IncomingJob) {
    let job = &incoming.job;
    let started_at = Utc::now();
    let started = Instant::now();
    let mut base = RecordBase {
        id: job.id,
        script: job.script.clone(),
        version: 0,
        trigger: job.event.kind,
        trace_id: job.event.trace_id,
        attempt: incoming.attempt,
        parent_id: job.parent_id,
        public: job.public,
        executor: server.executor_id.clone(),
        started_at,
        started,
    };
    let settled = match server.bus.get_route(&job.script).await {
        Ok(Some(route)) => {
            base.version = route.version;
            run_on_pool(&server, &settings, &incoming, base.clone()).await
        }
        Ok(None) => Settled::Plain(plain(
            Outcome::ScriptError {
                message: "the script does not exist".into(),
            },
            format!("script {} is not deployed", job.script),
        )),
        Err(e) => Settled::NotCommitted(
            plain(
                Outcome::Unavailable {
                    message: "the script could not be loaded".into(),
                },
                format!("cannot read the route: {e}"),
            ),
            e.to_string(),
        ),
    };
    settle(&server, &settings, &incoming, &base, settled).await;
}

/// Runs the job on a worker (waiting for room rather than refusing), with
/// progress acks until it is done.
async fn run_on_pool(
    server: &Arc<Server>,
    settings: &JobSettings,
    incoming: &IncomingJob,
    base: RecordBase,
) -> Settled {
    let job = &incoming.job;
    let prepared = match run::prepare(
        &server.bus,
        &server.cache,
        &server.modules,
        &job.script,
        base.version,
    )
    .await
    {
        Ok(p) => p,
        Err(r) => return Settled::Plain(*r),
    };
    let (tx, mut rx) = oneshot::channel::<Settled>();
    let mut event = job.event.clone();
    event.attempt = incoming.attempt;
    let request = job.request.clone();
    let script = job.script.clone();
    let worker_server = server.clone();
    let host = Arc::new(JobHost {
        inner: server.host.clone(),
        kv_failed: AtomicBool::new(false),
    });
    let mut work: crate::pool::Job = Box::new(move |sandbox: &mut Sandbox| {
        let (compiled, modules) = match prepared.compile(sandbox, &worker_server.cache) {
            Ok(c) => c,
            Err(r) => {
                let _ = tx.send(Settled::Plain(*r));
                return;
            }
        };
        // An async job has no waiting caller: its own wall-time limit is
        // its only deadline.
        let deadline = Instant::now()
            + Duration::from_millis(compiled.limits.wall_time_ms)
            + Duration::from_secs(1);
        let settled = run::run_committed(
            sandbox,
            &compiled,
            modules,
            &run::Invocation {
                script: &script,
                event: &event,
                request: request.as_ref(),
                deadline,
                host: host.clone(),
            },
            &base,
            &worker_server.bus,
            &worker_server.runtime,
        );
        let settled = match settled {
            Settled::Plain(r)
                if !matches!(r.outcome, Outcome::Response(_))
                    && host.kv_failed.load(Ordering::Relaxed) =>
            {
                Settled::NotCommitted(r, "kv was unavailable".into())
            }
            other => other,
        };
        let _ = tx.send(settled);
    });
    let progress_every = settings.ack_wait / 3;
    let mut tick = tokio::time::interval(progress_every);
    tick.tick().await;
    let mut wait = Duration::from_millis(2);
    loop {
        match server.pool.submit_or_return(work) {
            Ok(()) => break,
            Err(back) => {
                work = back;
                tokio::select! {
                    _ = tick.tick() => { let _ = incoming.progress().await; }
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_millis(100));
            }
        }
    }
    loop {
        tokio::select! {
            done = &mut rx => {
                return done.unwrap_or_else(|_| Settled::Plain(plain(
                    Outcome::ScriptError { message: "the script failed".into() },
                    "the worker running the job crashed",
                )));
            }
            _ = tick.tick() => {
                if let Err(e) = incoming.progress().await {
                    tracing::debug!(error = %e, "cannot send job progress");
                }
            }
        }
    }
}

async fn settle(
    server: &Server,
    settings: &JobSettings,
    incoming: &IncomingJob,
    base: &RecordBase,
    settled: Settled,
) {
    let job = &incoming.job;
    let attempt = incoming.attempt;
    let outcome = match settled {
        Settled::Committed(_) => {
            log_settle(incoming.ack().await, "ack");
            return;
        }
        Settled::NotCommitted(result, why) => {
            // Not the script's fault: try again soon, whatever the attempt.
            tracing::info!(job = %job.id, reason = %why, "job not committed; retrying");
            let mut failed = result;
            failed.error = Some(format!("not committed: {why}"));
            if !matches!(failed.outcome, Outcome::Unavailable { .. }) {
                failed.outcome = Outcome::Unavailable {
                    message: "the invocation's changes could not be saved".into(),
                };
            }
            server.recorder.record(base.record(&failed));
            let delay = settings.config.retry_delay(1);
            log_settle(incoming.retry(delay).await, "nak");
            return;
        }
        Settled::Plain(result) => result,
    };
    if matches!(outcome.outcome, Outcome::Response(_)) {
        // Sync-only shape (no commit needed) cannot happen for jobs, but a
        // successful run is never retried.
        server.recorder.record(base.record(&outcome));
        log_settle(incoming.ack().await, "ack");
        return;
    }
    if attempt >= job.max_attempts.max(1) {
        dead_letter(server, settings, incoming, base, outcome).await;
    } else {
        server.recorder.record(base.record(&outcome));
        let delay = settings.config.retry_delay(attempt);
        log_settle(incoming.retry(delay).await, "nak");
    }
}

async fn dead_letter(
    server: &Server,
    settings: &JobSettings,
    incoming: &IncomingJob,
    base: &RecordBase,
    result: RunResult,
) {
    let error = result
        .error
        .clone()
        .unwrap_or_else(|| format!("{:?}", result.outcome.status()));
    let letter = DeadLetter {
        record: base.record(&result),
        job: incoming.job.clone(),
        error,
    };
    let stored = server
        .bus
        .call::<_, CommitReply>(
            server.bus.names().dead_letter_subject(),
            &letter,
            DEAD_LETTER_TIMEOUT,
        )
        .await;
    match stored {
        Ok(CommitReply::Committed | CommitReply::AlreadyCommitted) => {
            log_settle(incoming.terminate().await, "term");
        }
        other => {
            tracing::warn!(job = %incoming.job.id, answer = ?other.map_err(|e| e.to_string()), "cannot store the dead letter; retrying the job");
            server.recorder.record(letter.record);
            log_settle(incoming.retry(settings.config.retry_delay(1)).await, "nak");
        }
    }
}

/// The executor's host, lent to one job, noting whether the store failed
/// to answer a kv read (a manager or its database is down: the only reason
/// `Host::kv_get`/`kv_list` fail). A run that fails after that is not the
/// script's fault: it is retried like an uncommitted run, whatever its
/// attempt, instead of spending its attempts during the outage and ending
/// as a dead letter although the event was acknowledged.
struct JobHost {
    inner: Arc<dyn Host>,
    kv_failed: AtomicBool,
}

impl JobHost {
    fn note<T>(&self, r: Result<T, String>) -> Result<T, String> {
        if r.is_err() {
            self.kv_failed.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl Host for JobHost {
    fn secret(&self, name: &str, deadline: Instant) -> Result<Option<String>, String> {
        self.inner.secret(name, deadline)
    }

    fn http(
        &self,
        call: HttpCall,
        limits: &Limits,
        deadline: Instant,
    ) -> Result<HttpReply, HostError> {
        self.inner.http(call, limits, deadline)
    }

    fn kv_get(
        &self,
        script: &str,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<KvEntry>, String> {
        self.note(self.inner.kv_get(script, key, deadline))
    }

    fn kv_list(
        &self,
        script: &str,
        prefix: &str,
        deadline: Instant,
    ) -> Result<Vec<(String, KvVersion)>, String> {
        self.note(self.inner.kv_list(script, prefix, deadline))
    }
}

fn log_settle(r: Result<(), picloud_bus::BusError>, what: &str) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot {what} a job; it will be redelivered");
    }
}
