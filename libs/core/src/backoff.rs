//! [`Backoff`]: the pause before retrying something that failed because a
//! dependency (Postgres, NATS, a manager) was unavailable.
//!
//! Capped exponential with "equal jitter": the n-th pause is drawn from
//! `[c/2, c]` where `c = min(base * 2^n, max)`. The lower half bound is what
//! makes "never more often than the backoff allows" hold for every draw,
//! while the random half spreads the retries of many waiters (executors
//! held through the same outage) so they do not return in lockstep.
//!
//! One type for every retry loop: issue #17 moves the remaining hand-written
//! loops onto it.

use std::time::Duration;

/// Capped exponential backoff with jitter. Cheap to copy; [`reset`] it
/// after a success.
///
/// [`reset`]: Backoff::reset
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    /// Pauses handed out since the last reset.
    step: u32,
}

impl Backoff {
    /// Starts at `base` (at least 1 ms) and never exceeds `max` (at least
    /// `base`).
    pub fn new(base: Duration, max: Duration) -> Self {
        let base = base.max(Duration::from_millis(1));
        Self {
            base,
            max: max.max(base),
            step: 0,
        }
    }

    /// The operator's retry timing (`retry_base_ms`, `retry_max_ms`).
    pub fn from_config(config: &crate::Config) -> Self {
        Self::new(
            Duration::from_millis(config.retry_base_ms),
            Duration::from_millis(config.retry_max_ms),
        )
    }

    /// The upper bound of the next pause (no jitter).
    pub fn ceiling(&self) -> Duration {
        // 2^31 * base (>= 24 days at 1 ms) is past any sensible cap; the
        // multiplication saturates rather than overflows.
        let factor = 1u32 << self.step.min(31);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next pause, in `[ceiling / 2, ceiling]`, and one step further.
    pub fn next_pause(&mut self) -> Duration {
        let pause = jittered(self.ceiling(), random_u64());
        self.step = self.step.saturating_add(1);
        pause
    }

    /// How many pauses were handed out since the last reset.
    pub fn steps(&self) -> u32 {
        self.step
    }

    /// Back to `base` (after a success).
    pub fn reset(&mut self) {
        self.step = 0;
    }
}

/// `ceiling / 2` plus the part of the other half that `random` picks.
fn jittered(ceiling: Duration, random: u64) -> Duration {
    let half = ceiling / 2;
    let spread = (ceiling - half).as_nanos() as u64;
    let extra = if spread == 0 {
        0
    } else {
        random % (spread + 1)
    };
    half + Duration::from_nanos(extra)
}

/// Randomness for jitter only (not for anything secret): a v4 UUID already
/// draws from the OS generator, which spares a dependency.
fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 1_000 * MS);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            b.next_pause();
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(b.steps(), 6);
        b.reset();
        assert_eq!(b.ceiling(), 100 * MS);
    }

    #[test]
    fn every_pause_lies_between_half_the_ceiling_and_the_ceiling() {
        let mut b = Backoff::new(10 * MS, 10_000 * MS);
        for _ in 0..200 {
            let c = b.ceiling();
            let p = b.next_pause();
            assert!(p >= c / 2 && p <= c, "{p:?} outside [{:?}, {c:?}]", c / 2);
        }
    }

    #[test]
    fn jitter_spans_the_upper_half() {
        let c = 1_000 * MS;
        assert_eq!(jittered(c, 0), 500 * MS);
        assert_eq!(jittered(c, 500_000_000), c);
        assert_eq!(jittered(c, 500_000_001), 500 * MS);
        // Draws actually differ (two equal draws in a row are possible but
        // twenty are not).
        let mut b = Backoff::new(c, c);
        let first = b.next_pause();
        assert!((0..20).any(|_| b.next_pause() != first));
    }

    #[test]
    fn degenerate_settings_are_made_sane() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.ceiling(), MS);
        assert!(b.next_pause() >= MS / 2);
        // Huge step counts neither overflow nor pass the cap.
        let mut b = Backoff::new(MS, Duration::from_secs(3_600));
        for _ in 0..100 {
            b.next_pause();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(3_600));
    }
}
