//! `redeploy-latency --base URL --token T --n 50`: how long a running
//! PiCloud takes from "PUT a new version" to "/fn serves it".
//!
//! For each i: PUT a script whose value is a fresh string (`v{i}-{uuid}`),
//! then GET `/fn/{name}` in a tight loop (no sleep; bounded by a count and a
//! time limit) until the body is that string. The latency runs from just
//! before the PUT is sent to the first matching GET. Prints p50, p90 and max
//! (and how much of it was the PUT itself), then deletes the script.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use picloud_bench::{ms, percentile};

#[derive(Parser)]
#[command(about = "Measure PiCloud's deploy-to-serving latency")]
struct Args {
    /// PiCloud base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// Admin token.
    #[arg(long, env = "PICLOUD_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Number of redeploys.
    #[arg(long, default_value_t = 50)]
    n: usize,
    /// Script name (default: a fresh `redeploy-xxxxxxxx`).
    #[arg(long)]
    name: Option<String>,
    /// Give up on one redeploy after this long.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Give up on one redeploy after this many GETs.
    #[arg(long, default_value_t = 200_000)]
    max_polls: usize,
    /// Keep the script afterwards.
    #[arg(long)]
    keep: bool,
}

struct Sample {
    total: Duration,
    put: Duration,
    polls: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.base.trim_end_matches('/').to_owned();
    let name = args.name.clone().unwrap_or_else(|| {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("redeploy-{}", &id[..8])
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .build()?;
    let script_url = format!("{base}/api/v1/scripts/{name}");
    let fn_url = format!("{base}/fn/{name}");
    let limit = Duration::from_millis(args.timeout_ms);

    // Version 1 first, so that every measured redeploy replaces a version
    // that is cached and serving (the steady state).
    deploy(&client, &script_url, &args.token, "warm-up").await?;
    poll_until(&client, &fn_url, "warm-up", limit, args.max_polls)
        .await?
        .context("the first version never served")?;

    let mut samples = Vec::with_capacity(args.n);
    let mut misses = 0usize;
    for i in 0..args.n {
        let expected = format!("v{i}-{}", uuid::Uuid::new_v4().simple());
        let started = Instant::now();
        deploy(&client, &script_url, &args.token, &expected).await?;
        let put = started.elapsed();
        let remaining = limit.saturating_sub(put);
        match poll_until(&client, &fn_url, &expected, remaining, args.max_polls).await? {
            Some(polls) => samples.push(Sample {
                total: started.elapsed(),
                put,
                polls,
            }),
            None => {
                misses += 1;
                eprintln!(
                    "redeploy {i}: not served within {} ms / {} GETs",
                    args.timeout_ms, args.max_polls
                );
            }
        }
    }

    if !args.keep {
        let _ = client
            .delete(&script_url)
            .bearer_auth(&args.token)
            .send()
            .await;
    }

    if samples.is_empty() {
        bail!("no redeploy was ever served");
    }
    let mut total: Vec<Duration> = samples.iter().map(|s| s.total).collect();
    let mut put: Vec<Duration> = samples.iter().map(|s| s.put).collect();
    total.sort();
    put.sort();
    let polls: Vec<usize> = samples.iter().map(|s| s.polls).collect();
    let first_get_hits = polls.iter().filter(|&&p| p == 1).count();
    println!(
        "redeploy latency over {} redeploys of {name} ({} not served in time)",
        samples.len(),
        misses
    );
    println!(
        "  PUT → first matching GET: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(percentile(&total, 50.0)),
        ms(percentile(&total, 90.0)),
        ms(*total.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "  of which the PUT itself:  p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(percentile(&put, 50.0)),
        ms(percentile(&put, 90.0)),
        ms(*put.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "  GETs per redeploy: max {}; the first GET after the PUT already served the new version in {}/{}",
        polls.iter().max().unwrap_or(&0),
        first_get_hits,
        samples.len()
    );
    // One machine-readable line for bench/run.sh.
    println!(
        "RESULT redeploy n={} misses={misses} p50_ms={:.1} p90_ms={:.1} max_ms={:.1} put_p50_ms={:.1}",
        samples.len(),
        ms(percentile(&total, 50.0)),
        ms(percentile(&total, 90.0)),
        ms(*total.last().unwrap_or(&Duration::ZERO)),
        ms(percentile(&put, 50.0)),
    );
    if misses > 0 {
        bail!("{misses} redeploys were not served in time");
    }
    Ok(())
}

async fn deploy(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    value: &str,
) -> anyhow::Result<()> {
    // `value` is letters, digits and dashes: a plain Rhai string literal.
    let body = serde_json::json!({ "source": format!("\"{value}\"") });
    let resp = client
        .put(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        bail!("PUT {url}: {status}: {text}");
    }
    Ok(())
}

/// GETs `url` until its body is `expected`: `Some(number of GETs)`, or
/// `None` once `limit` or `max_polls` is reached.
async fn poll_until(
    client: &reqwest::Client,
    url: &str,
    expected: &str,
    limit: Duration,
    max_polls: usize,
) -> anyhow::Result<Option<usize>> {
    let started = Instant::now();
    for polls in 1..=max_polls.max(1) {
        let resp = client
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let ok = resp.status().is_success();
        let body = resp.bytes().await.unwrap_or_default();
        if ok && body == expected.as_bytes() {
            return Ok(Some(polls));
        }
        if started.elapsed() >= limit {
            break;
        }
    }
    Ok(None)
}
