//! `picloud`: the one binary.
//!
//! - `picloud up`: everything in one process; starts a private NATS and
//!   Postgres when no URLs are given (see [`embedded`]).
//! - `picloud manager|gateway|executor`: one role each, for cluster mode.
//!
//! Configuration comes from `PICLOUD_*` variables and an optional TOML file
//! (`PICLOUD_CONFIG`); see `picloud_core::Config`.

#![forbid(unsafe_code)]

mod embedded;
mod up;

use clap::{Parser, Subcommand};
use picloud_core::{Config, Shutdown};

#[derive(Parser)]
#[command(
    name = "picloud",
    version,
    about = "Upload a Rhai script, get an HTTP endpoint."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process (starts private NATS and Postgres
    /// when PICLOUD_NATS_URL / PICLOUD_DATABASE_URL are not set).
    Up,
    /// Run the manager role (admin API, database owner).
    Manager,
    /// Run the gateway role (HTTP ingress for /fn).
    Gateway,
    /// Run the executor role (runs scripts).
    Executor,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let config = Config::load()?;
    let shutdown = Shutdown::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match command {
        Command::Up => up::run(config, shutdown).await,
        Command::Manager => picloud_manager::run(config, shutdown).await,
        Command::Gateway => picloud_gateway::run(config, shutdown).await,
        Command::Executor => picloud_executor::run(config, shutdown).await,
    }
}

/// Ctrl-C or SIGTERM → graceful shutdown.
async fn cancel_on_signal(shutdown: Shutdown) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Counts each thread's allocations so the sandbox can enforce
/// `max_memory_bytes` (see `picloud_sandbox::memory`).
#[global_allocator]
static ALLOC: picloud_sandbox::memory::CountingAlloc = picloud_sandbox::memory::CountingAlloc;
