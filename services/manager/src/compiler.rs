//! Compiling deploys on dedicated threads.
//!
//! Rhai's parser recurses; a deep enough script overflows a small stack, and a
//! stack overflow aborts the whole process. Compiles therefore run on
//! [`COMPILE_THREADS`] threads whose stacks are sized for the deepest nesting
//! the limits allow, never on a tokio worker. A compile is bounded (Rhai's
//! quadratic optimizer is skipped for big sources, see
//! `picloud_sandbox::MAX_OPTIMIZED_STATEMENTS`): 256 KiB of the worst
//! sources measured take at most ~130 ms, and two threads keep a deploy
//! from waiting behind another's.

use std::sync::mpsc;

use picloud_core::Limits;
use picloud_sandbox::{CompileError, Sandbox};
use tokio::sync::oneshot;

/// Compile threads: a deploy does not wait behind another one's compile
/// (each is bounded anyway: see docs/PERFORMANCE.md, "Compile time").
pub const COMPILE_THREADS: usize = 2;

/// Takes compile jobs until every sender is gone (the manager shut down).
fn compile_loop(rx: &std::sync::Mutex<mpsc::Receiver<Job>>) {
    let mut sandbox = Sandbox::new();
    loop {
        // Held only while waiting for the next job. A poisoned lock means a
        // sibling panicked while waiting, which leaves the receiver usable.
        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok((source, limits, reply)) = job else {
            return;
        };
        let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sandbox.imports(&source, &limits)
        }));
        match compiled {
            Ok(result) => {
                let _ = reply.send(result);
            }
            Err(_) => {
                // Dropping `reply` reports CompilerGone for this deploy
                // only; the next one gets a fresh engine.
                tracing::error!("the Rhai compiler panicked; engine rebuilt");
                sandbox = Sandbox::new();
            }
        }
    }
}

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
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..COMPILE_THREADS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("picloud-compile-{i}"))
                .stack_size(COMPILE_STACK_BYTES)
                .spawn(move || compile_loop(&rx))?;
        }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Sources of the largest size a deploy may send (256 KiB), each built
    /// to stress one part of the parser.
    fn pathological() -> Vec<(&'static str, String)> {
        const SIZE: usize = 256 << 10;
        let fill = |unit: &str, head: &str, tail: &str| {
            let mut s = String::from(head);
            while s.len() + unit.len() + tail.len() <= SIZE {
                s.push_str(unit);
            }
            s.push_str(tail);
            s
        };
        vec![
            ("many statements", fill("let a = 1;\n", "", "")),
            ("many references", fill("a;", "let a = 1;\n", "")),
            (
                "many calls",
                fill("f(a);", "fn f(x) { x }\nlet a = 1;\n", ""),
            ),
            ("long sum", fill("+a", "let a = 1;\na", ";")),
            ("deep nesting", fill("{", "", "")),
            ("deep parentheses", fill("(", "", "1")),
            ("big array", fill("1,", "let a = [", "1];")),
            ("big map", fill("a:1,", "let m = #{", "b:1};")),
            ("many functions", fill("fn f() { 1 }\n", "", "")),
            ("long string", fill("x", "let s = \"", "\";")),
            (
                "many interpolations",
                fill("${a}", "let a = 1; let s = `", "`;"),
            ),
            ("long chain", fill(".len()", "let s = \"x\"; s", ";")),
        ]
    }

    /// Every pathological source is compiled or refused, on the compile
    /// thread, within a bound far above what it takes (see
    /// docs/PERFORMANCE.md, "Compile time"): a parser that turned
    /// superlinear on one of them would take minutes at 256 KiB.
    #[tokio::test]
    async fn pathological_sources_are_compiled_or_refused_within_a_bound() {
        let compiler = Compiler::start().expect("compiler");
        let limits = Limits::default_maxima();
        for (what, source) in pathological() {
            let started = Instant::now();
            let result = tokio::time::timeout(
                Duration::from_secs(20),
                compiler.check(source, limits.clone()),
            )
            .await
            .unwrap_or_else(|_| panic!("{what}: not compiled within 20 s"))
            .expect("the compiler thread survives");
            eprintln!(
                "compile {what}: {:?} ({})",
                started.elapsed(),
                match &result {
                    Ok(_) => "compiled".to_owned(),
                    Err(e) => format!("refused: {}", e.message),
                }
            );
        }
    }
}
