use std::net::{IpAddr, Ipv4Addr};

use url::{Host, Url};

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

#[test]
fn builtin_rules_per_address() {
    let table = [
        // IPv4
        ("0.0.0.0", "unspecified"),
        ("0.255.255.255", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.255", "loopback"),
        ("10.0.0.0", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.0", "private"),
        ("172.31.255.255", "private"),
        ("192.168.0.0", "private"),
        ("192.168.255.255", "private"),
        ("169.254.0.1", "link-local"),
        ("169.254.255.255", "link-local"),
        ("169.254.169.254", "metadata"),
        ("169.254.169.253", "metadata"),
        ("169.254.169.123", "metadata"),
        ("169.254.170.2", "metadata"),
        ("169.254.170.23", "metadata"),
        ("100.100.100.200", "metadata"),
        ("168.63.129.16", "metadata"),
        ("192.0.0.192", "metadata"),
        ("100.64.0.0", "cgnat"),
        ("100.127.255.255", "cgnat"),
        ("192.0.2.0", "documentation"),
        ("198.51.100.255", "documentation"),
        ("203.0.113.1", "documentation"),
        ("198.18.0.0", "benchmark"),
        ("198.19.255.255", "benchmark"),
        ("224.0.0.0", "multicast"),
        ("239.255.255.255", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.0", "reserved"),
        ("255.255.255.254", "reserved"),
        ("192.0.0.1", "reserved"),
        ("192.88.99.1", "reserved"),
        // IPv6
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("febf:ffff::1", "link-local"),
        ("fec0::1", "site-local"),
        ("fc00::1", "unique-local"),
        ("fdff:ffff::1", "unique-local"),
        ("fd00:ec2::254", "metadata"),
        ("fd20:ce::254", "metadata"),
        ("ff00::", "multicast"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("3fff::1", "documentation"),
        ("3fff:fff:ffff::1", "documentation"),
        ("2001:2::1", "benchmark"),
        ("2001::1", "teredo"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
        ("2001:10::1", "reserved"),
        ("2001:1ff::1", "reserved"),
        ("100::1", "reserved"),
        ("::1:2:3:4:5", "reserved"),
        ("4000::1", "reserved"),
        ("64:ff9b:1::a00:1", "nat64-local"),
        // IPv6 embedding IPv4
        ("::ffff:127.0.0.1", "ipv4-mapped loopback"),
        ("::ffff:10.1.2.3", "ipv4-mapped private"),
        ("::ffff:169.254.169.254", "ipv4-mapped metadata"),
        ("::ffff:0.0.0.0", "ipv4-mapped unspecified"),
        ("::ffff:100.64.1.1", "ipv4-mapped cgnat"),
        ("::ffff:255.255.255.255", "ipv4-mapped broadcast"),
        ("::ffff:0:127.0.0.1", "ipv4-translated loopback"),
        ("::ffff:0:192.168.1.1", "ipv4-translated private"),
        ("::127.0.0.1", "ipv4-compatible loopback"),
        ("::10.0.0.1", "ipv4-compatible private"),
        ("::2", "ipv4-compatible unspecified"),
        ("64:ff9b::127.0.0.1", "nat64 loopback"),
        ("64:ff9b::a9fe:a9fe", "nat64 metadata"),
        ("64:ff9b::192.168.0.1", "nat64 private"),
        ("2002:7f00:1::", "6to4 loopback"),
        ("2002:a9fe:a9fe::1", "6to4 metadata"),
        ("2002:c0a8:101::1", "6to4 private"),
        ("2002:e000:1::", "6to4 multicast"),
    ];
    for (addr, rule) in table {
        assert_eq!(classify(ip(addr)), Some(rule), "{addr}");
        assert_eq!(
            EgressPolicy::default().check_ip(ip(addr)),
            Err(Denied { rule }),
            "{addr}"
        );
    }
}

#[test]
fn public_addresses_pass() {
    for addr in [
        "1.1.1.1",
        "8.8.8.8",
        "93.184.216.34",
        "11.0.0.0",
        "9.255.255.255",
        "126.255.255.255",
        "128.0.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.167.255.255",
        "192.169.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "223.255.255.255",
        "192.0.1.255",
        "192.0.3.0",
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "2a00:1450:4001::1",
        "2001:200::1",
        "3fff:1000::1",
        // Embedded public IPv4 is as good as the address itself.
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "2002:808:808::1",
    ] {
        assert_eq!(classify(ip(addr)), None, "{addr}");
        assert_eq!(EgressPolicy::default().check_ip(ip(addr)), Ok(()), "{addr}");
    }
}

#[test]
fn denial_names_the_rule_and_not_the_address() {
    let err = EgressPolicy::default()
        .check_ip(ip("10.9.8.7"))
        .unwrap_err();
    assert_eq!(err.to_string(), "request denied by policy: private");
    assert!(!err.to_string().contains("10.9.8.7"));
}

/// The `url` crate (WHATWG URL parsing) normalises every IPv4 notation to
/// the canonical address before the policy sees it.
#[test]
fn url_parsing_normalises_ip_literals() {
    let lo = Ipv4Addr::new(127, 0, 0, 1);
    let md = Ipv4Addr::new(169, 254, 169, 254);
    let table: &[(&str, Ipv4Addr)] = &[
        ("http://127.0.0.1/", lo),
        ("http://2130706433/", lo),                     // decimal
        ("http://0x7f000001/", lo),                     // hex
        ("http://0X7F000001/", lo),                     // hex, upper case
        ("http://0x7f.0x0.0x0.0x1/", lo),               // hex parts
        ("http://017700000001/", lo),                   // octal
        ("http://0177.0.0.01/", lo),                    // octal parts
        ("http://127.1/", lo),                          // short: a.b
        ("http://127.0.1/", lo),                        // short: a.b.c
        ("http://0x7f.1/", lo),                         // short, hex
        ("http://127.0.0.1./", lo),                     // trailing dot
        ("http://%31%32%37.0.0.1/", lo),                // percent-encoded
        ("http://\u{ff11}\u{ff12}\u{ff17}.0.0.1/", lo), // full-width digits
        (
            "http://\u{ff11}\u{ff12}\u{ff17}\u{ff0e}\u{ff10}\u{ff0e}\u{ff10}\u{ff0e}\u{ff11}/",
            lo,
        ), // full-width dots
        ("http://127\u{3002}0\u{3002}0\u{3002}1/", lo), // ideographic full stop
        ("http://\u{1d7cf}\u{1d7d0}\u{1d7d5}.0.0.1/", lo), // mathematical bold digits
        ("http://2852039166/", md),
        ("http://0xa9fea9fe/", md),
        ("http://0251.0376.0251.0376/", md),
        ("http://169.254.43518/", md),
        ("http://0xa9.0xfe.0xa9.0xfe/", md),
        ("http://user:pw@169.254.169.254/", md),
        ("http://169.254.169.254\\@example.com/", md),
        ("http://0/", Ipv4Addr::UNSPECIFIED),
        ("http://192.168.257/", Ipv4Addr::new(192, 168, 1, 1)),
        ("http://012.1/", Ipv4Addr::new(10, 0, 0, 1)),
    ];
    for (text, expected) in table {
        let parsed = url(text);
        assert_eq!(parsed.host(), Some(Host::Ipv4(*expected)), "{text}");
        assert!(
            EgressPolicy::default().check_url(&parsed).is_err(),
            "{text}"
        );
    }
    assert_eq!(
        url("http://[::ffff:7f00:1]/").host(),
        Some(Host::Ipv6("::ffff:127.0.0.1".parse().unwrap()))
    );
    assert_eq!(
        url("http://[0:0:0:0:0:0:0:1]/").host(),
        Some(Host::Ipv6("::1".parse().unwrap()))
    );
}

#[test]
fn schemes_other_than_http_are_denied() {
    let policy = EgressPolicy::default();
    for text in [
        "file:///etc/passwd",
        "ftp://example.com/",
        "gopher://example.com/",
        "ws://example.com/",
        "data:text/plain,hi",
        "javascript:alert(1)",
    ] {
        assert_eq!(
            policy.check_url(&url(text)),
            Err(Denied { rule: "scheme" }),
            "{text}"
        );
    }
    assert_eq!(policy.check_url(&url("http://example.com/")), Ok(()));
    assert_eq!(policy.check_url(&url("HTTPS://example.com/")), Ok(()));
}

#[test]
fn ports_are_restricted_unless_any() {
    let policy = EgressPolicy::default();
    assert_eq!(policy.check_url(&url("http://example.com:443/")), Ok(()));
    assert_eq!(policy.check_url(&url("https://example.com:80/")), Ok(()));
    for text in [
        "http://example.com:8080/",
        "https://example.com:22/",
        "http://example.com:0/",
    ] {
        assert_eq!(
            policy.check_url(&url(text)),
            Err(Denied { rule: "port" }),
            "{text}"
        );
    }
    let any = EgressPolicy::from_config("", "", &[]).unwrap();
    assert_eq!(any.check_url(&url("http://example.com:8080/")), Ok(()));
    // The address rules come first: a loopback URL is "loopback", not "port".
    assert_eq!(
        policy.check_url(&url("http://127.0.0.1:22/")),
        Err(Denied { rule: "loopback" })
    );
    let custom = EgressPolicy::from_config("", "", &[8443]).unwrap();
    assert_eq!(custom.check_url(&url("https://example.com:8443/")), Ok(()));
    assert_eq!(
        custom.check_url(&url("https://example.com/")),
        Err(Denied { rule: "port" })
    );
}

#[test]
fn parse_ports() {
    assert_eq!(
        EgressPolicy::parse_ports("80, 443,8080").unwrap(),
        vec![80, 443, 8080]
    );
    assert_eq!(EgressPolicy::parse_ports("*").unwrap(), Vec::<u16>::new());
    assert_eq!(EgressPolicy::parse_ports("any").unwrap(), Vec::<u16>::new());
    assert!(EgressPolicy::parse_ports("80,0").is_err());
    assert!(EgressPolicy::parse_ports("80,http").is_err());
    assert!(EgressPolicy::parse_ports("65536").is_err());
}

#[test]
fn allow_list_opens_hosts_and_networks() {
    let policy = EgressPolicy::from_config(
        "10.0.0.0/8, 127.0.0.1, api.internal, *.corp.example, fd00::/8",
        "",
        DEFAULT_PORTS,
    )
    .unwrap();
    assert_eq!(policy.check_ip(ip("10.20.30.40")), Ok(()));
    assert_eq!(policy.check_ip(ip("127.0.0.1")), Ok(()));
    assert_eq!(policy.check_ip(ip("::ffff:127.0.0.1")), Ok(()));
    assert_eq!(policy.check_ip(ip("fd12::1")), Ok(()));
    assert_eq!(
        policy.check_ip(ip("127.0.0.2")),
        Err(Denied { rule: "loopback" })
    );
    assert_eq!(
        policy.check_ip(ip("192.168.1.1")),
        Err(Denied { rule: "private" })
    );
    // Allowed literal hosts may use any port.
    assert_eq!(policy.check_url(&url("http://127.0.0.1:8080/")), Ok(()));
    assert_eq!(policy.check_url(&url("http://0x7f.1:8080/")), Ok(()));
    assert_eq!(policy.check_url(&url("http://api.internal:9000/")), Ok(()));
    assert_eq!(policy.check_url(&url("http://API.Internal./")), Ok(()));
    assert_eq!(
        policy.check_url(&url("http://a.b.corp.example:81/")),
        Ok(())
    );
    // The wildcard is for subdomains, not the domain itself.
    assert_eq!(
        policy.check_url(&url("http://corp.example:81/")),
        Err(Denied { rule: "port" })
    );
    // A name allowed by name may resolve anywhere...
    assert_eq!(
        policy.check_resolved("api.internal", &[ip("192.168.1.10")]),
        Ok(())
    );
    // ...another name may not.
    assert_eq!(
        policy.check_resolved("other.example", &[ip("192.168.1.10")]),
        Err(Denied { rule: "private" })
    );
    assert_eq!(
        policy.check_resolved("other.example", &[ip("10.1.1.1")]),
        Ok(())
    );
}

#[test]
fn deny_list_wins() {
    let policy = EgressPolicy::from_config(
        "10.0.0.0/8, api.internal, *.example.org",
        "10.0.0.5, 93.184.216.0/24, evil.example, *.example.org, 2606:4700::/32",
        DEFAULT_PORTS,
    )
    .unwrap();
    let deny = Err(Denied { rule: "deny-list" });
    assert_eq!(policy.check_ip(ip("10.0.0.5")), deny);
    assert_eq!(policy.check_ip(ip("10.0.0.6")), Ok(()));
    assert_eq!(policy.check_ip(ip("93.184.216.34")), deny);
    assert_eq!(policy.check_ip(ip("::ffff:93.184.216.34")), deny);
    assert_eq!(policy.check_ip(ip("64:ff9b::93.184.216.34")), deny);
    assert_eq!(policy.check_ip(ip("2606:4700::1111")), deny);
    assert_eq!(policy.check_url(&url("http://evil.example/")), deny);
    assert_eq!(policy.check_url(&url("http://EVIL.example./")), deny);
    assert_eq!(policy.check_url(&url("http://www.example.org/")), deny);
    assert_eq!(policy.check_url(&url("http://93.184.216.34/")), deny);
    assert_eq!(
        policy.check_resolved("evil.example", &[ip("1.1.1.1")]),
        deny
    );
    // Allowed by name, but resolving into a denied network.
    assert_eq!(
        policy.check_resolved("api.internal", &[ip("93.184.216.1")]),
        deny
    );
}

#[test]
fn one_bad_address_denies_the_name() {
    let policy = EgressPolicy::default();
    assert_eq!(
        policy.check_resolved("mixed.example", &[ip("1.1.1.1"), ip("127.0.0.1")]),
        Err(Denied { rule: "loopback" })
    );
    assert_eq!(
        policy.check_resolved("good.example", &[ip("1.1.1.1"), ip("2606:4700::1")]),
        Ok(())
    );
}

#[test]
fn config_entries_are_validated() {
    for bad in [
        "10.0.0.0/33",
        "10.0.0.0/x",
        "example.com:80",
        "http://example.com",
        "*.10.0.0.1",
        "exa mple.com",
    ] {
        let err = EgressPolicy::from_config(bad, "", &[]).unwrap_err();
        assert!(
            matches!(err, PolicyError::InvalidEntry { list: "allow", .. }),
            "{bad}"
        );
        assert!(EgressPolicy::from_config("", bad, &[]).is_err(), "{bad}");
    }
    // Empty entries and whitespace are fine; IDNA and IPv4 notations are
    // normalised like URLs are.
    let policy = EgressPolicy::from_config(" , bücher.example ,0x7f.1,", "", &[]).unwrap();
    assert_eq!(
        policy.check_url(&url("http://xn--bcher-kva.example/")),
        Ok(())
    );
    assert_eq!(policy.check_ip(ip("127.0.0.1")), Ok(()));
}

#[test]
fn display_summarises() {
    let policy = EgressPolicy::from_config("a.example,10.0.0.0/8", "b.example", &[443]).unwrap();
    assert_eq!(
        policy.to_string(),
        "egress: built-in SSRF rules, 2 allowed and 1 denied hosts/networks, ports 443"
    );
}
