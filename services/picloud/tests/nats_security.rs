//! NATS as a trust boundary (DESIGN.md §6), on nats-servers of the test's
//! own: each role connects as its own user with the permissions
//! `picloud nats-config` prints, the roles' real traffic works through
//! them (sync and async calls, kv, a secret), and what a role must not do
//! is refused by the server; TLS with the CA `picloud dev-certs` writes;
//! a manager role without a shared secrets key refuses to start.

use std::process::Command;
use std::time::Duration;

use picloud_core::{Config, Shutdown};
use picloud_testkit::servers::PrivateNats;
use picloud_testkit::{Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn picloud(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_picloud"))
        .args(args)
        .env_remove("PICLOUD_CONFIG")
        .output()
        .expect("run picloud");
    assert!(
        out.status.success(),
        "picloud {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `config` connecting as `{prefix}-{role}` with `password`.
fn as_role(config: &Config, role: &str, password: &str) -> Config {
    let mut c = config.clone();
    c.nats.user = Some(format!("{}-{role}", config.prefix));
    c.nats.password = Some(password.into());
    c
}

/// A raw client of `role` whose server errors arrive on the returned
/// channel (a permissions violation is reported that way, not as a
/// failed publish).
async fn raw_client(
    url: &str,
    prefix: &str,
    role: &str,
    password: &str,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(
        format!("{prefix}-{role}"),
        password.to_owned(),
    )
    .custom_inbox_prefix(format!("_INBOX.{prefix}.{role}"))
    .event_callback(move |event| {
        let tx = tx.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                let _ = tx.send(e.to_string());
            }
        }
    })
    .connect(url)
    .await
    .expect("raw client connects");
    (client, rx)
}

/// Waits for the server to refuse `what` on `subject`.
async fn refused(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    let wanted = format!("permissions violation for {what} to \"{subject}\"").to_lowercase();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = rx.recv().await {
            if e.to_lowercase().contains(&wanted) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "the server did not refuse {what} on {subject}"
    );
}

/// Publishes to each of `subjects` and waits for the server to refuse it.
async fn publishes_refused(
    client: &async_nats::Client,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    subjects: &[String],
) {
    for subject in subjects {
        client.publish(subject.clone(), "{}".into()).await.unwrap();
        refused(rx, "publish", subject).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_does_its_work_and_nothing_else() {
    let mut env = TestEnv::new().await;
    let prefix = env.config.prefix.clone();
    let block = String::from_utf8(picloud(&["nats-config", "--prefix", &prefix]).stdout).unwrap();
    let passwords: Vec<(String, String)> = picloud_bus::permissions::ROLES
        .iter()
        .map(|r| {
            (
                format!("PICLOUD_NATS_{}_PASSWORD", r.to_ascii_uppercase()),
                format!("pw-{r}-{}", picloud_core::Uuid::new_v4().simple()),
            )
        })
        .collect();
    let env_vars: Vec<(&str, &str)> = passwords
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let nats = PrivateNats::with_config(&block, &env_vars).await;
    env.config.nats_url = Some(nats.url().into());
    let password = |role: &str| {
        passwords[picloud_bus::permissions::ROLES
            .iter()
            .position(|r| *r == role)
            .unwrap()]
        .1
        .clone()
    };

    // The three roles, each as its own NATS user.
    let shutdown = Shutdown::new();
    let bus = |role: &'static str| {
        let c = as_role(&env.config, role, &password(role));
        async move {
            picloud_bus::Bus::for_role(&c, role)
                .await
                .unwrap_or_else(|e| panic!("{role} connects: {e}"))
        }
    };
    let manager = picloud_manager::start(&env.config, bus("manager").await, shutdown.clone())
        .await
        .expect("manager starts");
    let gateway = picloud_gateway::start(&env.config, bus("gateway").await, shutdown.clone())
        .await
        .expect("gateway starts");
    let executor = picloud_executor::start(&env.config, bus("executor").await, shutdown.clone())
        .await
        .expect("executor starts");
    let router = manager.router.clone().merge(gateway.router.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let limits = picloud_http::ServeLimits::from_config(&env.config);
    let s = shutdown.clone();
    tokio::spawn(async move { picloud_http::serve_on(listener, router, s, limits).await });

    // Real traffic: a secret (executor asks, manager answers), kv through
    // commits, a sync call (gateway → executor) and an async one (gateway →
    // manager → jobs stream → executor → records).
    let c = Client::new(&base, &env.token);
    let resp = c
        .api(
            Method::PUT,
            "/secrets/api_key",
            Some(json!({ "value": "sesame" })),
        )
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    c.deploy_ok(
        "guarded",
        r#"let n = kv::get("n"); if n == () { n = 0; } kv::set("n", n + 1); `${secret("api_key")} ${n + 1}`"#,
    )
    .await;
    c.wait_for_body("guarded", "sesame 1").await;
    let resp = c
        .http
        .post(format!("{base}/fn/guarded"))
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    let id = body["invocation_id"].as_str().expect("id").to_owned();
    let status = c
        .poll_status(&format!("/status/{id}"), Duration::from_secs(30), |v| {
            v["done"] == true
        })
        .await
        .expect("the async call finishes");
    assert_eq!(status["status"], "ok", "{status}");
    let resp = c.call("guarded").await;
    assert_eq!(resp.text().await.unwrap(), "sesame 3");

    // What each role must not do.
    let url = nats.url();
    let p = &prefix;
    let upper = picloud_bus::Names::new(p).routes_bucket();
    let (gw, mut gw_errors) = raw_client(&url, p, "gateway", &password("gateway")).await;
    publishes_refused(
        &gw,
        &mut gw_errors,
        &[format!("{p}.secrets.get"), format!("{p}.commit")],
    )
    .await;
    let _sub = gw.subscribe(format!("{p}.secrets.get")).await.unwrap();
    refused(&mut gw_errors, "subscription", &format!("{p}.secrets.get")).await;

    // A gateway watches and reads the routes: no durable consumer, no
    // pull, no ack on them.
    let routes = format!("KV_{upper}");
    let subjects = [
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{routes}.x"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{routes}.x"),
        format!("$JS.ACK.{routes}.x.1.1.1.1.1"),
    ];
    publishes_refused(&gw, &mut gw_errors, &subjects).await;

    let (ex, mut ex_errors) = raw_client(&url, p, "executor", &password("executor")).await;
    // An executor gets single routes and versions: it cannot change,
    // watch or list them (no consumer on either bucket).
    let versions = format!("KV_{}", picloud_bus::Names::new(p).versions_bucket());
    let subjects = [
        format!("$KV.{upper}.route.guarded"),
        format!("$JS.API.CONSUMER.CREATE.{routes}"),
        format!("$JS.API.CONSUMER.CREATE.{versions}.x.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{versions}.x"),
    ];
    publishes_refused(&ex, &mut ex_errors, &subjects).await;
    for subject in [
        format!("{p}.commit"),
        format!("{p}.secrets.get"),
        format!("_INBOX.{p}.gateway.>"),
    ] {
        let _sub = ex.subscribe(subject.clone()).await.unwrap();
        refused(&mut ex_errors, "subscription", &subject).await;
    }

    let (mg, mut mg_errors) = raw_client(&url, p, "manager", &password("manager")).await;
    let _sub = mg.subscribe(format!("{p}.invoke.*")).await.unwrap();
    refused(&mut mg_errors, "subscription", &format!("{p}.invoke.*")).await;
    // A manager uses its streams; it cannot delete, purge or reconfigure
    // them (nor the buckets under them).
    let names = picloud_bus::Names::new(p);
    let subjects = [
        format!("{p}.secrets.get"),
        format!("$JS.API.STREAM.DELETE.{}", names.jobs_stream()),
        format!("$JS.API.STREAM.PURGE.{}", names.records_stream()),
        format!("$JS.API.STREAM.UPDATE.{routes}"),
    ];
    publishes_refused(&mg, &mut mg_errors, &subjects).await;

    // The script still works: nothing above got through.
    let resp = c.call("guarded").await;
    assert_eq!(resp.text().await.unwrap(), "sesame 4");
    shutdown.cancel();
    executor.join().await;
    gateway.join().await;
    manager.join().await;
    env.cleanup().await;
}

#[tokio::test]
async fn tls_with_the_development_ca_and_a_clear_error_without_it() {
    let dir = tempfile::Builder::new()
        .prefix("picloud-certs-")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    picloud(&["dev-certs", &d]);
    let conf = format!(
        "tls {{\n  cert_file: \"{d}/server.pem\"\n  key_file: \"{d}/server-key.pem\"\n  ca_file: \"{d}/ca.pem\"\n  verify: true\n}}\n"
    );
    let nats = PrivateNats::with_config(&conf, &[]).await;
    let url = format!("tls://localhost:{}", nats.port());
    let prefix = format!(
        "tls{}",
        &picloud_core::Uuid::new_v4().simple().to_string()[..8]
    );

    let mut settings = picloud_core::config::NatsSettings {
        ca_file: Some(dir.path().join("ca.pem")),
        cert_file: Some(dir.path().join("executor.pem")),
        key_file: Some(dir.path().join("executor-key.pem")),
        ..Default::default()
    };
    let bus = picloud_bus::Bus::connect_with(&url, &prefix, "executor", &settings)
        .await
        .expect("connects with the development CA");
    assert!(bus.is_connected());

    // One server: every stream gets one replica.
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(dir.path().join("ca.pem"))
        .add_client_certificate(
            dir.path().join("manager.pem"),
            dir.path().join("manager-key.pem"),
        )
        .connect(&url)
        .await
        .expect("raw TLS client");
    let js = async_nats::jetstream::new(client);
    let names = picloud_bus::Names::new(&prefix);
    for stream in [
        names.jobs_stream(),
        names.records_stream(),
        format!("KV_{}", names.routes_bucket()),
    ] {
        let mut s = js.get_stream(&stream).await.expect("stream exists");
        let info = s.info().await.expect("stream info");
        assert_eq!(info.config.num_replicas, 1, "{stream}");
    }

    // Without the CA the server's certificate is not trusted: a clear error.
    settings.ca_file = None;
    let err = picloud_bus::Bus::connect_with(&url, &prefix, "executor", &settings)
        .await
        .err()
        .expect("no connection without the CA");
    let text = err.to_string();
    assert!(text.contains("PICLOUD_NATS_CA"), "{text}");
    assert!(text.to_lowercase().contains("tls"), "{text}");
}

#[tokio::test]
async fn a_manager_role_without_a_shared_secrets_key_refuses_to_start() {
    let env = TestEnv::new().await;
    let mut config = env.config.clone();
    config.secrets_key = None;
    config.listen = "127.0.0.1:0".parse().unwrap();
    let shutdown = Shutdown::new();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        picloud_manager::run(config, shutdown.clone()),
    )
    .await;
    shutdown.cancel();
    let err = result
        .expect("refuses at once")
        .expect_err("a manager role without PICLOUD_SECRETS_KEY does not start");
    let text = format!("{err:#}");
    assert!(text.contains("PICLOUD_SECRETS_KEY is required"), "{text}");
    assert!(text.contains("PICLOUD_SINGLE_NODE"), "{text}");
    env.cleanup().await;
}

#[test]
fn the_shipped_users_file_is_what_nats_config_prints() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../nats/picloud-users.conf");
    let shipped = std::fs::read_to_string(path).expect("nats/picloud-users.conf");
    assert_eq!(
        shipped,
        picloud_bus::permissions::authorization_block("picloud", "PICLOUD_NATS_ROLE_PASSWORD"),
        "regenerate it: picloud nats-config --prefix picloud > nats/picloud-users.conf"
    );
}
