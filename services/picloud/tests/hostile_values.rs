//! Hostile values and poison jobs (issue #12 §1, §2), end to end: strings
//! holding NUL round-trip or are refused at the edge, and a job whose commit
//! will fail the same way every time ends as a dead letter instead of
//! looping.

use std::time::Duration;

use picloud_testkit::{Client, TestEnv, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn deploy(c: &Client, name: &str, source: &str) {
    let resp = c.deploy(name, source).await;
    let status = resp.status();
    assert!(
        status.is_success(),
        "deploy {name}: {status} {}",
        resp.text().await.unwrap_or_default()
    );
}

async fn one_of_each() -> (TestEnv, Client) {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    (env, c)
}

/// POSTs `body` to `/fn/{path}`.
async fn post_fn(c: &Client, path: &str, body: &str) -> reqwest::Response {
    c.http
        .post(format!("{}/fn/{path}", c.base))
        .body(body.to_owned())
        .send()
        .await
        .expect("fn request")
}

/// The open dead letters of `script`, waiting until there is at least one.
async fn dead_letters_of(c: &Client, script: &str) -> Vec<Value> {
    let path = format!("/dead-letters?script={script}");
    let path = &path;
    eventually(Duration::from_secs(60), || async move {
        let v = c.get_json(path).await;
        let rows = v.as_array()?.clone();
        (!rows.is_empty()).then_some(rows)
    })
    .await
    .unwrap_or_else(|| panic!("{script} never dead-lettered"))
}

/// A kv value (and a map key inside it) holding NUL is stored and read back
/// exactly; before, the commit hit Postgres' jsonb and the caller got 503.
#[tokio::test]
async fn a_kv_value_with_nul_round_trips() {
    let (env, c) = one_of_each().await;
    deploy(
        &c,
        "box",
        r#"
        if request.method == "POST" {
            kv::set("v", #{ s: request.body, "k\x00ey": [request.json] });
            return "stored";
        }
        kv::get("v")
        "#,
    )
    .await;
    let text = "a\u{0}b";
    let body = serde_json::to_string(text).unwrap();
    let resp = post_fn(&c, "box", &body).await;
    let status = resp.status();
    assert_eq!(status, StatusCode::OK, "{}", resp.text().await.unwrap());
    let got: Value = c.call("box").await.json().await.unwrap();
    assert_eq!(got, json!({ "s": body, "k\u{0}ey": [text] }));
    env.cleanup().await;
}

/// An event payload holding NUL arrives as emitted.
#[tokio::test]
async fn an_emit_payload_with_nul_arrives_as_emitted() {
    let (env, c) = one_of_each().await;
    deploy(&c, "sender", r#"emit("nul.t", #{ s: "x\x00y" }); "sent""#).await;
    deploy(
        &c,
        "hearer",
        r#"
        if event.kind == "http" { return #{ got: kv::get("got") }; }
        kv::set("got", event.payload.s);
        "#,
    )
    .await;
    c.subscribe("hearer", "nul.t", 3).await;
    let resp = c.call("sender").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got = eventually(Duration::from_secs(30), || async {
        let v: Value = c.call("hearer").await.json().await.ok()?;
        (v["got"] != Value::Null).then_some(v)
    })
    .await
    .expect("the event arrives");
    assert_eq!(got, json!({ "got": "x\u{0}y" }));
    env.cleanup().await;
}

/// A job whose event holds NUL and which always fails ends as a dead letter
/// that can be listed, replayed and discarded.
#[tokio::test]
async fn a_dead_letter_holding_nul_is_stored_listed_replayed_and_discarded() {
    let (env, c) = one_of_each().await;
    deploy(
        &c,
        "sender",
        r#"emit("poison.t", #{ s: "x\x00y" }); "sent""#,
    )
    .await;
    deploy(&c, "failer", r#"throw "no\x00pe""#).await;
    c.subscribe("failer", "poison.t", 1).await;
    assert_eq!(c.call("sender").await.status(), StatusCode::OK);
    let rows = dead_letters_of(&c, "failer").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let id = rows[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(rows[0]["topic"], "poison.t");

    // Replayed: it fails again and comes back as a new open dead letter.
    c.post_json(&format!("/dead-letters/{id}/replay"), json!({}))
        .await;
    let again = eventually(Duration::from_secs(60), || async {
        let v = c.get_json("/dead-letters?script=failer").await;
        let open: Vec<Value> = v
            .as_array()?
            .iter()
            .filter(|r| r["replayed_at"].is_null())
            .cloned()
            .collect();
        (open.len() == 1).then(|| open[0]["id"].as_str().unwrap().to_owned())
    })
    .await
    .expect("the replay dead-letters again");
    assert_ne!(again, id);

    // Discarded: gone from the list; a second discard is a 404.
    for dl in [&id, &again] {
        let resp = c
            .api(Method::DELETE, &format!("/dead-letters/{dl}"), None)
            .await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    let v = c.get_json("/dead-letters?script=failer").await;
    assert_eq!(v, json!([]));
    let resp = c
        .api(Method::DELETE, &format!("/dead-letters/{id}"), None)
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    env.cleanup().await;
}

/// A commit larger than `max_commit_bytes` ends the invocation with an error
/// naming the limit before anything is sent: a sync caller gets the
/// script-error status (not 503 "retry"), and an event job dead-letters.
#[tokio::test]
async fn a_commit_over_max_commit_bytes_is_the_scripts_failure() {
    let (env, c) = one_of_each().await;
    // 24 values of ~60 KB: about 1.4 MB, more than the bus carries.
    let source = r#"
        let big = "x";
        while big.len() < 60000 { big += big; }
        big = big.sub_string(0, 60000);
        for i in 0..24 { kv::set(`k${i}`, big); }
        "wrote"
    "#;
    deploy(&c, "hog", source).await;
    let resp = c.call("hog").await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_commit_bytes"),
        "{body}"
    );

    // The same as an event job: it counts its attempts and dead-letters.
    deploy(&c, "trigger", r#"emit("hog.t", 1); "sent""#).await;
    c.subscribe("hog", "hog.t", 2).await;
    assert_eq!(c.call("trigger").await.status(), StatusCode::OK);
    let rows = dead_letters_of(&c, "hog").await;
    assert_eq!(rows[0]["attempts"], 2, "{rows:?}");
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("max_commit_bytes"),
        "{rows:?}"
    );
    env.cleanup().await;
}

/// A commit the database refuses (here a constraint the test adds) is the
/// job's failure: sync callers get 500, not 503, and an event job spends its
/// attempts and dead-letters instead of being retried forever.
#[tokio::test]
async fn a_commit_the_database_refuses_is_the_jobs_failure() {
    let (env, c) = one_of_each().await;
    let db = sqlx::PgPool::connect(env.config.database_url().unwrap())
        .await
        .unwrap();
    sqlx::query("ALTER TABLE kv ADD CONSTRAINT test_refuse CHECK (key <> 'refused')")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    deploy(&c, "stubborn", r#"kv::set("refused", 1); "written""#).await;
    let resp = c.call("stubborn").await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["code"], "script_error", "{body}");

    deploy(&c, "trigger", r#"emit("stubborn.t", 1); "sent""#).await;
    c.subscribe("stubborn", "stubborn.t", 2).await;
    assert_eq!(c.call("trigger").await.status(), StatusCode::OK);
    let rows = dead_letters_of(&c, "stubborn").await;
    assert_eq!(rows[0]["attempts"], 2, "{rows:?}");
    env.cleanup().await;
}

/// Admin input holding NUL is stored exactly (secrets) or refused with a 400
/// naming the field, never a 500.
#[tokio::test]
async fn admin_input_with_nul_is_refused_with_a_400_or_round_trips() {
    let (env, c) = one_of_each().await;
    let resp = c.deploy("nul", "let s = \"a\u{0}b\"; s").await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("source"),
        "{body}"
    );
    let resp = c
        .api(
            Method::PUT,
            "/modules/nulmod",
            Some(json!({ "source": "fn f() { \"\u{0}\" }" })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // A secret value is sealed (bytes): it round-trips into a script.
    let resp = c
        .api(
            Method::PUT,
            "/secrets/token",
            Some(json!({ "value": "se\u{0}cret" })),
        )
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    deploy(&c, "reader", r#"secret("token") == "se\x00cret""#).await;
    assert_eq!(c.call("reader").await.text().await.unwrap(), "true");

    // Names, topics and schedule fields are checked before the database.
    deploy(&c, "ok", r#""ok""#).await;
    for (method, path, body) in [
        (
            Method::PUT,
            "/scripts/a%00b",
            Some(json!({ "source": "1" })),
        ),
        (Method::GET, "/scripts/a%00b", None),
        (
            Method::POST,
            "/subscriptions",
            Some(json!({ "script": "ok", "topic": "a\u{0}b" })),
        ),
        (
            Method::POST,
            "/subscriptions",
            Some(json!({ "script": "o\u{0}k", "topic": "a.b" })),
        ),
        (
            Method::POST,
            "/schedules",
            Some(json!({ "script": "ok", "cron": "* * * * *\u{0}", "timezone": "UTC" })),
        ),
        (
            Method::POST,
            "/schedules",
            Some(json!({ "script": "ok", "cron": "* * * * *", "timezone": "U\u{0}TC" })),
        ),
        (Method::PUT, "/secrets/a%00b", Some(json!({ "value": "v" }))),
        (Method::GET, "/dead-letters/a%00b", None),
        (Method::DELETE, "/dead-letters/a%00b", None),
        (Method::DELETE, "/dead-letters/not-a-uuid", None),
    ] {
        let resp = c.api(method.clone(), path, body.clone()).await;
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "{method} {path} {body:?}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    // A dead letter that does not exist: 404, to read and to discard.
    let missing = format!("/dead-letters/{}", uuid::Uuid::new_v4());
    for method in [Method::GET, Method::DELETE] {
        let resp = c.api(method.clone(), &missing, None).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {missing}");
    }
    env.cleanup().await;
}

/// An async call's stored response holding NUL reads back exactly at its
/// status URL (it was stored as U+FFFD before).
#[tokio::test]
async fn an_async_response_with_nul_is_stored_exactly() {
    let (env, c) = one_of_each().await;
    deploy(&c, "echo", r#""got " + request.body"#).await;
    let resp = c
        .http
        .post(format!("{}/fn/echo", c.base))
        .header("Prefer", "respond-async")
        .body("x\u{0}y")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let done = c
        .poll_status(&location, Duration::from_secs(30), |v| v["status"] == "ok")
        .await
        .expect("the call completes");
    assert_eq!(done["response"]["body"], "got x\u{0}y", "{done}");
    env.cleanup().await;
}

/// A log line and a thrown error holding NUL: the call is the script's
/// failure (500 `script_error`, not `internal`), and the invocation is
/// recorded with NUL shown as U+FFFD (diagnostics text; see
/// docs/scripting.md). A kv key with NUL is a script error naming the rule.
#[tokio::test]
async fn nul_in_a_log_line_a_thrown_error_or_a_kv_key_is_recorded_or_refused() {
    let (env, c) = one_of_each().await;
    // A log line with NUL is refused, never altered: `log` raises a
    // catchable error naming itself; `print` and `debug` end the run.
    deploy(
        &c,
        "caught",
        r#"let out = "logged"; try { log("a\x00b"); } catch (e) { out = `refused: ${e}`; } out"#,
    )
    .await;
    let text = c.call("caught").await.text().await.unwrap();
    assert!(
        text.starts_with("refused") && text.contains("log: the line holds U+0000"),
        "{text}"
    );
    let error_of = |script: &'static str| {
        let c = c.clone();
        async move {
            let resp = c.call(script).await;
            assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR, "{script}");
            let id = resp.headers()["x-picloud-invocation-id"]
                .to_str()
                .unwrap()
                .to_owned();
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "script_error", "{body}");
            let path = format!("/invocations/{id}");
            let record = eventually(Duration::from_secs(30), || async {
                let resp = c.api(Method::GET, &path, None).await;
                if resp.status() != StatusCode::OK {
                    return None;
                }
                resp.json::<Value>().await.ok()
            })
            .await
            .expect("the invocation is recorded");
            assert_eq!(record["status"], "error", "{record}");
            assert!(!record.to_string().contains('\u{FFFD}'), "{record}");
            record
        }
    };
    deploy(&c, "printer", r#"print("x\x00y"); "after""#).await;
    let record = error_of("printer").await;
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("print: the line holds U+0000"), "{record}");
    deploy(&c, "last", r#"print("x\x00y")"#).await;
    let record = error_of("last").await;
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("print: the line holds U+0000"), "{record}");
    // `debug` writes a value's debug form, where NUL is already escaped.
    deploy(&c, "debugger", r#"debug("x\x00y"); "after""#).await;
    c.wait_for_body("debugger", "after").await;
    // A thrown message with NUL is stored saying so, each NUL as \u0000.
    deploy(&c, "thrower", r#"log("before"); throw "bad\x00thing";"#).await;
    let record = error_of("thrower").await;
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("held U+0000 (NUL)"), "{record}");
    assert!(error.contains(r"bad\u0000thing"), "{record}");
    assert_eq!(record["log"], "before\n", "{record}");

    deploy(
        &c,
        "badkey",
        r#"let out = "stored"; try { kv::set("k\x00", 1); } catch (e) { out = `refused: ${e}`; } out"#,
    )
    .await;
    let text = c.call("badkey").await.text().await.unwrap();
    assert!(
        text.contains("refused") && text.contains("may not contain NUL"),
        "{text}"
    );
    env.cleanup().await;
}
