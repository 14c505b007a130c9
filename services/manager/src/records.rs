//! Drains invocation records from the bus into Postgres.
//!
//! Batches are acked only after the insert commits; a failed insert leaves
//! them unacked, so JetStream redelivers them, and the insert ignores ids it
//! already has.

use std::time::Duration;

use picloud_bus::Bus;
use picloud_core::{Backoff, Shutdown};
use picloud_store::Store;

use crate::stats::Rollup;

/// Retention is enforced here, after a batch is stored, at most once a
/// minute: records only grow when invocations run, so an idle installation
/// does no pruning work (and no database transactions).
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub async fn run(store: Store, bus: Bus, rollup: Rollup, retention: Duration, shutdown: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match drain(&store, &bus, &rollup, retention, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.ceiling(), "invocation records consumer failed")
            }
        }
        if picloud_bus::pause_or_stop(&mut backoff, &shutdown).await {
            return;
        }
    }
}

/// Returns `Ok` on shutdown, `Err` when the consumer must be reopened.
async fn drain(
    store: &Store,
    bus: &Bus,
    rollup: &Rollup,
    retention: Duration,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let mut consumer = bus.record_consumer().await.map_err(|e| e.to_string())?;
    let mut pruned_at: Option<std::time::Instant> = None;
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            b = consumer.next() => b,
        };
        let batch = match batch {
            None => return Err("record consumer ended".into()),
            Some(Err(e)) => {
                // Missed heartbeats and the like: the stream recovers by itself.
                tracing::debug!(error = %e, "record consumer hiccup");
                continue;
            }
            Some(Ok(b)) => b,
        };
        match store.insert_invocations(&batch.records).await {
            Ok(_) => {
                rollup.add_records(&batch.records);
                if let Err(e) = batch.ack().await {
                    tracing::warn!(error = %e, "cannot ack invocation records; they will be redelivered");
                }
                if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                    pruned_at = Some(std::time::Instant::now());
                    match store.prune(retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "pruned old invocation records"),
                        Err(e) => tracing::warn!(error = %e, "cannot prune invocation records"),
                    }
                    if let Err(e) = store.prune_stats().await {
                        tracing::warn!(error = %e, "cannot prune stats");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, n = batch.records.len(), "cannot store invocation records; they will be redelivered");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
