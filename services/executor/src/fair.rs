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
//! A waiting invocation is a closure ready to run ([`Waiter`]), sync and
//! async in one first-come-first-served queue. The run that frees a slot
//! hands it to the first of them and starts it on the pool itself (see
//! [`Pool::hand_off`]), on the same worker when nothing else is queued:
//! with a cap of 1 (two workers) one script's runs follow each other with
//! no task to wake in between, which was the bound of its throughput.
//!
//! A script whose kv commits conflict is slowed in two steps
//! ([`Contention`]), each kept for [`CONTENDED_FOR`] after its last
//! conflict:
//! 1. **One run at a time** on this executor, whatever the cap: runs of it
//!    here then read the writes of the runs before them from the overlay
//!    ([`crate::overlay`]) while those commit, and do not conflict with
//!    each other (two runs side by side would read the same value and
//!    write over each other's increments: with a cap of 2, a counter fell
//!    from ~2,000 to 42 increments/s, nearly all of it re-runs and the
//!    lane).
//! 2. **The lane**, when its commits still conflict while it runs one at a
//!    time (runs of it on other executors write the same keys): its jobs
//!    run *and commit* one at a time here (a job whose commit conflicted
//!    takes the lane for its re-runs at once). Many read-modify-writes in
//!    flight at once then spend more work on re-runs than on commits (a
//!    counter's throughput collapsed when more jobs were pulled at once);
//!    one at a time, each commits on its first run.
//!
//! Both are left again when conflicts stop, so a script whose keys are
//! disjoint keeps its concurrency.
//!
//! The cap is enforced per executor, not cluster-wide: the workers it
//! protects are this executor's, it needs no shared counter (no round trip
//! on the hot path, nothing to leak when a node dies), and adding an
//! executor adds capacity to every script alike.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picloud_core::Outcome;
use picloud_sandbox::Sandbox;
use tokio::sync::OwnedMutexGuard;
use tokio::task::AbortHandle;

use crate::pool::{Job, Pool};

/// How long after a conflict a script's jobs keep to its lane.
pub const CONTENDED_FOR: Duration = Duration::from_secs(1);

/// What a caller past the cap is told to wait before trying again, in seconds.
pub const RETRY_AFTER_SECS: u32 = 1;

/// The running (or queued) invocations of every script, each capped.
pub struct ScriptSlots {
    cap: usize,
    max_waiting: usize,
    /// Where a waiting run goes once it has its slot.
    pool: Pool,
    scripts: Mutex<HashMap<String, Arc<Script>>>,
}

/// One script's slots, the runs waiting for one, and its lane.
struct Script {
    turns: Mutex<Turns>,
    /// Held by the one job running and committing in the script's lane.
    lane: Arc<tokio::sync::Mutex<()>>,
}

/// How a script's jobs run on this executor now, after its commits
/// conflicted (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contention {
    /// No recent conflict: up to the cap at once.
    Free,
    /// One run at a time, their commits in flight together.
    OneRun,
    /// One job at a time, run and commit, in the script's lane.
    Lane,
}

/// Who runs and who waits, changed only under the script's lock: a slot is
/// freed by handing it to the first waiting run, so a run never waits
/// while a slot is free.
#[derive(Default)]
struct Turns {
    /// Slots taken (at most the cap).
    running: usize,
    /// Runs waiting for a slot, first come first served, sync and async.
    waiting: VecDeque<Waiting>,
    /// How many of `waiting` are sync calls (bounded by `max_waiting`).
    sync_waiting: usize,
    /// Names the next waiting run.
    next_id: u64,
    /// Until when it runs one at a time (its last conflict plus
    /// [`CONTENDED_FOR`]).
    one_run_until: Option<Instant>,
    /// Until when its jobs keep to the lane (its last conflict while it
    /// ran one at a time, plus [`CONTENDED_FOR`]).
    lane_until: Option<Instant>,
}

impl Turns {
    fn contention(&self, now: Instant) -> Contention {
        let until = |t: Option<Instant>| t.is_some_and(|t| now < t);
        if until(self.lane_until) {
            Contention::Lane
        } else if until(self.one_run_until) {
            Contention::OneRun
        } else {
            Contention::Free
        }
    }

    /// How many of its runs may run at once now, of `cap`.
    fn cap(&self, cap: usize) -> usize {
        let contended = self.one_run_until.is_some() || self.lane_until.is_some();
        if contended && self.contention(Instant::now()) != Contention::Free {
            1
        } else {
            cap
        }
    }
}

/// A run waiting for its script's slot.
struct Waiting {
    id: u64,
    run: Waiter,
    /// A sync call's end at its deadline, cancelled when its turn comes.
    expiry: Option<AbortHandle>,
    /// Keeps the script's entry (and becomes the slot's).
    held: Held,
}

/// What a run is given: its slot on a worker, or (a sync call) the news
/// that it will not run.
pub enum Turn<'a> {
    Run(ScriptSlot, &'a mut Sandbox),
    Refused(NoSlot),
}

/// A run that may have to wait for its script's slot.
pub type Waiter = Box<dyn for<'a> FnOnce(Turn<'a>) + Send>;

/// A script's entry, kept while held; the map forgets a script once no
/// holder is left.
struct Held {
    owner: Arc<ScriptSlots>,
    script: String,
    entry: Option<Arc<Script>>,
}

/// One of a script's slots, held by the run it was given to; dropping it
/// hands it to the script's first waiting run (or frees it).
pub struct ScriptSlot {
    held: Held,
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
    /// wait for a slot; waiting runs are started on `pool`.
    pub fn new(cap: usize, max_waiting: usize, pool: Pool) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            max_waiting,
            pool,
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
                    turns: Mutex::new(Turns::default()),
                    lane: Arc::new(tokio::sync::Mutex::new(())),
                })
            })
            .clone()
    }

    /// A slot of `script` for `run` now: the caller starts it. Otherwise
    /// `None`, and `run` waits behind the script's other waiting runs, to be
    /// started on the pool by whoever frees a slot. A sync call passes its
    /// `deadline`: at most `max_waiting` of them wait (one more is told
    /// [`NoSlot::QueueFull`] at once), and one still waiting at its
    /// deadline is told [`NoSlot::Expired`] then (this needs a tokio
    /// runtime). An async job (`None`) waits as long as it takes.
    pub fn admit(
        self: &Arc<Self>,
        script: &str,
        deadline: Option<Instant>,
        run: Waiter,
    ) -> Option<(ScriptSlot, Waiter)> {
        let entry = self.entry(script);
        let held = self.hold(script, entry.clone());
        let mut turns = lock(&entry.turns);
        if turns.running < turns.cap(self.cap) {
            turns.running += 1;
            drop(turns);
            return Some((ScriptSlot { held }, run));
        }
        if deadline.is_some() {
            if turns.sync_waiting >= self.max_waiting {
                drop(turns);
                drop(held);
                run(Turn::Refused(NoSlot::QueueFull));
                return None;
            }
            turns.sync_waiting += 1;
        }
        let id = turns.next_id;
        turns.next_id += 1;
        let expiry = deadline.map(|deadline| {
            // Weak: a timer cancelled but not yet dropped keeps no entry.
            let entry = Arc::downgrade(&entry);
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline.into()).await;
                // (The upgraded entry is let go before the waiting run.)
                let waiting = entry.upgrade().and_then(|e| e.remove(id));
                if let Some(waiting) = waiting {
                    (waiting.run)(Turn::Refused(NoSlot::Expired));
                }
            })
            .abort_handle()
        });
        turns.waiting.push_back(Waiting {
            id,
            run,
            expiry,
            held,
        });
        None
    }

    fn hold(self: &Arc<Self>, script: &str, entry: Arc<Script>) -> Held {
        Held {
            owner: self.clone(),
            script: script.to_owned(),
            entry: Some(entry),
        }
    }

    /// Notes that a commit of `script` conflicted, of a job that started
    /// when its script's contention was `seen`: it runs one at a time for
    /// [`CONTENDED_FOR`] from now, and its jobs keep to its lane as long
    /// too if it ran one at a time already and `elsewhere` (what it read
    /// was written by another executor, not a write in flight here that
    /// failed).
    pub fn conflicted(self: &Arc<Self>, script: &str, seen: Contention, elsewhere: bool) {
        let entry = self.entry(script);
        let until = Some(Instant::now() + CONTENDED_FOR);
        {
            let mut turns = lock(&entry.turns);
            turns.one_run_until = until;
            if seen != Contention::Free && elsewhere {
                turns.lane_until = until;
            }
        }
        // Forgotten with the entry if nobody holds the script.
        drop(self.hold(script, entry));
    }

    /// How `script`'s jobs run now.
    pub fn contention(self: &Arc<Self>, script: &str) -> Contention {
        let map = lock(&self.scripts);
        map.get(script).map_or(Contention::Free, |e| {
            lock(&e.turns).contention(Instant::now())
        })
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

impl Script {
    /// Takes the waiting run `id` out of the queue (its deadline passed),
    /// unless its turn came first.
    fn remove(&self, id: u64) -> Option<Waiting> {
        let mut turns = lock(&self.turns);
        let at = turns.waiting.iter().position(|w| w.id == id)?;
        let waiting = turns.waiting.remove(at)?;
        turns.sync_waiting -= 1;
        Some(waiting)
    }

    /// A slot is done with: the first waiting run gets it, or it is free
    /// (or it is given up, when the script's cap is lower now than when
    /// the slot was taken). When its cap is higher now (its contention
    /// ended), the runs that may start beside it are handed slots too.
    fn next(&self, cap: usize) -> Vec<Waiting> {
        let mut turns = lock(&self.turns);
        let cap = turns.cap(cap);
        // This slot is one of `running`: give it up, or to the first.
        turns.running -= 1;
        let mut next = Vec::new();
        while turns.running < cap
            && let Some(waiting) = turns.waiting.pop_front()
        {
            if let Some(expiry) = &waiting.expiry {
                expiry.abort();
                turns.sync_waiting -= 1;
            }
            turns.running += 1;
            next.push(waiting);
        }
        next
    }
}

impl Drop for ScriptSlot {
    /// Hands the slot to the script's first waiting run, on the pool (on
    /// this very worker when nothing else is queued: see
    /// [`Pool::hand_off`]), so no task has to be woken in between.
    fn drop(&mut self) {
        let Some(entry) = &self.held.entry else {
            return;
        };
        let mut next = entry.next(self.held.owner.cap).into_iter();
        let Some(first) = next.next() else { return };
        let pool = self.held.owner.pool.clone();
        let slot = ScriptSlot { held: first.held };
        pool.hand_off(slot.start(first.run));
        // Runs beside the first (rare: a cap raised again) go to any
        // worker.
        for waiting in next {
            let job = ScriptSlot { held: waiting.held }.start(waiting.run);
            if let Err(job) = pool.submit_or_return(job) {
                pool.hand_off(job);
            }
        }
    }
}

impl ScriptSlot {
    /// The pool job that runs `run` with this slot.
    pub fn start(self, run: Waiter) -> Job {
        Box::new(move |sandbox: &mut Sandbox| run(Turn::Run(self, sandbox)))
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
    use std::sync::mpsc;
    use std::time::Duration;

    use picloud_sandbox::ModuleCache;

    use super::*;

    /// What a test's runs report: (name, what happened to it).
    type Report = (&'static str, &'static str);
    type Reports = mpsc::Sender<Report>;

    /// A run that reports its turn, holding its slot until `hold` ends.
    fn waiter(name: &'static str, tx: &Reports, hold: Option<mpsc::Receiver<()>>) -> Waiter {
        let tx = tx.clone();
        Box::new(move |turn: Turn<'_>| match turn {
            Turn::Run(slot, _) => {
                tx.send((name, "ran")).expect("report");
                if let Some(hold) = hold {
                    let _ = hold.recv_timeout(Duration::from_secs(10));
                }
                drop(slot);
            }
            Turn::Refused(NoSlot::QueueFull) => tx.send((name, "full")).expect("report"),
            Turn::Refused(NoSlot::Expired) => tx.send((name, "expired")).expect("report"),
        })
    }

    /// Admits `run`, starting it on `slots`' pool if it got a slot now.
    fn start(slots: &Arc<ScriptSlots>, script: &str, deadline: Option<Instant>, run: Waiter) {
        if let Some((slot, run)) = slots.admit(script, deadline, run) {
            slots
                .pool
                .try_submit(slot.start(run))
                .expect("room in the pool");
        }
    }

    fn recv(rx: &mpsc::Receiver<Report>) -> Report {
        rx.recv_timeout(Duration::from_secs(10)).expect("a report")
    }

    fn slots(cap: usize, max_waiting: usize, threads: usize) -> Arc<ScriptSlots> {
        let pool = Pool::start(threads, 8, ModuleCache::default()).expect("pool");
        ScriptSlots::new(cap, max_waiting, pool)
    }

    // Two runtime threads: the test blocks one waiting for reports while
    // the deadline's timer runs on the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_cap_a_call_waits_in_its_scripts_queue_and_others_do_not() {
        let slots = slots(1, 1, 2);
        let (tx, rx) = mpsc::channel();
        let soon = || Some(Instant::now() + Duration::from_millis(50));
        let (release_a, hold_a) = mpsc::channel();
        start(&slots, "a", soon(), waiter("a1", &tx, Some(hold_a)));
        assert_eq!(recv(&rx), ("a1", "ran"));
        // Another script is not held up by `a`.
        start(&slots, "b", soon(), waiter("b1", &tx, None));
        assert_eq!(recv(&rx), ("b1", "ran"));
        // A second call of `a` waits, and is told at its deadline.
        start(&slots, "a", soon(), waiter("a2", &tx, None));
        assert_eq!(recv(&rx), ("a2", "expired"));
        // While one waits, the queue (of one) is full.
        start(
            &slots,
            "a",
            Some(Instant::now() + Duration::from_secs(10)),
            waiter("a3", &tx, None),
        );
        start(&slots, "a", soon(), waiter("a4", &tx, None));
        assert_eq!(recv(&rx), ("a4", "full"));
        // Freeing the slot hands it to the waiting call, on the pool.
        release_a.send(()).expect("release");
        assert_eq!(recv(&rx), ("a3", "ran"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "nothing else ran or expired");
        assert!(slots.scripts.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn waiting_runs_take_their_turns_in_order_sync_and_async_alike() {
        let slots = slots(1, 4, 2);
        let (tx, rx) = mpsc::channel();
        let (release, hold) = mpsc::channel();
        start(&slots, "a", None, waiter("first", &tx, Some(hold)));
        assert_eq!(recv(&rx), ("first", "ran"));
        let later = Some(Instant::now() + Duration::from_secs(10));
        start(&slots, "a", None, waiter("async", &tx, None));
        start(&slots, "a", later, waiter("sync", &tx, None));
        start(&slots, "a", None, waiter("async again", &tx, None));
        release.send(()).expect("release");
        assert_eq!(recv(&rx), ("async", "ran"));
        assert_eq!(recv(&rx), ("sync", "ran"));
        assert_eq!(recv(&rx), ("async again", "ran"));
        // Every slot came back: the script is forgotten, and the next call
        // runs at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(slots.scripts.lock().expect("lock").is_empty());
        start(&slots, "a", None, waiter("alone", &tx, None));
        assert_eq!(recv(&rx), ("alone", "ran"));
    }

    #[tokio::test]
    async fn a_freed_slot_starts_the_next_run_even_on_a_full_pool() {
        // One worker, a queue of one: the queue is full while the slot's
        // holder runs, and the waiting run still starts when it ends, on
        // that worker, before the queued job.
        let pool = Pool::start(1, 1, ModuleCache::default()).expect("pool");
        let slots = ScriptSlots::new(1, 4, pool.clone());
        let (tx, rx) = mpsc::channel();
        let (release, hold) = mpsc::channel();
        start(&slots, "a", None, waiter("holder", &tx, Some(hold)));
        assert_eq!(recv(&rx), ("holder", "ran"));
        let queued = tx.clone();
        pool.try_submit(Box::new(move |_| {
            queued.send(("queued", "ran")).expect("report")
        }))
        .expect("room for one");
        start(&slots, "a", None, waiter("next", &tx, None));
        release.send(()).expect("release");
        assert_eq!(recv(&rx), ("next", "ran"));
        assert_eq!(recv(&rx), ("queued", "ran"));
    }

    #[tokio::test]
    async fn a_conflict_runs_a_script_one_at_a_time_and_another_puts_it_in_its_lane() {
        let slots = slots(2, 1, 1);
        let (held, _) = slots
            .admit("a", None, Box::new(|_| {}))
            .expect("a free slot");
        assert_eq!(slots.contention("a"), Contention::Free);
        slots.conflicted("a", Contention::Free, true);
        assert_eq!(slots.contention("a"), Contention::OneRun);
        assert_eq!(
            slots.contention("b"),
            Contention::Free,
            "another script is not held up"
        );
        // One run at a time: the cap of 2 is 1 now, and `held` has it.
        let (tx, rx) = mpsc::channel();
        start(&slots, "a", None, waiter("second", &tx, None));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            rx.try_recv().is_err(),
            "two runs of a contended script at once"
        );
        drop(held);
        assert_eq!(recv(&rx), ("second", "ran"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        // (A script nobody holds is forgotten: keep it.)
        let (held, _) = slots
            .admit("a", None, Box::new(|_| {}))
            .expect("the slot, free again");
        // A conflict of a job that ran one at a time, after a write in
        // flight here failed: still one run at a time.
        slots.conflicted("a", Contention::OneRun, false);
        assert_eq!(slots.contention("a"), Contention::OneRun);
        // Another executor wrote what it read: the lane.
        slots.conflicted("a", Contention::OneRun, true);
        assert_eq!(slots.contention("a"), Contention::Lane);
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
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(slots.scripts.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn when_contention_ends_the_waiting_runs_get_the_whole_cap_again() {
        let slots = slots(2, 4, 3);
        let (tx, rx) = mpsc::channel();
        let (release_first, hold_first) = mpsc::channel();
        let (release_second, hold_second) = mpsc::channel();
        start(&slots, "a", None, waiter("first", &tx, Some(hold_first)));
        assert_eq!(recv(&rx), ("first", "ran"));
        slots.conflicted("a", Contention::Free, true);
        start(&slots, "a", None, waiter("second", &tx, Some(hold_second)));
        start(&slots, "a", None, waiter("third", &tx, None));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(rx.try_recv().is_err(), "a second run while contended");
        // The contention ends: the freed slot starts both waiting runs.
        lock(&slots.entry("a").turns).one_run_until = None;
        release_first.send(()).expect("release");
        let mut ran = [recv(&rx), recv(&rx)];
        ran.sort();
        assert_eq!(ran, [("second", "ran"), ("third", "ran")]);
        release_second.send(()).expect("release");
    }
}
