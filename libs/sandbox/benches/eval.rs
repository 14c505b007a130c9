//! Sandbox costs per invocation: eval of a cached AST (hello world and a
//! 100-line script), with the fresh scope every invocation gets, and the
//! per-invocation setup alone. `cargo bench -p picloud-sandbox`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use picloud_core::{EventInput, HttpRequestInput, Limits, Uuid};
use picloud_sandbox::{ModuleSet, NoHost, RunInput, Sandbox};

fn event() -> EventInput {
    EventInput::http(Uuid::nil())
}

/// A 100-line script of the kind users write: parse, branch, loop, build.
fn hundred_lines() -> String {
    let mut s = String::from("// a hundred lines\nlet total = 0;\nlet items = [];\n");
    for i in 0..48 {
        s.push_str(&format!("let v{i} = {i} * 2 + 1;\n"));
        s.push_str(&format!(
            "if v{i} % 3 == 0 {{ total += v{i}; }} else {{ items.push(v{i}); }}\n"
        ));
    }
    s.push_str("#{ total: total, count: items.len() }\n");
    s
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let ev = event();
    let req = HttpRequestInput {
        method: "GET".into(),
        path: "/".into(),
        ..Default::default()
    };
    let far = || Instant::now() + Duration::from_secs(60);
    let input = |inputs| RunInput {
        inputs,
        script: "test",
        event: &ev,
        request: Some(&req),
        modules: ModuleSet::default(),
        host: Arc::new(NoHost),
        started: Instant::now(),
    };
    let mut sb = Sandbox::new();

    let hello = sb.compile(r#""Hello, world!""#, &limits).unwrap();
    c.bench_function("eval hello world (cached AST, fresh scope)", |b| {
        b.iter(|| sb.run(&hello, &limits, far(), input(picloud_sandbox::Inputs::ALL)))
    });

    // The same, as the executor runs it: the script names neither `event`
    // nor `request`, so neither is built.
    let inferred = picloud_sandbox::Inputs::of(r#""Hello, world!""#, 0);
    c.bench_function("eval hello world (inputs it cannot read left out)", |b| {
        b.iter(|| sb.run(&hello, &limits, far(), input(inferred)))
    });

    let source = hundred_lines();
    assert_eq!(source.lines().count(), 100);
    let big = sb.compile(&source, &limits).unwrap();
    c.bench_function("eval 100-line script (cached AST, fresh scope)", |b| {
        b.iter(|| sb.run(&big, &limits, far(), input(picloud_sandbox::Inputs::ALL)))
    });

    // The per-invocation setup: limits applied, log and deadline reset,
    // scope with `event` and `request` built, result mapped.
    let unit = sb.compile("()", &limits).unwrap();
    c.bench_function("per-invocation setup (run of an empty script)", |b| {
        b.iter(|| sb.run(&unit, &limits, far(), input(picloud_sandbox::Inputs::ALL)))
    });

    c.bench_function("compile hello world", |b| {
        b.iter(|| sb.compile(r#""Hello, world!""#, &limits).unwrap())
    });
    c.bench_function("engine construction (once per worker thread)", |b| {
        b.iter(Sandbox::new)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
