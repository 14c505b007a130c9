//! Per-script concurrency caps: one script cannot take every worker.
//!
//! Each executor lets at most `script_slots` invocations of one script run
//! (or wait for a worker) at once; the default is one less than its workers,
//! so however hard one script is called, another script always finds a
//! worker. A sync call past the cap is answered at once with
//! [`Outcome::Busy`] (the gateway's 429 + `Retry-After`); an async job waits
//! in its script's own queue here, sending progress acks meanwhile.
//!
//! The cap is enforced per executor, not cluster-wide: the workers it
//! protects are this executor's, it needs no shared counter (no round trip
//! on the hot path, nothing to leak when a node dies), and adding an
//! executor adds capacity to every script alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use picloud_core::Outcome;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a caller past the cap is told to wait before trying again, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The running (or queued) invocations of every script, each capped.
pub struct ScriptSlots {
    cap: usize,
    scripts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One of a script's slots; freed when dropped.
pub struct ScriptSlot {
    owner: Arc<ScriptSlots>,
    script: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl ScriptSlots {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            scripts: Mutex::new(HashMap::new()),
        })
    }

    fn semaphore(&self, script: &str) -> Arc<Semaphore> {
        // A poisoned lock only means another thread panicked between two
        // map operations, which leave the map consistent: keep using it.
        let mut map = self.scripts.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(script.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cap)))
            .clone()
    }

    /// A slot for `script` now, or `None` when it is at its cap.
    pub fn try_take(self: &Arc<Self>, script: &str) -> Option<ScriptSlot> {
        let permit = self.semaphore(script).try_acquire_owned().ok();
        let slot = self.slot(script, permit);
        slot.permit.is_some().then_some(slot)
    }

    /// A slot for `script`, waiting behind that script's other invocations.
    pub async fn take(self: &Arc<Self>, script: &str) -> ScriptSlot {
        // The semaphore is never closed.
        let permit = self.semaphore(script).acquire_owned().await.ok();
        self.slot(script, permit)
    }

    fn slot(self: &Arc<Self>, script: &str, permit: Option<OwnedSemaphorePermit>) -> ScriptSlot {
        ScriptSlot {
            owner: self.clone(),
            script: script.to_owned(),
            permit,
        }
    }
}

impl Drop for ScriptSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        // Forget a script nobody runs or waits for (every holder and waiter
        // keeps a clone of its semaphore), so the map stays as small as the
        // set of busy scripts.
        let mut map = self.owner.scripts.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.script)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            map.remove(&self.script);
        }
    }
}

/// The answer to a sync call of a script at its cap.
pub fn busy() -> Outcome {
    Outcome::Busy {
        message: "this script is running as many invocations as it may; retry shortly".into(),
        retry_after_secs: RETRY_AFTER_SECS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_script_at_its_cap_is_refused_and_others_are_not() {
        let slots = ScriptSlots::new(1);
        let a = slots.try_take("a").expect("first slot");
        assert!(slots.try_take("a").is_none());
        let b = slots.try_take("b").expect("another script");
        drop(a);
        let again = slots.try_take("a").expect("freed");
        drop((again, b));
        assert!(slots.scripts.lock().unwrap().is_empty());
    }
}
