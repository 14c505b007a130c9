//! Events, kv and async jobs end to end, on real NATS and Postgres.

use std::time::Duration;

use picloud_testkit::{Client, TestEnv, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Deploys `source` as `name`, failing the test on a refused deploy.
async fn deploy(c: &Client, name: &str, source: &str) {
    let resp = c.deploy(name, source).await;
    let status = resp.status();
    assert!(
        status.is_success(),
        "deploy {name}: {status} {}",
        resp.text().await.unwrap_or_default()
    );
}

/// Calls `/fn/{path}` until it answers `200 expected` (bounded).
async fn wait_json(c: &Client, path: &str, expected: Value, limit: Duration) {
    let last = std::sync::Mutex::new(Value::Null);
    let (last_seen, want) = (&last, &expected);
    let found = eventually(limit, || async move {
        let resp = c.call(path).await;
        if resp.status() != StatusCode::OK {
            return None;
        }
        let v: Value = resp.json().await.ok()?;
        *last_seen.lock().unwrap() = v.clone();
        (v == *want).then_some(())
    })
    .await;
    assert!(
        found.is_some(),
        "/fn/{path} never answered {expected}; last: {}",
        last.lock().unwrap()
    );
}

/// A test environment with a front (manager + gateway) and one executor,
/// and a client for it. The roles run until `env.cleanup()`.
async fn one_of_each() -> (TestEnv, Client) {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    (env, c)
}

/// Polls a public status URL until `done(status)` holds (bounded).
async fn status_until(c: &Client, location: &str, done: impl Fn(&Value) -> bool) -> Value {
    c.poll_status(location, Duration::from_secs(30), done)
        .await
        .unwrap_or_else(|| panic!("{location} never reached the expected state"))
}

/// Waits until the jobs stream holds no job (every job acked).
async fn no_jobs_queued(c: &Client, limit: Duration) {
    eventually(limit, || async {
        let v = c.get_json("/jobs").await;
        v.as_array()?.is_empty().then_some(())
    })
    .await
    .expect("every queued job is done");
}

async fn records(c: &Client, script: &str) -> Vec<Value> {
    c.get_json(&format!("/invocations?script={script}&limit=1000"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn an_emit_chain_runs_and_reads_as_a_tree() {
    let (env, c) = one_of_each().await;
    deploy(&c, "a", r#"emit("chain.b", #{ from: "a" }); "sent""#).await;
    deploy(
        &c,
        "b",
        r#"emit("chain.c", #{ from: "b", got: event.payload.from }); ()"#,
    )
    .await;
    deploy(
        &c,
        "c",
        r#"
        if event.kind == "http" {
            return #{ seen: kv::get("seen:chain.c"), trace: kv::get("trace:chain.c") };
        }
        // c also hears chain.b (it subscribes to chain.*): one key per topic.
        kv::set(`seen:${event.topic}`, #{ topic: event.topic, payload: event.payload, attempt: event.attempt });
        kv::set(`trace:${event.topic}`, event.trace_id);
        "#,
    )
    .await;
    c.subscribe("b", "chain.b", 3).await;
    c.subscribe("c", "chain.*", 3).await;

    let resp = c.call("a").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let root = resp.headers()["x-picloud-invocation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(resp.text().await.unwrap(), "sent");

    wait_json(
        &c,
        "c",
        json!({
            "seen": { "topic": "chain.c", "payload": { "from": "b", "got": "a" }, "attempt": 1 },
            "trace": root,
        }),
        Duration::from_secs(30),
    )
    .await;

    // a → b → c, with c also subscribed to chain.b directly (chain.*): the
    // tree shows b and c under a, and c under b.
    let tree = eventually(Duration::from_secs(20), || async {
        let t = c.get_json(&format!("/invocations/{root}")).await;
        let kids = t["children"].as_array()?;
        let b = kids.iter().find(|k| k["script"] == "b")?;
        let ok = kids.len() == 2
            && b["children"].as_array()?.len() == 1
            && b["children"][0]["status"] == "ok";
        ok.then_some(t)
    })
    .await
    .expect("the invocation tree a → (b → c, c)");
    assert_eq!(tree["script"], "a");
    assert_eq!(tree["trigger"], "http");
    let b = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["script"] == "b")
        .unwrap();
    assert_eq!(b["trigger"], "event");
    assert_eq!(b["parent_id"], root);
    assert_eq!(b["trace_id"], root);
    assert_eq!(b["children"][0]["script"], "c");
    assert_eq!(b["children"][0]["trace_id"], root);
    env.cleanup().await;
}

#[tokio::test]
async fn concurrent_read_modify_write_is_exact() {
    let mut env = TestEnv::new().await;
    env.config.workers = 4;
    // Ten concurrent calls of one script: above the default per-script cap
    // (workers - 1 per executor), which would answer some with 429.
    env.config.script_concurrency = 10;
    let front = env.start_front().await;
    let _ex1 = env.start_executor().await;
    let _ex2 = env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    deploy(
        &c,
        "burst",
        r#"for i in 0..100 { emit("tick", #{ i: i }); } "ok""#,
    )
    .await;
    deploy(
        &c,
        "counter",
        r#"
        let n = kv::get("n");
        if event.kind == "http" { return #{ n: n }; }
        if n == () { n = 0; }
        kv::set("n", n + 1);
        "#,
    )
    .await;
    c.subscribe("counter", "tick", 5).await;

    // 1,000 events, emitted by ten concurrent calls.
    let calls = (0..10).map(|_| {
        let c = c.clone();
        async move { c.call("burst").await.status() }
    });
    for status in futures::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK);
    }
    wait_json(
        &c,
        "counter",
        json!({ "n": 1000 }),
        Duration::from_secs(120),
    )
    .await;
    // And it stays there: once no job is queued (every one acked, so none
    // can be delivered again), the count is still 1000.
    no_jobs_queued(&c, Duration::from_secs(30)).await;
    wait_json(&c, "counter", json!({ "n": 1000 }), Duration::from_secs(5)).await;
    env.cleanup().await;
}

#[tokio::test]
async fn every_subscriber_of_a_topic_runs() {
    let (env, c) = one_of_each().await;
    deploy(&c, "src", r#"emit("orders.created", #{ id: 7 }); ()"#).await;
    for name in ["mail", "audit"] {
        deploy(
            &c,
            name,
            r#"
            if event.kind == "http" { return #{ got: kv::get("got") }; }
            kv::set("got", event.payload.id);
            "#,
        )
        .await;
    }
    c.subscribe("mail", "orders.created", 3).await;
    c.subscribe("audit", "orders.>", 3).await;
    assert_eq!(c.call("src").await.status(), StatusCode::NO_CONTENT);
    wait_json(&c, "mail", json!({ "got": 7 }), Duration::from_secs(30)).await;
    wait_json(&c, "audit", json!({ "got": 7 }), Duration::from_secs(30)).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_failing_script_changes_nothing() {
    let (env, c) = one_of_each().await;
    deploy(
        &c,
        "oops",
        r#"
        if request.query.read == "1" { return #{ k: kv::get("k") }; }
        kv::set("k", 1);
        emit("oops.done", #{});
        throw "boom";
        "#,
    )
    .await;
    deploy(&c, "listener", r#"kv::set("ran", true);"#).await;
    c.subscribe("listener", "oops.>", 1).await;
    let resp = c.call("oops").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let resp = c.call("oops?read=1").await;
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({ "k": null }));
    // The emit was discarded: the listener never ran for it. A marker
    // emitted after the failure reaches the listener; by then an emit of
    // the failed call, committed before it, would have too.
    deploy(&c, "marker", r#"emit("oops.marker", #{}); ()"#).await;
    assert_eq!(c.call("marker").await.status(), StatusCode::NO_CONTENT);
    eventually(Duration::from_secs(30), || async {
        (!records(&c, "listener").await.is_empty()).then_some(())
    })
    .await
    .expect("the listener runs for the marker");
    no_jobs_queued(&c, Duration::from_secs(30)).await;
    assert_eq!(
        records(&c, "listener").await.len(),
        1,
        "the listener ran for the failed call's emit too"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_failing_subscriber_is_retried_dead_lettered_and_replayed() {
    let (env, c) = one_of_each().await;
    deploy(&c, "pub", r#"emit("work", #{ n: 1 }); ()"#).await;
    deploy(
        &c,
        "worker",
        r#"log(`attempt ${event.attempt}`); throw "not yet";"#,
    )
    .await;
    c.subscribe("worker", "work", 3).await;
    c.call("pub").await;

    let letters = eventually(Duration::from_secs(30), || async {
        let v = c.get_json("/dead-letters").await;
        (v.as_array()?.len() == 1).then_some(v)
    })
    .await
    .expect("one dead letter");
    let letter = &letters[0];
    assert_eq!(letter["script"], "worker");
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["topic"], "work");
    assert!(
        letter["error"].as_str().unwrap().contains("not yet"),
        "{letter}"
    );
    let rec = c
        .get_json(&format!(
            "/invocations/{}",
            letter["invocation_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rec["attempt"], 3);
    assert_eq!(rec["status"], "error");
    // Every attempt is there, not only the last.
    let attempts = rec["attempts"].as_array().expect("attempts");
    let numbers: Vec<&Value> = attempts.iter().map(|a| &a["attempt"]).collect();
    assert_eq!(numbers, [&json!(1), &json!(2), &json!(3)], "{rec}");
    for a in attempts {
        assert_eq!(a["status"], "error", "{a}");
        assert!(a["error"].as_str().unwrap().contains("not yet"), "{a}");
        assert!(a["started_at"].as_str().unwrap().ends_with('Z'), "{a}");
    }

    // Fixed, then replayed: it runs once more and succeeds.
    deploy(
        &c,
        "worker",
        r#"
        if event.kind == "http" { return #{ done: kv::get("done") }; }
        kv::set("done", event.payload.n);
        "#,
    )
    .await;
    let id = letter["id"].as_str().unwrap();
    c.post_json(&format!("/dead-letters/{id}/replay"), json!({}))
        .await;
    wait_json(&c, "worker", json!({ "done": 1 }), Duration::from_secs(30)).await;
    // The replay's attempt follows the three failed ones.
    let inv = letter["invocation_id"].as_str().unwrap();
    let rec = eventually(Duration::from_secs(10), || async {
        let r = c.get_json(&format!("/invocations/{inv}")).await;
        (r["status"] == "ok").then_some(r)
    })
    .await
    .expect("the replay is recorded");
    let trail: Vec<(Value, Value)> = rec["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["attempt"].clone(), a["status"].clone()))
        .collect();
    assert_eq!(
        trail,
        [
            (json!(1), json!("error")),
            (json!(2), json!("error")),
            (json!(3), json!("error")),
            (json!(1), json!("ok")),
        ],
        "{rec}"
    );
    let again = c
        .api(
            reqwest::Method::POST,
            &format!("/dead-letters/{id}/replay"),
            None,
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    env.cleanup().await;
}

#[tokio::test]
async fn async_http_is_accepted_then_answers_at_its_status_url() {
    let (env, c) = one_of_each().await;
    deploy(
        &c,
        "slowish",
        r#"
        let n = kv::get("calls");
        kv::set("calls", if n == () { 1 } else { n + 1 });
        #{ echo: request.json, calls: kv::get("calls") }
        "#,
    )
    .await;
    let post = |key: Option<&'static str>| {
        let c = c.clone();
        async move {
            let mut req = c
                .http
                .post(format!("{}/fn/slowish", c.base))
                .header("prefer", "respond-async")
                .json(&json!({ "x": 1 }));
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            req.send().await.unwrap()
        }
    };
    let resp = post(Some("key-1")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let id = body["invocation_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/status/{id}"));
    assert_eq!(body["existing"], false);

    // The status URL needs no token; it ends with the script's response.
    let done = status_until(&c, &location, |v| v["status"] == "ok").await;
    assert_eq!(done["done"], true);
    assert_eq!(done["response"]["status"], 200);
    let answer: Value = serde_json::from_str(done["response"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer, json!({ "echo": { "x": 1 }, "calls": 1 }));

    // The same idempotency key: the same invocation, not a second run.
    let resp = post(Some("key-1")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let again: Value = resp.json().await.unwrap();
    assert_eq!(again["invocation_id"], id.as_str());
    assert_eq!(again["existing"], true);
    // A different key is a new call.
    let resp = post(Some("key-2")).await;
    let other: Value = resp.json().await.unwrap();
    assert_ne!(other["invocation_id"], id.as_str());

    // A call that keeps failing ends as a dead letter, and only then is done.
    deploy(&c, "fails", r#"throw "no""#).await;
    let resp = c
        .http
        .post(format!("{}/fn/fails", c.base))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let failed = status_until(&c, &location, |v| v["done"] == true).await;
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["attempt"], 5);
    assert_eq!(failed["response"], Value::Null);

    // Unknown ids (and sync invocations' ids) are not shown.
    let unknown = c
        .http
        .get(format!("{}/status/{}", c.base, uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    env.cleanup().await;
}

#[tokio::test]
async fn kv_is_per_script_and_lists_by_prefix() {
    let (env, c) = one_of_each().await;
    deploy(
        &c,
        "one",
        r#"
        kv::set("user:1", #{ name: "ann" });
        kv::set("user:2", "bob");
        kv::set("other", 3);
        kv::delete("user:2");
        #{ users: kv::list("user:"), all: kv::list(""), one: kv::get("user:1") }
        "#,
    )
    .await;
    deploy(
        &c,
        "two",
        r#"#{ seen: kv::get("user:1"), keys: kv::list("") }"#,
    )
    .await;
    let v: Value = c.call("one").await.json().await.unwrap();
    assert_eq!(
        v,
        json!({ "users": ["user:1"], "all": ["other", "user:1"], "one": { "name": "ann" } })
    );
    let v: Value = c.call("two").await.json().await.unwrap();
    assert_eq!(v, json!({ "seen": null, "keys": [] }));
    // Bad input is a clear error.
    deploy(&c, "bad", r#"kv::set("", 1)"#).await;
    let resp = c.call("bad").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    deploy(&c, "badtopic", r#"emit("a.*", 1)"#).await;
    assert_eq!(
        c.call("badtopic").await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    env.cleanup().await;
}

#[tokio::test]
async fn subscriptions_api_validates() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    deploy(&c, "s", "()").await;
    let bad = c
        .api(
            reqwest::Method::POST,
            "/subscriptions",
            Some(json!({ "script": "s", "topic": "a.>.b" })),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let err: Value = bad.json().await.unwrap();
    assert_eq!(err["error"]["code"], "invalid_topic");
    let missing = c
        .api(
            reqwest::Method::POST,
            "/subscriptions",
            Some(json!({ "script": "nope", "topic": "a" })),
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let sub = c.subscribe("s", "a.*", 2).await;
    assert_eq!(sub["max_attempts"], 2);
    let list = c.get_json("/subscriptions").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let id = sub["id"].as_str().unwrap();
    let del = c
        .api(
            reqwest::Method::DELETE,
            &format!("/subscriptions/{id}"),
            None,
        )
        .await;
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let del = c
        .api(
            reqwest::Method::DELETE,
            &format!("/subscriptions/{id}"),
            None,
        )
        .await;
    assert_eq!(del.status(), StatusCode::NOT_FOUND);
    // Deleting a script takes its subscriptions with it.
    c.subscribe("s", "b", 1).await;
    let gone = c.api(reqwest::Method::DELETE, "/scripts/s", None).await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    assert_eq!(c.get_json("/subscriptions").await, json!([]));
    env.cleanup().await;
}

#[tokio::test]
async fn invocation_records_past_retention_are_pruned() {
    let env = TestEnv::new().await;
    let store = picloud_store::Store::connect(env.config.database_url().unwrap())
        .await
        .unwrap();
    let record = |age_hours: i64| picloud_core::InvocationRecord {
        id: uuid::Uuid::new_v4(),
        script: "s".into(),
        version: 1,
        trigger: picloud_core::Trigger::Http,
        status: picloud_core::InvocationStatus::Ok,
        http_status: Some(200),
        started_at: chrono::Utc::now() - chrono::Duration::hours(age_hours),
        duration_us: 1,
        log: String::new(),
        error: None,
        executor: "x".into(),
        trace_id: uuid::Uuid::new_v4(),
        attempt: 1,
        parent_id: None,
        response: None,
        public: false,
    };
    let (old, young) = (record(50), record(1));
    store
        .insert_invocations(&[old.clone(), young.clone()])
        .await
        .unwrap();
    let deleted = store.prune(Duration::from_secs(48 * 3600)).await.unwrap();
    assert_eq!(deleted, 1);
    assert!(store.get_invocation(old.id).await.unwrap().is_none());
    assert!(store.get_invocation(young.id).await.unwrap().is_some());
    store.close().await;
    env.cleanup().await;
}
