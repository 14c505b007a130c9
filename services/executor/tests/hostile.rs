//! The hostile corpus: every script in `tests/hostile/` must end with the
//! error its header names, within its limit plus a margin, while a
//! well-behaved script on the same pool still answers promptly.
//!
//! Header lines:
//! - `// expect: KIND: TEXT`: KIND is `limit_exceeded` (TEXT is in the
//!   public message), `script_error` (TEXT is in the operator's detail) or
//!   `compile_error` (TEXT is in the compile error);
//! - `// limits: {...}`: overrides, as in a deploy body;
//! - `// expect-log: TEXT`: TEXT is in the captured log;
//! - `// module NAME: SOURCE`: a shared module the script may import
//!   (pinned at version 1).

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use picloud_core::{EventInput, LimitOverrides, Limits, Outcome, Uuid};
use picloud_executor::pool::Pool;
use picloud_sandbox::{AST, ModuleSet, RunInput, RunResult, Sandbox};

// The executor binary counts allocations per thread; so does this test, so
// that the memory limit applies to the corpus as it does in production.
#[global_allocator]
static ALLOC: picloud_sandbox::memory::CountingAlloc = picloud_sandbox::memory::CountingAlloc;

/// How far past its own limit a hostile script may run before it is ended.
const MARGIN: Duration = Duration::from_millis(1500);
/// How long a well-behaved script may take while a hostile one runs.
const PROMPT: Duration = Duration::from_secs(2);

struct Case {
    name: String,
    source: String,
    kind: String,
    text: String,
    log: Option<String>,
    limits: Limits,
    modules: ModuleSet,
}

fn base_limits() -> Limits {
    // Smaller than the defaults so that debug builds reach each limit
    // quickly; the defaults are exercised by the end-to-end tests. The wall
    // time is long: a case meant to end by another limit must not meet the
    // clock first on a loaded machine (the cases about the clock set their
    // own).
    Limits {
        max_operations: 3_000_000,
        wall_time_ms: 60_000,
        max_array_len: 10_000,
        max_map_len: 10_000,
        ..Limits::default()
    }
}

fn load(path: &Path) -> Case {
    let source = std::fs::read_to_string(path).unwrap();
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let mut kind = String::new();
    let mut text = String::new();
    let mut log = None;
    let mut overrides = LimitOverrides::default();
    let mut modules = ModuleSet::default();
    for line in source.lines().take_while(|l| l.starts_with("//")) {
        if let Some(rest) = line.strip_prefix("// expect: ") {
            let (k, t) = rest.split_once(": ").expect("expect: KIND: TEXT");
            // Every message contains "": an empty TEXT would check nothing.
            assert!(!t.trim().is_empty(), "{name}: the expect line has no TEXT");
            kind = k.to_owned();
            text = t.to_owned();
        } else if let Some(rest) = line.strip_prefix("// expect-log: ") {
            log = Some(rest.to_owned());
        } else if let Some(rest) = line.strip_prefix("// module ") {
            let (name, source) = rest.split_once(": ").expect("module NAME: SOURCE");
            modules.pinned.insert(name.to_owned(), 1);
            modules.sources.insert(name.to_owned(), source.to_owned());
        } else if let Some(rest) = line.strip_prefix("// limits: ") {
            overrides = serde_json::from_str(rest).expect("limits JSON");
        }
    }
    assert!(!kind.is_empty(), "{name}: no expect line");
    let limits = base_limits().resolve(&overrides, &Limits::default_maxima());
    Case {
        name,
        source,
        kind,
        text,
        log,
        limits,
        modules,
    }
}

fn event() -> EventInput {
    EventInput::http(Uuid::nil())
}

fn compile(pool: &Pool, source: String, limits: Limits) -> Result<Arc<AST>, String> {
    let (tx, rx) = mpsc::channel();
    pool.try_submit(Box::new(move |sb: &mut Sandbox| {
        let _ = tx.send(
            sb.compile(&source, &limits)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
        );
    }))
    .unwrap();
    rx.recv_timeout(Duration::from_secs(60))
        .expect("compile answers")
}

fn run(
    pool: &Pool,
    ast: Arc<AST>,
    limits: Limits,
    modules: ModuleSet,
) -> mpsc::Receiver<(RunResult, Duration)> {
    let (tx, rx) = mpsc::channel();
    pool.try_submit(Box::new(move |sb: &mut Sandbox| {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        let r = sb.run(
            &ast,
            &limits,
            deadline,
            RunInput {
                inputs: picloud_sandbox::Inputs::ALL,
                script: "test",
                event: &event(),
                request: None,
                modules,
                host: std::sync::Arc::new(picloud_sandbox::NoHost),
                started: Instant::now(),
            },
        );
        let _ = tx.send((r, started.elapsed()));
    }))
    .unwrap();
    rx
}

fn check(case: &Case, pool: &Pool, hello: &Arc<AST>) -> Result<(), String> {
    let ast = match compile(pool, case.source.clone(), case.limits.clone()) {
        Err(e) if rust_type_name(&e).is_some() => {
            return Err(format!("a Rust type name in the compile error {e:?}"));
        }
        Err(e) if case.kind == "compile_error" && e.contains(&case.text) => return Ok(()),
        Err(e) => return Err(format!("unexpected compile error: {e}")),
        Ok(_) if case.kind == "compile_error" => return Err("compiled, but should not".into()),
        Ok(ast) => ast,
    };
    let hostile = run(pool, ast, case.limits.clone(), case.modules.clone());
    // While it runs, a well-behaved script on the same pool answers.
    std::thread::sleep(Duration::from_millis(20));
    let asked = Instant::now();
    let (good, _) = run(pool, hello.clone(), Limits::default(), ModuleSet::default())
        .recv_timeout(PROMPT)
        .map_err(|_| format!("a well-behaved script waited over {PROMPT:?}"))?;
    if !matches!(good.outcome, Outcome::Response(_)) || asked.elapsed() > PROMPT {
        return Err(format!("well-behaved script: {:?}", good.outcome));
    }
    let wall = Duration::from_millis(case.limits.wall_time_ms);
    let (r, took) = hostile
        .recv_timeout(wall + Duration::from_secs(30))
        .map_err(|_| "the hostile script never ended".to_string())?;
    if took > wall + MARGIN {
        return Err(format!("ran {took:?}, limit {wall:?}"));
    }
    let detail = r.error.clone().unwrap_or_default();
    let public = format!("{:?}", r.outcome);
    for text in [&detail, &public] {
        if let Some(name) = rust_type_name(text) {
            return Err(format!("a Rust type name ({name}) in {text:?}"));
        }
    }
    let ok = match (&r.outcome, case.kind.as_str()) {
        (Outcome::LimitExceeded { message }, "limit_exceeded") => message.contains(&case.text),
        (Outcome::ScriptError { .. }, "script_error") => {
            detail.to_lowercase().contains(&case.text.to_lowercase())
        }
        _ => false,
    };
    if !ok {
        return Err(format!("got {:?} / {detail:?}", r.outcome));
    }
    if let Some(want) = &case.log
        && !r.log.contains(want.as_str())
    {
        return Err(format!("log lacks {want:?}"));
    }
    Ok(())
}

/// A Rust type or path in a message meant for a script's author: what the
/// engine's own names look like when a type has no script name.
fn rust_type_name(text: &str) -> Option<&'static str> {
    const RUST: &[&str] = &[
        "i64",
        "i32",
        "u64",
        "f64",
        "f32",
        "usize",
        "alloc::",
        "core::",
        "std::",
        "rhai::",
        "picloud_",
        "ImmutableString",
        "Box<",
        "Vec<",
        "Option<",
        "Dynamic",
    ];
    RUST.iter().copied().find(|name| text.contains(name))
}

#[test]
fn hostile_scripts_end_with_the_right_error_and_others_go_on() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 30, "the corpus has {} scripts", paths.len());

    let pool = Pool::start(2, 8, Default::default()).unwrap();
    let hello = compile(&pool, r#""ok""#.into(), Limits::default()).unwrap();
    let mut failures = Vec::new();
    for path in &paths {
        let case = load(path);
        if let Err(e) = check(&case, &pool, &hello) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
