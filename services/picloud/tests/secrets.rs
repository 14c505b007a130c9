//! Secrets end to end through `picloud up`: a script that logs, prints and
//! throws with a secret; then the API's answers, the process's output and
//! the whole data directory are searched for the value.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use picloud_supervise::Signal;
use picloud_testkit::{Client, eventually, free_port};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn a_secret_never_leaves_the_script_except_by_its_own_response() {
    let data = tempfile::Builder::new()
        .prefix("picloud-secrets-")
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = data.path().to_str().unwrap().to_owned();
    let out_path = data.path().with_extension("out");
    let port = free_port();
    let secret = format!("pcS3CRET{}", picloud_core::Uuid::new_v4().simple());
    let mut child = Command::new(env!("CARGO_BIN_EXE_picloud"))
        .arg("up")
        .env_remove("PICLOUD_DATABASE_URL")
        .env_remove("PICLOUD_NATS_URL")
        .env_remove("PICLOUD_ADMIN_TOKEN")
        .env_remove("PICLOUD_SECRETS_KEY")
        .env_remove("PICLOUD_CONFIG")
        .env_remove("RUST_LOG")
        .env("PICLOUD_DATA_DIR", &data_dir)
        .env("PICLOUD_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&out_path)
                .unwrap(),
        ))
        .spawn()
        .unwrap();

    let base = format!("http://127.0.0.1:{port}");
    let token_path = format!("{data_dir}/admin-token");
    let up = eventually(Duration::from_secs(120), || async {
        let token = std::fs::read_to_string(&token_path).ok()?;
        let ok = reqwest::get(format!("{base}/readyz")).await.ok()?.status() == StatusCode::OK;
        ok.then_some(token)
    })
    .await;
    let token = up.expect("picloud up serves");
    let c = Client::new(&base, &token);

    let resp = c
        .api(
            Method::PUT,
            "/secrets/api_key",
            Some(json!({ "value": secret })),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let mut answers = Vec::new();
    let list = c.get_json("/secrets").await;
    assert_eq!(list[0]["name"], "api_key");
    answers.push(list.to_string());

    c.deploy_ok(
        "leaky",
        r#"let k = secret("api_key");
           log(k); print(`key=${k}`); debug(k);
           if request.query.fail == "1" { throw `failed with ${k}`; }
           `length ${k.len()}`"#,
    )
    .await;
    c.wait_for_body("leaky", &format!("length {}", secret.len()))
        .await;
    let resp = c.call("leaky?fail=1").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    answers.push(resp.text().await.unwrap());
    let resp = c.call("leaky?fail=0&missing=1").await;
    answers.push(resp.text().await.unwrap());

    let records = eventually(Duration::from_secs(20), || async {
        let v = c.get_json("/invocations?script=leaky&limit=100").await;
        let failed = v.as_array()?.iter().any(|r| r["status"] == "error");
        failed.then_some(v)
    })
    .await
    .expect("records arrive");
    let failed = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "error")
        .unwrap();
    assert_eq!(failed["log"], "***\nkey=***\n\"***\"\n");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("failed with ***")
    );
    let id = failed["id"].as_str().unwrap();
    answers.push(records.to_string());
    answers.push(c.get_json(&format!("/invocations/{id}")).await.to_string());
    answers.push(c.get_json("/scripts/leaky").await.to_string());
    for a in &answers {
        assert!(!a.contains(&secret), "an API answer holds the secret: {a}");
    }

    let resp = c.api(Method::DELETE, "/secrets/api_key", None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = c.call("leaky").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);

    picloud_supervise::signal(child.id(), Signal::SIGTERM);
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "picloud did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let output = std::fs::read_to_string(&out_path).unwrap();
    assert!(output.contains("PiCloud is up"), "output captured");
    assert!(
        !output.contains(&secret),
        "the process output holds the secret"
    );
    // Every file under the data directory: Postgres, NATS's store, keys.
    let grep = Command::new("grep")
        .args(["-r", "-a", "-l", "-F", &secret, &data_dir])
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&grep.stdout);
    assert!(found.trim().is_empty(), "the secret is on disk in: {found}");
    let _ = std::fs::remove_file(&out_path);
}
