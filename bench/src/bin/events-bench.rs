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
    let clock = Instant::now();
    let url = format!("{}/fn/{jobs}", api.base);
    let accepted = futures::stream::iter(0..args.jobs)
        .map(|_| {
            let (http, url) = (api.http.clone(), url.clone());
            async move {
                http.post(&url)
                    .header("prefer", "respond-async")
                    .send()
                    .await
                    .map(|r| r.status() == reqwest::StatusCode::ACCEPTED)
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(args.concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let submit = clock.elapsed();
    if accepted != args.jobs {
        bail!("only {accepted} of {} async calls were accepted", args.jobs);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let records = loop {
        let list = api
            .send(
                reqwest::Method::GET,
                &format!("/invocations?script={jobs}&status=ok&limit=1000"),
                None,
            )
            .await?;
        let list = list.as_array().cloned().unwrap_or_default();
        if list.len() >= args.jobs {
            break list;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} jobs finished in 300 s",
                list.len(),
                args.jobs
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut last = started;
    for r in &records {
        last = last.max(end_of(r)?);
    }
    let span = (last - started)
        .to_std()
        .unwrap_or(Duration::from_millis(1));
    println!(
        "async jobs: {} accepted in {:.2} s ({:.0}/s), all done {:.2} s after the first submission: {:.0} jobs/s end to end",
        args.jobs,
        submit.as_secs_f64(),
        args.jobs as f64 / submit.as_secs_f64(),
        span.as_secs_f64(),
        args.jobs as f64 / span.as_secs_f64(),
    );
    for name in [&src, &sink, &jobs] {
        let _ = api
            .send(reqwest::Method::DELETE, &format!("/scripts/{name}"), None)
            .await;
    }
    Ok(())
}
