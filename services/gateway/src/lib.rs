//! The gateway: HTTP ingress for scripts.
//!
//! `ANY /fn/{name}` and `/fn/{name}/{*rest}` become an invocation request,
//! sent over NATS to one executor, whose reply becomes the HTTP response.
//!
//! - [`routes`]: the route table (script → active version), a cache kept
//!   current by watching the bus's route bucket, with a direct read on a miss.
//! - [`invoke`]: the `/fn` handler and the mapping of outcomes to HTTP.
//! - [`openapi`]: the OpenAPI description of `/fn` (the manager serves the
//!   whole document).
//! - [`idempotency`]: request fingerprints for `Idempotency-Key`, and the
//!   credential headers async jobs drop.
//!
//! Architecture invariant: the gateway holds no database credentials and
//! runs no script code; it knows scripts only through the bus.

#![forbid(unsafe_code)]

pub mod idempotency;
pub mod invoke;
pub mod openapi;
pub mod routes;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use picloud_bus::Bus;
use picloud_core::{Config, Shutdown};
use picloud_http::{ReadyCheck, Tasks};

pub struct Gateway {
    pub router: Router,
    pub ready: ReadyCheck,
    tasks: Tasks,
}

/// Starts the gateway on `bus` (its own connection, or one `picloud up`
/// shares between the roles).
pub async fn start(config: &Config, bus: Bus, shutdown: Shutdown) -> anyhow::Result<Gateway> {
    let routes = routes::RouteTable::default();
    let mut tasks = Tasks::new(shutdown.clone());
    tasks.spawn(
        "routes",
        routes.clone().follow(bus.clone(), shutdown.clone()),
    );
    picloud_metrics::global().set_max_scripts(config.metrics_max_scripts);
    let (_, node) = bus
        .serve_node(
            picloud_bus::NodeSpec {
                role: "gateway",
                id: None,
                address: config.listen.to_string(),
                workers: None,
            },
            shutdown.clone(),
        )
        .await?;
    tasks.spawn("nodes", node);
    let state = Arc::new(invoke::GatewayState {
        bus: bus.clone(),
        routes,
        grace_ms: config.deadline_grace_ms,
        max_attempts: config.max_attempts,
    });
    let ready = picloud_http::ready_when("gateway: NATS disconnected", move || bus.is_connected());
    let ready = tasks.ready("gateway", ready);
    Ok(Gateway {
        router: invoke::router(state, config.max_request_bytes),
        ready,
        tasks,
    })
}

impl Gateway {
    pub async fn join(self) {
        self.tasks.join().await;
    }
}

/// Runs the gateway alone on `config.listen` until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let bus = Bus::for_role(&config, "gateway").await?;
    let gateway = start(&config, bus, shutdown.clone()).await?;
    let routes = gateway.router.clone();
    picloud_http::serve_role(&config, routes, gateway.ready.clone(), shutdown.clone())
        .await
        .with_context(|| format!("cannot serve on {}", config.listen))?;
    shutdown.cancel();
    gateway.join().await;
    Ok(())
}
