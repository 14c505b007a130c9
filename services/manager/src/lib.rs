//! The manager: PiCloud's control plane.
//!
//! - [`api`]: the admin API under `/api/v1` (bearer token).
//! - [`dashboard`]: the built dashboard app at `/dashboard`.
//! - [`compiler`]: a dedicated thread with a sized stack that compiles
//!   deploys under the sandbox's limits. The manager never runs script code.
//! - [`publisher`]: keeps the bus's route and version buckets equal to
//!   Postgres (after every change, and once at start, with retries).
//! - [`records`]: drains the invocation-record stream into Postgres in
//!   batches.
//! - [`effects`]: answers executors' kv reads, commits their invocations'
//!   effects, stores dead letters, accepts async HTTP calls from gateways.
//! - [`commits`]: group commit: the commits queued while a transaction is
//!   in flight go together into the next one.
//! - [`relay`]: publishes the outbox to JetStream, woken by LISTEN/NOTIFY.
//! - [`scheduler`]: fires due cron schedules into the outbox, exactly once
//!   across managers; sleeps until the next instant or a change.
//! - [`secrets`]: encrypts secrets at rest and answers executors' requests
//!   for them.
//! - [`probes`]: the queue figures (jobs pending, outbox lag) read when
//!   `/metrics` is scraped or `GET /api/v1/nodes` is asked.
//!
//! Architecture invariant: the manager is the only role that holds database
//! credentials; everything other roles need, it publishes on the bus.

#![forbid(unsafe_code)]

pub mod api;
pub mod commits;
pub mod compiler;
pub mod dashboard;
pub mod effects;
pub mod imports;
pub mod probes;
pub mod publisher;
pub mod records;
pub mod relay;
pub mod scheduler;
pub mod secrets;
pub mod stats;
pub mod submits;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use picloud_bus::Bus;
use picloud_core::{Config, Shutdown};
use picloud_http::{ReadyCheck, Tasks, TokenHash};
use picloud_store::Store;

/// A started manager: its router (to be served alone or merged with other
/// roles) and its background tasks.
pub struct Manager {
    pub router: Router,
    pub ready: ReadyCheck,
    tasks: Tasks,
    store: Store,
}

/// Connects to Postgres (migrating it) and NATS, starts the background tasks,
/// and builds the router.
/// Starts a manager on `bus` (its own connection, or one `picloud up` shares
/// between the roles).
pub async fn start(config: &Config, bus: Bus, shutdown: Shutdown) -> anyhow::Result<Manager> {
    let db_url = config
        .database_url()
        .context("PICLOUD_DATABASE_URL is required for the manager role")?;
    let token = config
        .admin_token()
        .filter(|t| !t.trim().is_empty())
        .context("PICLOUD_ADMIN_TOKEN is required for the manager role")?;

    let store = Store::connect(db_url)
        .await
        .context("cannot open the database")?;
    let compiler = compiler::Compiler::start()?;
    let secret_box = Arc::new(secrets::SecretBox::load(config)?);
    let publisher = publisher::Publisher::new(store.clone(), bus.clone());

    let rollup = stats::Rollup::default();

    let mut tasks = Tasks::new(shutdown.clone());
    tasks.spawn("publisher", publisher.clone().run(shutdown.clone()));
    tasks.spawn("stats", rollup.clone().run(store.clone(), shutdown.clone()));
    publisher.request_sync();
    let retention = std::time::Duration::from_secs(config.invocation_retention_hours * 3600);
    tasks.spawn(
        "records",
        records::run(
            store.clone(),
            bus.clone(),
            rollup.clone(),
            retention,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "effects",
        effects::serve(
            store.clone(),
            bus.clone(),
            rollup.clone(),
            config.max_trace_invocations,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "relay",
        relay::run(store.clone(), bus.clone(), shutdown.clone()),
    );
    tasks.spawn("scheduler", scheduler::run(store.clone(), shutdown.clone()));
    tasks.spawn(
        "secrets",
        secrets::serve(
            store.clone(),
            bus.clone(),
            secret_box.clone(),
            shutdown.clone(),
        ),
    );

    picloud_metrics::global().set_max_scripts(config.metrics_max_scripts);
    probes::register(bus.clone(), store.clone());
    let (_, node) = bus
        .serve_node(
            picloud_bus::NodeSpec {
                role: "manager",
                id: None,
                address: config.listen.to_string(),
                workers: None,
            },
            shutdown.clone(),
        )
        .await?;
    tasks.spawn("nodes", node);

    let state = Arc::new(api::AppState {
        store: store.clone(),
        bus: bus.clone(),
        publisher,
        compiler,
        token: TokenHash::of(token.trim()),
        limits: config.limits.clone(),
        max_limits: config.max_limits.clone(),
        max_source_bytes: config.max_source_bytes,
        max_attempts: config.max_attempts,
        secrets: secret_box,
        follow: api::logs::FollowSettings {
            buffer: config.log_follow_buffer,
            keepalive: std::time::Duration::from_millis(config.log_keepalive_ms),
            shutdown: shutdown.clone(),
        },
    });
    let ready: ReadyCheck = {
        let (store, bus) = (store.clone(), bus.clone());
        Arc::new(move || {
            let (store, bus) = (store.clone(), bus.clone());
            Box::pin(async move {
                if !store.ping().await {
                    return Err("manager: database unreachable".into());
                }
                if !bus.is_connected() {
                    return Err("manager: NATS disconnected".into());
                }
                Ok(())
            })
        })
    };
    let ready = tasks.ready("manager", ready);
    Ok(Manager {
        router: api::router(state).merge(dashboard::Dashboard::find().router()),
        ready,
        tasks,
        store,
    })
}

impl Manager {
    /// Waits for the background tasks (they end on shutdown).
    pub async fn join(self) {
        self.tasks.join().await;
        self.store.close().await;
    }
}

/// Runs the manager alone on `config.listen` until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    secrets::require_shared_key(&config)?;
    let bus = Bus::for_role(&config, "manager").await?;
    let manager = start(&config, bus, shutdown.clone()).await?;
    let routes = manager.router.clone().fallback(picloud_http::no_route);
    picloud_http::serve_role(&config, routes, manager.ready.clone(), shutdown.clone())
        .await
        .with_context(|| format!("cannot serve on {}", config.listen))?;
    shutdown.cancel();
    manager.join().await;
    Ok(())
}
