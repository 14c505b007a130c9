//! Process configuration: an optional TOML file (`PICLOUD_CONFIG`), then
//! environment variables, which win.
//!
//! One struct serves every role; each role reads the fields it needs.
//! (Reading the file and the environment is the only I/O in this crate.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::Secret;
use crate::limits::{DEFAULT_MAX_SOURCE_BYTES, Limits};

mod nats;

pub use nats::{NatsCredentials, NatsSettings};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Postgres URL (it may hold a password: a [`Secret`]). Absent in
    /// `picloud up`: a private cluster is started.
    pub database_url: Option<Secret>,
    /// NATS URL (it may hold a user and password). Absent in `picloud up`:
    /// a private `nats-server -js` is started.
    pub nats_url: Option<Secret>,
    /// The role's NATS user, TLS and stream replicas (`[nats]`,
    /// `PICLOUD_NATS_*`); see [`NatsSettings`].
    pub nats: NatsSettings,
    /// Where HTTP is served.
    pub listen: SocketAddr,
    /// The admin API's bearer token. The manager's auth check keeps only
    /// its SHA-256; this copy stays in the configuration, never printed.
    pub admin_token: Option<Secret>,
    /// The key that encrypts secrets at rest: 32 bytes, base64. Absent: the
    /// manager generates one once into `data_dir/secrets.key` (single node;
    /// in cluster mode every manager must be given the same key).
    pub secrets_key: Option<Secret>,
    /// `picloud manager` on its own refuses to start without
    /// `secrets_key` (every manager of a cluster must share it) unless this
    /// says the installation is one node (`PICLOUD_SINGLE_NODE=true`);
    /// `picloud up` is always one node.
    pub single_node: bool,
    /// Hosts, IPs or CIDRs scripts may call although the SSRF policy would
    /// deny them (comma-separated; `PICLOUD_HTTP_ALLOW`).
    pub http_allow: String,
    /// More to deny (`PICLOUD_HTTP_DENY`); wins over `http_allow`.
    pub http_deny: String,
    /// Ports scripts may call (`PICLOUD_HTTP_PORTS`, e.g. "80,443"; "*" for any).
    pub http_ports: String,
    /// Where `picloud up` keeps its private servers' data.
    pub data_dir: PathBuf,
    /// Namespace for every NATS subject, stream and bucket name: several
    /// installations (or tests) can share one NATS server.
    pub prefix: String,
    /// Executor worker threads (0 = one per core).
    pub workers: usize,
    /// Invocations an executor accepts beyond busy workers before it rejects.
    pub queue_depth: usize,
    /// Largest HTTP request body the gateway accepts, in bytes.
    pub max_request_bytes: usize,
    /// Largest script source a deploy accepts, in bytes.
    pub max_source_bytes: usize,
    /// Extra time the gateway waits past a script's wall-time limit.
    pub deadline_grace_ms: u64,
    /// First retry delay of a failed async job; each further attempt doubles
    /// it, up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Attempts of an async HTTP job (subscriptions and schedules set their own).
    pub max_attempts: u32,
    /// How long a job may go without an ack or a progress signal before
    /// JetStream hands it to another executor (a dead executor's jobs come
    /// back after this).
    pub job_ack_wait_ms: u64,
    /// On SIGTERM, how long a role behind a load balancer keeps serving
    /// while its `/readyz` answers 503, before it closes its listener and
    /// drains (`PICLOUD_DRAIN_MS`): the balancer's health check must see
    /// it first, or it may still send a request on a connection the role
    /// is closing. None: 2 s for a gateway or manager role alone, 0 for
    /// `picloud up` and executors.
    pub drain_ms: Option<u64>,
    /// How long invocation records are kept, in hours.
    pub invocation_retention_hours: u64,
    /// Every HTTP listener (gateway, manager, executor health, `up`): how long
    /// a client may take to send a request's headers (`PICLOUD_HTTP_HEADER_TIMEOUT_MS`).
    pub http_header_timeout_ms: u64,
    /// ... and its body, counted from the end of the headers
    /// (`PICLOUD_HTTP_BODY_TIMEOUT_MS`); past it the caller gets 408.
    pub http_body_timeout_ms: u64,
    /// How long a keep-alive connection may wait for its next request
    /// (`PICLOUD_HTTP_IDLE_TIMEOUT_MS`; the header timeout also bounds it).
    pub http_idle_timeout_ms: u64,
    /// Open connections per listener (`PICLOUD_HTTP_MAX_CONNECTIONS`); one
    /// more is answered 503 and closed.
    pub http_max_connections: usize,
    /// Defaults for every script.
    pub limits: Limits,
    /// Ceilings for per-script overrides.
    pub max_limits: Limits,
    /// Hops an event chain may take before its next job becomes a dead
    /// letter (see [`crate::chain`]).
    pub max_chain_depth: u32,
    /// Invocations one trace (a root and everything its emits cause) may run.
    pub max_trace_invocations: u32,
    /// Invocations of one script an executor runs at once (sync and async);
    /// 0 = one less than its workers, so another script always has one.
    pub script_concurrency: usize,
    /// Live-log events queued for one follower of `GET
    /// /api/v1/scripts/{name}/logs?follow=true` (`PICLOUD_LOG_FOLLOW_BUFFER`);
    /// a follower that falls this far behind is disconnected with a final
    /// event that says how many events it missed.
    pub log_follow_buffer: usize,
    /// Keepalive comment interval on an idle follower's stream
    /// (`PICLOUD_LOG_KEEPALIVE_MS`).
    pub log_keepalive_ms: u64,
    /// `GET /metrics` asks for this bearer token when set
    /// (`PICLOUD_METRICS_TOKEN`); otherwise it is open like `/healthz`.
    pub metrics_token: Option<Secret>,
    /// Distinct script names with a `script` label of their own in the
    /// metrics; later ones share `script="_other"`
    /// (`PICLOUD_METRICS_MAX_SCRIPTS`).
    pub metrics_max_scripts: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: None,
            nats_url: None,
            nats: NatsSettings::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token: None,
            secrets_key: None,
            single_node: false,
            http_allow: String::new(),
            http_deny: String::new(),
            http_ports: "80,443".into(),
            data_dir: default_data_dir(),
            prefix: "picloud".into(),
            workers: 0,
            queue_depth: 256,
            // Stays under NATS's default 1 MB message limit with the
            // invocation's envelope.
            max_request_bytes: 512 << 10,
            max_source_bytes: DEFAULT_MAX_SOURCE_BYTES,
            deadline_grace_ms: 1_000,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            max_attempts: 5,
            job_ack_wait_ms: 30_000,
            drain_ms: None,
            invocation_retention_hours: 7 * 24,
            // A public endpoint's usual bounds: headers in 10 s (slowloris),
            // a body in 30 s (512 KiB at 17 KiB/s), an idle keep-alive
            // connection closed after 5 s (Node's default).
            http_header_timeout_ms: 10_000,
            http_body_timeout_ms: 30_000,
            http_idle_timeout_ms: 5_000,
            http_max_connections: 10_000,
            limits: Limits::default(),
            max_limits: Limits::default_maxima(),
            max_chain_depth: crate::chain::DEFAULT_MAX_CHAIN_DEPTH,
            max_trace_invocations: crate::chain::DEFAULT_MAX_TRACE_INVOCATIONS,
            script_concurrency: 0,
            log_follow_buffer: 4_096,
            log_keepalive_ms: 15_000,
            metrics_token: None,
            metrics_max_scripts: 200,
        }
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
    #[error("invalid {var}: {reason}")]
    Env { var: &'static str, reason: String },
}

impl Config {
    /// Reads `PICLOUD_CONFIG` (if set) and then the `PICLOUD_*` variables.
    pub fn load() -> Result<Self, ConfigError> {
        let mut config = match std::env::var_os("PICLOUD_CONFIG") {
            Some(path) => Self::from_file(Path::new(&path))?,
            None => Self::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

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

    /// Applies environment overrides; `get` is injectable for tests.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env {
                var,
                reason: e.to_string(),
            })
        }
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = non_empty("PICLOUD_DATABASE_URL") {
            self.database_url = Some(v.into());
        }
        if let Some(v) = non_empty("PICLOUD_NATS_URL") {
            self.nats_url = Some(v.into());
        }
        self.nats.apply_env(&get)?;
        if let Some(v) = non_empty("PICLOUD_SINGLE_NODE") {
            self.single_node = parse::<bool>("PICLOUD_SINGLE_NODE", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_LISTEN") {
            self.listen = parse("PICLOUD_LISTEN", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_ADMIN_TOKEN") {
            self.admin_token = Some(v.into());
        }
        if let Some(v) = get("PICLOUD_HTTP_ALLOW") {
            self.http_allow = v;
        }
        if let Some(v) = get("PICLOUD_HTTP_DENY") {
            self.http_deny = v;
        }
        if let Some(v) = non_empty("PICLOUD_HTTP_PORTS") {
            self.http_ports = v;
        }
        if let Some(v) = non_empty("PICLOUD_SECRETS_KEY") {
            self.secrets_key = Some(v.into());
        }
        if let Some(v) = non_empty("PICLOUD_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = non_empty("PICLOUD_PREFIX") {
            self.prefix = v;
        }
        if let Some(v) = non_empty("PICLOUD_WORKERS") {
            self.workers = parse("PICLOUD_WORKERS", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_QUEUE_DEPTH") {
            self.queue_depth = parse("PICLOUD_QUEUE_DEPTH", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_MAX_REQUEST_BYTES") {
            self.max_request_bytes = parse("PICLOUD_MAX_REQUEST_BYTES", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_RETRY_BASE_MS") {
            self.retry_base_ms = parse("PICLOUD_RETRY_BASE_MS", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_RETRY_MAX_MS") {
            self.retry_max_ms = parse("PICLOUD_RETRY_MAX_MS", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_MAX_ATTEMPTS") {
            self.max_attempts = parse("PICLOUD_MAX_ATTEMPTS", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_JOB_ACK_WAIT_MS") {
            self.job_ack_wait_ms = parse("PICLOUD_JOB_ACK_WAIT_MS", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_DRAIN_MS") {
            self.drain_ms = Some(parse("PICLOUD_DRAIN_MS", &v)?);
        }
        if let Some(v) = non_empty("PICLOUD_INVOCATION_RETENTION_HOURS") {
            self.invocation_retention_hours = parse("PICLOUD_INVOCATION_RETENTION_HOURS", &v)?;
        }
        self.apply_http_env(&get)?;
        if let Some(v) = non_empty("PICLOUD_LOG_FOLLOW_BUFFER") {
            self.log_follow_buffer = parse("PICLOUD_LOG_FOLLOW_BUFFER", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_LOG_KEEPALIVE_MS") {
            self.log_keepalive_ms = parse("PICLOUD_LOG_KEEPALIVE_MS", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_MAX_CHAIN_DEPTH") {
            self.max_chain_depth = parse("PICLOUD_MAX_CHAIN_DEPTH", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_MAX_TRACE_INVOCATIONS") {
            self.max_trace_invocations = parse("PICLOUD_MAX_TRACE_INVOCATIONS", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_SCRIPT_CONCURRENCY") {
            self.script_concurrency = parse("PICLOUD_SCRIPT_CONCURRENCY", &v)?;
        }
        if let Some(v) = non_empty("PICLOUD_METRICS_TOKEN") {
            self.metrics_token = Some(v.into());
        }
        if let Some(v) = non_empty("PICLOUD_METRICS_MAX_SCRIPTS") {
            self.metrics_max_scripts = parse("PICLOUD_METRICS_MAX_SCRIPTS", &v)?;
        }
        self.validate()
    }

    fn apply_http_env(&mut self, get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let num = |var: &'static str| -> Result<Option<u64>, ConfigError> {
            get(var)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    v.trim()
                        .parse()
                        .map_err(|e: std::num::ParseIntError| ConfigError::Env {
                            var,
                            reason: e.to_string(),
                        })
                })
                .transpose()
        };
        if let Some(v) = num("PICLOUD_HTTP_HEADER_TIMEOUT_MS")? {
            self.http_header_timeout_ms = v;
        }
        if let Some(v) = num("PICLOUD_HTTP_BODY_TIMEOUT_MS")? {
            self.http_body_timeout_ms = v;
        }
        if let Some(v) = num("PICLOUD_HTTP_IDLE_TIMEOUT_MS")? {
            self.http_idle_timeout_ms = v;
        }
        if let Some(v) = num("PICLOUD_HTTP_MAX_CONNECTIONS")? {
            self.http_max_connections = usize::try_from(v).unwrap_or(usize::MAX);
        }
        Ok(())
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

    #[test]
    fn env_overrides_file_values() {
        let mut c: Config =
            toml::from_str("prefix = \"a\"\nworkers = 3\n[limits]\nwall_time_ms = 10\n").unwrap();
        assert_eq!(c.limits.wall_time_ms, 10);
        c.apply_env(|k| match k {
            "PICLOUD_PREFIX" => Some("b".into()),
            "PICLOUD_LISTEN" => Some("0.0.0.0:9000".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.prefix, "b");
        assert_eq!(c.workers, 3);
        assert_eq!(c.listen.port(), 9000);
    }

    #[test]
    fn bad_env_is_named() {
        let err = Config::default()
            .apply_env(|k| (k == "PICLOUD_LISTEN").then(|| "nope".into()))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid PICLOUD_LISTEN"),
            "{err}"
        );
        let err = Config::default()
            .apply_env(|k| (k == "PICLOUD_PREFIX").then(|| "a.b".into()))
            .unwrap_err();
        assert!(err.to_string().contains("PICLOUD_PREFIX"), "{err}");
    }

    /// Issue #18: printing the configuration (a `{config:?}` in a log line or
    /// a panic) shows none of its secrets.
    #[test]
    fn debug_shows_no_secret() {
        let mut c: Config =
            toml::from_str("admin_token = \"tok-file-1\"\nsecrets_key = \"key-file-2\"\n").unwrap();
        c.apply_env(|k| match k {
            "PICLOUD_DATABASE_URL" => Some("postgres://u:pg-pass-3@db/x".into()),
            "PICLOUD_NATS_URL" => Some("nats://n:nats-pass-4@bus:4222".into()),
            "PICLOUD_METRICS_TOKEN" => Some("metrics-5".into()),
            _ => None,
        })
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
        assert_eq!(c.database_url(), Some("postgres://u:pg-pass-3@db/x"));
    }

    /// Streams are named after the prefix upper-cased: `Ab` would share
    /// `ab`'s streams, so upper case is refused (issue #18).
    #[test]
    fn upper_case_prefix_is_refused() {
        for bad in ["Ab", "PICLOUD"] {
            let err = Config::default()
                .apply_env(|k| (k == "PICLOUD_PREFIX").then(|| bad.into()))
                .unwrap_err();
            assert!(err.to_string().contains("lower-case"), "{err}");
        }
        for good in ["a-b", "a_b", "t0123456789ab"] {
            Config::default()
                .apply_env(|k| (k == "PICLOUD_PREFIX").then(|| good.into()))
                .unwrap();
        }
    }
}
