//! Per-script concurrency caps: one script cannot take every worker.
//!
//! Each executor lets at most `cap` invocations of one script run (or wait
//! for a worker) at once; the default is one less than its workers, so
//! however hard one script is called, another script always finds a worker.
//! Past the cap an invocation waits in its script's own queue, here, where it
//! holds no worker and no place in the pool's queue: a sync call until its
//! deadline, an async job (sending progress acks meanwhile) until a slot
//! frees. A script's queue is bounded too (`max_waiting` sync calls): a sync
//! call that finds it full is answered at once with [`Outcome::Busy`] (the
//! gateway's 429 + `Retry-After`), so one script's flood cannot use up the
//! executor's in-flight capacity that other scripts' calls need.
//!
//! The cap is enforced per executor, not cluster-wide: the workers it
//! protects are this executor's, it needs no shared counter (no round trip
//! on the hot path, nothing to leak when a node dies), and adding an
//! executor adds capacity to every script alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use picloud_core::Outcome;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a caller past the cap is told to wait before trying again, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The running (or queued) invocations of every script, each capped.
pub struct ScriptSlots {
    cap: usize,
    max_waiting: usize,
    scripts: Mutex<HashMap<String, Arc<Script>>>,
}

/// One script's slots and the sync calls waiting for one.
struct Script {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// One of a script's slots; freed when dropped.
pub struct ScriptSlot {
    owner: Arc<ScriptSlots>,
    script: String,
    entry: Option<Arc<Script>>,
    permit: Option<OwnedSemaphorePermit>,
}

/// Why a sync call got no slot.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// The script's queue is full: answer at once ([`busy`]).
    QueueFull,
    /// The call's deadline passed while it waited.
    Expired,
}

impl ScriptSlots {
    /// `cap` runs per script; at most `max_waiting` sync calls of one script
    /// wait for a slot.
    pub fn new(cap: usize, max_waiting: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            max_waiting,
            scripts: Mutex::new(HashMap::new()),
        })
    }

    /// How many invocations of one script may run at once.
    pub fn cap(&self) -> usize {
        self.cap
    }

    fn entry(&self, script: &str) -> Arc<Script> {
        // A poisoned lock only means another thread panicked between two
        // map operations, which leave the map consistent: keep using it.
        let mut map = self.scripts.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(script.to_owned())
            .or_insert_with(|| {
                Arc::new(Script {
                    slots: Arc::new(Semaphore::new(self.cap)),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// A slot for `script` now, or `None` when all its slots are taken.
    pub fn try_take(self: &Arc<Self>, script: &str) -> Option<ScriptSlot> {
        let entry = self.entry(script);
        let mut slot = self.slot(script, entry.clone());
        slot.permit = Some(entry.slots.clone().try_acquire_owned().ok()?);
        Some(slot)
    }

    /// A slot for a sync call of `script`: at once when one is free,
    /// otherwise after waiting in the script's queue until `deadline`.
    pub async fn take_by(
        self: &Arc<Self>,
        script: &str,
        deadline: Instant,
    ) -> Result<ScriptSlot, NoSlot> {
        let entry = self.entry(script);
        let mut slot = self.slot(script, entry.clone());
        if let Ok(permit) = entry.slots.clone().try_acquire_owned() {
            slot.permit = Some(permit);
            return Ok(slot);
        }
        if entry.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            entry.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(NoSlot::QueueFull);
        }
        let waited =
            tokio::time::timeout_at(deadline.into(), entry.slots.clone().acquire_owned()).await;
        entry.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            // The semaphore is never closed.
            Ok(permit) => {
                slot.permit = permit.ok();
                Ok(slot)
            }
            Err(_) => Err(NoSlot::Expired),
        }
    }

    /// A slot for `script`, waiting behind that script's other invocations
    /// for as long as it takes (async jobs).
    pub async fn take(self: &Arc<Self>, script: &str) -> ScriptSlot {
        let entry = self.entry(script);
        let mut slot = self.slot(script, entry.clone());
        // The semaphore is never closed.
        slot.permit = entry.slots.clone().acquire_owned().await.ok();
        slot
    }

    fn slot(self: &Arc<Self>, script: &str, entry: Arc<Script>) -> ScriptSlot {
        ScriptSlot {
            owner: self.clone(),
            script: script.to_owned(),
            entry: Some(entry),
            permit: None,
        }
    }
}

impl Drop for ScriptSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        drop(self.entry.take());
        // Forget a script nobody runs or waits for (every holder and waiter
        // keeps a clone of its entry), so the map stays as small as the set
        // of busy scripts.
        let mut map = self.owner.scripts.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.script)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            map.remove(&self.script);
        }
    }
}

/// The answer to a sync call of a script whose queue is full.
pub fn busy() -> Outcome {
    Outcome::Busy {
        message: "this script has as many calls running and waiting as it may; retry shortly"
            .into(),
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn past_the_cap_a_call_waits_in_its_scripts_queue_and_others_do_not() {
        let slots = ScriptSlots::new(1, 1);
        let soon = || Instant::now() + Duration::from_millis(50);
        let a = slots.take_by("a", soon()).await.expect("first slot");
        // Another script is not held up by `a`.
        let b = slots.take_by("b", soon()).await.expect("another script");
        // A second call of `a` waits, and gives up at its deadline.
        assert_eq!(
            slots.take_by("a", soon()).await.err(),
            Some(NoSlot::Expired)
        );
        // While one waits, the queue (of one) is full.
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move {
                slots
                    .take_by("a", Instant::now() + Duration::from_secs(10))
                    .await
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            slots.take_by("a", soon()).await.err(),
            Some(NoSlot::QueueFull)
        );
        // Freeing the slot hands it to the waiter.
        drop(a);
        assert!(waiter.await.expect("waiter"));
        drop(b);
        assert!(slots.scripts.lock().expect("lock").is_empty());
    }
}
