//! Failure tests of the event path: an executor killed in the middle of a
//! burst, and nats-server and Postgres restarted in the middle of one.
//!
//! Every test counts events with one kv read-modify-write state, so that an
//! event applied twice, or lost, shows:
//!
//! ```text
//! state = #{ n: <events applied>, seen: #{ <event id>: <attempt that applied it> } }
//! ```
//!
//! `n == seen.len()` means no event was applied twice (a second application
//! bumps `n` but not the map's size); `seen` ⊇ the ids of every emit whose
//! HTTP call answered 200 means nothing acknowledged was lost. Calls that
//! failed during an outage are not acknowledged: their events may or may
//! not be counted (a commit can succeed while its reply is lost), but
//! never twice.
//!
//! Servers that a test stops are its own ([`PrivateNats`],
//! [`PrivatePostgres`]); executors that a test kills are real
//! `picloud executor` processes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use picloud_testkit::servers::{ChildProcess, PrivateNats, PrivatePostgres};
use picloud_testkit::{
    Client, DEFAULT_DATABASE_URL, DEFAULT_NATS_URL, TestEnv, eventually, free_port, wait_ready,
};
use reqwest::StatusCode;
use serde_json::Value;

/// Logs of the in-process roles, with `RUST_LOG` set.
fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Events per burst call.
const PER_CALL: usize = 10;

/// Deploys `source` as `name`, failing the test on a refused deploy.
async fn deploy(c: &Client, name: &str, source: &str) {
    let resp = c.deploy(name, source).await;
    let status = resp.status();
    assert!(
        status.is_success(),
        "deploy {name}: {status} {}",
        resp.text().await.unwrap_or_default()
    );
}

/// `burst?c=ID` emits `PER_CALL` events with ids `ID-0`, `ID-1`, …; the
/// counter applies them to its state after `work` loop iterations (done
/// before the read, so the slow part does not widen the commit's conflict
/// window); `GET /fn/counter` shows the state.
async fn deploy_counter(c: &Client, work: u32) {
    deploy(
        c,
        "burst",
        &format!(
            r#"let id = request.query.c;
            for i in 0..{PER_CALL} {{ emit("tick", #{{ id: `${{id}}-${{i}}` }}); }}
            "ok""#
        ),
    )
    .await;
    deploy(
        c,
        "counter",
        &format!(
            r#"if event.kind == "http" {{ return kv::get("state") ?? #{{ n: 0, seen: #{{}} }}; }}
            let x = 0;
            for i in 0..{work} {{ x += i; }}
            let s = kv::get("state") ?? #{{ n: 0, seen: #{{}} }};
            s.n += 1;
            s.seen[event.payload.id] = event.attempt;
            kv::set("state", s);"#
        ),
    )
    .await;
    c.subscribe("counter", "tick", 5).await;
}

/// The counter's state: `(n, seen)`.
async fn counter_state(c: &Client) -> Option<(u64, serde_json::Map<String, Value>)> {
    let resp = c
        .http
        .get(format!("{}/fn/counter", c.base))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .ok()?;
    if resp.status() != StatusCode::OK {
        return None;
    }
    let v: Value = resp.json().await.ok()?;
    Some((v["n"].as_u64()?, v["seen"].as_object()?.clone()))
}

/// Waits until every id in `expected` is counted, then checks that nothing
/// was counted twice and that the state stays put. Returns the state.
async fn assert_counted_once(
    c: &Client,
    expected: &BTreeSet<String>,
    limit: Duration,
) -> (u64, serde_json::Map<String, Value>) {
    let last = Mutex::new(None);
    let last_seen = &last;
    let done = eventually(limit, || async move {
        let (n, seen) = counter_state(c).await?;
        let missing = expected.iter().filter(|id| !seen.contains_key(*id)).count();
        *last_seen.lock().unwrap() = Some((n, seen.len(), missing));
        (missing == 0).then_some(())
    })
    .await;
    if done.is_none() {
        let dead = c.get_json("/dead-letters").await;
        panic!(
            "not every acknowledged event was counted within {limit:?}; last (n, counted, \
             missing): {:?}; dead letters: {dead:#}",
            last.lock().unwrap()
        );
    }
    // Nothing arrives later and applies an event a second time: once no
    // job is queued (every one acked), none can be delivered again.
    eventually(Duration::from_secs(60), || async {
        let v = c.get_json("/jobs").await;
        v.as_array()?.is_empty().then_some(())
    })
    .await
    .expect("every queued job is done");
    let (n, seen) = eventually(Duration::from_secs(20), || counter_state(c))
        .await
        .expect("the counter answers");
    assert_eq!(
        n as usize,
        seen.len(),
        "an event was applied more than once (n = {n}, distinct events = {})",
        seen.len()
    );
    let dead = c.get_json("/dead-letters").await;
    assert_eq!(
        dead.as_array().map(Vec::len),
        Some(0),
        "dead letters: {dead}"
    );
    (n, seen)
}

/// How many counted events were applied by a redelivery.
fn redelivered(seen: &serde_json::Map<String, Value>) -> usize {
    seen.values()
        .filter(|a| a.as_u64().is_some_and(|a| a >= 2))
        .count()
}

// ---- an executor killed mid-burst ------------------------------------------

/// The id an executor logged when it started (`executor started executor=…`).
fn executor_id(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("executor started"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("executor="))
        })
        .expect("the executor logged its id")
        .to_owned()
}

/// A `picloud executor` process on `env`'s NATS and prefix, logging to `log`.
async fn spawn_executor(env: &TestEnv, log: &std::path::Path) -> ChildProcess {
    let port = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_picloud"));
    cmd.arg("executor")
        .env_remove("PICLOUD_CONFIG")
        .env_remove("PICLOUD_DATABASE_URL")
        .env("PICLOUD_NATS_URL", env.config.nats_url().unwrap())
        .env("PICLOUD_PREFIX", &env.config.prefix)
        .env("PICLOUD_LISTEN", format!("127.0.0.1:{port}"))
        .env("PICLOUD_WORKERS", env.config.workers.to_string())
        .env(
            "PICLOUD_SCRIPT_CONCURRENCY",
            env.config.script_concurrency.to_string(),
        )
        .env(
            "PICLOUD_JOB_ACK_WAIT_MS",
            env.config.job_ack_wait_ms.to_string(),
        )
        .env(
            "PICLOUD_RETRY_BASE_MS",
            env.config.retry_base_ms.to_string(),
        )
        .env("PICLOUD_RETRY_MAX_MS", env.config.retry_max_ms.to_string())
        .env("RUST_LOG", "info,async_nats=warn");
    let mut child = ChildProcess::spawn("picloud executor", cmd, Some(log));
    wait_ready(&mut child, "picloud executor", port, log).await;
    child
}

#[tokio::test]
async fn an_executor_killed_mid_burst_loses_nothing_and_applies_nothing_twice() {
    trace();
    let started = Instant::now();
    let mut env = TestEnv::new().await;
    env.config.workers = 2;
    env.config.job_ack_wait_ms = 2_000;
    // Eight concurrent burst calls: above the default per-script cap.
    env.config.script_concurrency = 8;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    let logs = tempfile::tempdir().unwrap();
    let victim_log = logs.path().join("victim.log");
    let survivor_log = logs.path().join("survivor.log");
    let mut victim = spawn_executor(&env, &victim_log).await;
    let survivor = spawn_executor(&env, &survivor_log).await;
    // Jobs slow enough (tens of ms in a debug build) that the kill lands
    // while the victim runs some.
    deploy_counter(&c, 20_000).await;

    // The whole burst is acknowledged before the kill: 400 events from 40
    // calls, eight at a time.
    let calls: Vec<usize> = (0..40).collect();
    for chunk in calls.chunks(8) {
        let sent = chunk.iter().map(|call| {
            let c = c.clone();
            async move { (*call, c.call(&format!("burst?c={call}")).await.status()) }
        });
        for (call, status) in futures::future::join_all(sent).await {
            assert_eq!(status, StatusCode::OK, "burst call {call}");
        }
    }
    let expected: BTreeSet<String> = calls
        .iter()
        .flat_map(|call| (0..PER_CALL).map(move |i| format!("{call}-{i}")))
        .collect();

    // Mid-burst: some events counted, most not yet, and the victim among
    // those running them (so it holds jobs when it dies).
    let victim_id = executor_id(&victim_log);
    let progress = eventually(Duration::from_secs(60), || async {
        let (n, _) = counter_state(&c).await?;
        let runs = c.get_json("/invocations?script=counter&limit=1000").await;
        let victim_ran = runs
            .as_array()?
            .iter()
            .any(|r| r["executor"].as_str() == Some(victim_id.as_str()));
        (n >= 40 && victim_ran).then_some(n)
    })
    .await
    .expect("the counter makes progress, the victim too");
    victim.kill();
    let (n_at_kill, _) = counter_state(&c).await.unwrap_or_default();
    assert!(
        (n_at_kill as usize) < expected.len(),
        "the burst ended before the kill (n = {n_at_kill})"
    );
    eprintln!("killed the victim executor at n = {progress}..{n_at_kill}");

    let (n, seen) = assert_counted_once(&c, &expected, Duration::from_secs(90)).await;
    assert_eq!(n as usize, expected.len());
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    // The victim held jobs (running or pulled) when it died: they came
    // back to the survivor after the ack wait.
    let again = redelivered(&seen);
    assert!(
        again >= 1,
        "no job was redelivered; victim log:\n{}",
        std::fs::read_to_string(&victim_log).unwrap_or_default()
    );
    // Redeliveries come from the kill, not from commits that failed.
    let survivor_text = std::fs::read_to_string(&survivor_log).unwrap_or_default();
    let not_committed = survivor_text.matches("job not committed").count();
    eprintln!(
        "{n} events counted once each, {again} of them on a redelivery \
         ({not_committed} retried by the survivor for a failed commit), in {:?}",
        started.elapsed()
    );
    drop(survivor);
    env.cleanup().await;
}

// ---- servers restarted mid-burst -------------------------------------------

/// What a burst through an outage saw.
struct BurstReport {
    /// Event ids of the calls that answered 200.
    acknowledged: BTreeSet<String>,
    ok_calls: usize,
    failed_calls: usize,
}

/// Calls `burst` from two concurrent callers until at least `before` calls
/// succeeded, runs `outage`, then calls on until `after` more calls succeeded
/// since the outage ended (bounded). Failed calls (5xx, timeouts) are not
/// acknowledged; their ids are left out.
async fn burst_through(
    c: &Client,
    before: usize,
    after: usize,
    outage: impl Future<Output = ()>,
) -> BurstReport {
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (c, next, ok, stop, acked, failed) = (
                c.clone(),
                next.clone(),
                ok.clone(),
                stop.clone(),
                acked.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let call = next.fetch_add(1, Ordering::SeqCst);
                    let resp = c
                        .http
                        .get(format!("{}/fn/burst?c={call}", c.base))
                        .timeout(Duration::from_secs(15))
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status() == StatusCode::OK => {
                            acked
                                .lock()
                                .unwrap()
                                .extend((0..PER_CALL).map(|i| format!("{call}-{i}")));
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            // Do not spin while everything is down.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let reached = |n: usize| {
        let ok = ok.clone();
        async move {
            eventually(Duration::from_secs(60), || {
                let ok = ok.clone();
                async move { (ok.load(Ordering::SeqCst) >= n).then_some(()) }
            })
            .await
        }
    };
    let warm = reached(before).await;
    if warm.is_some() {
        outage.await;
    }
    let resumed = match warm {
        Some(()) => reached(ok.load(Ordering::SeqCst) + after).await,
        None => None,
    };
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    assert!(warm.is_some(), "the burst never got going");
    assert!(
        resumed.is_some(),
        "calls did not succeed again after the outage ({} ok, {} failed)",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    let acknowledged = std::mem::take(&mut *acked.lock().unwrap());
    BurstReport {
        acknowledged,
        ok_calls: ok.load(Ordering::SeqCst),
        failed_calls: failed.load(Ordering::SeqCst),
    }
}

/// Runs a front and two executors on `env`, bursts events into the counter
/// while `outage` takes a server down and brings it back, and checks that
/// every acknowledged event was counted exactly once. Returns the counter's
/// `seen` map (event id → attempt that applied it).
async fn burst_through_outage(
    mut env: TestEnv,
    what: &str,
    outage: impl Future<Output = ()>,
) -> serde_json::Map<String, Value> {
    let started = Instant::now();
    env.config.job_ack_wait_ms = 2_000;
    let front = env.start_front().await;
    let _ex1 = env.start_executor().await;
    let _ex2 = env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    deploy_counter(&c, 2_000).await;

    let report = burst_through(&c, 15, 15, outage).await;
    let (n, seen) = assert_counted_once(&c, &report.acknowledged, Duration::from_secs(100)).await;
    eprintln!(
        "{what} restart: {} calls ok, {} failed; {} events acknowledged, {n} counted once each \
         ({} on a redelivery), in {:?}",
        report.ok_calls,
        report.failed_calls,
        report.acknowledged.len(),
        redelivered(&seen),
        started.elapsed()
    );
    env.cleanup().await;
    seen
}

#[tokio::test]
async fn a_nats_restart_mid_burst_loses_nothing_acknowledged() {
    trace();
    let mut nats = PrivateNats::new().await;
    let admin =
        std::env::var("PICLOUD_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into());
    let env = TestEnv::on(&admin, &nats.url()).await;
    burst_through_outage(env, "nats", async {
        nats.stop().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        nats.start().await;
    })
    .await;
}

#[tokio::test]
async fn a_postgres_restart_mid_burst_loses_nothing_acknowledged() {
    trace();
    let mut pg = PrivatePostgres::new().await;
    let nats_url =
        std::env::var("PICLOUD_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_NATS_URL.into());
    let env = TestEnv::on(&pg.url("postgres"), &nats_url).await;
    let seen = burst_through_outage(env, "postgres", async {
        pg.stop().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        pg.start().await;
    })
    .await;
    // The outage is not the scripts' fault: jobs that could not commit were
    // held and run again, not handed back, so it spent none of their
    // attempts (JetStream's delivery count).
    assert_eq!(
        redelivered(&seen),
        0,
        "a Postgres outage must not count as a failed attempt"
    );
}

/// Nodes starting together make the streams together: none fails because
/// another's create of the same stream was under way (nats-server 2.9
/// refused the second create with "subjects overlap with an existing
/// stream", and a manager of a three-node test exited on it).
#[tokio::test]
async fn nodes_starting_at_once_all_find_their_streams() {
    let env = TestEnv::new().await;
    let connects = (0..8).map(|_| picloud_bus::Bus::for_role(&env.config, "test"));
    for bus in futures::future::join_all(connects).await {
        bus.expect("connected, with its streams and buckets");
    }
    env.cleanup().await;
}
