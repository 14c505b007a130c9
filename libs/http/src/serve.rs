//! Serving a router on a TCP listener, safely in front of slow and many
//! clients.
//!
//! `axum::serve` exposes none of hyper's timeouts, so this module runs the
//! accept loop itself:
//!
//! - **connection cap**: a semaphore of [`ServeLimits::max_connections`]
//!   permits; a connection accepted past it gets a fixed 503 and is closed,
//!   so a flood neither queues in the kernel nor spends the process's file
//!   descriptors;
//! - **header-read timeout**: hyper's own (the clock starts when the
//!   connection waits for a request head, so it also bounds a keep-alive
//!   wait);
//! - **body-read timeout**: the request body fails with [`BodyTimeout`] once
//!   the deadline (end of headers + timeout) passes; handlers turn that into
//!   408 through [`crate::ApiError::body_read`];
//! - **idle timeout**: a watchdog per connection closes it gracefully when it
//!   has served a request and no request is in flight for that long (a
//!   streaming response counts as in flight until its body ends).
//!
//! Every response gets `X-Content-Type-Options: nosniff` here, in one place,
//! and every request is counted here (`picloud_http_requests_total`, by
//! surface and status, and its time to the response head).
//!
//! Shutdown stops accepting, asks every connection to finish its current
//! request, and waits for them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::HeaderValue;
use axum::http::header::X_CONTENT_TYPE_OPTIONS;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use picloud_core::{Config, Shutdown};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The bounds every listener enforces (see the module docs).
#[derive(Debug, Clone)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl ServeLimits {
    pub fn from_config(config: &Config) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(config.http_header_timeout_ms),
            body_read_timeout: Duration::from_millis(config.http_body_timeout_ms),
            idle_timeout: Duration::from_millis(config.http_idle_timeout_ms),
            max_connections: config.http_max_connections,
        }
    }
}

/// The request body did not arrive before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// What a connection over the cap is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 77\r\n\r\n\
{\"error\":{\"code\":\"unavailable\",\"message\":\"too many open connections; retry\"}}";

/// Serves `router` on `listener` within `limits` until `shutdown`, then
/// drains the open connections.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    limits: ServeLimits,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, ?limits, "serving HTTP");
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: log, breathe, go on (a tight loop on
                    // EMFILE would burn a core).
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(stream);
            continue;
        };
        connections.spawn(connection(
            stream,
            remote,
            router.clone(),
            limits.clone(),
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Answers a connection over the cap without waiting on it: a fresh socket's
/// send buffer takes the short answer at once, or the client gets a reset.
fn refuse(stream: TcpStream) {
    let _ = stream.try_write(OVER_CAPACITY);
    tracing::debug!("connection refused: at the connection cap");
}

/// Requests in flight on one connection, and whether it served one yet.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Activity {
    in_flight: usize,
    served: bool,
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    limits: ServeLimits,
    shutdown: Shutdown,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let (activity, watch_activity) = watch::channel(Activity::default());
    let activity = Arc::new(activity);
    let body_timeout = limits.body_read_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = InFlight::begin(activity.clone());
        let deadline = Instant::now() + body_timeout;
        let mut req = req.map(|b| Body::new(TimedBody::new(b, deadline)));
        req.extensions_mut().insert(ConnectInfo(remote));
        let router = router.clone();
        let surface = crate::metrics::surface(req.uri().path());
        let began = std::time::Instant::now();
        async move {
            let mut resp = router.oneshot(req).await?;
            picloud_metrics::global().http_request(
                surface,
                resp.status().as_u16(),
                began.elapsed(),
            );
            // Every answer, a script's included: a browser must not guess
            // an HTML type from a body a caller may have chosen.
            resp.headers_mut()
                .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            Ok::<_, Infallible>(resp.map(|b| Body::new(GuardedBody { inner: b, guard })))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %remote, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = idle(watch_activity.clone(), limits.idle_timeout), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves once the connection has served a request and then stayed
/// without one for `timeout`.
async fn idle(mut activity: watch::Receiver<Activity>, timeout: Duration) {
    loop {
        // The guards `wait_for` returns are dropped at once: they may not
        // be held across an await.
        let quiet = activity
            .wait_for(|a| a.served && a.in_flight == 0)
            .await
            .is_ok();
        if !quiet {
            return std::future::pending().await;
        }
        let busy = tokio::time::timeout(timeout, async {
            activity.wait_for(|a| a.in_flight > 0).await.is_ok()
        })
        .await;
        match busy {
            Err(_) => return,
            Ok(true) => continue,
            Ok(false) => return std::future::pending().await,
        }
    }
}

/// One request in flight until dropped (with its response body).
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn begin(activity: Arc<watch::Sender<Activity>>) -> Self {
        activity.send_modify(|a| a.in_flight += 1);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| {
            a.in_flight -= 1;
            a.served = true;
        });
    }
}

/// A request body that fails with [`BodyTimeout`] past its deadline.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl TimedBody {
    fn new(inner: Incoming, deadline: Instant) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in flight until it
/// ends (a live log stream is not an idle connection).
struct GuardedBody {
    inner: Body,
    #[allow(dead_code)] // held for its Drop
    guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `err` (or one of its causes) is a [`BodyTimeout`].
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<BodyTimeout>() {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).expect("ascii");
        let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
        serde_json::from_str::<serde_json::Value>(body).expect("json body");
    }
}
