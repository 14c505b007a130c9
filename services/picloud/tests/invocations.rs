//! Invocation paths: executors, failures, limits and the invocation log.

use std::time::{Duration, Instant};

use picloud_testkit::{Client, TestEnv, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn records_for(c: &Client, script: &str, want: usize) -> Vec<Value> {
    eventually(Duration::from_secs(20), || async {
        let v = c
            .get_json(&format!("/invocations?script={script}&limit=1000"))
            .await;
        let list = v.as_array().unwrap().clone();
        (list.len() >= want).then_some(list)
    })
    .await
    .unwrap_or_else(|| panic!("fewer than {want} invocation records for {script}"))
}

#[tokio::test]
async fn no_executor_is_an_immediate_503() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("lonely", r#""hi""#).await;
    // The route is known (the deploy answered), but nobody runs scripts.
    let started = Instant::now();
    let resp = c.call("lonely").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    // "No responders" comes back at once, not after the 5 s wall-time wait.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "no_executor");

    // An executor joining later serves without anything restarting.
    env.start_executor().await;
    c.wait_for_body("lonely", "hi").await;
    env.cleanup().await;
}

#[tokio::test]
async fn two_executors_both_take_work() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let a = env.start_executor().await;
    let b = env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("work", r#""done""#).await;
    c.wait_for_body("work", "done").await;
    let calls = 60;
    for _ in 0..calls {
        let resp = c.call("work").await;
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let records = records_for(&c, "work", calls).await;
    let by = |id: &str| records.iter().filter(|r| r["executor"] == id).count();
    assert!(
        by(&a.id) > 0 && by(&b.id) > 0,
        "a={} b={}",
        by(&a.id),
        by(&b.id)
    );
    assert_eq!(by(&a.id) + by(&b.id), records.len());

    // One executor gone: the other serves everything.
    a.stop().await;
    for i in 0..10 {
        let sent = std::time::Instant::now();
        let resp = c.call("work").await;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::OK,
            "call {i} after the stop, answered after {:?}: {body}",
            sent.elapsed()
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn invocations_are_recorded_with_log_and_operator_only_errors() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("chatty", r#"log("one"); print("two"); "ok""#)
        .await;
    c.deploy_ok(
        "broken",
        r#"log("before"); throw "the db password is hunter2";"#,
    )
    .await;
    c.wait_for_body("chatty", "ok").await;

    let resp = c.call("broken").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let id = resp.headers()["x-picloud-invocation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("hunter2"),
        "public error leaks the thrown value: {text}"
    );
    let err: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(err["error"]["code"], "script_error");
    assert!(err["error"]["message"].as_str().unwrap().contains(&id));

    let ok = records_for(&c, "chatty", 1).await;
    assert_eq!(ok[0]["status"], "ok");
    assert_eq!(ok[0]["http_status"], 200);
    assert_eq!(ok[0]["log"], "one\ntwo\n");
    assert_eq!(ok[0]["trigger"], "http");
    assert_eq!(ok[0]["version"], 1);

    let record = eventually(Duration::from_secs(20), || async {
        let resp = c
            .api(Method::GET, &format!("/invocations/{id}"), None)
            .await;
        if resp.status() == StatusCode::OK {
            resp.json::<Value>().await.ok()
        } else {
            None
        }
    })
    .await
    .expect("the failed invocation is recorded");
    assert_eq!(record["status"], "error");
    // The record keeps the status the caller got, and its one attempt.
    assert_eq!(record["http_status"], 500, "{record}");
    assert_eq!(record["attempts"].as_array().unwrap().len(), 1, "{record}");
    assert_eq!(record["attempts"][0]["http_status"], 500, "{record}");
    assert_eq!(record["log"], "before\n");
    assert!(record["error"].as_str().unwrap().contains("hunter2"));
    assert!(record["duration_us"].as_u64().is_some());

    let errors = c.get_json("/invocations?status=error").await;
    assert_eq!(errors.as_array().unwrap().len(), 1);
    assert_eq!(errors[0]["script"], "broken");
    let resp = c.api(Method::GET, "/invocations?status=weird", None).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = c.api(Method::GET, "/invocations?limit=0", None).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = c.api(Method::GET, "/invocations/not-a-uuid", None).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = c
        .api(Method::GET, &format!("/invocations/{}", uuid_v4()), None)
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    env.cleanup().await;
}

fn uuid_v4() -> String {
    picloud_core::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_broken_limit_ends_only_that_invocation() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_json(
        "spin",
        json!({ "source": "loop {}", "limits": { "wall_time_ms": 300, "max_operations": 1_000_000_000u64 } }),
    )
    .await;
    c.deploy_ok("fine", r#""fine""#).await;
    c.wait_for_body("fine", "fine").await;

    let resp = c.call("spin").await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "limit_exceeded");
    assert_eq!(err["error"]["message"], "wall time limit of 300ms exceeded");
    assert_eq!(c.call("fine").await.text().await.unwrap(), "fine");
    let spin = records_for(&c, "spin", 1).await;
    assert_eq!(spin[0]["status"], "limit_exceeded");
    env.cleanup().await;
}

#[tokio::test]
async fn an_oversized_request_body_is_a_413() {
    let mut env = TestEnv::new().await;
    env.config.max_request_bytes = 1024;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("sink", "request.body.len()").await;
    c.wait_for_body("sink", "0").await;
    let resp = c
        .http
        .post(format!("{}/fn/sink", c.base))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "payload_too_large");
    let resp = c
        .http
        .post(format!("{}/fn/sink", c.base))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "1000");
    env.cleanup().await;
}

#[tokio::test]
async fn a_saturated_executor_answers_503_instead_of_queueing_without_bound() {
    let mut env = TestEnv::new().await;
    env.config.workers = 1;
    env.config.queue_depth = 1;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    // Six scripts: one script's calls past its cap wait in its own queue
    // (see fair.rs), so only many scripts together can fill the pool.
    for i in 0..6 {
        c.deploy_json(
            &format!("busy{i}"),
            json!({ "source": "loop {}", "limits": { "wall_time_ms": 1500, "max_operations": 1_000_000_000u64 } }),
        )
        .await;
    }
    c.deploy_ok("quick", r#""quick""#).await;
    c.wait_for_body("quick", "quick").await;

    // One runs, one waits in the queue, the rest are turned away at once.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let resp = c.call(&format!("busy{i}")).await;
                let status = resp.status();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut saturated = 0;
    for call in calls {
        let (status, body) = call.await.unwrap();
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                saturated += 1;
                assert_eq!(body["error"]["code"], "unavailable");
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("saturated")
                );
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                assert_eq!(body["error"]["code"], "limit_exceeded")
            }
            // The queued one starts late and meets its caller's deadline.
            StatusCode::GATEWAY_TIMEOUT => assert_eq!(body["error"]["code"], "timeout"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(saturated >= 3, "only {saturated} of 6 were turned away");
    // Once the runaway scripts are done, the executor serves again.
    c.wait_for_body("quick", "quick").await;
    env.cleanup().await;
}

/// The record store's two paths: first reports are COPYed, and a batch that
/// meets a stored id (a redelivery) falls back to the upsert, which writes
/// nothing twice and still takes what it may overwrite. Text with COPY's
/// special characters (and a NUL, which Postgres text cannot hold) survives.
#[tokio::test]
async fn record_batches_are_stored_exactly_once_whatever_their_text() {
    use picloud_core::{InvocationRecord, InvocationStatus, Trigger};
    let env = TestEnv::new().await;
    let store = picloud_store::Store::connect(env.config.database_url().unwrap())
        .await
        .unwrap();
    let record = |log: &str, error: Option<&str>| InvocationRecord {
        id: uuid::Uuid::now_v7(),
        script: "copy-me".into(),
        version: 3,
        trigger: Trigger::Http,
        status: if error.is_some() {
            InvocationStatus::Error
        } else {
            InvocationStatus::Ok
        },
        http_status: error.is_none().then_some(201),
        started_at: chrono::DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
        duration_us: 42,
        log: log.into(),
        error: error.map(Into::into),
        executor: "host\\1".into(),
        trace_id: uuid::Uuid::new_v4(),
        attempt: 1,
        parent_id: Some(uuid::Uuid::new_v4()),
        response: None,
        public: false,
    };
    let first = vec![
        record("tab\there\nnew line\r\\N back\\slash \\. end", None),
        record("", Some("boom\tat line 1\n\u{0}nul")),
        record("ünïcødé ✓", None),
    ];
    assert_eq!(store.insert_invocations(&first).await.unwrap(), 3);
    for r in &first {
        let mut want = r.clone();
        want.error = want.error.map(|e| e.replace('\0', "\u{FFFD}"));
        assert_eq!(store.get_invocation(r.id).await.unwrap(), Some(want));
    }

    // Redelivered with one new record: nothing fails, nothing doubles.
    let mut again = first.clone();
    again.push(record("late", None));
    store.insert_invocations(&again).await.unwrap();
    let listed = store
        .list_invocations(&picloud_store::InvocationFilter {
            script: Some("copy-me".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 4);

    // A later attempt of a failed invocation still replaces its record.
    let mut retried = first[1].clone();
    retried.attempt = 2;
    retried.status = InvocationStatus::Ok;
    retried.error = None;
    store.insert_invocations(&[retried.clone()]).await.unwrap();
    assert_eq!(
        store
            .get_invocation(retried.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        InvocationStatus::Ok
    );
    store.close().await;
    env.cleanup().await;
}

/// The recorder batches a burst (more than one batch's worth) with one
/// wake-up per batch, and an executor stopped right after its last answer
/// still publishes what it was gathering: every answered call has a record.
#[tokio::test]
async fn every_call_of_a_burst_is_recorded_even_when_its_executor_stops_at_once() {
    use futures::StreamExt;
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let executor = env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    // Names neither `event` nor `request`: neither is built for it.
    c.deploy_ok("burst", r#""ok""#).await;
    c.wait_for_body("burst", "ok").await;

    let calls = 2_500;
    let ids: Vec<uuid::Uuid> = futures::stream::iter(0..calls)
        .map(|_| async {
            let resp = c.call("burst").await;
            assert_eq!(resp.status(), StatusCode::OK);
            resp.headers()["x-picloud-invocation-id"]
                .to_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap()
        })
        .buffer_unordered(32)
        .collect()
        .await;
    executor.stop().await;

    let store = picloud_store::Store::connect(env.config.database_url().unwrap())
        .await
        .unwrap();
    let stored = eventually(Duration::from_secs(30), || async {
        let list = store
            .list_invocations(&picloud_store::InvocationFilter {
                script: Some("burst".into()),
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let stored: std::collections::HashSet<uuid::Uuid> = list.iter().map(|r| r.id).collect();
        ids.iter().all(|id| stored.contains(id)).then_some(list)
    })
    .await;
    let missing = stored.is_none();
    assert!(
        !missing,
        "some of the {calls} answered calls have no record"
    );
    store.close().await;
    env.cleanup().await;
}

/// `GET /invocations` filters by trigger and start time on the server, so a
/// filter finds matches older than the newest page; bad values are 400s.
#[tokio::test]
async fn invocations_filter_by_trigger_and_time() {
    use picloud_core::{InvocationRecord, InvocationStatus, Trigger};
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    let store = picloud_store::Store::connect(env.config.database_url().unwrap())
        .await
        .unwrap();
    let at = |minute: i64| {
        chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap()
            + chrono::Duration::minutes(minute)
    };
    let record = |trigger: Trigger, minute: i64| InvocationRecord {
        id: uuid::Uuid::now_v7(),
        script: "mixed".into(),
        version: 1,
        trigger,
        status: InvocationStatus::Ok,
        http_status: None,
        started_at: at(minute),
        duration_us: 5,
        log: String::new(),
        error: None,
        executor: "test".into(),
        trace_id: uuid::Uuid::new_v4(),
        attempt: 1,
        parent_id: None,
        response: None,
        public: false,
    };
    // One cron run at minute 0, then 30 newer HTTP calls.
    let mut records = vec![record(Trigger::Cron, 0)];
    records.extend((1..=30).map(|m| record(Trigger::Http, m)));
    store.insert_invocations(&records).await.unwrap();
    let ids = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r["trigger"].as_str().unwrap().to_owned() + "@" + r["started_at"].as_str().unwrap()
            })
            .collect()
    };
    // Past the newest 10 (all HTTP), the cron run is still found.
    let cron = c.get_json("/invocations?trigger=cron&limit=10").await;
    assert_eq!(ids(cron), ["cron@2026-09-21T14:13:20Z"]);
    let window = c
        .get_json("/invocations?since=2026-09-21T14:15:20Z&until=2026-09-21T14:17:20%2B00:00")
        .await;
    assert_eq!(
        ids(window),
        ["http@2026-09-21T14:16:20Z", "http@2026-09-21T14:15:20Z"],
        "since is inclusive, until exclusive, newest first"
    );
    // A stranger's text: unknown words, impossible dates, NUL, 4 KB.
    let long = format!("since=2026-12-02T10:00:00{}Z", "0".repeat(4096));
    for bad in [
        "trigger=timer",
        "trigger=%00",
        "since=yesterday",
        "since=2026-12-02T10:00:00Z%00",
        "until=2026-13-01T00:00:00Z",
        &long,
    ] {
        let resp = c
            .api(Method::GET, &format!("/invocations?{bad}"), None)
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad:.60}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{bad:.60}: {body}");
    }
}
