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

/// A child process killed (SIGKILL) when dropped.
pub struct ChildProcess {
    name: String,
    child: std::process::Child,
}

impl ChildProcess {
    /// Spawns `cmd` in its own process group, with its output appended to
    /// `log` (if given) and SIGKILL as its parent-death signal.
    pub fn spawn(name: &str, mut cmd: Command, log: Option<&Path>) -> Self {
        match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                cmd.stdout(file.try_clone().expect("dup log")).stderr(file);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        cmd.stdin(Stdio::null()).process_group(0);
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid, raise).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::raise(libc::SIGKILL);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal`, waits up to `limit` for the exit, then SIGKILLs.
    pub async fn stop(&mut self, signal: i32, limit: Duration) {
        self.signal(signal);
        let started = Instant::now();
        while self.is_running() {
            if started.elapsed() > limit {
                eprintln!(
                    "{} ignored signal {signal} for {limit:?}; killing it",
                    self.name
                );
                self.kill();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server -js` of the test's own, on a free loopback port.
pub struct PrivateNats {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<ChildProcess>,
}

impl PrivateNats {
    /// Starts a server and waits until it accepts connections.
    pub async fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("picloud-nats-")
            .tempdir()
            .expect("temp dir");
        let mut me = Self {
            port: crate::free_port(),
            dir,
            child: None,
        };
        me.start().await;
        me
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
        self.child = Some(ChildProcess::spawn("nats-server", cmd, Some(&self.log())));
        let port = self.port;
        wait_until(Duration::from_secs(30), "nats-server", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
    }

    /// Stops the server gracefully (SIGTERM: JetStream flushes its store).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(libc::SIGTERM, Duration::from_secs(20)).await;
        }
    }
}

/// A Postgres cluster of the test's own, reachable only on a Unix socket in
/// its temporary directory.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    owner: Option<(u32, u32)>,
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
        let owner = is_root().then(postgres_user);
        for d in [dir.path().to_owned(), dir.path().join("run")] {
            std::fs::create_dir_all(&d).expect("create dir");
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&d, Some(uid), Some(gid)).expect("chown");
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
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
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
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&log, Some(uid), Some(gid)).expect("chown");
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
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        self.child = Some(ChildProcess::spawn("postgres", cmd, Some(&log)));
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
            child.stop(libc::SIGINT, Duration::from_secs(30)).await;
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // SIGKILL would leave shared memory and a stale pid file behind;
        // a fast shutdown is quick, and the directory is removed after.
        if let Some(mut child) = self.child.take() {
            child.signal(libc::SIGINT);
            let started = Instant::now();
            while child.is_running() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

async fn wait_until(limit: Duration, what: &str, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < limit,
            "{what} did not start within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `name` on PATH or in the sbin directories (Debian installs nats-server
/// in /usr/sbin).
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where `initdb` and `postgres` live: Debian keeps them off PATH.
fn postgres_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PICLOUD_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").is_file().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .or_else(|| find_binary("initdb").and_then(|p| p.parent().map(Path::to_path_buf)))
}

fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .expect("as root, the private Postgres needs the 'postgres' user")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
