//! Stats and topology (issue #14) end to end: real calls, real jobs and
//! events, then `GET /api/v1/stats` and `GET /api/v1/topology`.

use std::time::Duration;

use picloud_testkit::{Client, TestEnv, eventually};
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn stats(c: &Client, query: &str) -> Value {
    c.get_json(&format!("/stats{query}")).await
}

fn script<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["scripts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["script"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_requests_errors_and_durations_per_script() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("fast", r#""ok""#).await;
    c.deploy_ok("failing", r#"throw "nope";"#).await;
    c.deploy_ok("pub", r#"emit("orders.new", #{ n: 1 }); "sent""#)
        .await;
    c.deploy_ok("sub", r#"kv::set("seen", event.payload.n);"#)
        .await;
    c.deploy_ok("idle", r#""never""#).await;
    c.subscribe("sub", "orders.*", 3).await;
    c.subscribe("idle", "nothing.here", 3).await;
    c.wait_for_body("fast", "ok").await;
    for _ in 0..19 {
        assert_eq!(c.call("fast").await.status(), StatusCode::OK);
    }
    for _ in 0..5 {
        assert_eq!(
            c.call("failing").await.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    for _ in 0..3 {
        assert_eq!(c.call("pub").await.status(), StatusCode::OK);
    }

    // 20 + 5 + 3 calls and 3 event jobs, counted within a few seconds.
    let all = eventually(Duration::from_secs(30), || async {
        let v = stats(&c, "?since=1h&step=1m").await;
        (v["total"]["requests"] == 31).then_some(v)
    })
    .await;
    let Some(all) = all else {
        panic!(
            "stats never reached 31 requests: {}",
            stats(&c, "?since=1h").await
        );
    };
    assert_eq!(all["step_seconds"], 60);
    assert!(all["since"].as_str().unwrap().ends_with('Z'), "{all}");
    let series = all["series"].as_array().unwrap();
    assert!((60..=62).contains(&series.len()), "{}", series.len());
    let summed: i64 = series.iter().map(|p| p["requests"].as_i64().unwrap()).sum();
    assert_eq!(summed, 31);
    assert_eq!(all["total"]["errors"], 5);
    let fast = script(&all, "fast");
    assert_eq!(fast["requests"], 20);
    assert_eq!(fast["errors"], 0);
    assert_eq!(fast["error_rate"], 0.0);
    let (p50, p99) = (
        fast["p50_ms"].as_f64().unwrap(),
        fast["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 10_000.0, "{fast}");
    let failing = script(&all, "failing");
    assert_eq!(failing["requests"], 5);
    assert_eq!(failing["error_rate"], 1.0);
    assert_eq!(script(&all, "sub")["requests"], 3);
    assert_eq!(all["scripts"][0]["script"], "fast", "most requests first");

    // One script; the hour table gives the same counts.
    let one = stats(&c, "?script=failing&since=2h&step=5m").await;
    assert_eq!(one["script"], "failing");
    assert_eq!(one["total"]["requests"], 5);
    assert_eq!(one["total"]["errors"], 5);
    assert_eq!(one["scripts"].as_array().unwrap().len(), 1);
    let hourly = stats(&c, "?since=24h&step=1h").await;
    assert_eq!(hourly["total"]["requests"], 31, "{hourly}");
    assert_eq!(hourly["step_seconds"], 3600);
    let default = stats(&c, "").await;
    assert_eq!(default["total"]["requests"], 31);
    assert_eq!(default["step_seconds"], 300);

    for bad in [
        "?since=abc",
        "?since=2099-01-01T00:00:00Z",
        "?step=30s",
        "?step=90s",
        "?step=1x",
        "?since=3d&step=1m",
        "?since=40d&step=1h",
        "?since=24h&step=1m&script=has%20space",
        // A stranger's text: a multi-byte or NUL last character, control
        // characters, a long value (a panic here once closed the connection).
        "?since=m%C3%A9",
        "?since=5%F0%9F%98%80",
        "?since=%00",
        "?step=5%0D",
        &format!("?since={}", "9".repeat(10_000)),
    ] {
        let resp = c.api(Method::GET, &format!("/stats{bad}"), None).await;
        let bad = &bad[..bad.len().min(60)];
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or_default();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"]["message"].is_string(), "{bad}: {body}");
    }

    // The event flow: pub → orders.new → sub, and the idle subscription.
    let topo = eventually(Duration::from_secs(20), || async {
        let t = c.get_json("/topology").await;
        let found = t["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["topic"] == "orders.new")
            .cloned()?;
        (found["emitters"][0]["count"] == 3).then_some((t, found))
    })
    .await;
    let Some((all_topics, orders)) = topo else {
        panic!("no orders.new flow: {}", c.get_json("/topology").await);
    };
    assert_eq!(orders["emitters"].as_array().unwrap().len(), 1, "{orders}");
    assert_eq!(orders["emitters"][0]["script"], "pub");
    assert_eq!(orders["subscribers"][0]["script"], "sub");
    assert_eq!(orders["subscribers"][0]["count"], 3);
    let idle = all_topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "nothing.here")
        .unwrap_or_else(|| panic!("{all_topics}"));
    assert_eq!(idle["subscribers"][0]["script"], "idle");
    assert_eq!(idle["subscribers"][0]["count"], 0);
    assert_eq!(all_topics["subscriptions"].as_array().unwrap().len(), 2);

    // A deleted script leaves the graph.
    let resp = c.api(Method::DELETE, "/scripts/pub", None).await;
    assert!(resp.status().is_success());
    let t = c.get_json("/topology").await;
    let orders = t["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "orders.new")
        .unwrap();
    assert!(
        orders["emitters"].as_array().unwrap().is_empty(),
        "{orders}"
    );
    env.cleanup().await;
}

/// The stats read path at scale: `PICLOUD_STATS_BENCH_RECORDS` records
/// (default 20,000; `bench/stats.sh` runs a million in release) over the
/// last 24 hours across 100 scripts, aggregated by the managers' real
/// roll-up and stored, then read through the API. Prints the answer times;
/// asserts only what the answers say (timings belong to the bench).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_over_many_records_come_from_the_rollup() {
    let n: usize = std::env::var("PICLOUD_STATS_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    let store = picloud_store::Store::connect(env.config.database_url().unwrap())
        .await
        .expect("store");
    let now = chrono::Utc::now();
    let started = std::time::Instant::now();
    let rollup = picloud_manager::stats::Rollup::default();
    let mut errors = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let records: Vec<picloud_core::InvocationRecord> = chunk
            .iter()
            .map(|&i| {
                let failed = i % 50 == 0;
                errors += usize::from(failed);
                synthetic_record(i, n, now, failed)
            })
            .collect();
        rollup.add_records(&records);
        rollup.flush(&store).await.expect("flush");
    }
    eprintln!(
        "aggregated and stored {n} records in {:?}",
        started.elapsed()
    );

    let mut timings = Vec::new();
    for query in [
        "?since=24h",
        "?since=24h&step=1m",
        "?since=24h&step=1h",
        "?since=24h&script=s-7",
        "?since=1h&step=1m",
    ] {
        let mut times = Vec::new();
        let mut last = Value::Null;
        for _ in 0..10 {
            let t = std::time::Instant::now();
            last = stats(&c, query).await;
            times.push(t.elapsed());
        }
        times.sort();
        timings.push(format!(
            "{query}: median {:?}, max {:?}",
            times[5], times[9]
        ));
        if query == "?since=24h" || query == "?since=24h&step=1m" {
            assert_eq!(last["total"]["requests"], n as i64, "{query}");
            assert_eq!(last["total"]["errors"], errors as i64, "{query}");
            assert_eq!(last["scripts"].as_array().unwrap().len(), 100, "{query}");
        }
        if query == "?since=24h&script=s-7" {
            assert_eq!(last["total"]["requests"], (n / 100) as i64, "{query}");
        }
    }
    eprintln!(
        "GET /api/v1/stats over {n} records:\n  {}",
        timings.join("\n  ")
    );
    env.cleanup().await;
}

/// Record `i` of `n`: spread evenly over the last 24 hours (minus a
/// minute, so every one is inside `since=24h`), script `s-{i % 100}`,
/// durations from 0.1 ms to about 100 ms.
fn synthetic_record(
    i: usize,
    n: usize,
    now: chrono::DateTime<chrono::Utc>,
    failed: bool,
) -> picloud_core::InvocationRecord {
    let span = 24 * 3600 - 120;
    let ago = (i as i64 * span) / n as i64 + 60;
    let id = picloud_core::Uuid::new_v4();
    picloud_core::InvocationRecord {
        id,
        script: format!("s-{}", i % 100),
        version: 1,
        trigger: picloud_core::Trigger::Http,
        status: if failed {
            picloud_core::InvocationStatus::Error
        } else {
            picloud_core::InvocationStatus::Ok
        },
        http_status: Some(if failed { 500 } else { 200 }),
        started_at: now - chrono::Duration::seconds(ago),
        duration_us: 100 + (i as u64 * 7919) % 100_000,
        log: String::new(),
        error: None,
        executor: "bench".into(),
        trace_id: id,
        attempt: 1,
        parent_id: None,
        response: None,
        public: false,
    }
}

/// Managers flush their roll-ups at the same time and share rows (the
/// all-scripts row of the current minute, a script called through both): two
/// flushes of the same rows in opposite orders neither deadlock nor lose a
/// count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_flushes_of_shared_rows_neither_deadlock_nor_lose_counts() {
    use chrono::{DurationRound, Utc};
    use picloud_store::{FlowRow, StatRow, Store};

    let env = TestEnv::new().await;
    let store = Store::connect(env.config.database_url().unwrap())
        .await
        .unwrap();
    let bucket = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let stats: Vec<StatRow> = (0..200)
        .map(|i| StatRow {
            step_s: 60,
            bucket,
            script: format!("s{i:03}"),
            requests: 1,
            errors: 0,
            duration_us_sum: 10,
            hist: vec![1, 0, 2],
        })
        .collect();
    let flows: Vec<FlowRow> = (0..200)
        .map(|i| FlowRow {
            topic: format!("t{i:03}"),
            direction: "emit",
            script: "pub".into(),
            count: 1,
            last_at: bucket,
        })
        .collect();
    let (stats_back, flows_back): (Vec<_>, Vec<_>) = (
        stats.iter().rev().cloned().collect(),
        flows.iter().rev().cloned().collect(),
    );
    const ROUNDS: i64 = 10;
    for _ in 0..ROUNDS {
        let (a, b, c, d) = tokio::join!(
            store.add_stats(&stats),
            store.add_stats(&stats_back),
            store.add_flows(&flows),
            store.add_flows(&flows_back)
        );
        for r in [a, b, c, d] {
            r.expect("a flush beside another one");
        }
    }
    let to = bucket + chrono::Duration::minutes(1);
    for script in ["s000", "s199"] {
        let rows = store.stats_rows(60, script, bucket, to).await.unwrap();
        assert_eq!(rows.len(), 1, "{script}");
        assert_eq!(rows[0].requests, 2 * ROUNDS, "{script}");
        assert_eq!(rows[0].hist, [2 * ROUNDS, 0, 4 * ROUNDS], "{script}");
    }
    let stored = store.flows().await.unwrap();
    assert_eq!(stored.len(), 200);
    assert!(stored.iter().all(|f| f.count == 2 * ROUNDS), "{stored:?}");
}
