//! A bounded hand-off from worker threads to one publishing task, shared by
//! the invocation records and the live logs.
//!
//! `push` never blocks and never fails on the hot path: it appends under a
//! lock, and only the item that finds the buffer empty wakes the publisher.
//! The publisher then lets items gather for [`LINGER`] and takes them all. So
//! under load an item costs a lock and a push, not a task wake-up (which,
//! per invocation, cost more than the item itself). Past the capacity new
//! items are dropped and counted in the log rather than holding up
//! scripts. A timer runs only while a batch is being gathered, never when
//! idle.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

pub const LINGER: Duration = Duration::from_millis(20);

/// Closes its batcher when dropped: held (in an `Arc`) by every handle
/// that pushes, so the publisher ends after the last one goes.
pub struct Closer<T>(pub std::sync::Arc<Batcher<T>>);

impl<T> Drop for Closer<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

pub struct Batcher<T> {
    items: Mutex<Vec<T>>,
    /// Signalled by the item that finds the buffer empty, and on close.
    ready: Notify,
    closed: AtomicBool,
    dropped: AtomicU64,
    capacity: usize,
    /// What the items are, for the "dropped" warning.
    what: &'static str,
}

impl<T> Batcher<T> {
    pub fn new(capacity: usize, what: &'static str) -> Self {
        Self {
            items: Mutex::new(Vec::new()),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            capacity,
            what,
        }
    }

    /// Queues `item`, or drops it (counted) when the buffer is full.
    pub fn push(&self, item: T) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() >= self.capacity {
            drop(items);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, what = self.what, "buffer full; dropped");
            }
            return;
        }
        items.push(item);
        let first = items.len() == 1;
        drop(items);
        if first {
            self.ready.notify_one();
        }
    }

    /// Items dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// No more items will come: the publisher sends what is there and ends.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    fn is_empty(&self) -> bool {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Waits for the next batch and swaps it into `out` (an empty vector
    /// whose capacity the pushers then fill: no regrowth per batch under
    /// their lock). `false` once closed and drained.
    pub async fn next_batch(&self, out: &mut Vec<T>) -> bool {
        // Wait (without a timer) for the first item of a batch. A signal
        // given while nobody waits is kept, so none is lost.
        while self.is_empty() {
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            self.ready.notified().await;
        }
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        // On close, whatever is there goes out at once. (A signal from an
        // item that came while the last batch was being published only
        // means "not empty": keep lingering.)
        while !self.closed.load(Ordering::Acquire) {
            tokio::select! {
                _ = &mut linger => break,
                _ = self.ready.notified() => {}
            }
        }
        std::mem::swap(
            &mut *self.items.lock().unwrap_or_else(|e| e.into_inner()),
            out,
        );
        true
    }
}
