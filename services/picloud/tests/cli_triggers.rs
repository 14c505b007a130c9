//! The `picloud` CLI end to end, part two (issue #13): secrets, schedules,
//! subscriptions, invocations and dead letters, with the real binary
//! against a real front and executor. See `cli.rs` for the rest.

#[path = "support/cli.rs"]
mod support;

use std::time::Duration;

use picloud_testkit::eventually;
use serde_json::Value;
use support::User;

/// A secret's value goes in on stdin (or as an argument) and is never
/// printed back; ls shows names only; rm removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_set_from_stdin_and_never_printed() {
    let (env, user) = User::with_env().await;
    let value = "pcS3CRET-cli-8842";
    let run = user
        .run_with(
            &["secret", "set", "api_key"],
            Some(&format!("{value}\n")),
            &[],
        )
        .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.all().contains(value), "{run:?}");
    let keeper = user.file("keeper.rhai", "secret(\"api_key\").len()");
    user.ok(&["deploy", &keeper]).await;
    // The trailing newline of stdin is not part of the value.
    user.invoke_until(&["keeper"], &value.len().to_string())
        .await;

    let v = user.json(&["secret", "ls"]).await;
    assert_eq!(v[0]["name"], "api_key", "{v}");
    assert!(!v.to_string().contains(value));
    let run = user.ok(&["secret", "ls"]).await;
    assert!(run.stdout.starts_with("NAME"), "{run:?}");
    assert!(run.stdout.contains("api_key"), "{run:?}");
    assert!(!run.all().contains(value));

    // As an argument too (for scripts that already hold it).
    let run = user.ok(&["secret", "set", "other", "v2"]).await;
    assert!(!run.all().contains("v2"), "{run:?}");
    let run = user.ok(&["secret", "rm", "api_key"]).await;
    assert!(run.stderr.contains("api_key"), "{run:?}");
    let v = user.json(&["secret", "ls"]).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["name"], "other");
    let run = user.expect(1, &["secret", "rm", "api_key"]).await;
    assert!(run.stderr.contains("not_found"), "{run:?}");
    let run = user
        .run_with(&["secret", "set", "empty"], Some(""), &[])
        .await;
    assert_eq!(run.code, 1, "an empty secret from stdin: {run:?}");
    env.cleanup().await;
}

/// schedule add/ls/show/pause/resume/rm, with --json and tables, and a bad
/// cron expression named by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_added_listed_paused_and_removed() {
    let (env, user) = User::with_env().await;
    let tick = user.file("tick.rhai", "\"tick\"");
    user.ok(&["deploy", &tick]).await;

    let v = user
        .json(&[
            "schedule",
            "add",
            "tick",
            "0 3 * * *",
            "--timezone",
            "Europe/Berlin",
        ])
        .await;
    let id = v["id"].as_str().expect("an id").to_owned();
    assert_eq!(v["cron"], "0 3 * * *");
    assert_eq!(v["timezone"], "Europe/Berlin");
    assert_eq!(v["enabled"], true);
    let run = user.ok(&["schedule", "add", "tick", "*/5 * * * *"]).await;
    assert!(run.stdout.contains("id:"), "{run:?}");
    assert!(run.stdout.contains("next runs:"), "{run:?}");

    let v = user.json(&["schedule", "ls", "--script", "tick"]).await;
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert!(
        v[0]["next_runs"].is_array(),
        "--json keeps the API's fields: {v}"
    );
    let run = user.ok(&["schedule", "ls"]).await;
    assert_eq!(run.stdout.lines().count(), 3, "{run:?}");
    assert!(run.stdout.starts_with("ID"), "{run:?}");
    assert!(run.stdout.contains(&id), "{run:?}");

    let v = user.json(&["schedule", "show", &id]).await;
    assert_eq!(v["id"], id.as_str());
    assert_eq!(
        user.json(&["schedule", "pause", &id]).await["enabled"],
        false
    );
    let run = user.ok(&["schedule", "show", &id]).await;
    assert!(run.stdout.contains("enabled:"), "{run:?}");
    assert!(run.stdout.contains("false"), "{run:?}");
    assert_eq!(
        user.json(&["schedule", "resume", &id]).await["enabled"],
        true
    );
    // A wrong choice is a usage error that lists the right ones.
    let run = user
        .expect(
            2,
            &[
                "schedule",
                "add",
                "tick",
                "* * * * *",
                "--overlap",
                "sometimes",
            ],
        )
        .await;
    assert!(run.stderr.contains("skip, allow"), "the choices: {run:?}");

    let run = user
        .expect(1, &["schedule", "add", "tick", "61 * * * *"])
        .await;
    assert!(run.stderr.contains("61"), "{run:?}");
    let run = user
        .expect(1, &["schedule", "add", "nobody", "* * * * *"])
        .await;
    assert!(run.stderr.contains("nobody"), "{run:?}");

    user.ok(&["schedule", "rm", &id]).await;
    let run = user.expect(1, &["schedule", "show", &id]).await;
    assert!(run.stderr.contains("not_found"), "{run:?}");
    let run = user.expect(1, &["schedule", "show", "not-a-uuid"]).await;
    assert!(!run.stderr.contains("Uuid"), "a Debug form: {run:?}");
    assert_eq!(
        user.json(&["schedule", "ls"])
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    env.cleanup().await;
}

/// subscribe, subscriptions ls/rm, invocations ls/show, and a failing
/// subscriber's dead letter: ls, show, replay, discard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_invocations_and_dead_letters() {
    let (env, user) = User::with_env().await;
    // The error holds a newline and an escape sequence: shown escaped.
    let sink = user.file(
        "sink.rhai",
        r#"throw "cannot take " + event.topic + "\nsecond line\x1b[31m red";"#,
    );
    let shout = user.file("shout.rhai", "emit(\"orders.new\", #{ n: 1 }); \"sent\"");
    user.ok(&["deploy", &sink]).await;
    user.ok(&["deploy", &shout]).await;

    let run = user
        .ok(&["subscribe", "sink", "orders.*", "--max-attempts", "1"])
        .await;
    let sub_id = run.stdout.trim().to_owned();
    assert_eq!(sub_id.len(), 36, "the id on stdout: {run:?}");
    let v = user.json(&["subscriptions", "ls"]).await;
    assert_eq!(v[0]["id"], sub_id.as_str(), "{v}");
    assert_eq!(v[0]["topic"], "orders.*");
    assert_eq!(v[0]["max_attempts"], 1);
    let run = user.ok(&["subscriptions", "ls", "--script", "sink"]).await;
    assert!(run.stdout.starts_with("ID"), "{run:?}");
    assert!(run.stdout.contains("orders.*"), "{run:?}");
    let v = user.json(&["subscribe", "sink", "audit.>"]).await;
    let other = v["id"].as_str().unwrap().to_owned();

    user.invoke_until(&["shout"], "sent").await;
    let dead = eventually(Duration::from_secs(30), || async {
        let v = user.json(&["dead-letters", "ls", "--script", "sink"]).await;
        v.as_array().filter(|a| !a.is_empty()).cloned()
    })
    .await
    .expect("the failing subscriber dead-letters");
    let dl = &dead[0];
    let dl_id = dl["id"].as_str().unwrap().to_owned();
    assert_eq!(dl["topic"], "orders.new");
    assert!(
        dl["error"]
            .as_str()
            .unwrap()
            .contains("cannot take orders.new"),
        "{dl}"
    );
    let run = user.ok(&["dead-letters", "ls"]).await;
    assert!(run.stdout.starts_with("ID"), "{run:?}");
    assert!(run.stdout.contains(&dl_id), "{run:?}");
    assert_eq!(run.stdout.lines().count(), 2, "one line a row: {run:?}");
    assert!(
        run.stdout.contains(r"\nsecond line\u{1b}[31m red"),
        "{run:?}"
    );
    assert!(!run.stdout.contains('\x1b'), "{run:?}");

    let run = user.ok(&["dead-letters", "show", &dl_id]).await;
    assert!(run.stdout.contains("cannot take orders.new"), "{run:?}");
    let v = user.json(&["dead-letters", "show", &dl_id]).await;
    assert_eq!(v["id"], dl_id.as_str());

    // invocations: the failed one is listed and shown with its error.
    let inv_id = dl["invocation_id"].as_str().unwrap().to_owned();
    let v = user.json(&["invocations", "ls", "--script", "sink"]).await;
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == inv_id.as_str()),
        "{v}"
    );
    let run = user.ok(&["invocations", "ls", "--limit", "5"]).await;
    assert!(run.stdout.starts_with("ID"), "{run:?}");
    let header = run.stdout.lines().next().unwrap();
    assert!(header.is_ascii(), "{header:?}");
    assert!(header.contains("DURATION_US"), "{header:?}");
    let run = user.ok(&["invocations", "show", &inv_id]).await;
    assert!(run.stdout.contains(&inv_id), "{run:?}");
    assert!(run.stdout.contains("cannot take orders.new"), "{run:?}");
    assert!(!run.stdout.contains('\x1b'), "{run:?}");
    let v: Value = user.json(&["invocations", "show", &inv_id]).await;
    assert_eq!(v["id"], inv_id.as_str());

    // The chain: shout's invocation shows the sink's under it.
    let v = user.json(&["invocations", "ls", "--script", "shout"]).await;
    let root = v[0]["id"].as_str().unwrap().to_owned();
    let run = user.ok(&["invocations", "show", &root]).await;
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{root} shout v1 http ok")),
        "{run:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("└─ {inv_id} sink v1 event error"))),
        "{run:?}"
    );

    // replay, then discard; both only once.
    user.ok(&["dead-letters", "replay", &dl_id]).await;
    let run = user.expect(1, &["dead-letters", "replay", &dl_id]).await;
    assert!(run.stderr.contains("already_replayed"), "{run:?}");
    user.ok(&["dead-letters", "discard", &dl_id]).await;
    user.expect(1, &["dead-letters", "show", &dl_id]).await;

    user.ok(&["subscriptions", "rm", &sub_id]).await;
    user.ok(&["subscriptions", "rm", &other]).await;
    assert_eq!(
        user.json(&["subscriptions", "ls"]).await,
        serde_json::json!([])
    );
    let run = user.expect(1, &["subscriptions", "rm", &sub_id]).await;
    assert!(run.stderr.contains("not_found"), "{run:?}");
    env.cleanup().await;
}
