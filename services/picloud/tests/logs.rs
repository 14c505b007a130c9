//! Live logs (issue #14) against a real front, real executors and real
//! NATS: a follower sees every line of every invocation, resumes with
//! `Last-Event-ID` without a gap, a reader that stops reading is cut off
//! with the number it missed, one invocation's lines come from its record,
//! and `picloud logs [-f]` prints and follows them across a server restart.

#[path = "support/cli.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use picloud_testkit::{Client, eventually, free_port};
use serde_json::Value;
use support::{Env, User};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// One script that writes one numbered line per invocation.
const NUMBERED: &str = r#"log(`n=${request.query.n}`); "ok""#;

/// A Server-Sent Events reader over a reqwest response.
struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Ev {
    kind: String,
    id: Option<String>,
    data: Value,
}

impl Ev {
    /// The `n` of a numbered line.
    fn n(&self) -> Option<u32> {
        let line = self.data.get("line")?.as_str()?;
        let n = line.strip_prefix("n=")?;
        n.split(' ').next()?.parse().ok()
    }

    fn invocation(&self) -> String {
        self.data["invocation"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// An event id as (sequence, index), for order checks.
fn position(id: &str) -> (u64, u64) {
    let (s, i) = id.split_once('-').expect("SEQ-INDEX");
    (s.parse().unwrap(), i.parse().unwrap())
}

impl Sse {
    async fn open(c: &Client, script: &str, last_id: Option<&str>) -> Self {
        let mut req = c
            .http
            .get(format!(
                "{}/api/v1/scripts/{script}/logs?follow=true",
                c.base
            ))
            .bearer_auth(&c.token);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("follow request");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next event (comments skipped); `None` when the stream ends.
    async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(ev) = take_event(&mut self.buf) {
                return Some(ev);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), self.resp.chunk())
                .await
                .expect("an event within 60 s")
                .expect("the stream reads")?;
            self.buf.extend_from_slice(&chunk);
        }
    }
}

/// Takes the first complete event off `buf`, skipping comment-only blocks.
fn take_event(buf: &mut Vec<u8>) -> Option<Ev> {
    loop {
        let end = buf.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8(buf[..end].to_vec()).expect("utf-8");
        buf.drain(..end + 2);
        let (mut kind, mut id, mut data) = ("message".to_owned(), None, None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_owned();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(v).expect("JSON data"));
            }
        }
        if let Some(data) = data {
            return Some(Ev { kind, id, data });
        }
    }
}

/// Invokes `/fn/{script}?n=0..count` (16 at a time); counts the answers.
fn invoke_all(c: &Client, script: &str, range: std::ops::Range<u32>) -> Arc<AtomicUsize> {
    let done = Arc::new(AtomicUsize::new(0));
    let (c, script, counter) = (c.clone(), script.to_owned(), done.clone());
    tokio::spawn(async move {
        futures::stream::iter(range)
            .map(|n| {
                let (c, script, counter) = (c.clone(), script.clone(), counter.clone());
                async move {
                    let resp = c.call(&format!("{script}?n={n}")).await;
                    assert_eq!(resp.status(), 200, "invocation {n}");
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    });
    done
}

/// Reads numbered lines and ends until `want` numbered invocations have
/// ended; returns each invocation's events in arrival order.
async fn read_numbered(
    sse: &mut Sse,
    want: usize,
    seen: &mut BTreeMap<String, Vec<Ev>>,
    stop_after_lines: Option<usize>,
) -> Option<String> {
    let mut last_id = None;
    let mut lines = 0;
    // Keepalive comments arrive on an idle stream: bound the whole read.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = seen
            .values()
            .filter(|evs| evs.iter().any(|e| e.kind == "end") && evs[0].n().is_some())
            .count();
        if done >= want || stop_after_lines.is_some_and(|s| lines >= s) {
            return last_id;
        }
        let ev = tokio::time::timeout_at(deadline, sse.next())
            .await
            .unwrap_or_else(|_| panic!("{done} of {want} invocations in 120 s"))
            .expect("the stream stays open");
        last_id = ev.id.clone().or(last_id);
        if ev.kind == "line" && ev.n().is_some() {
            lines += 1;
        }
        seen.entry(ev.invocation()).or_default().push(ev);
    }
}

/// Every numbered invocation shows exactly its line, then its end.
fn check_numbered(seen: &BTreeMap<String, Vec<Ev>>, count: u32) {
    let mut numbers = BTreeSet::new();
    for (inv, evs) in seen {
        let Some(n) = evs[0].n() else { continue };
        let kinds: Vec<&str> = evs.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["line", "end"], "invocation {inv}: {evs:?}");
        assert_eq!(evs[0].data["level"], "info");
        assert_eq!(evs[1].data["status"], "ok");
        assert!(position(evs[0].id.as_deref().unwrap()) < position(evs[1].id.as_deref().unwrap()));
        assert!(numbers.insert(n), "line n={n} twice");
    }
    assert_eq!(numbers, (0..count).collect::<BTreeSet<_>>());
}

/// Ids only grow along one stream.
fn check_ids_grow(seen: &BTreeMap<String, Vec<Ev>>) {
    let mut ids: Vec<(u64, u64)> = seen
        .values()
        .flatten()
        .filter_map(|e| e.id.as_deref().map(position))
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "an event id was delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_gets_every_line_of_1000_invocations_from_every_executor() {
    let mut env = Env::new().await;
    let front = env.start_front().await;
    let a = env.start_executor().await;
    let b = env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("chatty", NUMBERED).await;
    c.wait_for_body("chatty?n=warmup", "ok").await;

    let mut sse = Sse::open(&c, "chatty", None).await;
    invoke_all(&c, "chatty", 0..1000);
    let mut seen = BTreeMap::new();
    read_numbered(&mut sse, 1000, &mut seen, None).await;
    check_numbered(&seen, 1000);
    check_ids_grow(&seen);
    // Both executors ran some: the stream is the cluster's, not one node's.
    let records = c.get_json("/invocations?script=chatty&limit=1000").await;
    let executors: BTreeSet<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["executor"].as_str())
        .collect();
    assert!(executors.contains(a.id.as_str()) && executors.contains(b.id.as_str()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_reconnects_with_last_event_id_loses_nothing() {
    let mut env = Env::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("resume", NUMBERED).await;
    c.wait_for_body("resume?n=warmup", "ok").await;

    let mut sse = Sse::open(&c, "resume", None).await;
    let done = invoke_all(&c, "resume", 0..1000);
    let mut seen = BTreeMap::new();
    let last = read_numbered(&mut sse, 1000, &mut seen, Some(300))
        .await
        .expect("an id");
    drop(sse);
    // Lines keep coming while nobody follows.
    eventually(Duration::from_secs(60), || async {
        (done.load(Ordering::Relaxed) >= 700).then_some(())
    })
    .await
    .expect("700 invocations");
    let mut sse = Sse::open(&c, "resume", Some(&last)).await;
    read_numbered(&mut sse, 1000, &mut seen, None).await;
    check_numbered(&seen, 1000);
    check_ids_grow(&seen);

    // A garbage Last-Event-ID is a JSON 400, not a stream from nowhere.
    for bad in ["x", "1-", "-1", "1-2-3", "99999999999999999999"] {
        let resp = c
            .http
            .get(format!("{}/api/v1/scripts/resume/logs?follow=true", c.base))
            .bearer_auth(&c.token)
            .header("last-event-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad:?}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_last_event_id", "{bad:?}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recent_lines_and_one_invocations_lines_as_json() {
    let mut env = Env::new().await;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok(
        "three",
        r#"log("one"); debug(42); print("three"); if request.query.fail == "1" { throw "boom" } "ok""#,
    )
    .await;
    c.wait_for_body("three", "ok").await;
    let resp = c.call("three?fail=1").await;
    assert_eq!(resp.status(), 500);
    let id = resp.headers()["x-picloud-invocation-id"]
        .to_str()
        .unwrap()
        .to_owned();

    // One invocation's lines, from its record in Postgres.
    let logs = eventually(Duration::from_secs(20), || async {
        let resp = c
            .api(
                reqwest::Method::GET,
                &format!("/invocations/{id}/logs"),
                None,
            )
            .await;
        (resp.status() == 200).then_some(())?;
        resp.json::<Value>().await.ok()
    })
    .await
    .expect("the invocation's record");
    assert_eq!(logs["lines"], serde_json::json!(["one", "42", "three"]));
    assert_eq!(logs["status"], "error");
    assert_eq!(logs["script"], "three");

    // The recent lines of the script: the last 4 events are the failed
    // invocation's three lines and its end, with levels and ids.
    let recent = eventually(Duration::from_secs(20), || async {
        let v = c.get_json("/scripts/three/logs?limit=4").await;
        let events = v["events"].as_array()?.clone();
        (events.len() == 4 && events[3]["invocation"] == id.as_str()).then_some(v)
    })
    .await
    .expect("recent lines");
    let events = recent["events"].as_array().unwrap();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["level"].as_str().or(e["status"].as_str()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("line", "info"),
            ("line", "debug"),
            ("line", "info"),
            ("end", "error")
        ]
    );
    assert_eq!(events[1]["line"], "42");
    assert!(events[3]["error"].as_str().unwrap().contains("boom"));
    assert_eq!(recent["cursor"], events[3]["id"]);

    // What a stranger may send gets a JSON error.
    for (path, status, code) in [
        ("/scripts/three/logs?limit=0", 400, "bad_request"),
        ("/scripts/three/logs?limit=1001", 400, "bad_request"),
        ("/scripts/three/logs?limit=x", 400, "bad_request"),
        ("/scripts/three/logs?follow=maybe", 400, "bad_request"),
        ("/scripts/nobody/logs", 404, "not_found"),
        ("/scripts/nobody/logs?follow=true", 404, "not_found"),
        ("/scripts/bad%20name/logs", 400, "invalid_name"),
        ("/invocations/not-a-uuid/logs", 400, "bad_request"),
        (
            "/invocations/00000000-0000-0000-0000-000000000000/logs",
            404,
            "not_found",
        ),
    ] {
        let resp = c.api(reqwest::Method::GET, path, None).await;
        assert_eq!(resp.status(), status, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path}");
    }
    let resp = c
        .http
        .get(format!("{}/api/v1/scripts/three/logs", c.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    env.cleanup().await;
}

/// The follower streams of the test's logs stream (one ephemeral consumer
/// each).
async fn followers(env: &Env) -> usize {
    let nats = async_nats::connect(env.config.nats_url().unwrap())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(nats);
    let name = format!("{}_LOGS", env.config.prefix.to_ascii_uppercase());
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_that_stops_reading_is_cut_off_with_what_it_missed() {
    let mut env = Env::new().await;
    env.config.log_follow_buffer = 4;
    let front = env.start_front().await;
    env.start_executor().await;
    let c = Client::new(&front.base, &env.token);
    // 16 KiB lines fill the socket buffers quickly.
    c.deploy_ok(
        "loud",
        r#"let s = `n=${request.query.n} `; s.pad(16384, '.'); log(s); "ok""#,
    )
    .await;
    c.wait_for_body("loud?n=warmup", "ok").await;

    // A reader with a tiny receive buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: SocketAddr = front.addr;
    let mut stalled = socket.connect(addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET /api/v1/scripts/loud/logs?follow=true HTTP/1.1\r\nhost: x\r\n\
                 authorization: Bearer {}\r\n\r\n",
                env.token
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), || async {
        (followers(&env).await == 1).then_some(())
    })
    .await
    .expect("the follower's consumer");

    // Scripts run at full speed while the reader stalls, until the server
    // has cut it off (its consumer is gone).
    let mut sent = 0u32;
    let env_ref = &env;
    let cut = eventually(Duration::from_secs(120), || {
        let (c, from) = (c.clone(), sent);
        sent += 50;
        async move {
            let started = std::time::Instant::now();
            let done = invoke_all(&c, "loud", from..from + 50);
            eventually(Duration::from_secs(30), || async {
                (done.load(Ordering::Relaxed) == 50).then_some(())
            })
            .await
            .expect("50 invocations answer while a reader stalls");
            assert!(started.elapsed() < Duration::from_secs(20));
            (followers(env_ref).await == 0).then_some(())
        }
    })
    .await;
    assert!(cut.is_some(), "the stalled reader was never cut off");

    // Now read what it was sent: lines, then the final "overflow" event.
    let mut raw = Vec::new();
    let mut reader = tokio::io::BufReader::new(stalled);
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut line = String::new();
        while reader.read_line(&mut line).await.unwrap() > 0 {
            raw.extend_from_slice(line.as_bytes());
            if line.starts_with("data: ") && line.contains("\"overflow\"") {
                break;
            }
            line.clear();
        }
    })
    .await
    .expect("the stream ends with the overflow event");
    let text = String::from_utf8_lossy(&raw);
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    // Chunked encoding: keep the SSE lines only.
    let mut sse: Vec<u8> = body
        .lines()
        .filter(|l| l.is_empty() || l.contains(':'))
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect();
    sse.extend_from_slice(b"\n");
    let mut delivered = Vec::new();
    let mut last = None;
    let mut overflow = None;
    while let Some(ev) = take_event(&mut sse) {
        match ev.kind.as_str() {
            "line" => {
                delivered.push(ev.n().unwrap_or(u32::MAX));
                last = ev.id.clone();
            }
            "end" => last = ev.id.clone(),
            "overflow" => overflow = Some(ev),
            _ => {}
        }
    }
    let overflow = overflow.expect("a final overflow event");
    let missed = overflow.data["missed"].as_u64().unwrap();
    assert!(missed > 0, "{overflow:?}");
    assert!(
        overflow.data["message"]
            .as_str()
            .unwrap()
            .contains("missed")
    );
    let numbered = delivered.iter().filter(|&&n| n != u32::MAX).count();
    assert!(numbered as u64 + missed <= u64::from(sent));

    // Resuming from the last id it got, the rest is all there.
    let mut resumed = Sse::open(&c, "loud", last.as_deref()).await;
    let mut seen = BTreeMap::new();
    let want = sent as usize - numbered;

    read_numbered(&mut resumed, want, &mut seen, None).await;
    let mut all: BTreeSet<u32> = delivered
        .iter()
        .copied()
        .filter(|&n| n != u32::MAX)
        .collect();
    let mut resumed_lines = 0;
    for evs in seen.values() {
        if let Some(n) = evs[0].n() {
            assert!(all.insert(n), "line n={n} twice");
            resumed_lines += 1;
        }
    }
    // What it missed is among what it read after resuming.
    assert!(resumed_lines >= missed, "{resumed_lines} < {missed}");
    assert_eq!(all, (0..sent).collect::<BTreeSet<_>>());
    env.cleanup().await;
}

/// Collects what `picloud logs -f` prints until it has printed `n`
/// numbered lines.
async fn wait_for_lines(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    printed: &mut Vec<String>,
    n: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while printed.iter().filter(|l| l.contains(" n=")).count() < n {
        let l = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} lines: {printed:?}"))
            .expect("picloud logs -f ended");
        printed.push(l);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_logs_prints_recent_lines_and_follows_across_a_restart() {
    let mut env = Env::new().await;
    let port = free_port();
    env.config.listen = SocketAddr::from(([127, 0, 0, 1], port));
    let front = env.start_front().await;
    env.start_executor().await;
    let user = User::new(&front.base, &env.token);
    user.login().await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("tail", NUMBERED).await;
    c.wait_for_body("tail?n=warmup", "ok").await;

    // `logs NAME`: the recent lines, one per line, and --json.
    // (The warm-up call's lines reach the live log within moments.)
    let run = eventually(Duration::from_secs(20), || async {
        let run = user.ok(&["logs", "tail"]).await;
        run.stdout.contains(" end ").then_some(run)
    })
    .await
    .expect("the warm-up call's lines");
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("n=warmup"))
        .unwrap_or_else(|| panic!("{run:?}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields[0].ends_with('Z') && fields[1] == "info", "{line}");
    assert!(
        fields[2].starts_with('[') && fields[2].len() == 10,
        "{line}"
    );
    assert!(run.stdout.contains(" end "), "{run:?}");
    let json = user.json(&["logs", "tail", "-n", "2"]).await;
    let events = json["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["line"], "n=warmup");
    assert_eq!(events[1]["type"], "end");
    let run = user.expect(1, &["logs", "nobody"]).await;
    assert!(run.stderr.contains("not_found"), "{run:?}");

    // `logs NAME -f` keeps printing, through a restart of the server.
    let mut child = user
        .command(&["logs", "tail", "-f", "-n", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("picloud logs -f");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = tx.send(l);
        }
    });
    let mut printed: Vec<String> = Vec::new();
    // The follower is connected once the stream's consumer exists.
    eventually(Duration::from_secs(10), || async {
        (followers(&env).await == 1).then_some(())
    })
    .await
    .expect("the CLI follows");
    for n in 0..50 {
        assert_eq!(c.call(&format!("tail?n={n}")).await.status(), 200);
    }
    wait_for_lines(&mut rx, &mut printed, 50).await;

    // The server goes away; lines are written (through another front)
    // while the CLI cannot reach it; the server comes back on its port.
    env.config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let other = env.start_front().await;
    front.shutdown.cancel();
    let oc = Client::new(&other.base, &env.token);
    for n in 50..100 {
        assert_eq!(oc.call(&format!("tail?n={n}")).await.status(), 200);
    }
    env.config.listen = SocketAddr::from(([127, 0, 0, 1], port));
    let back = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .ok()
            .map(drop)
    })
    .await;
    assert!(back.is_some(), "port {port} stays busy");
    env.start_front().await;
    wait_for_lines(&mut rx, &mut printed, 100).await;
    let numbers: Vec<u32> = printed
        .iter()
        .filter_map(|l| l.split(" n=").nth(1)?.parse().ok())
        .collect();
    assert_eq!(numbers, (0..100).collect::<Vec<_>>(), "{printed:?}");
    let _ = child.kill().await;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(stderr.contains("reconnecting"), "{stderr}");
    env.cleanup().await;
}
