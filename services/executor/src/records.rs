//! Batching invocation records onto the bus.
//!
//! `record` never blocks and never fails on the hot path: it appends to a
//! bounded buffer, and only the record that finds the buffer empty wakes the
//! publisher. The publisher then lets records gather for [`LINGER`], takes
//! them all and publishes them as JetStream messages of up to [`MAX_BATCH`]
//! records or [`MAX_BATCH_BYTES`]. So under load a record costs a lock and a
//! push, not a task wake-up (which, per invocation, cost more than the
//! record itself). The task ends when the last `Recorder` is dropped, after
//! the executor has drained its in-flight invocations, so their records go
//! out too. When NATS is down it retries with backoff; past the buffer's
//! capacity new records are dropped and counted in the log rather than
//! holding up scripts. A timer runs only while a batch is being gathered,
//! never when idle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picloud_bus::{Bus, RecordBatchBuf};
use picloud_core::{InvocationRecord, Shutdown};
use tokio::sync::Notify;

pub const MAX_BATCH: usize = 1024;
/// Well under NATS's default 1 MB message limit.
pub const MAX_BATCH_BYTES: usize = 512 << 10;
/// A single record's log and error are cut to fit this.
const MAX_RECORD_TEXT: usize = 192 << 10;
pub const LINGER: Duration = Duration::from_millis(20);
const CAPACITY: usize = 65_536;

/// What the recorders and the publisher share.
#[derive(Default)]
struct Buffer {
    records: Mutex<Vec<InvocationRecord>>,
    /// Signalled by the record that finds the buffer empty, and on close.
    ready: Notify,
    closed: AtomicBool,
    dropped: AtomicU64,
}

impl Buffer {
    /// Swaps the gathered records into `out`, an empty vector whose
    /// capacity the recorders then push into (no regrowth per batch under
    /// their lock).
    fn take_into(&self, out: &mut Vec<InvocationRecord>) {
        std::mem::swap(
            &mut *self.records.lock().unwrap_or_else(|e| e.into_inner()),
            out,
        );
    }
}

/// Closes the buffer when the last [`Recorder`] goes.
struct Closer(Arc<Buffer>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.ready.notify_one();
    }
}

#[derive(Clone)]
pub struct Recorder {
    buffer: Arc<Closer>,
}

impl Recorder {
    pub fn start(
        bus: Bus,
        shutdown: Shutdown,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let buffer = Arc::new(Buffer::default());
        let task = publish_loop(bus, buffer.clone(), shutdown);
        let recorder = Self {
            buffer: Arc::new(Closer(buffer)),
        };
        (recorder, task)
    }

    pub fn record(&self, mut r: InvocationRecord) {
        cut(&mut r.log, MAX_RECORD_TEXT);
        if let Some(e) = r.error.as_mut() {
            cut(e, MAX_RECORD_TEXT);
        }
        let buffer = &self.buffer.0;
        let mut records = buffer.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= CAPACITY {
            drop(records);
            let n = buffer.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "invocation record buffer full; records dropped"
                );
            }
            return;
        }
        records.push(r);
        let first = records.len() == 1;
        drop(records);
        if first {
            buffer.ready.notify_one();
        }
    }
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
    let mut taken = Vec::new();
    loop {
        // Wait (without a timer) for the first record of a batch. A signal
        // given while nobody waits is kept, so none is lost.
        loop {
            let empty = buffer
                .records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            if !empty {
                break;
            }
            if buffer.closed.load(Ordering::Acquire) {
                return;
            }
            buffer.ready.notified().await;
        }
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        // On close, whatever is there goes out at once. (A signal from a
        // record that came while the last batch was being published only
        // means "not empty": keep lingering.)
        while !buffer.closed.load(Ordering::Acquire) {
            tokio::select! {
                _ = &mut linger => break,
                _ = buffer.ready.notified() => {}
            }
        }
        buffer.take_into(&mut taken);
        for mut r in taken.drain(..) {
            let encoded = encode(&mut r);
            if batch.len() >= MAX_BATCH || batch.bytes_with(encoded.len() + 1) > MAX_BATCH_BYTES {
                publish(&bus, &mut batch, &shutdown).await;
            }
            batch.push(&encoded);
        }
        publish(&bus, &mut batch, &shutdown).await;
    }
}

async fn publish(bus: &Bus, batch: &mut RecordBatchBuf, shutdown: &Shutdown) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len();
    let payload = batch.finish();
    let mut backoff = Duration::from_millis(100);
    for attempt in 1.. {
        match bus.publish_records(payload.clone()).await {
            Ok(()) => break,
            // Keep trying while the executor runs (the bounded buffer caps
            // memory; new records are dropped, and counted, when it fills);
            // on shutdown, give up after a few tries.
            Err(e) if shutdown.is_cancelled() && attempt >= 3 => {
                tracing::error!(error = %e, n, "giving up on invocation records");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot publish invocation records");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
