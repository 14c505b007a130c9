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

type Job = (String, Limits, oneshot::Sender<Result<(), CompileError>>);

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
                    let _ = reply.send(sandbox.compile(&source, &limits).map(drop));
                }
            })?;
        Ok(Self { jobs: tx })
    }

    /// Compiles `source`; `Err` carries the position of the first error.
    pub async fn check(&self, source: String, limits: Limits) -> Result<(), CompileError> {
        let (tx, rx) = oneshot::channel();
        let gone = || CompileError {
            message: "the compiler thread is gone".into(),
            line: 0,
            column: 0,
        };
        self.jobs.send((source, limits, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}
