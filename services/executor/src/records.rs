//! Batching invocation records onto the bus.
//!
//! `record` never blocks and never fails on the hot path: records go into a
//! bounded channel; a background task gathers what is there (up to
//! [`MAX_BATCH`], or whatever arrived within [`LINGER`] of the first) and
//! publishes it as one JetStream message. When NATS is down it retries with
//! backoff; past the channel's capacity new records are dropped and counted
//! in the log rather than holding up scripts. A timer runs only while a batch
//! is being gathered, never when idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use picloud_bus::Bus;
use picloud_core::{InvocationRecord, Shutdown};
use tokio::sync::mpsc;

pub const MAX_BATCH: usize = 256;
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

    pub fn record(&self, r: InvocationRecord) {
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

async fn publish_loop(bus: Bus, mut rx: mpsc::Receiver<InvocationRecord>, shutdown: Shutdown) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wait (without a timer) for the first record of a batch.
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        publish(&bus, &mut batch, &shutdown).await;
    }
    // Shutdown: whatever is still buffered goes out too.
    rx.close();
    while let Some(r) = rx.recv().await {
        batch.push(r);
        if batch.len() == MAX_BATCH {
            publish(&bus, &mut batch, &shutdown).await;
        }
    }
    publish(&bus, &mut batch, &shutdown).await;
}

async fn publish(bus: &Bus, batch: &mut Vec<InvocationRecord>, shutdown: &Shutdown) {
    if batch.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(100);
    for attempt in 1.. {
        match bus.publish_records(batch).await {
            Ok(()) => break,
            Err(e) if attempt >= 8 || (shutdown.is_cancelled() && attempt >= 2) => {
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
