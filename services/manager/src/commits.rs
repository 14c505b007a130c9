//! Group commit: the commit requests that arrive while a transaction is in
//! flight wait in a queue and go together, up to [`MAX_BATCH`], into the
//! next transaction ([`picloud_store::CommitBatch`]), one savepoint per
//! invocation. Each request still gets its own reply: a conflict, an
//! invocation applied before or one the database refuses answers only that
//! one; a failure of the whole transaction (database unavailable) answers
//! `Failed` to all, and their executors retry.
//!
//! Once a transaction commits, its emitted events and jobs are published
//! from here, at once, and their outbox rows deleted
//! ([`crate::relay::publish_rows`]); the relay takes them only if they are
//! still there after `PUBLISHER_GRACE` (this manager died or could not
//! publish). An emit reaches its subscribers one commit after the script,
//! not three.
//!
//! No timer: an idle pipeline waits for the first request and takes
//! whatever else is queued at that moment, so a lone commit goes at once.
//! [`PIPELINES`] transactions may be in flight per manager (disjoint keys
//! commit in parallel; the per-key locks order the rest).

use std::sync::Arc;

use picloud_bus::Bus;
use picloud_core::job::topic_matches;
use picloud_core::{Commit, CommitReply, Effects};
use picloud_store::{
    Applying, CommitBatch, Committed, OutboxRow, Store, StoreError, SubscriptionCache,
    SubscriptionRow,
};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::effects::{not_applied, outbox_rows};
use crate::stats::Rollup;

/// Invocations per transaction at most.
pub const MAX_BATCH: usize = 64;
/// Commit transactions in flight per manager.
pub const PIPELINES: usize = 2;
/// Times a commit that read a write in flight is put off to a later batch
/// when it conflicts, before it is answered `Conflict`.
pub const MAX_PUT_OFF: u8 = 3;

struct Pending {
    commit: Commit,
    reply: oneshot::Sender<CommitReply>,
    /// Times put off already.
    put_off: u8,
}

impl Pending {
    /// Whether a conflict of this commit may only mean that the write it
    /// read has not come yet: it read a key under a run's own version (a
    /// write still in flight on its executor, see
    /// `picloud_executor::overlay`), whose commit may arrive after it, or
    /// be in another pipeline's transaction. Put off to a later batch, it
    /// goes after that write (or conflicts again if the write never came).
    fn may_wait(&self) -> bool {
        self.put_off < MAX_PUT_OFF
            && self
                .commit
                .effects
                .reads
                .values()
                .any(|v| picloud_core::effects::RUN_VERSIONS.contains(v))
    }
}

/// Commits put off to a later batch, taken before the queue's.
type PutOff = Arc<std::sync::Mutex<Vec<Pending>>>;

/// The queue the request handlers put commits in.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
}

impl Committer {
    /// Starts [`PIPELINES`] pipelines; they end when every `Committer`
    /// clone is dropped and the queue is drained (await the returned
    /// future for that).
    pub fn start(
        store: Store,
        bus: Bus,
        rollup: Rollup,
        max_trace_invocations: u32,
    ) -> (Self, impl Future<Output = ()>) {
        let (queue, rx) = mpsc::channel::<Pending>(MAX_BATCH * 16);
        let rx = Arc::new(Mutex::new(rx));
        let cache = SubscriptionCache::default();
        let put_off = PutOff::default();
        let pipelines = (0..PIPELINES).map(move |_| {
            let (rx, store, bus, rollup, cache, put_off) = (
                rx.clone(),
                store.clone(),
                bus.clone(),
                rollup.clone(),
                cache.clone(),
                put_off.clone(),
            );
            async move {
                while let Some(batch) = next_commits(&rx, &put_off).await {
                    let commits: Vec<&Commit> = batch.iter().map(|p| &p.commit).collect();
                    let (replies, rows) =
                        commit_batch(&store, &cache, &rollup, &commits, max_trace_invocations)
                            .await;
                    if !rows.is_empty() {
                        tokio::spawn(publish(store.clone(), bus.clone(), rows));
                    }
                    for (mut p, r) in batch.into_iter().zip(replies) {
                        if r == CommitReply::Conflict && p.may_wait() {
                            p.put_off += 1;
                            lock(&put_off).push(p);
                            continue;
                        }
                        // The requester may have gone (shutdown); nothing
                        // to tell then.
                        let _ = p.reply.send(r);
                    }
                }
            }
        });
        let done = futures::future::join_all(pipelines.collect::<Vec<_>>());
        (Self { queue }, async move {
            done.await;
        })
    }

    /// Commits `c` with whatever else is queued, and answers for it alone.
    /// `c` is queued before this returns (unless the queue is full), so
    /// commits handed over one after another are batched in that order.
    pub fn commit(&self, c: Commit) -> impl Future<Output = CommitReply> + use<> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            commit: c,
            reply,
            put_off: 0,
        };
        let queue = self.queue.clone();
        let waiting = match queue.try_send(pending) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(p)) => Some(p),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return futures::future::Either::Left(std::future::ready(stopping()));
            }
        };
        futures::future::Either::Right(async move {
            if let Some(p) = waiting
                && queue.send(p).await.is_err()
            {
                return stopping();
            }
            answer.await.unwrap_or_else(|_| stopping())
        })
    }
}

fn stopping() -> CommitReply {
    CommitReply::Failed {
        message: "the manager is stopping".into(),
    }
}

/// The commits put off, then what is queued (up to [`MAX_BATCH`] in all);
/// waits for one request when none was put off. `None` when the queue is
/// closed and empty and nothing is put off.
///
/// Put-off commits go at once: when another pipeline holds the queue (it
/// waits there for the next request), they do not wait for it. They
/// did, and with one commit at a time in flight (a script's lane) a
/// put-off commit then waited for some other commit to arrive: ~45 ms a
/// job in the lane.
async fn next_commits<T>(
    rx: &Mutex<mpsc::Receiver<T>>,
    put_off: &std::sync::Mutex<Vec<T>>,
) -> Option<Vec<T>> {
    let mut batch: Vec<T> = std::mem::take(&mut *lock(put_off));
    if batch.is_empty() {
        return next_batch(rx, MAX_BATCH).await;
    }
    if let Ok(mut rx) = rx.try_lock() {
        top_up(&mut rx, &mut batch, MAX_BATCH);
    }
    Some(batch)
}

fn lock<T>(put_off: &std::sync::Mutex<Vec<T>>) -> std::sync::MutexGuard<'_, Vec<T>> {
    put_off.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for one request, then takes what else is queued (up to `max`).
/// `None` when the queue is closed and empty.
pub(crate) async fn next_batch<T>(rx: &Mutex<mpsc::Receiver<T>>, max: usize) -> Option<Vec<T>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    top_up(&mut rx, &mut batch, max);
    Some(batch)
}

/// Adds to `batch` what is queued now, up to `max` in all.
fn top_up<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
}

/// Publishes a committed batch's outbox rows and deletes those JetStream
/// stored; what is left goes with the relay (at once when this manager
/// could count its failed try, else after `PUBLISHER_GRACE`).
async fn publish(store: Store, bus: Bus, rows: Vec<OutboxRow>) {
    let (published, error) = crate::relay::publish_rows(&bus, &rows).await;
    if let Some(e) = error {
        tracing::warn!(error = %e, rows = rows.len(), "cannot publish a commit's events; the relay will");
    }
    if let Err(e) = store.settle_outbox(&rows, &published).await {
        // The relay publishes them again; JetStream drops the copies.
        tracing::warn!(error = %e, "cannot settle published outbox rows");
    }
}

/// Applies `commits` in one transaction and returns one reply per commit,
/// in their order, and the outbox rows of those applied, for the caller to
/// publish.
pub async fn commit_batch(
    store: &Store,
    cache: &SubscriptionCache,
    rollup: &Rollup,
    commits: &[&Commit],
    max_trace_invocations: u32,
) -> (Vec<CommitReply>, Vec<OutboxRow>) {
    match try_batch(store, cache, commits, max_trace_invocations).await {
        Ok((outcomes, subs)) => {
            let mut replies = Vec::with_capacity(commits.len());
            let mut rows = Vec::new();
            for (c, (outcome, mut own)) in commits.iter().zip(outcomes) {
                replies.push(match outcome {
                    Ok(Committed::Applied) => {
                        count(rollup, c, &subs);
                        rows.append(&mut own);
                        CommitReply::Committed
                    }
                    Ok(Committed::AlreadyApplied) => CommitReply::AlreadyCommitted,
                    Ok(Committed::Conflict) => CommitReply::Conflict,
                    Err(e) => {
                        tracing::warn!(error = %e, invocation = %c.record.id, "commit refused");
                        not_applied(&e)
                    }
                });
            }
            (replies, rows)
        }
        Err(e) => {
            tracing::warn!(error = %e, commits = commits.len(), "commit batch failed");
            // Nothing was committed; a batch-wide statement (the locks, the
            // subscriptions' read) or the commit failed, as the one
            // transaction of earlier versions would have.
            let reply = not_applied(&e);
            (vec![reply; commits.len()], Vec::new())
        }
    }
}

/// One commit's outcome with its outbox rows.
type Outcome = (Result<Committed, StoreError>, Vec<OutboxRow>);
/// Each commit's [`Outcome`].
type Outcomes = Vec<Outcome>;

/// Each commit's outcome (a permanent error of its own is its `Err`) with
/// its outbox rows, and the subscriptions the batch used. `Err`: nothing
/// was committed.
async fn try_batch(
    store: &Store,
    cache: &SubscriptionCache,
    commits: &[&Commit],
    max_trace_invocations: u32,
) -> Result<(Outcomes, Arc<Vec<SubscriptionRow>>), StoreError> {
    let kv: Vec<(&str, &Effects)> = commits
        .iter()
        .map(|c| (c.record.script.as_str(), &c.effects))
        .collect();
    let mut batch = store.begin_commits(&kv).await?;
    let subs = if commits.iter().any(|c| !c.effects.emits.is_empty()) {
        batch.subscriptions(cache).await?
    } else {
        Arc::new(Vec::new())
    };
    let rows: Vec<Vec<OutboxRow>> = commits
        .iter()
        .map(|c| outbox_rows(c, &subs, max_trace_invocations))
        .collect();
    let item = |i: usize| {
        let c = commits[i];
        Applying::new(&c.record, &c.effects, &rows[i]).with_version(c.version)
    };
    // In invocation id order, so that two batches holding the same
    // redelivered invocation meet on its record in the same order, except
    // that a run goes after the run whose write it read (one executor's
    // pipelined runs of a script): see `picloud_store::commit_order`.
    let order = picloud_store::commit_order(&(0..commits.len()).map(item).collect::<Vec<_>>());
    let mut outcomes: Vec<Option<Result<Committed, StoreError>>> =
        (0..commits.len()).map(|_| None).collect();
    apply_together(&mut batch, commits, &order, item, &mut outcomes).await?;
    for i in order {
        if outcomes[i].is_some() {
            continue;
        }
        match batch.apply(item(i)).await {
            Err(e) if !e.is_permanent() => return Err(e),
            outcome => outcomes[i] = Some(outcome),
        }
    }
    batch.finish().await?;
    let outcomes = outcomes
        .into_iter()
        .zip(rows)
        .map(|(o, rows)| (o.expect("every commit was applied or refused"), rows))
        .collect();
    Ok((outcomes, subs))
}

/// Applies together the commits that listed no kv prefix (a record, kv
/// reads and writes, the outbox rows of their emits), see
/// `CommitBatch::apply_together`, filling their `outcomes`; the rest, and
/// all of them when they could not be decided together, are left to be
/// applied one at a time. They go before the rest, so a commit that
/// listed a prefix one of them writes under finds it changed and runs
/// again. A batch of one goes the usual way. (An invocation twice in the
/// batch, a redelivery racing its first delivery, goes together only
/// once; its other copy is applied alone after, and finds it applied.)
async fn apply_together<'a>(
    batch: &mut CommitBatch,
    commits: &[&Commit],
    order: &[usize],
    item: impl Fn(usize) -> Applying<'a>,
    outcomes: &mut [Option<Result<Committed, StoreError>>],
) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    let together: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| commits[i].effects.lists.is_empty() && seen.insert(commits[i].record.id))
        .collect();
    if together.len() < 2 {
        return Ok(());
    }
    let items: Vec<Applying<'a>> = together.iter().map(|&i| item(i)).collect();
    if let Some(done) = batch.apply_together(&items).await? {
        for (i, done) in together.into_iter().zip(done) {
            outcomes[i] = Some(Ok(done));
        }
    } else {
        tracing::debug!("a batch's commits could not be decided together; applying one at a time");
    }
    Ok(())
}

fn count(rollup: &Rollup, c: &Commit, subs: &[SubscriptionRow]) {
    rollup.add_records([&c.record]);
    for emit in &c.effects.emits {
        rollup.add_flow(&emit.topic, "emit", &c.record.script, 1);
        for sub in subs.iter().filter(|s| topic_matches(&s.topic, &emit.topic)) {
            rollup.add_flow(&emit.topic, "deliver", &sub.script, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn put_off_commits_go_at_once_while_another_pipeline_waits_for_the_queue() {
        let (tx, rx) = mpsc::channel::<u32>(8);
        let rx = Arc::new(Mutex::new(rx));
        let put_off = std::sync::Mutex::new(Vec::new());
        // Another pipeline waits for the next request, holding the queue.
        let waiting = {
            let rx = rx.clone();
            tokio::spawn(async move { next_batch(&rx, MAX_BATCH).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        lock(&put_off).push(1);
        let batch = tokio::time::timeout(Duration::from_secs(5), next_commits(&rx, &put_off))
            .await
            .expect("held up by the pipeline waiting for the queue");
        assert_eq!(batch, Some(vec![1]));
        // With the queue free, what is queued joins the put-off commits.
        tx.send(2).await.expect("send");
        assert_eq!(waiting.await.expect("waiting"), Some(vec![2]));
        lock(&put_off).push(3);
        tx.send(4).await.expect("send");
        assert_eq!(next_commits(&rx, &put_off).await, Some(vec![3, 4]));
    }
}
