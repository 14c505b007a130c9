//! The checked client against a local server on 127.0.0.1. Only loopback
//! traffic: denied destinations are refused before any connection.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FakeLookup, TestServer};
use picloud_egress::{
    CallLimits, Denied, Egress, EgressError, EgressPolicy, OutboundRequest, OutboundResponse,
};
use serde_json::{Value, json};

/// A client that trusts 127.0.0.1 (and nothing else beyond the built-ins).
fn trusting_loopback() -> Egress {
    Egress::new(EgressPolicy::from_config("127.0.0.1", "", &[80, 443]).unwrap()).unwrap()
}

fn limits() -> CallLimits {
    CallLimits {
        timeout: Duration::from_secs(5),
        ..CallLimits::default()
    }
}

async fn send(egress: &Egress, req: OutboundRequest) -> Result<OutboundResponse, EgressError> {
    egress.send(req, &limits()).await
}

fn echo(response: &OutboundResponse) -> Value {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json().expect("echo answers JSON")
}

fn denied(rule: &'static str) -> EgressError {
    EgressError::Denied(Denied { rule })
}

#[tokio::test]
async fn get_with_headers_and_query() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let req = OutboundRequest::new("get", server.url("/echo?x=1"))
        .header("X-Test", "yes")
        .header("Authorization", "Bearer token")
        .query("a", "b c")
        .query("x", "2");
    let response = send(&egress, req).await.unwrap();
    let e = echo(&response);
    assert_eq!(e["method"], "GET");
    assert_eq!(e["path"], "/echo");
    assert_eq!(e["query"], "x=1&a=b+c&x=2");
    assert_eq!(e["headers"]["x-test"], "yes");
    assert_eq!(e["headers"]["authorization"], "Bearer token");
    assert!(
        e["headers"]["user-agent"]
            .as_str()
            .unwrap()
            .starts_with("PiCloud/")
    );
    assert_eq!(e["body"], "");
    assert!(!response.truncated);
    assert_eq!(response.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn every_method_with_its_body() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let req =
            OutboundRequest::new(method, server.url("/echo")).body(format!("body of {method}"));
        let e = echo(&send(&egress, req).await.unwrap());
        assert_eq!(e["method"], method);
        assert_eq!(e["body"], format!("body of {method}"));
    }
    // A script's own user agent replaces ours.
    let req = OutboundRequest::new("GET", server.url("/echo")).header("User-Agent", "mine/1");
    let e = echo(&send(&egress, req).await.unwrap());
    assert_eq!(e["headers"]["user-agent"], "mine/1");
}

#[tokio::test]
async fn json_body_and_json_response() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let payload = json!({"name": "pi", "tags": ["a", "b"], "n": 3});
    let req = OutboundRequest::new("POST", server.url("/echo")).json(&payload);
    let e = echo(&send(&egress, req).await.unwrap());
    assert_eq!(e["headers"]["content-type"], "application/json");
    let sent: Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, payload);

    let response = send(&egress, OutboundRequest::new("GET", server.url("/json")))
        .await
        .unwrap();
    assert_eq!(
        response.json(),
        Some(json!({"hello": "world", "n": [1, 2, 3]}))
    );
}

#[tokio::test]
async fn head_has_no_body() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let response = send(&egress, OutboundRequest::new("HEAD", server.url("/echo")))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert!(response.body.is_empty());
}

#[tokio::test]
async fn non_2xx_is_a_response() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    for code in [204u16, 400, 404, 418, 500, 503] {
        let response = send(
            &egress,
            OutboundRequest::new("GET", server.url(&format!("/status/{code}"))),
        )
        .await
        .unwrap();
        assert_eq!(response.status, code);
    }
    // A 3xx without Location is not followed: it is the answer.
    let response = send(
        &egress,
        OutboundRequest::new("GET", server.url("/status/302")),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 302);
}

#[tokio::test]
async fn response_headers_are_lower_case_and_repeatable() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let response = send(&egress, OutboundRequest::new("GET", server.url("/headers")))
        .await
        .unwrap();
    let multi: Vec<&str> = response
        .headers
        .iter()
        .filter(|(n, _)| n == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(response.header("x-custom"), Some("Value"));
    assert!(response.headers.iter().all(|(n, _)| *n == n.to_lowercase()));
}

#[tokio::test]
async fn timeout_waiting_for_the_answer() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let limits = CallLimits {
        timeout: Duration::from_millis(300),
        ..CallLimits::default()
    };
    let started = Instant::now();
    let err = egress
        .send(OutboundRequest::new("GET", server.url("/slow")), &limits)
        .await
        .unwrap_err();
    assert_eq!(err, EgressError::Timeout(Duration::from_millis(300)));
    assert_eq!(err.to_string(), "request timed out after 300 ms");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn timeout_while_reading_the_body() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let limits = CallLimits {
        timeout: Duration::from_millis(300),
        ..CallLimits::default()
    };
    let started = Instant::now();
    let err = egress
        .send(OutboundRequest::new("GET", server.url("/stall")), &limits)
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn timeout_bounded_by_the_invocation_deadline() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let limits = CallLimits {
        timeout: Duration::from_secs(30),
        ..CallLimits::default()
    }
    .within(Instant::now() + Duration::from_millis(300));
    let started = Instant::now();
    let err = egress
        .send(OutboundRequest::new("GET", server.url("/slow")), &limits)
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A deadline already past: nothing is sent.
    let before = server.hits();
    let past = CallLimits::default().within(Instant::now() - Duration::from_millis(1));
    let err = egress
        .send(OutboundRequest::new("GET", server.url("/echo")), &past)
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::Timeout(_)), "{err}");
    assert_eq!(server.hits(), before);
}

#[tokio::test]
async fn endless_body_is_cut_at_the_limit() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let limits = CallLimits {
        max_response_bytes: 100_000,
        ..limits()
    };
    let started = Instant::now();
    let response = egress
        .send(OutboundRequest::new("GET", server.url("/endless")), &limits)
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 100_000);
    assert!(response.body.iter().all(|&b| b == b'z'));
    assert!(response.truncated);
    assert_eq!(response.json(), None);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn body_at_the_limit_is_whole() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let limits = CallLimits {
        max_response_bytes: 1000,
        ..limits()
    };
    let exact = egress
        .send(
            OutboundRequest::new("GET", server.url("/bytes/1000")),
            &limits,
        )
        .await
        .unwrap();
    assert_eq!((exact.body.len(), exact.truncated), (1000, false));
    let over = egress
        .send(
            OutboundRequest::new("GET", server.url("/bytes/1001")),
            &limits,
        )
        .await
        .unwrap();
    assert_eq!((over.body.len(), over.truncated), (1000, true));
    let empty = egress
        .send(OutboundRequest::new("GET", server.url("/bytes/0")), &limits)
        .await
        .unwrap();
    assert_eq!((empty.body.len(), empty.truncated), (0, false));
}

#[tokio::test]
async fn redirect_to_a_denied_address_is_denied_on_the_hop() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let port = server.port();
    let table = [
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "metadata",
        ),
        ("http://0xa9fea9fe/".to_owned(), "metadata"),
        ("http://10.0.0.1/".to_owned(), "private"),
        ("http://192.168.1.1:8080/admin".to_owned(), "private"),
        (format!("http://[::1]:{port}/echo"), "loopback"),
        (
            format!("http://[::ffff:10.0.0.1]:{port}/"),
            "ipv4-mapped private",
        ),
        (format!("http://127.0.0.2:{port}/echo"), "loopback"),
        ("file:///etc/passwd".to_owned(), "scheme"),
        ("gopher://127.0.0.1:70/".to_owned(), "scheme"),
        ("http://example.com:25/".to_owned(), "port"),
    ];
    for (to, rule) in table {
        for status in [301, 302, 303, 307, 308] {
            let before = server.hits();
            let req = OutboundRequest::new("GET", server.url("/redirect"))
                .query("to", &to)
                .query("status", status.to_string());
            let err = send(&egress, req).await.unwrap_err();
            assert_eq!(err, denied(rule), "{to} via {status}");
            assert_eq!(err.to_string(), format!("request denied by policy: {rule}"));
            // Only the redirecting request reached the server.
            assert_eq!(server.hits(), before + 1);
        }
    }
}

#[tokio::test]
async fn redirect_to_a_name_resolving_to_loopback_is_denied() {
    let server = TestServer::start().await;
    // The server is trusted by name only; `localhost` is resolved by the
    // system (from /etc/hosts) and is not trusted.
    let lookup = Arc::new(
        FakeLookup::default()
            .with("server.test", &["127.0.0.1"])
            .with_system_fallback(),
    );
    let egress = Egress::with_lookup(
        EgressPolicy::from_config("server.test", "", &[]).unwrap(),
        lookup,
    )
    .unwrap();
    let start = format!("http://server.test:{}/redirect", server.port());
    let req = OutboundRequest::new("GET", &start)
        .query("to", format!("http://localhost:{}/echo", server.port()));
    let err = send(&egress, req).await.unwrap_err();
    assert_eq!(err, denied("loopback"));
    assert_eq!(server.hits(), 1);

    // The same server, reached through its trusted name, answers.
    let req = OutboundRequest::new("GET", &start).query("to", "/echo");
    let e = echo(&send(&egress, req).await.unwrap());
    assert_eq!(e["path"], "/echo");
}

#[tokio::test]
async fn redirects_are_followed_up_to_five() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let response = send(&egress, OutboundRequest::new("GET", server.url("/chain/5")))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "end of chain");

    let err = send(&egress, OutboundRequest::new("GET", server.url("/chain/6")))
        .await
        .unwrap_err();
    assert_eq!(err, EgressError::TooManyRedirects(5));
    assert_eq!(err.to_string(), "too many redirects (at most 5)");

    // Limits may ask for fewer, never more.
    let fewer = CallLimits {
        max_redirects: 1,
        ..limits()
    };
    let err = egress
        .send(OutboundRequest::new("GET", server.url("/chain/2")), &fewer)
        .await
        .unwrap_err();
    assert_eq!(err, EgressError::TooManyRedirects(1));
    let more = CallLimits {
        max_redirects: 50,
        ..limits()
    };
    let err = egress
        .send(OutboundRequest::new("GET", server.url("/chain/6")), &more)
        .await
        .unwrap_err();
    assert_eq!(err, EgressError::TooManyRedirects(5));
}

#[tokio::test]
async fn redirect_methods_follow_the_status() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    for (status, method, expect_method, expect_body) in [
        (301, "POST", "GET", ""),
        (302, "POST", "GET", ""),
        (303, "POST", "GET", ""),
        (303, "PUT", "GET", ""),
        (307, "POST", "POST", "payload"),
        (308, "PUT", "PUT", "payload"),
        (302, "PUT", "PUT", "payload"),
    ] {
        let req = OutboundRequest::new(method, server.url("/redirect"))
            .query("to", "/echo")
            .query("status", status.to_string())
            .header("content-type", "text/plain")
            .body("payload");
        let e = echo(&send(&egress, req).await.unwrap());
        assert_eq!(e["method"], expect_method, "{method} via {status}");
        assert_eq!(e["body"], expect_body, "{method} via {status}");
        if expect_body.is_empty() {
            assert!(e["headers"].get("content-type").is_none());
        }
    }
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_origin() {
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    let egress = trusting_loopback();

    let same = OutboundRequest::new("GET", first.url("/redirect"))
        .query("to", "/echo")
        .header("Authorization", "Bearer secret")
        .header("Cookie", "a=b");
    let e = echo(&send(&egress, same).await.unwrap());
    assert_eq!(e["headers"]["authorization"], "Bearer secret");
    assert_eq!(e["headers"]["cookie"], "a=b");

    let other = OutboundRequest::new("GET", first.url("/redirect"))
        .query("to", second.url("/echo"))
        .header("Authorization", "Bearer secret")
        .header("Cookie", "a=b")
        .header("X-Keep", "kept");
    let e = echo(&send(&egress, other).await.unwrap());
    assert!(e["headers"].get("authorization").is_none());
    assert!(e["headers"].get("cookie").is_none());
    assert_eq!(e["headers"]["x-keep"], "kept");
    assert_eq!(second.hits(), 1);
}

#[tokio::test]
async fn localhost_is_denied_when_not_allowed() {
    let server = TestServer::start().await;
    // Any port, nothing allowed: only the built-in rules stand between.
    let egress = Egress::new(EgressPolicy::from_config("", "", &[]).unwrap()).unwrap();
    for url in [
        format!("http://localhost:{}/echo", server.port()),
        format!("http://LOCALHOST:{}/echo", server.port()),
        server.url("/echo"),
        format!("http://127.1:{}/echo", server.port()),
        format!("http://2130706433:{}/echo", server.port()),
        format!("http://[::ffff:127.0.0.1]:{}/echo", server.port()),
    ] {
        let err = send(&egress, OutboundRequest::new("GET", &url))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.ends_with("loopback"), "{url}: {text}");
        assert!(
            !text.contains("127.0.0.1") && !text.contains("::1"),
            "{text}"
        );
    }
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_denied_and_never_connected() {
    let server = TestServer::start().await;
    let lookup = Arc::new(
        FakeLookup::default()
            .with("api.test", &["127.0.0.1"])
            .with("rebind.test", &["93.184.216.34", "127.0.0.1"]),
    );
    let egress = Egress::with_lookup(
        EgressPolicy::from_config("", "", &[]).unwrap(),
        lookup.clone(),
    )
    .unwrap();
    for name in ["api.test", "rebind.test"] {
        let url = format!("http://{name}:{}/echo", server.port());
        let err = send(&egress, OutboundRequest::new("GET", url))
            .await
            .unwrap_err();
        assert_eq!(err, denied("loopback"), "{name}");
    }
    assert_eq!(lookup.calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(server.hits(), 0);

    // Unknown names fail to resolve, and say no more than that.
    let err = send(&egress, OutboundRequest::new("GET", "http://nowhere.test/"))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "connection failed: could not resolve host");
}

#[tokio::test]
async fn the_connection_goes_to_the_checked_address() {
    let server = TestServer::start().await;
    let lookup = Arc::new(FakeLookup::default().with("api.test", &["127.0.0.1"]));
    // Allowed by network: the name resolves into it.
    let by_net = Egress::with_lookup(
        EgressPolicy::from_config("127.0.0.1", "", &[]).unwrap(),
        lookup.clone(),
    )
    .unwrap();
    let e = echo(
        &send(
            &by_net,
            OutboundRequest::new("GET", format!("http://api.test:{}/echo", server.port())),
        )
        .await
        .unwrap(),
    );
    assert_eq!(e["headers"]["host"], format!("api.test:{}", server.port()));

    // Allowed by name, any address it resolves to (and any port).
    let by_name = Egress::with_lookup(
        EgressPolicy::from_config("api.test", "", &[80]).unwrap(),
        lookup.clone(),
    )
    .unwrap();
    let e = echo(
        &send(
            &by_name,
            OutboundRequest::new("GET", format!("http://api.test:{}/echo", server.port())),
        )
        .await
        .unwrap(),
    );
    assert_eq!(e["method"], "GET");

    // The operator's deny list still wins over the name.
    let denied_net = Egress::with_lookup(
        EgressPolicy::from_config("api.test", "127.0.0.0/8", &[]).unwrap(),
        lookup,
    )
    .unwrap();
    let err = send(
        &denied_net,
        OutboundRequest::new("GET", format!("http://api.test:{}/echo", server.port())),
    )
    .await
    .unwrap_err();
    assert_eq!(err, denied("deny-list"));
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn failures_never_name_the_address() {
    // A port with nothing listening on it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let lookup = Arc::new(FakeLookup::default().with("closed.test", &["127.0.0.1"]));
    let egress = Egress::with_lookup(
        EgressPolicy::from_config("127.0.0.1", "", &[]).unwrap(),
        lookup,
    )
    .unwrap();
    for url in [
        format!("http://closed.test:{port}/"),
        format!("http://127.0.0.1:{port}/"),
    ] {
        let err = send(&egress, OutboundRequest::new("GET", &url))
            .await
            .unwrap_err();
        assert!(matches!(err, EgressError::Connect(_)), "{err:?}");
        let text = err.to_string();
        assert!(!text.contains("127.0.0.1"), "{text}");
        assert!(!text.contains(&port.to_string()), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}

#[tokio::test]
async fn invalid_requests_are_refused_before_sending() {
    let server = TestServer::start().await;
    let egress = trusting_loopback();
    let err = send(&egress, OutboundRequest::new("TRACE", server.url("/echo")))
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::InvalidMethod(_)), "{err:?}");
    let err = send(&egress, OutboundRequest::new("GET", "http:// bad"))
        .await
        .unwrap_err();
    assert!(matches!(err, EgressError::InvalidUrl(_)), "{err:?}");
    let req = OutboundRequest::new("GET", server.url("/echo")).header("Host", "evil.example");
    let err = send(&egress, req).await.unwrap_err();
    assert!(matches!(err, EgressError::ForbiddenHeader(_)), "{err:?}");
    let req = OutboundRequest::new("GET", server.url("/echo")).header("X-Bad", "a\nb");
    let err = send(&egress, req).await.unwrap_err();
    assert!(matches!(err, EgressError::InvalidHeader(_)), "{err:?}");
    let small = CallLimits {
        max_request_bytes: 10,
        ..limits()
    };
    let err = egress
        .send(
            OutboundRequest::new("POST", server.url("/echo")).body(vec![0u8; 11]),
            &small,
        )
        .await
        .unwrap_err();
    assert!(err.is_limit());
    assert_eq!(server.hits(), 0);
}
