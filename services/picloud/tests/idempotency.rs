//! Issue 12 §4: an `Idempotency-Key` returns an earlier invocation only to
//! the same request, and async jobs do not keep the caller's credentials.
//! On real NATS and Postgres.

use std::time::Duration;

use picloud_core::{InvocationRecord, InvocationStatus, Trigger, Uuid};
use picloud_store::{Store, Submitted};
use picloud_testkit::{Client, TestEnv, eventually};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "Bearer s3cret-t0ken";
const COOKIE: &str = "session=c00kie-value";
const PROXY: &str = "Basic pr0xy-credential";

async fn one_of_each() -> (TestEnv, Client) {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    (env, c)
}

async fn store(env: &TestEnv) -> Store {
    Store::connect(env.config.database_url().expect("test database url"))
        .await
        .expect("test database")
}

/// An async call of `/fn/{path}`.
fn post_async(c: &Client, path: &str) -> RequestBuilder {
    c.http
        .post(format!("{}/fn/{path}", c.base))
        .header("prefer", "respond-async")
}

/// Sends `req`, expects 202, returns the invocation id.
async fn accepted(req: RequestBuilder) -> (String, bool) {
    let resp = req.send().await.expect("async call");
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    (
        body["invocation_id"].as_str().expect("id").to_owned(),
        body["existing"].as_bool().expect("existing"),
    )
}

/// Polls the public status URL until the call is done.
async fn done(c: &Client, id: &str) -> Value {
    c.poll_status(&format!("/status/{id}"), Duration::from_secs(30), |v| {
        v["done"] == true
    })
    .await
    .unwrap_or_else(|| panic!("{id} never finished"))
}

fn with_credentials(req: RequestBuilder) -> RequestBuilder {
    req.header("authorization", TOKEN)
        .header("cookie", COOKIE)
        .header("proxy-authorization", PROXY)
        .header("x-other", "kept")
}

/// Asserts `text` holds none of the caller's credentials.
fn no_credentials(what: &str, text: &str) {
    for secret in ["s3cret-t0ken", "c00kie-value", "pr0xy-credential"] {
        assert!(!text.contains(secret), "{what} holds {secret}: {text}");
    }
}

#[tokio::test]
async fn a_key_returns_the_invocation_only_to_the_same_request() {
    let (env, c) = one_of_each().await;
    c.deploy_ok("order", "request.body").await;
    let original = || {
        post_async(&c, "order/items?x=1")
            .header("idempotency-key", "k-1")
            .header("authorization", TOKEN)
            .body("{\"n\":1}")
    };
    let (first, existing) = accepted(original()).await;
    assert!(!existing);
    // The same request again (header order and unrelated headers do not
    // count): the same invocation, not a second run.
    let (again, existing) = accepted(original().header("x-trace", "retry")).await;
    assert_eq!(again, first);
    assert!(existing);

    // The same key with any other request: 422, and nothing about the first.
    let others = [
        ("body", original().body("{\"n\":2}")),
        (
            "path",
            post_async(&c, "order/other?x=1")
                .header("idempotency-key", "k-1")
                .header("authorization", TOKEN)
                .body("{\"n\":1}"),
        ),
        (
            "query",
            post_async(&c, "order/items?x=2")
                .header("idempotency-key", "k-1")
                .header("authorization", TOKEN)
                .body("{\"n\":1}"),
        ),
        (
            "method",
            c.http
                .put(format!("{}/fn/order/items?x=1", c.base))
                .header("prefer", "respond-async")
                .header("idempotency-key", "k-1")
                .header("authorization", TOKEN)
                .body("{\"n\":1}"),
        ),
        (
            "another caller",
            post_async(&c, "order/items?x=1")
                .header("idempotency-key", "k-1")
                .header("authorization", "Bearer someone-else")
                .body("{\"n\":1}"),
        ),
        (
            "no credentials",
            post_async(&c, "order/items?x=1")
                .header("idempotency-key", "k-1")
                .body("{\"n\":1}"),
        ),
        ("a cookie", original().header("cookie", COOKIE)),
    ];
    for (what, req) in others {
        let resp = req.send().await.expect("call");
        let status = resp.status();
        let headers = format!("{:?}", resp.headers());
        let body = resp.text().await.expect("body");
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json error");
        assert_eq!(v["error"]["code"], "idempotency_key_reused", "{what}");
        assert!(!body.contains(&first), "{what}: the body leaks the id");
        assert!(!headers.contains(&first), "{what}: a header leaks the id");
        assert!(!body.contains("status_url"), "{what}: {body}");
    }
    // The original request still gets its invocation; it ran once.
    let (again, _) = accepted(original()).await;
    assert_eq!(again, first);
    let records = c.get_json("/invocations?script=order&limit=100").await;
    assert_eq!(records.as_array().expect("records").len(), 1, "{records}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_key_stored_without_a_fingerprint_matches_no_request() {
    let (env, c) = one_of_each().await;
    c.deploy_ok("legacy", "1").await;
    // A key taken before fingerprints were stored.
    let old = Uuid::new_v4();
    let pool = sqlx::PgPool::connect(env.config.database_url().expect("url"))
        .await
        .expect("db");
    sqlx::query("INSERT INTO idempotency_keys (script, key, invocation_id) VALUES ($1, $2, $3)")
        .bind("legacy")
        .bind("old-key")
        .bind(old)
        .execute(&pool)
        .await
        .expect("insert old key");
    let resp = post_async(&c, "legacy")
        .header("idempotency-key", "old-key")
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = resp.text().await.expect("body");
    assert!(!body.contains(&old.to_string()), "{body}");
    pool.close().await;
    env.cleanup().await;
}

fn queued(script: &str) -> InvocationRecord {
    let id = Uuid::new_v4();
    InvocationRecord {
        id,
        script: script.to_owned(),
        version: 1,
        trigger: Trigger::Http,
        status: InvocationStatus::Queued,
        http_status: None,
        started_at: chrono::Utc::now(),
        duration_us: 0,
        log: String::new(),
        error: None,
        executor: String::new(),
        trace_id: id,
        attempt: 1,
        parent_id: None,
        response: None,
        public: true,
    }
}

/// The draft's 409: a retry while the first submission with the key is
/// still being accepted (its job not yet durable) is refused at once, not
/// queued behind it and not accepted twice.
#[tokio::test]
async fn a_key_still_being_accepted_is_a_conflict() {
    let (env, c) = one_of_each().await;
    c.deploy_ok("slow", "1").await;
    let store = store(&env).await;
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    let first = queued("slow");
    let first_id = first.id;
    let holder = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .submit_async(Some("k"), Some("fp-1"), &first, None, async || {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Ok(())
                })
                .await
        })
    };
    started.await.expect("the first submission is publishing");
    let second = tokio::time::timeout(
        Duration::from_secs(3),
        store.submit_async(Some("k"), Some("fp-1"), &queued("slow"), None, async || {
            Ok(())
        }),
    )
    .await
    .expect("a concurrent submission answers at once")
    .expect("store")
    .expect("publish");
    assert_eq!(second, Submitted::InFlight);
    // Through the gateway: 409 with Retry-After, and no id of the first.
    let resp = post_async(&c, "slow")
        .header("idempotency-key", "k")
        .send()
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = resp.text().await.expect("body");
    assert!(body.contains("idempotency_key_in_use"), "{body}");
    assert!(!body.contains(&first_id.to_string()), "{body}");
    release.send(()).expect("release");
    let first = holder
        .await
        .expect("join")
        .expect("store")
        .expect("publish");
    assert_eq!(first, Submitted::New(first_id));
    // Once accepted: the same request gets it, another one does not.
    let same = store
        .submit_async(Some("k"), Some("fp-1"), &queued("slow"), None, async || {
            Err("must not publish".to_owned())
        })
        .await
        .expect("store")
        .expect("publish");
    assert_eq!(same, Submitted::Existing(first_id));
    let other = store
        .submit_async(Some("k"), Some("fp-2"), &queued("slow"), None, async || {
            Err("must not publish".to_owned())
        })
        .await
        .expect("store")
        .expect("publish");
    assert_eq!(other, Submitted::KeyReused);
    env.cleanup().await;
}

/// The script logs and returns the headers it sees.
const ECHO: &str = r#"log(`headers: ${request.headers}`); #{ headers: request.headers }"#;

#[tokio::test]
async fn the_script_of_an_async_job_does_not_see_credentials() {
    let (env, c) = one_of_each().await;
    c.deploy_ok("echo", ECHO).await;
    let (id, _) = accepted(with_credentials(post_async(&c, "echo"))).await;
    let status = done(&c, &id).await;
    assert_eq!(status["status"], "ok", "{status}");
    let body: Value = serde_json::from_str(status["response"]["body"].as_str().expect("body"))
        .expect("json body");
    let seen = &body["headers"];
    assert_eq!(seen["x-other"], "kept", "{seen}");
    for h in ["authorization", "cookie", "proxy-authorization"] {
        assert!(seen.get(h).is_none(), "the job holds {h}: {seen}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn the_record_of_an_async_job_holds_no_credentials() {
    let (env, c) = one_of_each().await;
    c.deploy_ok("echo", ECHO).await;
    let (id, _) = accepted(with_credentials(post_async(&c, "echo"))).await;
    done(&c, &id).await;
    // Its log and its stored response (what the status URL shows).
    let record = c.get_json(&format!("/invocations/{id}")).await;
    assert!(record["log"].as_str().expect("log").contains("kept"));
    no_credentials("the record", &record.to_string());
    env.cleanup().await;
}

#[tokio::test]
async fn a_dead_letter_holds_no_credentials() {
    let (env, c) = one_of_each().await;
    c.deploy_ok("fails", r#"throw `no: ${request.headers}`"#)
        .await;
    let (id, _) = accepted(with_credentials(post_async(&c, "fails"))).await;
    let status = done(&c, &id).await;
    assert_eq!(status["status"], "error", "{status}");
    let store = store(&env).await;
    let letters = store
        .list_dead_letters(Some("fails"), 10)
        .await
        .expect("dead letters");
    assert_eq!(letters.len(), 1);
    let job = serde_json::to_string(&letters[0].job).expect("job json");
    assert!(job.contains("x-other"), "{job}");
    no_credentials("the dead letter", &job);
    no_credentials("the dead letter's error", &letters[0].error);
    let records = c.get_json("/invocations?script=fails&limit=100").await;
    no_credentials("the failed records", &records.to_string());
    env.cleanup().await;
}

/// A guard, not a change: the sync path queues nothing and records no
/// request, so its record holds no credentials (the script does not log
/// them here), while the script sees every header.
#[tokio::test]
async fn a_sync_call_sees_credentials_and_records_none() {
    let (env, c) = one_of_each().await;
    c.deploy_ok("plain", "request.headers").await;
    let resp = with_credentials(c.http.get(format!("{}/fn/plain", c.base)))
        .send()
        .await
        .expect("sync call");
    let sync_id = resp.headers()["x-picloud-invocation-id"]
        .to_str()
        .expect("id")
        .to_owned();
    let seen: Value = resp.json().await.expect("json");
    assert_eq!(seen["authorization"], TOKEN, "sync calls see everything");
    // Records reach Postgres through the bus: wait for it.
    let path = format!("{}/api/v1/invocations/{sync_id}", c.base);
    let (c2, path) = (&c, &path);
    let record: Value = eventually(Duration::from_secs(10), || async move {
        let resp = c2.http.get(path).bearer_auth(&c2.token).send().await.ok()?;
        resp.status().is_success().then_some(())?;
        resp.json().await.ok()
    })
    .await
    .expect("the sync record is stored");
    no_credentials("the sync record", &record.to_string());
    env.cleanup().await;
}

#[tokio::test]
async fn keep_credentials_keeps_them_for_that_script() {
    let (env, c) = one_of_each().await;
    let resp = c
        .deploy_json(
            "keeper",
            json!({ "source": ECHO, "keep_credentials": true }),
        )
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let version: Value = resp.json().await.expect("json");
    assert_eq!(version["keep_credentials"], true, "{version}");
    c.deploy_ok("dropper", ECHO).await;

    let (id, _) = accepted(with_credentials(post_async(&c, "keeper"))).await;
    let status = done(&c, &id).await;
    let body: Value = serde_json::from_str(status["response"]["body"].as_str().expect("body"))
        .expect("json body");
    assert_eq!(body["headers"]["authorization"], TOKEN, "{body}");
    assert_eq!(body["headers"]["cookie"], COOKIE, "{body}");
    assert_eq!(body["headers"]["proxy-authorization"], PROXY, "{body}");

    // The setting is per script version: another script still drops them.
    let (id, _) = accepted(with_credentials(post_async(&c, "dropper"))).await;
    let status = done(&c, &id).await;
    no_credentials("dropper's job", &status.to_string());
    let detail = c.get_json("/scripts/dropper").await;
    assert_eq!(detail["active"]["keep_credentials"], false, "{detail}");
    env.cleanup().await;
}
