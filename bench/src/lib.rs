//! Benchmark tooling for PiCloud.
//!
//! The binaries in `src/bin/` are the reference points PiCloud is measured
//! against (see `docs/PERFORMANCE.md`, and `bench/run.sh`, which runs them):
//!
//! - `baseline-axum`: a raw axum hello-world; the ceiling for any HTTP
//!   service on this machine.
//! - `baseline-pipe`: the minimal version of PiCloud's sync path: axum →
//!   NATS → a Rhai AST compiled once, evaluated on a fixed pool of dedicated
//!   threads → reply. `--mode core` uses core request/reply with a queue
//!   group (PiCloud's choice); `--mode jetstream` sends the job through a
//!   work-queue stream with a pull consumer instead.
//! - `redeploy-latency`: how long a running PiCloud takes from "PUT a new
//!   version" to "/fn serves it".
//! - `route-latency`: how long a new custom route takes to be served (on
//!   another gateway too), and a route table of a given size.
//!
//! This library holds what they share: the worker pool, percentiles and
//! run-unique names.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError, bounded};
use rhai::{AST, Dynamic, Engine};

/// Called on the worker thread with the script's value (or error text).
pub type Completion = Box<dyn FnOnce(Result<String, String>) + Send>;

/// A fixed set of dedicated OS threads (not tokio's blocking pool), each
/// with its own Rhai engine, evaluating one AST that was compiled once.
#[derive(Clone)]
pub struct RhaiPool {
    jobs: Sender<Completion>,
}

/// The pool's queue is full; the job is handed back.
pub struct Saturated(pub Completion);

impl RhaiPool {
    /// Compiles `source` once and starts `threads` workers behind a queue
    /// of `queue_depth` jobs.
    pub fn start(source: &str, threads: usize, queue_depth: usize) -> anyhow::Result<Self> {
        let ast: Arc<AST> = Arc::new(Engine::new().compile(source)?);
        let (tx, rx) = bounded::<Completion>(queue_depth.max(1));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let ast = ast.clone();
            std::thread::Builder::new()
                .name(format!("bench-worker-{i}"))
                .stack_size(8 << 20)
                .spawn(move || {
                    let engine = Engine::new();
                    for done in rx {
                        let out = engine
                            .eval_ast::<Dynamic>(&ast)
                            .map(|v| v.to_string())
                            .map_err(|e| e.to_string());
                        done(out);
                    }
                })?;
        }
        Ok(Self { jobs: tx })
    }

    /// Queues a job, or hands it back at once when the queue is full.
    pub fn try_submit(&self, done: Completion) -> Result<(), Saturated> {
        self.jobs.try_send(done).map_err(|e| match e {
            TrySendError::Full(d) | TrySendError::Disconnected(d) => Saturated(d),
        })
    }
}

/// The durable pull consumer "workers" of the work-queue stream
/// `stream_name` (explicit acks, 30 s ack wait, 4096 pending), as a stream
/// of messages.
pub async fn work_queue_consumer(
    client: &async_nats::Client,
    stream_name: &str,
) -> anyhow::Result<async_nats::jetstream::consumer::pull::Stream> {
    use async_nats::jetstream::{self, consumer::pull};
    jetstream::new(client.clone())
        .get_stream(stream_name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open stream {stream_name}: {e}"))?
        .get_or_create_consumer(
            "workers",
            pull::Config {
                durable_name: Some("workers".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 4096,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot create consumer: {e}"))?
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("cannot consume: {e}"))
}

/// Worker threads to start: one per core, like PiCloud's default.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A prefix no other run shares, usable in subjects (`bench_1a2b3c4d`) and,
/// upper-cased, in stream names.
pub fn unique_prefix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("bench_{}", &id[..8])
}

/// The `p`-th percentile (0..=100) of `sorted` (ascending), nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(5));
        assert_eq!(percentile(&v, 90.0), Duration::from_millis(9));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(10));
        assert_eq!(percentile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn the_pool_runs_the_cached_ast() {
        let pool = RhaiPool::start("\"Hello, \" + \"world!\"", 2, 8).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(
            pool.try_submit(Box::new(move |r| tx.send(r).unwrap()))
                .is_ok()
        );
        let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got.unwrap(), "Hello, world!");
    }
}
