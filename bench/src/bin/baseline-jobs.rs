//! `baseline-jobs --nats URL [--jobs N] [--concurrency C]`: the minimal
//! JetStream async pipe, the floor for PiCloud's async jobs (issue #17).
//!
//! N jobs are published to a file-backed work-queue stream, C publishes in
//! flight, each publish ack awaited (the job is durable before it counts as
//! accepted, like PiCloud's 202); a durable pull consumer in this same
//! process hands them to a Rhai AST compiled once, evaluated on a fixed pool
//! of OS threads; each job is acked after it ran. The rate runs from the
//! first publish to the last ack. The stream is unique per run and deleted
//! at the end.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use clap::Parser;
use futures::StreamExt;
use picloud_bench::{RhaiPool, default_threads, unique_prefix, work_queue_consumer};
use tokio::sync::Notify;

#[derive(Parser)]
#[command(about = "Minimal JetStream async pipe: publish with ack → work queue → Rhai → ack")]
struct Args {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Publishes in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The script each job runs.
    #[arg(long, default_value = r#""done""#)]
    script: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = async_nats::connect(&args.nats).await?;
    let back = async_nats::connect(&args.nats).await?;
    let prefix = unique_prefix();
    let stream_name = format!("{}_AJOBS", prefix.to_ascii_uppercase());
    let subject = format!("{prefix}.ajobs");
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![subject.clone()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create stream {stream_name}: {e}"))?;
    let result = measure(&args, &js, &back, &stream_name, &subject).await;
    let _ = js.delete_stream(&stream_name).await;
    let (span, submit) = result?;
    println!(
        "pipe-jobs: {} jobs published in {:.2} s ({:.0}/s), all acked {:.2} s after the first publish: {:.0} jobs/s end to end",
        args.jobs,
        submit.as_secs_f64(),
        args.jobs as f64 / submit.as_secs_f64(),
        span.as_secs_f64(),
        args.jobs as f64 / span.as_secs_f64(),
    );
    Ok(())
}

/// (first publish → last ack, first publish → last publish ack).
async fn measure(
    args: &Args,
    js: &jetstream::Context,
    back: &async_nats::Client,
    stream_name: &str,
    subject: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let mut messages = work_queue_consumer(back, stream_name).await?;
    let threads = default_threads();
    let pool = RhaiPool::start(&args.script, threads, 4096)?;
    let acked = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let total = args.jobs;
    let (a, d) = (acked.clone(), all_done.clone());
    let worker = tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            let Ok(m) = m else { continue };
            let (a, d) = (a.clone(), d.clone());
            let job = Box::new(move |out: Result<String, String>| {
                futures::executor::block_on(async {
                    if out.is_ok() && m.ack().await.is_ok() {
                        if a.fetch_add(1, Ordering::SeqCst) + 1 == total {
                            d.notify_one();
                        }
                    } else {
                        let _ = m.ack_with(jetstream::AckKind::Nak(None)).await;
                    }
                });
            });
            let mut job: picloud_bench::Completion = job;
            // The pool's queue is as deep as max_ack_pending: wait for room.
            loop {
                match pool.try_submit(job) {
                    Ok(()) => break,
                    Err(picloud_bench::Saturated(back)) => {
                        job = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
    });
    let started = Instant::now();
    let published = futures::stream::iter(0..args.jobs)
        .map(|i| {
            let js = js.clone();
            let subject = subject.to_owned();
            async move {
                let ack = js.publish(subject, format!("{{\"n\":{i}}}").into()).await?;
                ack.await.map(|_| ())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    let submit = started.elapsed();
    anyhow::ensure!(
        published == args.jobs,
        "only {published} of {} publishes were acked",
        args.jobs
    );
    tokio::time::timeout(Duration::from_secs(300), async {
        while acked.load(Ordering::SeqCst) < total {
            all_done.notified().await;
        }
    })
    .await
    .context("the jobs did not all finish in 300 s")?;
    let span = started.elapsed();
    worker.abort();
    Ok((span, submit))
}
