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
    CommitBatch, Committed, OutboxRow, Store, StoreError, SubscriptionCache, SubscriptionRow,
};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::effects::{not_applied, outbox_rows};
use crate::stats::Rollup;

/// Invocations per transaction at most.
pub const MAX_BATCH: usize = 64;
/// Commit transactions in flight per manager.
pub const PIPELINES: usize = 2;

struct Pending {
    commit: Commit,
    reply: oneshot::Sender<CommitReply>,
}

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
        let pipelines = (0..PIPELINES).map(move |_| {
            let (rx, store, bus, rollup, cache) = (
                rx.clone(),
                store.clone(),
                bus.clone(),
                rollup.clone(),
                cache.clone(),
            );
            async move {
                while let Some(batch) = next_batch(&rx, MAX_BATCH).await {
                    let commits: Vec<&Commit> = batch.iter().map(|p| &p.commit).collect();
                    let (replies, rows) =
                        commit_batch(&store, &cache, &rollup, &commits, max_trace_invocations)
                            .await;
                    if !rows.is_empty() {
                        tokio::spawn(publish(store.clone(), bus.clone(), rows));
                    }
                    for (p, r) in batch.into_iter().zip(replies) {
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
    pub async fn commit(&self, c: Commit) -> CommitReply {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Pending { commit: c, reply }).await.is_err() {
            return stopping();
        }
        answer.await.unwrap_or_else(|_| stopping())
    }
}

fn stopping() -> CommitReply {
    CommitReply::Failed {
        message: "the manager is stopping".into(),
    }
}

/// Waits for one request, then takes what else is queued (up to `max`).
/// `None` when the queue is closed and empty.
pub(crate) async fn next_batch<T>(rx: &Mutex<mpsc::Receiver<T>>, max: usize) -> Option<Vec<T>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    Some(batch)
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
    // In invocation id order, so that two batches holding the same
    // redelivered invocation meet on its record in the same order.
    let mut order: Vec<usize> = (0..commits.len()).collect();
    order.sort_by_key(|&i| commits[i].record.id);
    let mut outcomes: Vec<Option<Outcome>> = (0..commits.len()).map(|_| None).collect();
    apply_unconflicted(
        &mut batch,
        commits,
        &order,
        &subs,
        max_trace_invocations,
        &mut outcomes,
    )
    .await?;
    for i in order {
        if outcomes[i].is_some() {
            continue;
        }
        let c = commits[i];
        let rows = outbox_rows(c, &subs, max_trace_invocations);
        match batch.apply(&c.record, &c.effects, &rows).await {
            Err(e) if !e.is_permanent() => return Err(e),
            outcome => outcomes[i] = Some((outcome, rows)),
        }
    }
    batch.finish().await?;
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every commit was applied or refused"))
        .collect();
    Ok((outcomes, subs))
}

/// Applies together the commits that cannot conflict (they read no kv:
/// a record, blind kv writes, the outbox rows of their emits), see
/// `CommitBatch::apply_records`, filling their `outcomes`; the rest, and
/// all of them when the database refused one, are left to be applied one
/// at a time. They go before the rest, so a commit that read a key one of
/// them writes finds it changed and runs again (as it would after them in
/// id order). A batch of one goes the usual way. (An invocation twice in
/// the batch, a redelivery racing its first delivery, goes together only
/// once; its other copy is applied alone after, and finds it applied.)
async fn apply_unconflicted(
    batch: &mut CommitBatch,
    commits: &[&Commit],
    order: &[usize],
    subs: &[SubscriptionRow],
    max_trace_invocations: u32,
    outcomes: &mut [Option<Outcome>],
) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    let together: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| !commits[i].effects.can_conflict() && seen.insert(commits[i].record.id))
        .collect();
    if together.len() < 2 {
        return Ok(());
    }
    let rows: Vec<Vec<OutboxRow>> = together
        .iter()
        .map(|&i| outbox_rows(commits[i], subs, max_trace_invocations))
        .collect();
    let items: Vec<_> = together
        .iter()
        .zip(&rows)
        .map(|(&i, rows)| (&commits[i].record, &commits[i].effects, rows.as_slice()))
        .collect();
    match batch.apply_records(&items).await {
        Ok(done) => {
            for ((i, rows), done) in together.into_iter().zip(rows).zip(done) {
                outcomes[i] = Some((Ok(done), rows));
            }
            Ok(())
        }
        Err(e) if e.is_permanent() => {
            tracing::debug!(error = %e, "a bulk commit was refused; applying one at a time");
            Ok(())
        }
        Err(e) => Err(e),
    }
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
