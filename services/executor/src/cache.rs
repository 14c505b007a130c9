//! Compiled scripts, per (script, version).
//!
//! Versions are immutable, so an entry never goes stale; it only ages out
//! when more than `capacity` versions are in use.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use picloud_core::Limits;
use picloud_sandbox::AST;

pub const DEFAULT_CAPACITY: usize = 1024;

pub struct Compiled {
    pub ast: AST,
    pub limits: Limits,
    /// Pinned module versions.
    pub modules: BTreeMap<String, u32>,
    /// Which of `event` and `request` the script can read.
    pub inputs: picloud_sandbox::Inputs,
}

type Key = (String, u32);

#[derive(Clone)]
pub struct AstCache {
    inner: Arc<Mutex<LruCache<Key, Arc<Compiled>>>>,
}

impl AstCache {
    pub fn new(capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(1)).expect("capacity is at least 1");
        Self {
            inner: Arc::new(Mutex::new(LruCache::new(cap))),
        }
    }

    pub fn get(&self, script: &str, version: u32) -> Option<Arc<Compiled>> {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.get(&(script.to_owned(), version)).cloned()
    }

    pub fn insert(&self, script: &str, version: u32, compiled: Arc<Compiled>) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.put((script.to_owned(), version), compiled);
    }
}
