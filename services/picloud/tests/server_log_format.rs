//! The real binary's server logs: no colour codes when stderr is not a
//! terminal (here a pipe), JSON lines with `PICLOUD_LOG_FORMAT=json`, and a
//! clear refusal of an unknown format.

use std::process::{Command, Output};

/// Runs `picloud manager` with no database: it logs at start, connects to
/// NATS, then stops with an error. `env` is added to a clean environment.
fn manager_run(env: &[(&str, &str)]) -> Output {
    let nats = std::env::var("PICLOUD_TEST_NATS_URL")
        .unwrap_or_else(|_| picloud_testkit::DEFAULT_NATS_URL.into());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_picloud"));
    cmd.arg("manager")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PICLOUD_NATS_URL", nats)
        .env("PICLOUD_PREFIX", "tlogformat000")
        // No shared secrets key needed: the run is to stop at the database.
        .env("PICLOUD_SINGLE_NODE", "true")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("picloud runs")
}

fn log_lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stderr.clone())
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("error:"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn no_colour_codes_off_a_terminal() {
    let out = manager_run(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("open-files limit"), "{stderr}");
    assert!(
        stderr.contains("PICLOUD_DATABASE_URL is required"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a pipe: {stderr:?}"
    );
}

#[test]
fn json_lines_on_request() {
    let out = manager_run(&[("PICLOUD_LOG_FORMAT", "json")]);
    let lines = log_lines(&out);
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"].is_object(), "{line}");
    }
    assert!(
        lines.iter().any(|l| l.contains("open-files limit")),
        "{lines:?}"
    );
}

#[test]
fn an_unknown_log_format_is_refused() {
    let out = manager_run(&[("PICLOUD_LOG_FORMAT", "yaml")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PICLOUD_LOG_FORMAT is \"yaml\": use \"text\" or \"json\""),
        "{stderr}"
    );
}
