//! The commit of invocations' effects, several in one transaction (group
//! commit).
//!
//! A [`CommitBatch`] is one transaction. It first takes every advisory lock
//! its invocations' kv effects need ([`Store::begin_commits`]), then applies
//! each invocation under a savepoint of its own ([`CommitBatch::apply`]):
//! the invocation record (whose row is the "already applied" marker: a
//! record stored as `ok` is never overwritten), the check that every key and
//! prefix it read is unchanged, its writes and its outbox rows. A conflict,
//! an invocation applied before, or one the database refuses rolls back only
//! its savepoint; the others commit together, with one WAL flush.
//!
//! Locks. Serialisability needs, between an invocation's read check and its
//! commit, no other commit writing what it read. The locks are per key:
//! - a key read: `(script, key)` shared; a key written: exclusive;
//! - every kv commit of a script also holds the script's lock shared, and a
//!   commit that listed a prefix holds it exclusive instead (and needs no
//!   key lock): a write under the prefix, absent keys included, always holds
//!   the script lock shared, so it waits for the list's commit or the list's
//!   check sees it;
//! - names are hashed to 64 bits; a collision only makes two locks one.
//!
//! A batch takes all its locks before it touches any row, in one global
//! order (by lock id, in `picloud_kv_lock`), so batches on one or many
//! managers cannot wait for each other in a cycle: a batch waiting for lock
//! `l` holds only locks below `l`. Rows come after: kv rows are only written
//! under their key's exclusive lock, and a batch applies its invocations in
//! id order, so two batches holding the same redelivered invocation wait on
//! its record row in the same order. The script's lock id is the one the
//! per-script lock of earlier versions used, so a manager of the previous
//! version (exclusive script lock) still excludes this one during an upgrade.
//!
//! The manager keeps the subscriptions in a [`SubscriptionCache`], checked
//! against `subscriptions_epoch` in the batch's transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use picloud_core::{Effects, InvocationRecord, KvVersion};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::jobs::SubscriptionRecord;
use crate::kv::{KvWrite, reads_current, versions, write, write_many};
use crate::outbox::{self, OutboxRow};
use crate::together::{self, Applying};
use crate::{Store, StoreError, SubscriptionRow};

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Applied,
    /// The invocation was committed before: nothing was changed.
    AlreadyApplied,
    /// A key it read changed since: nothing was changed; re-run it.
    Conflict,
}

/// Advisory lock names → exclusive.
type Locks = BTreeMap<String, bool>;

/// The locks one invocation's kv effects need (see the module doc).
fn locks_of(script: &str, effects: &Effects, locks: &mut Locks) {
    if !effects.touches_kv() {
        return;
    }
    let mut add = |name: String, exclusive: bool| {
        let e = locks.entry(name).or_insert(false);
        *e |= exclusive;
    };
    // The per-script name of earlier versions (see the module doc).
    add(
        lock_name(&format!("picloud.kv.{script}")),
        !effects.lists.is_empty(),
    );
    if !effects.lists.is_empty() {
        return;
    }
    // The script's length keeps ("a", "b/c") and ("a/b", "c") apart.
    let key = |k: &str| lock_name(&format!("picloud.kv-key.{}.{script}/{k}", script.len()));
    for k in effects.reads.keys() {
        add(key(k), false);
    }
    for k in effects.writes.keys() {
        add(key(k), true);
    }
}

/// Postgres text holds no NUL; a name only has to hash the same every time,
/// so NUL is replaced (a collision merges two locks, which is safe).
fn lock_name(name: &str) -> String {
    name.replace('\0', "\u{1}")
}

/// A row of the epoch read: the epoch, and a subscription unless the list
/// is unchanged or empty (the columns of the `LEFT JOIN` are NULL then).
#[derive(sqlx::FromRow)]
struct EpochRecord {
    epoch: i64,
    id: Option<uuid::Uuid>,
    script: Option<String>,
    topic: Option<String>,
    max_attempts: Option<i32>,
    created_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl EpochRecord {
    fn subscription(self) -> Option<SubscriptionRecord> {
        Some(SubscriptionRecord {
            id: self.id?,
            script: self.script?,
            topic: self.topic?,
            max_attempts: self.max_attempts?,
            created_at: self.created_at?,
        })
    }
}

/// One transaction applying several invocations' effects; see the module
/// doc. Dropping it without [`CommitBatch::finish`] rolls everything back.
pub struct CommitBatch {
    tx: Transaction<'static, Postgres>,
    locks: Locks,
    /// A batch of one needs no savepoint: what its invocation must not
    /// keep is undone by rolling the whole transaction back (two round
    /// trips fewer on the unloaded path, where batches are of one).
    alone: bool,
    /// Set when `alone` and its invocation must leave nothing.
    discard: bool,
    /// Invocations applied so far.
    applied: usize,
}

impl Store {
    /// Begins a batch for invocations with these (script, effects), taking
    /// every lock they need.
    pub async fn begin_commits(
        &self,
        invocations: &[(&str, &Effects)],
    ) -> Result<CommitBatch, StoreError> {
        let mut locks = Locks::new();
        for (script, effects) in invocations {
            locks_of(script, effects, &mut locks);
        }
        let mut tx = self.pool.begin().await?;
        if !locks.is_empty() {
            let (names, exclusive): (Vec<&str>, Vec<bool>) =
                locks.iter().map(|(n, x)| (n.as_str(), *x)).unzip();
            sqlx::query("SELECT picloud_kv_lock($1, $2)")
                .bind(names)
                .bind(exclusive)
                .execute(&mut *tx)
                .await?;
        }
        Ok(CommitBatch {
            tx,
            locks,
            alone: invocations.len() == 1,
            discard: false,
            applied: 0,
        })
    }

    /// Applies one successful invocation alone: its record, kv writes and
    /// `outbox` rows (its emits), if what it read is still current.
    pub async fn commit(
        &self,
        record: &InvocationRecord,
        effects: &Effects,
        outbox_rows: &[OutboxRow],
    ) -> Result<Committed, StoreError> {
        let mut batch = self
            .begin_commits(&[(record.script.as_str(), effects)])
            .await?;
        let done = batch
            .apply(Applying::new(record, effects, outbox_rows))
            .await?;
        batch.finish().await?;
        Ok(done)
    }
}

impl CommitBatch {
    /// The subscriptions as of this transaction: `cache`'s list when its
    /// epoch is still the stored one, else read again (one statement either
    /// way) and kept in `cache`.
    pub async fn subscriptions(
        &mut self,
        cache: &SubscriptionCache,
    ) -> Result<Arc<Vec<SubscriptionRow>>, StoreError> {
        let (epoch, cached) = cache.get();
        // Unchanged: one row of NULLs. Changed: the epoch on every row of
        // the list (or on one row of NULLs when there is none), read from
        // one snapshot.
        let rows: Vec<EpochRecord> = sqlx::query_as(
            "SELECT e.n AS epoch, s.id, s.script, s.topic, s.max_attempts, s.created_at
             FROM (SELECT n FROM subscriptions_epoch LIMIT 1) e
             LEFT JOIN subscriptions s ON e.n <> $1
             ORDER BY s.created_at, s.id",
        )
        .bind(epoch)
        .fetch_all(&mut *self.tx)
        .await?;
        let now = match rows.first() {
            Some(r) => r.epoch,
            None => return Err(StoreError::Corrupt("subscriptions_epoch has no row".into())),
        };
        if now == epoch {
            return Ok(cached);
        }
        let mut list = Vec::with_capacity(rows.len());
        for r in rows {
            if let Some(record) = r.subscription() {
                list.push(SubscriptionRow::try_from(record)?);
            }
        }
        let list = Arc::new(list);
        cache.put(now, list.clone());
        Ok(list)
    }

    /// Applies one invocation under a savepoint. `Ok` and a permanent error
    /// ([`StoreError::is_permanent`]: the database refused this
    /// invocation's data) leave the batch usable, the latter with nothing of
    /// the invocation kept; after any other error the batch must be dropped.
    pub async fn apply(&mut self, item: Applying<'_>) -> Result<Committed, StoreError> {
        self.check_locks(item.record, item.effects)?;
        self.applied += 1;
        if self.alone {
            if self.applied > 1 {
                return Err(StoreError::Corrupt(
                    "a batch of one applied a second invocation".into(),
                ));
            }
            let done = self.apply_here(item).await;
            self.discard = !matches!(done, Ok(Committed::Applied));
            return done;
        }
        savepoint(&mut self.tx, "SAVEPOINT invocation").await?;
        let done = self.apply_here(item).await;
        match &done {
            Ok(Committed::Applied) => {}
            Ok(_) => savepoint(&mut self.tx, "ROLLBACK TO SAVEPOINT invocation").await?,
            Err(e) if e.is_permanent() => {
                savepoint(&mut self.tx, "ROLLBACK TO SAVEPOINT invocation").await?
            }
            Err(_) => return done,
        }
        savepoint(&mut self.tx, "RELEASE SAVEPOINT invocation").await?;
        done
    }

    /// `Err` when this batch did not take a lock `effects` need.
    fn check_locks(&self, record: &InvocationRecord, effects: &Effects) -> Result<(), StoreError> {
        let mut needed = Locks::new();
        locks_of(&record.script, effects, &mut needed);
        match needed
            .iter()
            .find(|(n, x)| self.locks.get(*n).is_none_or(|held| **x && !held))
        {
            Some((name, _)) => Err(StoreError::Corrupt(format!(
                "commit of {} without the kv lock {name:?} of its batch",
                record.id
            ))),
            None => Ok(()),
        }
    }

    /// Applies invocations that listed no prefix (at most one per
    /// invocation id) together, in the order [`together::order`] gives
    /// (blind ones first, then by id, a run after the run whose write it
    /// read): one statement reads the versions of every key they read, the
    /// read checks are made in memory ([`together::check`]: a run's reads
    /// are checked against the writes of those before it), then one
    /// statement stores the records of those that apply, one the values
    /// they set (each key once, with the value of the last to write it),
    /// one the keys they deleted and one their outbox rows, all under one
    /// savepoint: a handful of statements for the batch instead of a
    /// savepoint and two to four statements each. Returns each one's
    /// outcome, in order (`AlreadyApplied`: committed before).
    ///
    /// `Ok(None)`, with nothing of any kept, when they cannot be decided
    /// together: the database refused the data of one of them (a
    /// permanent error), or one whose writes others were checked against
    /// turns out to have been committed before (a redelivery). The caller
    /// then applies them one at a time ([`CommitBatch::apply`]). After an
    /// `Err` the batch must be dropped.
    pub async fn apply_together(
        &mut self,
        items: &[Applying<'_>],
    ) -> Result<Option<Vec<Committed>>, StoreError> {
        if self.alone && items.len() > 1 {
            return Err(StoreError::Corrupt(
                "a batch of one applied several invocations".into(),
            ));
        }
        for it in items {
            if !it.effects.lists.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "{} listed kv and was applied together with others",
                    it.record.id
                )));
            }
            self.check_locks(it.record, it.effects)?;
        }
        let mut ids: Vec<uuid::Uuid> = items.iter().map(|it| it.record.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(StoreError::Corrupt(
                "one invocation twice in a bulk apply".into(),
            ));
        }
        self.applied += items.len();
        let order = together::order(items);
        let read: BTreeSet<(&str, &str)> = items
            .iter()
            .flat_map(|it| {
                let script = it.record.script.as_str();
                it.effects.reads.keys().map(move |k| (script, k.as_str()))
            })
            .collect();
        let read: Vec<(&str, &str)> = read.into_iter().collect();
        let now = if read.is_empty() {
            Vec::new()
        } else {
            versions(&mut self.tx, &read).await?
        };
        let now: HashMap<(&str, &str), KvVersion> = now
            .iter()
            .map(|(s, k, v)| ((s.as_str(), k.as_str()), *v))
            .collect();
        let applies = together::check(items, &order, now);
        let applying: Vec<Applying<'_>> = order
            .iter()
            .filter(|&&i| applies[i])
            .map(|&i| items[i])
            .collect();
        savepoint(&mut self.tx, "SAVEPOINT invocations").await?;
        let written = match self.apply_together_here(&applying).await {
            Ok(Some(written)) => written,
            Ok(None) => {
                savepoint(&mut self.tx, "ROLLBACK TO SAVEPOINT invocations").await?;
                savepoint(&mut self.tx, "RELEASE SAVEPOINT invocations").await?;
                return Ok(None);
            }
            Err(e) if e.is_permanent() => {
                savepoint(&mut self.tx, "ROLLBACK TO SAVEPOINT invocations").await?;
                savepoint(&mut self.tx, "RELEASE SAVEPOINT invocations").await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        savepoint(&mut self.tx, "RELEASE SAVEPOINT invocations").await?;
        let outcomes: Vec<Committed> = items
            .iter()
            .zip(&applies)
            .map(
                |(it, applies)| match (applies, written.binary_search(&it.record.id)) {
                    (false, _) => Committed::Conflict,
                    (true, Ok(_)) => Committed::Applied,
                    (true, Err(_)) => Committed::AlreadyApplied,
                },
            )
            .collect();
        if self.alone {
            self.discard = outcomes.iter().all(|c| *c != Committed::Applied);
        }
        Ok(Some(outcomes))
    }

    /// The records of `applying` (in their order), then the kv writes and
    /// outbox rows of those written; returns the ids written, sorted.
    /// `None` when one not written (committed before) had writes: the
    /// reads of those after it were checked against writes that will not
    /// happen.
    async fn apply_together_here(
        &mut self,
        applying: &[Applying<'_>],
    ) -> Result<Option<Vec<uuid::Uuid>>, StoreError> {
        // By id, like `apply` (see the module doc).
        let mut records: Vec<&InvocationRecord> = applying.iter().map(|it| it.record).collect();
        records.sort_unstable_by_key(|r| r.id);
        let mut written = crate::invocations::upsert(&mut self.tx, &records).await?;
        written.sort_unstable();
        let was_written = |it: &Applying<'_>| written.binary_search(&it.record.id).is_ok();
        if applying
            .iter()
            .any(|it| !was_written(it) && !it.effects.writes.is_empty())
        {
            return Ok(None);
        }
        // Each key once, with the last value in apply order.
        let mut last = BTreeMap::new();
        for it in applying.iter().filter(|it| was_written(it)) {
            for (key, value) in &it.effects.writes {
                last.insert(
                    (it.record.script.as_str(), key.as_str()),
                    (value.as_ref(), it.version),
                );
            }
        }
        if !last.is_empty() {
            let writes: Vec<KvWrite<'_>> = last
                .into_iter()
                .map(|((s, k), (v, n))| (s, k, v, n))
                .collect();
            write_many(&mut self.tx, &writes).await?;
        }
        let rows: Vec<&OutboxRow> = applying
            .iter()
            .filter(|it| was_written(it))
            .flat_map(|it| it.rows.iter())
            .collect();
        outbox::insert_deferred_refs(&mut self.tx, &rows).await?;
        Ok(Some(written))
    }

    /// The invocation's record, read check, writes and outbox rows, in the
    /// transaction as it stands (under a savepoint in a batch of several).
    async fn apply_here(&mut self, item: Applying<'_>) -> Result<Committed, StoreError> {
        let Applying {
            record,
            effects,
            rows,
            version,
        } = item;
        if !Store::upsert_one(&mut self.tx, record).await? {
            return Ok(Committed::AlreadyApplied);
        }
        if effects.touches_kv() {
            if !reads_current(&mut self.tx, &record.script, effects).await? {
                return Ok(Committed::Conflict);
            }
            write(&mut self.tx, &record.script, effects, version).await?;
        }
        // Published by the committing manager once this commits.
        outbox::insert_deferred(&mut self.tx, rows).await?;
        Ok(Committed::Applied)
    }

    /// Commits every invocation applied (a batch of one whose invocation
    /// was not applied rolls back instead).
    pub async fn finish(self) -> Result<(), StoreError> {
        if self.discard {
            self.tx.rollback().await?;
        } else {
            self.tx.commit().await?;
        }
        Ok(())
    }
}

async fn savepoint(conn: &mut PgConnection, statement: &'static str) -> Result<(), StoreError> {
    sqlx::query(statement).execute(conn).await?;
    Ok(())
}

/// The subscriptions a manager last read, with the epoch they were read at
/// (`-1`: never read). Shared by the manager's commit pipelines.
#[derive(Clone)]
pub struct SubscriptionCache(Arc<Mutex<(i64, Arc<Vec<SubscriptionRow>>)>>);

impl Default for SubscriptionCache {
    fn default() -> Self {
        Self(Arc::new(Mutex::new((-1, Arc::new(Vec::new())))))
    }
}

impl SubscriptionCache {
    fn get(&self) -> (i64, Arc<Vec<SubscriptionRow>>) {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }

    /// Keeps the newer of the cached and the given list (two pipelines may
    /// read at once).
    fn put(&self, epoch: i64, list: Arc<Vec<SubscriptionRow>>) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if epoch > g.0 {
            *g = (epoch, list);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picloud_core::effects::ListRead;

    fn effects() -> Effects {
        Effects::default()
    }

    #[test]
    fn key_reads_are_shared_writes_exclusive_and_lists_take_the_script() {
        let mut e = effects();
        e.reads.insert("a".into(), 1);
        e.writes.insert("a".into(), Some(serde_json::json!(1)));
        e.reads.insert("b".into(), 0);
        let mut locks = Locks::new();
        locks_of("s", &e, &mut locks);
        assert_eq!(locks.get("picloud.kv.s"), Some(&false));
        assert_eq!(locks.get("picloud.kv-key.1.s/a"), Some(&true));
        assert_eq!(locks.get("picloud.kv-key.1.s/b"), Some(&false));

        let mut l = effects();
        l.lists.push(ListRead {
            prefix: "p".into(),
            entries: Vec::new(),
        });
        locks_of("s", &l, &mut locks);
        assert_eq!(locks.get("picloud.kv.s"), Some(&true));

        let mut none = Locks::new();
        locks_of("s", &effects(), &mut none);
        assert!(none.is_empty());
    }
}
