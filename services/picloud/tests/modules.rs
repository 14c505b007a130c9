//! Shared modules end to end: deploy, import, pinning, cycles, failures.

use picloud_testkit::{Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn put_module(c: &Client, name: &str, source: &str) -> reqwest::Response {
    c.api(
        Method::PUT,
        &format!("/modules/{name}"),
        Some(json!({ "source": source })),
    )
    .await
}

#[tokio::test]
async fn scripts_import_the_module_versions_they_were_deployed_with() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);

    let resp = put_module(&c, "punct", r#"export const MARK = "!";"#).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = put_module(
        &c,
        "greet",
        r#"import "punct" as p; fn hi(x) { `hi ${x}${p::MARK}` }"#,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["imports"], json!(["punct"]));

    let resp = c
        .deploy("hello", r#"import "greet" as g; g::hi("ann")"#)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["modules"], json!({ "greet": 1, "punct": 1 }));
    c.wait_for_body("hello", "hi ann!").await;

    // A new module version does not change the deployed script...
    let resp = put_module(&c, "greet", r#"fn hi(x) { `hello ${x}` }"#).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(c.call("hello").await.text().await.unwrap(), "hi ann!");
    // ...until it is redeployed.
    c.deploy_ok("hello", r#"import "greet" as g; g::hi("ann")"#)
        .await;
    c.wait_for_body("hello", "hello ann").await;

    let list = c.get_json("/modules").await;
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].clone())
        .collect();
    assert_eq!(names, [json!("greet"), json!("punct")]);
    let greet = c.get_json("/modules/greet").await;
    assert_eq!(greet["version"], 2);
    assert_eq!(greet["source"], r#"fn hi(x) { `hello ${x}` }"#);
    env.cleanup().await;
}

#[tokio::test]
async fn missing_modules_and_cycles_are_refused_at_deploy() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);

    let resp = c.deploy("s", r#"import "nowhere" as n; 1"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "import_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"nowhere\"")
    );

    assert_eq!(
        put_module(&c, "a", "fn f() { 1 }").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        put_module(&c, "b", r#"import "a" as a; fn g() { 2 }"#)
            .await
            .status(),
        StatusCode::CREATED
    );
    let resp = put_module(&c, "a", r#"import "b" as b; fn f() { 1 }"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["message"], "import cycle: a → b → a");
    let resp = put_module(&c, "selfish", r#"import "selfish" as me; 1"#).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = put_module(&c, "broken", "fn (").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "compile_error");
    // Nothing was stored by the refused deploys.
    let a = c.get_json("/modules/a").await;
    assert_eq!(a["version"], 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_failing_module_does_not_leak_to_the_caller() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    put_module(&c, "boom", r#"throw "module internals: 10.0.0.7";"#).await;
    c.deploy_ok("uses", r#"import "boom" as b; "unreachable""#)
        .await;
    let resp = picloud_testkit::eventually(std::time::Duration::from_secs(10), || async {
        let r = c.call("uses").await;
        (r.status() != StatusCode::NOT_FOUND).then_some(r)
    })
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("10.0.0.7"), "{text}");
    env.cleanup().await;
}
