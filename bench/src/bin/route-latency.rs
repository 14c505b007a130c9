//! `route-latency --base URL [--poll URL] --token T --n 20 [--fill 1000]`:
//! how long a new custom route takes to be served, and a route table of a
//! given size for throughput runs.
//!
//! `--fill N` first deploys a `hello` script on `GET /hello/:who` and
//! scripts holding the other N - 1 routes (`GET /fill{i}/:id`, up to 32 a
//! script), and leaves them deployed: a table of N routes, for wrk against
//! `/hello/world`. Then, for each of `--n` trials: PUT a script whose only
//! route is a fresh path (`GET /rl-{uuid}/:x`), and from the moment the PUT
//! answers, GET that path on `--poll` (another gateway of the cluster, or
//! the same base) in a tight loop until it answers 200. Prints p50, p90 and
//! max. The trial scripts are deleted at the end.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use picloud_bench::{ms, percentile};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Measure how fast a new custom route is served; fill the route table")]
struct Args {
    /// PiCloud base URL (admin API).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// Gateway to poll (default: --base).
    #[arg(long)]
    poll: Option<String>,
    /// Admin token.
    #[arg(long, env = "PICLOUD_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Number of trials (0: only fill).
    #[arg(long, default_value_t = 20)]
    n: usize,
    /// Routes to deploy first, `hello` on `GET /hello/:who` among them (kept).
    #[arg(long, default_value_t = 0)]
    fill: usize,
    /// Give up on one trial after this long.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// Routes a script may hold (`picloud_core::routes::MAX_ROUTES`).
const PER_SCRIPT: usize = 32;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.base.trim_end_matches('/').to_owned();
    let poll = args
        .poll
        .as_deref()
        .unwrap_or(&base)
        .trim_end_matches('/')
        .to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4)
        .build()?;
    let put = |name: String, routes: Vec<String>| {
        let client = client.clone();
        let url = format!("{base}/api/v1/scripts/{name}");
        let token = args.token.clone();
        async move {
            let body = json!({ "source": "\"Hello, world!\"", "routes": routes });
            let resp = client
                .put(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await?;
            let status = resp.status();
            if !status.is_success() {
                bail!(
                    "PUT {url}: {status}: {}",
                    resp.text().await.unwrap_or_default()
                );
            }
            anyhow::Ok(())
        }
    };

    if args.fill > 0 {
        put("hello".into(), vec!["GET /hello/:who".into()]).await?;
        let fill = args.fill - 1;
        let mut i = 0;
        let mut script = 0;
        while i < fill {
            let routes: Vec<String> = (i..(i + PER_SCRIPT).min(fill))
                .map(|r| format!("GET /fill{r}/:id"))
                .collect();
            i += routes.len();
            put(format!("fill-{script}"), routes).await?;
            script += 1;
        }
        println!(
            "deployed {} routes: hello on GET /hello/:who and {fill} in {script} more scripts",
            args.fill
        );
    }

    let limit = Duration::from_millis(args.timeout_ms);
    let mut samples = Vec::with_capacity(args.n);
    let mut names = Vec::new();
    for i in 0..args.n {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("rl-{}", &id[..12]);
        let path = format!("/rl-{id}/x");
        put(name.clone(), vec![format!("GET /rl-{id}/:x")]).await?;
        names.push(name);
        let started = Instant::now();
        let url = format!("{poll}{path}");
        let mut served = false;
        while started.elapsed() < limit {
            let resp = client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            if resp.status().is_success() {
                served = true;
                break;
            }
        }
        if !served {
            bail!("trial {i}: {path} not served within {} ms", args.timeout_ms);
        }
        samples.push(started.elapsed());
    }
    for name in &names {
        let _ = client
            .delete(format!("{base}/api/v1/scripts/{name}"))
            .bearer_auth(&args.token)
            .send()
            .await;
    }
    if samples.is_empty() {
        return Ok(());
    }
    samples.sort();
    println!(
        "new route served on {poll}, {} trials: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (from the deploy's answer to the first 200)",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 90.0)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    );
    println!(
        "RESULT route n={} p50_ms={:.1} p90_ms={:.1} max_ms={:.1}",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 90.0)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    );
    Ok(())
}
