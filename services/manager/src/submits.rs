//! Accepting async calls in batches, like the commits
//! ([`crate::commits`]): the submissions that carry no idempotency key and
//! arrive while a transaction is in flight wait in a queue and go together,
//! up to [`MAX_BATCH`], into the next one
//! ([`picloud_store::Store::submit_async_many`]): their queued records in
//! one transaction, every job published to JetStream from inside it (all
//! started, then the acks awaited), the jobs whose publish failed written
//! to the outbox instead. One fsync and one round of publishes for the
//! batch instead of one per call; the guarantees are the single
//! submission's ("Accepting an async call" in docs/ARCHITECTURE.md): the
//! 202s are sent only once the transaction committed, and a database error
//! refuses every call of the batch, none of which was stored.
//!
//! A submission with an `Idempotency-Key` goes alone
//! ([`crate::effects`]): its key's lock and lookup answer for it only.

use std::sync::Arc;

use picloud_bus::Bus;
use picloud_core::{AsyncAnswer, InvocationRecord, Job};
use picloud_store::Store;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::commits::next_batch;

/// Submissions per transaction at most.
pub const MAX_BATCH: usize = 64;
/// Submission transactions in flight per manager: four accepted ~20 %
/// more calls per second than two on two cores (docs/PERFORMANCE.md,
/// "Session 13"); each holds one of the store's connections while open.
pub const PIPELINES: usize = 4;

struct Pending {
    queued: InvocationRecord,
    job: Job,
    reply: oneshot::Sender<AsyncAnswer>,
}

/// The queue the request handlers put submissions in.
#[derive(Clone)]
pub struct Submitter {
    queue: mpsc::Sender<Pending>,
}

impl Submitter {
    /// Starts [`PIPELINES`] pipelines; they end when every `Submitter`
    /// clone is dropped and the queue is drained (await the returned
    /// future for that).
    pub fn start(store: Store, bus: Bus) -> (Self, impl Future<Output = ()>) {
        let (queue, rx) = mpsc::channel::<Pending>(MAX_BATCH * 16);
        let rx = Arc::new(Mutex::new(rx));
        let pipelines = (0..PIPELINES).map(move |_| {
            let (rx, store, bus) = (rx.clone(), store.clone(), bus.clone());
            async move {
                while let Some(batch) = next_batch(&rx, MAX_BATCH).await {
                    let accepted = accept(&store, &bus, &batch).await;
                    for p in batch {
                        let answer = match &accepted {
                            Ok(()) => AsyncAnswer::Accepted {
                                invocation_id: p.job.id,
                                existing: false,
                            },
                            Err(refused) => refused.clone(),
                        };
                        // The requester may have gone; nothing to tell.
                        let _ = p.reply.send(answer);
                    }
                }
            }
        });
        let done = futures::future::join_all(pipelines.collect::<Vec<_>>());
        (Self { queue }, async move {
            done.await;
        })
    }

    /// Accepts `job` (whose queued record is `queued`) with whatever else
    /// is queued.
    pub async fn submit(&self, queued: InvocationRecord, job: Job) -> AsyncAnswer {
        let (reply, answer) = oneshot::channel();
        let stopping = || AsyncAnswer::Refused {
            message: "the manager is stopping; retry".into(),
        };
        let pending = Pending { queued, job, reply };
        if self.queue.send(pending).await.is_err() {
            return stopping();
        }
        answer.await.unwrap_or_else(|_| stopping())
    }
}

/// One transaction for `batch`: every call accepted, or none (the
/// refusal).
async fn accept(store: &Store, bus: &Bus, batch: &[Pending]) -> Result<(), AsyncAnswer> {
    let queued: Vec<&InvocationRecord> = batch.iter().map(|p| &p.queued).collect();
    let jobs: Vec<&Job> = batch.iter().map(|p| &p.job).collect();
    let publish = async || {
        let done = bus.publish_jobs(&jobs).await;
        if let Some(e) = done.iter().find_map(|r| r.as_ref().err()) {
            tracing::warn!(error = %e, "cannot publish async jobs; queueing them in the outbox");
        }
        done.iter().map(Result::is_ok).collect()
    };
    store
        .submit_async_many(&queued, &jobs, publish)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, calls = batch.len(), "cannot record async jobs");
            AsyncAnswer::Refused {
                message: "the job could not be queued; retry".into(),
            }
        })
}
