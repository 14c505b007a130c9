//! Compiling deploys on a dedicated thread.
//!
//! Rhai's parser recurses; a deep enough script overflows a small stack, and a
//! stack overflow aborts the whole process. Compiles therefore run on one
//! thread whose stack is sized for the deepest nesting the limits allow, never
//! on a tokio worker. One thread is enough: deploys are rare, and a queue of
//! them is bounded by the admin API's callers.

use std::sync::mpsc;

use picloud_core::Limits;
use picloud_sandbox::{CompileError, Sandbox};
use tokio::sync::oneshot;

/// Stack for the compile thread. See docs/ARCHITECTURE.md ("stack safety").
pub const COMPILE_STACK_BYTES: usize = 64 << 20;

type Job = (
    String,
    Limits,
    oneshot::Sender<Result<Vec<String>, CompileError>>,
);

/// The compile thread is gone (it cannot be, short of a bug): a server
/// error, not the user's.
#[derive(Debug, thiserror::Error)]
#[error("the compiler thread is not running")]
pub struct CompilerGone;

#[derive(Clone)]
pub struct Compiler {
    jobs: mpsc::Sender<Job>,
}

impl Compiler {
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("picloud-compile".into())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn(move || {
                let mut sandbox = Sandbox::new();
                // Ends when every sender is gone (the manager shut down).
                while let Ok((source, limits, reply)) = rx.recv() {
                    let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        sandbox.imports(&source, &limits)
                    }));
                    match compiled {
                        Ok(result) => {
                            let _ = reply.send(result);
                        }
                        Err(_) => {
                            // Dropping `reply` reports CompilerGone for this
                            // deploy only; the next one gets a fresh engine.
                            tracing::error!("the Rhai compiler panicked; engine rebuilt");
                            sandbox = Sandbox::new();
                        }
                    }
                }
            })?;
        Ok(Self { jobs: tx })
    }

    /// Compiles `source` and lists the modules it imports. The inner `Err`
    /// is the user's compile error, with the position of the first problem.
    pub async fn check(
        &self,
        source: String,
        limits: Limits,
    ) -> Result<Result<Vec<String>, CompileError>, CompilerGone> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((source, limits, tx))
            .map_err(|_| CompilerGone)?;
        rx.await.map_err(|_| CompilerGone)
    }
}
