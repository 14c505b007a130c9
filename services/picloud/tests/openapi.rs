//! The OpenAPI document at `/api/v1/openapi.json`, fetched from a running
//! manager + gateway: it covers every route the routers register (a new
//! endpoint without docs fails here), every method it lists is served and
//! every other method answers a JSON 405; its error schema lists exactly
//! the codes of `ErrorCode`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use picloud_testkit::TestEnv;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Every path literal passed to `.route(` in the servers' sources.
fn registered_paths() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in ["services", "libs"] {
        collect_rs(&root.join(dir), &mut files);
    }
    let mut paths = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let literal = rest.trim_start();
            if let Some(body) = literal.strip_prefix('"') {
                let end = body.find('"').unwrap();
                // `{*rest}` is documented as `{rest}` (OpenAPI has no catch-all).
                paths.insert(body[..end].replace("{*", "{"));
            }
        }
    }
    paths
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            // Only server code: no tests, no build output.
            if name != "tests" && name != "target" {
                collect_rs(&path, out);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            out.push(path);
        }
    }
}

/// A concrete URL path for a documented template.
fn fill(template: &str) -> String {
    template
        .replace("{name}", "probe")
        .replace("{id}", "00000000-0000-0000-0000-000000000000")
        .replace("{version}", "1")
        .replace("{rest}", "a/b")
}

#[tokio::test]
async fn document_covers_every_route_and_method() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let http = reqwest::Client::new();

    // Public: no token.
    let resp = http
        .get(format!("{}/api/v1/openapi.json", front.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let documented: BTreeMap<String, BTreeSet<String>> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(path, item)| {
            let methods = METHODS
                .iter()
                .filter(|m| item.get(m.to_lowercase()).is_some())
                .map(|m| m.to_string())
                .collect();
            (path.clone(), methods)
        })
        .collect();

    // Every registered route is documented (nested ones under /api/v1).
    let registered = registered_paths();
    assert!(registered.contains("/scripts/{name}"), "{registered:?}");
    for path in &registered {
        let nested = format!("/api/v1{path}");
        assert!(
            documented.contains_key(path) || documented.contains_key(&nested),
            "the route {path} is not in the OpenAPI document"
        );
    }

    // Security: a bearer scheme, required by the admin API only.
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["admin_token"], serde_json::json!([]));
    assert_eq!(
        doc["paths"]["/fn/{name}"]["post"]["security"],
        serde_json::json!([{}])
    );

    // The error schema and its codes.
    let codes: BTreeSet<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = picloud_http::ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(codes, expected);
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["required"], serde_json::json!(["error"]));
    assert_eq!(
        error["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let detail = &doc["components"]["schemas"]["ErrorDetail"];
    assert_eq!(detail["required"], serde_json::json!(["code", "message"]));
    assert_eq!(
        detail["properties"]["code"]["$ref"],
        "#/components/schemas/ErrorCode"
    );
    assert!(detail["properties"]["details"].is_object(), "{detail}");
    // Every operation documents its error answers with that schema.
    let delete = &doc["paths"]["/api/v1/scripts/{name}"]["delete"]["responses"];
    for status in ["204", "400", "401", "404", "500", "503"] {
        assert!(delete.get(status).is_some(), "{status}: {delete}");
    }
    assert_eq!(
        delete["404"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );

    // Live: each documented method is served; every other one is a JSON 405.
    let metrics_served = http
        .get(format!("{}/metrics", front.base))
        .send()
        .await
        .unwrap()
        .status()
        != StatusCode::NOT_FOUND;
    for (path, methods) in &documented {
        if path == "/metrics" && !metrics_served {
            // Documented ahead of the build that serves it.
            continue;
        }
        let url = format!("{}{}", front.base, fill(path));
        for method in METHODS {
            let resp = http
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
                .bearer_auth(&env.token)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let allow = resp
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value =
                serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null);
            if methods.contains(method) {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                let message = body["error"]["message"].as_str().unwrap_or("");
                assert!(
                    !message.starts_with("no endpoint at") && message != "no such API endpoint",
                    "{method} {path}: {message}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented"
                );
                assert_eq!(
                    body["error"]["code"], "method_not_allowed",
                    "{method} {path}"
                );
                assert!(allow.is_some(), "{method} {path}: no Allow header");
            }
        }
    }
    env.cleanup().await;
}
