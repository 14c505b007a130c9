//! Batching invocation records onto the bus.
//!
//! `record` never blocks and never fails on the hot path: records go into a
//! bounded channel; a background task gathers what is there (up to
//! [`MAX_BATCH`] records or [`MAX_BATCH_BYTES`], or whatever arrived within
//! [`LINGER`] of the first) and publishes it as one JetStream message. The
//! task ends when the last `Recorder` is dropped, after the executor has
//! drained its in-flight invocations, so their records go out too. When NATS is down it retries with
//! backoff; past the channel's capacity new records are dropped and counted
//! in the log rather than holding up scripts. A timer runs only while a batch
//! is being gathered, never when idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use picloud_bus::{Bus, RecordBatchBuf};
use picloud_core::{InvocationRecord, Shutdown};
use tokio::sync::mpsc;

pub const MAX_BATCH: usize = 256;
/// Well under NATS's default 1 MB message limit.
pub const MAX_BATCH_BYTES: usize = 512 << 10;
/// A single record's log and error are cut to fit this.
const MAX_RECORD_TEXT: usize = 192 << 10;
pub const LINGER: Duration = Duration::from_millis(20);
const CAPACITY: usize = 65_536;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<InvocationRecord>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    pub fn start(
        bus: Bus,
        shutdown: Shutdown,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let task = publish_loop(bus, rx, shutdown);
        (Self { tx, dropped }, task)
    }

    pub fn record(&self, mut r: InvocationRecord) {
        cut(&mut r.log, MAX_RECORD_TEXT);
        if let Some(e) = r.error.as_mut() {
            cut(e, MAX_RECORD_TEXT);
        }
        if self.tx.try_send(r).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "invocation record buffer full; records dropped"
                );
            }
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

async fn publish_loop(bus: Bus, mut rx: mpsc::Receiver<InvocationRecord>, shutdown: Shutdown) {
    let mut batch = RecordBatchBuf::default();
    // Wait (without a timer) for the first record of a batch; `None` once
    // every sender is gone.
    while let Some(mut first) = rx.recv().await {
        batch.push(&encode(&mut first));
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        let mut carry = None;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(mut r) => {
                        let encoded = encode(&mut r);
                        if batch.bytes_with(encoded.len() + 1) > MAX_BATCH_BYTES {
                            carry = Some(encoded);
                            break;
                        }
                        batch.push(&encoded);
                    }
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        publish(&bus, &mut batch, &shutdown).await;
        if let Some(encoded) = carry {
            batch.push(&encoded);
            publish(&bus, &mut batch, &shutdown).await;
        }
    }
}

async fn publish(bus: &Bus, batch: &mut RecordBatchBuf, shutdown: &Shutdown) {
    if batch.is_empty() {
        return;
    }
    let payload = batch.payload();
    let mut backoff = Duration::from_millis(100);
    for attempt in 1.. {
        match bus.publish_records(payload.clone()).await {
            Ok(()) => break,
            // Keep trying while the executor runs (the bounded channel caps
            // memory; new records are dropped, and counted, when it fills);
            // on shutdown, give up after a few tries.
            Err(e) if shutdown.is_cancelled() && attempt >= 3 => {
                tracing::error!(error = %e, n = batch.len(), "giving up on invocation records");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot publish invocation records");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    batch.clear();
}
