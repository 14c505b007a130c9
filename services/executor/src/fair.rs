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
//! A script whose kv commits conflict gets a **lane**: for
//! [`CONTENDED_FOR`] after a conflict, its jobs run and commit one at a
//! time on this executor (a job whose commit conflicted takes the lane for
//! its re-runs at once). Many read-modify-writes of one key at once mostly
//! conflict and run again, and past a few in flight they spend more work
//! on re-runs than on commits (a counter's throughput collapsed when more
//! jobs were pulled at once); one at a time, each commits on its first run.
//! The lane is left again when conflicts stop, so a script whose keys are
//! disjoint keeps its concurrency.
//!
//! The cap is enforced per executor, not cluster-wide: the workers it
//! protects are this executor's, it needs no shared counter (no round trip
//! on the hot path, nothing to leak when a node dies), and adding an
//! executor adds capacity to every script alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picloud_core::Outcome;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

/// How long after a conflict a script's jobs keep to its lane.
pub const CONTENDED_FOR: Duration = Duration::from_secs(1);

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
    /// Held by the one job running and committing in the script's lane.
    lane: Arc<tokio::sync::Mutex<()>>,
    /// Until when its jobs keep to the lane (its last conflict's time plus
    /// [`CONTENDED_FOR`]).
    contended_until: Mutex<Option<Instant>>,
}

/// A script's entry, kept while held; the map forgets a script once no
/// holder is left.
struct Held {
    owner: Arc<ScriptSlots>,
    script: String,
    entry: Option<Arc<Script>>,
}

/// One of a script's slots; freed when dropped.
pub struct ScriptSlot {
    // Fields drop in order: the permit before the entry it belongs to.
    permit: Option<OwnedSemaphorePermit>,
    _held: Held,
}

/// A script's lane, taken; the next job has it once this is dropped.
pub struct Lane {
    _guard: OwnedMutexGuard<()>,
    _held: Held,
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
        let mut map = lock(&self.scripts);
        map.entry(script.to_owned())
            .or_insert_with(|| {
                Arc::new(Script {
                    slots: Arc::new(Semaphore::new(self.cap)),
                    waiting: AtomicUsize::new(0),
                    lane: Arc::new(tokio::sync::Mutex::new(())),
                    contended_until: Mutex::new(None),
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
            permit: None,
            _held: self.hold(script, entry),
        }
    }

    fn hold(self: &Arc<Self>, script: &str, entry: Arc<Script>) -> Held {
        Held {
            owner: self.clone(),
            script: script.to_owned(),
            entry: Some(entry),
        }
    }

    /// Notes that a commit of `script` conflicted: its jobs keep to its
    /// lane for [`CONTENDED_FOR`] from now.
    pub fn conflicted(self: &Arc<Self>, script: &str) {
        let entry = self.entry(script);
        *lock(&entry.contended_until) = Some(Instant::now() + CONTENDED_FOR);
        // Forgotten with the entry if nobody holds the script.
        drop(self.hold(script, entry));
    }

    /// Whether `script`'s jobs keep to its lane now.
    pub fn contended(self: &Arc<Self>, script: &str) -> bool {
        let map = lock(&self.scripts);
        map.get(script)
            .is_some_and(|e| lock(&e.contended_until).is_some_and(|until| Instant::now() < until))
    }

    /// `script`'s lane, after the job holding it (if any) is done.
    pub async fn lane(self: &Arc<Self>, script: &str) -> Lane {
        let entry = self.entry(script);
        let guard = entry.lane.clone().lock_owned().await;
        Lane {
            _guard: guard,
            _held: self.hold(script, entry),
        }
    }
}

/// A poisoned lock only means another thread panicked between two map
/// operations, which leave the map consistent: keep using it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.entry.take());
        // Forget a script nobody runs or waits for (every holder and waiter
        // keeps a clone of its entry), so the map stays as small as the set
        // of busy scripts.
        let mut map = lock(&self.owner.scripts);
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

    #[tokio::test]
    async fn a_conflict_puts_a_scripts_jobs_in_its_lane_one_at_a_time() {
        let slots = ScriptSlots::new(2, 1);
        let held = slots.take("a").await;
        assert!(!slots.contended("a"));
        slots.conflicted("a");
        assert!(slots.contended("a"));
        assert!(!slots.contended("b"), "another script is not held up");
        let first = slots.lane("a").await;
        let second = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.lane("a").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!second.is_finished(), "two jobs in one lane at once");
        drop(first);
        let second = second.await.expect("second lane");
        drop((second, held));
        // Nobody holds the script: it is forgotten, its contention too.
        assert!(slots.scripts.lock().expect("lock").is_empty());
    }
}
