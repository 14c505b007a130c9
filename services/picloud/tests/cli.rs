//! The `picloud` CLI end to end (issue #13): the real binary, run as a
//! user would, against a real front and executor. Login and profiles,
//! deploy (file, folder, compile errors), the read commands in both forms,
//! invoke, and the error paths (usage, server down, wrong token). Secrets,
//! schedules, subscriptions and dead letters are in `cli_triggers.rs`;
//! what happens on a terminal in `cli_terminal.rs`.

#[path = "support/cli.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;

use picloud_testkit::free_port;
use serde_json::{Value, json};
use support::User;

/// Login reads the token from stdin, checks it, and stores it in a 0600
/// file; a wrong token is refused before anything is stored; profiles are
/// named and the flags and variables override them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_stores_a_private_profile_and_refuses_a_wrong_token() {
    let mut env = support::Env::new().await;
    let front = env.start_front().await;
    let user = User::new(&front.base, &env.token);

    // Not logged in yet: a clear hint, exit 1.
    let run = user.expect(1, &["ls"]).await;
    assert!(run.stderr.contains("picloud login"), "{run:?}");

    // A wrong token: refused by the server, nothing stored, not echoed.
    let wrong = "not-the-token-4711";
    let run = user
        .run_with(&["login", &user.base, "--token-stdin"], Some(wrong), &[])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("unauthorized"), "{run:?}");
    assert!(
        run.stderr
            .contains("help: the server refused the admin token"),
        "{run:?}"
    );
    assert!(!run.all().contains(wrong), "the token was printed: {run:?}");
    assert!(!user.profile_file().exists());

    // The right token on stdin (no flag: stdin is not a terminal).
    let run = user
        .run_with(
            &["login", &format!("{}/", user.base)],
            Some(&format!("{}\n", user.token)),
            &[],
        )
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !run.all().contains(&user.token),
        "the token was printed: {run:?}"
    );
    let file = user.profile_file();
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());
    let dir_mode = std::fs::metadata(file.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&user.base), "{text}");
    assert!(!text.contains(&format!("{}/", user.base)), "{text}");

    // The profile is used; an empty list is an empty JSON array.
    assert_eq!(user.json(&["ls"]).await, json!([]));
    let run = user.ok(&["ls"]).await;
    assert_eq!(run.stdout, "");

    // Named profiles: a missing one is an error, a stored one works.
    let run = user.expect(1, &["--profile", "staging", "ls"]).await;
    assert!(run.stderr.contains("no profile \"staging\""), "{run:?}");
    let run = user
        .run_with(
            &["login", &user.base, "--profile", "staging"],
            Some(&user.token),
            &[],
        )
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    user.ok(&["--profile", "staging", "ls"]).await;
    let run = user
        .run_with(&["ls"], None, &[("PICLOUD_PROFILE", "staging")])
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("[profiles.staging]"), "{text}");

    // PICLOUD_TOKEN and --token override the stored token.
    let run = user
        .run_with(&["ls"], None, &[("PICLOUD_TOKEN", wrong)])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("unauthorized"), "{run:?}");
    assert!(!run.all().contains(wrong));
    user.expect(1, &["--token", wrong, "ls"]).await;

    // A damaged profile file is named, not overwritten by a failed login.
    std::fs::write(&file, "default = [").unwrap();
    let run = user.expect(1, &["ls"]).await;
    assert!(run.stderr.contains("profiles.toml"), "{run:?}");
    let run = user
        .run_with(&["login", &user.base], Some(&user.token), &[])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "default = [");
    env.cleanup().await;
}

/// `key: value` lines (and indented `key value` ones) as a map; the
/// values of one block must start in one column.
fn fields(stdout: &str) -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    let mut columns = std::collections::BTreeSet::new();
    for line in stdout.lines() {
        let (key, rest) = line
            .trim_start()
            .split_once([':', ' '])
            .unwrap_or((line, ""));
        let value = rest.trim_start();
        if !line.starts_with(' ') && !value.is_empty() {
            columns.insert(line.len() - value.len());
        }
        map.insert(key.to_owned(), value.to_owned());
    }
    assert!(columns.len() <= 1, "values not aligned: {stdout}");
    map
}

/// Deploy a file (twice), read it back in both forms, roll back, deploy a
/// folder (module first), see a compile error with a caret, remove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_read_rollback_and_remove() {
    let (env, user) = User::with_env().await;
    let hello = user.file("hello.rhai", "\"hello v1\"");
    let run = user.ok(&["deploy", &hello]).await;
    let url = format!("{}/fn/hello", user.base);
    assert!(run.stdout.contains("script hello v1"), "{run:?}");
    assert!(run.stdout.contains(&url), "{run:?}");
    user.invoke_until(&["hello"], "hello v1").await;

    user.file("hello.rhai", "\"hello v2\"");
    let v = user
        .json(&["deploy", &hello, "--limit", "max_operations=100000"])
        .await;
    assert_eq!(v[0]["name"], "hello");
    assert_eq!(v[0]["version"], 2);
    assert_eq!(v[0]["url"], url.as_str());
    user.invoke_until(&["hello"], "hello v2").await;

    // ls and show: the API's fields with --json, a table otherwise.
    let v = user.json(&["ls"]).await;
    assert_eq!(v[0]["name"], "hello");
    assert_eq!(v[0]["active_version"], 2);
    assert_eq!(v[0]["latest_version"], 2);
    let run = user.ok(&["ls"]).await;
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    assert!(lines[0].starts_with("NAME"), "{run:?}");
    assert!(lines[0].contains("ACTIVE"), "{run:?}");
    assert!(lines[1].starts_with("hello"), "{run:?}");
    assert!(!run.stdout.contains('\x1b'), "colour without a terminal");
    let v = user.json(&["show", "hello"]).await;
    assert_eq!(v["name"], "hello");
    assert_eq!(v["active"]["version"], 2);
    assert_eq!(v["active"]["limits"]["max_operations"], 100_000);
    let run = user.ok(&["show", "hello"]).await;
    let shown = fields(&run.stdout);
    assert_eq!(shown["url"], url, "{run:?}");
    assert_eq!(shown["active_version"], "2", "{run:?}");
    assert_eq!(shown["max_operations"], "100000", "{run:?}");
    assert!(
        !run.stdout.contains('{'),
        "no JSON in the table form: {run:?}"
    );

    // `picloud ls | head -0`: the reader is gone before the answer.
    let run = user.closed_pipe(&["ls"], 0).await;
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");

    // Versions and rollback.
    let v = user.json(&["versions", "hello"]).await;
    let versions: Vec<&Value> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["version"])
        .collect();
    assert_eq!(versions.len(), 2, "{v}");
    let run = user.ok(&["versions", "hello"]).await;
    assert_eq!(run.stdout.lines().count(), 3, "{run:?}");
    assert!(run.stdout.starts_with("VERSION"), "{run:?}");
    let run = user.ok(&["rollback", "hello", "1"]).await;
    assert!(run.stderr.contains("version 1"), "{run:?}");
    user.invoke_until(&["hello"], "hello v1").await;
    assert_eq!(user.json(&["show", "hello"]).await["active_version"], 1);
    let run = user.expect(1, &["rollback", "hello", "7"]).await;
    assert!(
        run.stderr.contains(r#"script "hello" has no version 7"#),
        "{run:?}"
    );
    assert!(!run.stderr.contains("ScriptName("), "a Debug form: {run:?}");

    // A compile error: file, line, column, the line and a caret; exit 1,
    // and nothing changes.
    let bad = user.file("broken.rhai", "let a = 1;\nlet b = ;\n");
    let run = user.expect(1, &["deploy", &bad]).await;
    assert!(run.stderr.contains("broken.rhai:2:"), "{run:?}");
    assert!(run.stderr.contains("2 | let b = ;"), "{run:?}");
    assert!(run.stderr.contains('^'), "{run:?}");
    assert!(run.stderr.contains("compile_error"), "{run:?}");
    let run = user.expect(1, &["module", "deploy", &bad]).await;
    assert!(run.stderr.contains("broken.rhai:2:"), "{run:?}");
    assert!(run.stderr.contains('^'), "{run:?}");
    let run = user.expect(1, &["show", "broken"]).await;
    assert!(run.stderr.contains("not_found"), "{run:?}");

    // A folder: the imported file is a module and goes first.
    user.file("app/util.rhai", "fn twice(x) { x * 2 }");
    user.file(
        "app/api.rhai",
        "import \"util\" as u;\n`api ${u::twice(21)}`",
    );
    let dir = user.home.path().join("app");
    let v = user.json(&["deploy", dir.to_str().unwrap()]).await;
    assert_eq!(v[0]["kind"], "module", "{v}");
    assert_eq!(v[0]["name"], "util");
    assert_eq!(v[1]["kind"], "script");
    assert_eq!(v[1]["name"], "api");
    user.invoke_until(&["api"], "api 42").await;
    let v = user.json(&["module", "ls"]).await;
    assert_eq!(v[0]["name"], "util");
    let run = user.ok(&["show", "api"]).await;
    assert_eq!(fields(&run.stdout)["modules"], "util v1", "{run:?}");
    let run = user
        .ok(&[
            "module",
            "deploy",
            &user.file("util.rhai", "fn twice(x) { x + x }"),
        ])
        .await;
    assert!(run.stdout.contains("module util v2"), "{run:?}");
    let run = user.ok(&["module", "ls"]).await;
    assert!(run.stdout.starts_with("NAME"), "{run:?}");
    // A broken file in a folder: what went before is reported as deployed.
    user.file("app/zzz.rhai", "let = 1;");
    let run = user.expect(1, &["deploy", dir.to_str().unwrap()]).await;
    assert!(run.stdout.contains("script api v2"), "{run:?}");
    assert!(
        run.stderr
            .contains("stopped at script zzz; 2 of 3 deployed"),
        "{run:?}"
    );
    assert!(run.stderr.contains("zzz.rhai:1:"), "{run:?}");
    std::fs::remove_file(dir.join("zzz.rhai")).unwrap();
    let run = user
        .expect(1, &["deploy", dir.to_str().unwrap(), "--name", "x"])
        .await;
    assert!(run.stderr.contains("--name"), "{run:?}");
    let run = user.expect(1, &["deploy", "missing.rhai"]).await;
    assert!(run.stderr.contains("missing.rhai"), "{run:?}");

    // rm asks first; without a terminal it needs --yes (a usage error,
    // exit 2, and nothing deleted).
    let run = user.expect(2, &["rm", "hello"]).await;
    assert!(run.stderr.contains("--yes"), "{run:?}");
    user.ok(&["show", "hello"]).await;
    // rm: gone from ls and show.
    let run = user.ok(&["rm", "hello", "--yes"]).await;
    assert!(run.stderr.contains("hello"), "{run:?}");
    let run = user.expect(1, &["show", "hello"]).await;
    assert!(run.stderr.contains("not_found"), "{run:?}");
    // With --json an error is the API's JSON shape, on stderr.
    let run = user.expect(1, &["show", "hello", "--json"]).await;
    assert!(run.stdout.is_empty(), "{run:?}");
    let err: Value = serde_json::from_str(run.stderr.trim())
        .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {run:?}"));
    assert_eq!(err["error"]["code"], "not_found", "{run:?}");
    assert!(err["error"]["message"].as_str().unwrap().contains("hello"));
    let run = user.expect(2, &["rm", "api", "--json"]).await;
    let err: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(err["error"]["code"], "usage", "{run:?}");
    let names: Vec<Value> = user
        .json(&["ls"])
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("api")]);
    user.expect(1, &["rm", "-y", "hello"]).await;
    env.cleanup().await;
}

/// invoke: the body on stdout, -X/-d/-H, @file, -v, a failing script,
/// and --async with and without --wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_sends_methods_bodies_headers_and_waits() {
    let (env, user) = User::with_env().await;
    let echo = user.file(
        "echo.rhai",
        r#"if request.query.fail == "1" { throw "asked to fail"; }
           if request.query.teapot == "1" { return response(418, "short and stout"); }
           #{ method: request.method, path: request.path, json: request.json,
              test: request.headers["x-test"], ct: request.headers["content-type"] }"#,
    );
    user.ok(&["deploy", &echo]).await;
    user.invoke_until(
        &["echo"],
        r#"{"ct":null,"json":null,"method":"GET","path":"/","test":null}"#,
    )
    .await;

    let run = user
        .ok(&[
            "invoke",
            "echo",
            "/a/b",
            "-X",
            "post",
            "-d",
            r#"{"n":1}"#,
            "-H",
            "X-Test: yes",
        ])
        .await;
    let v = run.json();
    assert_eq!(v["method"], "POST", "{run:?}");
    assert_eq!(v["json"], json!({ "n": 1 }));
    assert_eq!(v["test"], "yes");
    assert_eq!(v["path"], "/a/b");
    let body = user.file("body.json", r#"{"from":"file"}"#);
    let run = user
        .ok(&[
            "invoke",
            "echo",
            "--method",
            "PUT",
            "--data",
            &format!("@{body}"),
            "-v",
        ])
        .await;
    assert_eq!(run.json()["json"], json!({ "from": "file" }));
    assert!(run.stderr.contains("200 OK"), "{run:?}");
    assert!(
        run.stderr.contains("content-type: application/json"),
        "{run:?}"
    );

    // A script that fails: the server's error, exit 1.
    let run = user.expect(1, &["invoke", "echo", "?fail=1"]).await;
    assert!(run.stderr.starts_with("error: "), "{run:?}");
    // The script's own error status: its body on stdout, exit 1.
    let run = user.expect(1, &["invoke", "echo", "?teapot=1"]).await;
    assert_eq!(run.stdout, "short and stout");
    assert_eq!(run.stderr, "error: echo answered 418 I'm a teapot\n");
    // The body from stdin, and a content type of the caller's choosing.
    let run = user
        .run_with(
            &[
                "invoke",
                "echo",
                "-X",
                "POST",
                "-d",
                "@-",
                "-H",
                "Content-Type: text/plain",
            ],
            Some(r#"{"from":"stdin"}"#),
            &[],
        )
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["ct"], "text/plain", "{run:?}");
    let run = user
        .run_with(
            &["invoke", "echo", "-X", "POST", "-d", "@-"],
            Some(r#"{"from":"stdin"}"#),
            &[],
        )
        .await;
    assert_eq!(run.json()["json"], json!({ "from": "stdin" }), "{run:?}");
    let run = user.expect(1, &["invoke", "nobody"]).await;
    assert!(
        run.stderr.contains("not_found") || run.stderr.contains("404"),
        "{run:?}"
    );
    let run = user.expect(1, &["invoke", "echo", "-H", "no-colon"]).await;
    assert!(run.stderr.contains("NAME:VALUE"), "{run:?}");

    // --async: the acceptance; --async --wait: the script's response.
    let run = user
        .ok(&["invoke", "echo", "--async", "-X", "POST", "-d", "{}"])
        .await;
    let v = run.json();
    assert!(v["invocation_id"].is_string(), "{run:?}");
    assert!(v["status_url"].as_str().unwrap().starts_with("/status/"));
    let run = user
        .ok(&[
            "invoke",
            "echo",
            "/w",
            "--async",
            "--wait",
            "-X",
            "POST",
            "-d",
            r#"{"w":2}"#,
        ])
        .await;
    let v = run.json();
    assert_eq!(v["json"], json!({ "w": 2 }), "{run:?}");
    assert_eq!(v["path"], "/w");
    // The script's own error status, waited for: as in the sync call.
    let run = user
        .expect(1, &["invoke", "echo", "?teapot=1", "--async", "--wait"])
        .await;
    assert_eq!(run.stdout, "short and stout");
    assert_eq!(run.stderr, "error: echo answered 418 I'm a teapot\n");
    // An async call that fails every attempt: exit 1, and the message
    // names the invocation to look at.
    let run = user
        .expect(1, &["invoke", "echo", "?fail=1", "--async", "--wait"])
        .await;
    let id = run.stderr.split("invocations show ").nth(1).unwrap_or("");
    let id = id.split('`').next().unwrap_or("");
    assert_eq!(id.len(), 36, "names the invocation: {run:?}");
    let v = user.json(&["invocations", "show", id]).await;
    assert_eq!(v["status"], "error", "{v}");
    env.cleanup().await;
}

/// A URL given by flag or variable that is not the profile's does not get
/// the profile's token: it goes only where the user logged in with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiles_token_goes_only_to_its_own_url() {
    let (env, user) = User::with_env().await;
    // Another server, which records what it is sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::thread::spawn(move || {
        use std::io::{Read, Write};
        listener.set_nonblocking(false).unwrap();
        let mut all = String::new();
        if let Ok((mut s, _)) = listener.accept() {
            s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]",
            );
        }
        all
    });
    let run = user.run(&["--url", &other, "ls"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("--token"), "{run:?}");
    let run = user
        .run_with(&["ls"], None, &[("PICLOUD_URL", &other)])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    // Unblock the recorder, then check it never saw the token.
    let _ = std::net::TcpStream::connect(other.trim_start_matches("http://"));
    let request = seen.join().unwrap();
    assert!(
        !request.contains(&user.token),
        "the token leaked: {request}"
    );
    // The profile's own URL (however written) still uses it, and an
    // explicit token goes anywhere.
    user.ok(&["--url", &format!("{}/", user.base), "ls"]).await;
    user.ok(&["--url", &user.base, "--token", &user.token, "ls"])
        .await;
    env.cleanup().await;
}

/// Usage errors exit 2; a server that is down is named; completions print.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2_and_a_down_server_is_named() {
    let user = User::new("http://127.0.0.1:1", "t");
    for args in [
        &[][..],
        &["no-such-command"],
        &["rollback", "hello", "seven"],
        &["invoke", "hello", "--wait"],
        &["deploy"],
        &["ls", "--no-such-flag"],
        &["completions", "tcsh-ish"],
        &["schedule"],
    ] {
        let run = user.expect(2, args).await;
        assert!(!run.stderr.is_empty(), "{args:?}: {run:?}");
    }
    user.ok(&["--help"]).await;
    user.ok(&["deploy", "--help"]).await;

    let run = user.ok(&["completions", "bash"]).await;
    assert!(run.stdout.contains("picloud"), "{run:?}");
    assert!(run.stdout.contains("deploy"));
    assert!(run.stdout.len() > 1_000);
    // `picloud completions bash | head -c 10`: a quiet end, not a panic.
    let run = user.closed_pipe(&["completions", "bash"], 10).await;
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    user.ok(&["completions", "zsh"]).await;
    user.ok(&["completions", "fish"]).await;

    // Nobody listens: the URL is named, exit 1.
    let port = free_port();
    let down = format!("http://127.0.0.1:{port}");
    let run = user
        .expect(1, &["--url", &down, "--token", "t", "ls"])
        .await;
    assert!(run.stderr.contains(&down), "{run:?}");
    assert!(run.stderr.contains("cannot reach"), "{run:?}");
    let run = user.run_with(&["login", &down], Some("t"), &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(&down), "{run:?}");
    assert!(!user.profile_file().exists());
    let run = user
        .run_with(
            &["invoke", "x"],
            None,
            &[("PICLOUD_URL", &down), ("PICLOUD_TOKEN", "t")],
        )
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains(&down), "{run:?}");

    // A URL without a scheme is named as such, not a library's Debug.
    let run = user
        .run_with(&["login", &format!("127.0.0.1:{port}")], Some("t"), &[])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("http://"), "{run:?}");
    assert!(!user.profile_file().exists());
}
