//! The outbox relay: publishes outbox rows to JetStream with
//! `Nats-Msg-Id` = row id and deletes them once stored.
//!
//! A kv commit's rows are published by the committer itself
//! ([`crate::commits`], with [`publish_rows`]); the relay takes them only
//! when they are still there after `PUBLISHER_GRACE` (see
//! `picloud_store::outbox`), waking for that at the next row's due time
//! while rows wait: no timer runs while the outbox is empty.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so any number of
//! managers relay side by side without publishing a row twice at once (and
//! JetStream's dedup covers a crash between publish and delete). A row
//! whose publish failed goes under a new message id
//! (`OutboxRow::message_id`). The relay
//! sleeps on `LISTEN picloud_outbox` and is woken by commits; there is no
//! periodic poll. After (re)connecting the listener it sweeps once, since
//! notifications sent while it was away are lost.

use std::time::Duration;

use picloud_bus::Bus;
use picloud_core::{Backoff, Shutdown, Uuid};
use picloud_store::{Notice, OutboxKind, OutboxRow, Store};

/// Rows claimed (and published concurrently) per round.
const BATCH: u32 = 256;

pub async fn run(store: Store, bus: Bus, shutdown: Shutdown) {
    let mut backoff = retry_timing();
    loop {
        let mut notifications = match store.outbox_notifications().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.ceiling(), "outbox relay cannot listen");
                if picloud_bus::pause_or_stop(&mut backoff, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        loop {
            // Publish everything pending (on start, after a reconnect, after
            // a notification).
            if !sweep(&store, &bus, &shutdown).await {
                return;
            }
            // Rows left to their publisher come due later: wake for them
            // unless a notification comes first.
            let due = match store.next_outbox_due().await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay cannot read the next due row");
                    Some(RECHECK)
                }
            };
            let woke = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = notifications.recv() => n,
                _ = sleep_or_never(due) => Ok(Notice::Notified),
            };
            match woke {
                Ok(Notice::Notified) => {}
                // The connection dropped: listen again, then sweep.
                Ok(Notice::Lost) | Err(_) => break,
            }
        }
    }
}

/// Publishes until the outbox is empty. `false` on shutdown.
async fn sweep(store: &Store, bus: &Bus, shutdown: &Shutdown) -> bool {
    let mut backoff = retry_timing();
    loop {
        match relay_batch(store, bus).await {
            Ok(n) if n < BATCH as usize => return true,
            Ok(_) => backoff.reset(),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.ceiling(), "outbox relay failed; retrying");
                if picloud_bus::pause_or_stop(&mut backoff, shutdown).await {
                    return false;
                }
            }
        }
        if shutdown.is_cancelled() {
            return false;
        }
    }
}

/// The wait for a row due after `due` (a little after, so that it is due
/// by then); forever when there is none.
async fn sleep_or_never(due: Option<Duration>) {
    match due {
        // At least 100 ms: rows due now that the sweep left are claimed by
        // another relay, and are not to be polled for in a tight loop.
        Some(d) => tokio::time::sleep((d + Duration::from_millis(10)).max(RECHECK_FLOOR)).await,
        None => std::future::pending().await,
    }
}

/// The shortest wait for a row due later.
const RECHECK_FLOOR: Duration = Duration::from_millis(100);

/// How soon to look again when the next due row could not be read.
const RECHECK: Duration = Duration::from_secs(1);

/// Claims one batch of due rows, publishes it, deletes what JetStream
/// stored. Returns how many rows were claimed; `Err` if any could not be
/// published.
async fn relay_batch(store: &Store, bus: &Bus) -> Result<usize, String> {
    let claim = store
        .claim_due_outbox(BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let claimed = claim.rows.len();
    if claimed == 0 {
        claim.release().await.map_err(|e| e.to_string())?;
        return Ok(0);
    }
    let (published, first_error) = publish_rows(bus, &claim.rows).await;
    claim.finish(&published).await.map_err(|e| e.to_string())?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(claimed),
    }
}

/// Publishes `rows` (all started before any ack is awaited; each job's
/// script rung once); the ids JetStream stored, and the first error if any
/// row was not.
pub async fn publish_rows(bus: &Bus, rows: &[OutboxRow]) -> (Vec<Uuid>, Option<String>) {
    let items = rows
        .iter()
        .map(|row| (subject(bus, row), row.message_id(), payload(row)))
        .collect();
    let done = bus.publish_durable_many(items).await;
    let mut published = Vec::with_capacity(rows.len());
    let mut first_error = None;
    for (row, stored) in rows.iter().zip(done) {
        match stored {
            Ok(()) => published.push(row.id),
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    (published, first_error)
}

fn subject(bus: &Bus, row: &OutboxRow) -> String {
    match row.kind {
        OutboxKind::Job => bus.names().job_subject(&row.target),
        OutboxKind::Event => bus.names().event_subject(&row.target),
    }
}

fn payload(row: &OutboxRow) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(&row.payload).expect("JSON values serialise"))
}

/// 100 ms, doubling up to 10 s (with jitter).
fn retry_timing() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
}
