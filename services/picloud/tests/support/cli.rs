//! Runs the real `picloud` binary as a user would: its own HOME and
//! XDG_CONFIG_HOME (so profiles are private to the test), no `PICLOUD_*`
//! variables from the outside, `NO_COLOR`, and stdin from the test.

#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use picloud_testkit::{TestEnv, eventually};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// A [`TestEnv`] that is cleaned up even when the test panics, so a
/// failing test leaves no database or streams behind on the shared
/// servers. Call [`Env::cleanup`] at the end as usual.
pub struct Env(Option<TestEnv>);

impl Env {
    pub async fn new() -> Self {
        Self(Some(TestEnv::new().await))
    }

    pub async fn cleanup(mut self) {
        if let Some(env) = self.0.take() {
            env.cleanup().await;
        }
    }
}

impl std::ops::Deref for Env {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        self.0.as_ref().expect("not cleaned up yet")
    }
}

impl std::ops::DerefMut for Env {
    fn deref_mut(&mut self) -> &mut TestEnv {
        self.0.as_mut().expect("not cleaned up yet")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let Some(env) = self.0.take() else { return };
        // Unwinding out of the test: clean up on a runtime of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                rt.block_on(env.cleanup());
            }
        })
        .join();
    }
}

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, for "never printed" checks.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// A user of the CLI with a home of their own.
pub struct User {
    pub home: tempfile::TempDir,
    pub base: String,
    pub token: String,
}

impl User {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            home: tempfile::Builder::new()
                .prefix("picloud-cli-home-")
                .tempdir()
                .expect("temp home"),
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    /// A user logged in to a fresh PiCloud (front + executor).
    pub async fn with_env() -> (Env, Self) {
        let mut env = Env::new().await;
        let front = env.start_front().await;
        env.start_executor().await;
        let user = Self::new(&front.base, &env.token);
        user.login().await;
        (env, user)
    }

    pub fn config_dir(&self) -> std::path::PathBuf {
        self.home.path().join(".config")
    }

    pub fn profile_file(&self) -> std::path::PathBuf {
        self.config_dir().join("picloud").join("profiles.toml")
    }

    /// Writes `name` under the home and returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.home.path().join(name);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write file");
        p.to_str().expect("utf-8 path").to_owned()
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_picloud"));
        cmd.args(args)
            .current_dir(self.home.path())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.config_dir())
            .env("NO_COLOR", "1")
            .env_remove("PICLOUD_URL")
            .env_remove("PICLOUD_TOKEN")
            .env_remove("PICLOUD_PROFILE")
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        cmd
    }

    /// `picloud ARGS` on a pseudo-terminal (under `script`), or `None`
    /// when there is no `script` to make one.
    pub fn on_terminal(&self, args: &[&str], no_color: bool) -> Option<tokio::process::Command> {
        std::process::Command::new("script")
            .arg("--version")
            .output()
            .ok()?;
        let mut line = env!("CARGO_BIN_EXE_picloud").to_owned();
        for a in args {
            line.push_str(&format!(" '{}'", a.replace('\'', r"'\''")));
        }
        let mut cmd = tokio::process::Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .current_dir(self.home.path())
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.config_dir())
            .env("TERM", "xterm")
            .env_remove("PICLOUD_URL")
            .env_remove("PICLOUD_TOKEN")
            .env_remove("PICLOUD_PROFILE")
            .env_remove("NO_COLOR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        Some(cmd)
    }

    /// Runs `picloud ARGS` with `stdin` (or an empty one).
    pub async fn run_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn picloud");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).await.expect("write stdin");
        }
        drop(input);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("picloud {args:?} did not end in 30 s"))
            .expect("picloud output");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `picloud ARGS | head -c N`: the reader goes away after `keep`
    /// bytes (0: before anything is written).
    pub async fn closed_pipe(&self, args: &[&str], keep: usize) -> Run {
        use tokio::io::AsyncReadExt;
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn picloud");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut head = vec![0u8; keep];
        stdout.read_exact(&mut head).await.expect("the first bytes");
        drop(stdout);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("picloud ends")
            .expect("picloud output");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&head).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, None, &[]).await
    }

    /// Runs and asserts the exit code.
    pub async fn expect(&self, code: i32, args: &[&str]) -> Run {
        let run = self.run(args).await;
        assert_eq!(run.code, code, "picloud {args:?}: {run:?}");
        assert!(
            !run.stderr.contains("panicked"),
            "picloud {args:?} panicked: {run:?}"
        );
        run
    }

    pub async fn ok(&self, args: &[&str]) -> Run {
        self.expect(0, args).await
    }

    /// `picloud ARGS --json`, parsed.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        self.ok(&all).await.json()
    }

    /// `picloud login BASE` with the token on stdin.
    pub async fn login(&self) {
        let run = self
            .run_with(&["login", &self.base], Some(&self.token), &[])
            .await;
        assert_eq!(run.code, 0, "login: {run:?}");
    }

    /// Polls `picloud invoke ARGS` until it prints `expected` (a new
    /// version or route reaches every gateway within moments).
    pub async fn invoke_until(&self, args: &[&str], expected: &str) -> Run {
        let mut all = vec!["invoke"];
        all.extend_from_slice(args);
        let all = &all;
        eventually(Duration::from_secs(15), || async move {
            let run = self.run(all).await;
            (run.code == 0 && run.stdout.trim() == expected).then_some(run)
        })
        .await
        .unwrap_or_else(|| panic!("picloud {all:?} never printed {expected:?}"))
    }
}
