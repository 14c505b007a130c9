//! Test support shared by every end-to-end test.
//!
//! [`TestEnv::new`] gives a test its own Postgres database and its own NATS
//! prefix (so its subjects, streams and buckets are its own), on the real
//! servers named by `PICLOUD_TEST_DATABASE_URL` (default: the local
//! Postgres) and `PICLOUD_TEST_NATS_URL` (default: the local NATS). Tests
//! therefore run in parallel without meeting. Roles run in-process on
//! loopback ports; [`TestEnv::cleanup`] drops the database and the streams.
//! Tests that stop or kill servers use [`TestEnv::on`] with the private
//! servers of [`servers`].

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use picloud_core::{Config, Shutdown};
use serde_json::Value;

pub mod servers;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

pub struct TestEnv {
    pub config: Config,
    pub token: String,
    admin_url: String,
    db_name: String,
    shutdowns: Vec<Shutdown>,
}

/// A running manager + gateway (one port, like `picloud up`).
pub struct Front {
    pub base: String,
    pub shutdown: Shutdown,
    pub addr: SocketAddr,
}

/// A running executor.
pub struct ExecutorHandle {
    pub id: String,
    pub shutdown: Shutdown,
    done: tokio::task::JoinHandle<()>,
}

impl ExecutorHandle {
    /// Stops the executor and waits for it to drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
    }
}

impl TestEnv {
    pub async fn new() -> Self {
        let admin_url = std::env::var("PICLOUD_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_DATABASE_URL.into());
        let nats_url =
            std::env::var("PICLOUD_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_NATS_URL.into());
        Self::on(&admin_url, &nats_url).await
    }

    /// An env on the given servers: `admin_url` is a Postgres database from
    /// which the test's own database is created.
    pub async fn on(admin_url: &str, nats_url: &str) -> Self {
        let (admin_url, nats_url) = (admin_url.to_owned(), nats_url.to_owned());
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("picloud_test_{}", &id[..16]);
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("test Postgres at {admin_url} is not reachable: {e}"));
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        gc_stale_streams(&nats_url).await;
        let token = format!("test-token-{}", &id[16..]);
        let config = Config {
            database_url: Some(replace_db(&admin_url, &db_name).into()),
            nats_url: Some(nats_url.into()),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: Some(token.clone().into()),
            prefix: format!("t{}", &id[..12]),
            // A key of its own: nothing is written to the data directory.
            secrets_key: Some(test_key(&id).into()),
            workers: 2,
            // Failed jobs come back quickly in tests.
            retry_base_ms: 50,
            retry_max_ms: 1_000,
            ..Config::default()
        };
        Self {
            config,
            token,
            admin_url,
            db_name,
            shutdowns: Vec::new(),
        }
    }

    /// Starts a manager and a gateway on one loopback port.
    pub async fn start_front(&mut self) -> Front {
        let shutdown = Shutdown::new();
        self.shutdowns.push(shutdown.clone());
        let manager =
            picloud_manager::start(&self.config, self.bus("manager").await, shutdown.clone())
                .await
                .expect("manager starts");
        let gateway =
            picloud_gateway::start(&self.config, self.bus("gateway").await, shutdown.clone())
                .await
                .expect("gateway starts");
        let router = picloud_http::json_method_errors(
            manager.router.clone().merge(gateway.router.clone()).merge(
                picloud_http::health_router(vec![manager.ready.clone(), gateway.ready.clone()]),
            ),
        );
        let listener = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let s = shutdown.clone();
        let limits = picloud_http::ServeLimits::from_config(&self.config);
        tokio::spawn(async move {
            let _ = picloud_http::serve_on(listener, router, s.clone(), limits).await;
            s.cancel();
            gateway.join().await;
            manager.join().await;
        });
        Front {
            base: format!("http://{addr}"),
            shutdown,
            addr,
        }
    }

    /// A connection of its own for each role, as in cluster mode.
    async fn bus(&self, role: &str) -> picloud_bus::Bus {
        picloud_bus::Bus::for_role(&self.config, role)
            .await
            .expect("connects to NATS")
    }

    pub async fn start_executor(&mut self) -> ExecutorHandle {
        let shutdown = Shutdown::new();
        self.shutdowns.push(shutdown.clone());
        let executor =
            picloud_executor::start(&self.config, self.bus("executor").await, shutdown.clone())
                .await
                .expect("executor starts");
        let id = executor.id.clone();
        let done = tokio::spawn(executor.join());
        ExecutorHandle { id, shutdown, done }
    }

    /// A JetStream context on a connection of its own to the env's NATS.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let url = self.config.nats_url().expect("a NATS url");
        async_nats::jetstream::new(async_nats::connect(url).await.expect("connects to NATS"))
    }

    /// Stops everything this env started, drops its database and deletes
    /// its streams.
    pub async fn cleanup(self) {
        for s in &self.shutdowns {
            s.cancel();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(admin) = sqlx::PgPool::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            ))
            .execute(&admin)
            .await;
            admin.close().await;
        }
        if let Some(url) = self.config.nats_url()
            && let Ok(client) = async_nats::connect(url).await
        {
            let js = async_nats::jetstream::new(client);
            for stream in picloud_bus::Names::new(&self.config.prefix).all_streams() {
                let _ = js.delete_stream(stream).await;
            }
        }
    }
}

/// Deletes, once per test process, the streams of test envs that were never
/// cleaned up (a test that panicked skips `cleanup`) and are older than any
/// test runs. A shared nats-server reserves each events stream's
/// `max_bytes` against its JetStream storage, so leaked streams would
/// otherwise pile up across runs until no test can create one.
async fn gc_stale_streams(nats_url: &str) {
    use futures::StreamExt;
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let Ok(client) = async_nats::connect(nats_url).await else {
            return;
        };
        let js = async_nats::jetstream::new(client);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut stale = Vec::new();
        let mut streams = js.streams();
        while let Some(Ok(info)) = streams.next().await {
            let name = &info.config.name;
            let bare = name.strip_prefix("KV_").unwrap_or(name);
            let is_test = bare.len() > 14
                && bare.starts_with('T')
                && bare.as_bytes()[13] == b'_'
                && bare[1..13].bytes().all(|b| b.is_ascii_hexdigit());
            if is_test && now - info.created.unix_timestamp() > STALE_AFTER.as_secs() as i64 {
                stale.push(name.clone());
            }
        }
        for name in stale {
            let _ = js.delete_stream(&name).await;
        }
    })
    .await;
}

/// No test runs this long: a test env's streams older than this are leaks.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// A 32-byte base64 key derived from the test's id.
fn test_key(id: &str) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // 32 bytes = 43 base64 characters and one '=' of padding; the id's hex
    // digits pick characters, and the last one must leave no stray bits.
    let mut key: String = id
        .bytes()
        .cycle()
        .take(42)
        .map(|b| B64[(b % 64) as usize] as char)
        .collect();
    key.push_str("A=");
    key
}

fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A small admin/`/fn` client for tests.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn deploy(&self, name: &str, source: &str) -> reqwest::Response {
        self.deploy_json(name, serde_json::json!({ "source": source }))
            .await
    }

    /// Deploys `source` as `name`, failing the test on a refused deploy.
    pub async fn deploy_ok(&self, name: &str, source: &str) {
        let resp = self.deploy(name, source).await;
        let status = resp.status();
        assert!(
            status.is_success(),
            "deploy {name}: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    }

    pub async fn deploy_json(&self, name: &str, body: Value) -> reqwest::Response {
        self.http
            .put(format!("{}/api/v1/scripts/{name}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("deploy request")
    }

    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("api request")
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Value {
        let resp = self.api(reqwest::Method::POST, path, Some(body)).await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).expect("json")
    }

    /// Subscribes `script` to `topic`; returns the subscription.
    pub async fn subscribe(&self, script: &str, topic: &str, max_attempts: u32) -> Value {
        self.post_json(
            "/subscriptions",
            serde_json::json!({ "script": script, "topic": topic, "max_attempts": max_attempts }),
        )
        .await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.api(reqwest::Method::GET, path, None).await;
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.expect("json")
    }

    /// Polls the public status URL `location` (a path: `/status/{id}`)
    /// until `done` holds for its JSON; `None` once `limit` has passed.
    pub async fn poll_status(
        &self,
        location: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let done = &done;
        eventually(limit, || async move {
            let v: Value = self
                .http
                .get(format!("{}{location}", self.base))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            done(&v).then_some(v)
        })
        .await
    }

    pub async fn call(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/fn/{path}", self.base))
            .send()
            .await
            .expect("fn request")
    }

    /// Calls `/fn/{path}` until its body equals `expected` (bounded retry,
    /// for changes that propagate through the bus).
    pub async fn wait_for_body(&self, path: &str, expected: &str) {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(20) {
            let resp = self.call(path).await;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::OK && body == expected {
                return;
            }
            last = format!("{status} {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("/fn/{path} never answered {expected:?}; last answer: {last}");
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    picloud_supervise::free_port().expect("a free loopback port")
}

/// Waits until the role process `child` (named `name`, logging to `log`)
/// answers `/readyz` with 200 on loopback `port`; fails the test with its
/// log if it does not within a minute or exits.
pub async fn wait_ready(
    child: &mut servers::ChildProcess,
    name: &str,
    port: u16,
    log: &std::path::Path,
) {
    let http = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(60), || async {
        let (status, _) = readyz(&http, port).await?;
        (status == reqwest::StatusCode::OK).then_some(())
    })
    .await;
    assert!(
        ready.is_some() && child.is_running(),
        "{name} did not become ready; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// `GET /readyz` of a process on a loopback port: its status and body, or
/// `None` while nothing answers.
pub async fn readyz(http: &reqwest::Client, port: u16) -> Option<(reqwest::StatusCode, String)> {
    let r = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .ok()?;
    let status = r.status();
    Some((status, r.text().await.ok()?))
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A manual job of `script` under a fresh id (one attempt), to publish
/// straight to the jobs stream.
pub fn manual_job(script: &str) -> picloud_core::Job {
    use picloud_core::{EventInput, Job, Trigger};
    let id = uuid::Uuid::new_v4();
    Job {
        id,
        script: script.into(),
        event: EventInput {
            kind: Trigger::Manual,
            ..EventInput::http(id)
        },
        request: None,
        parent_id: None,
        subscription_id: None,
        schedule_id: None,
        max_attempts: 1,
        public: false,
        chain: Default::default(),
    }
}
