//! Fair pulling of async jobs (issue #12 §6): scripts are served in turn,
//! so one script's backlog does not delay another script's job.
//!
//! Every script has its own subject and its own durable consumer on the
//! jobs stream (see `picloud_bus`), shared by every executor. An executor
//! keeps a rotation of the scripts that have jobs and, for its free slots,
//! fetches from them in turn (a fetch never waits: it takes what can be
//! delivered now). A script never has more than `per_script` jobs pulled
//! and unfinished on one executor (twice its concurrency cap, leaving at
//! least one slot to others), so however deep its backlog, another
//! script's job is fetched as soon as it is known.
//!
//! Which scripts have jobs is learnt from the stream's doorbell (each job
//! stored rings `{p}.jobready.{script}`) and from the stream's per-subject
//! counts (retries after their delay, redeliveries, rings missed), read
//! every [`SCAN_EVERY`] while the stream holds jobs or jobs were fetched,
//! and every [`IDLE_SCAN`] when it is empty (the only idle traffic, as the
//! single long poll it replaces). A script whose fetch comes back short
//! leaves the rotation until it rings again or a scan finds it after a
//! pause (doubling, up to [`MAX_QUIET`], for a script whose jobs are all
//! waiting for a retry delay or running elsewhere).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use picloud_bus::{Bus, IncomingJob, JobConsumer};
use picloud_core::{Backoff, Shutdown};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often the stream's per-subject counts are read.
pub const SCAN_EVERY: Duration = Duration::from_millis(250);
/// How often they are read while the stream holds no job.
pub const IDLE_SCAN: Duration = Duration::from_secs(30);
/// A fetch never waits for jobs; one unanswered this long is abandoned.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause of a script whose fetch came back short.
const QUIET: Duration = Duration::from_millis(250);
const MAX_QUIET: Duration = Duration::from_secs(4);

/// The executor's view of which scripts have jobs, and the fetching.
pub struct Queue {
    bus: Bus,
    ack_wait: Duration,
    per_script: usize,
    consumers: HashMap<String, JobConsumer>,
    /// Scripts to fetch from, in turn (and the same as a set).
    ready: VecDeque<String>,
    in_ready: HashSet<String>,
    /// Scripts out of the rotation until then (and the pause that was).
    quiet: HashMap<String, (Instant, Duration)>,
    next_scan: Instant,
    rings: Arc<Rings>,
    pulled: Arc<Pulled>,
}

/// Scripts that rang since the last look.
#[derive(Default)]
struct Rings {
    scripts: Mutex<HashSet<String>>,
    notify: Notify,
}

/// Jobs pulled and not finished, per script.
#[derive(Default)]
struct Pulled {
    counts: Mutex<HashMap<String, usize>>,
    done: Notify,
}

/// A job pulled from `script`; dropped when the job is settled.
pub struct Ticket {
    pulled: Arc<Pulled>,
    script: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = lock(&self.pulled.counts);
        if let Some(n) = counts.get_mut(&self.script) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.script);
            }
        }
        drop(counts);
        self.pulled.done.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic between two map operations, which
    // leave the map consistent: keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Queue {
    /// Starts listening to the doorbell (reopened after an error) until
    /// `shutdown`.
    pub fn start(bus: Bus, ack_wait: Duration, per_script: usize, shutdown: Shutdown) -> Self {
        let rings = Arc::new(Rings::default());
        tokio::spawn(listen(bus.clone(), rings.clone(), shutdown));
        Self {
            bus,
            ack_wait,
            per_script: per_script.max(1),
            consumers: HashMap::new(),
            ready: VecDeque::new(),
            in_ready: HashSet::new(),
            quiet: HashMap::new(),
            next_scan: Instant::now(),
            rings,
            pulled: Arc::new(Pulled::default()),
        }
    }

    /// Between 1 and `n` jobs, taken from the scripts in turn; waits until
    /// there is one.
    pub async fn next(&mut self, n: usize) -> Vec<(IncomingJob, Ticket)> {
        loop {
            self.take_rings();
            if Instant::now() >= self.next_scan {
                self.scan().await;
            }
            let jobs = self.fetch_round(n.max(1)).await;
            if !jobs.is_empty() {
                // Work brings retries and redeliveries no ring announces.
                self.next_scan = self.next_scan.min(Instant::now() + SCAN_EVERY);
                return jobs;
            }
            // Nothing now: wait for a ring, a job of a script at its share
            // to finish, or the next scan.
            let at_share = !self.ready.is_empty();
            tokio::select! {
                _ = self.rings.notify.notified() => {}
                _ = self.pulled.done.notified(), if at_share => {}
                _ = tokio::time::sleep_until(self.next_scan) => {}
            }
        }
    }

    fn take_rings(&mut self) {
        let rung = std::mem::take(&mut *lock(&self.rings.scripts));
        for script in rung {
            self.quiet.remove(&script);
            self.make_ready(script);
        }
    }

    fn make_ready(&mut self, script: String) {
        if self.in_ready.insert(script.clone()) {
            self.ready.push_back(script);
        }
    }

    fn leave_ready(&mut self, script: &str) {
        self.in_ready.remove(script);
    }

    async fn scan(&mut self) {
        self.next_scan = Instant::now() + SCAN_EVERY;
        let scripts = match self.bus.scripts_with_jobs().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the scripts with jobs");
                return;
            }
        };
        if scripts.is_empty() && lock(&self.pulled.counts).is_empty() {
            self.next_scan = Instant::now() + IDLE_SCAN;
        }
        let now = Instant::now();
        // A pause long over is forgotten; a recent one is kept so that the
        // next can double.
        self.quiet.retain(|_, (until, _)| *until + MAX_QUIET > now);
        for script in scripts {
            if self
                .quiet
                .get(&script)
                .is_none_or(|(until, _)| *until <= now)
            {
                self.make_ready(script);
            }
        }
    }

    /// One turn over the ready scripts, each fetching its share of the `n`
    /// free slots (at most its room under `per_script`).
    async fn fetch_round(&mut self, n: usize) -> Vec<(IncomingJob, Ticket)> {
        let mut out = Vec::new();
        let turn = self.ready.len();
        for done in 0..turn {
            if out.len() >= n {
                break;
            }
            let Some(script) = self.ready.pop_front() else {
                break;
            };
            let held = lock(&self.pulled.counts).get(&script).copied().unwrap_or(0);
            let room = self.per_script.saturating_sub(held);
            if room == 0 {
                self.ready.push_back(script);
                continue;
            }
            let share = (n - out.len()).div_ceil(turn - done).min(room);
            let got = self.fetch(&script, share, &mut out).await;
            if got == share {
                self.quiet.remove(&script);
                self.ready.push_back(script);
            } else {
                self.leave_ready(&script);
                self.hush(script, got == 0);
            }
        }
        out
    }

    /// Takes `script` out of the rotation for a while: the base pause when
    /// it gave jobs, a doubled one when it gave none again.
    fn hush(&mut self, script: String, empty: bool) {
        let pause = match self.quiet.get(&script) {
            Some((_, last)) if empty => (*last * 2).min(MAX_QUIET),
            _ => QUIET,
        };
        self.quiet.insert(script, (Instant::now() + pause, pause));
    }

    /// Fetches up to `n` of `script`'s jobs into `out`; how many came.
    async fn fetch(
        &mut self,
        script: &str,
        n: usize,
        out: &mut Vec<(IncomingJob, Ticket)>,
    ) -> usize {
        if !self.consumers.contains_key(script) {
            match self.bus.jobs(script, self.ack_wait).await {
                Ok(c) => {
                    self.consumers.insert(script.to_owned(), c);
                }
                Err(e) => {
                    tracing::warn!(script, error = %e, "cannot open a job consumer");
                    return 0;
                }
            }
        }
        let consumer = &self.consumers[script];
        let jobs = match tokio::time::timeout(FETCH_TIMEOUT, consumer.fetch(n)).await {
            Ok(Ok(j)) => j,
            Ok(Err(e)) => {
                tracing::warn!(script, error = %e, "cannot fetch jobs");
                self.consumers.remove(script);
                return 0;
            }
            Err(_) => {
                tracing::warn!(script, "a job fetch went unanswered");
                self.consumers.remove(script);
                return 0;
            }
        };
        let mut jobs = std::pin::pin!(jobs);
        let mut got = 0;
        let until = Instant::now() + FETCH_TIMEOUT;
        loop {
            let Ok(job) = tokio::time::timeout_at(until, jobs.next()).await else {
                // Unanswered (a consumer removed under us can leave a fetch
                // hanging); what it still delivers comes back after the
                // ack wait.
                tracing::warn!(script, "a job fetch went unanswered");
                self.consumers.remove(script);
                break;
            };
            let Some(job) = job else { break };
            match job {
                Ok(job) => {
                    *lock(&self.pulled.counts)
                        .entry(script.to_owned())
                        .or_default() += 1;
                    let ticket = Ticket {
                        pulled: self.pulled.clone(),
                        script: script.to_owned(),
                    };
                    out.push((job, ticket));
                    got += 1;
                }
                Err(e) => {
                    // The consumer may be gone (idle too long): open it
                    // again next time.
                    tracing::debug!(script, error = %e, "job fetch ended early");
                    self.consumers.remove(script);
                    break;
                }
            }
        }
        got
    }
}

/// Records every ring until `shutdown`.
async fn listen(bus: Bus, rings: Arc<Rings>, shutdown: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let mut stream = match bus.job_rings().await {
            Ok(s) => Box::pin(s),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.ceiling(), "cannot hear job rings");
                if picloud_bus::pause_or_stop(&mut backoff, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        loop {
            let script = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = stream.next() => s,
            };
            let Some(script) = script else { break };
            backoff.reset();
            lock(&rings.scripts).insert(script);
            rings.notify.notify_one();
        }
    }
}
