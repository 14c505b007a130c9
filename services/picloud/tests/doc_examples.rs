//! Every Rhai example in the README and in `docs/` runs (issue #13), so none
//! can rot: each ```` ```rhai ```` block is deployed as a script of its own
//! on a real PiCloud and called once.
//!
//! By default a block must deploy and its call must answer 2xx. An HTML
//! comment on the line before the fence (invisible when rendered) says more:
//!
//! ```text
//! <!-- example {"method": "POST", "query": "?who=ann", "body": {"a": 1},
//!      "status": 201, "contains": "\"sum\":3", "secrets": {"k": "v"},
//!      "modules": {"greet": "fn hi(x) { x }"}, "compile_only": "why"} -->
//! ```
//!
//! `compile_only` (with the reason) is for an example that reaches outside
//! (a third-party host): it must still deploy.

use std::path::{Path, PathBuf};

use picloud_testkit::{Client, TestEnv};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    method: Option<String>,
    query: Option<String>,
    body: Option<Value>,
    status: Option<u16>,
    contains: Option<String>,
    #[serde(default)]
    secrets: serde_json::Map<String, Value>,
    #[serde(default)]
    modules: serde_json::Map<String, Value>,
    compile_only: Option<String>,
}

#[derive(Debug)]
struct Example {
    /// `file:line` of the fence, for failure messages.
    at: String,
    source: String,
    spec: Spec,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The markdown files whose examples are checked: the README and `docs/`.
fn markdown_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn examples_in(path: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(path).expect("read markdown");
    let name = path
        .strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start() != "```rhai" {
            i += 1;
            continue;
        }
        let at = format!("{name}:{}", i + 1);
        let spec = i
            .checked_sub(1)
            .and_then(|p| lines[p].trim().strip_prefix("<!-- example "))
            .map(|rest| {
                let json = rest.strip_suffix("-->").unwrap_or_else(|| {
                    panic!("{at}: the example comment must end on its line with -->")
                });
                serde_json::from_str(json.trim())
                    .unwrap_or_else(|e| panic!("{at}: bad example comment: {e}"))
            })
            .unwrap_or_default();
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim_start() == "```")
            .unwrap_or_else(|| panic!("{at}: unclosed rhai block"));
        out.push(Example {
            at,
            source: lines[i + 1..end].join("\n"),
            spec,
        });
        i = end + 1;
    }
    out
}

async fn check(c: &Client, n: usize, ex: &Example) -> Result<(), String> {
    let at = &ex.at;
    for (name, value) in &ex.spec.secrets {
        let resp = c
            .api(
                Method::PUT,
                &format!("/secrets/{name}"),
                Some(json!({ "value": value })),
            )
            .await;
        if !resp.status().is_success() {
            return Err(format!("{at}: secret {name}: {}", resp.status()));
        }
    }
    for (name, source) in &ex.spec.modules {
        let resp = c
            .api(
                Method::PUT,
                &format!("/modules/{name}"),
                Some(json!({ "source": source })),
            )
            .await;
        if !resp.status().is_success() {
            return Err(format!("{at}: module {name}: {}", resp.status()));
        }
    }
    let script = format!("doc-example-{n}");
    let resp = c.deploy(&script, &ex.source).await;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("{at}: does not deploy: {status} {body}"));
    }
    if ex.spec.compile_only.is_some() {
        return Ok(());
    }
    let method = Method::from_bytes(ex.spec.method.as_deref().unwrap_or("GET").as_bytes())
        .map_err(|e| format!("{at}: bad method: {e}"))?;
    let url = format!(
        "{}/fn/{script}{}",
        c.base,
        ex.spec.query.as_deref().unwrap_or("")
    );
    let mut req = c.http.request(method, url);
    match &ex.spec.body {
        Some(Value::String(s)) => req = req.body(s.clone()),
        Some(v) => req = req.json(v),
        None => {}
    }
    let resp = req.send().await.map_err(|e| format!("{at}: call: {e}"))?;
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-picloud-invocation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap_or_default();
    let status_ok = match ex.spec.status {
        Some(want) => status == want,
        None => (200..300).contains(&status),
    };
    if !status_ok {
        return Err(format!(
            "{at}: answered {status} {body}{}",
            why(c, id).await
        ));
    }
    if let Some(want) = &ex.spec.contains
        && !body.contains(want.as_str())
    {
        return Err(format!("{at}: answer {body:?} lacks {want:?}"));
    }
    Ok(())
}

/// The recorded error of invocation `id`, for a failure message.
async fn why(c: &Client, id: Option<String>) -> String {
    let Some(id) = id else { return String::new() };
    let record = picloud_testkit::eventually(std::time::Duration::from_secs(10), || async {
        let resp = c
            .api(Method::GET, &format!("/invocations/{id}"), None)
            .await;
        let r: Value = resp.json().await.ok()?;
        r["error"].as_str().map(str::to_owned)
    })
    .await;
    format!("; recorded error: {}", record.unwrap_or_default())
}

#[tokio::test]
async fn every_rhai_example_in_the_docs_runs() {
    let examples: Vec<Example> = markdown_files()
        .iter()
        .flat_map(|p| examples_in(p))
        .collect();
    assert!(
        examples.len() >= 10,
        "found only {} examples: is the extraction broken?",
        examples.len()
    );
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    let mut failures = Vec::new();
    for (n, ex) in examples.iter().enumerate() {
        if let Err(e) = check(&c, n, ex).await {
            failures.push(e);
        }
    }
    env.cleanup().await;
    assert!(
        failures.is_empty(),
        "{} of {} doc examples fail:\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n")
    );
}

/// The extraction itself: a block with and without a spec comment.
#[test]
fn examples_are_extracted_with_their_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let md = dir.path().join("x.md");
    std::fs::write(
        &md,
        "text\n```rhai\n1 + 1\n```\n<!-- example {\"status\": 201} -->\n```rhai\nlet a = 1;\na\n```\n```sh\nnot rhai\n```\n",
    )
    .expect("write");
    let found = examples_in(&md);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].source, "1 + 1");
    assert_eq!(found[0].spec.status, None);
    assert_eq!(found[1].source, "let a = 1;\na");
    assert_eq!(found[1].spec.status, Some(201));
}
