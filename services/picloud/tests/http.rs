//! Outbound HTTP from scripts, end to end: a script calls a local server
//! that the test allow-lists; private and metadata addresses stay denied.

use axum::Router;
use axum::routing::any;
use picloud_testkit::{Client, TestEnv};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Echoes the request as JSON, with a status chosen by `?status=`.
async fn echo_server() -> String {
    let app = Router::new().route(
        "/{*path}",
        any(|req: axum::extract::Request| async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let status = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("status="))
                .and_then(|s| s.parse().ok())
                .unwrap_or(200u16);
            let echo = json!({
                "method": parts.method.as_str(),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "x-key": parts.headers.get("x-key").map(|v| v.to_str().unwrap()),
                "content-type": parts.headers.get("content-type").map(|v| v.to_str().unwrap()),
                "body": String::from_utf8_lossy(&body),
            });
            (
                StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/json")],
                echo.to_string(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn scripts_call_allowed_hosts_and_are_denied_private_ones() {
    let upstream = echo_server().await;
    let mut env = TestEnv::new().await;
    env.config.http_allow = "127.0.0.1".into();
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);

    let source = format!(
        r#"let r = http::post("{upstream}/hook", #{{ n: 41 }}, #{{ headers: #{{ "x-key": "k1" }}, query: #{{ a: "b" }} }});
           let missing = http::get("{upstream}/missing?status=404");
           #{{ status: r.status, echo: r.json, missing: missing.status, ct: r.headers["content-type"] }}"#
    );
    c.deploy_ok("caller", &source).await;
    let resp = picloud_testkit::eventually(std::time::Duration::from_secs(10), || async {
        let r = c.call("caller").await;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await
    .expect("the caller answers");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["missing"], 404, "a non-2xx status is a result");
    assert_eq!(v["ct"], "application/json");
    assert_eq!(v["echo"]["method"], "POST");
    assert_eq!(v["echo"]["path"], "/hook");
    assert_eq!(v["echo"]["query"], "a=b");
    assert_eq!(v["echo"]["x-key"], "k1");
    assert_eq!(v["echo"]["content-type"], "application/json");
    assert_eq!(v["echo"]["body"], r#"{"n":41}"#);

    c.deploy_ok(
        "prober",
        r#"let out = [];
           for url in ["http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[::ffff:10.1.2.3]/", "file:///etc/passwd"] {
               try { http::get(url); out.push("reached"); } catch (e) { out.push(e); }
           }
           out"#,
    )
    .await;
    c.wait_for_body(
        "prober",
        r#"["request denied by policy: private","request denied by policy: metadata","request denied by policy: ipv4-mapped private","request denied by policy: scheme"]"#,
    )
    .await;
    env.cleanup().await;
}
