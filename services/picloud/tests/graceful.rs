//! Role processes in cluster mode (issue #16): a NATS URL list, and
//! graceful stop: SIGTERM on a real `picloud gateway` or `picloud executor`
//! process while work is in flight.
//!
//! - `PICLOUD_NATS_URL` may list several servers (a cluster's nodes): a role
//!   starts while the first one is down.
//! - A gateway first turns its `/readyz` to 503 "shutting down" and goes on
//!   serving for `PICLOUD_DRAIN_MS` (a load balancer's health check takes it
//!   out meanwhile), then closes its listener and finishes what is in
//!   flight: the request in flight gets its answer, and so does one sent
//!   during the drain.
//! - An executor finishes the sync call and the async job it runs (or hands
//!   the job back): the call gets its answer, and the job is applied exactly
//!   once (a kv counter the script bumps ends at exactly the number of
//!   runs that were acknowledged).
//! - A manager stops its outbox relay between batches: SIGTERM in the middle
//!   of relaying a large outbox loses no row and publishes none twice (the
//!   next manager relays the rest; the stream holds each row once).

use std::path::Path;
use std::time::Duration;

use picloud_supervise::Signal;
use picloud_testkit::servers::ChildProcess;
use picloud_testkit::{Client, TestEnv, eventually, free_port, readyz, wait_ready};
use reqwest::StatusCode;

/// Busy work of about a second in a debug build, then a kv bump; `?read`
/// answers the counter instead.
const SLOW: &str = r#"
if request.query.read != () { return kv::get("runs") ?? 0; }
let x = 0;
for i in 0..400000 { x += i; }
kv::set("runs", (kv::get("runs") ?? 0) + 1);
`done ${x}`
"#;

/// A `picloud ROLE` process on `env`'s NATS and prefix, ready, logging to `log`.
async fn spawn_role(
    env: &TestEnv,
    role: &str,
    log: &Path,
    extra: &[(&str, &str)],
) -> (ChildProcess, u16) {
    let port = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_picloud"));
    cmd.arg(role)
        .env_remove("PICLOUD_CONFIG")
        .env_remove("PICLOUD_DATABASE_URL")
        .env_remove("PICLOUD_DRAIN_MS")
        .env("PICLOUD_NATS_URL", env.config.nats_url().unwrap())
        .env("PICLOUD_PREFIX", &env.config.prefix)
        .env("PICLOUD_LISTEN", format!("127.0.0.1:{port}"))
        .env("PICLOUD_WORKERS", env.config.workers.to_string())
        .env("RUST_LOG", "info,async_nats=warn");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let name = format!("picloud {role}");
    let mut child = ChildProcess::spawn(&name, cmd, Some(log));
    wait_ready(&mut child, &name, port, log).await;
    (child, port)
}

/// Calls `/fn/{path}` in the background: its status and body.
fn call_in_background(
    c: &Client,
    path: &'static str,
) -> tokio::task::JoinHandle<(StatusCode, String)> {
    let c = c.clone();
    tokio::spawn(async move {
        let r = c.call(path).await;
        (r.status(), r.text().await.unwrap_or_default())
    })
}

async fn exits(child: &mut ChildProcess, limit: Duration) -> bool {
    eventually(limit, || {
        let running = child.is_running();
        async move { (!running).then_some(()) }
    })
    .await
    .is_some()
}

#[tokio::test]
async fn a_gateway_on_sigterm_leaves_readiness_then_answers_what_is_in_flight() {
    let mut env = TestEnv::new().await;
    let front = env.start_front().await;
    let executor = env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("slow", SLOW).await;
    c.deploy_ok("fast", "\"fast\"").await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("gateway.log");
    let (mut gateway, port) =
        spawn_role(&env, "gateway", &log, &[("PICLOUD_DRAIN_MS", "1500")]).await;
    let direct = Client::new(&format!("http://127.0.0.1:{port}"), &env.token);
    direct.wait_for_body("fast", "fast").await;

    let in_flight = call_in_background(&direct, "slow");
    // Let the slow call reach the gateway (were it later, it would be
    // served in the drain all the same).
    tokio::time::sleep(Duration::from_millis(200)).await;
    gateway.signal(Signal::SIGTERM);

    let http = reqwest::Client::new();
    let not_ready = eventually(Duration::from_secs(5), || async {
        let (status, body) = readyz(&http, port).await?;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
    })
    .await;
    assert!(
        not_ready
            .as_deref()
            .is_some_and(|b| b.contains("shutting down")),
        "/readyz did not turn 503 \"shutting down\" while draining: {not_ready:?}; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Still serving during the drain.
    let during = direct.call("fast").await;
    assert_eq!(
        during.status(),
        StatusCode::OK,
        "a request during the drain"
    );

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the request in flight: {body}");
    assert!(body.starts_with("done "), "{body}");
    assert!(
        exits(&mut gateway, Duration::from_secs(30)).await,
        "the gateway did not exit after its drain"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("draining"), "log:\n{text}");
    executor.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_executor_on_sigterm_finishes_its_call_and_its_job_once() {
    let mut env = TestEnv::new().await;
    env.config.job_ack_wait_ms = 2_000;
    let front = env.start_front().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("slow", SLOW).await;
    let logs = tempfile::tempdir().unwrap();
    let first_log = logs.path().join("first.log");
    let wait = env.config.job_ack_wait_ms.to_string();
    let extra = [("PICLOUD_JOB_ACK_WAIT_MS", wait.as_str())];
    let (mut first, _) = spawn_role(&env, "executor", &first_log, &extra).await;
    c.wait_for_body("slow?read=1", "0").await;

    // An async job and a sync call, both running on the only executor.
    let http = reqwest::Client::new();
    let accepted = http
        .post(format!("{}/fn/slow", front.base))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();
    let sync = call_in_background(&c, "slow");
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.signal(Signal::SIGTERM);

    let (status, body) = sync.await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "the call in flight: {body}; log:\n{}",
        std::fs::read_to_string(&first_log).unwrap_or_default()
    );
    assert!(
        exits(&mut first, Duration::from_secs(60)).await,
        "the executor did not exit"
    );
    // Whatever the first executor did not finish, a second one does.
    let second_log = logs.path().join("second.log");
    let (second, _) = spawn_role(&env, "executor", &second_log, &extra).await;
    let done = c
        .poll_status(&location, Duration::from_secs(60), |v| v["status"] == "ok")
        .await;
    assert!(done.is_some(), "the job never finished");
    // One sync run and one job run: each applied once.
    let runs = c.call("slow?read=1").await.text().await.unwrap();
    assert_eq!(runs, "2", "kv runs after one call and one job");
    drop(second);
    env.cleanup().await;
}

#[tokio::test]
async fn a_role_starts_on_a_nats_url_list_whose_first_server_is_down() {
    let env = TestEnv::new().await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("gateway.log");
    let list = format!(
        "nats://127.0.0.1:{}, {}",
        free_port(),
        env.config.nats_url().unwrap()
    );
    let (mut gateway, _) = spawn_role(&env, "gateway", &log, &[("PICLOUD_NATS_URL", &list)]).await;
    gateway.kill();
    env.cleanup().await;
}

/// SIGTERM on a `picloud manager` process while its relay publishes a large
/// outbox: the batch in hand is finished (or rolled back and left for the
/// next relay), the rest stays in the outbox, and a second manager relays
/// it. The event stream ends with every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_on_sigterm_mid_relay_loses_and_duplicates_no_outbox_row() {
    use futures::StreamExt;
    use sqlx::Connection;

    const ROWS: usize = 20_000;
    let mut env = TestEnv::new().await;
    let db = env.config.database_url().unwrap().to_owned();
    let key = env.config.secrets_key().unwrap().to_owned();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("manager.log");
    let extra = [
        ("PICLOUD_DATABASE_URL", db.as_str()),
        ("PICLOUD_ADMIN_TOKEN", env.token.as_str()),
        ("PICLOUD_SECRETS_KEY", key.as_str()),
        // Stop at once: a drain would let the relay finish the outbox.
        ("PICLOUD_DRAIN_MS", "0"),
    ];
    let (mut first, _) = spawn_role(&env, "manager", &log, &extra).await;

    // One transaction of events on a topic nobody subscribes to: the relay
    // is woken once and publishes batch after batch.
    let topic = "relay.drain";
    let rows: Vec<picloud_store::OutboxRow> = (0..ROWS)
        .map(|i| {
            picloud_store::OutboxRow::event(&picloud_core::EventMessage {
                id: uuid::Uuid::new_v4(),
                topic: topic.into(),
                payload: serde_json::json!({ "i": i }),
                trace_id: uuid::Uuid::new_v4(),
                source: uuid::Uuid::new_v4(),
                emitted_at: chrono::Utc::now(),
                hop: 1,
            })
        })
        .collect();
    let ids: std::collections::HashSet<String> = rows.iter().map(|r| r.id.to_string()).collect();
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    picloud_store::outbox::insert(&mut tx, &rows).await.unwrap();
    tx.commit().await.unwrap();

    // SIGTERM once the relay is under way.
    let store = picloud_store::Store::connect(&db).await.unwrap();
    let left_at_signal = eventually(Duration::from_secs(60), || async {
        let n = store.outbox_len().await.ok()?;
        (n < ROWS as i64).then_some(n)
    })
    .await
    .expect("the relay never started");
    first.signal(Signal::SIGTERM);
    assert!(
        exits(&mut first, Duration::from_secs(60)).await,
        "the manager did not exit; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let left = store.outbox_len().await.unwrap();
    eprintln!("outbox rows left: {left_at_signal} at SIGTERM, {left} at the manager's exit");
    assert!(
        left_at_signal > 0 && left > 0,
        "the relay was done before SIGTERM ({left_at_signal} rows left at the signal, {left} at exit): \
         the test needs more rows"
    );

    // A second manager relays the rest.
    let _front = env.start_front().await;
    let emptied = eventually(Duration::from_secs(120), || async {
        (store.outbox_len().await.ok()? == 0).then_some(())
    })
    .await;
    assert!(emptied.is_some(), "the outbox was not relayed to the end");

    // The stream holds each row once, under its own message id.
    let client = async_nats::connect(env.config.nats_url().unwrap())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let names = picloud_bus::Names::new(&env.config.prefix);
    let mut stream = js.get_stream(names.events_stream()).await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(
        stored, ROWS as u64,
        "{left_at_signal} rows were left at SIGTERM, {left} at exit"
    );
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: names.event_subject(topic),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < ROWS {
        let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("the stream's messages")
            .unwrap()
            .unwrap();
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .expect("a message id");
        assert!(ids.contains(&id), "a message that is no outbox row: {id}");
        assert!(seen.insert(id.clone()), "published twice: {id}");
    }
    env.cleanup().await;
}
