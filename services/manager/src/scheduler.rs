//! The cron scheduler: fires due schedules through the outbox.
//!
//! Every manager runs one; [`Store::fire_due_schedules`] makes each instant
//! fire exactly once however many run. A scheduler sleeps until the
//! earliest `next_fire_at` or a change notification (`LISTEN
//! picloud_schedules`), whichever comes first, and sweeps once whenever its
//! listener (re)connects, since notifications sent meanwhile are lost.
//! There is no fixed tick: with nothing due it makes no database round trip.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use picloud_core::schedule::PlanReason;
use picloud_core::{Backoff, Shutdown};
use picloud_store::schedules::{Action, Handled, Sweep};
use picloud_store::{Notice, Store};
use tokio::sync::Notify;

/// Schedules claimed per transaction.
const BATCH: u32 = 100;

/// When another scheduler holds due rows (it is firing them right now), look
/// again after this long: it normally commits within milliseconds, and if it
/// died, its rows unlock and are ours.
const HELD_RETRY: Duration = Duration::from_millis(250);

/// The longest single sleep. Waiting is measured on the monotonic clock,
/// which stops while a machine is suspended and does not follow wall-clock
/// steps; waking at least this often to re-read the wall clock (no database
/// round trip) bounds how late that can make a firing.
const MAX_SLEEP: Duration = Duration::from_secs(60);

pub async fn run(store: Store, shutdown: Shutdown) {
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(listen(store.clone(), wake.clone(), shutdown.clone()));
    let mut backoff = retry_timing();
    // The listener's first connection wakes the first sweep, so no change
    // can fall between a sweep and the start of listening.
    let mut until: Option<DateTime<Utc>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = sleep_until(until) => {}
        }
        until = match sweep(&store).await {
            Ok(next) => {
                backoff.reset();
                next
            }
            Err(e) => {
                let retry = backoff.next_pause();
                tracing::warn!(error = %e, retry_in = ?retry, "scheduler sweep failed");
                Some(Utc::now() + retry)
            }
        };
    }
    let _ = listener.await;
}

/// Claims until nothing more is due for this scheduler; returns when to
/// look next (`None`: only on a notification).
async fn sweep(store: &Store) -> Result<Option<DateTime<Utc>>, picloud_store::StoreError> {
    loop {
        let now = Utc::now();
        let Sweep {
            handled,
            again,
            next_due,
        } = store.fire_due_schedules(now, BATCH).await?;
        for h in &handled {
            log(h, now);
        }
        if again {
            continue;
        }
        return Ok(next_due.map(|next| if next <= now { now + HELD_RETRY } else { next }));
    }
}

fn log(h: &Handled, now: DateTime<Utc>) {
    let (id, script) = (h.schedule_id, h.script.as_str());
    match &h.action {
        Action::Fired {
            instant,
            invocation_id,
            reason,
        } => {
            picloud_metrics::global().cron_lateness((now - *instant).to_std().unwrap_or_default());
            tracing::info!(
            schedule = %id,
            script,
            scheduled_at = %picloud_core::time::rfc3339(instant),
            invocation = %invocation_id,
            late_ms = (now - *instant).num_milliseconds(),
            ?reason,
            "schedule fired"
            )
        }
        // A long-running script on a short schedule overlaps every time.
        Action::Passed {
            reason: PlanReason::Overlapping,
        } => tracing::debug!(schedule = %id, script, "previous firing still runs; passed over"),
        Action::Passed { reason } => {
            tracing::info!(schedule = %id, script, ?reason, "schedule passed over due instants")
        }
        Action::ScriptMissing { instant } => tracing::warn!(
            schedule = %id,
            script,
            scheduled_at = %picloud_core::time::rfc3339(instant),
            "schedule did not fire: its script is deleted"
        ),
        Action::Broken { error } => tracing::error!(
            schedule = %id,
            script,
            %error,
            "schedule stopped: its stored expression no longer parses; edit it"
        ),
    }
}

/// Wakes the scheduler on every notification, and once after every
/// (re)connection.
async fn listen(store: Store, wake: Arc<Notify>, shutdown: Shutdown) {
    let mut backoff = retry_timing();
    loop {
        let mut notifications = match store.schedule_notifications().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.ceiling(), "scheduler cannot listen");
                if picloud_bus::pause_or_stop(&mut backoff, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        wake.notify_one();
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = notifications.recv() => r,
            };
            match received {
                Ok(Notice::Notified) => wake.notify_one(),
                // Lost: the next `recv` reconnects and listens again; what
                // was sent meanwhile is gone, so sweep.
                Ok(Notice::Lost) => wake.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler listener lost; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Sleeps until the wall clock reaches `until` (forever for `None`).
async fn sleep_until(until: Option<DateTime<Utc>>) {
    let Some(until) = until else {
        return std::future::pending().await;
    };
    loop {
        let Ok(left) = (until - Utc::now()).to_std() else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}

/// 200 ms, doubling up to 10 s (with jitter).
fn retry_timing() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleep_until_waits_for_the_wall_clock() {
        // Past and present instants return at once; `None` never does.
        sleep_until(Some(Utc::now() - chrono::TimeDelta::seconds(1))).await;
        sleep_until(Some(Utc::now())).await;
        let never = tokio::time::timeout(Duration::from_secs(3600), sleep_until(None)).await;
        assert!(never.is_err());
    }
}
