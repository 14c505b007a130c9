//! The executor: where scripts run.
//!
//! - [`pool`]: a fixed set of dedicated OS threads (not tokio's blocking
//!   pool), each owning one sandbox, fed through a bounded queue: a saturated
//!   executor says so at once instead of growing.
//! - [`cache`]: compiled ASTs per (script, version). Versions are immutable,
//!   so a cached AST is never stale; a redeploy is a new key, fetched from the
//!   bus on first use. No restart, no database.
//! - [`serve`]: the loop that takes sync invocations from NATS, runs them
//!   and replies.
//! - [`jobs`]: the loop that pulls async jobs, runs them, commits, and acks,
//!   retries or dead-letters them.
//! - [`run`]: what both share (preparing a version, the record, the
//!   run-and-commit loop that re-runs on a kv conflict).
//! - [`records`]: batches invocation records onto the bus, off the hot path.
//! - [`live`]: publishes each invocation's log lines and end to the live
//!   log, off the hot path (both through [`batch`]).
//! - [`fair`]: per-script concurrency caps, so one script cannot take every
//!   worker.
//!
//! Architecture invariant: the executor holds no database credentials; it
//! learns scripts from the bus's version bucket only.

#![forbid(unsafe_code)]

pub mod batch;
pub mod cache;
pub mod fair;
pub mod host;
pub mod jobs;
pub mod lifecycle;
pub mod live;
pub mod overlay;
pub mod pool;
pub mod queue;
pub mod records;
pub mod run;
pub mod serve;

use std::sync::Arc;

use anyhow::Context;
use picloud_bus::Bus;
use picloud_core::{Config, Shutdown};
use picloud_http::{ReadyCheck, Tasks};

pub struct Executor {
    pub ready: ReadyCheck,
    pub id: String,
    tasks: Tasks,
    workers: usize,
}

/// Starts an executor on `bus` (its own connection, or one `picloud up`
/// shares between the roles).
pub async fn start(config: &Config, bus: Bus, shutdown: Shutdown) -> anyhow::Result<Executor> {
    let id = picloud_bus::nodes::instance_id();
    let workers = config.worker_threads();
    picloud_metrics::global().set_max_scripts(config.metrics_max_scripts);
    let ports = picloud_egress::EgressPolicy::parse_ports(&config.http_ports)
        .context("invalid PICLOUD_HTTP_PORTS")?;
    let policy =
        picloud_egress::EgressPolicy::from_config(&config.http_allow, &config.http_deny, &ports)
            .context("invalid PICLOUD_HTTP_ALLOW or PICLOUD_HTTP_DENY")?;
    tracing::info!(%policy, "outbound HTTP policy");
    let egress =
        picloud_egress::Egress::new(policy).context("cannot build the outbound HTTP client")?;
    let modules = picloud_sandbox::ModuleCache::default();
    let pool = pool::Pool::start(workers, config.queue_depth, modules.clone())
        .context("cannot start worker threads")?;
    let (recorder, record_task) = records::Recorder::start(bus.clone(), shutdown.clone());
    let (live, live_task) = live::LiveLog::start(bus.clone());
    // One script's waiting sync calls may hold at most a quarter of the
    // invocations in flight (see `Server::run`).
    let slots = fair::ScriptSlots::new(
        config.script_slots(),
        serve::in_flight_limit(workers) / 4,
        pool.clone(),
    );
    let overlay = Arc::new(overlay::Overlay::default());
    let server = serve::Server {
        bus: bus.clone(),
        pool,
        cache: cache::AstCache::new(cache::DEFAULT_CAPACITY),
        host: Arc::new(host::BusHost {
            bus: bus.clone(),
            egress,
            runtime: tokio::runtime::Handle::current(),
            overlay: overlay.clone(),
        }),
        overlay,
        modules,
        recorder,
        live,
        executor_id: id.clone(),
        runtime: tokio::runtime::Handle::current(),
        slots,
    };
    let server = Arc::new(server);
    let mut tasks = Tasks::new(shutdown.clone());
    let counts: picloud_bus::WorkerCounts = {
        let pool = server.pool.clone();
        Arc::new(move || (pool.threads() as u64, pool.busy() as u64))
    };
    let (_, node) = bus
        .serve_node(
            picloud_bus::NodeSpec {
                role: "executor",
                id: Some(id.clone()),
                address: config.listen.to_string(),
                workers: Some(counts),
            },
            shutdown.clone(),
        )
        .await?;
    tasks.spawn("nodes", node);
    picloud_metrics::global().add_workers(workers as i64);
    let incoming = bus.serve_invocations().await?;
    tasks.spawn(
        "invocations",
        serve::Server::run(server.clone(), incoming, shutdown.clone()),
    );
    tasks.spawn(
        "jobs",
        jobs::run(
            server,
            jobs::JobSettings {
                ack_wait: std::time::Duration::from_millis(config.job_ack_wait_ms),
                config: config.clone(),
                shutdown: shutdown.clone(),
            },
            shutdown.clone(),
        ),
    );
    tasks.spawn("records", record_task);
    tasks.spawn("live logs", live_task);
    tracing::info!(executor = %id, workers, "executor started");
    let ready = picloud_http::ready_when("executor: NATS disconnected", move || bus.is_connected());
    let ready = tasks.ready("executor", ready);
    Ok(Executor {
        ready,
        id,
        tasks,
        workers,
    })
}

impl Executor {
    /// Waits until the executor has drained (after shutdown).
    pub async fn join(self) {
        self.tasks.join().await;
        picloud_metrics::global().add_workers(-(self.workers as i64));
    }
}

/// Runs an executor until `shutdown`. It serves no HTTP of its own except
/// health and metrics (`/healthz`, `/readyz`, `/metrics`), on
/// `config.listen`, so every executor can be scraped.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let bus = Bus::for_role(&config, "executor").await?;
    let executor = start(&config, bus, shutdown.clone()).await?;
    // No routes of its own: health and metrics only.
    let routes = Default::default();
    picloud_http::serve_role(&config, routes, executor.ready.clone(), shutdown.clone())
        .await
        .with_context(|| format!("cannot serve on {}", config.listen))?;
    shutdown.cancel();
    executor.join().await;
    Ok(())
}
