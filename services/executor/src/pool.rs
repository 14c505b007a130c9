//! A bounded pool of dedicated worker threads, each owning a [`Sandbox`].
//!
//! Script evaluation is CPU-bound and may run for seconds; on tokio's
//! blocking pool it would compete with everything else that blocks and the
//! pool would grow without bound. Here the number of threads is fixed, the
//! queue in front of them is bounded, and [`Pool::try_submit`] fails at once
//! when both are full, so an overloaded executor answers 503 instead of
//! queueing without limit. A runaway script occupies one thread until its
//! deadline and no longer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError, bounded};
use picloud_core::Backoff;
use picloud_sandbox::{ModuleCache, Sandbox};

/// Stack for worker threads. Rhai's evaluator recurses per call level and
/// expression level; the maxima in `Limits` are sized so that this holds in
/// debug and release builds (see docs/ARCHITECTURE.md, "stack safety").
pub const WORKER_STACK_BYTES: usize = 64 << 20;

pub type Job = Box<dyn FnOnce(&mut Sandbox) + Send>;

#[derive(Clone)]
pub struct Pool {
    jobs: Sender<Job>,
    threads: usize,
    /// Workers running a job now (its address also tells pools apart).
    busy: Arc<AtomicUsize>,
}

thread_local! {
    /// On a worker thread: its pool, and the jobs handed to it by the job
    /// it runs now (see [`Pool::hand_off`]), to run right after that one.
    static NEXT: RefCell<Option<(usize, VecDeque<Job>)>> = const { RefCell::new(None) };
}

#[derive(Debug, PartialEq, Eq)]
pub struct Saturated;

impl Pool {
    /// Starts `threads` workers behind a queue of `queue_depth` jobs. The
    /// threads end when every `Pool` clone is dropped.
    /// All threads share `modules`, the executor's evaluated-module cache.
    pub fn start(
        threads: usize,
        queue_depth: usize,
        modules: ModuleCache,
    ) -> std::io::Result<Self> {
        let (tx, rx) = bounded::<Job>(queue_depth.max(1));
        let busy = Arc::new(AtomicUsize::new(0));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let modules = modules.clone();
            let busy = busy.clone();
            std::thread::Builder::new()
                .name(format!("picloud-worker-{i}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || {
                    let mut sandbox = Sandbox::with_module_cache(modules.clone());
                    let id = Arc::as_ptr(&busy) as usize;
                    NEXT.with(|n| *n.borrow_mut() = Some((id, VecDeque::new())));
                    for first in rx {
                        let mut job = Some(first);
                        // Then what that job handed this worker, if anything.
                        while let Some(run) = job.take().or_else(handed_here) {
                            busy.fetch_add(1, Ordering::Relaxed);
                            let metric = picloud_metrics::global().worker_busy();
                            let panicked =
                                catch_unwind(AssertUnwindSafe(|| run(&mut sandbox))).is_err();
                            drop(metric);
                            busy.fetch_sub(1, Ordering::Relaxed);
                            if panicked {
                                // The job's reply channel is dropped, which its
                                // caller reports; start from a clean engine.
                                tracing::error!("worker job panicked; sandbox rebuilt");
                                sandbox = Sandbox::with_module_cache(modules.clone());
                            }
                        }
                    }
                })?;
        }
        Ok(Self {
            jobs: tx,
            threads: threads.max(1),
            busy,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Workers running a job right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Relaxed)
    }

    /// Queues `job`, or hands it back when the queue is full (for a caller
    /// that would rather wait than refuse).
    pub fn submit_or_return(&self, job: Job) -> Result<(), Job> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }

    /// Starts `job` as soon as possible without refusing it: called by
    /// whoever frees a script's slot for the run waiting for it (see
    /// `crate::fair`). On one of this pool's workers with nothing queued,
    /// that worker runs it right after its current job (no thread to wake,
    /// no task to poll); otherwise it joins the back of the queue, behind
    /// the work already there. A full queue does not refuse it: a worker
    /// runs it next, or, off the workers, a task submits it once there is
    /// room.
    pub fn hand_off(&self, job: Job) {
        let here = Arc::as_ptr(&self.busy) as usize;
        let on_worker = NEXT.with(|n| n.borrow().as_ref().is_some_and(|(id, _)| *id == here));
        let job = if on_worker && self.jobs.is_empty() {
            job
        } else {
            match self.submit_or_return(job) {
                Ok(()) => return,
                Err(job) => job,
            }
        };
        if on_worker {
            NEXT.with(|n| {
                if let Some((_, next)) = n.borrow_mut().as_mut() {
                    next.push_back(job);
                }
            });
            return;
        }
        let pool = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let mut wait =
                        Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
                    let mut job = job;
                    while let Err(back) = pool.submit_or_return(job) {
                        job = back;
                        tokio::time::sleep(wait.next_pause()).await;
                    }
                });
            }
            // Neither a worker nor a task: this thread may block.
            Err(_) => {
                let _ = pool.jobs.send(job);
            }
        }
    }

    /// Queues `job`, or fails at once when the queue is full.
    pub fn try_submit(&self, job: Job) -> Result<(), Saturated> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => Saturated,
        })
    }
}

/// The next job handed to this worker thread by the one it ran.
fn handed_here() -> Option<Job> {
    NEXT.with(|n| {
        n.borrow_mut()
            .as_mut()
            .and_then(|(_, next)| next.pop_front())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_pool_rejects_instead_of_growing() {
        let pool = Pool::start(1, 1, ModuleCache::default()).unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        pool.try_submit(Box::new(move |_| {
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        }))
        .unwrap();
        started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        pool.try_submit(Box::new(|_| {})).unwrap(); // queued
        assert_eq!(pool.try_submit(Box::new(|_| {})), Err(Saturated));
        release_tx.send(()).unwrap();
    }

    #[test]
    fn a_panicking_job_does_not_kill_the_worker() {
        let pool = Pool::start(1, 4, ModuleCache::default()).unwrap();
        pool.try_submit(Box::new(|_| panic!("boom"))).unwrap();
        let (tx, rx) = mpsc::channel();
        pool.try_submit(Box::new(move |_| tx.send(42).unwrap()))
            .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 42);
    }
}
