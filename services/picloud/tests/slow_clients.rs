//! The listeners against slow and many clients: slowloris headers, a body
//! that trickles, idle keep-alive connections, and a connection flood past
//! the cap. Each wait below is for a positive signal (an answer, or the
//! server closing the socket) under a generous bound that only fails when
//! the defence is missing.

use std::time::{Duration, Instant};

use picloud_testkit::{Client, Front, TestEnv};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough for a busy 2-core machine, short against "never".
const GENEROUS: Duration = Duration::from_secs(30);

async fn front_with(configure: impl FnOnce(&mut picloud_core::Config)) -> (TestEnv, Front) {
    let mut env = TestEnv::new().await;
    configure(&mut env.config);
    let front = env.start_front().await;
    env.start_executor().await;
    (env, front)
}

/// Reads until the server closes the connection (or resets it); returns
/// what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(GENEROUS, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server never closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// A client without a connection pool: every call opens a new connection,
/// as a new visitor would.
fn fresh_client(front: &Front, token: &str) -> Client {
    let mut c = Client::new(&front.base, token);
    c.http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    c
}

#[tokio::test]
async fn two_thousand_slowloris_connections_neither_block_others_nor_stay() {
    let (env, front) = front_with(|c| c.http_header_timeout_ms = 3_000).await;
    let c = fresh_client(&front, &env.token);
    c.deploy_ok("hello", r#""hi""#).await;
    c.wait_for_body("hello", "hi").await;

    let mut slow = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let mut s = TcpStream::connect(front.addr).await.expect("connect");
        // A request head that never ends.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("write");
        slow.push(s);
    }

    let started = Instant::now();
    let health = c.http.get(format!("{}/healthz", front.base)).send().await;
    let health_took = started.elapsed();
    let started = Instant::now();
    let call = c.call("hello").await;
    let call_took = started.elapsed();
    assert_eq!(health.expect("healthz").status(), StatusCode::OK);
    assert_eq!(call.status(), StatusCode::OK);
    assert!(
        health_took < Duration::from_secs(1) && call_took < Duration::from_secs(1),
        "healthz took {health_took:?}, /fn took {call_took:?}"
    );

    // The header-read timeout closes every one of them.
    for s in &mut slow {
        read_to_close(s).await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_trickling_body_gets_408() {
    let (env, front) = front_with(|c| c.http_body_timeout_ms = 500).await;
    let c = fresh_client(&front, &env.token);
    c.deploy_ok("echo", "request.body").await;
    c.wait_for_body("echo", "").await;

    for path in ["/fn/echo", "/api/v1/scripts/other"] {
        let mut s = TcpStream::connect(front.addr).await.expect("connect");
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"so",
            env.token
        );
        s.write_all(head.as_bytes()).await.expect("write");
        let answer = read_to_close(&mut s).await;
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{path}: expected 408, got {answer:?}"
        );
        assert!(answer.contains("\"request_timeout\""), "{answer}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (env, front) = front_with(|c| c.http_idle_timeout_ms = 300).await;
    let mut s = TcpStream::connect(front.addr).await.expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "the answer itself kept the connection alive: {answer}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn connections_past_the_cap_get_503_and_a_freed_slot_is_reused() {
    let (env, front) = front_with(|c| c.http_max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(front.addr).await.expect("connect"));
    }
    let mut over = TcpStream::connect(front.addr).await.expect("connect");
    let answer = read_to_close(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("\"unavailable\""), "{answer}");

    drop(held.pop());
    let c = fresh_client(&front, &env.token);
    let ok = picloud_testkit::eventually(GENEROUS, || async {
        let r = c.http.get(format!("{}/healthz", front.base)).send().await;
        r.is_ok_and(|r| r.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ok.is_some(), "a freed slot serves again");
    env.cleanup().await;
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let (env, front) = front_with(|_| {}).await;
    let c = Client::new(&front.base, &env.token);
    c.deploy_ok("page", r#"response(200, "<script>alert(1)</script>")"#)
        .await;
    c.deploy_ok("broken", r#"throw "no""#).await;
    c.wait_for_body("page", "<script>alert(1)</script>").await;
    let status = c
        .http
        .get(format!("{}/fn/page", front.base))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("async call");
    let location = status.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let answers = [
        c.call("page").await,
        c.call("broken").await,
        c.call("missing").await,
        status,
        c.http
            .get(format!("{}{location}", front.base))
            .send()
            .await
            .expect("status"),
        c.http
            .get(format!("{}/status/not-an-id", front.base))
            .send()
            .await
            .expect("status"),
        c.api(reqwest::Method::GET, "/scripts", None).await,
    ];
    for r in answers {
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{} {}",
            r.url(),
            r.status()
        );
    }
    env.cleanup().await;
}
