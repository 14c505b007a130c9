//! `baseline-pipe --listen ADDR --nats URL --mode core|jetstream`: the
//! minimal version of PiCloud's sync path, to measure PiCloud against.
//!
//! HTTP request (axum, any path) → NATS → a subscriber in this same process
//! → a Rhai AST compiled once at start, evaluated on a fixed pool of
//! dedicated OS threads → reply over NATS → HTTP response.
//!
//! - `core`: core NATS request/reply on `{prefix}.invoke.hello` (names
//!   from `picloud_bus::Names`, as PiCloud's own), answered by
//!   a queue-group subscriber (what PiCloud does for sync HTTP).
//! - `jetstream`: the job is published to a work-queue stream (publish ack
//!   awaited, so the job is durable before we wait for the answer), taken
//!   by a durable pull consumer, evaluated, answered on a per-request core
//!   NATS subject (one shared subscription demultiplexes the answers), then
//!   acked.
//!
//! The prefix (subjects, stream) is unique per run; the stream is deleted
//! on SIGINT/SIGTERM. The reply's first byte is a status (`0` ok, `1`
//! script error, `2` saturated), the rest the script's value as text.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, RequestErrorKind, Subject};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use picloud_bench::{
    RhaiPool, Saturated, default_threads, shutdown_signal, unique_prefix, work_queue_consumer,
};
use picloud_bus::Names;
use tokio::sync::oneshot;

const REPLY_HEADER: &str = "Bench-Reply-To";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Core,
    Jetstream,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Storage {
    File,
    Memory,
}

#[derive(Parser)]
#[command(about = "Minimal axum → NATS → Rhai pipe (benchmark baseline)")]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// core: request/reply + queue group; jetstream: work-queue stream.
    #[arg(long, value_enum, default_value = "core")]
    mode: Mode,
    /// JetStream storage for the job stream (jetstream mode only).
    #[arg(long, value_enum, default_value = "file")]
    storage: Storage,
    /// The Rhai script, compiled once.
    #[arg(long, default_value = "\"Hello, world!\"")]
    script: String,
    /// Worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Jobs queued beyond busy workers before answering "saturated".
    #[arg(long, default_value_t = 1024)]
    queue_depth: usize,
    /// Give the worker side its own NATS connection (as PiCloud's gateway
    /// and executor have) instead of sharing the HTTP side's.
    #[arg(long)]
    split_connections: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = RhaiPool::start(
        &args.script,
        args.workers.unwrap_or_else(default_threads),
        args.queue_depth,
    )
    .context("cannot compile the script")?;
    let connect = |role: &'static str| {
        let url = args.nats.clone();
        async move {
            async_nats::ConnectOptions::new()
                .name(format!("picloud-bench-pipe-{role}"))
                .connect(&url)
                .await
                .with_context(|| format!("cannot connect to {url}"))
        }
    };
    let client = connect("http").await?;
    let back = if args.split_connections {
        connect("workers").await?
    } else {
        client.clone()
    };
    let prefix = unique_prefix();

    let (app, cleanup) = match args.mode {
        Mode::Core => (core_mode(&client, &back, &prefix, pool).await?, None),
        Mode::Jetstream => {
            let (app, stream) = jetstream_mode(&client, &back, &prefix, pool, args.storage).await?;
            (app, Some(stream))
        }
    };

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "baseline-pipe ({}) listening on http://{}, prefix {prefix}",
        match args.mode {
            Mode::Core => "core",
            Mode::Jetstream => "jetstream",
        },
        listener.local_addr()?
    );
    let served = tokio::select! {
        r = axum::serve(listener, app).into_future() => r.map_err(anyhow::Error::from),
        _ = shutdown_signal() => Ok(()),
    };
    if let Some(name) = cleanup {
        let js = jetstream::new(client.clone());
        match tokio::time::timeout(Duration::from_secs(5), js.delete_stream(&name)).await {
            Ok(Ok(_)) => eprintln!("deleted stream {name}"),
            Ok(Err(e)) => eprintln!("cannot delete stream {name}: {e}"),
            Err(_) => eprintln!("cannot delete stream {name}: timed out"),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    served
}

/// Status byte + the script's value.
fn encode(out: Result<String, String>) -> Bytes {
    let (status, text) = match out {
        Ok(v) => (b'0', v),
        Err(e) => (b'1', e),
    };
    let mut b = BytesMut::with_capacity(text.len() + 1);
    b.put_u8(status);
    b.put_slice(text.as_bytes());
    b.freeze()
}

fn saturated() -> Result<String, String> {
    Err("saturated".into())
}

fn http_reply(payload: &[u8]) -> Response {
    match payload.split_first() {
        Some((b'0', body)) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Bytes::copy_from_slice(body),
        )
            .into_response(),
        Some((_, body)) if body == b"saturated" => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Hands a job the pool refused back its "saturated" answer, off the
/// async threads (the completion blocks while publishing).
fn refuse(Saturated(done): Saturated) {
    tokio::task::spawn_blocking(move || done(saturated()));
}

// ---- core request/reply --------------------------------------------------

struct Core {
    client: Client,
    subject: Subject,
}

/// `client` sends requests (HTTP side); `back` serves them (workers).
async fn core_mode(
    client: &Client,
    back: &Client,
    prefix: &str,
    pool: RhaiPool,
) -> anyhow::Result<Router> {
    let names = Names::new(prefix);
    let subject = Subject::from(names.invoke_subject("hello"));
    let mut sub = back
        .queue_subscribe(names.invoke_wildcard(), names.executor_group())
        .await?;
    let c = back.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply else { continue };
            let client = c.clone();
            let job = Box::new(move |out: Result<String, String>| {
                // Publishing only queues the message for the connection
                // task; blocking this worker thread on it is fine.
                let _ = futures::executor::block_on(client.publish(reply, encode(out)));
            });
            if let Err(s) = pool.try_submit(job) {
                refuse(s);
            }
        }
    });
    let state = Arc::new(Core {
        client: client.clone(),
        subject,
    });
    Ok(Router::new().fallback(core_handler).with_state(state))
}

async fn core_handler(State(s): State<Arc<Core>>, uri: Uri) -> Response {
    let request = async_nats::Request::new()
        .payload(Bytes::copy_from_slice(uri.path().as_bytes()))
        .timeout(Some(TIMEOUT));
    match s.client.send_request(s.subject.clone(), request).await {
        Ok(msg) => http_reply(&msg.payload),
        Err(e) => match e.kind() {
            RequestErrorKind::NoResponders => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            RequestErrorKind::TimedOut => StatusCode::GATEWAY_TIMEOUT.into_response(),
            _ => StatusCode::BAD_GATEWAY.into_response(),
        },
    }
}

// ---- JetStream work queue -------------------------------------------------

type Pending = Mutex<HashMap<u64, oneshot::Sender<Bytes>>>;

struct Js {
    js: jetstream::Context,
    subject: Subject,
    reply_prefix: String,
    next: AtomicU64,
    pending: Arc<Pending>,
}

/// `client` publishes jobs and takes answers (HTTP side); `back` consumes
/// the jobs and answers them (workers).
async fn jetstream_mode(
    client: &Client,
    back: &Client,
    prefix: &str,
    pool: RhaiPool,
    storage: Storage,
) -> anyhow::Result<(Router, String)> {
    let js = jetstream::new(client.clone());
    let names = Names::new(prefix);
    let stream_name = names.jobs_stream();
    let subject = names.job_subject("hello");
    js.get_or_create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![subject.clone()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: match storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        // A run that dies without cleaning up leaves nothing for long.
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create stream {stream_name}: {e}"))?;
    let consumer = work_queue_consumer(back, &stream_name).await?;

    // Workers: take jobs from the stream, answer on the job's reply subject,
    // then ack (a work-queue stream deletes acked messages).
    let c = back.clone();
    let mut consumer = consumer;
    tokio::spawn(async move {
        while let Some(m) = consumer.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    // Transient (missed heartbeat, reconnect); fatal errors
                    // end the stream. Never spin on a repeating one.
                    eprintln!("consumer: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let reply = m
                .headers
                .as_ref()
                .and_then(|h| h.get(REPLY_HEADER))
                .map(|v| Subject::from(v.as_str()));
            let Some(reply) = reply else {
                let _ = m.ack().await;
                continue;
            };
            let client = c.clone();
            let job = Box::new(move |out: Result<String, String>| {
                futures::executor::block_on(async {
                    let _ = client.publish(reply, encode(out)).await;
                    let _ = m.ack().await;
                });
            });
            if let Err(s) = pool.try_submit(job) {
                refuse(s);
            }
        }
    });

    // Answers: one subscription, demultiplexed by the last subject token.
    let reply_prefix = format!("{prefix}.reply");
    let pending: Arc<Pending> = Arc::default();
    let mut answers = client.subscribe(format!("{reply_prefix}.*")).await?;
    let p = pending.clone();
    tokio::spawn(async move {
        while let Some(msg) = answers.next().await {
            let id = msg.subject.rsplit('.').next().and_then(|t| t.parse().ok());
            let tx = id.and_then(|id| p.lock().unwrap_or_else(|e| e.into_inner()).remove(&id));
            if let Some(tx) = tx {
                let _ = tx.send(msg.payload);
            }
        }
    });

    let state = Arc::new(Js {
        js,
        subject: Subject::from(subject),
        reply_prefix,
        next: AtomicU64::new(0),
        pending,
    });
    Ok((
        Router::new().fallback(js_handler).with_state(state),
        stream_name,
    ))
}

async fn js_handler(State(s): State<Arc<Js>>, uri: Uri) -> Response {
    let id = s.next.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    s.pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx);
    let answer = async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(REPLY_HEADER, format!("{}.{id}", s.reply_prefix));
        let payload = Bytes::copy_from_slice(uri.path().as_bytes());
        // The job is durable once the stream has acked it.
        let ack =
            s.js.publish_with_headers(s.subject.clone(), headers, payload)
                .await
                .map_err(|_| StatusCode::BAD_GATEWAY)?;
        ack.await.map_err(|_| StatusCode::BAD_GATEWAY)?;
        match tokio::time::timeout(TIMEOUT, rx).await {
            Ok(Ok(payload)) => Ok(payload),
            Ok(Err(_)) => Err(StatusCode::BAD_GATEWAY),
            Err(_) => Err(StatusCode::GATEWAY_TIMEOUT),
        }
    }
    .await;
    match answer {
        Ok(payload) => http_reply(&payload),
        Err(status) => {
            s.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            status.into_response()
        }
    }
}
