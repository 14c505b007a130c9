//! The async job's lifecycle as one pure state machine: given the job's
//! attempt, its bound and what just happened to it, [`next_step`] names
//! what the executor does next. [`crate::jobs`] only carries the steps out
//! (JetStream acks, the dead letter call, the worker pool), so every rule
//! about retries and dead letters lives here and is tested here, on its own.
//!
//! ```text
//!   run ──Committed──────────────────────────────► Ack
//!    │ ──Failed, attempt < max──────────────────► Nak(retry_delay(attempt))
//!    │ ──Failed, attempt ≥ max / ChainExceeded──► DeadLetter ─┬─Stored──► Term
//!    │                                                        └─Refused─► Nak(retry_delay(1))
//!    └─NotCommitted──► InProgress (hold with progress acks, Backoff pause,
//!                      run again; never spends an attempt)
//!                      └─ while shutting down ──► Nak(retry_delay(1))
//! ```

use std::time::Duration;

use picloud_core::Config;

/// What one job is, as far as its lifecycle cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobState {
    /// JetStream's delivery count (1 on the first delivery).
    pub attempt: u32,
    /// The job's bound on attempts (0 is read as 1).
    pub max_attempts: u32,
    /// The executor is stopping: nothing is held any more.
    pub shutting_down: bool,
}

/// What just happened to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The run succeeded and its record and effects are committed (or it
    /// needed no commit).
    Committed,
    /// The run failed by the script's own fault (an error, a limit, a
    /// commit the store refused or one over `max_commit_bytes`).
    Failed,
    /// The run could not be committed, or failed after a kv read the store
    /// could not answer: a dependency's fault, not the script's.
    NotCommitted,
    /// The event chain broke its bound: the job ends whatever its attempt.
    ChainExceeded,
    /// The dead letter is stored.
    DeadLetterStored,
    /// The dead letter could not be stored.
    DeadLetterNotStored,
}

/// What the executor does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Acknowledge: the job is done.
    Ack,
    /// Hand the job back, to be redelivered after this delay (the next
    /// attempt).
    Nak(Duration),
    /// Store the dead letter, then feed back `DeadLetterStored` or
    /// `DeadLetterNotStored`.
    DeadLetter,
    /// Terminate: JetStream never redelivers it.
    Term,
    /// Keep the job (progress acks) for a [`picloud_core::Backoff`] pause,
    /// then run it again; the attempt is not spent.
    InProgress,
}

/// The next step of `job` after `event`. Pure: `config` only supplies the
/// retry timing.
pub fn next_step(job: JobState, event: Event, config: &Config) -> Step {
    match event {
        Event::Committed => Step::Ack,
        Event::Failed if job.attempt < job.max_attempts.max(1) => {
            Step::Nak(config.retry_delay(job.attempt))
        }
        Event::Failed | Event::ChainExceeded => Step::DeadLetter,
        Event::DeadLetterStored => Step::Term,
        // Nothing is dropped: without its dead letter the job comes back.
        Event::DeadLetterNotStored => Step::Nak(config.retry_delay(1)),
        // Handed back (its record is kept) for another executor.
        Event::NotCommitted if job.shutting_down => Step::Nak(config.retry_delay(1)),
        Event::NotCommitted => Step::InProgress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            retry_base_ms: 100,
            retry_max_ms: 1_000,
            ..Config::default()
        }
    }

    fn job(attempt: u32, max_attempts: u32) -> JobState {
        JobState {
            attempt,
            max_attempts,
            shutting_down: false,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_committed_run_is_acked_on_any_attempt_even_when_stopping() {
        for attempt in [1, 3, 9] {
            assert_eq!(
                next_step(job(attempt, 3), Event::Committed, &config()),
                Step::Ack
            );
            let stopping = JobState {
                shutting_down: true,
                ..job(attempt, 3)
            };
            assert_eq!(next_step(stopping, Event::Committed, &config()), Step::Ack);
        }
    }

    #[test]
    fn a_failure_below_the_bound_is_naked_with_a_growing_capped_delay() {
        let c = config();
        assert_eq!(next_step(job(1, 9), Event::Failed, &c), Step::Nak(100 * MS));
        assert_eq!(next_step(job(2, 9), Event::Failed, &c), Step::Nak(200 * MS));
        assert_eq!(next_step(job(3, 9), Event::Failed, &c), Step::Nak(400 * MS));
        assert_eq!(
            next_step(job(8, 9), Event::Failed, &c),
            Step::Nak(1_000 * MS)
        );
    }

    #[test]
    fn the_last_failure_and_any_past_it_go_to_the_dead_letter() {
        let c = config();
        assert_eq!(next_step(job(3, 3), Event::Failed, &c), Step::DeadLetter);
        // A redelivery past the bound (JetStream's max_deliver is larger).
        assert_eq!(next_step(job(7, 3), Event::Failed, &c), Step::DeadLetter);
        // max_attempts 0 means one attempt.
        assert_eq!(next_step(job(1, 0), Event::Failed, &c), Step::DeadLetter);
        assert_eq!(next_step(job(1, 1), Event::Failed, &c), Step::DeadLetter);
    }

    #[test]
    fn a_broken_chain_is_dead_lettered_whatever_the_attempt() {
        for attempt in [1, 2, 5] {
            assert_eq!(
                next_step(job(attempt, 5), Event::ChainExceeded, &config()),
                Step::DeadLetter
            );
        }
    }

    #[test]
    fn a_stored_dead_letter_terminates_and_an_unstored_one_retries() {
        let c = config();
        assert_eq!(
            next_step(job(3, 3), Event::DeadLetterStored, &c),
            Step::Term
        );
        assert_eq!(
            next_step(job(3, 3), Event::DeadLetterNotStored, &c),
            Step::Nak(100 * MS)
        );
    }

    #[test]
    fn an_uncommitted_run_is_held_and_never_spends_an_attempt() {
        let c = config();
        // Even on its last attempt: the outage is not the script's fault.
        for attempt in [1, 3, 10] {
            assert_eq!(
                next_step(job(attempt, 3), Event::NotCommitted, &c),
                Step::InProgress
            );
        }
        let stopping = JobState {
            shutting_down: true,
            ..job(3, 3)
        };
        assert_eq!(
            next_step(stopping, Event::NotCommitted, &c),
            Step::Nak(100 * MS)
        );
    }

    #[test]
    fn stopping_changes_only_the_uncommitted_case() {
        let c = config();
        for event in [
            Event::Committed,
            Event::Failed,
            Event::ChainExceeded,
            Event::DeadLetterStored,
            Event::DeadLetterNotStored,
        ] {
            for attempt in [1, 2, 3] {
                let running = job(attempt, 2);
                let stopping = JobState {
                    shutting_down: true,
                    ..running
                };
                assert_eq!(
                    next_step(running, event, &c),
                    next_step(stopping, event, &c),
                    "{event:?} at attempt {attempt}"
                );
            }
        }
    }
}
