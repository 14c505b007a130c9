//! `events-bench --base URL --token T`: a running PiCloud's event and async
//! job paths.
//!
//! - **emit → subscriber start**: `lat-src` (HTTP) emits one event; `lat-sink`
//!   subscribes. The latency of one event runs from the end of the emitting
//!   script (its record's start + duration: the emit is committed and
//!   published after that) to the start of the subscriber's invocation,
//!   both read from the invocation records (microsecond timestamps, one
//!   clock). Events are sent one at a time, `--gap-ms` apart: this is the
//!   unloaded latency.
//! - **async jobs per second**: `--jobs` `Prefer: respond-async` calls to
//!   `job-sink`, `--concurrency` at a time; the rate runs from the first
//!   submission to the end of the last job (from the records).
//! - **event fan-out**: `--fanout-events` async calls to `fan-src`, each
//!   emitting one event that 10 scripts subscribe to: subscriber runs per
//!   second (first submission → end of the last run), and emit → subscriber
//!   start p50/p99 under that load (each run against its parent's end).
//! - **kv commits, distinct keys**: `--jobs` async calls to one script, each
//!   writing its own key: committed invocations per second.
//! - **kv commits, one key**: `--jobs` async calls incrementing one counter
//!   (read, then write: every pair conflicts): committed invocations per
//!   second, and whether the final count is exact.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::StreamExt;
use picloud_bench::{ms, percentile};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Measure PiCloud's emit latency and async job throughput")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    #[arg(long, env = "PICLOUD_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Events for the latency measurement.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Pause between two latency events.
    #[arg(long, default_value_t = 20)]
    gap_ms: u64,
    /// Async jobs for the throughput measurement (at most 1000).
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Events for the fan-out measurement (10 subscriber runs each; at
    /// most 1000).
    #[arg(long, default_value_t = 500)]
    fanout_events: usize,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status} {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    async fn deploy(&self, name: &str, source: &str) -> anyhow::Result<()> {
        self.send(
            reqwest::Method::PUT,
            &format!("/scripts/{name}"),
            Some(json!({ "source": source })),
        )
        .await
        .map(|_| ())
    }
}

fn time(v: &Value, field: &str) -> anyhow::Result<DateTime<Utc>> {
    v[field]
        .as_str()
        .context("missing timestamp")?
        .parse()
        .context("bad timestamp")
}

fn end_of(v: &Value) -> anyhow::Result<DateTime<Utc>> {
    Ok(time(v, "started_at")?
        + chrono::Duration::microseconds(v["duration_us"].as_i64().unwrap_or(0)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.jobs <= 1000, "--jobs may be at most 1000");
    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: args.base.trim_end_matches('/').to_owned(),
        token: args.token.clone(),
    };
    let run = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let (src, sink, jobs) = (
        format!("lat-src-{run}"),
        format!("lat-sink-{run}"),
        format!("job-sink-{run}"),
    );
    let topic = format!("bench.lat{run}");
    api.deploy(&src, &format!(r#"emit("{topic}", #{{}}); "ok""#))
        .await?;
    api.deploy(&sink, "()").await?;
    api.deploy(&jobs, r#""done""#).await?;
    api.send(
        reqwest::Method::POST,
        "/subscriptions",
        Some(json!({ "script": sink, "topic": topic })),
    )
    .await?;
    // Let the routes reach the gateway.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // ---- emit → subscriber start --------------------------------------
    let mut roots = Vec::with_capacity(args.events);
    for _ in 0..args.events {
        let resp = api
            .http
            .get(format!("{}/fn/{src}", api.base))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("/fn/{src}: {}", resp.status());
        }
        let id = resp.headers()["x-picloud-invocation-id"]
            .to_str()?
            .to_owned();
        roots.push(id);
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
    }
    let mut latencies = Vec::with_capacity(roots.len());
    for id in &roots {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tree = api
                .send(reqwest::Method::GET, &format!("/invocations/{id}"), None)
                .await;
            if let Ok(tree) = tree
                && let Some(child) = tree["children"].as_array().and_then(|c| c.first())
            {
                let lat = time(child, "started_at")? - end_of(&tree)?;
                latencies.push(lat.to_std().unwrap_or(Duration::ZERO));
                break;
            }
            if Instant::now() > deadline {
                bail!("the subscriber of invocation {id} never ran");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    latencies.sort();
    println!(
        "emit -> subscriber start over {} events ({} ms apart): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        args.gap_ms,
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO)),
    );

    // ---- async jobs per second ----------------------------------------
    let started = Utc::now();
    let submit = submit_async(&api, &jobs, args.jobs, args.concurrency, |_| String::new()).await?;
    let records = finished(&api, &jobs, args.jobs).await?;
    let span = span_of(started, &records)?;
    println!(
        "async jobs: {} accepted in {:.2} s ({:.0}/s), all done {:.2} s after the first submission: {:.0} jobs/s end to end",
        args.jobs,
        submit.as_secs_f64(),
        args.jobs as f64 / submit.as_secs_f64(),
        span.as_secs_f64(),
        args.jobs as f64 / span.as_secs_f64(),
    );
    // Where the time goes: the runs (start → end of the script, without
    // its commit) and how far the last job ended behind the last 202.
    let mut runs: Vec<Duration> = records
        .iter()
        .map(|r| Duration::from_micros(r["duration_us"].as_u64().unwrap_or(0)))
        .collect();
    runs.sort();
    println!(
        "async jobs: run p50 {:.3} ms, p99 {:.3} ms; the last job ended {:.2} s after the last 202",
        ms(percentile(&runs, 50.0)),
        ms(percentile(&runs, 99.0)),
        (span.as_secs_f64() - submit.as_secs_f64()).max(0.0),
    );

    // ---- event fan-out -------------------------------------------------
    anyhow::ensure!(
        args.fanout_events <= 1000,
        "--fanout-events may be at most 1000"
    );
    let fan_topic = format!("bench.fan{run}");
    let fan_src = format!("fan-src-{run}");
    api.deploy(&fan_src, &format!(r#"emit("{fan_topic}", #{{}}); "ok""#))
        .await?;
    let sinks: Vec<String> = (0..10).map(|i| format!("fan-sink{i}-{run}")).collect();
    for sink in &sinks {
        api.deploy(sink, "()").await?;
        api.send(
            reqwest::Method::POST,
            "/subscriptions",
            Some(json!({ "script": sink, "topic": fan_topic })),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Utc::now();
    let n = args.fanout_events;
    submit_async(&api, &fan_src, n, args.concurrency, |_| String::new()).await?;
    let parents = finished(&api, &fan_src, n).await?;
    let ends: std::collections::HashMap<&str, DateTime<Utc>> = parents
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, end_of(p).ok()?)))
        .collect();
    let mut last = started;
    let mut lat = Vec::with_capacity(n * sinks.len());
    for sink in &sinks {
        for r in finished(&api, sink, n).await? {
            last = last.max(end_of(&r)?);
            if let Some(end) = r["parent_id"].as_str().and_then(|id| ends.get(id)) {
                lat.push(
                    (time(&r, "started_at")? - *end)
                        .to_std()
                        .unwrap_or(Duration::ZERO),
                );
            }
        }
    }
    lat.sort();
    let span = (last - started)
        .to_std()
        .unwrap_or(Duration::from_millis(1));
    println!(
        "event fan-out: {n} emits x {} subscribers = {} runs in {:.2} s: {:.0} subscriber runs/s; emit -> subscriber start under this load: p50 {:.2} ms, p99 {:.2} ms",
        sinks.len(),
        n * sinks.len(),
        span.as_secs_f64(),
        (n * sinks.len()) as f64 / span.as_secs_f64(),
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 99.0)),
    );

    // ---- kv commits ----------------------------------------------------
    let kv_many = format!("kv-many-{run}");
    api.deploy(&kv_many, r#"kv::set(`k${request.query.i}`, 1); "ok""#)
        .await?;
    let kv_count = format!("kv-count-{run}");
    api.deploy(
        &kv_count,
        r#"let n = kv::get("n"); if request.query.read == "1" { return #{ n: n }; } if n == () { n = 0; } kv::set("n", n + 1); "ok""#,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (label, script) in [
        ("distinct keys", &kv_many),
        ("one key (counter)", &kv_count),
    ] {
        let started = Utc::now();
        submit_async(&api, script, args.jobs, args.concurrency, |i| {
            format!("?i={i}")
        })
        .await?;
        let records = finished(&api, script, args.jobs).await?;
        let span = span_of(started, &records)?;
        let exact = if script == &kv_count {
            let v: Value = api
                .http
                .get(format!("{}/fn/{script}?read=1", api.base))
                .send()
                .await?
                .json()
                .await?;
            format!(
                "; final count {} of {} ({})",
                v["n"],
                args.jobs,
                if v["n"].as_u64() == Some(args.jobs as u64) {
                    "exact"
                } else {
                    "NOT EXACT"
                }
            )
        } else {
            String::new()
        };
        println!(
            "kv commits, {label}: {} in {:.2} s: {:.0} committed invocations/s{exact}",
            args.jobs,
            span.as_secs_f64(),
            args.jobs as f64 / span.as_secs_f64(),
        );
    }
    for name in sinks.iter().chain([&fan_src, &kv_many, &kv_count]) {
        let _ = api
            .send(reqwest::Method::DELETE, &format!("/scripts/{name}"), None)
            .await;
    }
    for name in [&src, &sink, &jobs] {
        let _ = api
            .send(reqwest::Method::DELETE, &format!("/scripts/{name}"), None)
            .await;
    }
    Ok(())
}

/// `n` async calls to `script` (`query(i)` appended to the URL),
/// `concurrency` at a time; the time until all were accepted.
async fn submit_async(
    api: &Api,
    script: &str,
    n: usize,
    concurrency: usize,
    query: impl Fn(usize) -> String,
) -> anyhow::Result<Duration> {
    let clock = Instant::now();
    let accepted = futures::stream::iter(0..n)
        .map(|i| {
            let (http, url) = (
                api.http.clone(),
                format!("{}/fn/{script}{}", api.base, query(i)),
            );
            async move {
                http.post(&url)
                    .header("prefer", "respond-async")
                    .send()
                    .await
                    .map(|r| r.status() == reqwest::StatusCode::ACCEPTED)
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    if accepted != n {
        bail!("only {accepted} of {n} async calls to {script} were accepted");
    }
    Ok(clock.elapsed())
}

/// Waits (up to 300 s) until `script` has `n` successful records (at most
/// 1000, the API's page); returns them.
async fn finished(api: &Api, script: &str, n: usize) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let list = api
            .send(
                reqwest::Method::GET,
                &format!("/invocations?script={script}&status=ok&limit=1000"),
                None,
            )
            .await?;
        let list = list.as_array().cloned().unwrap_or_default();
        if list.len() >= n {
            return Ok(list);
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} runs of {script} finished in 300 s",
                list.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// From `started` to the end of the last of `records`.
fn span_of(started: DateTime<Utc>, records: &[Value]) -> anyhow::Result<Duration> {
    let mut last = started;
    for r in records {
        last = last.max(end_of(r)?);
    }
    Ok((last - started)
        .to_std()
        .unwrap_or(Duration::from_millis(1)))
}
