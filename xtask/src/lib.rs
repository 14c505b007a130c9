//! Invariants of `docs/ARCHITECTURE.md` that a test can check, so that the
//! code map cannot drift from the code (after rust-analyzer's `tidy`).
//!
//! Each check returns the violations it found, as lines a person can act
//! on; `tests/tidy.rs` fails on any. Run them with `cargo test -p xtask`.
//!
//! - [`dependency_edges`]: which crate may depend on which (only the store
//!   links `sqlx`, only the bus `async-nats`, the sandbox knows nothing of
//!   NATS, Postgres or HTTP servers, gateways and executors never link the
//!   store, the test kit is a dev-dependency only);
//! - [`unsafe_code`]: every crate root forbids `unsafe`, except the two
//!   that need it (the sandbox's counting allocator, the supervisor's
//!   `pre_exec`), which deny it and allow it only where it is used;
//! - [`sqlx_outside_the_store`]: no crate but the store names `sqlx::` in
//!   its sources (the store's API hands out no sqlx type, so none needs to);
//! - [`unexplained_unwraps`]: no `.unwrap()` in shipped code without a
//!   comment saying why it cannot fail (`.expect("…")` carries its reason);
//! - [`long_files`]: no source file longer than [`MAX_FILE_LINES`].

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The longest a Rust source file may be, in lines. STYLE.md asks for files
/// that read in one sitting; the longest today is well under this.
pub const MAX_FILE_LINES: usize = 800;

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// One crate of the workspace, as `cargo metadata` describes it.
pub struct Package {
    pub name: String,
    pub dir: PathBuf,
    /// Normal and build dependencies (what ships).
    pub deps: Vec<String>,
    /// Dev-dependencies (tests, benches).
    pub dev_deps: Vec<String>,
    /// Root source files of the library, binaries and benches.
    pub roots: Vec<PathBuf>,
}

/// The workspace's crates, read from `cargo metadata`.
pub fn packages() -> Vec<Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let str_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    meta["packages"]
        .as_array()
        .expect("a package list")
        .iter()
        .map(|p| {
            let manifest = PathBuf::from(str_of(&p["manifest_path"]));
            let deps = p["dependencies"].as_array().cloned().unwrap_or_default();
            let of_kind = |dev: bool| {
                deps.iter()
                    .filter(|d| (d["kind"].as_str() == Some("dev")) == dev)
                    .map(|d| str_of(&d["name"]))
                    .collect()
            };
            let roots = p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|t| {
                    t["kind"].as_array().is_some_and(|k| {
                        k.iter().any(|k| {
                            matches!(k.as_str(), Some("lib" | "bin" | "rlib" | "proc-macro"))
                        })
                    })
                })
                .map(|t| PathBuf::from(str_of(&t["src_path"])))
                .collect();
            Package {
                name: str_of(&p["name"]),
                dir: manifest.parent().map(Path::to_path_buf).unwrap_or_default(),
                deps: of_kind(false),
                dev_deps: of_kind(true),
                roots,
            }
        })
        .collect()
}

/// A dependency rule: `who` may not depend on `on` (in what ships).
struct Forbidden {
    on: &'static str,
    /// Crates allowed to depend on it; every other crate is refused.
    only: &'static [&'static str],
    why: &'static str,
}

const ONLY_IN: &[Forbidden] = &[
    Forbidden {
        on: "sqlx",
        only: &["picloud-store", "picloud-testkit"],
        why: "only the store writes SQL (the test kit may create and drop test databases)",
    },
    Forbidden {
        on: "picloud-store",
        only: &["picloud-manager", "picloud"],
        why: "only the manager (and `picloud up`'s bootstrap) holds database credentials",
    },
    Forbidden {
        on: "async-nats",
        only: &["picloud-bus", "picloud-testkit", "picloud-bench"],
        why: "only the bus speaks NATS (the test kit and the bench's baselines excepted)",
    },
    Forbidden {
        on: "rhai",
        only: &["picloud-sandbox", "picloud-bench"],
        why: "only the sandbox runs Rhai (the bench's baseline pipe excepted)",
    },
    Forbidden {
        on: "picloud-sandbox",
        only: &["picloud-executor", "picloud-manager", "picloud"],
        why: "scripts are compiled by managers and run by executors; gateways never see them",
    },
];

/// What a crate must never depend on, whoever else may.
const NEVER: &[(&str, &[&str], &str)] = &[
    (
        "picloud-sandbox",
        &[
            "picloud-bus",
            "picloud-store",
            "picloud-http",
            "axum",
            "tokio",
            "async-nats",
            "sqlx",
        ],
        "the sandbox knows nothing of NATS, Postgres or HTTP servers, and runs on plain threads",
    ),
    (
        "picloud-core",
        &["async-nats", "sqlx", "axum", "reqwest", "tokio"],
        "the core crate is vocabulary: no network or database I/O",
    ),
    (
        "picloud-http",
        &["async-nats", "sqlx", "picloud-bus", "picloud-store"],
        "the HTTP plumbing knows no NATS and no SQL",
    ),
    (
        "picloud-metrics",
        &[
            "async-nats",
            "sqlx",
            "picloud-bus",
            "picloud-store",
            "picloud-sandbox",
        ],
        "metrics are instruments and probes: the roles read NATS and Postgres for them",
    ),
];

/// Dependency edges that break the code map's invariants.
pub fn dependency_edges(packages: &[Package]) -> Vec<String> {
    let mut bad = Vec::new();
    for p in packages {
        for rule in ONLY_IN {
            if p.deps.iter().any(|d| d == rule.on) && !rule.only.contains(&p.name.as_str()) {
                bad.push(format!("{} depends on {}: {}", p.name, rule.on, rule.why));
            }
        }
        for (who, never, why) in NEVER {
            if p.name == *who {
                for d in p.deps.iter().filter(|d| never.contains(&d.as_str())) {
                    bad.push(format!("{who} depends on {d}: {why}"));
                }
            }
        }
        if p.deps.iter().any(|d| d == "picloud-testkit") {
            bad.push(format!(
                "{} depends on picloud-testkit outside [dev-dependencies]: it must never ship",
                p.name
            ));
        }
    }
    bad
}

/// Crates that need `unsafe`, and the one file each where it may appear.
pub const UNSAFE_ALLOWED: &[(&str, &str)] = &[
    // A global allocator is an `unsafe impl`.
    ("picloud-sandbox", "src/memory.rs"),
    // `pre_exec` sets the parent-death signal between fork and exec.
    ("picloud-supervise", "src/lib.rs"),
];

/// Crate roots that do not forbid `unsafe` (or, where it is needed, deny it
/// outside the one allowed file).
pub fn unsafe_code(packages: &[Package]) -> Vec<String> {
    let mut bad = Vec::new();
    for p in packages {
        let allowed = UNSAFE_ALLOWED.iter().find(|(n, _)| *n == p.name);
        for root in &p.roots {
            let text = std::fs::read_to_string(root).unwrap_or_default();
            let attr = match allowed {
                None => "#![forbid(unsafe_code)]",
                Some(_) => "#![deny(unsafe_code)]",
            };
            if !text.contains(attr) {
                bad.push(format!("{}: the crate root lacks {attr}", root.display()));
            }
        }
        for file in rust_files(&p.dir.join("src")) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let here = allowed.is_some_and(|(_, f)| file.ends_with(f));
            let allows = text.lines().map(str::trim_start).any(|l| {
                (l.starts_with("#[allow(") || l.starts_with("#![allow("))
                    && l.contains("unsafe_code")
            });
            if !here && allows {
                bad.push(format!(
                    "{}: allows unsafe code; only {:?} may",
                    file.display(),
                    UNSAFE_ALLOWED
                ));
            }
        }
    }
    bad
}

/// Crates whose sources may name `sqlx::`: the store, which owns the SQL;
/// the test kit, which creates and drops test databases; the bench; and
/// this crate, whose rules spell the name.
pub const SQLX_ALLOWED: &[&str] = &["picloud-store", "picloud-testkit", "picloud-bench", "xtask"];

/// Lines of code under a crate's `src/` that name `sqlx::` outside the
/// crates of [`SQLX_ALLOWED`]. A dependency edge is not enough to catch
/// it: a crate reaches sqlx's types through the store's API, without
/// depending on sqlx, when the store hands one out. Tests (`tests/`) may.
pub fn sqlx_outside_the_store(packages: &[Package]) -> Vec<String> {
    let mut bad = Vec::new();
    for p in packages
        .iter()
        .filter(|p| !SQLX_ALLOWED.contains(&p.name.as_str()))
    {
        for file in rust_files(&p.dir.join("src")) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                if code.contains("sqlx::") {
                    bad.push(format!(
                        "{}:{}: names `sqlx::`: only the store speaks to Postgres; \
                         add what you need to picloud-store's API, in its own types",
                        file.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    bad
}

/// `.unwrap()` calls in shipped code (not tests, not the test kit, not the
/// bench) without a comment on the same or the previous line.
pub fn unexplained_unwraps(packages: &[Package]) -> Vec<String> {
    let shipped = |p: &&Package| {
        !matches!(
            p.name.as_str(),
            "picloud-testkit" | "picloud-bench" | "xtask"
        )
    };
    let mut bad = Vec::new();
    for p in packages.iter().filter(shipped) {
        for file in rust_files(&p.dir.join("src")) {
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut previous = "";
            for (i, line) in text.lines().enumerate() {
                let trimmed = line.trim_start();
                // Unit tests sit at the end of a file, behind this attribute.
                if trimmed.starts_with("#[cfg(test)]") {
                    break;
                }
                let code = line.split("//").next().unwrap_or_default();
                let explained = line.contains("//") || previous.trim_start().starts_with("//");
                if code.contains(".unwrap()") && !explained {
                    bad.push(format!(
                        "{}:{}: `.unwrap()` without a comment saying why it cannot fail \
                         (or use `.expect(\"why\")`, or handle the error)",
                        file.display(),
                        i + 1
                    ));
                }
                previous = line;
            }
        }
    }
    bad
}

/// Source files longer than [`MAX_FILE_LINES`].
pub fn long_files(packages: &[Package]) -> Vec<String> {
    let mut bad = Vec::new();
    for p in packages {
        for file in rust_files(&p.dir) {
            let lines = std::fs::read_to_string(&file)
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if lines > MAX_FILE_LINES {
                bad.push(format!(
                    "{}: {lines} lines, over {MAX_FILE_LINES}: split it by what its parts do",
                    file.display()
                ));
            }
        }
    }
    bad
}

/// Every `.rs` file below `dir`, skipping build output.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                if !matches!(
                    path.file_name().and_then(|n| n.to_str()),
                    Some("target" | "node_modules" | ".git")
                ) {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
