//! The SSRF policy: which destinations an outbound request may reach.
//!
//! Deny by default. An address is refused when it falls under one of these
//! rules (the rule's name is what a denial reports):
//!
//! | rule              | IPv4                                                | IPv6                         |
//! |-------------------|-----------------------------------------------------|------------------------------|
//! | `metadata`        | 169.254.169.254, .169.253, .169.123, .170.2, .170.23, 100.100.100.200, 168.63.129.16, 192.0.0.192 | fd00:ec2::254, fd00:ec2::253, fd20:ce::254 |
//! | `unspecified`     | 0.0.0.0/8                                           | `::`                         |
//! | `loopback`        | 127.0.0.0/8                                         | `::1`                        |
//! | `private`         | 10/8, 172.16/12, 192.168/16                          |                              |
//! | `link-local`      | 169.254/16                                          | fe80::/10                    |
//! | `cgnat`           | 100.64/10                                           |                              |
//! | `documentation`   | 192.0.2/24, 198.51.100/24, 203.0.113/24               | 2001:db8::/32, 3fff::/20     |
//! | `benchmark`       | 198.18/15                                           | 2001:2::/48                  |
//! | `multicast`       | 224/4                                               | ff00::/8                     |
//! | `broadcast`       | 255.255.255.255                                     |                              |
//! | `reserved`        | 240/4, 192.0.0/24, 192.88.99/24                      | 2001::/23, anything outside 2000::/3 not listed here |
//! | `unique-local`    |                                                     | fc00::/7                     |
//! | `site-local`      |                                                     | fec0::/10                    |
//! | `teredo`          |                                                     | 2001::/32                    |
//! | `nat64-local`     |                                                     | 64:ff9b:1::/48               |
//!
//! IPv6 forms that embed an IPv4 address are unwrapped and the IPv4 address
//! checked; the rule is then named after the form, e.g. `ipv4-mapped loopback`:
//! `ipv4-mapped` (::ffff:0:0/96), `ipv4-translated` (::ffff:0:0:0/96),
//! `ipv4-compatible` (::/96), `nat64` (64:ff9b::/96) and `6to4` (2002::/16).
//! An embedded public IPv4 address is allowed, like the address itself.
//!
//! Besides addresses: only `http` and `https` (rule `scheme`), only the
//! configured ports (rule `port`), and the operator's own denials (rule
//! `deny-list`).
//!
//! Operator lists (`PICLOUD_HTTP_ALLOW`, `PICLOUD_HTTP_DENY`) are
//! comma-separated entries, each a host name (`api.example.com`), a wildcard
//! for its subdomains (`*.example.com`), an IP address (`10.1.2.3`, `::1`) or
//! a CIDR (`10.0.0.0/8`, `fd00::/8`). The deny list wins over the allow list,
//! which wins over the built-in rules. A host allowed by name may resolve to
//! any address not on the deny list. A URL whose host is allowed (by name, or
//! an IP literal inside an allowed CIDR) may use any port: the operator trusts
//! that destination.
//!
//! Literal IPs reach this module already normalised: the WHATWG URL parser
//! (the `url` crate) reads decimal, hexadecimal, octal and short IPv4 forms,
//! percent-encoded and internationalised (full-width) digits, and writes the
//! canonical address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::{Host, Url};

/// The ports [`EgressPolicy::default`] allows.
pub const DEFAULT_PORTS: &[u16] = &[80, 443];

/// Rule of the scheme check.
pub const RULE_SCHEME: &str = "scheme";
/// Rule of the port check.
pub const RULE_PORT: &str = "port";
/// Rule of the operator's deny list.
pub const RULE_DENY_LIST: &str = "deny-list";

/// A request refused by the policy. The text names the rule, never the
/// address that broke it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request denied by policy: {rule}")]
pub struct Denied {
    /// The rule, e.g. `loopback`, `metadata`, `ipv4-mapped private`.
    pub rule: &'static str,
}

impl Denied {
    const fn by(rule: &'static str) -> Self {
        Self { rule }
    }
}

/// A configuration entry the policy cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{list}: invalid entry {}: expected a host name, `*.domain`, an IP address or a CIDR",
        picloud_core::quote(entry)
    )]
    InvalidEntry { list: &'static str, entry: String },
    #[error("invalid port {}: expected a number from 1 to 65535", picloud_core::quote(.0))]
    InvalidPort(String),
}

/// A host-name entry of an operator list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// Exactly this (ASCII, lower-case) name.
    Exact(String),
    /// Any subdomain of this name; stored with its leading dot.
    Subdomains(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// One operator list: host patterns and networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct List {
    hosts: Vec<HostPattern>,
    nets: Vec<IpNet>,
}

impl List {
    fn parse(list: &'static str, text: &str) -> Result<Self, PolicyError> {
        let mut out = List::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let invalid = || PolicyError::InvalidEntry {
                list,
                entry: entry.to_owned(),
            };
            if entry.contains('/') {
                let net: IpNet = entry.parse().map_err(|_| invalid())?;
                out.nets.push(net.trunc());
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                out.nets.push(IpNet::from(ip));
            } else if let Some(domain) = entry.strip_prefix("*.") {
                match Host::parse(domain).map_err(|_| invalid())? {
                    Host::Domain(d) => out
                        .hosts
                        .push(HostPattern::Subdomains(format!(".{}", trim_dot(&d)))),
                    Host::Ipv4(_) | Host::Ipv6(_) => return Err(invalid()),
                }
            } else {
                // Host::parse applies IDNA and reads every IPv4 notation,
                // so entries match what URLs normalise to.
                match Host::parse(entry).map_err(|_| invalid())? {
                    Host::Domain(d) => out.hosts.push(HostPattern::Exact(trim_dot(&d).to_owned())),
                    Host::Ipv4(ip) => out.nets.push(IpNet::from(IpAddr::V4(ip))),
                    Host::Ipv6(ip) => out.nets.push(IpNet::from(IpAddr::V6(ip))),
                }
            }
        }
        Ok(out)
    }

    fn has_host(&self, host: &str) -> bool {
        let host = trim_dot(host);
        self.hosts.iter().any(|p| p.matches(host))
    }

    fn has_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

fn trim_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

/// Which destinations outbound requests may reach. Cheap to share behind an
/// `Arc`; immutable once built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: List,
    deny: List,
    /// Empty: any port.
    ports: Vec<u16>,
}

impl Default for EgressPolicy {
    /// The built-in rules only, ports 80 and 443.
    fn default() -> Self {
        Self {
            allow: List::default(),
            deny: List::default(),
            ports: DEFAULT_PORTS.to_vec(),
        }
    }
}

impl EgressPolicy {
    /// A policy from the operator's configuration: `allow` and `deny` in the
    /// syntax of `PICLOUD_HTTP_ALLOW` / `PICLOUD_HTTP_DENY` (see the module
    /// docs), and the ports URLs may use (empty: any port).
    pub fn from_config(allow: &str, deny: &str, ports: &[u16]) -> Result<Self, PolicyError> {
        Ok(Self {
            allow: List::parse("allow", allow)?,
            deny: List::parse("deny", deny)?,
            ports: ports.to_vec(),
        })
    }

    /// Reads a comma-separated port list (`"80,443,8080"`); `"*"` or `"any"`
    /// is every port (an empty list).
    pub fn parse_ports(text: &str) -> Result<Vec<u16>, PolicyError> {
        let text = text.trim();
        if text == "*" || text.eq_ignore_ascii_case("any") {
            return Ok(Vec::new());
        }
        text.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.parse::<u16>() {
                Ok(port) if port != 0 => Ok(port),
                _ => Err(PolicyError::InvalidPort(p.to_owned())),
            })
            .collect()
    }

    /// The ports URLs may use; empty is any port.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Checks one address: the deny list, then the allow list, then the
    /// built-in rules.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Denied> {
        if self.deny_ip(ip) {
            return Err(Denied::by(RULE_DENY_LIST));
        }
        if self.allow_ip(ip) {
            return Ok(());
        }
        match classify(ip) {
            Some(rule) => Err(Denied::by(rule)),
            None => Ok(()),
        }
    }

    /// Checks a URL before it is requested: the scheme, a literal IP host,
    /// a host name against the operator lists, and the port. A host name's
    /// addresses are checked later, when it is resolved
    /// ([`EgressPolicy::check_resolved`]).
    pub fn check_url(&self, url: &Url) -> Result<(), Denied> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Denied::by(RULE_SCHEME));
        }
        let trusted = match url.host() {
            // `http` and `https` URLs always have a host; be strict anyway.
            None => return Err(Denied::by(RULE_SCHEME)),
            Some(Host::Domain(name)) => {
                if self.deny.has_host(name) {
                    return Err(Denied::by(RULE_DENY_LIST));
                }
                self.allow.has_host(name)
            }
            Some(Host::Ipv4(ip)) => {
                self.check_ip(IpAddr::V4(ip))?;
                self.allow_ip(IpAddr::V4(ip))
            }
            Some(Host::Ipv6(ip)) => {
                self.check_ip(IpAddr::V6(ip))?;
                self.allow_ip(IpAddr::V6(ip))
            }
        };
        let port = url.port_or_known_default().unwrap_or(0);
        if !trusted && !self.ports.is_empty() && !self.ports.contains(&port) {
            return Err(Denied::by(RULE_PORT));
        }
        Ok(())
    }

    /// Checks what `host` resolved to. Every address must pass: one denied
    /// address denies the request (a name mixing public and private records
    /// is a rebinding attempt or a misconfiguration; either way, no).
    pub fn check_resolved(&self, host: &str, addrs: &[IpAddr]) -> Result<(), Denied> {
        if self.deny.has_host(host) {
            return Err(Denied::by(RULE_DENY_LIST));
        }
        let trusted = self.allow.has_host(host);
        for &ip in addrs {
            if trusted {
                if self.deny_ip(ip) {
                    return Err(Denied::by(RULE_DENY_LIST));
                }
            } else {
                self.check_ip(ip)?;
            }
        }
        Ok(())
    }

    /// Whether the deny list holds `ip` or the IPv4 address it embeds.
    fn deny_ip(&self, ip: IpAddr) -> bool {
        self.deny.has_ip(ip) || embedded_v4(ip).is_some_and(|v4| self.deny.has_ip(IpAddr::V4(v4)))
    }

    /// Whether the allow list holds `ip` (an IPv4-mapped address counts as
    /// its IPv4 address).
    fn allow_ip(&self, ip: IpAddr) -> bool {
        self.allow.has_ip(ip) || self.allow.has_ip(ip.to_canonical())
    }
}

impl fmt::Display for EgressPolicy {
    /// A summary for the startup log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "egress: built-in SSRF rules, {} allowed and {} denied hosts/networks, ports {}",
            self.allow.hosts.len() + self.allow.nets.len(),
            self.deny.hosts.len() + self.deny.nets.len(),
            if self.ports.is_empty() {
                "any".to_owned()
            } else {
                self.ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        )
    }
}

/// The IPv4 rules, in the order they are checked. Each is also the index of
/// its name in the tables below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V4Rule {
    Metadata,
    Unspecified,
    Loopback,
    Private,
    LinkLocal,
    Cgnat,
    Documentation,
    Benchmark,
    Multicast,
    Broadcast,
    Reserved,
}

macro_rules! v4_rule_names {
    ($prefix:literal) => {
        [
            concat!($prefix, "metadata"),
            concat!($prefix, "unspecified"),
            concat!($prefix, "loopback"),
            concat!($prefix, "private"),
            concat!($prefix, "link-local"),
            concat!($prefix, "cgnat"),
            concat!($prefix, "documentation"),
            concat!($prefix, "benchmark"),
            concat!($prefix, "multicast"),
            concat!($prefix, "broadcast"),
            concat!($prefix, "reserved"),
        ]
    };
}

type RuleNames = [&'static str; 11];

const PLAIN: RuleNames = v4_rule_names!("");
const MAPPED: RuleNames = v4_rule_names!("ipv4-mapped ");
const TRANSLATED: RuleNames = v4_rule_names!("ipv4-translated ");
const COMPATIBLE: RuleNames = v4_rule_names!("ipv4-compatible ");
const NAT64: RuleNames = v4_rule_names!("nat64 ");
const SIX_TO_FOUR: RuleNames = v4_rule_names!("6to4 ");

/// Cloud metadata endpoints (AWS, GCP, Azure, OpenStack, DigitalOcean: the
/// first; AWS DNS and NTP; ECS task metadata; Alibaba; Azure's wire server;
/// Oracle Cloud Classic).
const METADATA_V4: [Ipv4Addr; 8] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 169, 253),
    Ipv4Addr::new(169, 254, 169, 123),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(192, 0, 0, 192),
];

/// AWS IMDS and DNS over IPv6, GCP's IPv6 metadata server.
const METADATA_V6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x253),
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),
];

fn classify_v4(ip: Ipv4Addr) -> Option<V4Rule> {
    if METADATA_V4.contains(&ip) {
        return Some(V4Rule::Metadata);
    }
    let rule = match ip.octets() {
        [0, ..] => V4Rule::Unspecified,
        [127, ..] => V4Rule::Loopback,
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => V4Rule::Private,
        [169, 254, ..] => V4Rule::LinkLocal,
        [100, 64..=127, ..] => V4Rule::Cgnat,
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => V4Rule::Documentation,
        [198, 18..=19, ..] => V4Rule::Benchmark,
        [224..=239, ..] => V4Rule::Multicast,
        [255, 255, 255, 255] => V4Rule::Broadcast,
        [240..=255, ..] | [192, 0, 0, _] | [192, 88, 99, _] => V4Rule::Reserved,
        _ => return None,
    };
    Some(rule)
}

fn v4_from(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

/// The IPv6 forms that embed an IPv4 address, with their rule names.
fn embedding(ip: Ipv6Addr) -> Option<(&'static RuleNames, Ipv4Addr)> {
    let s = ip.segments();
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some((&MAPPED, v4_from(hi, lo))),
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some((&TRANSLATED, v4_from(hi, lo))),
        [0, 0, 0, 0, 0, 0, hi, lo] => Some((&COMPATIBLE, v4_from(hi, lo))),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some((&NAT64, v4_from(hi, lo))),
        [0x2002, hi, lo, ..] => Some((&SIX_TO_FOUR, v4_from(hi, lo))),
        _ => None,
    }
}

/// The IPv4 address an IPv6 address embeds, if it is of such a form (`::`
/// and `::1` are not).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V6(v6) if !v6.is_unspecified() && !v6.is_loopback() => {
            embedding(v6).map(|(_, v4)| v4)
        }
        _ => None,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if METADATA_V6.contains(&ip) {
        return Some("metadata");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some((names, v4)) = embedding(ip) {
        return classify_v4(v4).map(|rule| names[rule as usize]);
    }
    let s = ip.segments();
    let rule = match s {
        [0x64, 0xff9b, 1, ..] => "nat64-local",
        [0x2001, 0, ..] => "teredo",
        [0x2001, 2, 0, ..] => "benchmark",
        [0x2001, 0xdb8, ..] => "documentation",
        [0x3fff, 0..=0x0fff, ..] => "documentation",
        [0x2001, 0..=0x1ff, ..] => "reserved",
        [first, ..] if first & 0xff00 == 0xff00 => "multicast",
        [first, ..] if first & 0xffc0 == 0xfe80 => "link-local",
        [first, ..] if first & 0xffc0 == 0xfec0 => "site-local",
        [first, ..] if first & 0xfe00 == 0xfc00 => "unique-local",
        // Global unicast is 2000::/3; the rest is reserved or unassigned
        // (including 100::/64, the discard prefix).
        [first, ..] if first & 0xe000 != 0x2000 => "reserved",
        _ => return None,
    };
    Some(rule)
}

/// The built-in rule `ip` falls under, if any (the operator's lists are not
/// consulted: see [`EgressPolicy::check_ip`]).
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4).map(|rule| PLAIN[rule as usize]),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

#[cfg(test)]
mod tests;
