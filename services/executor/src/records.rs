//! Batching invocation records onto the bus.
//!
//! `record` never blocks and never fails on the hot path: it queues the
//! record in a bounded [`Batcher`], and the publisher sends what gathered as
//! JetStream messages of up to [`MAX_BATCH`] records or [`MAX_BATCH_BYTES`].
//! The task ends when the last `Recorder` is dropped, after the executor
//! has drained its in-flight invocations, so their records go out too. When
//! NATS is down it retries with backoff; past the buffer's capacity new
//! records are dropped and counted in the log rather than holding up
//! scripts.
//!
//! [`Recorder::record_stored`] is the durable form, for the record of a job
//! that needs no commit (no kv, no emits): the caller learns when the batch
//! holding it is stored in JetStream and acknowledges the job only then. So
//! such a job costs a share of one record batch instead of a commit round
//! trip through a manager and Postgres, and is no less durable: its record
//! is in the `{P}_RECORDS` stream before the job leaves `{P}_JOBS`, and the
//! managers store it idempotently by the invocation id.

use std::sync::Arc;
use std::time::Duration;

use picloud_bus::{Bus, RecordBatchBuf};
use picloud_core::{Backoff, InvocationRecord, Shutdown};
use tokio::sync::oneshot;

use crate::batch::{Batcher, Closer};

pub const MAX_BATCH: usize = 1024;
/// Well under NATS's default 1 MB message limit.
pub const MAX_BATCH_BYTES: usize = 512 << 10;
/// A single record's log and error are cut to fit this.
const MAX_RECORD_TEXT: usize = 192 << 10;
const CAPACITY: usize = 65_536;

/// A record, and who waits for it to be stored.
struct Entry {
    record: InvocationRecord,
    stored: Option<oneshot::Sender<()>>,
}

type Buffer = Batcher<Entry>;

#[derive(Clone)]
pub struct Recorder {
    buffer: Arc<Closer<Entry>>,
}

impl Recorder {
    pub fn start(
        bus: Bus,
        shutdown: Shutdown,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let buffer = Arc::new(Buffer::new(CAPACITY, "invocation records"));
        let task = publish_loop(bus, buffer.clone(), shutdown);
        let recorder = Self {
            buffer: Arc::new(Closer(buffer)),
        };
        (recorder, task)
    }

    /// Sends `r` with the next batch; never waits.
    pub fn record(&self, r: InvocationRecord) {
        self.buffer.0.push(Entry {
            record: trimmed(r),
            stored: None,
        });
    }

    /// Sends `r` with the next batch (which goes out sooner for it) and
    /// resolves once that batch is stored in JetStream: `true`, or `false`
    /// when it cannot be (the buffer is full, or the executor gave up on
    /// the batch while stopping). A `false` record may still be stored.
    pub fn record_stored(&self, r: InvocationRecord) -> impl Future<Output = bool> + use<> {
        let (tx, rx) = oneshot::channel();
        self.buffer.0.push_urgent(Entry {
            record: trimmed(r),
            stored: Some(tx),
        });
        async move { rx.await.is_ok() }
    }
}

fn trimmed(mut r: InvocationRecord) -> InvocationRecord {
    cut(&mut r.log, MAX_RECORD_TEXT);
    if let Some(e) = r.error.as_mut() {
        cut(e, MAX_RECORD_TEXT);
    }
    r
}

fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str("\n[truncated]");
    }
}

/// The record, encoded. A record whose text escapes badly (control
/// characters grow six-fold in JSON) is cut further until it fits, so no
/// batch can exceed the bus's message limit.
fn encode(r: &mut InvocationRecord) -> Vec<u8> {
    let mut encoded = RecordBatchBuf::encode(r);
    let mut room = MAX_RECORD_TEXT;
    while encoded.len() > MAX_BATCH_BYTES / 2 && room > 1024 {
        room /= 4;
        cut(&mut r.log, room);
        if let Some(e) = r.error.as_mut() {
            cut(e, room);
        }
        encoded = RecordBatchBuf::encode(r);
    }
    encoded
}

async fn publish_loop(bus: Bus, buffer: Arc<Buffer>, shutdown: Shutdown) {
    let mut batch = RecordBatchBuf::default();
    // Who waits for the records in `batch`.
    let mut waiting = Vec::new();
    let mut taken = Vec::new();
    while buffer.next_batch(&mut taken).await {
        for mut entry in taken.drain(..) {
            let encoded = encode(&mut entry.record);
            if batch.len() >= MAX_BATCH || batch.bytes_with(encoded.len() + 1) > MAX_BATCH_BYTES {
                publish(&bus, &mut batch, &mut waiting, &shutdown).await;
            }
            batch.push(&encoded);
            waiting.extend(entry.stored);
        }
        publish(&bus, &mut batch, &mut waiting, &shutdown).await;
    }
}

/// Publishes `batch` and tells `waiting` it is stored (dropping them
/// untold when it is given up).
async fn publish(
    bus: &Bus,
    batch: &mut RecordBatchBuf,
    waiting: &mut Vec<oneshot::Sender<()>>,
    shutdown: &Shutdown,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    let payload = batch.finish();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    for attempt in 1.. {
        match bus.publish_records(payload.clone()).await {
            Ok(()) => {
                for stored in waiting.drain(..) {
                    // The job may have gone (its executor is stopping).
                    let _ = stored.send(());
                }
                break;
            }
            // Keep trying while the executor runs (the bounded buffer caps
            // memory; new records are dropped, and counted, when it fills);
            // on shutdown, give up after a few tries.
            Err(e) if shutdown.is_cancelled() && attempt >= 3 => {
                tracing::error!(error = %e, n, "giving up on invocation records");
                waiting.clear();
                break;
            }
            Err(e) => {
                let pause = backoff.next_pause();
                tracing::warn!(error = %e, retry_in = ?pause, "cannot publish invocation records");
                tokio::time::sleep(pause).await;
            }
        }
    }
}
