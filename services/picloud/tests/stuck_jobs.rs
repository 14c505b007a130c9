//! Stuck jobs (issue #12 §2): every job still in the queue — waiting, in a
//! retry pause, running, or unreadable — can be listed, replayed now with a
//! fresh attempt count, or discarded, through the admin API and the CLI.

#[path = "support/cli.rs"]
mod support;

use std::time::Duration;

use picloud_testkit::{Client, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Env, User};

/// A worker that fails until fixed; its retry pause (10 minutes) keeps a
/// failed job in the queue for the whole test.
const FAILING: &str = r#"
if event.kind == "http" { return #{ done: kv::get("done") }; }
throw `not yet ${event.payload.n}`;
"#;
const FIXED: &str = r#"
if event.kind == "http" { return #{ done: kv::get("done") }; }
kv::set("done", event.payload.n);
"#;

async fn stuck_env() -> (Env, Client, User) {
    let mut env = Env::new().await;
    env.config.retry_base_ms = 600_000;
    env.config.retry_max_ms = 600_000;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    let user = User::new(&front.base, &env.token);
    user.login().await;
    (env, c, user)
}

async fn jobs(c: &Client, query: &str) -> Vec<Value> {
    c.get_json(&format!("/jobs{query}"))
        .await
        .as_array()
        .unwrap_or_else(|| panic!("/jobs{query} is not a list"))
        .clone()
}

async fn status(c: &Client, method: Method, path: &str) -> (StatusCode, Value) {
    let resp = c.api(method, path, None).await;
    let code = resp.status();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_job_is_listed_then_replayed_or_discarded() {
    let (env, c, user) = stuck_env().await;
    c.deploy_ok(
        "pub",
        r#"emit("work", #{ n: 1 }); emit("work", #{ n: 2 }); ()"#,
    )
    .await;
    c.deploy_ok("worker", FAILING).await;
    c.subscribe("worker", "work", 5).await;
    assert!(c.call("pub").await.status().is_success());

    // Both jobs failed their first attempt and wait out the pause.
    let listed = eventually(Duration::from_secs(30), || async {
        let v = jobs(&c, "?script=worker").await;
        (v.len() == 2 && v.iter().all(|j| j["attempts"] == 1)).then_some(v)
    })
    .await;
    let Some(listed) = listed else {
        panic!("two failed jobs listed; saw {:?}", jobs(&c, "").await);
    };
    for (j, n) in listed.iter().zip([1, 2]) {
        assert_eq!(j["script"], "worker", "{j}");
        assert_eq!(j["state"], "error", "{j}");
        assert_eq!(j["trigger"], "event", "{j}");
        assert_eq!(j["topic"], "work", "{j}");
        assert_eq!(j["max_attempts"], 5, "{j}");
        assert!(j["seq"].as_u64().unwrap() > 0, "{j}");
        assert!(j["invocation_id"].is_string(), "{j}");
        assert!(j["queued_at"].as_str().unwrap().ends_with('Z'), "{j}");
        let err = j["last_error"].as_str().unwrap();
        assert!(err.contains(&format!("not yet {n}")), "{j}");
    }
    let (first, second) = (&listed[0], &listed[1]);
    let (seq1, seq2) = (
        first["seq"].as_u64().unwrap(),
        second["seq"].as_u64().unwrap(),
    );
    assert!(seq1 < seq2, "oldest first: {listed:?}");
    assert!(jobs(&c, "?script=pub").await.is_empty());
    assert_eq!(c.get_json("/dead-letters").await, json!([]));

    // One job by its id; pages by `after`.
    let one = c.get_json(&format!("/jobs/{seq1}")).await;
    assert_eq!(one["invocation_id"], first["invocation_id"]);
    let page = jobs(&c, "?script=worker&limit=1").await;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["seq"], seq1);
    let page = jobs(&c, &format!("?script=worker&after={seq1}")).await;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["seq"], seq2);

    // The CLI shows the same.
    let v = user.json(&["jobs", "ls", "--script", "worker"]).await;
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    let run = user.ok(&["jobs", "ls"]).await;
    assert!(run.stdout.starts_with("ID"), "{run:?}");
    assert!(run.stdout.contains("not yet 1"), "{run:?}");
    let v = user.json(&["jobs", "show", &seq2.to_string()]).await;
    assert_eq!(v["seq"], seq2);

    // Fixed, the first is replayed: it runs now (not in ten minutes), as
    // its first attempt again, and leaves the queue.
    c.deploy_ok("worker", FIXED).await;
    let (code, body) = status(&c, Method::POST, &format!("/jobs/{seq1}/replay")).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["invocation_id"], first["invocation_id"]);
    c.wait_for_body("worker", r#"{"done":1}"#).await;
    let inv = first["invocation_id"].as_str().unwrap();
    let rec = eventually(Duration::from_secs(10), || async {
        let r = c.get_json(&format!("/invocations/{inv}")).await;
        (r["status"] == "ok").then_some(r)
    })
    .await
    .expect("the replayed job's record says ok");
    assert_eq!(rec["attempt"], 1, "{rec}");
    let (code, _) = status(&c, Method::GET, &format!("/jobs/{seq1}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // The second is discarded (by the CLI): it is gone, never runs, and
    // its record says why.
    let run = user.ok(&["jobs", "discard", &seq2.to_string()]).await;
    assert!(run.stderr.contains("discarded job"), "{run:?}");
    assert!(jobs(&c, "").await.is_empty());
    let inv2 = second["invocation_id"].as_str().unwrap();
    let rec2 = c.get_json(&format!("/invocations/{inv2}")).await;
    assert_eq!(rec2["status"], "error", "{rec2}");
    let err = rec2["error"].as_str().unwrap();
    assert!(err.starts_with("discarded by an operator"), "{rec2}");
    assert!(err.contains("not yet 2"), "{rec2}");
    let (code, body) = status(&c, Method::DELETE, &format!("/jobs/{seq2}")).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&seq2.to_string())
    );
    let run = user.expect(1, &["jobs", "replay", &seq2.to_string()]).await;
    assert!(run.stderr.contains("not_found"), "{run:?}");
    c.wait_for_body("worker", r#"{"done":1}"#).await;
    env.cleanup().await;
}

/// Bad ids are 400s naming the id; missing ones 404s; an unreadable job
/// (written by something else on the job subject) is listed, cannot be
/// replayed (409), and can be discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_and_unreadable_jobs_get_clear_answers() {
    let mut env = Env::new().await;
    let front = env.start_front().await; // no executor: nothing takes jobs
    let c = Client::new(&front.base, &env.token);
    for bad in ["abc", "0", "-1", "1.5", "18446744073709551616"] {
        for (method, path) in [
            (Method::GET, format!("/jobs/{bad}")),
            (Method::DELETE, format!("/jobs/{bad}")),
            (Method::POST, format!("/jobs/{bad}/replay")),
        ] {
            let (code, body) = status(&c, method, &path).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
        }
    }
    let (code, body) = status(&c, Method::GET, "/jobs/999999").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (code, _) = status(&c, Method::GET, "/jobs?script=no%20such").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    for bad in [
        "?limit=0",
        "?limit=1001",
        "?after=abc",
        "?after=-1",
        "?after=%00",
    ] {
        let (code, body) = status(&c, Method::GET, &format!("/jobs{bad}")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    // Past the largest sequence there is just nothing.
    let (code, body) = status(&c, Method::GET, "/jobs?after=99999999999999999999999").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body, json!([]));

    let bus = picloud_bus::Bus::connect(env.config.nats_url().unwrap(), &env.config.prefix, "test")
        .await
        .expect("bus");
    let subject = bus.names().job_subject("ghost");
    bus.publish_durable(subject, "garbage-1", "\u{0}not json".into())
        .await
        .expect("publish");
    let listed = jobs(&c, "").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let j = &listed[0];
    assert_eq!(j["script"], "ghost");
    assert_eq!(j["state"], "waiting");
    assert!(j["unreadable"].is_string(), "{j}");
    let seq = j["seq"].as_u64().unwrap();
    let (code, body) = status(&c, Method::POST, &format!("/jobs/{seq}/replay")).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "unreadable_job");
    let (code, _) = status(&c, Method::DELETE, &format!("/jobs/{seq}")).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert!(jobs(&c, "").await.is_empty());
    env.cleanup().await;
}
