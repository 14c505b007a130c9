//! The admin API for scripts and the `/fn` contract, end to end on real
//! NATS and Postgres (one isolated database and NATS prefix per test).

use picloud_testkit::{Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn setup() -> (TestEnv, Client) {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let client = Client::new(&front.base, &env.token);
    (env, client)
}

fn content_type(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn each_result_kind_maps_to_its_http_answer() {
    let (env, c) = setup().await;
    let cases: &[(&str, &str, u16, Option<&str>, &str)] = &[
        (
            "text",
            r#""hello""#,
            200,
            Some("text/plain; charset=utf-8"),
            "hello",
        ),
        (
            "map",
            r#"#{ a: 1, b: "x" }"#,
            200,
            Some("application/json"),
            r#"{"a":1,"b":"x"}"#,
        ),
        (
            "array",
            "[1, 2, 3]",
            200,
            Some("application/json"),
            "[1,2,3]",
        ),
        ("unit", "let x = 1;", 204, None, ""),
        ("number", "40 + 2", 200, Some("application/json"), "42"),
        (
            "custom",
            r#"response(201, #{ ok: true }, #{ "x-custom": "yes" })"#,
            201,
            Some("application/json"),
            r#"{"ok":true}"#,
        ),
        (
            "html",
            r#"response(418, "<p>teapot</p>", #{ "content-type": "text/html" })"#,
            418,
            Some("text/html"),
            "<p>teapot</p>",
        ),
    ];
    for (name, source, ..) in cases {
        let resp = c.deploy(name, source).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "deploy {name}");
    }
    for (name, _, status, ct, body) in cases {
        let resp = c.call(name).await;
        assert_eq!(resp.status().as_u16(), *status, "{name}");
        assert_eq!(content_type(&resp).as_deref(), *ct, "{name}");
        assert!(resp.headers().contains_key("x-picloud-invocation-id"));
        if *name == "custom" {
            assert_eq!(resp.headers()["x-custom"], "yes");
        }
        assert_eq!(resp.text().await.unwrap(), *body, "{name}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn request_is_visible_to_the_script() {
    let (env, c) = setup().await;
    c.deploy_ok(
        "echo",
        r#"#{ method: request.method, path: request.path, q: request.query.q,
              h: request.headers["x-test"], n: request.json.n, kind: event.kind }"#,
    )
    .await;
    let resp = c
        .http
        .post(format!("{}/fn/echo/a/b?q=1", c.base))
        .header("x-test", "yes")
        .json(&json!({ "n": 5 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({ "method": "POST", "path": "/a/b", "q": "1", "h": "yes", "n": 5, "kind": "http" })
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_redeploy_is_served_without_restart() {
    let (env, c) = setup().await;
    c.deploy_ok("app", r#""v1""#).await;
    c.wait_for_body("app", "v1").await;
    let resp = c.deploy("app", r#""v2""#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["version"], 2);
    c.wait_for_body("app", "v2").await;
    env.cleanup().await;
}

#[tokio::test]
async fn rollback_serves_the_older_version() {
    let (env, c) = setup().await;
    c.deploy_ok("app", r#""one""#).await;
    c.deploy_ok("app", r#""two""#).await;
    c.wait_for_body("app", "two").await;

    let resp = c
        .api(
            Method::POST,
            "/scripts/app/rollback",
            Some(json!({ "version": 1 })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.wait_for_body("app", "one").await;
    let script = c.get_json("/scripts/app").await;
    assert_eq!(script["active_version"], 1);
    assert_eq!(script["latest_version"], 2);
    assert_eq!(script["active"]["source"], r#""one""#);

    let resp = c
        .api(
            Method::POST,
            "/scripts/app/rollback",
            Some(json!({ "version": 9 })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "not_found");

    let versions = c.get_json("/scripts/app/versions").await;
    let numbers: Vec<_> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1]);
    let v1 = c.get_json("/scripts/app/versions/1").await;
    assert_eq!(v1["source"], r#""one""#);
    env.cleanup().await;
}

#[tokio::test]
async fn a_compile_error_is_a_400_and_the_running_version_stays() {
    let (env, c) = setup().await;
    c.deploy_ok("app", r#""good""#).await;
    c.wait_for_body("app", "good").await;

    let resp = c.deploy("app", "let x = 1;\nlet y = ;").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "compile_error");
    assert_eq!(err["error"]["details"], json!({ "line": 2, "column": 9 }));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2, column 9"),
        "{err}"
    );

    let resp = c.call("app").await;
    assert_eq!(resp.text().await.unwrap(), "good");
    let versions = c.get_json("/scripts/app/versions").await;
    assert_eq!(versions.as_array().unwrap().len(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn the_admin_api_needs_the_right_token() {
    let (env, c) = setup().await;
    let no_token = c
        .http
        .get(format!("{}/api/v1/scripts", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    let err: Value = no_token.json().await.unwrap();
    assert_eq!(err["error"]["code"], "unauthorized");

    let wrong = Client::new(&c.base, "not-the-token");
    let resp = wrong.deploy("x", r#""x""#).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The rejected deploy changed nothing.
    let resp = c.api(Method::GET, "/scripts/x", None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = c.api(Method::GET, "/scripts", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    env.cleanup().await;
}

#[tokio::test]
async fn unknown_scripts_and_bad_input_get_clear_errors() {
    let (env, c) = setup().await;
    let resp = c.call("nope").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(content_type(&resp).as_deref(), Some("application/json"));
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "not_found");

    for bad in ["Hello", "a.b", "-x", &"x".repeat(64)] {
        let resp = c.deploy(bad, r#""x""#).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "invalid_name", "{bad}");
    }

    let resp = c
        .http
        .put(format!("{}/api/v1/scripts/ok", c.base))
        .bearer_auth(&c.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body")
    );

    let resp = c
        .deploy_json("ok", json!({ "source": "1", "limits": { "bogus": 1 } }))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let resp = c.api(Method::GET, "/scripts/missing/versions", None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = c.api(Method::GET, "/nothing-here", None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    env.cleanup().await;
}

#[tokio::test]
async fn deleting_a_script_removes_its_endpoint() {
    let (env, c) = setup().await;
    c.deploy_ok("gone", r#""here""#).await;
    c.wait_for_body("gone", "here").await;
    let resp = c.api(Method::DELETE, "/scripts/gone", None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let gone = picloud_testkit::eventually(std::time::Duration::from_secs(10), || async {
        (c.call("gone").await.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(gone.is_some(), "deleted script still answers");
    let resp = c.api(Method::DELETE, "/scripts/gone", None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let list = c.get_json("/scripts").await;
    assert_eq!(list, json!([]));

    // The name can be deployed again; versions never repeat, so no executor
    // can serve the deleted code from its cache.
    let resp = c.deploy("gone", r#""back""#).await;
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["version"], 2);
    c.wait_for_body("gone", "back").await;
    let versions = c.get_json("/scripts/gone/versions").await;
    assert_eq!(versions.as_array().unwrap().len(), 1);
    env.cleanup().await;
}

#[tokio::test]
async fn limits_in_the_deploy_body_are_clamped_and_versioned() {
    let (env, c) = setup().await;
    let resp = c
        .deploy_json(
            "capped",
            json!({ "source": "1", "limits": { "wall_time_ms": 999_999_999u64, "max_operations": 500 } }),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["limits"]["wall_time_ms"], 60_000);
    assert_eq!(v["limits"]["max_operations"], 500);
    env.cleanup().await;
}
