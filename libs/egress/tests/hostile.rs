//! A table of hostile URLs, each denied with the rule it breaks. They go
//! through the whole client (with a fake resolver that never touches the
//! network); every one is refused before a connection is attempted.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::FakeLookup;
use picloud_egress::{CallLimits, Denied, Egress, EgressError, EgressPolicy, OutboundRequest};
use url::Url;

/// (URL, rule). Host names are answered by [`lookup`].
const HOSTILE: &[(&str, &str)] = &[
    // Loopback, in every notation.
    ("http://127.0.0.1/", "loopback"),
    ("http://127.0.0.1:443/admin", "loopback"),
    ("https://127.0.0.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.0.1/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0x7f.0x0.0x0.0x1/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0177.0000.0000.0001/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://127.000.000.001/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://127.255.255.254/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://%31%32%37.0.0.1/", "loopback"),
    (
        "http://\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}/",
        "loopback",
    ),
    ("http://127\u{3002}0\u{3002}0\u{3002}1/", "loopback"),
    ("http://\u{1d7cf}\u{1d7d0}\u{1d7d5}.0.0.1/", "loopback"),
    ("http://evil.example@127.0.0.1/", "loopback"),
    ("http://127.0.0.1#@evil.example/", "loopback"),
    ("http://127.0.0.1\\@evil.example/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "loopback"),
    ("http://[0000::0001]:80/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://localhost./", "loopback"),
    ("http://LocalHost/", "loopback"),
    ("http://sub.localhost/", "loopback"),
    ("http://v6only.test/", "loopback"),
    ("http://rebind.test/", "loopback"),
    ("http://127.0.0.1.nip.test/", "loopback"),
    // Unspecified / "this network".
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://0x0/", "unspecified"),
    ("http://0.1.2.3/", "unspecified"),
    ("http://[::]/", "unspecified"),
    // Private.
    ("http://10.0.0.1/", "private"),
    ("http://10.255.255.255/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.254/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://192.168.1.1:443/", "private"),
    ("http://0xa000001/", "private"),
    ("http://012.0.0.1/", "private"),
    ("http://167772161/", "private"),
    ("http://3232235521/", "private"),
    ("http://0xc0.0xa8.1.1/", "private"),
    ("http://192.168.257/", "private"),
    ("http://internal.test/", "private"),
    ("https://router.test/", "private"),
    // Link-local.
    ("http://169.254.1.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[febf::1]/", "link-local"),
    // Cloud metadata.
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://169.254.169.254/computeMetadata/v1/", "metadata"),
    ("http://2852039166/", "metadata"),
    ("http://0xa9fea9fe/", "metadata"),
    ("http://0251.0376.0251.0376/", "metadata"),
    ("http://169.254.43518/", "metadata"),
    ("http://169.16689662/", "metadata"),
    ("http://169.254.170.2/v2/credentials", "metadata"),
    ("http://100.100.100.200/latest/meta-data/", "metadata"),
    ("http://168.63.129.16/machine", "metadata"),
    ("http://192.0.0.192/", "metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    (
        "http://metadata.google.internal/computeMetadata/v1/",
        "metadata",
    ),
    ("http://instance-data.test/", "metadata"),
    // CGNAT.
    ("http://100.64.0.1/", "cgnat"),
    ("http://100.127.255.254/", "cgnat"),
    ("http://cgnat.test/", "cgnat"),
    // Documentation and benchmark ranges.
    ("http://192.0.2.1/", "documentation"),
    ("http://198.51.100.7/", "documentation"),
    ("http://203.0.113.9/", "documentation"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[3fff::1]/", "documentation"),
    ("http://198.18.0.1/", "benchmark"),
    ("http://198.19.255.254/", "benchmark"),
    ("http://[2001:2::1]/", "benchmark"),
    // Multicast, broadcast, reserved.
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[ff05::1:3]/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://4294967295/", "broadcast"),
    ("http://0xffffffff/", "broadcast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://192.0.0.8/", "reserved"),
    ("http://[100::1]/", "reserved"),
    ("http://[2001:10::1]/", "reserved"),
    // IPv6 local ranges.
    ("http://[fc00::1]/", "unique-local"),
    ("http://[fd12:3456:789a::1]/", "unique-local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://ula.test/", "unique-local"),
    // IPv6 forms embedding an IPv4 address.
    ("http://[::ffff:127.0.0.1]/", "ipv4-mapped loopback"),
    ("http://[::ffff:7f00:1]/", "ipv4-mapped loopback"),
    ("http://[0:0:0:0:0:ffff:10.0.0.1]/", "ipv4-mapped private"),
    ("http://[::ffff:169.254.169.254]/", "ipv4-mapped metadata"),
    ("http://[::ffff:a9fe:a9fe]/", "ipv4-mapped metadata"),
    ("http://[::ffff:0.0.0.0]/", "ipv4-mapped unspecified"),
    ("http://[::ffff:100.64.0.1]/", "ipv4-mapped cgnat"),
    ("http://[::ffff:0:127.0.0.1]/", "ipv4-translated loopback"),
    ("http://[::127.0.0.1]/", "ipv4-compatible loopback"),
    ("http://[::10.0.0.1]/", "ipv4-compatible private"),
    ("http://[::2]/", "ipv4-compatible unspecified"),
    ("http://[64:ff9b::127.0.0.1]/", "nat64 loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/", "nat64 metadata"),
    ("http://[64:ff9b::10.1.1.1]/", "nat64 private"),
    ("http://[64:ff9b:1::a00:1]/", "nat64-local"),
    ("http://[2002:7f00:1::1]/", "6to4 loopback"),
    ("http://[2002:a9fe:a9fe::]/", "6to4 metadata"),
    ("http://[2002:c0a8:101::1]/", "6to4 private"),
    ("http://[2001::1]/", "teredo"),
    ("http://mapped.test/", "ipv4-mapped private"),
    // Schemes.
    ("file:///etc/passwd", "scheme"),
    ("file://localhost/etc/passwd", "scheme"),
    ("ftp://example.test/", "scheme"),
    ("gopher://127.0.0.1:70/_GET", "scheme"),
    ("dict://127.0.0.1:11211/stats", "scheme"),
    ("ldap://example.test/", "scheme"),
    ("ws://example.test/", "scheme"),
    ("data:text/plain,hello", "scheme"),
    ("javascript:alert(1)", "scheme"),
    // Ports.
    ("http://public.test:22/", "port"),
    ("http://public.test:6379/", "port"),
    ("https://public.test:25/", "port"),
    ("http://public.test:0/", "port"),
    ("http://8.8.8.8:8080/", "port"),
];

/// What the hostile host names resolve to.
fn lookup() -> Arc<FakeLookup> {
    Arc::new(
        FakeLookup::default()
            .with("localhost", &["127.0.0.1", "::1"])
            .with("sub.localhost", &["127.0.0.1"])
            .with("v6only.test", &["::1"])
            .with("rebind.test", &["93.184.216.34", "127.0.0.1"])
            .with("127.0.0.1.nip.test", &["127.0.0.1"])
            .with("internal.test", &["10.1.2.3"])
            .with("router.test", &["192.168.1.1"])
            .with("metadata.google.internal", &["169.254.169.254"])
            .with("instance-data.test", &["169.254.169.254"])
            .with("cgnat.test", &["100.80.1.1"])
            .with("ula.test", &["fd00::1"])
            .with("mapped.test", &["::ffff:10.0.0.5"])
            .with("public.test", &["93.184.216.34"]),
    )
}

#[tokio::test]
async fn hostile_urls_are_denied_with_their_rule() {
    assert!(HOSTILE.len() >= 60, "{} URLs", HOSTILE.len());
    let egress = Egress::with_lookup(EgressPolicy::default(), lookup()).unwrap();
    let limits = CallLimits {
        timeout: Duration::from_secs(5),
        ..CallLimits::default()
    };
    let mut failures = Vec::new();
    for &(url, rule) in HOSTILE {
        let result = egress.send(OutboundRequest::new("GET", url), &limits).await;
        let expected = format!("request denied by policy: {rule}");
        match result {
            Err(EgressError::Denied(Denied { rule: got })) if got == rule => {
                let text = EgressError::Denied(Denied { rule: got }).to_string();
                assert_eq!(text, expected);
            }
            other => failures.push(format!("{url}: expected {rule:?}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The policy alone gives the same answer for every URL whose host is a
/// literal or whose scheme or port is wrong (names need resolving).
#[test]
fn hostile_literals_are_denied_by_the_policy_alone() {
    let policy = EgressPolicy::default();
    let mut checked = 0;
    for &(text, rule) in HOSTILE {
        let url = Url::parse(text).unwrap();
        let literal = matches!(url.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)));
        if literal || rule == "scheme" || rule == "port" {
            assert_eq!(policy.check_url(&url), Err(Denied { rule }), "{text}");
            checked += 1;
        }
    }
    assert!(checked >= 60, "{checked}");
}

/// Every denial text is the rule, never the address.
#[tokio::test]
async fn denials_never_name_the_address() {
    let egress = Egress::with_lookup(EgressPolicy::default(), lookup()).unwrap();
    for (url, address) in [
        ("http://internal.test/", "10.1.2.3"),
        ("http://mapped.test/", "10.0.0.5"),
        ("http://rebind.test/", "127.0.0.1"),
        ("http://ula.test/", "fd00::1"),
    ] {
        let err = egress
            .send(OutboundRequest::new("GET", url), &CallLimits::default())
            .await
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.starts_with("request denied by policy: "), "{text}");
        assert!(!text.contains(address), "{text}");
    }
}

/// The operator's deny list on top of the built-ins.
#[tokio::test]
async fn deny_list_applies_to_names_and_their_addresses() {
    let policy = EgressPolicy::from_config("", "public.test, 93.184.216.0/24", &[80, 443]).unwrap();
    let lookup = Arc::new(
        FakeLookup::default()
            .with("public.test", &["1.1.1.1"])
            .with("other.test", &["93.184.216.34"]),
    );
    let egress = Egress::with_lookup(policy, lookup.clone()).unwrap();
    for url in [
        "http://public.test/",
        "http://other.test/",
        "http://93.184.216.34/",
    ] {
        let err = egress
            .send(OutboundRequest::new("GET", url), &CallLimits::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "request denied by policy: deny-list",
            "{url}"
        );
    }
    // A name denied by name is not even resolved.
    assert_eq!(lookup.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
