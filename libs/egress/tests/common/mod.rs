//! A local test server on 127.0.0.1 and a fake resolver.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use picloud_egress::{Lookup, SystemLookup};

/// The test server: every request counted, routed by path.
pub struct TestServer {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl TestServer {
    pub async fn start() -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new().fallback(handle).with_state(Arc::clone(&hits));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn query(req: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

async fn handle(State(hits): State<Arc<AtomicUsize>>, req: Request) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        // Echo the request as JSON.
        ["echo", ..] => {
            let method = req.method().to_string();
            let query = req.uri().query().unwrap_or("").to_owned();
            let mut headers = serde_json::Map::new();
            for (name, value) in req.headers() {
                headers.insert(
                    name.to_string(),
                    serde_json::Value::String(value.to_str().unwrap_or("").to_owned()),
                );
            }
            let body = to_bytes(req.into_body(), usize::MAX).await.unwrap();
            axum::Json(serde_json::json!({
                "method": method,
                "path": path,
                "query": query,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            }))
            .into_response()
        }
        ["status", code] => {
            let status = StatusCode::from_u16(code.parse().unwrap()).unwrap();
            (status, format!("status {code}")).into_response()
        }
        ["json"] => {
            axum::Json(serde_json::json!({"hello": "world", "n": [1, 2, 3]})).into_response()
        }
        ["headers"] => {
            let mut response = "headers".into_response();
            let h = response.headers_mut();
            h.append("X-Multi", HeaderValue::from_static("one"));
            h.append("X-Multi", HeaderValue::from_static("two"));
            h.insert("X-Custom", HeaderValue::from_static("Value"));
            response
        }
        // Answers after 3 s.
        ["slow"] => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "slow".into_response()
        }
        // Headers and one chunk at once, then nothing.
        ["stall"] => {
            let stream = futures::stream::once(async { Ok::<_, Infallible>(Bytes::from("x")) })
                .chain(futures::stream::pending());
            Body::from_stream(stream).into_response()
        }
        // A body without end.
        ["endless"] => {
            let chunk = Bytes::from(vec![b'z'; 16 << 10]);
            let stream = futures::stream::repeat(chunk).map(Ok::<_, Infallible>);
            Body::from_stream(stream).into_response()
        }
        // Exactly n bytes.
        ["bytes", n] => vec![b'b'; n.parse().unwrap()].into_response(),
        // `?to=URL&status=302`.
        ["redirect"] => {
            let q = query(&req);
            let status = q.get("status").map_or(302, |s| s.parse().unwrap());
            Response::builder()
                .status(status)
                .header(header::LOCATION, q.get("to").cloned().unwrap_or_default())
                .body(Body::empty())
                .unwrap()
        }
        // /chain/n redirects to /chain/n-1; /chain/0 answers.
        ["chain", n] => {
            let n: u32 = n.parse().unwrap();
            if n == 0 {
                "end of chain".into_response()
            } else {
                Response::builder()
                    .status(StatusCode::FOUND)
                    .header(header::LOCATION, format!("/chain/{}", n - 1))
                    .body(Body::empty())
                    .unwrap()
            }
        }
        _ => (StatusCode::NOT_FOUND, "no such route").into_response(),
    }
}

/// A resolver answering from a table, never from the network. Unknown
/// names fail to resolve.
#[derive(Default)]
pub struct FakeLookup {
    names: HashMap<String, Vec<IpAddr>>,
    system: bool,
    pub calls: AtomicUsize,
}

impl FakeLookup {
    pub fn with(mut self, name: &str, addrs: &[&str]) -> Self {
        self.names.insert(
            name.to_owned(),
            addrs.iter().map(|a| a.parse().unwrap()).collect(),
        );
        self
    }

    /// Names not in the table go to the system resolver (for `localhost`).
    pub fn with_system_fallback(mut self) -> Self {
        self.system = true;
        self
    }
}

impl Lookup for FakeLookup {
    fn lookup(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let host = host.strip_suffix('.').unwrap_or(host);
        match self.names.get(host) {
            Some(found) => {
                let found = found.clone();
                Box::pin(async move { Ok(found) })
            }
            None if self.system => SystemLookup.lookup(host),
            None => Box::pin(async { Err(io::Error::other("no such name")) }),
        }
    }
}
