//! Child processes PiCloud starts and owns: `picloud up`'s private
//! nats-server and Postgres, and the servers and role processes of the
//! end-to-end tests. One implementation for both, so they cannot drift.
//!
//! - [`Supervised::spawn`] puts the child in its own process group (a
//!   terminal's Ctrl-C reaches only the parent, which stops its children in
//!   order) and gives it a parent-death signal, so a crashed parent leaves no
//!   orphan. The parent-death signal follows the spawning *thread*: spawn
//!   from a thread that lives as long as the child should.
//! - [`Supervised::stop`] sends a signal, waits, and kills after a limit.
//! - [`Owner`]: as root, a child can run as another user (`initdb` refuses
//!   to run as root, so a private Postgres belongs to `postgres`).
//! - [`find_binary`], [`postgres_bindir`], [`free_port`] and [`wait_until`]
//!   find what to start and wait for it to answer.
//!
//! This is the one crate besides the sandbox's counting allocator that uses
//! `unsafe`: `pre_exec`, to set the parent-death signal in the child between
//! fork and exec.

#![deny(unsafe_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;
use nix::unistd::{Pid, User};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{what} did not start within {limit:?}")]
    NotReady { what: String, limit: Duration },
    #[error("running as root needs the 'postgres' user to own the private database")]
    NoPostgresUser,
}

/// The user and group a child runs as (set between fork and exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// The `postgres` system user, which owns private clusters when we run
    /// as root.
    pub fn postgres() -> Result<Self, Error> {
        match User::from_name("postgres") {
            Ok(Some(u)) => Ok(Self {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            _ => Err(Error::NoPostgresUser),
        }
    }

    /// Gives `path` to this owner.
    pub fn chown(&self, path: &Path) -> std::io::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
    }
}

pub use picloud_core::is_root;

/// How a child is started.
pub struct Spawn {
    /// Delivered to the child when the spawning thread dies.
    pub death_signal: Signal,
    /// Run as this user instead of ours (root only).
    pub owner: Option<Owner>,
    /// Where stdout and stderr go (`None`: nowhere).
    pub output: Option<std::fs::File>,
}

impl Spawn {
    pub fn new(death_signal: Signal) -> Self {
        Self {
            death_signal,
            owner: None,
            output: None,
        }
    }

    pub fn owner(mut self, owner: Option<Owner>) -> Self {
        self.owner = owner;
        self
    }

    pub fn output(mut self, file: std::fs::File) -> Self {
        self.output = Some(file);
        self
    }
}

/// A child process this process owns. Dropping it kills the child.
pub struct Supervised {
    name: String,
    child: Child,
}

impl Supervised {
    /// Starts `cmd` as described by `how`. Standard input is closed; output
    /// goes where `how.output` says, unless `cmd` already set it.
    pub fn spawn(name: &str, mut cmd: Command, how: Spawn) -> Result<Self, Error> {
        let spawn_error = |source| Error::Spawn {
            name: name.to_owned(),
            source,
        };
        if let Some(file) = how.output {
            let copy = file.try_clone().map_err(spawn_error)?;
            cmd.stdout(copy).stderr(file);
        }
        if let Some(owner) = how.owner {
            cmd.uid(owner.uid).gid(owner.gid);
            // The parent's HOME is root's, which the owner cannot read.
            cmd.env("HOME", "/tmp");
        }
        cmd.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
        let parent = nix::unistd::getpid();
        let signal = how.death_signal;
        // SAFETY: the closure runs in the forked child before exec and calls
        // only async-signal-safe functions (prctl, getppid, kill).
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || set_death_signal(signal, parent));
        }
        let child = cmd.spawn().map_err(spawn_error)?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's pid, until it has been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal`. A child already reaped gets nothing.
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id() {
            self::signal(pid, signal);
        }
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the child to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGKILL, and waits for the exit.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends `signal`, waits up to `limit` for the exit, then kills it.
    /// Returns true when the child stopped on the signal alone.
    pub async fn stop(&mut self, signal: Signal, limit: Duration) -> bool {
        self.signal(signal);
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(_) => {
                tracing::info!("{} stopped", self.name);
                true
            }
            Err(_) => {
                tracing::warn!("{} ignored {signal} for {limit:?}; killing it", self.name);
                self.kill().await;
                false
            }
        }
    }

    /// Sends `signal` and waits up to `limit` without an async runtime (for
    /// `Drop` implementations); the child is killed after that.
    pub fn stop_blocking(&mut self, signal: Signal, limit: Duration) {
        self.signal(signal);
        let started = Instant::now();
        while self.is_running() && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
    }

    /// Waits for the exit and collects the output `cmd` piped.
    pub async fn output(self) -> std::io::Result<std::process::Output> {
        self.child.wait_with_output().await
    }
}

/// Sends `signal` to the process `pid` (e.g. a child spawned by a plain
/// `std::process::Command`). A process that is gone gets nothing.
pub fn signal(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
}

fn set_death_signal(signal: Signal, parent: Pid) -> std::io::Result<()> {
    nix::sys::prctl::set_pdeathsig(signal)?;
    // The parent may have died before prctl took effect.
    if nix::unistd::getppid() != parent {
        nix::sys::signal::kill(nix::unistd::getpid(), signal)?;
    }
    Ok(())
}

/// `name` on PATH or in the sbin directories (Debian installs nats-server
/// in /usr/sbin, which a normal user's PATH lacks).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where `initdb` and `postgres` live: `PICLOUD_PG_BINDIR`, else
/// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian keeps them off PATH), else PATH.
pub fn postgres_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PICLOUD_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").is_file().then_some(dir);
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").is_file() {
            return Some(dir);
        }
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

/// A loopback port nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// True when something accepts TCP connections on the loopback `port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Raises this process's soft open-files limit to its hard limit (every
/// connection is a descriptor) and returns the new soft limit.
pub fn raise_nofile_limit() -> nix::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

/// Waits until `ready` answers true, asking every 50 ms for at most `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut ready: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !ready().await {
        if started.elapsed() > limit {
            return Err(Error::NotReady {
                what: what.to_owned(),
                limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_soft_nofile_to_hard() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(256), hard).expect("lower");
        assert_eq!(raise_nofile_limit().expect("raise"), hard);
        assert_eq!(
            getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit").0,
            hard
        );
    }

    #[tokio::test]
    async fn a_child_that_ignores_the_signal_is_killed_after_the_limit() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; echo up; sleep 30"])
            .stdout(Stdio::piped());
        let mut child = Supervised::spawn("stubborn", cmd, Spawn::new(Signal::SIGKILL)).unwrap();
        // Wait until the trap is set (the shell printed after it).
        let mut out = child.child.stdout.take().unwrap();
        let mut buf = [0u8; 3];
        tokio::io::AsyncReadExt::read_exact(&mut out, &mut buf)
            .await
            .unwrap();
        assert!(child.is_running());
        let on_signal = child
            .stop(Signal::SIGTERM, Duration::from_millis(300))
            .await;
        assert!(!on_signal, "the child ignored SIGTERM, so it was killed");
        assert!(!child.is_running());
    }

    #[tokio::test]
    async fn a_child_stops_on_its_signal() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = Supervised::spawn("sleeper", cmd, Spawn::new(Signal::SIGKILL)).unwrap();
        assert!(child.stop(Signal::SIGTERM, Duration::from_secs(10)).await);
        assert!(!child.is_running());
    }

    #[test]
    fn the_child_dies_with_the_thread_that_spawned_it() {
        let pid = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut cmd = Command::new("sleep");
                cmd.arg("30");
                let child = Supervised::spawn("orphan", cmd, Spawn::new(Signal::SIGKILL)).unwrap();
                let pid = child.pid().unwrap();
                // Not killed by a drop: only the death signal may end it.
                std::mem::forget(child);
                pid
            })
        })
        .join()
        .unwrap();
        let started = Instant::now();
        let pid = Pid::from_raw(pid as i32);
        // A zombie (dead, not yet reaped) answers kill(0) too: reap it.
        while let Ok(nix::sys::wait::WaitStatus::StillAlive) =
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the child outlived the thread that spawned it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn finds_binaries_on_path_and_in_sbin() {
        assert!(find_binary("sh").is_some());
        assert!(find_binary("no-such-binary-picloud").is_none());
    }
}
