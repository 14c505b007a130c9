//! Outbound HTTP for scripts, behind an SSRF policy.
//!
//! Scripts call outside APIs; they must not become a way into the operator's
//! private network. This crate is the part of `http::get` and friends that
//! knows nothing of Rhai:
//!
//! - [`EgressPolicy`] decides which destinations are reachable. It denies by
//!   default every address that is not plainly public (loopback, private,
//!   link-local, CGNAT, cloud metadata, IPv6 forms embedding such an IPv4,
//!   ...; see [`policy`] for the full list), only `http` and `https`, only
//!   the configured ports. Operators add exceptions with `PICLOUD_HTTP_ALLOW`
//!   and further denials with `PICLOUD_HTTP_DENY` (see
//!   [`EgressPolicy::from_config`]).
//! - [`Egress`] is the checked client. The policy is applied to the URL of
//!   every hop (literal IPs in any notation are normalised by the WHATWG URL
//!   parser first), and to the addresses a host name resolves to, inside the
//!   client's DNS resolver: the addresses that were checked are the only ones
//!   the connection may use, so DNS rebinding cannot swap them. Environment
//!   proxies are ignored, redirects are followed by hand (at most
//!   [`MAX_REDIRECTS`]) so that each hop is checked again, and the response
//!   body is streamed and cut at the size limit.
//! - [`CallBudget`] counts an invocation's calls.
//!
//! A denial is [`EgressError::Denied`], whose text is
//! `request denied by policy: <rule>`. No error of this crate ever contains a
//! resolved address.
//!
//! Architecture invariant: no Rhai, no NATS, no Postgres here. The sandbox
//! maps script values to an [`OutboundRequest`] and an [`OutboundResponse`]
//! back to `#{ status, headers, body, json }`.

#![forbid(unsafe_code)]

mod budget;
mod client;
pub mod policy;

pub use budget::CallBudget;
pub use client::{
    CallLimits, Egress, EgressError, Lookup, MAX_REDIRECTS, OutboundRequest, OutboundResponse,
    SystemLookup,
};
pub use policy::{DEFAULT_PORTS, Denied, EgressPolicy, PolicyError};
