use std::time::{Duration, Instant};

use picloud_core::{EventInput, HttpRequestInput, Limits, Outcome};

use super::*;
use picloud_core::ScriptResponse;

fn event() -> EventInput {
    EventInput::http(uuid_nil())
}

fn uuid_nil() -> picloud_core::Uuid {
    picloud_core::Uuid::nil()
}

fn run_with(source: &str, limits: &Limits, request: Option<&HttpRequestInput>) -> RunResult {
    run_on(source, limits, request, &event())
}

fn run_on(
    source: &str,
    limits: &Limits,
    request: Option<&HttpRequestInput>,
    event: &EventInput,
) -> RunResult {
    let mut sb = Sandbox::new();
    let ast = sb.compile(source, limits).expect("compiles");
    sb.run(
        &ast,
        limits,
        Instant::now() + Duration::from_secs(30),
        RunInput {
            // As the executor does: every test script also checks the rule.
            inputs: Inputs::of(source, 0),
            script: "test",
            event,
            request,
            modules: ModuleSet::default(),
            host: std::sync::Arc::new(NoHost),
            started: Instant::now(),
        },
    )
}

fn run(source: &str) -> RunResult {
    run_with(source, &Limits::default(), None)
}

fn response(r: &RunResult) -> &ScriptResponse {
    match &r.outcome {
        Outcome::Response(resp) => resp,
        other => panic!("expected a response, got {other:?} ({:?})", r.error),
    }
}

fn header<'a>(r: &'a ScriptResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn string_is_text() {
    let r = run(r#""hello""#);
    let resp = response(&r);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "hello");
    assert_eq!(header(resp, "content-type"), Some(response::TEXT));
}

#[test]
fn map_and_array_are_json() {
    let r = run(r#"#{ a: 1, b: [true, "x"] }"#);
    let resp = response(&r);
    assert_eq!(resp.body, r#"{"a":1,"b":[true,"x"]}"#);
    assert_eq!(header(resp, "content-type"), Some(response::JSON));
    let r = run("[1, 2]");
    assert_eq!(response(&r).body, "[1,2]");
}

#[test]
fn unit_is_no_content() {
    let r = run("let x = 1;");
    let resp = response(&r);
    assert_eq!(resp.status, 204);
    assert_eq!(resp.body, "");
    assert!(resp.headers.is_empty());
}

#[test]
fn response_function_gives_full_control() {
    let r = run(r#"response(201, #{ id: 7 }, #{ "X-Thing": "yes" })"#);
    let resp = response(&r);
    assert_eq!(resp.status, 201);
    assert_eq!(resp.body, r#"{"id":7}"#);
    assert_eq!(header(resp, "x-thing"), Some("yes"));
    assert_eq!(header(resp, "content-type"), Some(response::JSON));

    let r = run(r#"response(404, "<b>no</b>", #{ "content-type": "text/html" })"#);
    let resp = response(&r);
    assert_eq!(resp.status, 404);
    assert_eq!(header(resp, "content-type"), Some("text/html"));
    assert_eq!(resp.headers.len(), 1);
}

#[test]
fn bad_responses_are_script_errors() {
    for src in [
        "response(99, \"x\")",
        "response(700, \"x\")",
        r#"response(200, "x", #{ "bad name": "v" })"#,
        r#"response(200, "x", #{ "x": "a\nb" })"#,
        "|| 1",
    ] {
        let r = run(src);
        assert!(
            matches!(r.outcome, Outcome::ScriptError { .. }),
            "{src}: {:?}",
            r.outcome
        );
        assert!(r.error.is_some());
    }
}

#[test]
fn request_and_event_are_in_scope() {
    let mut req = HttpRequestInput {
        method: "POST".into(),
        path: "/a/b".into(),
        body: r#"{"n": 41}"#.into(),
        ..Default::default()
    };
    req.query.insert("q".into(), "1".into());
    req.headers.insert("x-h".into(), "v".into());
    let r = run_with(
        r#"#{ m: request.method, p: request.path, n: request.json.n + 1, q: request.query.q, h: request.headers["x-h"], k: event.kind, a: event.attempt }"#,
        &Limits::default(),
        Some(&req),
    );
    assert_eq!(
        response(&r).body,
        r#"{"a":1,"h":"v","k":"http","m":"POST","n":42,"p":"/a/b","q":"1"}"#
    );
}

#[test]
fn compile_error_has_position() {
    let mut sb = Sandbox::new();
    let err = sb
        .compile("let x = 1;\nlet y = ;", &Limits::default())
        .unwrap_err();
    assert_eq!(err.line, 2);
    assert_eq!(err.column, 9);
}

#[test]
fn thrown_errors_are_redacted_for_the_caller() {
    let r = run(r#"throw "db password is hunter2""#);
    match &r.outcome {
        Outcome::ScriptError { message } => assert!(!message.contains("hunter2")),
        other => panic!("{other:?}"),
    }
    assert!(r.error.as_deref().unwrap().contains("hunter2"));
}

#[test]
fn log_is_captured_and_capped() {
    let r = run(r#"log("one"); print("two"); debug("three"); "ok""#);
    assert_eq!(r.log, "one\ntwo\n\"three\"\n");
    let lines: Vec<_> = log_lines(&r.log, &r.lines)
        .map(|(m, text)| (m.level, text))
        .collect();
    assert_eq!(
        lines,
        [
            (LogLevel::Info, "one"),
            (LogLevel::Info, "two"),
            (LogLevel::Debug, "\"three\"")
        ]
    );
    assert!(r.lines.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    let limits = Limits {
        max_log_bytes: 10,
        ..Limits::default()
    };
    let r = run_with(r#"for i in 0..100 { log("abcdef") } "ok""#, &limits, None);
    assert!(r.log.starts_with("abcdef\nabc"), "{}", r.log);
    assert!(r.log.ends_with("[log truncated]"));
    let texts: Vec<_> = log_lines(&r.log, &r.lines).map(|(_, t)| t).collect();
    assert_eq!(texts, ["abcdef", "abc\n[log truncated]"]);
}

#[test]
fn eval_is_disabled() {
    let mut sb = Sandbox::new();
    assert!(sb.compile(r#"eval("1")"#, &Limits::default()).is_err());
}

#[test]
fn limits_name_themselves() {
    let ops = Limits {
        max_operations: 1_000,
        ..Limits::default()
    };
    let r = run_with("loop {}", &ops, None);
    assert_eq!(
        r.outcome,
        Outcome::LimitExceeded {
            message: "operation limit exceeded".into()
        }
    );

    let wall = Limits {
        wall_time_ms: 100,
        max_operations: u64::MAX,
        ..Limits::default()
    };
    let started = Instant::now();
    let r = run_with("loop {}", &wall, None);
    assert_eq!(
        r.outcome,
        Outcome::LimitExceeded {
            message: "wall time limit of 100ms exceeded".into()
        }
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    let r = run("fn f(n) { f(n + 1) } f(0)");
    assert_eq!(
        r.outcome,
        Outcome::LimitExceeded {
            message: "call depth limit exceeded".into()
        }
    );

    let small = Limits {
        max_response_bytes: 4,
        ..Limits::default()
    };
    let r = run_with(r#""hello""#, &small, None);
    assert_eq!(
        r.outcome,
        Outcome::LimitExceeded {
            message: "response size limit of 4 bytes exceeded".into()
        }
    );
}

/// Runs `f` on a thread with the executor workers' stack size.
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deeply_nested_values_built_in_a_loop_do_not_overflow() {
    let r = on_worker_stack(|| {
        run_with(
            "let a = []; for i in 0..1000000 { a = [a]; } a",
            &Limits {
                max_operations: u64::MAX,
                ..Limits::default()
            },
            None,
        )
    });
    assert!(
        matches!(
            r.outcome,
            Outcome::LimitExceeded { .. } | Outcome::ScriptError { .. }
        ),
        "{:?}",
        r.outcome
    );
}

#[test]
fn scheduled_at_is_utc_with_z() {
    let mut cron = event();
    cron.scheduled_at = Some("2026-11-27T15:55:00.5+01:00".parse().unwrap());
    let r = run_on("event.scheduled_at", &Limits::default(), None, &cron);
    assert_eq!(response(&r).body, "2026-11-27T14:55:00.500Z");
}

#[test]
fn host_api() {
    let r = run(r#"
        let v = json::parse(`{"a": [1, 2, {"b": null}]}`);
        let id = uuid();
        let t = now();
        #{ back: json::stringify(v), a1: v.a[1], idlen: id.len(), tz: t.ends_with("Z"), ms: now_ms() > 1700000000000 }
    "#);
    assert_eq!(
        response(&r).body,
        r#"{"a1":2,"back":"{\"a\":[1,2,{\"b\":null}]}","idlen":36,"ms":true,"tz":true}"#
    );
    let r = run(
        r#"let out = ""; try { json::parse("{nope"); } catch (e) { out = "caught: " + e; } out"#,
    );
    assert!(
        response(&r)
            .body
            .starts_with("caught: json::parse: invalid JSON"),
        "{}",
        response(&r).body
    );
}

#[test]
fn results_nested_too_deep_are_refused_not_overflowed() {
    // Building 5,000 levels copies O(n²) elements: slow in a debug build on
    // a loaded machine, so the clock is not what this test is about.
    let patient = Limits {
        wall_time_ms: 60_000,
        ..Limits::default()
    };
    let r = on_worker_stack(move || {
        run_with(
            "let a = []; for i in 0..5000 { a = [a]; } a",
            &patient,
            None,
        )
    });
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("nested deeper than 128"),
        "{:?}",
        r.error
    );
    let patient = Limits {
        wall_time_ms: 60_000,
        ..Limits::default()
    };
    let r = on_worker_stack(move || {
        run_with(
            "let a = #{}; for i in 0..5000 { a = #{ a: a }; } json::stringify(a)",
            &patient,
            None,
        )
    });
    assert!(
        matches!(r.outcome, Outcome::ScriptError { .. }),
        "{:?}",
        r.outcome
    );
}

/// The deepest nesting the maxima allow, all at once: a function whose body
/// nests expressions to the function-expression maximum, recursing to the
/// call-depth maximum, called from an expression nested to the global
/// maximum. It must run on a worker-sized stack (this test runs in the
/// debug profile, whose frames are the largest).
#[test]
fn the_deepest_nesting_the_maxima_allow_fits_the_worker_stack() {
    let max = Limits::default_maxima();
    let limits = Limits {
        max_call_depth: max.max_call_depth,
        max_expr_depth: max.max_expr_depth,
        max_function_expr_depth: max.max_function_expr_depth,
        max_operations: u64::MAX,
        wall_time_ms: 60_000,
        ..Limits::default()
    };
    let calls = max.max_call_depth - 2;
    let program = move |fn_nest: usize, global_nest: usize| {
        format!(
            "fn f(n) {{ if n <= 0 {{ 0 }} else {{ f({}n{} - 1) + 1 }} }}\n{}f({}){}",
            "(".repeat(fn_nest),
            ")".repeat(fn_nest),
            "(".repeat(global_nest),
            calls,
            ")".repeat(global_nest),
        )
    };
    // The deepest nesting the compiler accepts under the maxima, found by
    // stepping down from the maxima themselves.
    let lim = limits.clone();
    let maxima = max.clone();
    let source = on_worker_stack(move || {
        let max = maxima;
        let mut sb = Sandbox::new();
        let fn_nest = (0..=max.max_function_expr_depth)
            .rev()
            .find(|&d| sb.compile(&program(d, 0), &lim).is_ok())
            .expect("some function nesting compiles");
        let global_nest = (0..=max.max_expr_depth)
            .rev()
            .find(|&d| sb.compile(&program(fn_nest, d), &lim).is_ok())
            .expect("some global nesting compiles");
        assert!(fn_nest > max.max_function_expr_depth / 4, "{fn_nest}");
        assert!(global_nest > max.max_expr_depth / 4, "{global_nest}");
        program(fn_nest, global_nest)
    });
    let r = on_worker_stack(move || run_with(&source, &limits, None));
    assert_eq!(response(&r).body, (max.max_call_depth - 2).to_string());

    // One level more than allowed is a clean limit error, not a crash.
    let over = Limits {
        max_call_depth: max.max_call_depth,
        ..Limits::default()
    };
    let r = on_worker_stack(move || {
        run_with(
            "fn f(n) { if n <= 0 { 0 } else { f(n - 1) + 1 } } f(1000)",
            &over,
            None,
        )
    });
    assert_eq!(
        r.outcome,
        Outcome::LimitExceeded {
            message: "call depth limit exceeded".into()
        }
    );
}

fn module_set(mods: &[(&str, u32, &str)]) -> ModuleSet {
    ModuleSet {
        pinned: mods.iter().map(|(n, v, _)| (n.to_string(), *v)).collect(),
        sources: mods
            .iter()
            .map(|(n, _, s)| (n.to_string(), s.to_string()))
            .collect(),
    }
}

/// Compiles and runs `source` on `sb` with everything an invocation brings.
fn run_full(
    sb: &mut Sandbox,
    source: &str,
    limits: &Limits,
    modules: ModuleSet,
    host: std::sync::Arc<dyn Host>,
) -> RunResult {
    let ast = sb.compile(source, limits).expect("compiles");
    let deadline = Instant::now() + Duration::from_secs(30);
    let input = RunInput {
        inputs: crate::Inputs::ALL,
        script: "test",
        event: &event(),
        request: None,
        modules,
        host,
        started: Instant::now(),
    };
    sb.run(&ast, limits, deadline, input)
}

fn run_mods(source: &str, set: ModuleSet) -> RunResult {
    run_full(
        &mut Sandbox::new(),
        source,
        &Limits::default(),
        set,
        std::sync::Arc::new(NoHost),
    )
}

#[test]
fn imports_are_listed_without_running_anything() {
    let mut sb = Sandbox::new();
    let names = sb
        .imports(
            r#"import "a" as x; import "b" as y; import "a" as z; throw "never runs";"#,
            &Limits::default(),
        )
        .unwrap();
    assert_eq!(names, ["a", "b"]);
    let err = sb
        .imports("import \"a\" as ;", &Limits::default())
        .unwrap_err();
    assert_eq!(err.line, 1);
}

#[test]
fn pinned_modules_resolve_and_nest() {
    let set = module_set(&[
        (
            "greet",
            3,
            r#"import "punct" as p; fn hi(x) { `hi ${x}${p::MARK}` }"#,
        ),
        ("punct", 1, r#"export const MARK = "!";"#),
    ]);
    let r = run_mods(r#"import "greet" as g; g::hi("ann")"#, set);
    assert_eq!(response(&r).body, "hi ann!");
}

#[test]
fn unpinned_and_cyclic_imports_fail_cleanly() {
    let r = run_mods(r#"import "nope" as n; 1"#, ModuleSet::default());
    assert!(matches!(r.outcome, Outcome::ScriptError { .. }));
    assert!(r.error.unwrap().contains("Module not found"));

    let set = module_set(&[
        ("a", 1, r#"import "b" as b; fn f() { 1 }"#),
        ("b", 1, r#"import "a" as a; fn g() { 2 }"#),
    ]);
    let r = run_mods(r#"import "a" as a; a::f()"#, set);
    assert!(r.error.unwrap().contains("import cycle"), "cycle detected");

    let set = module_set(&[("bad", 1, r#"throw "module secret";"#)]);
    let r = run_mods(r#"import "bad" as b; 1"#, set);
    match r.outcome {
        Outcome::ScriptError { message } => assert!(!message.contains("secret")),
        other => panic!("{other:?}"),
    }
}

struct OneSecret;

impl Host for OneSecret {
    fn secret(&self, name: &str, _: Instant) -> Result<Option<String>, HostError> {
        Ok((name == "api_key").then(|| "s3cr3t-v4lue".to_owned()))
    }
}

#[test]
fn secrets_are_masked_in_log_and_errors_but_not_in_the_response() {
    let mut sb = Sandbox::new();
    let limits = Limits::default();
    let run_secret = |sb: &mut Sandbox, src: &str| {
        run_full(
            sb,
            src,
            &limits,
            ModuleSet::default(),
            std::sync::Arc::new(OneSecret),
        )
    };
    let r = run_secret(
        &mut sb,
        r#"let k = secret("api_key"); log(k); print(`key=${k}`); debug(k); throw `failed with ${k}`;"#,
    );
    assert_eq!(r.log, "***\nkey=***\n\"***\"\n");
    let texts: Vec<_> = log_lines(&r.log, &r.lines).map(|(_, t)| t).collect();
    assert_eq!(texts, ["***", "key=***", "\"***\""]);
    let err = r.error.unwrap();
    assert!(
        err.contains("failed with ***") && !err.contains("s3cr3t"),
        "{err}"
    );

    // A line written before the secret was fetched is masked at the end,
    // and every line still ends where it should.
    let r = run_secret(
        &mut sb,
        r#"log("x s3cr3t-v4lue y"); log("b"); let k = secret("api_key"); "ok""#,
    );
    let texts: Vec<_> = log_lines(&r.log, &r.lines).map(|(_, t)| t).collect();
    assert_eq!(texts, ["x *** y", "b"]);

    let r = run_secret(&mut sb, r#"secret("api_key")"#);
    assert_eq!(response(&r).body, "s3cr3t-v4lue");

    let r = run_secret(&mut sb, r#"secret("missing")"#);
    assert!(r.error.unwrap().contains("no secret named \"missing\""));
    // Without a host, secret() is a clean error.
    let r = run(r#"secret("api_key")"#);
    assert!(r.error.unwrap().contains("secrets are not available"));
}

/// A host whose HTTP answers describe the call it got; "deny" in the URL
/// fails like a policy denial.
struct EchoHttp;

impl Host for EchoHttp {
    fn secret(&self, _: &str, _: Instant) -> Result<Option<String>, HostError> {
        Ok(None)
    }

    fn http(&self, call: HttpCall, limits: &Limits, _: Instant) -> Result<HttpReply, HostError> {
        if call.url.contains("deny") {
            return Err(HostError::Failed(
                "request denied by policy: private".into(),
            ));
        }
        let body = serde_json::json!({
            "method": call.method,
            "url": call.url,
            "headers": call.headers,
            "query": call.query,
            "body": match call.body {
                None => serde_json::Value::Null,
                Some(HttpBody::Text(t)) => serde_json::Value::String(t),
                Some(HttpBody::Json(j)) => j,
            },
            "timeout": call.timeout.map(|t| t.as_millis() as u64),
            "max": limits.max_http_response_bytes,
        });
        Ok(HttpReply {
            status: 201,
            headers: vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
            body: body.to_string().into_bytes(),
            truncated: false,
        })
    }
}

fn run_http(source: &str, limits: &Limits) -> RunResult {
    run_full(
        &mut Sandbox::new(),
        source,
        limits,
        ModuleSet::default(),
        std::sync::Arc::new(EchoHttp),
    )
}

#[test]
fn http_calls_build_requests_and_read_replies() {
    let r = run_http(
        r#"let r = http::post("https://api.example/x", #{ n: 1 }, #{ headers: #{ "x-k": "v" }, query: #{ q: "1" }, timeout: 250 });
           #{ status: r.status, h: r.headers["x-a"], sent: r.json, text: type_of(r.body), t: r.truncated }"#,
        &Limits::default(),
    );
    let v: serde_json::Value = serde_json::from_str(&response(&r).body).unwrap();
    assert_eq!(v["status"], 201);
    assert_eq!(v["h"], "1, 2");
    assert_eq!(v["text"], "string");
    assert_eq!(v["t"], false);
    assert_eq!(v["sent"]["method"], "POST");
    assert_eq!(v["sent"]["body"], serde_json::json!({ "n": 1 }));
    assert_eq!(v["sent"]["headers"], serde_json::json!([["x-k", "v"]]));
    assert_eq!(v["sent"]["query"], serde_json::json!([["q", "1"]]));
    assert_eq!(v["sent"]["timeout"], 250);

    let r = run_http(
        r#"[http::get("http://a/").json.method, http::head("http://a/", #{}).json.method,
            http::delete("http://a/").json.method, http::put("http://a/", "raw").json.body,
            http::patch("http://a/", ()).json.body, http::request("options", "http://a/", (), #{}).json.method]"#,
        &Limits::default(),
    );
    assert_eq!(
        response(&r).body,
        r#"["GET","HEAD","DELETE","raw",null,"OPTIONS"]"#
    );
}

#[test]
fn http_failures_are_catchable_but_the_call_limit_ends_the_invocation() {
    let r = run_http(
        r#"let out = ""; try { http::get("http://deny/"); } catch (e) { out = e; } out"#,
        &Limits::default(),
    );
    assert_eq!(response(&r).body, "request denied by policy: private");

    let r = run_http(
        r#"http::get("http://a/", #{ bogus: 1 })"#,
        &Limits::default(),
    );
    assert!(r.error.unwrap().contains("unknown option \"bogus\""));

    let limits = Limits {
        max_http_calls: 3,
        ..Limits::default()
    };
    let r = run_http(
        r#"for i in 0..10 { try { http::get("http://a/"); } catch { } } "never""#,
        &limits,
    );
    assert_eq!(
        r.outcome,
        Outcome::LimitExceeded {
            message: "http call limit of 3 exceeded".into()
        }
    );
    // Without a host that lends HTTP, a clean, catchable error.
    let r = run(r#"let out = ""; try { http::get("http://a/"); } catch (e) { out = e; } out"#);
    assert_eq!(response(&r).body, "outbound HTTP is not available here");
}

#[test]
fn module_top_level_code_cannot_fetch_secrets_but_its_functions_can() {
    let mut sb = Sandbox::new();
    let limits = Limits::default();
    let set = module_set(&[
        ("eager", 1, r#"export const K = secret("api_key");"#),
        ("lazy", 1, r#"fn key() { secret("api_key") }"#),
    ]);
    let mut go = |src: &str| {
        run_full(
            &mut sb,
            src,
            &limits,
            set.clone(),
            std::sync::Arc::new(OneSecret),
        )
    };
    let r = go(r#"import "eager" as e; e::K"#);
    assert!(
        r.error
            .unwrap()
            .contains("not available in a module's top-level code")
    );
    let r = go(r#"import "lazy" as l; let k = l::key(); log(k); k.len()"#);
    assert_eq!(response(&r).body, "12");
    assert_eq!(r.log, "***\n");
}

#[test]
fn inputs_are_built_only_for_scripts_that_name_them() {
    assert_eq!(
        Inputs::of(r#""Hello, world!""#, 0),
        Inputs {
            event: false,
            request: false
        }
    );
    assert_eq!(
        Inputs::of("request.query.who", 0),
        Inputs {
            event: false,
            request: true
        }
    );
    // A mention anywhere counts, and imports mean everything.
    assert_eq!(
        Inputs::of("// event\nlet x = `${request}`;", 0),
        Inputs::ALL
    );
    assert_eq!(Inputs::of("1", 1), Inputs::ALL);

    // A script that names them sees them...
    let seen = run(r#"[is_def_var("event"), is_def_var("request"), event.kind]"#);
    assert_eq!(response(&seen).body, r#"[true,true,"http"]"#);
    // ...and one that does not cannot reach them (nor does it need to).
    let unseen = run(r#"[is_def_var("ev" + "ent"), is_def_var("req" + "uest")]"#);
    assert_eq!(response(&unseen).body, "[false,false]");
}
