//! Fair sharing (issue #12 §6): past its concurrency cap a script's calls
//! wait in its own queue; when that queue is full they are refused with
//! 429 + `Retry-After`; other scripts still get a worker all along.

use futures::StreamExt;
use std::time::Duration;

use picloud_testkit::{Client, TestEnv, eventually, manual_job};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// An upstream that holds every request until `release` is sent, telling
/// `arrived` about each one as it comes in.
async fn holding_server() -> (String, mpsc::Receiver<()>, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = mpsc::channel(16);
    let (release, released) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (arrived_tx, mut released) = (arrived_tx.clone(), released.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = arrived_tx.try_send(());
                let _ = released.wait_for(|r| *r).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (format!("http://{addr}"), arrived, release)
}

#[tokio::test]
async fn past_its_cap_a_script_queues_then_gets_429_and_another_script_still_runs() {
    let (upstream, mut arrived, release) = holding_server().await;
    let mut env = TestEnv::new().await;
    env.config.http_allow = "127.0.0.1".into();
    env.config.http_ports = "*".into();
    // Two workers; the default cap leaves one of them to other scripts.
    assert_eq!(env.config.workers, 2);
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("slow", &format!(r#"http::get("{upstream}/hold"); "done""#))
        .await;
    c.deploy_ok("other", r#""hi""#).await;
    c.wait_for_body("other", "hi").await;

    let first = {
        let c = Client::new(&front.base, &env.token);
        tokio::spawn(async move {
            let r = c.call("slow").await;
            (r.status(), r.text().await.unwrap_or_default())
        })
    };
    tokio::time::timeout(Duration::from_secs(30), arrived.recv())
        .await
        .expect("the first call reaches the upstream")
        .unwrap();

    // The script holds its one slot: the next calls wait in its queue (a
    // quarter of the executor's in-flight limit: (2 × 4 + 256) / 4 = 66),
    // and once it is full the rest are refused at once, whatever the order
    // they arrive in.
    const QUEUE: usize = 66;
    const CALLS: usize = QUEUE + 10;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    for _ in 0..CALLS {
        let c = Client::new(&front.base, &env.token);
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let r = c.call("slow").await;
            let retry_after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let _ = done_tx.send((status, retry_after, body));
        });
    }
    let mut refused = None;
    for _ in 0..CALLS - QUEUE {
        let (status, retry_after, body) =
            tokio::time::timeout(Duration::from_secs(30), done.recv())
                .await
                .expect("the calls past the full queue are answered at once")
                .unwrap();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"));
        refused = Some(body);
    }
    let body: serde_json::Value = serde_json::from_str(&refused.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    // Another script is not delayed by it.
    let resp = c.call("other").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "hi");

    release.send(true).unwrap();
    let (status, body) = first.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));
    // Every call that waited in the queue ran.
    for _ in 0..QUEUE {
        let (status, _, body) = tokio::time::timeout(Duration::from_secs(60), done.recv())
            .await
            .expect("the queued calls run once the slot is free")
            .unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));
    }
    // With its slot back, the script answers again.
    let ok = eventually(Duration::from_secs(20), || async {
        (c.call("slow").await.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ok.is_some(), "the script never got its slot back");
    env.cleanup().await;
}

/// Queues `n` jobs of `script` straight onto the job stream, pipelined (in
/// chunks: the client allows 5,000 unacknowledged publishes).
async fn flood(env: &TestEnv, script: &str, n: usize) {
    let bus = picloud_bus::Bus::for_role(&env.config, "test")
        .await
        .expect("bus");
    let mut acks = Vec::with_capacity(1_000);
    for i in 0..n {
        let job = manual_job(script);
        acks.push(
            bus.publish_durable_start(
                bus.names().job_subject(script),
                &job.id.to_string(),
                serde_json::to_vec(&job).unwrap().into(),
            )
            .await
            .expect("publish"),
        );
        if acks.len() == 1_000 || i + 1 == n {
            for a in acks.drain(..) {
                a.await.expect("durable");
            }
        }
    }
}

/// The measurement behind "async work is shared fairly" (#12 §6): with
/// 10,000 jobs of one script queued, how long does another script's async
/// call take? The requirement is under one second on a 2-core machine.
/// A single FIFO job consumer runs the flood first (32 s measured here);
/// per-script consumers served in turn start it in well under 100 ms.
#[tokio::test]
async fn fairness_another_scripts_async_call_is_not_stuck_behind_a_flood() {
    const FLOOD: usize = 10_000;
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("flood", "()").await;
    c.deploy_ok("victim", r#""ok""#).await;
    c.wait_for_body("victim", "ok").await;
    flood(&env, "flood", FLOOD).await;

    let started = std::time::Instant::now();
    let resp = c
        .http
        .post(format!("{}/fn/victim", c.base))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let done = c
        .poll_status(&location, Duration::from_secs(600), |v| v["status"] == "ok")
        .await;
    let latency = started.elapsed();
    eprintln!("fairness: victim's async latency behind {FLOOD} queued jobs: {latency:?}");
    assert!(done.is_some(), "the victim's call never ran");
    assert!(
        latency < Duration::from_secs(1),
        "the victim waited {latency:?} behind {FLOOD} jobs of another script"
    );
    env.cleanup().await;
}

/// An installation upgraded from the single shared job consumer: the jobs
/// it held still run, on the per-script consumers that replace it.
#[tokio::test]
async fn jobs_queued_under_the_old_single_consumer_run_after_an_upgrade() {
    use async_nats::jetstream::{self, consumer::pull, stream};

    let mut env = TestEnv::new().await;
    let names = picloud_bus::Names::new(&env.config.prefix);
    let js = jetstream::new(
        async_nats::connect(env.config.nats_url().unwrap())
            .await
            .unwrap(),
    );
    // The stream and consumer as the previous release made them, with a
    // job queued and one delivered but never acked.
    let old = js
        .create_stream(stream::Config {
            name: names.jobs_stream(),
            subjects: vec![names.jobs_wildcard()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = old
        .create_consumer(pull::Config {
            durable_name: Some("executors".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..2 {
        let job = manual_job("legacy");
        js.publish(
            names.job_subject("legacy"),
            serde_json::to_vec(&job).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let mut taken = consumer.fetch().max_messages(1).messages().await.unwrap();
    let _unacked = futures::StreamExt::next(&mut taken).await.unwrap().unwrap();

    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok(
        "legacy",
        r#"if event.kind == "http" { return kv::get("runs") ?? 0; }
        kv::set("runs", (kv::get("runs") ?? 0) + 1);"#,
    )
    .await;
    env.start_executor().await;
    c.wait_for_body("legacy", "2").await;

    let stream = js.get_stream(names.jobs_stream()).await.unwrap();
    assert!(stream.consumer_info("executors").await.is_err());
    env.cleanup().await;
}

/// A job whose doorbell never rang (published by hand, or the ring was
/// lost) is still found behind a flood, by the executors' scan of the
/// stream (every 250 ms while it holds jobs).
#[tokio::test]
async fn a_job_without_a_ring_is_found_by_the_scan_behind_a_flood() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("flood", "()").await;
    c.deploy_ok(
        "quiet",
        r#"if event.kind == "http" { return kv::get("ran") ?? false; }
        kv::set("ran", true);"#,
    )
    .await;
    c.wait_for_body("quiet", "false").await;
    flood(&env, "flood", 3_000).await;

    // Published without the bus: nothing rings.
    let js = env.jetstream().await;
    let names = picloud_bus::Names::new(&env.config.prefix);
    let job = manual_job("quiet");
    let started = std::time::Instant::now();
    js.publish(
        names.job_subject("quiet"),
        serde_json::to_vec(&job).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let ran = eventually(Duration::from_secs(120), || async {
        let r = c.call("quiet").await;
        (r.text().await.ok()? == "true").then_some(())
    })
    .await;
    let latency = started.elapsed();
    eprintln!("fairness: an unannounced job's latency behind 3000 queued jobs: {latency:?}");
    assert!(ran.is_some(), "the job never ran");
    assert!(
        latency < Duration::from_secs(1),
        "the unannounced job waited {latency:?}"
    );
    env.cleanup().await;
}

/// A script's consumer removed under a running executor (the server drops
/// it after an hour without pulls) is made again by the next job.
#[tokio::test]
async fn a_scripts_consumer_removed_under_the_executor_is_made_again() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok(
        "again",
        r#"if event.kind == "http" { return kv::get("runs") ?? 0; }
        kv::set("runs", (kv::get("runs") ?? 0) + 1);"#,
    )
    .await;
    c.wait_for_body("again", "0").await;
    let bus = picloud_bus::Bus::for_role(&env.config, "test")
        .await
        .expect("bus");
    bus.publish_job(&manual_job("again"), &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap();
    c.wait_for_body("again", "1").await;

    let js = env.jetstream().await;
    let names = picloud_bus::Names::new(&env.config.prefix);
    js.get_stream(names.jobs_stream())
        .await
        .unwrap()
        .delete_consumer(&picloud_bus::Names::job_consumer("again"))
        .await
        .unwrap();
    bus.publish_job(&manual_job("again"), &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap();
    c.wait_for_body("again", "2").await;
    env.cleanup().await;
}

/// Jobs published together ring each script's doorbell once, after all of
/// them are stored: a batch of 64 accepted calls (or a commit batch's
/// fan-out) is one ring per script, not one per job.
#[tokio::test]
async fn jobs_published_together_ring_each_scripts_doorbell_once_when_stored() {
    let mut env = TestEnv::new().await;
    // A manager makes the streams; no executor takes the jobs.
    let _front = env.start_front().await;
    let bus = picloud_bus::Bus::for_role(&env.config, "test")
        .await
        .expect("bus");
    let mut rings = Box::pin(bus.job_rings().await.expect("rings"));
    bus.flush().await.expect("flush");
    let jobs: Vec<picloud_core::Job> = (0..25)
        .map(|i| manual_job(if i % 5 == 0 { "rare" } else { "often" }))
        .collect();
    let refs: Vec<&picloud_core::Job> = jobs.iter().collect();
    let done = bus.publish_jobs(&refs).await;
    assert!(done.iter().all(Result::is_ok), "{done:?}");

    let first = tokio::time::timeout(Duration::from_secs(10), rings.next())
        .await
        .expect("a ring")
        .expect("the ring stream");
    // Rung after the acks: every job is in the stream by now.
    let js = env.jetstream().await;
    let names = picloud_bus::Names::new(&env.config.prefix);
    let mut stream = js.get_stream(names.jobs_stream()).await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 25);
    let mut heard = vec![first];
    while let Ok(Some(script)) =
        tokio::time::timeout(Duration::from_millis(500), rings.next()).await
    {
        heard.push(script);
    }
    heard.sort();
    assert_eq!(heard, ["often", "rare"], "one ring per script");
    env.cleanup().await;
}
