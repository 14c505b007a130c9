//! Custom routes of scripts (issue #13), end to end on a real front,
//! executor, Postgres and NATS: parameters and catch-alls reach
//! `request.params`, `*` answers every method, conflicts are 409 naming the
//! holder, bad routes 400 naming the route, deleting and rolling back
//! change what is served, a second gateway follows, and the CLI's
//! `deploy --route`.

#[path = "support/cli.rs"]
mod support;

use std::time::Duration;

use picloud_testkit::{Client, TestEnv, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::User;

/// Answers with what it was called with.
const ECHO: &str =
    r#"#{ script: "SCRIPT", method: request.method, path: request.path, params: request.params }"#;

fn echo(script: &str) -> String {
    ECHO.replace("SCRIPT", script)
}

async fn setup() -> (TestEnv, Client) {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let client = Client::new(&front.base, &env.token);
    (env, client)
}

async fn deploy(c: &Client, name: &str, routes: &[&str]) -> reqwest::Response {
    c.deploy_json(name, json!({ "source": echo(name), "routes": routes }))
        .await
}

async fn deploy_ok(c: &Client, name: &str, routes: &[&str]) -> Value {
    let resp = deploy(c, name, routes).await;
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    assert!(status.is_success(), "deploy {name}: {status} {body}");
    body
}

/// One request to a custom path: status and JSON body (Null when none).
async fn send(c: &Client, method: Method, path: &str) -> (StatusCode, Value) {
    let resp = c
        .http
        .request(method, format!("{}{path}", c.base))
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Polls `method path` until it answers `want` (a route change travels
/// through the bus to every gateway); returns the last body.
async fn until(c: &Client, method: Method, path: &str, want: StatusCode) -> Value {
    let (method, c) = (&method, c);
    eventually(Duration::from_secs(15), || async move {
        let (status, body) = send(c, method.clone(), path).await;
        (status == want).then_some(body)
    })
    .await
    .unwrap_or_else(|| panic!("{method} {path} never answered {want}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_capture_params_and_catch_alls() {
    let (env, c) = setup().await;
    let v = deploy_ok(&c, "users", &["get /users/:id", "* /files/*path"]).await;
    assert_eq!(v["routes"], json!(["GET /users/:id", "* /files/*path"]));
    deploy_ok(&c, "me", &["GET /users/me"]).await;

    let body = until(&c, Method::GET, "/users/42", StatusCode::OK).await;
    assert_eq!(
        body,
        json!({ "script": "users", "method": "GET", "path": "/users/42", "params": { "id": "42" } })
    );
    // A static segment beats a parameter, whoever holds it.
    let body = until(&c, Method::GET, "/users/me", StatusCode::OK).await;
    assert_eq!(body["script"], "me");
    // `*` answers every method; a catch-all takes the rest, without its
    // leading slash, percent-decoded.
    for method in [Method::DELETE, Method::PUT, Method::GET] {
        let (status, body) = send(&c, method.clone(), "/files/a/b%20c.txt").await;
        assert_eq!(status, StatusCode::OK, "{method}: {body}");
        assert_eq!(body["method"], method.as_str());
        assert_eq!(body["params"], json!({ "path": "a/b c.txt" }));
        assert_eq!(body["path"], "/files/a/b c.txt");
    }
    // Another method, a bare catch-all, an unknown path: today's 404 JSON.
    for (method, path) in [
        (Method::POST, "/users/42"),
        (Method::GET, "/files/"),
        (Method::GET, "/nothing/here"),
    ] {
        let (status, body) = send(&c, method.clone(), path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    // An async call on a custom route keeps its params in the job.
    let resp = c
        .http
        .post(format!("{}/users/7", c.base))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("async call");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "POST is not routed");
    let resp = c
        .http
        .put(format!("{}/files/x/y", c.base))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("async call");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let status = c
        .poll_status(&location, Duration::from_secs(30), |v| v["done"] == true)
        .await
        .expect("the job ends");
    let body: Value =
        serde_json::from_str(status["response"]["body"].as_str().expect("body")).expect("json");
    assert_eq!(body["params"], json!({ "path": "x/y" }), "{status}");
    assert_eq!(body["path"], "/files/x/y");

    // `/fn/{name}` keeps working, with no params.
    let (status, body) = send(&c, Method::GET, "/fn/users/x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["params"], json!({}));
    assert_eq!(body["path"], "/x");

    // The API lists them.
    let list = c.get_json("/scripts").await;
    assert_eq!(list[1]["name"], "users");
    assert_eq!(
        list[1]["routes"],
        json!(["GET /users/:id", "* /files/*path"])
    );
    let one = c.get_json("/scripts/me").await;
    assert_eq!(one["routes"], json!(["GET /users/me"]));
    assert_eq!(one["active"]["routes"], json!(["GET /users/me"]));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_routes_are_400_naming_the_route() {
    let (env, c) = setup().await;
    let long = format!("GET /{}", "x".repeat(300));
    let many: Vec<String> = (0..33).map(|i| format!("GET /r{i}")).collect();
    let cases: Vec<(Value, &str)> = vec![
        (json!(["GET"]), "\"GET\""),
        (json!(["GET users"]), "\"GET users\""),
        (json!(["G3T /a"]), "\"G3T /a\""),
        (json!(["GET /a/:"]), "\"GET /a/:\""),
        (json!(["GET /a/*rest/b"]), "catch-all"),
        (json!(["GET /a//b"]), "\"GET /a//b\""),
        (json!(["GET /a/{id}"]), "\"GET /a/{id}\""),
        (json!(["GET /a/:id/:id"]), "appears twice"),
        (json!(["GET /fn/x"]), "\"GET /fn/x\""),
        (json!(["POST /api/v1/scripts"]), "/api belongs to PiCloud"),
        (json!(["GET /status/x"]), "\"GET /status/x\""),
        (json!([long]), "longer than"),
        (json!(many), "at most 32"),
        (json!(["GET /u/:id", "GET /u/:name"]), "overlaps"),
    ];
    for (routes, says) in cases {
        let resp = c
            .deploy_json("bad", json!({ "source": "1", "routes": routes }))
            .await;
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert_eq!(status, StatusCode::BAD_REQUEST, "{routes}: {body}");
        assert_eq!(body["error"]["code"], "invalid_route", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{routes}: {message}");
    }
    // Not a list of strings: a clear 400 too.
    for routes in [json!("GET /a"), json!([1]), json!(null)] {
        let resp = c
            .deploy_json("bad", json!({ "source": "1", "routes": routes }))
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{routes}");
        let body: Value = resp.json().await.expect("json");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    // Nothing was stored.
    let resp = c.api(Method::GET, "/scripts/bad", None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_409_naming_the_holder() {
    let (env, c) = setup().await;
    deploy_ok(&c, "a", &["GET /users/:id"]).await;
    for (route, held) in [
        ("GET /users/:name", "GET /users/:id"),
        ("* /users/:x", "GET /users/:id"),
        ("GET /users/*rest", "GET /users/:id"),
    ] {
        let resp = deploy(&c, "b", &["POST /ok", route]).await;
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert_eq!(status, StatusCode::CONFLICT, "{route}: {body}");
        assert_eq!(body["error"]["code"], "route_conflict");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(route) && message.contains(held) && message.contains("\"a\""),
            "{message}"
        );
        assert_eq!(body["error"]["details"]["held_by"]["script"], "a");
        assert_eq!(body["error"]["details"]["held_by"]["route"], held);
    }
    assert_eq!(
        c.api(Method::GET, "/scripts/b", None).await.status(),
        StatusCode::NOT_FOUND,
        "a refused deploy stores nothing"
    );
    // Other methods and static segments beside it are fine.
    deploy_ok(&c, "b", &["POST /users/:name", "GET /users/me"]).await;
    // A script redeploying replaces its own routes.
    deploy_ok(&c, "a", &["GET /users/:name"]).await;
    let resp = deploy(&c, "c", &["GET /users/:id"]).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_and_delete_frees_routes() {
    let (env, c) = setup().await;
    deploy_ok(&c, "a", &["GET /old/:x"]).await;
    deploy_ok(&c, "a", &["GET /new/:x"]).await;
    until(&c, Method::GET, "/new/1", StatusCode::OK).await;
    until(&c, Method::GET, "/old/1", StatusCode::NOT_FOUND).await;

    let resp = c
        .api(
            Method::POST,
            "/scripts/a/rollback",
            Some(json!({ "version": 1 })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = until(&c, Method::GET, "/old/1", StatusCode::OK).await;
    assert_eq!(body["params"], json!({ "x": "1" }));
    until(&c, Method::GET, "/new/1", StatusCode::NOT_FOUND).await;

    // Version 2's route was taken meanwhile: rolling forward is refused.
    deploy_ok(&c, "b", &["GET /new/:y"]).await;
    let resp = c
        .api(
            Method::POST,
            "/scripts/a/rollback",
            Some(json!({ "version": 2 })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["details"]["held_by"]["script"], "b", "{body}");
    assert_eq!(c.get_json("/scripts/a").await["active_version"], 1);

    // Deleting frees the route: 404, and another script may take it.
    let resp = c.api(Method::DELETE, "/scripts/a", None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    until(&c, Method::GET, "/old/1", StatusCode::NOT_FOUND).await;
    deploy_ok(&c, "c", &["GET /old/:z"]).await;
    let body = until(&c, Method::GET, "/old/2", StatusCode::OK).await;
    assert_eq!(body["script"], "c");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_follows_route_changes() {
    let mut env = TestEnv::new().await;
    let one = env.start_front().await;
    let two = env.start_front().await;
    env.start_executor().await;
    let (c1, c2) = (
        Client::new(&one.base, &env.token),
        Client::new(&two.base, &env.token),
    );
    deploy_ok(&c1, "a", &["GET /hello/:who"]).await;
    let body = until(&c2, Method::GET, "/hello/world", StatusCode::OK).await;
    assert_eq!(body["params"]["who"], "world");
    deploy_ok(&c1, "a", &["GET /bye/:who"]).await;
    until(&c2, Method::GET, "/bye/world", StatusCode::OK).await;
    until(&c2, Method::GET, "/hello/world", StatusCode::NOT_FOUND).await;
    c1.api(Method::DELETE, "/scripts/a", None).await;
    until(&c2, Method::GET, "/bye/world", StatusCode::NOT_FOUND).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploy_with_routes_prints_their_urls() {
    let (env, user) = User::with_env().await;
    let file = user.file("api.rhai", &echo("api"));
    let run = user
        .ok(&[
            "deploy",
            &file,
            "--route",
            "GET /hello/:who",
            "--route",
            "* /any/*rest",
        ])
        .await;
    let base = &user.base;
    assert!(
        run.stdout.contains(&format!("GET {base}/hello/:who")),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(&format!("* {base}/any/*rest")),
        "{run:?}"
    );
    let c = Client::new(base, &user.token);
    let body = until(&c, Method::GET, "/hello/you", StatusCode::OK).await;
    assert_eq!(body["params"]["who"], "you");

    let v = user
        .json(&["deploy", &file, "--route", "GET /hello/:who"])
        .await;
    assert_eq!(v[0]["routes"], json!([format!("GET {base}/hello/:who")]));
    let ls = user.ok(&["ls"]).await;
    assert!(ls.stdout.contains("GET /hello/:who"), "{ls:?}");
    let v = user.json(&["ls"]).await;
    assert_eq!(v[0]["routes"], json!(["GET /hello/:who"]));
    let versions = user.ok(&["versions", "api"]).await;
    assert!(versions.stdout.contains("* /any/*rest"), "{versions:?}");
    let show = user.ok(&["show", "api"]).await;
    assert!(
        show.stdout.contains(&format!("GET {base}/hello/:who")),
        "{show:?}"
    );

    // A bad route: the server's code and message, exit 1.
    let run = user
        .expect(1, &["deploy", &file, "--route", "GET /fn/x"])
        .await;
    assert!(run.stderr.contains("invalid_route"), "{run:?}");
    assert!(run.stderr.contains("GET /fn/x"), "{run:?}");
    // A folder takes no --route.
    let dir = user.home.path().to_str().unwrap().to_owned();
    let run = user.expect(1, &["deploy", &dir, "--route", "GET /a"]).await;
    assert!(run.stderr.contains("--route"), "{run:?}");
    env.cleanup().await;
}
