//! The `picloud` commands that talk to a running PiCloud's admin API
//! (`login`, `deploy`, `ls`, `invoke`, …). The server roles (`up`,
//! `manager`, …) are in `main.rs`.
//!
//! Data goes to stdout (a table, or the API's JSON with `--json`), messages
//! and progress to stderr. Exit codes: 0 ok, 1 an error (the server's code
//! and message, or what failed here), 2 a usage error (from clap).

mod client;
mod commands;
mod deploy;
mod invoke;
mod jobs;
mod logs;
pub(crate) mod output;
mod profile;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Where to connect, for every client command.
#[derive(Args, Clone, Default)]
pub struct Target {
    /// The PiCloud to talk to (overrides the profile).
    #[arg(long, global = true, env = "PICLOUD_URL")]
    pub url: Option<String>,
    /// The admin token (overrides the profile; never printed).
    #[arg(long, global = true, env = "PICLOUD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The profile to use (see `picloud login`).
    #[arg(long, global = true, env = "PICLOUD_PROFILE")]
    pub profile: Option<String>,
    /// Print the API's JSON instead of a table (stable field names: the
    /// admin API's).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Store the URL and admin token of a PiCloud in a profile.
    Login {
        /// e.g. http://127.0.0.1:8080 (with --local: the address `picloud
        /// up` listens on, PICLOUD_LISTEN or 127.0.0.1:8080).
        #[arg(required_unless_present = "local")]
        url: Option<String>,
        /// Read the token from standard input instead of --token/PICLOUD_TOKEN.
        #[arg(long)]
        token_stdin: bool,
        /// Log in to the `picloud up` on this machine: its token is read
        /// from its data directory (PICLOUD_DATA_DIR, as `up` finds it).
        #[arg(long, conflicts_with = "token_stdin")]
        local: bool,
    },
    /// Deploy a script (FILE) or every *.rhai in a folder (modules first).
    Deploy {
        path: PathBuf,
        /// The script's name (default: the file's name without .rhai).
        #[arg(long)]
        name: Option<String>,
        /// A limit for this script, e.g. --limit max_operations=100000.
        #[arg(long = "limit", value_name = "NAME=VALUE")]
        limits: Vec<String>,
        /// A custom route for the script, e.g. --route 'GET /users/:id'
        /// (repeatable; `*` as the method answers every method).
        #[arg(long = "route", value_name = "'METHOD /PATH'")]
        routes: Vec<String>,
        /// Async jobs keep the caller's Authorization, Cookie and
        /// Proxy-Authorization headers (default: dropped before queueing).
        #[arg(long)]
        keep_credentials: bool,
    },
    /// List scripts.
    Ls,
    /// Show a script and its active version.
    Show { name: String },
    /// Delete a script with its versions, schedules, subscriptions and kv
    /// (asks first on a terminal; elsewhere needs --yes).
    Rm {
        name: String,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List a script's versions.
    Versions { name: String },
    /// Make an earlier version of a script the active one.
    Rollback { name: String, version: u32 },
    /// Call a script's endpoint.
    Invoke(invoke::InvokeArgs),
    /// A script's log: recent lines, or follow it live with -f.
    Logs(logs::LogsArgs),
    /// Invocation records.
    #[command(subcommand)]
    Invocations(invoke::InvocationsCommand),
    /// Cron schedules.
    #[command(subcommand)]
    Schedule(commands::ScheduleCommand),
    /// Subscribe a script to an event topic (wildcards * and >).
    Subscribe {
        script: String,
        topic: String,
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// Event subscriptions.
    #[command(subcommand)]
    Subscriptions(commands::SubscriptionsCommand),
    /// Encrypted secrets (values are never shown).
    #[command(subcommand)]
    Secret(commands::SecretCommand),
    /// Shared modules.
    #[command(subcommand)]
    Module(commands::ModuleCommand),
    /// Jobs that failed every attempt.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(commands::DeadLettersCommand),
    /// Queued jobs not yet done: find stuck ones, replay or discard them.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Show the running nodes (roles, workers, load), pending jobs and
    /// outbox lag.
    Status,
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

/// Runs a client command and turns its outcome into an exit code.
pub async fn run(command: ClientCommand, target: Target) -> ExitCode {
    let json = target.json;
    match commands::dispatch(command, target).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            // Machine-readable, on stderr: stdout stays empty on failure.
            eprintln!("{}", e.to_json());
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            // The message may quote a script's words: no escape sequences.
            eprintln!("error: {}", output::escape_controls(&e.to_string(), true));
            if let Some(help) = e.help() {
                eprintln!("help: {help}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
