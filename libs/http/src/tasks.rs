//! A role's background tasks (relay, scheduler, record consumer, route
//! watch, …), supervised: a task that ends or panics while the role is
//! meant to run is logged with its cause and makes `/readyz` fail, instead
//! of vanishing with its dropped `JoinError`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use picloud_core::Shutdown;
use tokio::task::JoinSet;

use crate::ReadyCheck;

/// The background tasks of one role.
pub struct Tasks {
    set: JoinSet<()>,
    /// "name cause" of every task that stopped before shutdown.
    died: Arc<Mutex<Vec<String>>>,
    shutdown: Shutdown,
}

impl Tasks {
    /// Tasks that are expected to run until `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            set: JoinSet::new(),
            died: Arc::default(),
            shutdown,
        }
    }

    /// Runs `task` in the background under `name`. Ending before shutdown,
    /// or panicking at any time, is logged and reported by [`Tasks::ready`].
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (died, shutdown) = (self.died.clone(), self.shutdown.clone());
        self.set.spawn(async move {
            let cause = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(()) if shutdown.is_cancelled() => return,
                Ok(()) => "ended before shutdown".to_owned(),
                Err(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
            };
            tracing::error!(task = name, "background task {cause}");
            died.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(format!("{name} {cause}"));
        });
    }

    /// The names and causes of the tasks that stopped early.
    pub fn died(&self) -> Vec<String> {
        self.died
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// `inner`, failing also while any task of `role` has stopped early.
    pub fn ready(&self, role: &'static str, inner: ReadyCheck) -> ReadyCheck {
        let died = self.died.clone();
        Arc::new(move || {
            let dead = died
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .join(", ");
            let inner = inner();
            Box::pin(async move {
                if !dead.is_empty() {
                    return Err(format!("{role}: background task stopped: {dead}"));
                }
                inner.await
            })
        })
    }

    /// Waits for every task to end (after shutdown).
    pub async fn join(mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn always_ready() -> ReadyCheck {
        crate::ready_when("never", || true)
    }

    async fn wait_for_death(tasks: &Tasks) {
        for _ in 0..500 {
            if !tasks.died().is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the task was never reported");
    }

    #[tokio::test]
    async fn a_task_that_ends_early_fails_readiness() {
        let shutdown = Shutdown::new();
        let mut tasks = Tasks::new(shutdown.clone());
        let ready = tasks.ready("manager", always_ready());
        tasks.spawn("forever", std::future::pending());
        assert_eq!(ready().await, Ok(()));
        tasks.spawn("relay", async {});
        wait_for_death(&tasks).await;
        let err = ready().await.unwrap_err();
        assert_eq!(
            err,
            "manager: background task stopped: relay ended before shutdown"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_with_its_message() {
        let shutdown = Shutdown::new();
        let mut tasks = Tasks::new(shutdown.clone());
        let ready = tasks.ready("executor", always_ready());
        tasks.spawn("jobs", async { panic!("lost the consumer") });
        wait_for_death(&tasks).await;
        assert_eq!(tasks.died(), ["jobs panicked: lost the consumer"]);
        assert!(ready().await.unwrap_err().contains("jobs panicked"));
    }

    #[tokio::test]
    async fn tasks_that_end_on_shutdown_are_fine() {
        let shutdown = Shutdown::new();
        let mut tasks = Tasks::new(shutdown.clone());
        let ready = tasks.ready("gateway", always_ready());
        let s = shutdown.clone();
        tasks.spawn("routes", async move { s.cancelled().await });
        shutdown.cancel();
        tasks.join().await;
        assert_eq!(ready().await, Ok(()));
    }

    #[tokio::test]
    async fn the_inner_check_still_counts() {
        let tasks = Tasks::new(Shutdown::new());
        let ready = tasks.ready("gateway", crate::ready_when("gateway: NATS", || false));
        assert_eq!(ready().await, Err("gateway: NATS".to_owned()));
    }
}
