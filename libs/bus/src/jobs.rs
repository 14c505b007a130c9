//! Async jobs and events on JetStream, and the request/reply calls the
//! executors and gateways make to managers.
//!
//! - `{P}_JOBS`: work-queue retention, one subject per script
//!   (`{p}.jobs.{script}`) and one durable pull consumer per script
//!   (`jobs_{script}`, filtered to that subject) shared by every executor,
//!   so adding a node adds capacity and an executor can serve scripts in
//!   turn (see `services/executor/src/queue.rs`). Once a job is stored, its
//!   publisher rings `{p}.jobready.{script}` (core NATS, empty: the doorbell
//!   that tells executors which script has work); [`Bus::scripts_with_jobs`]
//!   finds the rest (retries, redeliveries, rings missed). Messages carry
//!   `Nats-Msg-Id` (the outbox row id) for deduplication; executors ack
//!   explicitly, send progress while a job runs, NAK with a delay to retry,
//!   and terminate a job once it is a dead letter.
//! - `{P}_EVENTS`: limits retention, the event log; topic = subject suffix.
//! - Request/reply to the managers' queue group: kv reads, commits, dead
//!   letters, async submissions. No responders is an immediate error.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use picloud_core::Job;

use crate::wire::{self, Rpc};
use crate::{BusError, Names, encode};

/// The one unfiltered consumer of releases before per-script consumers; a
/// work-queue stream refuses filtered consumers beside it, so it is removed.
const LEGACY_CONSUMER: &str = "executors";
/// A script's consumer is removed by the server after this long without a
/// pull (a script no longer called); the next job of it creates it again.
const CONSUMER_IDLE: Duration = Duration::from_secs(3600);
/// The event log keeps this much history.
const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
const EVENTS_MAX_BYTES: i64 = 1 << 30;

pub(crate) async fn ensure_streams(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<(), BusError> {
    let stream = crate::stream_made(
        js,
        stream::Config {
            name: names.jobs_stream(),
            subjects: vec![names.jobs_wildcard()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await
    .map_err(BusError::js("jobs stream"))?;
    // A stream made by an older release: drop its unfiltered consumer (a
    // work-queue stream refuses filtered ones beside it); the jobs it held
    // unacked go to the per-script consumers.
    if stream.cached_info().state.consumer_count > 0
        && stream.consumer_info(LEGACY_CONSUMER).await.is_ok()
    {
        let _ = stream.delete_consumer(LEGACY_CONSUMER).await;
    }
    crate::stream_made(
        js,
        stream::Config {
            name: names.events_stream(),
            subjects: vec![names.events_wildcard()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_age: EVENTS_MAX_AGE,
            max_bytes: EVENTS_MAX_BYTES,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await
    .map_err(BusError::js("events stream"))?;
    Ok(())
}

/// A job an executor has pulled. Settle it with exactly one of
/// [`ack`](Self::ack), [`retry`](Self::retry) or [`terminate`](Self::terminate);
/// an unsettled job comes back after the consumer's ack wait.
pub struct IncomingJob {
    pub job: Job,
    /// 1 on first delivery (JetStream's delivery count).
    pub attempt: u32,
    message: jetstream::Message,
}

impl IncomingJob {
    /// Done (its effects are committed, or it needs none).
    pub async fn ack(&self) -> Result<(), BusError> {
        self.message
            .ack()
            .await
            .map_err(|e| BusError::js("job ack")(e))
    }

    /// Deliver again after `delay` (never at once: no hot NAK loop).
    pub async fn retry(&self, delay: Duration) -> Result<(), BusError> {
        self.message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| BusError::js("job nak")(e))
    }

    /// Still working: restarts the ack wait.
    pub async fn progress(&self) -> Result<(), BusError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| BusError::js("job progress")(e))
    }

    /// Never deliver again (recorded as a dead letter, or malformed).
    pub async fn terminate(&self) -> Result<(), BusError> {
        self.message
            .ack_with(AckKind::Term)
            .await
            .map_err(|e| BusError::js("job term")(e))
    }
}

/// One script's durable consumer, shared by every executor. An executor
/// fetches exactly as many jobs as it will start at once
/// ([`JobConsumer::fetch`], never waiting), so a job is never held unstarted
/// in a client buffer while its ack wait runs.
pub struct JobConsumer {
    consumer: jetstream::consumer::PullConsumer,
}

impl JobConsumer {
    pub(crate) async fn open(
        js: &jetstream::Context,
        names: &Names,
        script: &str,
        ack_wait: Duration,
    ) -> Result<Self, BusError> {
        let stream = js
            .get_stream_no_info(names.jobs_stream())
            .await
            .map_err(|e| BusError::js("jobs stream")(e.into()))?;
        let name = Names::job_consumer(script);
        let consumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: names.job_subject(script),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait,
                    // Attempts are counted by the executor (a job's own
                    // max_attempts), which terminates the message at the end.
                    max_deliver: -1,
                    max_ack_pending: 20_000,
                    inactive_threshold: CONSUMER_IDLE,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::js("jobs consumer")(e.into()))?;
        Ok(Self { consumer })
    }

    /// Up to `n` of the script's jobs that can be delivered now, each
    /// yielded as it arrives; the stream ends at once when there are fewer.
    pub async fn fetch(
        &self,
        n: usize,
    ) -> Result<impl Stream<Item = Result<IncomingJob, BusError>> + use<>, BusError> {
        let batch = self
            .consumer
            .fetch()
            .max_messages(n.max(1))
            .messages()
            .await
            .map_err(|e| BusError::js("jobs fetch")(e.into()))?;
        Ok(batch.filter_map(|m| async move {
            let message = match m {
                Ok(m) => m,
                Err(e) => return Some(Err(BusError::js("jobs fetch")(e))),
            };
            let attempt = message
                .info()
                .map(|i| i.delivered.clamp(1, u32::MAX as i64) as u32)
                .unwrap_or(1);
            match wire::read::<Job>(&message.subject, message.headers.as_ref(), &message.payload) {
                Ok(job) => Some(Ok(IncomingJob {
                    job,
                    attempt,
                    message,
                })),
                // Left unacked: it comes back after the ack wait, for an
                // executor of the release that wrote it.
                Err(BusError::Newer { .. }) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "terminating a malformed job");
                    let _ = message.ack_with(AckKind::Term).await;
                    None
                }
            }
        }))
    }
}

/// Rings a script's doorbell (`subject`): a job of it is stored. Best
/// effort: a missed ring is found by the executors' scan of the stream.
async fn ring_doorbell(client: &async_nats::Client, subject: String) {
    let _ = client
        .publish_with_headers(subject, wire::headers(), Bytes::new())
        .await;
}

/// A request a manager serves, with where to answer.
pub struct Incoming<T> {
    body: Option<T>,
    reply_to: Option<async_nats::Subject>,
}

impl<T> Incoming<T> {
    /// The request (once; the reply address stays for [`crate::Bus::answer`]).
    pub fn take_body(&mut self) -> T {
        self.body.take().expect("the body is taken once")
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no one serves this request (is a manager running?)")]
    NoResponders,
    #[error("no answer in time")]
    TimedOut,
    #[error("the request is larger than the bus accepts ({0} bytes)")]
    TooLarge(usize),
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl crate::Bus {
    /// Publishes `payload` on `subject` with `Nats-Msg-Id: msg_id` and waits
    /// for JetStream to store it (or to report it a duplicate).
    pub async fn publish_durable(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let ack = self.publish_durable_start(subject, msg_id, payload).await?;
        ack.await
    }

    /// Sends a durable publish and returns the wait for its ack, so a caller
    /// can have many in flight. A job, once stored, rings its script's
    /// doorbell (see [`publish_durable_many`](Self::publish_durable_many)
    /// for one ring per script for many jobs).
    pub async fn publish_durable_start(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<impl Future<Output = Result<(), BusError>> + use<>, BusError> {
        let ring = self
            .names
            .script_of_job_subject(&subject)
            .map(|script| (self.client.clone(), self.names.job_ready_subject(script)));
        let ack = self.publish_unrung(subject, msg_id, payload).await?;
        Ok(async move {
            ack.await?;
            if let Some((client, subject)) = ring {
                ring_doorbell(&client, subject).await;
            }
            Ok(())
        })
    }

    /// Sends a durable publish; the wait for its ack (no doorbell).
    async fn publish_unrung(
        &self,
        subject: String,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<impl Future<Output = Result<(), BusError>> + use<>, BusError> {
        let mut headers = wire::headers();
        headers.insert("Nats-Msg-Id", msg_id);
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| BusError::js("publish")(e.into()))?;
        Ok(async move {
            ack.await
                .map_err(|e| BusError::js("publish ack")(e.into()))
                .map(drop)
        })
    }

    /// Publishes every `(subject, message id, payload)`, all started before
    /// any ack is awaited; whether each is durable, in order. After the
    /// first one that cannot be sent, the rest are not tried (the
    /// connection is gone; they fail with that error). Once the acks are
    /// in, each script that got a job is rung once, not once per job.
    pub async fn publish_durable_many(
        &self,
        items: Vec<(String, String, Bytes)>,
    ) -> Vec<Result<(), BusError>> {
        let mut started = Vec::new();
        let mut failed: Option<String> = None;
        for (subject, msg_id, payload) in items {
            let script = self
                .names
                .script_of_job_subject(&subject)
                .map(str::to_owned);
            if let Some(e) = &failed {
                started.push((script, Err(BusError::Unsent(e.clone()))));
                continue;
            }
            let ack = self.publish_unrung(subject, &msg_id, payload).await;
            if let Err(e) = &ack {
                failed = Some(e.to_string());
            }
            started.push((script, ack));
        }
        let mut done = Vec::with_capacity(started.len());
        let mut rung = std::collections::HashSet::new();
        for (script, ack) in started {
            let stored = match ack {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            if let (Ok(()), Some(script)) = (&stored, script) {
                rung.insert(script);
            }
            done.push(stored);
        }
        for script in rung {
            ring_doorbell(&self.client, self.names.job_ready_subject(&script)).await;
        }
        done
    }

    /// Publishes a job under message id `msg_id` and waits until it is durable.
    pub async fn publish_job(&self, job: &Job, msg_id: &str) -> Result<(), BusError> {
        self.publish_durable(self.names.job_subject(&job.script), msg_id, encode(job))
            .await
    }

    /// Publishes `jobs` (each under its own id as message id), all started
    /// before any ack is awaited; whether each is durable, in order.
    pub async fn publish_jobs(&self, jobs: &[&Job]) -> Vec<Result<(), BusError>> {
        let items = jobs
            .iter()
            .map(|job| {
                let subject = self.names.job_subject(&job.script);
                (subject, job.id.to_string(), encode(job))
            })
            .collect();
        self.publish_durable_many(items).await
    }

    /// `script`'s job consumer, shared by the executors (made if missing).
    pub async fn jobs(&self, script: &str, ack_wait: Duration) -> Result<JobConsumer, BusError> {
        JobConsumer::open(&self.js, &self.names, script, ack_wait).await
    }

    /// The scripts that have jobs in the stream (deliverable now, waiting
    /// for a retry delay, or running).
    pub async fn scripts_with_jobs(&self) -> Result<Vec<String>, BusError> {
        let stream = self
            .js
            .get_stream_no_info(self.names.jobs_stream())
            .await
            .map_err(|e| BusError::js("jobs stream")(e.into()))?;
        let mut subjects = stream
            .info_with_subjects(self.names.jobs_wildcard())
            .await
            .map_err(|e| BusError::js("jobs stream info")(e.into()))?;
        let mut scripts = Vec::new();
        while let Some(entry) = subjects.next().await {
            let (subject, count) = entry.map_err(|e| BusError::js("jobs stream info")(e.into()))?;
            if count > 0
                && let Some(script) = self.names.script_of_job_subject(&subject)
            {
                scripts.push(script.to_owned());
            }
        }
        Ok(scripts)
    }

    /// Jobs stored and not yet acknowledged (waiting, retrying or
    /// running): the jobs stream's message count (work-queue retention
    /// removes a job once acked). Read on a metrics scrape.
    pub async fn jobs_pending(&self) -> Result<u64, BusError> {
        // Opening a stream asks the server for its info: one request.
        let stream = self
            .js
            .get_stream(self.names.jobs_stream())
            .await
            .map_err(|e| BusError::js("jobs stream info")(e.into()))?;
        Ok(stream.cached_info().state.messages)
    }

    /// The doorbell: the name of the script of every job published through
    /// the bus, once stored (best effort: a ring may be missed, see
    /// [`scripts_with_jobs`](Self::scripts_with_jobs)).
    pub async fn job_rings(&self) -> Result<impl Stream<Item = String> + use<>, BusError> {
        let sub = self
            .client
            .subscribe(self.names.jobs_ready_wildcard())
            .await
            .map_err(|e| BusError::Nats {
                what: "subscribe",
                source: e.into(),
            })?;
        let names = self.names.clone();
        Ok(sub.filter_map(move |msg| {
            let script = names
                .script_of_job_ready_subject(&msg.subject)
                .map(str::to_owned);
            async move { script }
        }))
    }

    /// Sends an [`Rpc`] request and decodes its typed reply. No responders
    /// is an immediate error, not a timeout.
    pub async fn request<R: Rpc>(
        &self,
        request: &R::Request,
        timeout: Duration,
    ) -> Result<R::Reply, CallError> {
        let subject = R::subject(&self.names, request);
        let payload = encode(request);
        if payload.len() > self.max_payload() {
            return Err(CallError::TooLarge(payload.len()));
        }
        let request = async_nats::Request::new()
            .payload(payload)
            .headers(wire::headers())
            .timeout(Some(timeout));
        match self.client.send_request(subject.clone(), request).await {
            Ok(msg) => Ok(wire::read(&subject, msg.headers.as_ref(), &msg.payload)?),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => CallError::NoResponders,
                async_nats::RequestErrorKind::TimedOut => CallError::TimedOut,
                _ => CallError::Bus(BusError::Nats {
                    what: "request",
                    source: e.into(),
                }),
            }),
        }
    }

    /// Joins the queue group serving `R`. Malformed requests, and requests
    /// of a newer wire version, are logged and dropped (their caller times
    /// out).
    pub async fn serve_rpc<R: Rpc>(
        &self,
    ) -> Result<impl Stream<Item = Incoming<R::Request>> + use<R>, BusError> {
        let requests = self.queue_decoded::<R>().await?;
        Ok(requests.map(|(body, reply_to)| Incoming {
            body: Some(body),
            reply_to,
        }))
    }

    /// Joins `R`'s queue group, decoding each message as its request (with
    /// its reply subject); malformed or too new messages are logged and
    /// skipped.
    pub(crate) async fn queue_decoded<R: Rpc>(
        &self,
    ) -> Result<impl Stream<Item = (R::Request, Option<async_nats::Subject>)> + use<R>, BusError>
    {
        let sub = self
            .client
            .queue_subscribe(R::serve_subject(&self.names), R::group(&self.names))
            .await
            .map_err(|e| BusError::Nats {
                what: "subscribe",
                source: e.into(),
            })?;
        Ok(sub.filter_map(|msg| async move {
            match wire::read::<R::Request>(&msg.subject, msg.headers.as_ref(), &msg.payload) {
                Ok(body) => Some((body, msg.reply)),
                Err(BusError::Newer { .. }) => None,
                Err(e) => {
                    tracing::warn!(subject = %msg.subject, error = %e, "dropping a malformed message");
                    None
                }
            }
        }))
    }

    /// Answers a request served by [`serve`](Self::serve).
    pub async fn answer<R: Rpc>(
        &self,
        req: &Incoming<R::Request>,
        answer: &R::Reply,
    ) -> Result<(), BusError> {
        self.reply_to(req.reply_to.as_ref(), encode(answer)).await
    }
}
