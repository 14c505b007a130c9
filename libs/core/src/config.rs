//! Process configuration, one source of truth: every setting is declared
//! once in the table below ([`settings!`]: its name, variable, flag, default
//! and doc), and read from, in order of precedence, the command line
//! (`--listen`), the environment (`PICLOUD_LISTEN`), the TOML file named by
//! `--config` or `PICLOUD_CONFIG`, and its default. `picloud <role> --help`
//! lists them all with their defaults.
//!
//! Secrets (the database and NATS URLs, the admin, metrics and NATS tokens,
//! the NATS password, the secrets key) come from the environment or the
//! file only, never from a flag (every user sees a process's arguments in
//! `ps`); they are [`Secret`]s, which `Debug` prints as `[redacted]`.
//!
//! One struct serves every role; each role reads the fields it needs.
//! (Reading the file and the environment is the only I/O in this crate.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::Secret;
use crate::limits::{DEFAULT_MAX_SOURCE_BYTES, Limits};

mod args;
mod nats;
pub(crate) mod settings;

pub use args::{ConfigArgs, OTHER_VARIABLES};
pub use nats::{NatsCredentials, NatsSettings};
use settings::settings;

settings! {
    heading = "Settings (flag > variable > file > default)";
    /// Every role's configuration; each role reads the fields it needs.
    pub struct Config {
        /// Postgres URL (manager); it may hold a password. [default in
        /// `picloud up`: a private cluster]
        database_url: Option<Secret> = None => secret("PICLOUD_DATABASE_URL");
        /// NATS URL (every role); it may hold a user and password. [default
        /// in `picloud up`: a private nats-server -js]
        nats_url: Option<Secret> = None => secret("PICLOUD_NATS_URL");
        /// Where HTTP is served (an executor serves only its health and
        /// metrics there).
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080))
            => arg("PICLOUD_LISTEN", "listen", "ADDR");
        /// The admin API's bearer token. [default in `picloud up`: generated
        /// into the data directory]
        ///
        /// The manager's auth check keeps only its SHA-256; `picloud up`
        /// also prints it at start when it generated it.
        admin_token: Option<Secret> = None => secret("PICLOUD_ADMIN_TOKEN");
        /// The key that encrypts secrets at rest: 32 bytes, base64 (every
        /// manager of a cluster must have the same). [default on one node:
        /// generated into the data directory]
        secrets_key: Option<Secret> = None => secret("PICLOUD_SECRETS_KEY");
        /// This installation is one node: `picloud manager` may then
        /// generate its secrets key (`picloud up` always is one node).
        ///
        /// Without it a manager refuses to start without a secrets key,
        /// since every manager of a cluster must share it.
        single_node: bool = false => arg("PICLOUD_SINGLE_NODE", "single-node", "BOOL");
        /// Hosts, IPs or CIDRs scripts may call although the SSRF policy
        /// would deny them (comma-separated).
        http_allow: String = String::new()
            => arg("PICLOUD_HTTP_ALLOW", "http-allow", "LIST", keep_empty);
        /// More hosts, IPs or CIDRs to deny scripts (wins over the allow
        /// list).
        http_deny: String = String::new()
            => arg("PICLOUD_HTTP_DENY", "http-deny", "LIST", keep_empty);
        /// Ports scripts may call ("*" for any).
        http_ports: String = "80,443".into() => arg("PICLOUD_HTTP_PORTS", "http-ports", "LIST");
        /// Where `picloud up` keeps its private servers' data (and the
        /// generated admin token and secrets key).
        data_dir: PathBuf = default_data_dir() => arg("PICLOUD_DATA_DIR", "data-dir", "DIR");
        /// Namespace for every NATS subject, stream and bucket: 1-32
        /// lower-case letters, digits, '-' or '_'.
        ///
        /// Several installations (or tests) can share one NATS server.
        prefix: String = "picloud".into() => arg("PICLOUD_PREFIX", "prefix", "NAME");
        /// Executor worker threads (0 = one per core).
        workers: usize = 0 => arg("PICLOUD_WORKERS", "workers", "N");
        /// Invocations an executor accepts beyond busy workers before it
        /// answers 503.
        queue_depth: usize = 256 => arg("PICLOUD_QUEUE_DEPTH", "queue-depth", "N");
        /// Largest /fn request body the gateway accepts, in bytes (past it:
        /// 413).
        ///
        /// The default stays under NATS's default 1 MB message limit with the
        /// invocation's envelope.
        max_request_bytes: usize = 512 << 10
            => arg("PICLOUD_MAX_REQUEST_BYTES", "max-request-bytes", "BYTES");
        /// Largest script source a deploy accepts, in bytes.
        max_source_bytes: usize = DEFAULT_MAX_SOURCE_BYTES
            => arg("PICLOUD_MAX_SOURCE_BYTES", "max-source-bytes", "BYTES");
        /// Extra time the gateway waits past a script's wall-time limit.
        deadline_grace_ms: u64 = 1_000
            => arg("PICLOUD_DEADLINE_GRACE_MS", "deadline-grace-ms", "MS");
        /// First retry delay of a failed async job; each further attempt
        /// doubles it, up to the maximum.
        retry_base_ms: u64 = 1_000 => arg("PICLOUD_RETRY_BASE_MS", "retry-base-ms", "MS");
        /// Longest retry delay of a failed async job.
        retry_max_ms: u64 = 300_000 => arg("PICLOUD_RETRY_MAX_MS", "retry-max-ms", "MS");
        /// Attempts of an async HTTP call before it becomes a dead letter
        /// (subscriptions and schedules set their own).
        max_attempts: u32 = 5 => arg("PICLOUD_MAX_ATTEMPTS", "max-attempts", "N");
        /// How long a job may go without an ack or a progress signal before
        /// another executor gets it (a dead executor's jobs come back after
        /// this).
        job_ack_wait_ms: u64 = 30_000 => arg("PICLOUD_JOB_ACK_WAIT_MS", "job-ack-wait-ms", "MS");
        /// On SIGTERM, how long a role keeps serving with /readyz at 503
        /// before it stops taking requests. [default: 2000 for a gateway or
        /// manager alone, 0 for `picloud up` and executors]
        ///
        /// A load balancer's health check must see the 503 first, or it may
        /// still send a request on a connection the role is closing.
        drain_ms: Option<u64> = None => arg("PICLOUD_DRAIN_MS", "drain-ms", "MS");
        /// How long invocation records are kept, in hours.
        invocation_retention_hours: u64 = 7 * 24 => arg(
            "PICLOUD_INVOCATION_RETENTION_HOURS",
            "invocation-retention-hours",
            "HOURS"
        );
        /// Every HTTP listener: how long a client may take to send a
        /// request's headers (slowloris).
        http_header_timeout_ms: u64 = 10_000
            => arg("PICLOUD_HTTP_HEADER_TIMEOUT_MS", "http-header-timeout-ms", "MS");
        /// ... and its body, counted from the end of the headers; past it the
        /// caller gets 408.
        ///
        /// The default takes 512 KiB at 17 KiB/s.
        http_body_timeout_ms: u64 = 30_000
            => arg("PICLOUD_HTTP_BODY_TIMEOUT_MS", "http-body-timeout-ms", "MS");
        /// How long a keep-alive connection may wait for its next request
        /// (the header timeout also bounds it).
        http_idle_timeout_ms: u64 = 5_000
            => arg("PICLOUD_HTTP_IDLE_TIMEOUT_MS", "http-idle-timeout-ms", "MS");
        /// Open connections per listener; one more is answered 503 and
        /// closed.
        http_max_connections: usize = 10_000
            => arg("PICLOUD_HTTP_MAX_CONNECTIONS", "http-max-connections", "N");
        /// Defaults for every script (the file's `[limits]` table only).
        limits: Limits = Limits::default() => file;
        /// Ceilings for per-script overrides (the file's `[max_limits]`
        /// table only).
        max_limits: Limits = Limits::default_maxima() => file;
        /// Hops an event chain may take before its next job becomes a dead
        /// letter.
        max_chain_depth: u32 = crate::chain::DEFAULT_MAX_CHAIN_DEPTH
            => arg("PICLOUD_MAX_CHAIN_DEPTH", "max-chain-depth", "N");
        /// Invocations one trace (a root and everything its emits cause) may
        /// run.
        max_trace_invocations: u32 = crate::chain::DEFAULT_MAX_TRACE_INVOCATIONS
            => arg("PICLOUD_MAX_TRACE_INVOCATIONS", "max-trace-invocations", "N");
        /// Invocations of one script an executor runs at once (0 = one less
        /// than its workers, so another script always has one).
        script_concurrency: usize = 0
            => arg("PICLOUD_SCRIPT_CONCURRENCY", "script-concurrency", "N");
        /// Live-log events queued for one follower of a script's logs; one
        /// that falls this far behind is disconnected.
        ///
        /// Its final event says how many events it missed.
        log_follow_buffer: usize = 4_096
            => arg("PICLOUD_LOG_FOLLOW_BUFFER", "log-follow-buffer", "N");
        /// Keepalive comment interval on an idle log follower's stream.
        log_keepalive_ms: u64 = 15_000
            => arg("PICLOUD_LOG_KEEPALIVE_MS", "log-keepalive-ms", "MS");
        /// The bearer token GET /metrics asks for. [default: none, /metrics
        /// is open like /healthz]
        metrics_token: Option<Secret> = None => secret("PICLOUD_METRICS_TOKEN");
        /// Distinct script names with a `script` label of their own in the
        /// metrics; later ones share script="_other".
        metrics_max_scripts: usize = 200
            => arg("PICLOUD_METRICS_MAX_SCRIPTS", "metrics-max-scripts", "N");
        /// The role's NATS user, TLS and stream replicas (`[nats]`).
        nats: NatsSettings = NatsSettings::default() => nested;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// A setting's value is wrong: `var` names the variable, the flag or
    /// the file's table it came from.
    #[error("invalid {var}: {reason}")]
    Env { var: &'static str, reason: String },
    #[error("{0}")]
    Args(String),
}

impl Config {
    /// The TOML file alone (over the defaults).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source: Box::new(source),
        })
    }

    /// The delay before attempt `attempt + 1` of a job that failed attempt
    /// `attempt` (exponential, capped).
    pub fn retry_delay(&self, attempt: u32) -> std::time::Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(32);
        std::time::Duration::from_millis(
            self.retry_base_ms
                .saturating_mul(factor)
                .min(self.retry_max_ms.max(self.retry_base_ms)),
        )
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        // The worker and compile stacks are sized (and tested) for these;
        // deeper nesting could overflow them, which aborts the process.
        let hard = Limits::default_maxima();
        if self.max_limits.max_call_depth > hard.max_call_depth
            || self.max_limits.max_expr_depth > hard.max_expr_depth
            || self.max_limits.max_function_expr_depth > hard.max_function_expr_depth
        {
            return Err(ConfigError::Env {
                var: "max_limits",
                reason: format!(
                    "call and expression depths may not exceed {}/{}/{} (the worker stacks are sized for them)",
                    hard.max_call_depth, hard.max_expr_depth, hard.max_function_expr_depth
                ),
            });
        }
        if self.max_attempts == 0 || self.job_ack_wait_ms < 1_000 || self.retry_base_ms == 0 {
            return Err(ConfigError::Env {
                var: "PICLOUD_MAX_ATTEMPTS / PICLOUD_JOB_ACK_WAIT_MS / PICLOUD_RETRY_BASE_MS",
                reason:
                    "attempts and retry delay must be at least 1, the ack wait at least 1000 ms"
                        .into(),
            });
        }
        if self.http_header_timeout_ms == 0
            || self.http_body_timeout_ms == 0
            || self.http_idle_timeout_ms == 0
            || self.http_max_connections == 0
        {
            return Err(ConfigError::Env {
                var: "PICLOUD_HTTP_*",
                reason: "HTTP timeouts and the connection cap must be at least 1".into(),
            });
        }
        if self.log_follow_buffer == 0 || self.log_keepalive_ms == 0 {
            return Err(ConfigError::Env {
                var: "PICLOUD_LOG_FOLLOW_BUFFER / PICLOUD_LOG_KEEPALIVE_MS",
                reason: "the follower buffer and keepalive interval must be at least 1".into(),
            });
        }
        let ok = !self.prefix.is_empty()
            && self.prefix.len() <= 32
            && self
                .prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ok {
            // Lower case only: stream and bucket names are the prefix
            // upper-cased, so `Ab` and `ab` would share them.
            return Err(ConfigError::Env {
                var: "PICLOUD_PREFIX",
                reason: "use 1-32 lower-case ASCII letters, digits, '-' or '_' \
                    (streams use it upper-cased, so case cannot tell two apart)"
                    .into(),
            });
        }
        Ok(())
    }

    /// The Postgres URL, when set.
    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_ref().map(Secret::expose)
    }

    /// The NATS URL, when set.
    pub fn nats_url(&self) -> Option<&str> {
        self.nats_url.as_ref().map(Secret::expose)
    }

    /// The admin token, when set.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_ref().map(Secret::expose)
    }

    /// The secrets key (base64), when set.
    pub fn secrets_key(&self) -> Option<&str> {
        self.secrets_key.as_ref().map(Secret::expose)
    }

    /// The metrics token, when set.
    pub fn metrics_token(&self) -> Option<&str> {
        self.metrics_token.as_ref().map(Secret::expose)
    }

    /// Worker threads to start: the configured number, or one per core.
    pub fn worker_threads(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    /// Invocations of one script an executor runs at once: the configured
    /// cap, else one less than its workers (at least 1), so that a script
    /// that floods the executor still leaves a worker to the others.
    pub fn script_slots(&self) -> usize {
        match self.script_concurrency {
            0 => self.worker_threads().saturating_sub(1).max(1),
            n => n,
        }
    }
}

fn default_data_dir() -> PathBuf {
    // As root, a home directory is usually closed to the unprivileged user
    // that must own the private Postgres cluster: use /var/lib instead.
    if is_root() {
        return PathBuf::from("/var/lib/picloud");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("picloud");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/picloud"),
        None => PathBuf::from(".picloud"),
    }
}

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // Without libc: /proc/self/status carries the real and effective uids.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `args` after `picloud`; `secrets`, the secrets' variables.
    pub(super) fn load(args: &[&str], secrets: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let argv = std::iter::once("picloud").chain(args.iter().copied());
        let get = |k: &str| {
            secrets
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        };
        Config::from_args(argv, &get)
    }

    fn file(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("picloud-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Flag > file > default, and a default never hides the file's value.
    #[test]
    fn flags_override_file_values_and_defaults_do_not() {
        let path = file(
            "layers",
            "prefix = \"a\"\nworkers = 3\nhttp_allow = \"10.0.0.1\"\n[limits]\nwall_time_ms = 10\n",
        );
        let path = path.to_str().unwrap();
        let c = load(
            &[
                "--config",
                path,
                "--prefix",
                "b",
                "--listen",
                "0.0.0.0:9000",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.limits.wall_time_ms, 10);
        assert_eq!(c.prefix, "b");
        assert_eq!(c.workers, 3);
        assert_eq!(c.http_allow, "10.0.0.1");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.queue_depth, Config::default().queue_depth);
        // An empty allow list clears the file's; an empty number is unset.
        let c = load(
            &["--config", path, "--http-allow", "", "--workers", " "],
            &[],
        )
        .unwrap();
        assert_eq!(c.http_allow, "");
        assert_eq!(c.workers, 3);
    }

    #[test]
    fn bad_values_are_named() {
        let err = load(&["--listen", "nope"], &[]).unwrap_err();
        assert!(err.to_string().starts_with("invalid --listen"), "{err}");
        let err = load(&["--prefix", "a.b"], &[]).unwrap_err();
        assert!(err.to_string().contains("PICLOUD_PREFIX"), "{err}");
        let err = load(&["--single-node", "maybe"], &[]).unwrap_err();
        assert!(err.to_string().contains("--single-node"), "{err}");
        assert!(load(&["--single-node"], &[]).unwrap().single_node);
    }

    /// Issue #18: printing the configuration (a `{config:?}` in a log line or
    /// a panic) shows none of its secrets.
    #[test]
    fn debug_shows_no_secret() {
        let path = file(
            "secrets",
            "admin_token = \"tok-file-1\"\nsecrets_key = \"key-file-2\"\n",
        );
        let c = load(
            &["--config", path.to_str().unwrap()],
            &[
                ("PICLOUD_DATABASE_URL", "postgres://u:pg-pass-3@db/x"),
                ("PICLOUD_NATS_URL", "nats://n:nats-pass-4@bus:4222"),
                ("PICLOUD_METRICS_TOKEN", "metrics-5"),
                ("PICLOUD_SECRETS_KEY", "   "),
            ],
        )
        .unwrap();
        let shown = format!("{c:?} {c:#?}");
        for secret in [
            "tok-file-1",
            "key-file-2",
            "pg-pass-3",
            "nats-pass-4",
            "metrics-5",
        ] {
            assert!(!shown.contains(secret), "{secret} printed in {shown}");
        }
        assert_eq!(c.admin_token(), Some("tok-file-1"));
        // A blank variable is unset: the file's key stays.
        assert_eq!(c.secrets_key(), Some("key-file-2"));
        assert_eq!(c.database_url(), Some("postgres://u:pg-pass-3@db/x"));
    }

    /// The secrets are not flags: every user sees a process's arguments.
    #[test]
    fn secrets_are_not_flags() {
        for flag in [
            "--admin-token",
            "--secrets-key",
            "--database-url",
            "--nats-url",
            "--metrics-token",
        ] {
            let err = load(&[flag, "x"], &[]).unwrap_err();
            assert!(
                err.to_string().contains("unexpected argument"),
                "{flag}: {err}"
            );
        }
    }

    /// Streams are named after the prefix upper-cased: `Ab` would share
    /// `ab`'s streams, so upper case is refused (issue #18).
    #[test]
    fn upper_case_prefix_is_refused() {
        for bad in ["Ab", "PICLOUD"] {
            let err = load(&["--prefix", bad], &[]).unwrap_err();
            assert!(err.to_string().contains("lower-case"), "{err}");
        }
        for good in ["a-b", "a_b", "t0123456789ab"] {
            load(&["--prefix", good], &[]).unwrap();
        }
    }
}
