//! Runaway event chains end in a dead letter naming the bound they broke
//! (issue #12 §6): a script that emits to its own topic, and a fan-out bomb.

use std::time::Duration;

use picloud_testkit::{Client, TestEnv, eventually};
use reqwest::StatusCode;
use serde_json::Value;

/// Waits until `script` has exactly `n` dead letters, and returns them.
async fn dead_letters(c: &Client, script: &str, n: usize) -> Vec<Value> {
    let path = format!("/dead-letters?script={script}&limit=1000");
    let (c, path) = (&c, &path);
    eventually(Duration::from_secs(60), || async move {
        let v = c.get_json(path).await;
        let all = v.as_array()?.clone();
        (all.len() >= n).then_some(all)
    })
    .await
    .unwrap_or_else(|| panic!("{script} never had {n} dead letters"))
}

/// Waits until `script` has `n` successful invocation records.
async fn ok_runs(c: &Client, script: &str, n: usize) -> usize {
    let path = format!("/invocations?script={script}&status=ok&limit=1000");
    let (c, path) = (&c, &path);
    eventually(Duration::from_secs(30), || async move {
        let v = c.get_json(path).await;
        let len = v.as_array()?.len();
        (len >= n).then_some(len)
    })
    .await
    .unwrap_or_else(|| panic!("{script} never had {n} successful runs"))
}

#[tokio::test]
async fn a_script_emitting_to_its_own_topic_stops_at_the_chain_depth() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("looper", r#"emit("loop", #{ n: 1 }); ()"#)
        .await;
    c.subscribe("looper", "loop", 3).await;

    assert_eq!(c.call("looper").await.status(), StatusCode::NO_CONTENT);
    let letters = dead_letters(&c, "looper", 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let error = letters[0]["error"].as_str().unwrap();
    assert!(error.contains("max_chain_depth (16)"), "{error}");
    // The dead letter came on its first delivery: the bound is not retried.
    assert_eq!(letters[0]["attempts"], 1, "{:?}", letters[0]);
    // The call itself and the 16 hops the bound allows ran.
    assert_eq!(ok_runs(&c, "looper", 17).await, 17);
    env.cleanup().await;
}

#[tokio::test]
async fn a_fan_out_bomb_stops_at_the_trace_budget() {
    let mut env = TestEnv::new().await;
    env.config.max_trace_invocations = 20;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("bomb", r#"emit("boom", 1); emit("boom", 2); ()"#)
        .await;
    c.subscribe("bomb", "boom", 3).await;

    assert_eq!(c.call("bomb").await.status(), StatusCode::NO_CONTENT);
    // A budget of 20 split in two at every hop: 19 -> 9 each -> 4 -> 1 -> 0.
    // So 1 + 2 + 4 + 8 = 15 runs, and the 16 jobs of the fourth hop end as
    // dead letters naming the bound.
    let letters = dead_letters(&c, "bomb", 16).await;
    assert_eq!(letters.len(), 16);
    for l in &letters {
        let error = l["error"].as_str().unwrap();
        assert!(error.contains("max_trace_invocations"), "{error}");
    }
    assert_eq!(ok_runs(&c, "bomb", 15).await, 15);
    env.cleanup().await;
}
