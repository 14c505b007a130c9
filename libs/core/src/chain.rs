//! Bounds on event chains: how far one invocation's emits may reach.
//!
//! A script that emits to a topic it is subscribed to (directly, or around a
//! loop of scripts) would run forever, and one that emits twice per run
//! grows exponentially. Every job therefore carries its [`Chain`]: its hop
//! count (0 for a call from outside, a cron firing or an async HTTP call;
//! parent + 1 for an event job) and the invocation budget its subtree of the
//! trace may still spend.
//!
//! The budget needs no shared counter: a root starts with the operator's
//! `max_trace_invocations`; an invocation spends one and splits the rest
//! evenly between the jobs its emits create. By induction, a whole trace
//! never runs more invocations than its root's budget, across any number of
//! managers and executors. The price is that an uneven tree may end one
//! branch while others still had budget; the bound stays a bound.
//!
//! A job past either bound is not run: the executor stores it as a dead
//! letter whose error names the bound ([`Chain::exceeded`]).

use serde::{Deserialize, Serialize};

/// Default of `max_chain_depth`: hops an event chain may take.
pub const DEFAULT_MAX_CHAIN_DEPTH: u32 = 16;
/// Default of `max_trace_invocations`: invocations one trace may run.
pub const DEFAULT_MAX_TRACE_INVOCATIONS: u32 = 1_000;

/// Where a job stands in its trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// Emits between the trace's root and this job (0 for a root).
    #[serde(default)]
    pub hop: u32,
    /// Invocations this job and everything it causes may still run; `None`
    /// for a root, which gets the operator's `max_trace_invocations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<u32>,
}

impl Chain {
    /// The chain of each of the `children` jobs an invocation at `self`
    /// creates: one hop further, sharing what is left of the budget after
    /// this invocation's own run.
    pub fn child(self, children: usize, max_trace_invocations: u32) -> Chain {
        let left = self
            .budget
            .unwrap_or(max_trace_invocations)
            .saturating_sub(1);
        let share = u32::try_from(children.max(1))
            .map(|n| left / n)
            .unwrap_or(0);
        Chain {
            hop: self.hop.saturating_add(1),
            budget: Some(share),
        }
    }

    /// Why a job at this position must not run (the bound it broke), or
    /// `None` when it may.
    pub fn exceeded(self, max_depth: u32) -> Option<String> {
        if self.hop > max_depth {
            return Some(format!(
                "event chain too deep: hop {} is past max_chain_depth ({max_depth})",
                self.hop
            ));
        }
        if self.budget == Some(0) {
            return Some("event chain too large: its trace has spent max_trace_invocations".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_loop_ends_past_the_depth() {
        let mut at = Chain::default();
        for _ in 0..DEFAULT_MAX_CHAIN_DEPTH {
            at = at.child(1, DEFAULT_MAX_TRACE_INVOCATIONS);
            assert_eq!(at.exceeded(DEFAULT_MAX_CHAIN_DEPTH), None, "{at:?}");
        }
        let past = at.child(1, DEFAULT_MAX_TRACE_INVOCATIONS);
        assert!(
            past.exceeded(DEFAULT_MAX_CHAIN_DEPTH)
                .unwrap()
                .contains("max_chain_depth (16)")
        );
    }

    #[test]
    fn a_fan_out_never_runs_more_than_the_budget() {
        // Each run emits `fan` events: count every run the budget allows.
        fn runs(at: Chain, fan: usize, max: u32) -> u64 {
            if at.exceeded(u32::MAX).is_some() {
                return 0;
            }
            let child = at.child(fan, max);
            1 + (0..fan).map(|_| runs(child, fan, max)).sum::<u64>()
        }
        for (fan, max) in [(2, 20), (2, 1_000), (3, 1_000), (1, 50), (7, 100)] {
            let total = runs(Chain::default(), fan, max);
            assert!(total <= max as u64, "fan {fan}, max {max}: {total} runs");
        }
        assert_eq!(runs(Chain::default(), 2, 20), 15);
        let spent = Chain {
            hop: 3,
            budget: Some(0),
        };
        assert!(
            spent
                .exceeded(16)
                .unwrap()
                .contains("max_trace_invocations")
        );
    }
}
