//! What executors and gateways ask managers over NATS (request/reply with
//! the managers' queue group): kv reads, commits of successful invocations,
//! dead letters, and async HTTP submissions.
//!
//! A commit applies an invocation's record, kv writes and emits atomically,
//! in a transaction shared with the commits queued beside it
//! ([`crate::commits`]); its emits become outbox rows: one per
//! event (for the event log) and one job per matching subscription, whose
//! id is derived from (event id, subscription id). The relay publishes them.

use std::sync::Arc;
use std::time::Duration;

use crate::commits::Committer;
use crate::stats::Rollup;
use crate::submits::Submitter;
use futures::{Stream, StreamExt};
use picloud_bus::wire::{AsyncSubmitCall, CommitCall, DeadLetterCall, KvGetCall, KvListCall, Rpc};
use picloud_bus::{Bus, Incoming};
use picloud_core::effects::{KvAnswer, KvGet, KvList};
use picloud_core::job::{emitted_event_id, event_job_id, topic_matches};
use picloud_core::{
    AsyncAnswer, AsyncSubmit, Backoff, Commit, CommitReply, DeadLetter, EventInput, EventMessage,
    InvocationRecord, InvocationStatus, Job, Shutdown, Trigger,
};
use picloud_store::{OutboxRow, Store, StoreError, Submitted, SubscriptionRow};
use tokio::sync::Semaphore;

/// Requests served at once per kind (each holds a database connection for
/// a moment).
const CONCURRENCY: usize = 32;

/// Serves every kind of request until `shutdown`. `max_trace_invocations`
/// is the budget of a trace's root (see [`outbox_rows`]).
pub async fn serve(
    store: Store,
    bus: Bus,
    rollup: Rollup,
    max_trace_invocations: u32,
    shutdown: Shutdown,
) {
    let kv_get = {
        let store = store.clone();
        serve_kind::<KvGetCall, _, _>(bus.clone(), shutdown.clone(), move |q: KvGet| {
            let store = store.clone();
            async move {
                match store.kv_get(&q.script, &q.key).await {
                    Ok(entry) => KvAnswer::Ok(entry),
                    Err(e) => {
                        tracing::warn!(error = %e, "kv read failed");
                        KvAnswer::Err("kv is unavailable right now".into())
                    }
                }
            }
        })
    };
    let kv_list = {
        let store = store.clone();
        serve_kind::<KvListCall, _, _>(bus.clone(), shutdown.clone(), move |q: KvList| {
            let store = store.clone();
            async move {
                match store.kv_list(&q.script, &q.prefix).await {
                    Ok(entries) => KvAnswer::Ok(entries),
                    Err(e) => {
                        tracing::warn!(error = %e, "kv list failed");
                        KvAnswer::Err("kv is unavailable right now".into())
                    }
                }
            }
        })
    };
    let (committer, pipelines) = Committer::start(
        store.clone(),
        bus.clone(),
        rollup.clone(),
        max_trace_invocations,
    );
    // The handler holds the committer's queue: the pipelines end once the
    // requests stopped being served and the last queued commit is answered.
    // A commit request waits in the committer's queue, not on a database
    // connection: enough of them are taken to fill every pipeline's batch.
    let commits = serve_kind_up_to::<CommitCall, _, _>(
        bus.clone(),
        shutdown.clone(),
        crate::commits::PIPELINES * crate::commits::MAX_BATCH,
        move |c: Commit| {
            // Queued now, in arrival order; answered when committed.
            committer.commit(c)
        },
    );
    let dead_letters = {
        let store = store.clone();
        let rollup = rollup.clone();
        serve_kind::<DeadLetterCall, _, _>(bus.clone(), shutdown.clone(), move |d: DeadLetter| {
            let (store, rollup) = (store.clone(), rollup.clone());
            async move {
                match store.insert_dead_letter(&d.record, &d.job, &d.error).await {
                    Ok(()) => {
                        rollup.add_records([&d.record]);
                        tracing::info!(job = %d.job.id, script = %d.job.script, "job dead-lettered");
                        CommitReply::Committed
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, job = %d.job.id, "cannot store a dead letter");
                        not_applied(&e)
                    }
                }
            }
        })
    };
    // Calls without an idempotency key are accepted in batches; enough of
    // them are taken at once to fill every pipeline's batch.
    let (submitter, submit_pipelines) = Submitter::start(store.clone(), bus.clone());
    let submits = {
        let (store, b) = (store.clone(), bus.clone());
        serve_kind_up_to::<AsyncSubmitCall, _, _>(
            bus.clone(),
            shutdown.clone(),
            crate::submits::PIPELINES * crate::submits::MAX_BATCH,
            move |s: AsyncSubmit| {
                let (store, bus, submitter) = (store.clone(), b.clone(), submitter.clone());
                async move { submit(&store, &bus, &submitter, s).await }
            },
        )
    };
    tokio::join!(
        kv_get,
        kv_list,
        commits,
        pipelines,
        dead_letters,
        submits,
        submit_pipelines
    );
}

/// Subscribes to `subject` (resubscribing after errors) and answers each
/// request with `handle`, up to [`CONCURRENCY`] at once.
pub(crate) async fn serve_kind<R, F, Fut>(bus: Bus, shutdown: Shutdown, handle: F)
where
    R: Rpc,
    F: Fn(R::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R::Reply> + Send + 'static,
{
    serve_kind_up_to::<R, F, Fut>(bus, shutdown, CONCURRENCY, handle).await
}

/// [`serve_kind`] with `concurrency` requests answered at once.
async fn serve_kind_up_to<R, F, Fut>(bus: Bus, shutdown: Shutdown, concurrency: usize, handle: F)
where
    R: Rpc,
    F: Fn(R::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R::Reply> + Send + 'static,
{
    let subject = R::serve_subject(bus.names());
    let handle = Arc::new(handle);
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let requests = match bus.serve_rpc::<R>().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, %subject, "cannot subscribe; retrying");
                if picloud_bus::pause_or_stop(&mut backoff, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        if answer_all::<R, _, _>(&bus, requests, &shutdown, &handle, &limit).await {
            return;
        }
    }
}

/// `true` on shutdown, `false` when the subscription ended.
async fn answer_all<R, F, Fut>(
    bus: &Bus,
    requests: impl Stream<Item = Incoming<R::Request>>,
    shutdown: &Shutdown,
    handle: &Arc<F>,
    limit: &Arc<Semaphore>,
) -> bool
where
    R: Rpc,
    F: Fn(R::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R::Reply> + Send + 'static,
{
    let mut requests = std::pin::pin!(requests);
    loop {
        let req = tokio::select! {
            _ = shutdown.cancelled() => return true,
            r = requests.next() => r,
        };
        let Some(mut req) = req else { return false };
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        // `handle`'s synchronous part runs here, in the order the requests
        // came (the committer queues a commit there: one executor's
        // pipelined runs of a script commit in their order); its future
        // runs in a task of its own.
        let answering = handle(req.take_body());
        let bus = bus.clone();
        tokio::spawn(async move {
            let answer = answering.await;
            if let Err(e) = bus.answer::<R>(&req, &answer).await {
                tracing::warn!(error = %e, "cannot answer a request");
            }
            drop(permit);
        });
    }
}

/// The reply for a commit the store did not apply: refused when retrying
/// would fail the same way (the executor then counts it against the job),
/// failed when the database was unavailable (retried without counting).
pub(crate) fn not_applied(e: &StoreError) -> CommitReply {
    let message = e.to_string();
    if e.is_permanent() {
        CommitReply::Refused { message }
    } else {
        CommitReply::Failed { message }
    }
}

/// The outbox rows of a commit's emits: each event, and one job per
/// subscription whose pattern matches its topic.
///
/// The jobs go one hop further than the committing invocation and share
/// what is left of its trace's budget ([`picloud_core::chain`]).
pub fn outbox_rows(
    c: &Commit,
    subscriptions: &[SubscriptionRow],
    max_trace_invocations: u32,
) -> Vec<OutboxRow> {
    let record = &c.record;
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    let jobs = c
        .effects
        .emits
        .iter()
        .map(|e| {
            subscriptions
                .iter()
                .filter(|s| topic_matches(&s.topic, &e.topic))
                .count()
        })
        .sum();
    let chain = c.chain.child(jobs, max_trace_invocations);
    for (i, emit) in c.effects.emits.iter().enumerate() {
        let event_id = emitted_event_id(record.id, i);
        rows.push(OutboxRow::event(&EventMessage {
            id: event_id,
            topic: emit.topic.clone(),
            payload: emit.payload.clone(),
            trace_id: record.trace_id,
            source: record.id,
            emitted_at: now,
            hop: chain.hop,
        }));
        for sub in subscriptions
            .iter()
            .filter(|s| topic_matches(&s.topic, &emit.topic))
        {
            rows.push(OutboxRow::job(&Job {
                id: event_job_id(event_id, sub.id),
                script: sub.script.clone(),
                event: EventInput {
                    id: event_id,
                    kind: Trigger::Event,
                    topic: Some(emit.topic.clone()),
                    payload: emit.payload.clone(),
                    scheduled_at: None,
                    attempt: 1,
                    trace_id: record.trace_id,
                },
                request: None,
                parent_id: Some(record.id),
                subscription_id: Some(sub.id),
                schedule_id: None,
                max_attempts: sub.max_attempts,
                public: false,
                chain,
            }));
        }
    }
    rows
}

/// Accepts an async HTTP call. Without an idempotency key it goes with the
/// calls queued beside it ([`crate::submits`]). With one: the key and the
/// queued record in Postgres, and the job durable in JetStream, published straight from
/// inside that transaction (`Nats-Msg-Id` = the invocation id); should the
/// publish fail, the job goes to the outbox in the same transaction and the
/// relay publishes it. Accepted exactly when both are durable; see
/// "Accepting an async call" in docs/ARCHITECTURE.md for why nothing is
/// lost or run twice.
async fn submit(store: &Store, bus: &Bus, submitter: &Submitter, s: AsyncSubmit) -> AsyncAnswer {
    let job = s.job;
    let queued = InvocationRecord {
        id: job.id,
        script: job.script.clone(),
        version: s.version,
        trigger: Trigger::Http,
        status: InvocationStatus::Queued,
        http_status: None,
        started_at: chrono::Utc::now(),
        duration_us: 0,
        log: String::new(),
        error: None,
        executor: String::new(),
        trace_id: job.event.trace_id,
        attempt: 1,
        parent_id: None,
        response: None,
        public: true,
    };
    if s.idempotency_key.is_none() {
        return submitter.submit(queued, job).await;
    }
    let msg_id = job.id.to_string();
    let publish = async || {
        bus.publish_job(&job, &msg_id).await.map_err(|e| {
            tracing::warn!(job = %job.id, error = %e, "cannot publish an async job; queueing it in the outbox");
            e.to_string()
        })
    };
    match store
        .submit_async(
            s.idempotency_key.as_deref(),
            s.fingerprint.as_deref(),
            &queued,
            Some(&job),
            publish,
        )
        .await
    {
        Ok(Ok(Submitted::New(id))) => AsyncAnswer::Accepted {
            invocation_id: id,
            existing: false,
        },
        Ok(Ok(Submitted::Existing(id))) => AsyncAnswer::Accepted {
            invocation_id: id,
            existing: true,
        },
        Ok(Ok(Submitted::KeyReused)) => AsyncAnswer::KeyReused,
        Ok(Ok(Submitted::InFlight)) => AsyncAnswer::KeyInFlight,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot queue an async job");
            AsyncAnswer::Refused {
                message: "the job could not be queued; retry".into(),
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot record an async job");
            AsyncAnswer::Refused {
                message: "the job could not be queued; retry".into(),
            }
        }
    }
}
