//! Async jobs: pulled from the scripts' shared durable consumers in turn
//! (see [`crate::queue`]), run on the worker pool, committed, then settled.
//! What happens next at each point is decided by the pure
//! [`crate::lifecycle::next_step`]; this module carries the steps out.
//!
//! Every job ends in exactly one of:
//! - **ack**: it succeeded and its record (and effects) are committed; a
//!   run without kv or emits commits nothing, and is acked once its record
//!   is stored in JetStream (see `crate::records`);
//! - **retry**: it failed an attempt below its `max_attempts`: NAK with an
//!   exponential delay, never an immediate redelivery. A run that could not
//!   be committed (manager or database down, kv contention), or that failed
//!   after a kv read the store could not answer (see [`JobHost`]), is not a
//!   failed attempt: the executor keeps the job (progress acks) and runs it
//!   again after a [`Backoff`] pause (capped exponential with jitter),
//!   handing it back only on shutdown. A commit the store *refuses* (the
//!   data itself, see `CommitReply::Refused`) or one over
//!   `max_commit_bytes` is not that: it fails the attempt like a script
//!   error (see `run::run_committed`);
//! - **terminate**: it failed its last attempt and the dead letter is
//!   stored (if storing fails, it is retried instead: nothing is dropped).
//!
//! While a job runs, progress acks keep JetStream from handing it to another
//! executor; if this executor dies, the job comes back after the ack wait and
//! its effects still apply once (the commit is keyed by the invocation id).
//!
//! A job is pipelined in two stages (see [`run`]): its run holds one of the
//! executor's slots, its script's share of the queue and, on the worker,
//! its script's concurrency slot; its commit and settling hold one of
//! [`COMMITS_IN_FLIGHT`] places instead, so the worker goes to the next job
//! while the database answers. The ack still follows the commit's reply.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use picloud_bus::{CallError, IncomingJob};
use picloud_core::{
    Backoff, CommitReply, Config, DeadLetter, KvEntry, KvVersion, Limits, Outcome, Shutdown,
};
use picloud_sandbox::{Host, HostError, HttpCall, HttpReply, RunResult};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::cache::Compiled;
use crate::fair::{Contention, Turn, Waiter};
use crate::lifecycle::{Event, JobState, Step, next_step};
use crate::overlay::{InFlightReads, Unsettled};
use crate::queue::{Queue, Ticket};
use crate::run::{self, RecordBase, Settled, plain};
use crate::serve::Server;

const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Retry timing, from the configuration.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub ack_wait: Duration,
    pub config: Config,
    /// Ends the wait of a job held through an outage.
    pub shutdown: Shutdown,
}

/// Jobs past their run whose commit (or settling) is under way at once, on
/// top of the jobs pulled to run: the pipeline that keeps the workers busy
/// while commits wait for the database (the managers serve 32 commits at
/// once each, and batch what arrives together).
pub const COMMITS_IN_FLIGHT: usize = 32;

/// Jobs pulled and not yet past their run, on an executor of `threads`
/// workers: enough that one fetch brings a batch (a round trip per job or
/// two was the bound of a one-script backlog, not the workers), few enough
/// that a job waits only moments for its worker, with progress acks.
pub fn pulled_at_once(threads: usize) -> usize {
    (threads * 2).max(PULL_DEPTH)
}

/// How many of [`pulled_at_once`] one script may hold, with a cap of
/// `cap` runs at once: half, or twice its cap if more, and always one less
/// than all, so another script's job is fetched as soon as it is known.
pub fn script_share(threads: usize, cap: usize) -> usize {
    let slots = pulled_at_once(threads);
    (slots / 2).max(cap * 2).min(slots - 1)
}

/// The least [`pulled_at_once`].
pub const PULL_DEPTH: usize = 32;

/// Pulls and runs jobs until `shutdown`, serving scripts in turn (see
/// [`crate::queue`]); then lets running jobs finish.
///
/// A job holds one of the `slots` (and its script's place in the queue's
/// share) from its fetch until its run is over, then trades it for one of
/// [`COMMITS_IN_FLIGHT`] while its commit is sent and it is settled: the
/// worker and the slot go to the next job instead of waiting for the
/// database.
pub async fn run(server: Arc<Server>, settings: JobSettings, shutdown: Shutdown) {
    let slots = pulled_at_once(server.pool.threads());
    let in_flight = Arc::new(Semaphore::new(slots));
    let committing = Arc::new(Semaphore::new(COMMITS_IN_FLIGHT));
    let per_script = script_share(server.pool.threads(), server.slots.cap());
    let mut queue = Queue::start(
        server.bus.clone(),
        settings.ack_wait,
        per_script,
        shutdown.clone(),
    );
    let settings = Arc::new(settings);
    loop {
        // Fetch exactly as many jobs as there are free slots (at least
        // one): a job pulled is a job started, so none waits here while
        // its ack wait runs.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = in_flight.clone().acquire_owned() => p.expect("never closed"),
        };
        let mut permits = vec![first];
        while let Ok(p) = in_flight.clone().try_acquire_owned() {
            permits.push(p);
        }
        let jobs = tokio::select! {
            _ = shutdown.cancelled() => break,
            j = queue.next(permits.len()) => j,
        };
        for (job, ticket) in jobs {
            let stage = Stage {
                running: Some((ticket, permits.pop().expect("no more jobs than free slots"))),
                committing: committing.clone(),
                commit_permit: None,
            };
            let (server, settings) = (server.clone(), settings.clone());
            tokio::spawn(handle(server, settings, job, stage));
        }
    }
    // A fetch cut short by shutdown may leave jobs unstarted: they return
    // after the ack wait.
    let _ = tokio::time::timeout(Duration::from_secs(70), async {
        let _ = in_flight.acquire_many(slots as u32).await;
        let _ = committing.acquire_many(COMMITS_IN_FLIGHT as u32).await;
    })
    .await;
}

/// Where a job is in the executor's pipeline: running (its slot and its
/// script's share of the queue), then committing.
struct Stage {
    running: Option<(Ticket, OwnedSemaphorePermit)>,
    committing: Arc<Semaphore>,
    commit_permit: Option<OwnedSemaphorePermit>,
}

impl Stage {
    /// Past its run: waits for a place among the commits in flight, then
    /// frees the slot for the next job to fetch. A job already there (a
    /// re-run after a conflict, or a run held through an outage) keeps its
    /// place.
    async fn enter_commit(&mut self, incoming: &IncomingJob, progress_every: Duration) {
        if self.commit_permit.is_some() {
            return;
        }
        let take = self.committing.clone().acquire_owned();
        let permit = with_progress(incoming, progress_every, take).await;
        self.commit_permit = Some(permit.expect("never closed"));
        self.running = None;
    }

    /// Gives back its place among the commits in flight while it waits for
    /// something else; [`Stage::enter_commit`] takes one again.
    fn leave_commit(&mut self) {
        self.commit_permit = None;
    }
}

async fn handle(
    server: Arc<Server>,
    settings: Arc<JobSettings>,
    incoming: IncomingJob,
    mut stage: Stage,
) {
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
    // A runaway event chain ends here, before the script runs, whatever the
    // attempt: the dead letter names the bound it broke.
    if let Some(bound) = job.chain.exceeded(settings.config.max_chain_depth) {
        tracing::info!(job = %job.id, trace = %job.event.trace_id, %bound, "ending an event chain");
        let result = plain(
            Outcome::LimitExceeded {
                message: bound.clone(),
            },
            bound,
        );
        run::observe(&base, &result.outcome);
        let step = next_step(
            state(&settings, &incoming),
            Event::ChainExceeded,
            &settings.config,
        );
        carry_out(&server, &settings, &incoming, &base, result, step).await;
        return;
    }
    // A run that could not be committed (a manager, the database or the bus
    // is unavailable; kv contention) is not the script's fault. The job is
    // kept here and run again after a pause, with progress acks meanwhile,
    // so its delivery count (its attempt) counts only the script's own
    // failures and real redeliveries. Only shutdown hands it back.
    let mut backoff = Backoff::from_config(&settings.config);
    loop {
        let settled = match server.bus.get_route(&job.script).await {
            Ok(Some(route)) => {
                base.version = route.version;
                run_on_pool(&server, &settings, &incoming, base.clone(), &mut stage).await
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
        // A job that succeeded without effects is done once its record is
        // stored, like a commit's.
        let settled = match settled {
            Settled::Plain(result) if matches!(result.outcome, Outcome::Response(_)) => {
                stage.enter_commit(&incoming, settings.ack_wait / 3).await;
                store_record(&server, &settings, &incoming, &base, result).await
            }
            other => other,
        };
        // (what happened, the run's result, whether its record is still to
        // be sent: a committed run's record went with its commit or on its
        // own, a dead letter carries its own).
        let (event, result, unrecorded) = match settled {
            Settled::Committed(result) => {
                run::observe(&base, &result.outcome);
                server.live.invocation(&base.record(&result), &result.lines);
                (Event::Committed, result, false)
            }
            Settled::Plain(result) => {
                run::observe(&base, &result.outcome);
                (Event::Failed, result, true)
            }
            Settled::NotCommitted(result, why) => {
                // Recorded now: whether held or handed back, this run
                // applied nothing.
                let failed = uncommitted(result, &why);
                server.record_run(&base, &failed);
                let step = next_step(
                    state(&settings, &incoming),
                    Event::NotCommitted,
                    &settings.config,
                );
                if step == Step::InProgress {
                    let pause = backoff.next_pause();
                    tracing::info!(job = %job.id, reason = %why, retry_in = ?pause, "job not committed; running it again");
                    if hold(&settings, &incoming, pause).await {
                        continue;
                    }
                }
                // Shutting down: handed back for another executor.
                (Event::NotCommitted, failed, false)
            }
        };
        let step = next_step(state(&settings, &incoming), event, &settings.config);
        if unrecorded && step != Step::DeadLetter {
            server.record_run(&base, &result);
        }
        carry_out(&server, &settings, &incoming, &base, result, step).await;
        return;
    }
}

/// Stores the record of a job that succeeded without effects (waiting,
/// with progress acks, for the record batch that carries it to be in
/// JetStream): `Committed`, or `NotCommitted` when it could not be.
async fn store_record(
    server: &Server,
    settings: &JobSettings,
    incoming: &IncomingJob,
    base: &RecordBase,
    result: RunResult,
) -> Settled {
    let stored = server.recorder.record_stored(base.record(&result));
    if with_progress(incoming, settings.ack_wait / 3, stored).await {
        Settled::Committed(result)
    } else {
        Settled::NotCommitted(result, "its record could not be stored".into())
    }
}

/// The job's place in its lifecycle now.
fn state(settings: &JobSettings, incoming: &IncomingJob) -> JobState {
    JobState {
        attempt: incoming.attempt,
        max_attempts: incoming.job.max_attempts,
        shutting_down: settings.shutdown.is_cancelled(),
    }
}

/// Performs `step` (the record of the run is already sent, except for a
/// dead letter, which carries it).
async fn carry_out(
    server: &Server,
    settings: &JobSettings,
    incoming: &IncomingJob,
    base: &RecordBase,
    result: RunResult,
    step: Step,
) {
    match step {
        Step::Ack => log_settle(incoming.ack().await, "ack"),
        Step::Nak(delay) => {
            tracing::debug!(job = %incoming.job.id, attempt = incoming.attempt, error = ?result.error, ?delay, "handing the job back for a retry");
            log_settle(incoming.retry(delay).await, "nak");
        }
        Step::Term => log_settle(incoming.terminate().await, "term"),
        Step::DeadLetter => dead_letter(server, settings, incoming, base, result).await,
        // Only `handle` holds a job (it runs it again after).
        Step::InProgress => log_settle(incoming.progress().await, "progress-ack"),
    }
}

/// Waits `pause` holding the job (progress acks keep it ours). `false` when
/// the executor is shutting down.
async fn hold(settings: &JobSettings, incoming: &IncomingJob, pause: Duration) -> bool {
    let until = tokio::time::Instant::now() + pause;
    let every = settings.ack_wait / 3;
    // A progress ack first: the run that just failed may have been too short
    // to send one, and so may every pause of a backoff still below `every`;
    // without this a job retried quickly many times would see its ack wait
    // run out and come back as a redelivery (a spent attempt).
    if let Err(e) = incoming.progress().await {
        tracing::debug!(error = %e, "cannot send job progress");
    }
    loop {
        let next = (tokio::time::Instant::now() + every).min(until);
        tokio::select! {
            _ = settings.shutdown.cancelled() => return false,
            _ = tokio::time::sleep_until(next) => {}
        }
        if tokio::time::Instant::now() >= until {
            return true;
        }
        if let Err(e) = incoming.progress().await {
            tracing::debug!(error = %e, "cannot send job progress");
        }
    }
}

/// The record of a run that could not be committed: nothing of it applied.
fn uncommitted(mut result: RunResult, why: &str) -> RunResult {
    result.error = Some(format!("not committed: {why}"));
    if !matches!(result.outcome, Outcome::Unavailable { .. }) {
        result.outcome = Outcome::Unavailable {
            message: "the invocation's changes could not be saved".into(),
        };
    }
    result
}

/// Runs the job on a worker (waiting for room rather than refusing), with
/// progress acks until it is done; sends its commit once the worker is
/// free again, running it again after a conflict (at most
/// [`run::MAX_RERUNS`] times).
async fn run_on_pool(
    server: &Arc<Server>,
    settings: &JobSettings,
    incoming: &IncomingJob,
    base: RecordBase,
    stage: &mut Stage,
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
    let mut event = job.event.clone();
    event.attempt = incoming.attempt;
    let inputs = Arc::new(RunInputs {
        event,
        request: job.request.clone(),
        script: job.script.clone(),
        chain: job.chain,
        base,
        host: Arc::new(JobHost {
            inner: server.host.clone(),
            kv_failed: AtomicBool::new(false),
        }),
    });
    let progress_every = settings.ack_wait / 3;
    let mut code = Code::Prepared(Box::new(prepared));
    let mut deadline = None;
    // Runs of a script follow each other with their commits in flight
    // together, each reading the writes of the one before from the
    // overlay. A script whose commits conflict runs one at a time here;
    // one whose commits conflict all the same (runs of it on other
    // executors write the same keys) runs one job at a time, run and
    // commit (see `crate::fair`); a job that conflicts takes the lane for
    // its re-runs.
    let mut lane = None;
    let seen = server.slots.contention(&job.script);
    if seen == Contention::Lane {
        lane = Some(with_progress(incoming, progress_every, server.slots.lane(&job.script)).await);
    }
    for _ in 0..=run::MAX_RERUNS {
        let ran = run_once_on_pool(server, incoming, progress_every, &inputs, code, deadline);
        let (ran, compiled) = match ran.await {
            Ok(done) => done,
            Err(crashed) => return *crashed,
        };
        deadline = Some(compiled.deadline);
        code = Code::Compiled(compiled);
        let (result, unsettled, read, sending) = match ran {
            WorkerRan::Done(settled) => return inputs.host.judge(settled),
            WorkerRan::Unsure(result, read) => {
                let committed = read.all_committed(run::COMMIT_TIMEOUT);
                if with_progress(incoming, progress_every, committed).await {
                    return inputs.host.judge(Settled::Plain(result));
                }
                continue;
            }
            WorkerRan::Committing(result, unsettled, read, sending) => {
                (result, unsettled, read, sending)
            }
        };
        // The worker and the script's slot went to the next job while this
        // one waits for the database: a next run of the script reads this
        // one's writes from the overlay, so one key's read-modify-writes
        // follow each other without waiting for each commit.
        stage.enter_commit(incoming, progress_every).await;
        let reply = match with_progress(incoming, progress_every, sending).await {
            Ok(reply) => reply,
            // Its task panicked or the runtime is going: nothing is known
            // of the commit (the retry finds it applied, or applies it).
            Err(e) => {
                return Settled::NotCommitted(result, format!("the commit's task ended: {e}"));
            }
        };
        unsettled.settle(run::applied(&reply));
        if let Some(settled) = run::judge_commit(result, reply, &server.bus) {
            return inputs.host.judge(settled);
        }
        // A run that read a write in flight here which did not commit
        // conflicts because this executor's own chain of writes broke;
        // otherwise another executor wrote what it read.
        let chain_broke = !read.is_empty()
            && !with_progress(
                incoming,
                progress_every,
                read.all_committed(run::COMMIT_TIMEOUT),
            )
            .await;
        server.slots.conflicted(&job.script, seen, !chain_broke);
        if lane.is_none() {
            // Waiting for the lane holds no place among the commits in
            // flight, which the lane's holder and other scripts' jobs need.
            stage.leave_commit();
            lane =
                Some(with_progress(incoming, progress_every, server.slots.lane(&job.script)).await);
        }
    }
    drop(lane);
    run::too_much_contention()
}

/// What every run of one job shares.
struct RunInputs {
    event: picloud_core::EventInput,
    request: Option<picloud_core::HttpRequestInput>,
    script: String,
    chain: picloud_core::Chain,
    base: RecordBase,
    host: Arc<JobHost>,
}

/// The job's script: ready to compile on a worker, or compiled by an
/// earlier run (with the deadline that run set).
enum Code {
    Prepared(Box<run::Prepared>),
    Compiled(CompiledRun),
}

struct CompiledRun {
    compiled: Arc<Compiled>,
    modules: picloud_sandbox::ModuleSet,
    deadline: Instant,
}

/// What a run on a worker sends back: the run and the compiled script.
type WorkerRun = Result<(WorkerRan, CompiledRun), Box<Settled>>;

/// How a run on a worker ended.
enum WorkerRan {
    /// Nothing to commit.
    Done(Settled),
    /// It failed after reading writes in flight (see `run::Ran::Unsure`).
    Unsure(RunResult, InFlightReads),
    /// Its commit is on its way (sent from the worker, so a script's runs
    /// commit in the order they ran, each after the run whose writes it
    /// may have read from the overlay), with its writes in the overlay.
    Committing(
        RunResult,
        Unsettled,
        InFlightReads,
        JoinHandle<Result<CommitReply, CallError>>,
    ),
}

/// One run on a worker, waiting for the script's slot and a worker (with
/// progress acks meanwhile). The worker frees the slot the moment the run
/// is over (its writes in the overlay), starting the script's next waiting
/// run with it (on that very worker when nothing else is queued). `Err`:
/// the worker crashed.
async fn run_once_on_pool(
    server: &Arc<Server>,
    incoming: &IncomingJob,
    progress_every: Duration,
    inputs: &Arc<RunInputs>,
    code: Code,
    deadline: Option<Instant>,
) -> WorkerRun {
    let (tx, rx) = oneshot::channel::<WorkerRun>();
    let worker_server = server.clone();
    let inputs = inputs.clone();
    let run: Waiter = Box::new(move |turn: Turn<'_>| {
        // An async job waits for its turn as long as it takes.
        let Turn::Run(_slot, sandbox) = turn else {
            return;
        };
        let started = Instant::now();
        let compiled = match code {
            Code::Compiled(c) => c,
            Code::Prepared(prepared) => match prepared.compile(sandbox, &worker_server.cache) {
                Ok((compiled, modules)) => {
                    // An async job has no waiting caller: its own wall-time
                    // limit is its only deadline (the first run's, kept by
                    // the re-runs).
                    let deadline = deadline.unwrap_or_else(|| {
                        started
                            + Duration::from_millis(compiled.limits.wall_time_ms)
                            + Duration::from_secs(1)
                    });
                    CompiledRun {
                        compiled,
                        modules,
                        deadline,
                    }
                }
                Err(r) => {
                    let _ = tx.send(Err(Box::new(Settled::Plain(*r))));
                    return;
                }
            },
        };
        let host: Arc<dyn Host> = inputs.host.clone();
        let ran = run::run_once(
            sandbox,
            &compiled.compiled,
            compiled.modules.clone(),
            &run::Invocation {
                script: &inputs.script,
                event: &inputs.event,
                request: inputs.request.as_ref(),
                deadline: compiled.deadline,
                started,
                host,
                chain: inputs.chain,
                overlay: &worker_server.overlay,
            },
            started,
            &inputs.base,
        );
        let ran = match ran {
            run::Ran::Done(settled) => WorkerRan::Done(settled),
            run::Ran::Unsure(result, read) => WorkerRan::Unsure(result, read),
            run::Ran::Commit(result, commit, unsettled, read) => {
                let bus = worker_server.bus.clone();
                let sending = worker_server
                    .runtime
                    .spawn(async move { run::send_commit(&bus, &commit).await });
                WorkerRan::Committing(result, unsettled, read, sending)
            }
        };
        let _ = tx.send(Ok((ran, compiled)));
    });
    // Past the script's cap the job waits in the script's own queue (kept
    // ours by progress acks meanwhile) until a run of the script ends and
    // starts it; a free slot starts it now. Neither refuses it: a full
    // pool queue delays it instead (see `Pool::hand_off`).
    if let Some((slot, run)) = server.slots.admit(&incoming.job.script, None, run) {
        server.pool.hand_off(slot.start(run));
    }
    with_progress(incoming, progress_every, rx)
        .await
        .unwrap_or_else(|_| {
            Err(Box::new(Settled::Plain(plain(
                Outcome::ScriptError {
                    message: "the script failed".into(),
                },
                "the worker running the job crashed",
            ))))
        })
}

/// Awaits `work`, sending a progress ack every `every` meanwhile so that
/// JetStream keeps the job ours.
async fn with_progress<T>(
    incoming: &IncomingJob,
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {
                if let Err(e) = incoming.progress().await {
                    tracing::debug!(error = %e, "cannot send job progress");
                }
            }
        }
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
        .unwrap_or_else(|| result.outcome.status().as_str().to_owned());
    let letter = DeadLetter {
        record: base.record(&result),
        job: incoming.job.clone(),
        error,
    };
    server.live.invocation(&letter.record, &result.lines);
    let stored = server
        .bus
        .request::<picloud_bus::wire::DeadLetterCall>(&letter, DEAD_LETTER_TIMEOUT)
        .await;
    let event = match stored {
        Ok(reply @ (CommitReply::Committed | CommitReply::AlreadyCommitted)) => {
            if reply == CommitReply::Committed {
                picloud_metrics::global().dead_letter();
            }
            Event::DeadLetterStored
        }
        other => {
            tracing::warn!(job = %incoming.job.id, answer = ?other.map_err(|e| e.to_string()), "cannot store the dead letter; retrying the job");
            server.recorder.record(letter.record);
            Event::DeadLetterNotStored
        }
    };
    match next_step(state(settings, incoming), event, &settings.config) {
        Step::Term => log_settle(incoming.terminate().await, "term"),
        Step::Nak(delay) => log_settle(incoming.retry(delay).await, "nak"),
        other => tracing::error!(?other, "no such step after a dead letter"),
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
    /// A run that failed after a kv read the store could not answer is
    /// not the script's fault: it counts as not committed.
    fn judge(&self, settled: Settled) -> Settled {
        match settled {
            Settled::Plain(r)
                if !matches!(r.outcome, Outcome::Response(_))
                    && self.kv_failed.load(Ordering::Relaxed) =>
            {
                Settled::NotCommitted(r, "kv was unavailable".into())
            }
            other => other,
        }
    }

    fn note<T>(&self, r: Result<T, HostError>) -> Result<T, HostError> {
        if r.is_err() {
            self.kv_failed.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl Host for JobHost {
    fn secret(&self, name: &str, deadline: Instant) -> Result<Option<String>, HostError> {
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
    ) -> Result<Option<KvEntry>, HostError> {
        self.note(self.inner.kv_get(script, key, deadline))
    }

    fn kv_list(
        &self,
        script: &str,
        prefix: &str,
        deadline: Instant,
    ) -> Result<Vec<(String, KvVersion)>, HostError> {
        self.note(self.inner.kv_list(script, prefix, deadline))
    }
}

fn log_settle(r: Result<(), picloud_bus::BusError>, what: &str) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot {what} a job; it will be redelivered");
    }
}
