//! `picloud`: the one binary.
//!
//! - `picloud up`: everything in one process; starts a private NATS and
//!   Postgres when no URLs are given (see [`embedded`]).
//! - `picloud manager|gateway|executor`: one role each, for cluster mode.
//! - `picloud nats-config`, `picloud dev-certs DIR`: a NATS authorization
//!   block with a user per role, and development TLS certificates (see
//!   docs/operations.md).
//! - `picloud login|deploy|ls|invoke|…`: a client of a running PiCloud's
//!   admin API (see [`cli`]).
//!
//! A role's configuration comes from its flags, the `PICLOUD_*` variables
//! and an optional TOML file (`--config` or `PICLOUD_CONFIG`), in that
//! order; `picloud up --help` lists every setting with its default. See
//! `picloud_core::Config`.

#![forbid(unsafe_code)]

mod cli;
mod devcerts;
mod embedded;
mod up;

use clap::{CommandFactory, Parser, Subcommand};
use picloud_core::{Config, ConfigArgs, Shutdown};

#[derive(Parser)]
#[command(
    name = "picloud",
    version,
    about = "Upload a Rhai script, get an HTTP endpoint."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: cli::Target,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Role(Role),
    #[command(flatten)]
    Setup(Setup),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// The server roles. Each takes every setting as a flag, a `PICLOUD_*`
/// variable or a line of the `--config` file (see `picloud_core::Config`).
#[derive(Subcommand)]
enum Role {
    /// Run everything in one process (starts private NATS and Postgres
    /// when PICLOUD_NATS_URL / PICLOUD_DATABASE_URL are not set).
    Up(ConfigArgs),
    /// Run the manager role (admin API, database owner).
    Manager(ConfigArgs),
    /// Run the gateway role (HTTP ingress for /fn).
    Gateway(ConfigArgs),
    /// Run the executor role (runs scripts).
    Executor(ConfigArgs),
}

impl Role {
    fn args(&self) -> &ConfigArgs {
        match self {
            Self::Up(a) | Self::Manager(a) | Self::Gateway(a) | Self::Executor(a) => a,
        }
    }
}

/// Files an operator sets a cluster up with.
#[derive(Subcommand)]
enum Setup {
    /// Print a nats-server `authorization` block with one user per role
    /// (gateway, executor, manager) and the subject permissions each needs.
    NatsConfig {
        /// The installation's prefix (default: PICLOUD_PREFIX, else "picloud").
        #[arg(long)]
        prefix: Option<String>,
        /// The environment variable the server reads each role's password
        /// from; ROLE is replaced by GATEWAY, EXECUTOR or MANAGER.
        #[arg(long, default_value = "PICLOUD_NATS_ROLE_PASSWORD")]
        password_var: String,
    },
    /// Write a development CA, a NATS server certificate (localhost,
    /// 127.0.0.1, n1, n2, n3) and a client certificate per role into DIR.
    DevCerts { dir: std::path::PathBuf },
}

fn setup(command: Setup) -> std::process::ExitCode {
    let result = match command {
        Setup::NatsConfig {
            prefix,
            password_var,
        } => Config::from_env()
            .map_err(anyhow::Error::from)
            .map(|config| {
                let prefix = prefix.unwrap_or(config.prefix);
                let block = picloud_bus::permissions::authorization_block(&prefix, &password_var);
                cli::output::write_stdout(block.as_bytes());
            }),
        Setup::DevCerts { dir } => devcerts::write(&dir),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    let Cli { command, target } = Cli::parse();
    let role = match command {
        Command::Role(role) => role,
        Command::Setup(command) => return setup(command),
        Command::Client(cli::ClientCommand::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "picloud", &mut script);
            cli::output::write_stdout(&script);
            return std::process::ExitCode::SUCCESS;
        }
        Command::Client(command) => {
            return match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(cli::run(command, target)),
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    let config = match role.args().load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if role.args().check_only() {
        cli::output::write_stdout(format!("{config:#?}\n").as_bytes());
        return std::process::ExitCode::SUCCESS;
    }
    if let Err(e) = init_logging() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(role, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Server logs go to stderr: text (colours only on a terminal, never with
/// `NO_COLOR`), or JSON lines with `PICLOUD_LOG_FORMAT=json`. `RUST_LOG`
/// filters them.
fn init_logging() -> Result<(), String> {
    use std::io::IsTerminal;
    let json = match std::env::var("PICLOUD_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text" | "") | Err(std::env::VarError::NotPresent) => false,
        Ok(other) => {
            return Err(format!(
                "PICLOUD_LOG_FORMAT is {}: use \"text\" or \"json\"",
                picloud_core::quote(other)
            ));
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err("PICLOUD_LOG_FORMAT is not UTF-8: use \"text\" or \"json\"".into());
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr);
    if json {
        builder.json().with_current_span(false).init();
    } else {
        let colour = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        builder.with_ansi(colour).init();
    }
    Ok(())
}

async fn run(role: Role, config: Config) -> anyhow::Result<()> {
    // Every connection is a descriptor: a public listener needs the hard
    // limit, not the (often 1024) soft one.
    match picloud_supervise::raise_nofile_limit() {
        Ok(n) => tracing::info!(open_files = n, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
    let shutdown = Shutdown::new();
    let drain = std::time::Duration::from_millis(config.drain_ms.unwrap_or(match role {
        Role::Manager(_) | Role::Gateway(_) => 2_000,
        Role::Up(_) | Role::Executor(_) => 0,
    }));
    tokio::spawn(cancel_on_signal(shutdown.clone(), drain));
    match role {
        Role::Up(_) => up::run(config, shutdown).await,
        Role::Manager(_) => picloud_manager::run(config, shutdown).await,
        Role::Gateway(_) => picloud_gateway::run(config, shutdown).await,
        Role::Executor(_) => picloud_executor::run(config, shutdown).await,
    }
}

/// Ctrl-C or SIGTERM → graceful shutdown: `/readyz` answers 503 at once,
/// the role goes on serving for `drain` (so a load balancer stops sending
/// to it first), then stops taking requests and finishes those in flight.
/// A second signal skips the rest of the wait.
async fn cancel_on_signal(shutdown: Shutdown, drain: std::time::Duration) {
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
    picloud_http::set_draining();
    if !drain.is_zero() {
        tracing::info!(
            drain_ms = drain.as_millis(),
            "shutting down: readiness off, draining"
        );
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Counts each thread's allocations so the sandbox can enforce
/// `max_memory_bytes` (see `picloud_sandbox::memory`).
#[global_allocator]
static ALLOC: picloud_sandbox::memory::CountingAlloc = picloud_sandbox::memory::CountingAlloc;
