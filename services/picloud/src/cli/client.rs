//! The admin API as the CLI sees it: JSON over HTTP with the bearer token,
//! and errors in the server's own words (`{"error": {"code", "message"}}`).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Why a command failed. Displayed to the user as it is: never a `Debug`
/// form.
#[derive(Debug)]
pub enum CliError {
    /// The server answered with an error.
    Api {
        code: String,
        message: String,
        details: Option<Value>,
    },
    /// The server could not be reached or answered nonsense.
    Transport(String),
    /// Something on this side: a file, the profile, an argument.
    Local(String),
    /// The command line asks for something that cannot be done (exit 2).
    Usage(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Api { code, message, .. } => write!(f, "{message} ({code})"),
            Self::Transport(m) | Self::Local(m) | Self::Usage(m) => f.write_str(m),
        }
    }
}

impl CliError {
    pub fn local(message: impl Into<String>) -> Self {
        Self::Local(message.into())
    }

    /// The process exit code: 2 for a usage error, else 1.
    pub fn exit_code(&self) -> u8 {
        if matches!(self, Self::Usage(_)) { 2 } else { 1 }
    }

    /// The error in the admin API's shape, for `--json`: the server's code
    /// and message, or `client_error` / `unreachable` / `usage`.
    pub fn to_json(&self) -> Value {
        let (code, message, details) = match self {
            Self::Api {
                code,
                message,
                details,
            } => (code.as_str(), message.as_str(), details.clone()),
            Self::Transport(m) => ("unreachable", m.as_str(), None),
            Self::Local(m) => ("client_error", m.as_str(), None),
            Self::Usage(m) => ("usage", m.as_str(), None),
        };
        let mut error = serde_json::json!({ "code": code, "message": message });
        if let Some(d) = details {
            error["details"] = d;
        }
        serde_json::json!({ "error": error })
    }

    /// What to do about a server error that has an obvious remedy.
    pub fn help(&self) -> Option<&'static str> {
        match self {
            Self::Api { code, .. } if code == "unauthorized" => Some(
                "the server refused the admin token; check it, or log in again with \
                 `picloud login URL`",
            ),
            _ => None,
        }
    }
}

/// A connection to one PiCloud's admin API.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Self, CliError> {
        check_url(base)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("picloud-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Transport(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /api/v1{path}`.
    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.api(Method::GET, path, None).await
    }

    /// A JSON call to `/api/v1{path}`; an empty answer is `null`.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(60));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(api_error(status, &text));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|_| {
            CliError::Transport(format!(
                "{} answered {status} with a body that is not JSON; is this a PiCloud admin API?",
                self.base
            ))
        })
    }

    /// A request to any path of the server with the admin token (for
    /// streams the JSON helpers do not read).
    pub fn authed(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.raw(method, path).bearer_auth(&self.token)
    }

    /// A raw request to any path of the server (for `/fn` and `/status`).
    pub fn raw(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub fn unreachable(&self, e: reqwest::Error) -> CliError {
        let why = if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            "connection refused or unreachable".to_owned()
        } else {
            // reqwest's Display names the URL and the cause, no Debug form.
            e.without_url().to_string()
        };
        CliError::Transport(format!(
            "cannot reach {}: {why}\nhelp: is PiCloud running? check the URL with `picloud login`",
            self.base
        ))
    }
}

/// A PiCloud URL is `http(s)://host[:port][/prefix]`; anything else would
/// fail later as an obscure "builder error".
fn check_url(base: &str) -> Result<(), CliError> {
    let bad = |why: &str| {
        let host = base.split_once("://").map_or(base, |(_, rest)| rest);
        CliError::local(format!(
            "{base:?} is not a PiCloud URL: {why}\nhelp: write it like http://{}",
            if host.is_empty() {
                "127.0.0.1:8080"
            } else {
                host
            }
        ))
    };
    let url = reqwest::Url::parse(base).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("it must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    Ok(())
}

/// The server's error, from its JSON shape (or its status line when the
/// body is not ours, e.g. a proxy's page).
pub fn api_error(status: StatusCode, body: &str) -> CliError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |k: &str| err.and_then(|e| e.get(k)).and_then(Value::as_str);
    CliError::Api {
        code: field("code")
            .map(str::to_owned)
            .unwrap_or_else(|| status.as_u16().to_string()),
        message: field("message").map(str::to_owned).unwrap_or_else(|| {
            format!(
                "the server answered {status}{}",
                if body.trim().is_empty() {
                    ""
                } else {
                    " (not a PiCloud error body)"
                }
            )
        }),
        details: err.and_then(|e| e.get("details")).cloned(),
    }
}

/// A path segment, percent-encoded.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_shown_in_the_servers_words() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"script \"x\" not found"}}"#,
        );
        assert_eq!(e.to_string(), "script \"x\" not found (not_found)");
        let e = api_error(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>");
        assert_eq!(
            e.to_string(),
            "the server answered 502 Bad Gateway (not a PiCloud error body) (502)"
        );
    }

    #[test]
    fn urls_need_a_scheme_and_a_host() {
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("https://pi.example/base/").is_ok());
        let e = check_url("127.0.0.1:8080").unwrap_err().to_string();
        assert!(
            e.contains("help: write it like http://127.0.0.1:8080"),
            "{e}"
        );
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("http://").is_err());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(seg("hello-1_x"), "hello-1_x");
    }
}
