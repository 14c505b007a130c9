//! The checked HTTP client.
//!
//! One [`Egress`] holds one `reqwest` client (one connection pool) for a
//! whole process. The client is built so that the policy cannot be bypassed:
//!
//! - its DNS resolver resolves a name, checks every address with
//!   [`EgressPolicy::check_resolved`] and hands the connector only those
//!   addresses; literal IPs never reach a resolver, and are checked from the
//!   URL before the request is sent;
//! - proxies (including `HTTP_PROXY` and friends) are off;
//! - redirects are off in `reqwest` and followed here, each hop's URL checked
//!   like the first.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::policy::{Denied, EgressPolicy};

/// The most redirects one call follows, whatever [`CallLimits`] says.
pub const MAX_REDIRECTS: u8 = 5;

/// Headers a script may not set: the client owns framing, connection
/// management and the target host.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "proxy-authorization",
    "proxy-connection",
];

/// Methods a script may use.
const METHODS: &[Method] = &[
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Why an outbound call failed. None of these texts contains a resolved
/// address; header values are never echoed (they may hold secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The policy refused the URL of a hop or the addresses it resolved to.
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("invalid HTTP method {}: expected GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS", picloud_core::quote(.0))]
    InvalidMethod(String),
    #[error("invalid header {}", picloud_core::quote(.0))]
    InvalidHeader(String),
    #[error("header {} cannot be set", picloud_core::quote(.0))]
    ForbiddenHeader(String),
    /// A limit: the request body is larger than [`CallLimits::max_request_bytes`].
    #[error("request body limit exceeded: {size} bytes, at most {limit}")]
    RequestTooLarge { size: usize, limit: usize },
    /// A limit: the invocation made all the calls its [`crate::CallBudget`] allows.
    #[error("outbound HTTP call limit exceeded: at most {limit} calls per invocation")]
    CallLimit { limit: u32 },
    #[error("request timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("too many redirects (at most {0})")]
    TooManyRedirects(u8),
    /// Resolving or connecting failed (DNS, TCP, TLS).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The exchange failed after connecting.
    #[error("request failed: {0}")]
    Request(String),
    /// The HTTP client could not be built (e.g. an unreadable trust store).
    #[error("cannot build the HTTP client: {0}")]
    Setup(String),
}

impl EgressError {
    /// Whether this is a per-invocation limit (the sandbox ends the
    /// invocation) rather than a failed request (the script may catch it).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            EgressError::RequestTooLarge { .. } | EgressError::CallLimit { .. }
        )
    }
}

/// One outbound request, as a script describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundRequest {
    /// Case-insensitive: GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS.
    pub method: String,
    pub url: String,
    /// Sent in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// Appended to the URL's query, form-encoded.
    pub query: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl OutboundRequest {
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            ..Self::default()
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    /// A raw body (a script's string).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A JSON body (a script's map or array), with
    /// `content-type: application/json` unless a content type is set.
    pub fn json(mut self, value: &serde_json::Value) -> Self {
        self.body = Some(value.to_string().into_bytes());
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            self.headers
                .push(("content-type".into(), "application/json".into()));
        }
        self
    }
}

/// The limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// For the whole call: resolving, connecting, every redirect and reading
    /// the body.
    pub timeout: Duration,
    /// The response body is cut here ([`OutboundResponse::truncated`]).
    pub max_response_bytes: usize,
    /// A larger request body is refused ([`EgressError::RequestTooLarge`]).
    pub max_request_bytes: usize,
    /// Redirects followed; clamped to [`MAX_REDIRECTS`].
    pub max_redirects: u8,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_response_bytes: 512 << 10,
            max_request_bytes: 1 << 20,
            max_redirects: MAX_REDIRECTS,
        }
    }
}

impl CallLimits {
    /// These limits with the timeout cut to what is left before `deadline`
    /// (the invocation's).
    pub fn within(mut self, deadline: Instant) -> Self {
        self.timeout = self
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        self
    }
}

/// A response. A non-2xx status is a response like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    pub status: u16,
    /// Names in lower case, in the order received; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// At most [`CallLimits::max_response_bytes`].
    pub body: Vec<u8>,
    /// Whether the body was cut at the limit.
    pub truncated: bool,
}

impl OutboundResponse {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; `None` if it is not JSON, or was cut.
    pub fn json(&self) -> Option<serde_json::Value> {
        if self.truncated {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }
}

/// Resolves host names. The default is the system's resolver
/// ([`SystemLookup`]); tests substitute their own.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>>;
}

/// The system resolver (`getaddrinfo`, so `/etc/hosts` applies).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// A name that did not resolve. (The lookup's own error may name servers or
/// addresses; it is dropped.)
#[derive(Debug, thiserror::Error)]
#[error("could not resolve host")]
struct Unresolved;

/// The resolver `reqwest` is given: resolve, then check every address.
struct PolicyResolver {
    policy: Arc<EgressPolicy>,
    lookup: Arc<dyn Lookup>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let lookup = Arc::clone(&self.lookup);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if let Err(denied) = policy.check_resolved(&host, &[]) {
                return Err(Box::new(denied) as Box<dyn StdError + Send + Sync>);
            }
            let addrs = match lookup.lookup(&host).await {
                Ok(addrs) if !addrs.is_empty() => addrs,
                _ => return Err(Box::new(Unresolved) as Box<dyn StdError + Send + Sync>),
            };
            if let Err(denied) = policy.check_resolved(&host, &addrs) {
                return Err(Box::new(denied) as Box<dyn StdError + Send + Sync>);
            }
            // Port 0: the connector puts in the URL's port.
            let addrs: reqwest::dns::Addrs =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The checked client. Share one per process (it is cheap to clone).
#[derive(Clone)]
pub struct Egress {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A validated request, ready for its first hop.
struct Prepared {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
}

impl Egress {
    /// A client resolving names with the system resolver.
    pub fn new(policy: EgressPolicy) -> Result<Self, EgressError> {
        Self::with_lookup(policy, Arc::new(SystemLookup))
    }

    /// A client resolving names with `lookup`.
    pub fn with_lookup(policy: EgressPolicy, lookup: Arc<dyn Lookup>) -> Result<Self, EgressError> {
        let policy = Arc::new(policy);
        let resolver = PolicyResolver {
            policy: Arc::clone(&policy),
            lookup,
        };
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(resolver))
            .user_agent(concat!("PiCloud/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| EgressError::Setup(scrub(&root_cause(&e).to_string())))?;
        Ok(Self { client, policy })
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// Sends `req` under `limits`, following redirects. A response of any
    /// status is `Ok`; a denied, invalid, timed-out or failed request is an
    /// error.
    pub async fn send(
        &self,
        req: OutboundRequest,
        limits: &CallLimits,
    ) -> Result<OutboundResponse, EgressError> {
        let prepared = prepare(req, limits)?;
        if limits.timeout.is_zero() {
            return Err(EgressError::Timeout(limits.timeout));
        }
        match tokio::time::timeout(limits.timeout, self.execute(prepared, limits)).await {
            Ok(result) => result,
            Err(_) => Err(EgressError::Timeout(limits.timeout)),
        }
    }

    async fn execute(
        &self,
        prepared: Prepared,
        limits: &CallLimits,
    ) -> Result<OutboundResponse, EgressError> {
        let Prepared {
            mut method,
            mut url,
            mut headers,
            mut body,
        } = prepared;
        let max_redirects = limits.max_redirects.min(MAX_REDIRECTS);
        let mut redirects = 0u8;
        loop {
            self.policy.check_url(&url)?;
            let mut builder = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            let response = builder.send().await.map_err(map_error)?;
            let Some(next) = redirect_target(&response, &url) else {
                return read(response, limits.max_response_bytes).await;
            };
            if redirects >= max_redirects {
                return Err(EgressError::TooManyRedirects(max_redirects));
            }
            redirects += 1;
            let status = response.status();
            drop(response);

            // What browsers (and reqwest) do: 303 turns anything but HEAD
            // into GET; 301 and 302 turn POST into GET; 307 and 308 keep
            // the method and body.
            let to_get = (status == StatusCode::SEE_OTHER && method != Method::HEAD)
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && method == Method::POST);
            if to_get {
                method = Method::GET;
                body = None;
                for name in [
                    header::CONTENT_TYPE,
                    header::CONTENT_ENCODING,
                    header::CONTENT_LANGUAGE,
                ] {
                    headers.remove(name);
                }
            }
            // Credentials stay with the origin they were meant for.
            if next.origin() != url.origin() {
                headers.remove(header::AUTHORIZATION);
                headers.remove(header::COOKIE);
            }
            url = next;
        }
    }
}

/// Validates a request: method, URL with its query, headers, body size.
fn prepare(req: OutboundRequest, limits: &CallLimits) -> Result<Prepared, EgressError> {
    let method = Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .ok()
        .filter(|m| METHODS.contains(m))
        .ok_or_else(|| EgressError::InvalidMethod(req.method.clone()))?;

    let mut url = Url::parse(req.url.trim()).map_err(|e| EgressError::InvalidUrl(e.to_string()))?;
    if !req.query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (name, value) in &req.query {
            pairs.append_pair(name, value);
        }
    }

    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let header_name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| EgressError::InvalidHeader(name.clone()))?;
        if FORBIDDEN_HEADERS.contains(&header_name.as_str()) {
            return Err(EgressError::ForbiddenHeader(
                header_name.as_str().to_owned(),
            ));
        }
        let header_value =
            HeaderValue::from_str(value).map_err(|_| EgressError::InvalidHeader(name.clone()))?;
        headers.append(header_name, header_value);
    }

    if let Some(body) = &req.body
        && body.len() > limits.max_request_bytes
    {
        return Err(EgressError::RequestTooLarge {
            size: body.len(),
            limit: limits.max_request_bytes,
        });
    }

    Ok(Prepared {
        method,
        url,
        headers,
        body: req.body.map(Bytes::from),
    })
}

/// Where a redirect response points, if it is one we follow (301, 302, 303,
/// 307, 308 with a readable `Location`). Anything else is returned to the
/// script as a response.
fn redirect_target(response: &reqwest::Response, current: &Url) -> Option<Url> {
    if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
    current.join(location.trim()).ok()
}

/// Reads the response, streaming the body and stopping at `max` bytes.
async fn read(
    mut response: reqwest::Response,
    max: usize,
) -> Result<OutboundResponse, EgressError> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let expected = response
        .content_length()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    let mut body = Vec::with_capacity(expected.min(max).min(64 << 10));
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await.map_err(map_error)? {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    // Dropping `response` here closes a connection whose body was cut.
    Ok(OutboundResponse {
        status,
        headers,
        body,
        truncated,
    })
}

/// Maps a `reqwest` error to ours: a denial from the resolver is found in
/// the source chain; anything else keeps only its root cause, scrubbed of
/// addresses. (`reqwest`'s own text names the URL, and lower layers may
/// name the socket address.)
fn map_error(err: reqwest::Error) -> EgressError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(denied) = e.downcast_ref::<Denied>() {
            return EgressError::Denied(*denied);
        }
        if e.downcast_ref::<Unresolved>().is_some() {
            return EgressError::Connect(Unresolved.to_string());
        }
        source = e.source();
    }
    let detail = if err.is_timeout() {
        "timed out".to_owned()
    } else {
        scrub(&root_cause(&err).to_string())
    };
    if err.is_connect() {
        EgressError::Connect(detail)
    } else {
        EgressError::Request(detail)
    }
}

/// The innermost error of a chain.
fn root_cause<'a>(err: &'a (dyn StdError + 'static)) -> &'a (dyn StdError + 'static) {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause
}

/// `text` with every IP address or socket address replaced by `<address>`.
/// Words are runs of letters, digits, `.`, `:` and `_`; a word that reads as
/// an address (ignoring trailing `.` and `:`) is replaced whole.
pub(crate) fn scrub(text: &str) -> String {
    fn flush(out: &mut String, word: &mut String) {
        let trimmed = word.trim_end_matches(['.', ':']);
        let is_address = [word.as_str(), trimmed]
            .iter()
            .any(|w| w.parse::<IpAddr>().is_ok() || w.parse::<SocketAddr>().is_ok());
        if is_address {
            out.push_str("<address>");
        } else {
            out.push_str(word);
        }
        word.clear();
    }
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || matches!(c, '.' | ':' | '_') {
            word.push(c);
        } else {
            flush(&mut out, &mut word);
            out.push(c);
        }
    }
    flush(&mut out, &mut word);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_addresses() {
        assert_eq!(
            scrub("tcp connect error: 10.0.0.1:80 refused"),
            "tcp connect error: <address> refused"
        );
        assert_eq!(scrub("to [::1]:8080 failed"), "to [<address>]:8080 failed");
        assert_eq!(scrub("peer fe80::1 gone."), "peer <address> gone.");
        assert_eq!(scrub("host ::ffff:192.168.0.1"), "host <address>");
        assert_eq!(
            scrub("Connection refused (os error 111)"),
            "Connection refused (os error 111)"
        );
        assert_eq!(scrub("deadbeef cafe: 12.5"), "deadbeef cafe: 12.5");
        assert_eq!(scrub("hyper::Error(Io)"), "hyper::Error(Io)");
        assert_eq!(scrub("addr 10.0.0.1: refused"), "addr <address> refused");
    }

    #[test]
    fn methods_are_case_insensitive_and_limited() {
        let limits = CallLimits::default();
        for m in [
            "get", "Get", "HEAD", "post", "put", "patch", "delete", "options",
        ] {
            assert!(prepare(OutboundRequest::new(m, "http://example.com/"), &limits).is_ok());
        }
        for m in ["CONNECT", "TRACE", "BREW", "", "G ET"] {
            assert!(matches!(
                prepare(OutboundRequest::new(m, "http://example.com/"), &limits),
                Err(EgressError::InvalidMethod(_))
            ));
        }
    }

    #[test]
    fn query_pairs_are_appended() {
        let req = OutboundRequest::new("GET", "http://example.com/p?x=1")
            .query("a", "b c")
            .query("é", "&");
        let p = prepare(req, &CallLimits::default()).unwrap();
        assert_eq!(p.url.as_str(), "http://example.com/p?x=1&a=b+c&%C3%A9=%26");
    }

    #[test]
    fn headers_are_validated_and_values_never_echoed() {
        let limits = CallLimits::default();
        let bad_value = OutboundRequest::new("GET", "http://example.com/")
            .header("authorization", "Bearer s3cret\r\nx: y");
        let err = prepare(bad_value, &limits).err().unwrap();
        assert_eq!(err, EgressError::InvalidHeader("authorization".into()));
        assert!(!err.to_string().contains("s3cret"));

        let bad_name = OutboundRequest::new("GET", "http://example.com/").header("a b", "1");
        assert!(matches!(
            prepare(bad_name, &limits),
            Err(EgressError::InvalidHeader(_))
        ));

        for name in ["Host", "content-length", "Transfer-Encoding", "connection"] {
            let req = OutboundRequest::new("GET", "http://example.com/").header(name, "x");
            assert!(matches!(
                prepare(req, &limits),
                Err(EgressError::ForbiddenHeader(_))
            ));
        }
    }

    #[test]
    fn request_body_limit() {
        let limits = CallLimits {
            max_request_bytes: 4,
            ..CallLimits::default()
        };
        let ok = OutboundRequest::new("POST", "http://example.com/").body("1234");
        assert!(prepare(ok, &limits).is_ok());
        let big = OutboundRequest::new("POST", "http://example.com/").body("12345");
        let err = prepare(big, &limits).err().unwrap();
        assert_eq!(err, EgressError::RequestTooLarge { size: 5, limit: 4 });
        assert!(err.is_limit());
    }

    #[test]
    fn invalid_urls() {
        for url in [
            "not a url",
            "http://",
            "http://256.256.256.256/",
            "http://0x100000000/",
            "http://1.2.3.4.5/",
            "http://[fe80::1%25eth0]/",
            "http://[::1/",
        ] {
            assert!(
                matches!(
                    prepare(OutboundRequest::new("GET", url), &CallLimits::default()),
                    Err(EgressError::InvalidUrl(_))
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn json_body_sets_content_type_once() {
        let req =
            OutboundRequest::new("POST", "http://example.com/").json(&serde_json::json!({"a": 1}));
        assert_eq!(req.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(
            req.headers,
            vec![("content-type".to_owned(), "application/json".to_owned())]
        );
        let req = OutboundRequest::new("POST", "http://example.com/")
            .header("Content-Type", "application/vnd.api+json")
            .json(&serde_json::json!([1]));
        assert_eq!(req.headers.len(), 1);
    }

    #[test]
    fn limits_within_a_deadline() {
        let limits = CallLimits::default().within(Instant::now() + Duration::from_millis(100));
        assert!(limits.timeout <= Duration::from_millis(100));
        let past = CallLimits::default().within(Instant::now() - Duration::from_secs(1));
        assert!(past.timeout.is_zero());
    }

    #[test]
    fn response_helpers() {
        let r = OutboundResponse {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{\"ok\":true}".to_vec(),
            truncated: false,
        };
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), Some(serde_json::json!({"ok": true})));
        let cut = OutboundResponse {
            truncated: true,
            ..r.clone()
        };
        assert_eq!(cut.json(), None);
        let text = OutboundResponse {
            body: b"plain \xff".to_vec(),
            ..r
        };
        assert_eq!(text.json(), None);
        assert_eq!(text.text(), "plain \u{fffd}");
    }
}
