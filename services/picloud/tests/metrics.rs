//! Metrics and nodes against real processes: a `picloud manager`, a
//! `picloud gateway` and a `picloud executor` (and, apart, `picloud up`),
//! real traffic (sync calls, a script error, a limit hit, async jobs, a dead
//! letter, a cron firing), then every role's `/metrics` is scraped, checked
//! for the values the traffic must have moved, and validated with
//! `promtool check metrics`. `GET /api/v1/nodes` and `picloud status`
//! (`--json` and the table) see the three roles.
//!
//! promtool comes from the Debian package `prometheus` (scripts/test.sh
//! installs it). Without it these tests fail, unless
//! `PICLOUD_TEST_NO_PROMTOOL=1` says to skip only that check.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use picloud_supervise::Signal;
use picloud_testkit::{Client, TestEnv, eventually, free_port};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One role in a process of its own; SIGTERM on drop.
struct Role {
    child: Child,
    base: String,
}

impl Role {
    fn spawn(env: &TestEnv, role: &str, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let config = &env.config;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_picloud"));
        cmd.arg(role)
            .env_remove("PICLOUD_CONFIG")
            .env("PICLOUD_DATABASE_URL", config.database_url().unwrap())
            .env("PICLOUD_NATS_URL", config.nats_url().unwrap())
            .env("PICLOUD_ADMIN_TOKEN", &env.token)
            .env("PICLOUD_PREFIX", &config.prefix)
            .env("PICLOUD_SECRETS_KEY", config.secrets_key().unwrap())
            .env("PICLOUD_LISTEN", format!("127.0.0.1:{port}"))
            .env("PICLOUD_WORKERS", "2")
            .env("PICLOUD_RETRY_BASE_MS", "50")
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("picloud starts");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn ready(&self) {
        let url = format!("{}/readyz", self.base);
        let ok = eventually(Duration::from_secs(60), || async {
            let resp = reqwest::get(&url).await.ok()?;
            (resp.status() == StatusCode::OK).then_some(())
        })
        .await;
        assert!(ok.is_some(), "{} never became ready", self.base);
    }

    async fn scrape(&self, token: Option<&str>) -> String {
        let mut req = reqwest::Client::new().get(format!("{}/metrics", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("scrape");
        assert_eq!(resp.status(), StatusCode::OK, "{}/metrics", self.base);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        resp.text().await.unwrap()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        picloud_supervise::signal(self.child.id(), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The sum of every sample of metric `name` whose labels contain all of
/// `labels` (`key="value"` pairs).
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `promtool check metrics` accepts `text` (see the module docs).
fn promtool_accepts(text: &str, what: &str) {
    if std::env::var("PICLOUD_TEST_NO_PROMTOOL").as_deref() == Ok("1") {
        eprintln!("PICLOUD_TEST_NO_PROMTOOL=1: not validating {what} with promtool");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is required to validate /metrics ({e}); install the Debian package \
                 `prometheus` (scripts/test.sh does) or set PICLOUD_TEST_NO_PROMTOOL=1"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejects the metrics of {what}:\n{}{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `role`'s metrics until `done` holds for them.
async fn scrape_until(role: &Role, token: Option<&str>, done: impl Fn(&str) -> bool) -> String {
    let done = &done;
    let text = eventually(Duration::from_secs(30), || async move {
        let text = role.scrape(token).await;
        done(&text).then_some(text)
    })
    .await;
    match text {
        Some(t) => t,
        None => panic!(
            "{}/metrics never showed the traffic:\n{}",
            role.base,
            role.scrape(token).await
        ),
    }
}

const METRICS_TOKEN: &str = "scrape-me";

#[tokio::test]
async fn every_role_is_scraped_after_real_traffic() {
    let env = TestEnv::new().await;
    // Node announcements: every role says when it starts and stops.
    let bus = picloud_bus::Bus::for_role(&env.config, "test")
        .await
        .unwrap();
    let mut announcements = Box::pin(bus.node_announcements().await.unwrap());
    // Three scripts keep their own label; the fourth and fifth fold.
    // Two invocations of one script may run at once (the default cap is one
    // less than the workers): the kv conflict below needs both running.
    let fold = [
        ("PICLOUD_METRICS_MAX_SCRIPTS", "3"),
        ("PICLOUD_SCRIPT_CONCURRENCY", "2"),
    ];
    let manager = Role::spawn(&env, "manager", &[("PICLOUD_METRICS_TOKEN", METRICS_TOKEN)]);
    // An async call gets one attempt: a failing one is a dead letter at once.
    let gateway = Role::spawn(&env, "gateway", &[("PICLOUD_MAX_ATTEMPTS", "1")]);
    let executor = Role::spawn(&env, "executor", &fold);
    for r in [&manager, &gateway, &executor] {
        r.ready().await;
    }
    let ups = next_announcements(&mut announcements, 3).await;
    assert!(ups.iter().all(|a| a.event == "up"), "{ups:?}");
    let admin = Client::new(&manager.base, &env.token);
    let public = Client::new(&gateway.base, &env.token);
    admin.deploy_ok("hello", r#""hi""#).await;
    admin.deploy_ok("boom", r#"throw "boom""#).await;
    let resp = admin
        .deploy_json(
            "spin",
            json!({"source": "loop {}", "limits": {"max_operations": 1000}}),
        )
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    admin.deploy_ok("extra", r#""x""#).await;
    admin.deploy_ok("tick", "()").await;
    // Reads its counter, spins, then writes it: two runs at once conflict.
    let resp = admin
        .deploy_json(
            "count",
            json!({
                "source": r#"let n = kv::get("n") ?? 0;
                             let i = 0; while i < 50000 { i += 1; }
                             kv::set("n", n + 1); n + 1"#,
                "limits": {"max_operations": 1000000}
            }),
        )
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    admin
        .deploy_ok("fire", r#"emit("m.ev", #{ n: 1 }); "sent""#)
        .await;
    admin.deploy_ok("sink", "()").await;
    let resp = admin
        .api(
            Method::POST,
            "/subscriptions",
            Some(json!({"script": "sink", "topic": "m.ev"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Sync: two successes, a script error, a limit hit, then a fourth script.
    public.wait_for_body("hello", "hi").await;
    assert_eq!(public.call("hello").await.status(), StatusCode::OK);
    assert_eq!(
        public.call("boom").await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let spin = public.call("spin").await;
    assert_eq!(spin.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        spin.json::<Value>().await.unwrap()["error"]["code"],
        "limit_exceeded"
    );
    public.wait_for_body("extra", "x").await;
    // Async: one job that succeeds, one that fails its only attempt.
    for (script, status) in [("hello", "ok"), ("boom", "error")] {
        let resp = public
            .http
            .post(format!("{}/fn/{script}", public.base))
            .header("prefer", "respond-async")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        // The status URL is the manager's.
        let done = admin
            .poll_status(&location, Duration::from_secs(30), |v| {
                v["status"] == status
            })
            .await;
        assert!(done.is_some(), "async {script} never ended {status}");
    }
    // Two runs of `count` at once: both read n = 0, the second to commit
    // conflicts and runs again, so the counter is exact and the conflict is
    // counted.
    public.wait_for_body("fire", "sent").await;
    let (a, b) = tokio::join!(public.call("count"), public.call("count"));
    let mut answers = [
        a.text().await.unwrap_or_default(),
        b.text().await.unwrap_or_default(),
    ];
    answers.sort();
    assert_eq!(answers, ["1", "2"], "an exact counter");
    // Cron: an every-second schedule fires at least once.
    let resp = admin
        .api(
            Method::POST,
            "/schedules",
            Some(json!({"script": "tick", "cron": "* * * * * *"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    // The executor ran them all.
    let ex = scrape_until(&executor, None, |t| {
        sum(t, "picloud_invocations_total", &[r#"trigger="cron""#]) >= 1.0
            && sum(t, "picloud_invocations_total", &[r#"trigger="event""#]) >= 1.0
            && sum(t, "picloud_dead_letters_total", &[]) >= 1.0
    })
    .await;
    let inv = "picloud_invocations_total";
    assert!(
        sample(
            &ex,
            r#"picloud_invocations_total{script="hello",trigger="http",outcome="ok"}"#
        ) >= Some(3.0),
        "2 or more sync calls and 1 async call of hello:\n{ex}"
    );
    assert!(sum(&ex, inv, &[r#"script="boom""#, r#"outcome="error""#]) >= 2.0);
    assert_eq!(
        sample(
            &ex,
            r#"picloud_invocations_total{script="spin",trigger="http",outcome="limit_exceeded"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &ex,
            r#"picloud_sandbox_limit_hits_total{limit="operations"}"#
        ),
        Some(1.0)
    );
    // Past three scripts, names fold: extra and tick count as _other.
    assert!(sum(&ex, inv, &[r#"script="_other""#, r#"trigger="http""#]) >= 1.0);
    assert!(sum(&ex, inv, &[r#"script="_other""#, r#"trigger="cron""#]) >= 1.0);
    assert!(!ex.contains(r#"script="extra""#) && !ex.contains(r#"script="tick""#));
    assert!(
        sample(
            &ex,
            r#"picloud_invocation_duration_seconds_count{script="hello",trigger="http"}"#
        ) >= Some(3.0)
    );
    assert_eq!(sample(&ex, "picloud_executor_workers"), Some(2.0));
    assert_eq!(sample(&ex, "picloud_executor_workers_busy"), Some(0.0));
    assert_eq!(sample(&ex, "picloud_dead_letters_total"), Some(1.0));
    assert!(sample(&ex, "picloud_kv_commit_conflicts_total") >= Some(1.0));
    assert!(sum(&ex, inv, &[r#"trigger="event""#, r#"outcome="ok""#]) >= 1.0);
    for process in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(sample(&ex, process).unwrap_or(0.0) > 0.0, "{process}");
    }
    assert!(ex.contains(&format!(
        r#"picloud_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    )));
    promtool_accepts(&ex, "the executor");

    // The gateway answered the calls.
    let gw = gateway.scrape(None).await;
    let http = "picloud_http_requests_total";
    assert!(
        sample(
            &gw,
            r#"picloud_http_requests_total{surface="fn",status="200"}"#
        ) >= Some(3.0)
    );
    assert_eq!(
        sample(
            &gw,
            r#"picloud_http_requests_total{surface="fn",status="500"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &gw,
            r#"picloud_http_requests_total{surface="fn",status="202"}"#
        ),
        Some(2.0)
    );
    assert!(
        sample(
            &gw,
            r#"picloud_http_request_duration_seconds_count{surface="fn"}"#
        ) >= Some(7.0)
    );
    // Roles that run no scripts have no invocations.
    assert_eq!(sum(&gw, inv, &[]), 0.0);
    promtool_accepts(&gw, "the gateway");

    // The manager: admin calls, the cron firing, the queue figures.
    let anonymous = reqwest::get(format!("{}/metrics", manager.base))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let mg = manager.scrape(Some(METRICS_TOKEN)).await;
    // Five deploys and a schedule.
    assert!(sum(&mg, http, &[r#"surface="api""#]) >= 6.0, "{mg}");
    assert!(sum(&mg, http, &[r#"surface="api""#, r#"status="201""#]) >= 1.0);
    assert!(sum(&mg, http, &[r#"surface="status""#, r#"status="200""#]) >= 2.0);
    assert!(sample(&mg, "picloud_cron_lateness_seconds_count") >= Some(1.0));
    assert!(sample(&mg, "picloud_jobs_pending").is_some(), "{mg}");
    assert!(sample(&mg, "picloud_outbox_pending_rows").is_some(), "{mg}");
    assert!(sample(&mg, "picloud_outbox_oldest_row_age_seconds").is_some());
    promtool_accepts(&mg, "the manager");

    // Nodes: one of each role, the executor with its workers.
    let nodes = admin.get_json("/nodes").await;
    let list = nodes["nodes"].as_array().unwrap();
    let mut roles: Vec<&str> = list.iter().map(|n| n["role"].as_str().unwrap()).collect();
    roles.sort();
    assert_eq!(roles, ["executor", "gateway", "manager"], "{nodes}");
    let ex_node = list.iter().find(|n| n["role"] == "executor").unwrap();
    assert_eq!(ex_node["workers"], 2);
    assert_eq!(ex_node["workers_busy"], 0);
    assert_eq!(
        ex_node["address"],
        executor.base.trim_start_matches("http://")
    );
    for n in list {
        assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
        assert!(n["uptime_seconds"].as_u64().is_some(), "{n}");
        assert!(n["rss_bytes"].as_u64().unwrap() > 0, "{n}");
    }
    assert!(nodes["queue"]["jobs_pending"].as_u64().is_some(), "{nodes}");
    assert!(nodes["queue"]["outbox_pending_rows"].as_i64().is_some());

    // `picloud status`, as JSON and as a table.
    let status = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_picloud"));
        cmd.arg("status")
            .env("PICLOUD_URL", &manager.base)
            .env("PICLOUD_TOKEN", &env.token)
            .env("NO_COLOR", "1");
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let out = status(true);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["queue"].get("outbox_oldest_row_age_seconds").is_some());
    let out = status(false);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    for want in [
        "ROLE",
        "executor",
        "gateway",
        "manager",
        "0/2",
        "jobs pending:",
        "outbox:",
    ] {
        assert!(table.contains(want), "{want} missing from\n{table}");
    }

    drop((manager, gateway, executor));
    let downs = next_announcements(&mut announcements, 3).await;
    let mut roles: Vec<String> = downs.iter().map(|a| a.node.role.clone()).collect();
    roles.sort();
    assert_eq!(roles, ["executor", "gateway", "manager"], "{downs:?}");
    assert!(downs.iter().all(|a| a.event == "down"), "{downs:?}");
    env.cleanup().await;
}

/// The next `n` node announcements (within 30 s).
async fn next_announcements(
    stream: &mut (impl futures::Stream<Item = picloud_bus::NodeAnnouncement> + Unpin),
    n: usize,
) -> Vec<picloud_bus::NodeAnnouncement> {
    use futures::StreamExt;
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(a)) => got.push(a),
            _ => panic!("only {} of {n} node announcements came: {got:?}", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn up_serves_metrics_for_all_its_roles() {
    let env = TestEnv::new().await;
    let up = Role::spawn(&env, "up", &[]);
    up.ready().await;
    let c = Client::new(&up.base, &env.token);
    c.deploy_ok("hello", r#""hi""#).await;
    c.wait_for_body("hello", "hi").await;
    let text = scrape_until(&up, None, |t| {
        sample(
            t,
            r#"picloud_invocations_total{script="hello",trigger="http",outcome="ok"}"#,
        )
        .is_some()
    })
    .await;
    assert!(
        sample(
            &text,
            r#"picloud_http_requests_total{surface="fn",status="200"}"#
        ) >= Some(1.0)
    );
    assert!(sum(&text, "picloud_http_requests_total", &[r#"surface="api""#]) >= 1.0);
    assert_eq!(sample(&text, "picloud_executor_workers"), Some(2.0));
    assert!(sample(&text, "picloud_jobs_pending").is_some(), "{text}");
    promtool_accepts(&text, "picloud up");
    let nodes = c.get_json("/nodes").await;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 3, "{nodes}");
    drop(up);
    env.cleanup().await;
}

/// Every metric the shipped Grafana dashboard queries is documented (and
/// so, by the tests above, served).
#[test]
fn the_dashboard_uses_documented_names() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");
    let dashboard = std::fs::read_to_string(format!("{root}/grafana-dashboard.json")).unwrap();
    let operations = std::fs::read_to_string(format!("{root}/operations.md")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("picloud_") || word.starts_with("process_") {
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    names.push(base.to_owned());
                }
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            operations.contains(&format!("`{name}`")),
            "the dashboard queries {name}, which docs/operations.md does not list"
        );
    }
}
