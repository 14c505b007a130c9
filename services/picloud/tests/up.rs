//! `picloud up` end to end: the real binary starts its own nats-server and
//! Postgres, serves, and on SIGTERM stops them and leaves no process behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use picloud_supervise::Signal;
use picloud_testkit::{Client, free_port};
use reqwest::StatusCode;

/// Processes whose command line mentions `needle` (our private servers
/// carry the data directory in theirs).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[tokio::test]
async fn up_starts_its_own_servers_serves_and_stops_cleanly() {
    // Under /tmp (world-traversable) so that, as root, the private Postgres
    // can run as the postgres user.
    let data = tempfile::Builder::new()
        .prefix("picloud-up-")
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_picloud"))
        .arg("up")
        .env_remove("PICLOUD_DATABASE_URL")
        .env_remove("PICLOUD_NATS_URL")
        .env_remove("PICLOUD_ADMIN_TOKEN")
        .env_remove("PICLOUD_CONFIG")
        .env("PICLOUD_DATA_DIR", &data_dir)
        .env("PICLOUD_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("picloud starts");

    // The banner comes once everything serves.
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.starts_with("Press Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let banner = tokio::time::timeout(Duration::from_secs(120), banner)
        .await
        .expect("banner within 120 s")
        .unwrap();
    let token = std::fs::read_to_string(format!("{data_dir}/admin-token")).unwrap();
    assert!(
        banner
            .iter()
            .any(|l| l.contains(&format!("admin token: {token}"))),
        "{banner:?}"
    );
    assert!(
        banner.iter().any(|l| l.contains("picloud login --local")),
        "{banner:?}"
    );
    assert!(
        banner
            .iter()
            .any(|l| l.contains(&format!("dashboard: http://127.0.0.1:{port}/dashboard"))),
        "{banner:?}"
    );
    assert!(
        !processes_mentioning(&data_dir).is_empty(),
        "private servers run"
    );

    let c = Client::new(&format!("http://127.0.0.1:{port}"), &token);
    let ready = c
        .http
        .get(format!("{}/readyz", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let resp = c
        .deploy(
            "hello",
            r#"let who = request.query.who ?? "world"; `Hello, ${who}!`"#,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    c.wait_for_body("hello?who=PiCloud", "Hello, PiCloud!")
        .await;

    // The README's quick start, as a new user pastes it in a second
    // terminal of the clone (this test's binary stands in for the one
    // `scripts/up.sh` builds).
    let home = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_picloud"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |script: &str| {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(root)
            .env("PATH", &path)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("PICLOUD_DATA_DIR", &data_dir)
            .env("PICLOUD_LISTEN", format!("127.0.0.1:{port}"))
            .env("NO_COLOR", "1")
            .env_remove("PICLOUD_URL")
            .env_remove("PICLOUD_TOKEN")
            .env_remove("PICLOUD_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(
            out.status.success(),
            "{script}\n---\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let quickstart = readme_quickstart();
    let out = shell(&quickstart);
    assert!(out.contains("Hello, PiCloud!"), "{out}");
    let seen = (0..100).find_map(|_| {
        let v = shell("picloud invoke audit");
        if v.contains(r#""seen":1"#) {
            Some(v)
        } else {
            std::thread::sleep(Duration::from_millis(200));
            None
        }
    });
    assert!(seen.is_some(), "the order event never reached audit");

    // SIGTERM: drain, stop the children, exit 0.
    picloud_supervise::signal(child.id(), Signal::SIGTERM);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "picloud did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    let left = processes_mentioning(&data_dir);
    assert!(left.is_empty(), "orphans left behind: {left:?}");
}

/// The README's quick-start block (the `sh` block after the
/// `<!-- quickstart` marker), without its PATH line: the test puts its own
/// binary first on PATH.
fn readme_quickstart() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let from = readme
        .find("<!-- quickstart")
        .expect("the README has a quick start");
    let block = readme[from..]
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(block, _)| block)
        .expect("a sh block after the marker");
    let lines: Vec<&str> = block
        .lines()
        .filter(|l| !l.trim_start().starts_with("export PATH="))
        .collect();
    assert!(lines.len() >= 8, "{block}");
    lines.join("\n")
}

#[test]
fn a_missing_binary_names_the_setup_command() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_picloud"))
        .arg("up")
        .env_remove("PICLOUD_DATABASE_URL")
        .env_remove("PICLOUD_NATS_URL")
        .env("PICLOUD_DATA_DIR", data.path())
        .env(
            "PICLOUD_NATS_SERVER",
            data.path().join("no-such-nats-server"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not installed"), "{err}");
    assert!(
        err.contains("apt-get install -y nats-server postgresql"),
        "{err}"
    );
}

/// Two `picloud executor` processes (cluster mode) against one manager and
/// gateway: both take work.
#[tokio::test]
async fn executor_processes_share_the_work() {
    let mut env = picloud_testkit::TestEnv::new().await;
    let front = env.start_front().await;
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_picloud"))
            .arg("executor")
            .env_remove("PICLOUD_DATABASE_URL")
            .env_remove("PICLOUD_CONFIG")
            .env("PICLOUD_NATS_URL", env.config.nats_url().unwrap())
            .env("PICLOUD_PREFIX", &env.config.prefix)
            .env("PICLOUD_LISTEN", "127.0.0.1:0")
            .env("PICLOUD_WORKERS", "1")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("executor starts")
    };
    let mut executors = [spawn(), spawn()];
    let pids: Vec<String> = executors.iter().map(|c| format!("-{}-", c.id())).collect();

    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("shared", r#""ok""#).await;
    c.wait_for_body("shared", "ok").await;
    // Keep calling until both processes have answered (each joins the
    // queue group when it is up; bounded).
    let both = picloud_testkit::eventually(Duration::from_secs(30), || async {
        for _ in 0..20 {
            assert_eq!(c.call("shared").await.status(), StatusCode::OK);
        }
        let records = c.get_json("/invocations?script=shared&limit=1000").await;
        let served = |pid: &str| {
            records
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["executor"].as_str().unwrap().contains(pid))
        };
        pids.iter().all(|p| served(p)).then_some(())
    })
    .await;
    assert!(both.is_some(), "not every executor process took work");

    for child in &mut executors {
        picloud_supervise::signal(child.id(), Signal::SIGTERM);
    }
    for child in &mut executors {
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
    env.cleanup().await;
}

/// A private server that dies takes `picloud up` down with a clear error.
#[tokio::test]
async fn up_exits_with_an_error_when_its_nats_server_dies() {
    let data = tempfile::Builder::new()
        .prefix("picloud-up-dies-")
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_picloud"))
        .arg("up")
        .env_remove("PICLOUD_DATABASE_URL")
        .env_remove("PICLOUD_NATS_URL")
        .env_remove("PICLOUD_CONFIG")
        .env("PICLOUD_DATA_DIR", &data_dir)
        .env("PICLOUD_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = picloud_testkit::eventually(Duration::from_secs(120), || async {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ready.is_some(), "picloud up serves");

    let nats: Vec<u32> = processes_mentioning(&format!("{data_dir}/nats/nats.conf"))
        .iter()
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(nats.len(), 1, "one private nats-server");
    picloud_supervise::signal(nats[0], Signal::SIGKILL);

    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("picloud exits by itself")
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the private nats-server exited unexpectedly"),
        "{err}"
    );
    let left = processes_mentioning(&data_dir);
    assert!(left.is_empty(), "orphans left behind: {left:?}");
}
