//! The real binary's configuration (issue #18): every setting is a flag
//! with its variable and default in `--help`, the same list as
//! docs/operations.md's table; flag > variable > file > default; secrets are
//! never flags and never printed.

use std::collections::BTreeSet;
use std::process::{Command, Output};

const ROLES: [&str; 4] = ["up", "manager", "gateway", "executor"];

/// `picloud args…` in a clean environment plus `env`.
fn picloud(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_picloud"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("picloud runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Every `PICLOUD_*` name in `text`.
fn variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("PICLOUD_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        found.insert(name.trim_end_matches('_').to_owned());
    }
    found
}

/// The variables of docs/operations.md's "Configuration" tables (each
/// row's first cell).
fn documented() -> BTreeSet<String> {
    let doc = include_str!("../../../docs/operations.md");
    let section = doc
        .split("\n## Configuration\n")
        .nth(1)
        .expect("docs/operations.md has a Configuration section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| `PICLOUD_"))
        .flat_map(|l| variables(l.split(" | ").next().unwrap_or_default()))
        .collect()
}

#[test]
fn help_lists_every_variable_of_the_operations_table_and_no_other() {
    let documented = documented();
    assert!(documented.len() > 40, "{documented:?}");
    for role in ROLES {
        let out = picloud(&[role, "--help"], &[]);
        assert!(out.status.success(), "{role}: {out:?}");
        let help = stdout(&out);
        let shown = variables(&help);
        assert_eq!(
            shown.difference(&documented).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "in `picloud {role} --help` but not in docs/operations.md's table"
        );
        assert_eq!(
            documented.difference(&shown).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "in docs/operations.md's table but not in `picloud {role} --help`"
        );
        // The defaults shown are the real ones.
        for default in [
            "[default: 127.0.0.1:8080]",
            "[default: 80,443]",
            "[default: 256]",
        ] {
            assert!(help.contains(default), "{role}: {default} not in {help}");
        }
    }
}

#[test]
fn secrets_are_never_printed_nor_taken_as_flags() {
    let env = [
        ("PICLOUD_ADMIN_TOKEN", "s3cr3t-admin"),
        ("PICLOUD_DATABASE_URL", "postgres://u:s3cr3t-pg@db/x"),
        ("PICLOUD_NATS_URL", "nats://u:s3cr3t-nats@bus:4222"),
        ("PICLOUD_SECRETS_KEY", "s3cr3t-key"),
        ("PICLOUD_NATS_USER", "picloud-gateway"),
        ("PICLOUD_NATS_PASSWORD", "s3cr3t-natspw"),
        ("PICLOUD_METRICS_TOKEN", "s3cr3t-metrics"),
    ];
    for args in [
        &["up", "--help"][..],
        &["gateway", "-h"],
        &["up", "--check-config"],
    ] {
        let out = picloud(args, &env);
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert!(
            !text.contains("s3cr3t"),
            "{args:?} printed a secret: {text}"
        );
    }
    let shown = stdout(&picloud(&["up", "--check-config"], &env));
    assert!(
        shown.contains("admin_token: Some(\n        [redacted]"),
        "{shown}"
    );
    assert!(shown.contains("\"picloud-gateway\""), "{shown}");

    for flag in [
        "--admin-token",
        "--secrets-key",
        "--database-url",
        "--nats-url",
        "--nats-password",
        "--nats-token",
        "--metrics-token",
    ] {
        let out = picloud(&["up", flag, "x", "--check-config"], &[]);
        assert_eq!(out.status.code(), Some(2), "{flag} taken: {out:?}");
    }
}

#[test]
fn flag_beats_variable_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("picloud.toml");
    std::fs::write(
        &file,
        "prefix = \"fromfile\"\nworkers = 3\nqueue_depth = 7\nmax_attempts = 9\n\
         admin_token = \"file-token\"\n[nats]\nreplicas = 2\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let env = [
        ("PICLOUD_CONFIG", file),
        ("PICLOUD_WORKERS", "4"),
        ("PICLOUD_QUEUE_DEPTH", "8"),
        ("PICLOUD_ADMIN_TOKEN", "env-token"),
        // Empty is unset: the file's value stays.
        ("PICLOUD_MAX_ATTEMPTS", ""),
    ];
    let out = picloud(&["executor", "--queue-depth", "11", "--check-config"], &env);
    assert!(out.status.success(), "{out:?}");
    let shown = stdout(&out);
    for line in [
        "prefix: \"fromfile\",",
        "workers: 4,",
        "queue_depth: 11,",
        "max_attempts: 9,",
        "retry_base_ms: 1000,",
        "replicas: Some(\n            2,",
    ] {
        assert!(shown.contains(line), "{line:?} not in {shown}");
    }
    assert!(!shown.contains("env-token") && !shown.contains("file-token"));

    // `--config` names the file too, and wins over PICLOUD_CONFIG.
    let out = picloud(
        &["gateway", "--config", file, "--check-config"],
        &[("PICLOUD_CONFIG", "/nonexistent.toml")],
    );
    assert!(stdout(&out).contains("prefix: \"fromfile\","), "{out:?}");

    // A bad value names where it came from.
    let out = picloud(
        &["manager", "--check-config"],
        &[("PICLOUD_LISTEN", "nope")],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid PICLOUD_LISTEN"), "{stderr}");
    let out = picloud(&["manager", "--listen", "nope", "--check-config"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid --listen"), "{stderr}");
}
