//! The roll-ups behind `GET /api/v1/stats` and `GET /api/v1/topology`.
//!
//! Every invocation report this manager stores (from the records stream, a
//! commit, a dead letter) and every committed emit is added to an
//! in-memory aggregate keyed by (step, bucket, script) and (topic,
//! direction, script). The first addition to an empty aggregate wakes the
//! flusher, which lets more gather for [`FLUSH_AFTER`] and adds it all to
//! Postgres in two statements. So the commit path pays a lock and a map
//! update, never a shared row lock in its transaction, and an idle manager
//! runs no timer. A manager that dies loses at most the last
//! [`FLUSH_AFTER`] of counts (stats are for people, not billing); a
//! record batch redelivered after a crash may be counted twice.
//!
//! Durations go into [`BUCKETS`] histogram buckets of √2 width from 50 µs
//! (so a percentile is within ±19% of the true value), summed element-wise
//! across rows and managers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use picloud_core::{Backoff, InvocationRecord, InvocationStatus, Shutdown};
use picloud_store::{FlowRow, StatRow, Store};
use tokio::sync::Notify;

pub const BUCKETS: usize = 42;
const SMALLEST_US: f64 = 50.0;
pub const FLUSH_AFTER: Duration = Duration::from_secs(1);
/// Rows kept for a flush that failed; past this, counts are dropped (and
/// said so in the log) rather than growing without bound.
const MAX_PENDING: usize = 100_000;
/// The roll-up steps, in seconds: minute and hour rows.
pub const STEPS: [i32; 2] = [60, 3600];

/// The histogram bucket of a duration.
pub fn bucket_of(duration_us: u64) -> usize {
    if (duration_us as f64) < SMALLEST_US {
        return 0;
    }
    let halves = ((duration_us as f64) / SMALLEST_US).log2() * 2.0;
    (halves.floor() as usize + 1).min(BUCKETS - 1)
}

/// The durations (µs) bucket `i` holds: `[low, high)`.
pub fn bucket_bounds(i: usize) -> (f64, f64) {
    let edge = |k: usize| SMALLEST_US * 2f64.powf(k as f64 / 2.0);
    if i == 0 {
        (0.0, SMALLEST_US)
    } else {
        (edge(i - 1), edge(i))
    }
}

/// The `q` quantile (0..1) of a histogram, in µs, interpolated within its
/// bucket; `None` when it is empty.
pub fn quantile(hist: &[i64], q: f64) -> Option<f64> {
    let total: i64 = hist.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = (q * total as f64).max(1.0);
    let mut below = 0.0;
    for (i, &n) in hist.iter().enumerate() {
        let n = n as f64;
        if n > 0.0 && below + n >= rank {
            let (low, high) = bucket_bounds(i);
            return Some(low + (high - low) * ((rank - below) / n));
        }
        below += n;
    }
    Some(bucket_bounds(hist.len() - 1).1)
}

#[derive(Default)]
struct Pending {
    stats: HashMap<(i32, DateTime<Utc>, String), StatRow>,
    flows: HashMap<(String, &'static str, String), FlowRow>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.stats.is_empty() && self.flows.is_empty()
    }

    fn add_stat(&mut self, row: StatRow) {
        let key = (row.step_s, row.bucket, row.script.clone());
        match self.stats.get_mut(&key) {
            Some(have) => have.merge(&row),
            None => {
                self.stats.insert(key, row);
            }
        }
    }

    fn add_flow(&mut self, flow: FlowRow) {
        let key = (flow.topic.clone(), flow.direction, flow.script.clone());
        let have = self.flows.entry(key).or_insert_with(|| FlowRow {
            count: 0,
            ..flow.clone()
        });
        have.count += flow.count;
        have.last_at = have.last_at.max(flow.last_at);
    }
}

/// The aggregate, shared by the writers of invocation records.
#[derive(Clone, Default)]
pub struct Rollup {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
}

impl Rollup {
    /// Counts `records` (a `queued` record is no run yet and is skipped).
    pub fn add_records<'a>(&self, records: impl IntoIterator<Item = &'a InvocationRecord>) {
        self.update(|p| {
            for r in records {
                if r.status == InvocationStatus::Queued {
                    continue;
                }
                let mut hist = vec![0; BUCKETS];
                hist[bucket_of(r.duration_us)] = 1;
                for step_s in STEPS {
                    let Ok(bucket) = r
                        .started_at
                        .duration_trunc(chrono::Duration::seconds(step_s.into()))
                    else {
                        continue;
                    };
                    for script in [r.script.as_str(), ""] {
                        p.add_stat(StatRow {
                            step_s,
                            bucket,
                            script: script.to_owned(),
                            requests: 1,
                            errors: i64::from(r.status != InvocationStatus::Ok),
                            duration_us_sum: r.duration_us.min(i64::MAX as u64) as i64,
                            hist: hist.clone(),
                        });
                    }
                }
            }
        });
    }

    /// Counts `count` events of `topic` emitted by, or delivered to, `script`.
    pub fn add_flow(&self, topic: &str, direction: &'static str, script: &str, count: i64) {
        self.update(|p| {
            p.add_flow(FlowRow {
                topic: topic.to_owned(),
                direction,
                script: script.to_owned(),
                count,
                last_at: Utc::now(),
            })
        });
    }

    fn update(&self, f: impl FnOnce(&mut Pending)) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = p.is_empty();
        f(&mut p);
        if p.stats.len() + p.flows.len() > MAX_PENDING {
            tracing::warn!("stats cannot be stored; dropping the oldest counts");
            *p = Pending::default();
        }
        if was_empty && !p.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Writes what gathers until shutdown (and once more then).
    pub async fn run(self, store: Store, shutdown: Shutdown) {
        let mut backoff = Backoff::new(FLUSH_AFTER, Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(FLUSH_AFTER) => {}
            }
            while let Err(e) = self.flush(&store).await {
                tracing::warn!(error = %e, retry_in = ?backoff.ceiling(), "cannot store stats");
                if picloud_bus::pause_or_stop(&mut backoff, &shutdown).await {
                    return;
                }
            }
            backoff.reset();
        }
        if let Err(e) = self.flush(&store).await {
            tracing::warn!(error = %e, "stats lost at shutdown");
        }
    }

    /// Writes the aggregate; what was not stored is put back, to be tried
    /// again.
    pub async fn flush(&self, store: &Store) -> Result<(), picloud_store::StoreError> {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if taken.is_empty() {
            return Ok(());
        }
        let stats: Vec<StatRow> = taken.stats.values().cloned().collect();
        if let Err(e) = store.add_stats(&stats).await {
            self.update(|p| {
                taken.stats.into_values().for_each(|s| p.add_stat(s));
                taken.flows.into_values().for_each(|f| p.add_flow(f));
            });
            return Err(e);
        }
        let flows: Vec<FlowRow> = taken.flows.values().cloned().collect();
        if let Err(e) = store.add_flows(&flows).await {
            self.update(|p| taken.flows.into_values().for_each(|f| p.add_flow(f)));
            return Err(e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_sqrt2_wide_from_50us() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(49), 0);
        assert_eq!(bucket_of(50), 1);
        assert_eq!(bucket_of(70), 1);
        assert_eq!(bucket_of(71), 2);
        assert_eq!(bucket_of(100), 3);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for d in [1u64, 50, 99, 1_000, 123_456, 10_000_000] {
            let (low, high) = bucket_bounds(bucket_of(d));
            assert!(low <= d as f64 && (d as f64) < high, "{d}: {low}..{high}");
        }
    }

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let mut hist = vec![0i64; BUCKETS];
        // 90 calls of 1 ms, 10 of 100 ms.
        hist[bucket_of(1_000)] = 90;
        hist[bucket_of(100_000)] = 10;
        let p50 = quantile(&hist, 0.5).unwrap();
        let p95 = quantile(&hist, 0.95).unwrap();
        assert!((707.0..=1_415.0).contains(&p50), "{p50}");
        assert!((70_710.0..=141_422.0).contains(&p95), "{p95}");
        assert_eq!(quantile(&vec![0; BUCKETS], 0.5), None);
    }
}
