//! Writes on their way to a manager, readable by this executor's next runs
//! of the same script.
//!
//! A run that writes kv draws the version its writes will get
//! ([`picloud_core::effects::run_version`]) and, before its slot goes to
//! the script's next run, puts the writes here ([`Overlay::register`]).
//! The next run reading such a key gets the written value under that
//! version, so its reads say "after that write", and a manager checks
//! exactly that when it commits it (in the same batch, after the write:
//! `picloud_store::commit_order`). One key's read-modify-writes thus run
//! one after another at the speed of the script, their commits in flight
//! together, instead of one per commit round trip.
//!
//! What a successful run read here is seen outside it only once it
//! commits: a run that read kv always commits (its reads are checked), and
//! its answer or ack waits for the commit. A write that does not commit
//! (conflict, failure, another delivery applied first) leaves the runs
//! that read it conflicting in turn; they run again. A run that *fails*
//! commits nothing, so nothing checks its reads: where it read a write in
//! flight here ([`InFlightReads`], noted on the worker thread running it),
//! its failure is final only once every such write has committed; when one
//! did not, the failure may come from a value that never existed, and the
//! run goes again (`crate::run`).
//!
//! An entry leaves with its commit's reply ([`Unsettled`]): once
//! committed, the store has the same value under the same version; when
//! not, the chain of entries built on it goes too, so the re-runs read
//! the store.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use picloud_core::{KvEntry, KvVersion};
use tokio::sync::Notify;

/// The writes in flight of every script run here.
#[derive(Default)]
pub struct Overlay {
    scripts: Mutex<HashMap<String, HashMap<String, Entry>>>,
    chains: AtomicU64,
}

struct Entry {
    value: Option<serde_json::Value>,
    version: KvVersion,
    /// Writes of one key that each read the one before share a chain: when
    /// one of them does not commit, none after it will.
    chain: u64,
    /// How its commit ended, once it has.
    settlement: Arc<Settlement>,
}

/// One run's commit, as the runs that read its writes wait for it.
#[derive(Default)]
pub struct Settlement {
    /// `Some(applied)` once answered (or given up).
    outcome: Mutex<Option<bool>>,
    settled: Notify,
}

impl Settlement {
    fn set(&self, applied: bool) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(applied);
        self.settled.notify_waiters();
    }

    fn outcome(&self) -> Option<bool> {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the commit applied its writes, once it is answered; `false`
    /// when that takes longer than `patience`.
    async fn applied(&self, patience: Duration) -> bool {
        let wait = async {
            loop {
                let settled = self.settled.notified();
                if let Some(applied) = self.outcome() {
                    return applied;
                }
                settled.await;
            }
        };
        tokio::time::timeout(patience, wait).await.unwrap_or(false)
    }
}

thread_local! {
    /// The writes in flight the run on this thread has read.
    static READ_IN_FLIGHT: RefCell<Vec<Arc<Settlement>>> = const { RefCell::new(Vec::new()) };
}

/// The writes in flight a run read (see the module doc).
#[derive(Default)]
pub struct InFlightReads(Vec<Arc<Settlement>>);

impl InFlightReads {
    /// Starts noting the writes in flight the run about to start on this
    /// thread reads.
    pub fn begin() {
        READ_IN_FLIGHT.with(|r| r.borrow_mut().clear());
    }

    /// What the run on this thread read since [`InFlightReads::begin`].
    pub fn take() -> Self {
        Self(READ_IN_FLIGHT.with(|r| std::mem::take(&mut *r.borrow_mut())))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every write read was committed (`false` as soon as one was
    /// not, or when one is still unanswered after `patience`).
    pub async fn all_committed(&self, patience: Duration) -> bool {
        for s in &self.0 {
            if !s.applied(patience).await {
                return false;
            }
        }
        true
    }
}

impl Overlay {
    /// `script`'s `key` as a write in flight left it: `Some(None)` when
    /// that write deletes it; `None` when no write of it is in flight.
    /// Noted as read by the run on this thread ([`InFlightReads`]).
    pub fn get(&self, script: &str, key: &str) -> Option<Option<KvEntry>> {
        let scripts = self.lock();
        let e = scripts.get(script)?.get(key)?;
        READ_IN_FLIGHT.with(|r| r.borrow_mut().push(e.settlement.clone()));
        Some(e.value.as_ref().map(|value| KvEntry {
            value: value.clone(),
            version: e.version,
        }))
    }

    /// Puts a run's `writes` (under `version`) in flight, until the
    /// returned [`Unsettled`] is settled or dropped. `reads`: what the run
    /// read, to tell which writes build on an entry here.
    pub fn register(
        self: &Arc<Self>,
        script: &str,
        reads: &BTreeMap<String, KvVersion>,
        writes: &BTreeMap<String, Option<serde_json::Value>>,
        version: KvVersion,
    ) -> Unsettled {
        let mut keys = Vec::with_capacity(writes.len());
        let settlement = Arc::new(Settlement::default());
        if !writes.is_empty() {
            let mut scripts = self.lock();
            let entries = scripts.entry(script.to_owned()).or_default();
            for (key, value) in writes {
                let chain = match entries.get(key) {
                    Some(e) if reads.get(key) == Some(&e.version) => e.chain,
                    _ => self.chains.fetch_add(1, Ordering::Relaxed),
                };
                entries.insert(
                    key.clone(),
                    Entry {
                        value: value.clone(),
                        version,
                        chain,
                        settlement: settlement.clone(),
                    },
                );
                keys.push((key.clone(), chain));
            }
        }
        Unsettled {
            overlay: self.clone(),
            script: script.to_owned(),
            keys,
            version,
            committed: false,
            settlement,
        }
    }

    /// Scripts with a write in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Entry>>> {
        self.scripts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One run's writes in flight; dropped unsettled, they did not commit.
pub struct Unsettled {
    overlay: Arc<Overlay>,
    script: String,
    /// Each key written, with its entry's chain.
    keys: Vec<(String, u64)>,
    version: KvVersion,
    committed: bool,
    settlement: Arc<Settlement>,
}

impl Unsettled {
    /// The commit's outcome: `true` when it applied these very writes (not
    /// when an earlier delivery had been applied instead).
    pub fn settle(mut self, committed: bool) {
        self.committed = committed;
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        self.settlement.set(self.committed);
        if self.keys.is_empty() {
            return;
        }
        let mut scripts = self.overlay.lock();
        let Some(entries) = scripts.get_mut(&self.script) else {
            return;
        };
        for (key, chain) in &self.keys {
            let gone = entries.get(key).is_some_and(|e| {
                // Committed: the store answers the same now; a later write
                // of the key stays. Not committed: neither will any write
                // that read this one.
                if self.committed {
                    e.version == self.version
                } else {
                    e.chain == *chain
                }
            });
            if gone {
                entries.remove(key);
            }
        }
        if entries.is_empty() {
            scripts.remove(&self.script);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn writes(key: &str, v: i64) -> BTreeMap<String, Option<serde_json::Value>> {
        BTreeMap::from([(key.to_owned(), Some(json!(v)))])
    }

    fn reads(key: &str, version: KvVersion) -> BTreeMap<String, KvVersion> {
        BTreeMap::from([(key.to_owned(), version)])
    }

    fn value(o: &Overlay, key: &str) -> Option<(serde_json::Value, KvVersion)> {
        o.get("s", key).flatten().map(|e| (e.value, e.version))
    }

    #[test]
    fn a_committed_write_leaves_and_a_later_one_of_the_key_stays() {
        let o = Arc::new(Overlay::default());
        let first = o.register("s", &reads("k", 3), &writes("k", 1), 10);
        assert_eq!(value(&o, "k"), Some((json!(1), 10)));
        let second = o.register("s", &reads("k", 10), &writes("k", 2), 11);
        assert_eq!(value(&o, "k"), Some((json!(2), 11)));
        first.settle(true);
        assert_eq!(value(&o, "k"), Some((json!(2), 11)));
        second.settle(true);
        assert_eq!(o.get("s", "k"), None);
        assert!(o.is_empty());
    }

    #[test]
    fn a_write_that_did_not_commit_takes_the_writes_built_on_it_along() {
        let o = Arc::new(Overlay::default());
        let first = o.register("s", &reads("k", 3), &writes("k", 1), 10);
        let _second = o.register("s", &reads("k", 10), &writes("k", 2), 11);
        drop(first);
        assert_eq!(o.get("s", "k"), None);
    }

    #[test]
    fn a_failed_write_leaves_a_later_one_that_did_not_read_it() {
        let o = Arc::new(Overlay::default());
        let first = o.register("s", &reads("k", 3), &writes("k", 1), 10);
        // Read the store (version 3), not the write in flight: a chain of
        // its own.
        let _second = o.register("s", &reads("k", 3), &writes("k", 2), 11);
        first.settle(false);
        assert_eq!(value(&o, "k"), Some((json!(2), 11)));
    }

    #[tokio::test]
    async fn a_failed_run_knows_whether_the_writes_it_read_in_flight_committed() {
        let o = Arc::new(Overlay::default());
        let patience = std::time::Duration::from_secs(5);
        let first = o.register("s", &reads("k", 3), &writes("k", 1), 10);
        InFlightReads::begin();
        assert!(o.get("s", "k").is_some());
        let read = InFlightReads::take();
        assert!(!read.is_empty());
        assert!(InFlightReads::take().is_empty(), "taken once");
        let waiting = tokio::spawn(async move { read.all_committed(patience).await });
        tokio::task::yield_now().await;
        first.settle(true);
        assert!(waiting.await.unwrap(), "the write it read committed");

        let second = o.register("s", &reads("k", 3), &writes("k", 2), 11);
        InFlightReads::begin();
        o.get("s", "k");
        let read = InFlightReads::take();
        drop(second);
        assert!(
            !read.all_committed(patience).await,
            "the write it read did not"
        );

        // Unanswered past its patience: not taken as committed.
        let _third = o.register("s", &reads("k", 3), &writes("k", 3), 12);
        InFlightReads::begin();
        o.get("s", "k");
        let read = InFlightReads::take();
        assert!(
            !read
                .all_committed(std::time::Duration::from_millis(10))
                .await
        );
    }

    #[test]
    fn a_delete_in_flight_reads_as_absent_and_other_scripts_see_nothing() {
        let o = Arc::new(Overlay::default());
        let delete = BTreeMap::from([("k".to_owned(), None)]);
        let _d = o.register("s", &BTreeMap::new(), &delete, 10);
        assert!(matches!(o.get("s", "k"), Some(None)));
        assert_eq!(o.get("t", "k"), None);
        assert_eq!(o.get("s", "other"), None);
    }
}
