//! The executor's job pipeline (issue #17): a job's commit is sent off the
//! worker, so the script's slot and the worker go to its next job while
//! the database answers; the commits in flight are bounded, and a job is
//! acknowledged only once its commit is answered.
//!
//! The first test answers the commits itself (no manager runs while the
//! jobs do), so it can hold them and see how many the executor sends at
//! once. The second shows that a job without effects commits nothing: it
//! is acked once its record is in JetStream, with no manager at all. The
//! third is the accept path's fallback to the outbox.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use picloud_bus::wire::{CommitCall, KvGetCall};
use picloud_bus::{Bus, CallError, Names};
use picloud_core::CommitReply;
use picloud_core::effects::KvGet;
use picloud_executor::jobs::{COMMITS_IN_FLIGHT, script_share};
use picloud_testkit::{Client, TestEnv, eventually, manual_job};

const JOBS: usize = 100;

/// (jobs still in the stream, of every script; `script`'s jobs delivered
/// to an executor and not acked: 0 before an executor opened its consumer)
async fn stream_state(
    js: &async_nats::jetstream::Context,
    names: &Names,
    script: &str,
) -> (u64, u64) {
    let mut stream = js.get_stream(names.jobs_stream()).await.expect("stream");
    let messages = stream.info().await.expect("stream info").state.messages;
    let consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&Names::job_consumer(script))
        .await;
    let pending = match consumer {
        Ok(mut c) => c.info().await.expect("consumer info").num_ack_pending as u64,
        Err(_) => 0,
    };
    (messages, pending)
}

/// Waits until no manager answers on `bus` (the one stopped is gone).
async fn wait_until_no_manager_answers(bus: &Bus) {
    let gone = eventually(Duration::from_secs(30), || async {
        let probe = KvGet {
            script: "probe".into(),
            key: "k".into(),
        };
        matches!(
            bus.request::<KvGetCall>(&probe, Duration::from_secs(1))
                .await,
            Err(CallError::NoResponders)
        )
        .then_some(())
    })
    .await;
    assert!(gone.is_some(), "the manager still answers");
}

#[tokio::test]
async fn held_commits_leave_the_worker_to_the_next_jobs_are_bounded_and_delay_the_acks() {
    let mut env = TestEnv::new().await;
    // One run of the script at a time: before the pipeline, a job waiting
    // for its commit kept that one slot (and its worker).
    env.config.script_concurrency = 1;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    // A kv write: the job has a commit to send.
    c.deploy_ok("quick", r#"kv::set("last", "done"); "done""#)
        .await;
    // From here on no manager runs: the test answers the commits.
    front.shutdown.cancel();
    let bus = Bus::for_role(&env.config, "test").await.expect("bus");
    wait_until_no_manager_answers(&bus).await;
    let mut commits = Box::pin(bus.serve_rpc::<CommitCall>().await.expect("serve"));

    let mut ids = HashSet::new();
    for _ in 0..JOBS {
        let job = manual_job("quick");
        ids.insert(job.id);
        bus.publish_job(&job, &job.id.to_string())
            .await
            .expect("publish");
    }
    env.start_executor().await;

    // Every commit held: the runs go on until COMMITS_IN_FLIGHT jobs wait
    // for their commits' answers (well within the executor's commit
    // timeout of 10 s), and the jobs that ran meanwhile, holding the
    // places of jobs before their run, have sent theirs too (a commit
    // leaves from the worker when its run ends).
    let bound = COMMITS_IN_FLIGHT + script_share(env.config.workers, 1);
    let mut held = Vec::new();
    while held.len() < COMMITS_IN_FLIGHT {
        let next = tokio::time::timeout(Duration::from_secs(8), commits.next()).await;
        let Ok(Some(req)) = next else {
            panic!(
                "only {} commits were sent while the first was held (want {COMMITS_IN_FLIGHT})",
                held.len()
            );
        };
        held.push(req);
    }
    // No more than that, ...
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(1_500), commits.next()).await {
        held.push(next.expect("served"));
        assert!(
            held.len() <= bound,
            "a commit past the {bound} in flight was sent"
        );
    }
    // ... no more jobs pulled than those plus the script's share of the
    // jobs pulled at once, and none acked before its commit is answered.
    let js = env.jetstream().await;
    let (messages, pending) = stream_state(&js, bus.names(), "quick").await;
    assert_eq!(
        messages, JOBS as u64,
        "a job was acked before its commit was answered"
    );
    assert!(pending <= bound as u64, "{pending} jobs pulled and unacked");

    // Answered: every job commits once and is acked.
    let mut committed = HashSet::new();
    for mut req in held {
        committed.insert(req.take_body().record.id);
        bus.answer::<CommitCall>(&req, &CommitReply::Committed)
            .await
            .unwrap();
    }
    while committed.len() < JOBS {
        let next = tokio::time::timeout(Duration::from_secs(30), commits.next()).await;
        let Ok(Some(mut req)) = next else {
            panic!("only {} of {JOBS} jobs committed", committed.len());
        };
        let commit = req.take_body();
        let reply = if committed.insert(commit.record.id) {
            CommitReply::Committed
        } else {
            // A commit whose answer came after the executor's timeout is
            // sent again: applied once.
            CommitReply::AlreadyCommitted
        };
        bus.answer::<CommitCall>(&req, &reply).await.unwrap();
    }
    assert_eq!(committed, ids);
    let acked = eventually(Duration::from_secs(30), || async {
        (stream_state(&js, bus.names(), "quick").await.0 == 0).then_some(())
    })
    .await;
    assert!(
        acked.is_some(),
        "jobs left unacked: {:?}",
        stream_state(&js, bus.names(), "quick").await
    );
    env.cleanup().await;
}

/// A job that reads, writes and emits nothing sends no commit: it is acked
/// as soon as the record batch holding its record is stored in JetStream,
/// so it finishes while no manager runs (its record waits in the stream),
/// whereas a job with a kv write is held until a manager commits it. When a
/// manager starts, both records are stored, each once.
#[tokio::test]
async fn a_job_without_effects_is_acked_once_its_record_is_in_jetstream() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("quiet", r#"print("ran"); "done""#).await;
    c.deploy_ok("writes", r#"kv::set("k", 1); "done""#).await;
    front.shutdown.cancel();
    let bus = Bus::for_role(&env.config, "test").await.expect("bus");
    wait_until_no_manager_answers(&bus).await;

    let (quiet, writes) = (manual_job("quiet"), manual_job("writes"));
    for job in [&quiet, &writes] {
        bus.publish_job(job, &job.id.to_string())
            .await
            .expect("publish");
    }
    env.start_executor().await;
    let js = env.jetstream().await;
    let names = bus.names().clone();
    let records = || async {
        let mut stream = js.get_stream(names.records_stream()).await.expect("stream");
        stream.info().await.expect("stream info").state.messages
    };
    // The quiet job is acked with its record in the records stream; the
    // writing one is still held (no manager answers its commit).
    let acked = eventually(Duration::from_secs(30), || async {
        let quiet_done = stream_state(&js, &names, "quiet").await == (1, 0);
        (quiet_done && records().await >= 1).then_some(())
    })
    .await;
    assert!(
        acked.is_some(),
        "the quiet job was not acked with its record stored: jobs {:?}, {:?}; record batches {}",
        stream_state(&js, &names, "quiet").await,
        stream_state(&js, &names, "writes").await,
        records().await,
    );
    assert_eq!(
        stream_state(&js, &names, "writes").await,
        (1, 1),
        "the job with a kv write was acked without a manager"
    );

    // A manager again: the waiting commit and the waiting record are
    // stored, once each.
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    for job in [&quiet, &writes] {
        let path = format!("/invocations/{}", job.id);
        let stored = eventually(Duration::from_secs(60), || async {
            let resp = c.api(reqwest::Method::GET, &path, None).await;
            let v: serde_json::Value = resp.json().await.ok()?;
            (v["status"] == "ok").then_some(v)
        })
        .await
        .unwrap_or_else(|| panic!("{} ({}) was never stored as ok", job.id, job.script));
        assert_eq!(stored["attempt"], 1, "{stored}");
        if job.script == "quiet" {
            assert!(
                stored["log"].as_str().unwrap_or("").contains("ran"),
                "{stored}"
            );
        }
    }
    let acked = eventually(Duration::from_secs(30), || async {
        (stream_state(&js, &names, "writes").await.0 == 0).then_some(())
    })
    .await;
    assert!(acked.is_some(), "the committed job was not acked");
    let listed = c.get_json("/invocations?script=quiet&limit=10").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    env.cleanup().await;
}

/// The accept path publishes the job from inside its transaction; when
/// JetStream refuses it, the job goes to the outbox in that transaction
/// (same message id) and the call is still accepted. The relay publishes it
/// once JetStream takes it again, and the job applies once.
#[tokio::test]
async fn a_refused_publish_falls_back_to_the_outbox_and_the_job_runs_once() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok(
        "count",
        r#"if request.method == "GET" { return kv::get("runs") ?? 0; }
        kv::set("runs", (kv::get("runs") ?? 0) + 1);
        "counted""#,
    )
    .await;
    c.wait_for_body("count", "0").await;

    // JetStream refuses every job now: no message fits.
    let js = env.jetstream().await;
    let names = Names::new(&env.config.prefix);
    let mut config = js
        .get_stream(names.jobs_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    let open = config.max_message_size;
    config.max_message_size = 1;
    js.update_stream(&config).await.expect("shrink the stream");

    let resp = c
        .http
        .post(format!("{}/fn/count", c.base))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("async call");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let id = body["invocation_id"].as_str().expect("id").to_owned();
    // Accepted, durable in the outbox, not run yet.
    let store = picloud_store::Store::connect(env.config.database_url().unwrap())
        .await
        .expect("store");
    let rows = store.outbox_len().await.expect("outbox");
    assert_eq!(rows, 1, "the job is not in the outbox");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.call("count").await.text().await.unwrap(), "0");

    // JetStream takes jobs again: the relay publishes it and it runs once.
    config.max_message_size = open;
    js.update_stream(&config).await.expect("restore the stream");
    let done = c
        .poll_status(&format!("/status/{id}"), Duration::from_secs(60), |v| {
            v["done"] == true
        })
        .await
        .unwrap_or_else(|| panic!("{id} never finished"));
    assert_eq!(done["status"], "ok", "{done}");
    c.wait_for_body("count", "1").await;
    let rows = store.outbox_len().await.expect("outbox");
    assert_eq!(rows, 0, "the relay left the row");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.call("count").await.text().await.unwrap(), "1");
    env.cleanup().await;
}
