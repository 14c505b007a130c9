//! Cron across processes: three `picloud manager` processes on one
//! database, an every-second schedule for 15 firings → every instant fires
//! exactly once (each claim is logged by the manager that made it), and the
//! script runs once per instant with `event.kind == "cron"`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use picloud_core::Uuid;
use picloud_core::job::cron_event_id;
use picloud_supervise::Signal;
use picloud_testkit::{Client, TestEnv, eventually, free_port};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A manager process; SIGTERM on drop, so a failing test leaves none behind.
struct ManagerProcess {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ManagerProcess {
    fn spawn(env: &TestEnv) -> Self {
        let port = free_port();
        let config = &env.config;
        let mut child = Command::new(env!("CARGO_BIN_EXE_picloud"))
            .arg("manager")
            .env_remove("PICLOUD_CONFIG")
            .env("PICLOUD_DATABASE_URL", config.database_url().unwrap())
            .env("PICLOUD_NATS_URL", config.nats_url().unwrap())
            .env("PICLOUD_ADMIN_TOKEN", &env.token)
            .env("PICLOUD_PREFIX", &config.prefix)
            .env("PICLOUD_SECRETS_KEY", config.secrets_key().unwrap())
            .env("PICLOUD_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn,picloud_manager::scheduler=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("picloud manager starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// The instants this manager fired for `schedule`.
    fn fired(&self, schedule: &str) -> Vec<DateTime<Utc>> {
        let needle = format!("schedule={schedule} ");
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("schedule fired") && l.contains(&needle))
            .map(|l| {
                let at = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("scheduled_at="))
                    .unwrap_or_else(|| panic!("no scheduled_at in {l}"));
                DateTime::parse_from_rfc3339(at)
                    .unwrap_or_else(|e| panic!("{at}: {e}"))
                    .with_timezone(&Utc)
            })
            .collect()
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        picloud_supervise::signal(self.child.id(), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl ManagerProcess {
    /// Waits until `/readyz` answers 200. A manager that could not bind its
    /// port (taken between `free_port` and the bind, by another process's
    /// outgoing connection) is started again on another; any other failure
    /// fails the test with what `/readyz` last answered, whether the
    /// process still runs, and its log.
    async fn wait_ready(&mut self, env: &TestEnv) {
        let http = reqwest::Client::new();
        for _ in 0..3 {
            let port: u16 = self.base.rsplit(':').next().unwrap().parse().unwrap();
            let last = Mutex::new(None);
            let ready = eventually(Duration::from_secs(60), || async {
                let answer = picloud_testkit::readyz(&http, port).await;
                let ok = matches!(answer, Some((StatusCode::OK, _)));
                *last.lock().unwrap() = answer;
                if !ok && self.exited() {
                    return Some(false);
                }
                ok.then_some(true)
            })
            .await;
            if ready == Some(true) {
                return;
            }
            if ready == Some(false) {
                // Let the reader thread take the last lines of its stderr.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let log = self.log.lock().unwrap().join("\n");
            if ready == Some(false) && log.contains("in use") {
                eprintln!("manager port {port} was taken; starting it on another:\n{log}");
                *self = Self::spawn(env);
                continue;
            }
            panic!(
                "manager at {} never ready; last /readyz: {:?}; exited: {:?}; log:\n{log}",
                self.base,
                last.lock().unwrap(),
                self.child.try_wait(),
            );
        }
        panic!("no free port for a manager in three tries");
    }

    /// True once the process has ended (its stderr then closes too: the
    /// log is complete shortly after).
    fn exited(&self) -> bool {
        // `try_wait` needs `&mut`; the pid's /proc entry says the same.
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| stat.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
    }
}

/// Deploys `source` as `script` (through `deployer`) and schedules it every
/// second (through `scheduler`); the schedule's id.
async fn every_second(deployer: &Client, scheduler: &Client, script: &str, source: &str) -> String {
    let resp = deployer.deploy(script, source).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let resp = scheduler
        .api(
            Method::POST,
            "/schedules",
            Some(json!({"script": script, "cron": "* * * * * *"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: Value = resp.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

/// Firings of schedule `id` in every manager's log.
fn fired_total(managers: &[ManagerProcess], id: &str) -> usize {
    managers.iter().map(|m| m.fired(id).len()).sum()
}

#[tokio::test]
async fn three_managers_fire_every_instant_exactly_once() {
    let mut env = TestEnv::new().await;
    let mut managers: Vec<ManagerProcess> = (0..3).map(|_| ManagerProcess::spawn(&env)).collect();
    for m in &mut managers {
        m.wait_ready(&env).await;
    }
    let executor = env.start_executor().await;
    let clients: Vec<Client> = managers
        .iter()
        .map(|m| Client::new(&m.base, &env.token))
        .collect();
    let id = every_second(
        &clients[0],
        &clients[1],
        "tick",
        r#"log(`${event.kind} ${event.scheduled_at}`); ()"#,
    )
    .await;
    let schedule: Uuid = id.parse().unwrap();
    // Fifteen instants fired (counted in the managers' logs), not fifteen
    // seconds of wall clock.
    let fired_so_far = || fired_total(&managers, &id);
    eventually(Duration::from_secs(90), || async {
        (fired_so_far() >= 15).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("only {} firings in 90 s", fired_so_far()));
    let resp = clients[2]
        .api(Method::DELETE, &format!("/schedules/{id}"), None)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let deleted_at = Utc::now();
    // A marker: a second schedule, made after the delete, fires twice. The
    // managers fire instants in order, so a firing of the deleted schedule
    // still in flight would be logged by then.
    let marker = every_second(&clients[0], &clients[1], "tock", "()").await;
    let marker_fired = || fired_total(&managers, &marker);
    eventually(Duration::from_secs(30), || async {
        (marker_fired() >= 2).then_some(())
    })
    .await
    .expect("the marker schedule fires");

    // Every claim, from every manager's log.
    let mut per_manager = Vec::new();
    let mut all = Vec::new();
    for m in &managers {
        let fired = m.fired(&id);
        per_manager.push(fired.len());
        all.extend(fired);
    }
    all.sort();
    eprintln!("firings per manager: {per_manager:?}");
    let distinct: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "an instant fired twice: {all:?}");
    assert!(all.len() >= 15, "too few firings: {all:?}");
    for pair in all.windows(2) {
        assert_eq!(pair[1] - pair[0], TimeDelta::seconds(1), "a gap: {all:?}");
    }
    assert!(*all.last().unwrap() <= deleted_at, "fired after its delete");

    // The script ran once per instant, as a cron invocation whose id is
    // derived from (schedule, instant).
    let want: BTreeMap<Uuid, DateTime<Utc>> = all
        .iter()
        .map(|&t| (cron_event_id(schedule, t), t))
        .collect();
    let records = eventually(Duration::from_secs(30), || async {
        let v = clients[0]
            .get_json("/invocations?script=tick&limit=1000")
            .await;
        let list = v.as_array().unwrap().clone();
        (list.len() >= want.len()).then_some(list)
    })
    .await
    .unwrap_or_else(|| panic!("fewer than {} invocation records", want.len()));
    let mut lateness_ms = Vec::new();
    let mut seen = BTreeSet::new();
    for r in &records {
        let rid: Uuid = r["id"].as_str().unwrap().parse().unwrap();
        let at = want
            .get(&rid)
            .unwrap_or_else(|| panic!("an invocation no firing explains: {r}"));
        assert!(seen.insert(rid));
        assert_eq!(r["trigger"], "cron", "{r}");
        assert_eq!(r["status"], "ok", "{r}");
        let log = r["log"].as_str().unwrap();
        assert!(log.starts_with("cron "), "{log}");
        let started = DateTime::parse_from_rfc3339(r["started_at"].as_str().unwrap()).unwrap();
        lateness_ms.push((started.with_timezone(&Utc) - *at).num_milliseconds());
    }
    assert_eq!(seen.len(), want.len());
    lateness_ms.sort_unstable();
    eprintln!(
        "lateness (scheduled instant → script start), ms: p50 {} p99 {} max {}",
        lateness_ms[lateness_ms.len() / 2],
        lateness_ms[(lateness_ms.len() * 99).div_ceil(100) - 1],
        lateness_ms.last().unwrap()
    );

    executor.stop().await;
    drop(managers);
    env.cleanup().await;
}
