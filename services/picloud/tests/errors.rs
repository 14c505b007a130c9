//! Errors and timestamps as a user meets them: JSON 404/405 on every path
//! and method of every router (combined, manager alone, gateway alone),
//! messages that name things as the user wrote them, and RFC 3339 UTC
//! timestamps with `Z` in the API and in what scripts see.

use std::time::Duration;

use picloud_core::Shutdown;
use picloud_testkit::{Client, TestEnv, eventually, free_port};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// `method url` answers `status` with a JSON error of `code`.
async fn assert_json_error(
    http: &reqwest::Client,
    token: &str,
    method: Method,
    url: &str,
    status: StatusCode,
    code: &str,
) -> Value {
    let resp = http
        .request(method.clone(), url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), status, "{method} {url}");
    if status == StatusCode::METHOD_NOT_ALLOWED {
        assert!(resp.headers().contains_key("allow"), "{method} {url}");
    }
    let text = resp.text().await.unwrap();
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{method} {url}: not JSON: {text:?}"));
    assert_eq!(body["error"]["code"], code, "{method} {url}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    body
}

/// Waits until `base/healthz` answers.
async fn wait_up(base: &str) {
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await
    .expect("the role serves");
}

/// Starts a role alone (cluster mode) on a port of its own; its base URL.
async fn alone<F>(env: &TestEnv, run: impl FnOnce(picloud_core::Config) -> F) -> String
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut config = env.config.clone();
    config.listen = ([127, 0, 0, 1], free_port()).into();
    let base = format!("http://{}", config.listen);
    tokio::spawn(run(config));
    wait_up(&base).await;
    base
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json_on_every_router() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    let manager = alone(&env, move |c| picloud_manager::run(c, s)).await;
    let s = shutdown.clone();
    let gateway = alone(&env, move |c| picloud_gateway::run(c, s)).await;
    let http = reqwest::Client::new();
    let (nf, na) = (StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED);
    let (get, post, put, patch, delete) = (
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    );
    let b = &front.base;
    // (method, URL, status, code, message when it matters)
    let cases = [
        // manager + gateway on one port, as `picloud up` serves them.
        (
            get.clone(),
            format!("{b}/nowhere"),
            nf,
            "not_found",
            // The gateway takes every other path for custom routes.
            Some(r#"no route matches GET "/nowhere""#),
        ),
        (
            get.clone(),
            format!("{b}/api/v1/nowhere"),
            nf,
            "not_found",
            None,
        ),
        (
            delete.clone(),
            format!("{b}/healthz"),
            na,
            "method_not_allowed",
            None,
        ),
        (
            put.clone(),
            format!("{b}/status/x"),
            na,
            "method_not_allowed",
            None,
        ),
        (
            post.clone(),
            format!("{b}/api/v1/scripts"),
            na,
            "method_not_allowed",
            Some("/api/v1/scripts does not take POST"),
        ),
        (
            patch,
            format!("{b}/api/v1/scripts/x/versions"),
            na,
            "method_not_allowed",
            None,
        ),
        // The manager alone.
        (
            get.clone(),
            format!("{manager}/fn/hello"),
            nf,
            "not_found",
            None,
        ),
        (
            post,
            format!("{manager}/readyz"),
            na,
            "method_not_allowed",
            None,
        ),
        (
            delete,
            format!("{manager}/api/v1/secrets"),
            na,
            "method_not_allowed",
            None,
        ),
        // The gateway alone.
        (
            get.clone(),
            format!("{gateway}/api/v1/scripts"),
            nf,
            "not_found",
            None,
        ),
        (get, format!("{gateway}/"), nf, "not_found", None),
        (
            put,
            format!("{gateway}/healthz"),
            na,
            "method_not_allowed",
            None,
        ),
    ];
    for (method, url, status, code, message) in cases {
        let body = assert_json_error(&http, &env.token, method, &url, status, code).await;
        if let Some(m) = message {
            assert_eq!(body["error"]["message"], m, "{url}");
        }
    }
    shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn messages_name_things_as_users_write_them() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("hello", r#""hi""#).await;

    let resp = c
        .api(
            Method::POST,
            "/scripts/hello/rollback",
            Some(json!({"version": 7})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "script \"hello\" has no version 7"
    );

    // A bad cron expression names the field and its value.
    for (cron, says) in [
        ("61 * * * *", "the minute field \"61\" is not valid"),
        ("0 25 * * *", "the hour field \"25\" is not valid"),
        (
            "0 3 * * Funday",
            "the day-of-week field \"Funday\" is not valid",
        ),
        ("*/0 0 3 * * *", "the second field \"*/0\" is not valid"),
    ] {
        let resp = c
            .api(
                Method::POST,
                "/schedules",
                Some(json!({"script": "hello", "cron": cron})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{cron}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_cron", "{cron}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("invalid cron expression \"{cron}\": {says}")),
            "{cron}: {message}"
        );
    }

    // Names are quoted as written (JSON quoting), not in Rust's debug form.
    let resp = c.api(Method::GET, "/scripts/e%CC%81", None).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("invalid name \"e\u{301}\""),
        "{message}"
    );
    assert!(!message.contains("\\u{"), "{message}");

    // A whole number written as 7.0 is 7 (JSON Schema's integer).
    let resp = c
        .api(
            Method::POST,
            "/scripts/hello/rollback",
            Some(json!({"version": 1.0})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    env.cleanup().await;
}

fn assert_z(what: &str, v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("{what}: {v}"));
    assert!(
        s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "{what}: {s}"
    );
}

#[tokio::test]
async fn timestamps_are_rfc3339_utc_with_z() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("tick", "log(event.scheduled_at); log(now());")
        .await;
    let script = c.get_json("/scripts/tick").await;
    assert_z("created_at", &script["created_at"]);
    assert_z("active.created_at", &script["active"]["created_at"]);
    let schedule = c
        .post_json(
            "/schedules",
            json!({"script": "tick", "cron": "* * * * * *"}),
        )
        .await;
    assert_z("schedule created_at", &schedule["created_at"]);
    for t in schedule["next_runs"].as_array().unwrap() {
        assert_z("next_runs", t);
    }
    let record = eventually(Duration::from_secs(30), || async {
        let list = c.get_json("/invocations?script=tick").await;
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["trigger"] == "cron" && r["status"] == "ok")
            .cloned()
    })
    .await
    .expect("a cron invocation within 30 s");
    assert_z("started_at", &record["started_at"]);
    // The script saw `event.scheduled_at` and `now()` in the same form.
    let lines: Vec<&str> = record["log"].as_str().unwrap().lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in lines {
        assert_z("script log", &Value::from(line));
    }
    env.cleanup().await;
}
