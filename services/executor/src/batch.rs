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
//!
//! An item somebody waits for ([`Batcher::push_urgent`]: a job's record,
//! acknowledged only once it is stored) cuts the gathering short to
//! [`URGENT_LINGER`]: long enough that the records of concurrent jobs still
//! go together, short enough not to hold their jobs.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

pub const LINGER: Duration = Duration::from_millis(20);
/// The gathering of a batch that holds an item somebody waits for.
pub const URGENT_LINGER: Duration = Duration::from_millis(2);

/// Closes its batcher when dropped: held (in an `Arc`) by every handle
/// that pushes, so the publisher ends after the last one goes.
pub struct Closer<T>(pub std::sync::Arc<Batcher<T>>);

impl<T> Drop for Closer<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

pub struct Batcher<T> {
    items: Mutex<Items<T>>,
    /// Signalled by the item that finds the buffer empty, and on close.
    ready: Notify,
    closed: AtomicBool,
    dropped: AtomicU64,
    capacity: usize,
    /// What the items are, for the "dropped" warning.
    what: &'static str,
}

/// The items gathered, and whether one of them is waited for.
struct Items<T> {
    items: Vec<T>,
    urgent: bool,
}

impl<T> Batcher<T> {
    pub fn new(capacity: usize, what: &'static str) -> Self {
        Self {
            items: Mutex::new(Items {
                items: Vec::new(),
                urgent: false,
            }),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            capacity,
            what,
        }
    }

    /// Queues `item`, or drops it (counted) when the buffer is full.
    pub fn push(&self, item: T) {
        self.push_as(item, false);
    }

    /// Queues `item`, which somebody waits for: its batch goes after
    /// [`URGENT_LINGER`]. A full buffer drops it like any other (the
    /// waiter learns it from whatever the item carries being dropped).
    pub fn push_urgent(&self, item: T) {
        self.push_as(item, true);
    }

    fn push_as(&self, item: T, urgent: bool) {
        let mut items = self.lock();
        if items.items.len() >= self.capacity {
            drop(items);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, what = self.what, "buffer full; dropped");
            }
            return;
        }
        items.items.push(item);
        let first = items.items.len() == 1;
        // The publisher hears of the first item, and of the first urgent
        // one (it may be lingering for longer).
        let hurry = urgent && !items.urgent;
        items.urgent |= urgent;
        drop(items);
        if first || hurry {
            self.ready.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Items<T>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
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
        self.lock().items.is_empty()
    }

    fn is_urgent(&self) -> bool {
        self.lock().urgent
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
        let began = tokio::time::Instant::now();
        let urgent_until = began + URGENT_LINGER;
        let mut until = if self.is_urgent() {
            urgent_until
        } else {
            began + LINGER
        };
        // On close, whatever is there goes out at once. (A signal from an
        // item that came while the last batch was being published only
        // means "not empty": keep lingering.)
        while !self.closed.load(Ordering::Acquire) {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = self.ready.notified() => {
                    if self.is_urgent() {
                        until = until.min(urgent_until);
                    }
                }
            }
        }
        let mut items = self.lock();
        std::mem::swap(&mut items.items, out);
        items.urgent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;

    /// The time (on tokio's paused clock) `pushes` took to come out as a
    /// batch, and the batch.
    async fn gathered(pushes: impl FnOnce(&Batcher<u32>)) -> (Duration, Vec<u32>) {
        let batcher = Arc::new(Batcher::new(8, "test items"));
        let began = Instant::now();
        pushes(&batcher);
        let mut out = Vec::new();
        assert!(batcher.next_batch(&mut out).await);
        (began.elapsed(), out)
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_lingers_for_more_items() {
        let (took, items) = gathered(|b| {
            b.push(1);
            b.push(2);
        })
        .await;
        assert_eq!(items, [1, 2]);
        assert_eq!(took, LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_somebody_waits_for_cuts_the_linger_short() {
        let (took, items) = gathered(|b| {
            b.push(1);
            b.push_urgent(2);
            b.push(3);
        })
        .await;
        assert_eq!(items, [1, 2, 3]);
        assert_eq!(took, URGENT_LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_item_pushed_while_lingering_cuts_it_short() {
        let batcher = Arc::new(Batcher::new(8, "test items"));
        batcher.push(1);
        let late = batcher.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            late.push_urgent(2);
        });
        let began = Instant::now();
        let mut out = Vec::new();
        assert!(batcher.next_batch(&mut out).await);
        assert_eq!(out, [1, 2]);
        assert_eq!(began.elapsed(), URGENT_LINGER);
        // The urgency went with its batch: the next one lingers in full.
        batcher.push(3);
        let began = Instant::now();
        out.clear();
        assert!(batcher.next_batch(&mut out).await);
        assert_eq!(out, [3]);
        assert_eq!(began.elapsed(), LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_drops_an_urgent_item_too() {
        let batcher = Batcher::new(1, "test items");
        batcher.push(1);
        batcher.push_urgent(2);
        assert_eq!(batcher.dropped(), 1);
        let mut out = Vec::new();
        assert!(batcher.next_batch(&mut out).await);
        assert_eq!(out, [1]);
    }
}
