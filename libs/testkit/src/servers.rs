//! Private servers and child processes for tests that stop, restart or kill
//! them (the shared local NATS and Postgres must never be touched that way).
//!
//! - [`PrivateNats`]: a `nats-server -js` on a free loopback port, its store
//!   in a temporary directory; [`stop`](PrivateNats::stop) and
//!   [`start`](PrivateNats::start) keep the port and the store, so clients
//!   reconnect to the same server with the same streams.
//! - [`PrivatePostgres`]: a cluster made by `initdb` in a temporary directory,
//!   listening only on a Unix socket there. `initdb` refuses to run as root,
//!   so as root the cluster belongs to the `postgres` user (CI runs as root).
//! - [`ChildProcess`]: a child in its own process group that is killed when
//!   dropped, and gets a parent-death signal, so a test that panics or is
//!   killed leaves no process behind. The parent-death signal follows the
//!   spawning *thread*: spawn from the test's own thread (as a
//!   `#[tokio::test]` body does), not from a task on a multi-thread runtime,
//!   whose worker threads may come and go.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use picloud_supervise::{Owner, Signal, Spawn, Supervised, find_binary, is_root, postgres_bindir};

/// A child process killed (SIGKILL) when dropped: a [`Supervised`] child
/// whose failures to start are test failures.
pub struct ChildProcess(Supervised);

impl ChildProcess {
    /// Spawns `cmd` in its own process group, with its output appended to
    /// `log` (if given) and SIGKILL as its parent-death signal.
    pub fn spawn(name: &str, cmd: Command, log: Option<&Path>) -> Self {
        let mut how = Spawn::new(Signal::SIGKILL);
        if let Some(path) = log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            how = how.output(file);
        }
        Self::spawn_as(name, cmd, how)
    }

    fn spawn_as(name: &str, cmd: Command, how: Spawn) -> Self {
        Self(Supervised::spawn(name, cmd.into(), how).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid().expect("not reaped yet")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        self.0.signal(signal);
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        self.0
            .stop_blocking(Signal::SIGKILL, Duration::from_secs(10));
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.0.is_running()
    }

    /// Sends `signal`, waits up to `limit` for the exit, then SIGKILLs.
    pub async fn stop(&mut self, signal: Signal, limit: Duration) {
        self.0.stop(signal, limit).await;
    }
}

/// A `nats-server -js` of the test's own, on a free loopback port.
pub struct PrivateNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<ChildProcess>,
    /// Extra config (authorization, tls) and the environment its `$VAR`s
    /// are read from.
    conf: Option<(PathBuf, Vec<(String, String)>)>,
}

impl PrivateNats {
    /// Starts a server and waits until it accepts connections.
    pub async fn new() -> Self {
        Self::with_config("", &[]).await
    }

    /// A server that also reads `conf` (a nats-server config: an
    /// `authorization` or `tls` block, say), with `env` in its environment.
    pub async fn with_config(conf: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("picloud-nats-")
            .tempdir()
            .expect("temp dir");
        let conf = (!conf.is_empty()).then(|| {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, conf).expect("write nats.conf");
            let env = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            (path, env)
        });
        let mut me = Self {
            port: crate::free_port(),
            dir,
            child: None,
            conf,
        };
        me.start().await;
        me
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log (appended to across restarts).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Starts the server (again) on the same port and store directory.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "nats-server already runs");
        let bin = find_binary("nats-server")
            .expect("nats-server is not installed (apt-get install nats-server)");
        let mut cmd = Command::new(bin);
        cmd.args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.path().join("store"));
        if let Some((path, env)) = &self.conf {
            cmd.arg("-c").arg(path).envs(env.iter().cloned());
        }
        self.child = Some(ChildProcess::spawn("nats-server", cmd, Some(&self.log())));
        let port = self.port;
        picloud_supervise::wait_until(Duration::from_secs(30), "nats-server", || async move {
            picloud_supervise::port_open(port)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops the server gracefully (SIGTERM: JetStream flushes its store).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Signal::SIGTERM, Duration::from_secs(20)).await;
        }
    }
}

/// A Postgres cluster of the test's own, reachable only on a Unix socket in
/// its temporary directory.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    owner: Option<Owner>,
    child: Option<ChildProcess>,
}

impl PrivatePostgres {
    /// Creates a cluster (`initdb`), starts it and waits until it answers.
    pub async fn new() -> Self {
        let bindir = postgres_bindir()
            .expect("Postgres (initdb, postgres) is not installed (apt-get install postgresql)");
        // Under /tmp, which every user can walk into: as root the cluster
        // belongs to `postgres`, which must reach its directory.
        let dir = tempfile::Builder::new()
            .prefix("picloud-pg-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let owner = is_root().then(|| Owner::postgres().unwrap_or_else(|e| panic!("{e}")));
        for d in [dir.path().to_owned(), dir.path().join("run")] {
            std::fs::create_dir_all(&d).expect("create dir");
            if let Some(owner) = owner {
                owner.chown(&d).expect("chown");
            }
        }
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "--auth=trust",
                "--username=picloud",
                "--encoding=UTF8",
                "--no-instructions",
                "--no-sync",
            ])
            .env("HOME", "/tmp")
            .stdout(Stdio::null());
        if let Some(owner) = owner {
            initdb.uid(owner.uid).gid(owner.gid);
        }
        let out = initdb.output().expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut me = Self {
            dir,
            bindir,
            owner,
            child: None,
        };
        me.start().await;
        me
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://picloud@localhost/{database}?host={}",
            self.dir.path().join("run").display()
        )
    }

    /// The server's log (appended to across restarts).
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Starts the server (again) on the same data directory, and waits until
    /// it accepts connections.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "postgres already runs");
        let log = self.log();
        if !log.exists() {
            std::fs::write(&log, b"").expect("create log");
            if let Some(owner) = self.owner {
                owner.chown(&log).expect("chown");
            }
        }
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path().join("run"))
            // fsync off: a restart is a process stop, never an OS crash, and
            // a fast shutdown still writes everything out.
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=100",
            ])
            .env("HOME", "/tmp");
        let output = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open the log");
        let how = Spawn::new(Signal::SIGKILL).owner(self.owner).output(output);
        self.child = Some(ChildProcess::spawn_as("postgres", cmd, how));
        let url = self.url("postgres");
        let started = Instant::now();
        loop {
            if let Ok(pool) = sqlx::PgPool::connect(&url).await {
                pool.close().await;
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "private Postgres did not start (see {})",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server with a fast shutdown (SIGINT: open sessions are
    /// ended, as in `pg_ctl stop -m fast` or a restart by an operator).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Signal::SIGINT, Duration::from_secs(30)).await;
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // SIGKILL would leave shared memory and a stale pid file behind;
        // a fast shutdown is quick, and the directory is removed after.
        if let Some(mut child) = self.child.take() {
            child
                .0
                .stop_blocking(Signal::SIGINT, Duration::from_secs(10));
        }
    }
}
