//! The per-invocation count of outbound calls.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::client::EgressError;

/// How many outbound calls an invocation may still make. Create one per
/// invocation and [`CallBudget::take`] before each call (redirects do not
/// count: they are part of the call).
#[derive(Debug)]
pub struct CallBudget {
    limit: u32,
    used: AtomicU32,
}

impl CallBudget {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            used: AtomicU32::new(0),
        }
    }

    /// Counts one call, or refuses it with [`EgressError::CallLimit`] when
    /// the budget is spent.
    pub fn take(&self) -> Result<(), EgressError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.limit).then_some(used + 1)
            })
            .map(|_| ())
            .map_err(|_| EgressError::CallLimit { limit: self.limit })
    }

    /// Calls made so far.
    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_to_the_limit_and_no_further() {
        let budget = CallBudget::new(3);
        for _ in 0..3 {
            assert!(budget.take().is_ok());
        }
        let err = budget.take().unwrap_err();
        assert_eq!(err, EgressError::CallLimit { limit: 3 });
        assert!(err.is_limit());
        assert_eq!(
            err.to_string(),
            "outbound HTTP call limit exceeded: at most 3 calls per invocation"
        );
        assert_eq!(budget.used(), 3);
    }

    #[test]
    fn zero_allows_nothing() {
        assert!(CallBudget::new(0).take().is_err());
    }

    #[test]
    fn concurrent_takes_never_exceed_the_limit() {
        let budget = std::sync::Arc::new(CallBudget::new(100));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || (0..50).filter(|_| budget.take().is_ok()).count())
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(granted, 100);
        assert_eq!(budget.used(), 100);
    }
}
