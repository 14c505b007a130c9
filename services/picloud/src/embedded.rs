//! The embedded default: a private `nats-server -js` and a private Postgres
//! cluster under the data directory, as child processes.
//!
//! - Never the standard ports: NATS gets a free loopback port; Postgres
//!   listens on no TCP port at all, only on a Unix socket in a directory of
//!   its own.
//! - `initdb` refuses to run as root. As root, the cluster belongs to the
//!   `postgres` user (uid/gid switched in the child), in a directory that
//!   user can reach.
//! - Children live in their own process group (a terminal's Ctrl-C reaches
//!   only us, and we stop them after the roles have drained) and get a
//!   parent-death signal, so a crashed `picloud` leaves no orphans.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use picloud_core::{Config, Shutdown, is_root};
use picloud_store::Store;
use picloud_supervise::{Owner, Signal, Spawn, Supervised, find_binary, postgres_bindir};
use tokio::process::Command;

const SETUP_HINT: &str = "install them with: sudo apt-get install -y nats-server postgresql \
     (or run scripts/setup.sh), or set PICLOUD_NATS_URL and PICLOUD_DATABASE_URL";

/// The private servers this process started (none when URLs were given).
#[derive(Default)]
pub struct Embedded {
    nats: Option<Supervised>,
    postgres: Option<Supervised>,
}

impl Embedded {
    /// Starts what `config` lacks and fills in its URLs and admin token.
    pub async fn start(config: &mut Config, shutdown: &Shutdown) -> anyhow::Result<Self> {
        let mut me = Self::default();
        if config.admin_token.is_none() {
            config.admin_token = Some(admin_token(&config.data_dir)?.into());
        }
        if config.nats_url.is_none() || config.database_url.is_none() {
            prepare_data_dir(&config.data_dir)?;
        }
        let result = async {
            if config.nats_url.is_none() {
                let (child, url) = start_nats(&config.data_dir).await?;
                me.nats = Some(child);
                config.nats_url = Some(url.into());
            }
            if config.database_url.is_none() {
                let (child, url) = start_postgres(&config.data_dir, shutdown).await?;
                me.postgres = Some(child);
                config.database_url = Some(url.into());
            }
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(me),
            Err(e) => {
                me.stop().await;
                Err(e)
            }
        }
    }

    /// Resolves when a private server exits on its own, naming it. Never
    /// resolves when this process started none.
    pub async fn died(&mut self) -> &'static str {
        match (&mut self.nats, &mut self.postgres) {
            (Some(n), Some(p)) => tokio::select! {
                _ = n.wait() => "nats-server",
                _ = p.wait() => "postgres",
            },
            (Some(n), None) => {
                let _ = n.wait().await;
                "nats-server"
            }
            (None, Some(p)) => {
                let _ = p.wait().await;
                "postgres"
            }
            (None, None) => std::future::pending().await,
        }
    }

    /// Stops Postgres (fast shutdown) and NATS, and waits for both.
    pub async fn stop(mut self) {
        // Fast shutdown for Postgres; JetStream flushes its store on SIGTERM.
        if let Some(mut pg) = self.postgres.take() {
            pg.stop(Signal::SIGINT, STOP_LIMIT).await;
        }
        if let Some(mut nats) = self.nats.take() {
            nats.stop(Signal::SIGTERM, STOP_LIMIT).await;
        }
    }
}

/// How long a private server may take to stop before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(30);

fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    if is_root() {
        // The postgres user must be able to pass through to its own
        // subdirectory; nothing in here is readable by others.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
    }
    Ok(())
}

/// The admin token: from the data directory, or generated once into it
/// (mode 0600, like an SSH key: this file is the credential).
fn admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    prepare_data_dir(data_dir)?;
    let token = format!(
        "pc_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&path, &token)?;
    Ok(token)
}

/// Writes `text` to a file created 0600: never readable by others, not even
/// for a moment.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

// ---- NATS ------------------------------------------------------------------

async fn start_nats(data_dir: &Path) -> anyhow::Result<(Supervised, String)> {
    // PICLOUD_NATS_SERVER picks a specific server (e.g. a newer one).
    let bin = match std::env::var_os("PICLOUD_NATS_SERVER") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => find_binary("nats-server"),
    }
    .with_context(|| format!("nats-server is not installed; {SETUP_HINT}"))?;
    let dir = data_dir.join("nats");
    std::fs::create_dir_all(&dir)?;
    // Script sources and invocation records live in here.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let port = picloud_supervise::free_port()?;
    let conf = dir.join("nats.conf");
    // Loopback is shared with every local user: the server demands a
    // password made fresh at every start (the config file is 0600, in a 0700
    // directory), so no other user can read secrets or inject code.
    // Quoted in the file and led by letters: an unquoted value such as
    // `1e5...` would be read as a number.
    let password = format!("pc{}", uuid::Uuid::new_v4().simple());
    write_private(
        &conf,
        &format!(
            "# Written by `picloud up` at every start.\n\
             listen: 127.0.0.1:{port}\n\
             max_payload: 8MB\n\
             authorization {{\n  user: picloud\n  password: \"{password}\"\n}}\n\
             jetstream {{\n  store_dir: {:?}\n}}\n",
            dir.join("jetstream").display().to_string()
        ),
    )?;
    let log = std::fs::File::create(dir.join("nats.log"))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("-c").arg(&conf);
    let child = Supervised::spawn("nats-server", cmd, Spawn::new(Signal::SIGTERM).output(log))?;
    let url = format!("nats://picloud:{password}@127.0.0.1:{port}");
    picloud_supervise::wait_until(Duration::from_secs(20), "nats-server", || async move {
        picloud_supervise::port_open(port)
    })
    .await?;
    tracing::info!(port, "private nats-server started");
    Ok((child, url))
}

// ---- Postgres --------------------------------------------------------------

async fn start_postgres(
    data_dir: &Path,
    shutdown: &Shutdown,
) -> anyhow::Result<(Supervised, String)> {
    let bindir = postgres_bindir()
        .with_context(|| format!("Postgres (initdb, postgres) is not installed; {SETUP_HINT}"))?;
    let owner = if is_root() {
        Some(Owner::postgres().map_err(|e| anyhow::anyhow!("{e}; {SETUP_HINT}"))?)
    } else {
        None
    };
    let base = data_dir.join("postgres");
    let pgdata = base.join("data");
    let run = base.join("run");
    for d in [&base, &run] {
        std::fs::create_dir_all(d)?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        if let Some(owner) = owner {
            owner.chown(d)?;
        }
    }
    if let Some(owner) = owner {
        check_reachable(&base, owner.uid)?;
    }

    if !pgdata.join("PG_VERSION").exists() {
        tracing::info!(dir = %pgdata.display(), "initialising a private Postgres cluster");
        let mut cmd = Command::new(bindir.join("initdb"));
        cmd.arg("-D")
            .arg(&pgdata)
            .args([
                "--auth=trust",
                "--username=picloud",
                "--encoding=UTF8",
                "--no-instructions",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let out = Supervised::spawn("initdb", cmd, Spawn::new(Signal::SIGTERM).owner(owner))?
            .output()
            .await
            .context("initdb failed to run")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }

    let log = std::fs::File::create(base.join("postgres.log"))?;
    if let Some(owner) = owner {
        owner.chown(&base.join("postgres.log"))?;
    }
    let mut cmd = Command::new(bindir.join("postgres"));
    cmd.arg("-D")
        .arg(&pgdata)
        .arg("-k")
        .arg(&run)
        // No TCP at all: the socket directory is private to its owner.
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "unix_socket_permissions=0700",
        ]);
    let child = Supervised::spawn(
        "postgres",
        cmd,
        Spawn::new(Signal::SIGINT).owner(owner).output(log),
    )?;

    let admin = format!(
        "postgres://picloud@localhost/postgres?host={}",
        run.display()
    );
    let ensured = tokio::select! {
        r = Store::ensure_database(&admin, "picloud", Duration::from_secs(60)) => r,
        _ = shutdown.cancelled() => bail!("interrupted while Postgres was starting"),
    };
    ensured.with_context(|| {
        format!(
            "private Postgres did not come up (see {})",
            base.join("postgres.log").display()
        )
    })?;
    tracing::info!(socket_dir = %run.display(), "private Postgres started");
    Ok((
        child,
        format!(
            "postgres://picloud@localhost/picloud?host={}",
            run.display()
        ),
    ))
}

/// As root, the `postgres` user must be able to walk down to its directory.
fn check_reachable(dir: &Path, uid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)?;
        let mode = meta.mode();
        let ok = if meta.uid() == uid {
            mode & 0o100 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            bail!(
                "{} is not reachable by the 'postgres' user, which must own the private \
                 database (initdb refuses to run as root): set PICLOUD_DATA_DIR to a directory \
                 under /var/lib or /tmp, or open {} with chmod o+x",
                dir.display(),
                ancestor.display()
            );
        }
    }
    Ok(())
}
