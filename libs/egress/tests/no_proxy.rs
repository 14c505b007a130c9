//! Environment proxies are ignored: a proxy would see (and resolve) the
//! destination itself, outside the policy. Its own test binary, because it
//! sets process-wide environment variables.

mod common;

use std::time::Duration;

use common::TestServer;
use picloud_egress::{CallLimits, Egress, EgressPolicy, OutboundRequest};

#[tokio::test]
async fn environment_proxies_are_ignored() {
    // A "proxy" that counts what reaches it.
    let proxy = TestServer::start().await;
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        // SAFETY: this test binary has this one test; nothing else reads
        // the environment concurrently.
        unsafe { std::env::set_var(var, format!("http://{}", proxy.addr)) };
    }
    for var in ["NO_PROXY", "no_proxy"] {
        // SAFETY: as above.
        unsafe { std::env::remove_var(var) };
    }

    let server = TestServer::start().await;
    let egress = Egress::new(EgressPolicy::from_config("127.0.0.1", "", &[]).unwrap()).unwrap();
    let limits = CallLimits {
        timeout: Duration::from_secs(5),
        ..CallLimits::default()
    };
    let response = egress
        .send(
            OutboundRequest::new("GET", server.url("/status/204")),
            &limits,
        )
        .await
        .unwrap();
    assert_eq!(response.status, 204);
    assert_eq!(server.hits(), 1);
    assert_eq!(proxy.hits(), 0);
}
