//! The dashboard (`dashboard/`, a SvelteKit single-page app) at
//! `/dashboard`, served by every manager (so by `picloud up` too).
//!
//! The built app is a folder found once at start, not embedded: the Rust
//! build then never needs Node, and a rebuilt dashboard is served without
//! relinking. It is the first that holds an `index.html` of:
//! `PICLOUD_DASHBOARD_DIR`; `dashboard/` next to the binary (a packaged
//! install); the source tree's `dashboard/build` (a binary run from its
//! clone). Without one, every dashboard URL answers a page saying how to
//! build it.
//!
//! Any path that is not a file gets `index.html` (the app routes in the
//! browser), except under `_app/`, where a missing file is a 404. Hashed
//! files under `_app/immutable/` are cached for a year; everything else is
//! revalidated. A precompressed `.gz` sibling is sent to clients that
//! accept gzip.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, VARY,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The environment variable naming the built dashboard folder.
pub const DIR_ENV: &str = "PICLOUD_DASHBOARD_DIR";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// The page served when no built dashboard was found.
const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>PiCloud dashboard not built</title></head><body style=\"font-family: system-ui, sans-serif; \
max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5\">\
<h1>The dashboard is not built</h1>\
<p>This PiCloud found no built dashboard. From the clone, build it with Node 20:</p>\
<pre>cd dashboard &amp;&amp; npm ci &amp;&amp; npm run build</pre>\
<p>and restart PiCloud (<code>scripts/up.sh</code> does both), or point \
<code>PICLOUD_DASHBOARD_DIR</code> at a built <code>dashboard/build</code> folder.</p>\
<p>The admin API works without it: <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a>.</p>\
</body></html>";

/// Where the built app is, if anywhere.
#[derive(Clone, Debug)]
pub struct Dashboard {
    dir: Option<Arc<PathBuf>>,
}

impl Dashboard {
    /// Looks for the built app in the places the module doc lists.
    pub fn find() -> Self {
        let from_env = std::env::var_os(DIR_ENV).map(PathBuf::from);
        let next_to_binary = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("dashboard")));
        let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboard/build");
        let dir = if let Some(dir) = from_env {
            // An explicit choice is kept even when empty: a typo shows as
            // the "not built" page rather than another folder's app.
            Some(dir).filter(|d| d.join("index.html").is_file())
        } else {
            [next_to_binary, Some(source_tree)]
                .into_iter()
                .flatten()
                .find(|d| d.join("index.html").is_file())
        };
        match &dir {
            Some(d) => tracing::info!(dir = %d.display(), "serving the dashboard"),
            None => tracing::info!("no built dashboard found; /dashboard explains how to build it"),
        }
        Self::at(dir)
    }

    /// The app in `dir` (`None`: the "not built" page).
    pub fn at(dir: Option<PathBuf>) -> Self {
        Self {
            dir: dir.map(Arc::new),
        }
    }

    /// `/dashboard`, `/dashboard/` and everything under it.
    pub fn router(self) -> Router {
        Router::new()
            .route("/dashboard", get(index))
            .route("/dashboard/", get(index))
            .route("/dashboard/{*rest}", get(file))
            .with_state(self)
    }
}

/// The app's entry page.
#[utoipa::path(get, path = "/dashboard", tag = "operations", security(()),
    responses((status = 200, description = "the dashboard (or a page saying how to build it)", content_type = "text/html", body = String)))]
async fn index(State(app): State<Dashboard>, headers: HeaderMap) -> Response {
    serve(&app, "", &headers).await
}

/// The app's entry page.
#[utoipa::path(get, path = "/dashboard/", tag = "operations", security(()),
    responses((status = 200, description = "the dashboard (or a page saying how to build it)", content_type = "text/html", body = String)))]
#[allow(dead_code)]
fn index_slash() {}

/// A file of the app, or its entry page for a route it handles itself.
#[utoipa::path(get, path = "/dashboard/{rest}", tag = "operations", security(()),
    params(("rest" = String, Path, description = "a file of the app or one of its routes")),
    responses(
        (status = 200, description = "the file, or the entry page", content(
            (String = "text/html"), (String = "text/javascript"), (String = "text/css"),
            (Object = "application/json"), (String = "application/octet-stream"),
        )),
        (status = 404, description = "no such file under `_app/`", content_type = "text/plain", body = String),
    ))]
async fn file(
    State(app): State<Dashboard>,
    UrlPath(rest): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    serve(&app, &rest, &headers).await
}

/// For the OpenAPI document: the dashboard's paths.
#[derive(utoipa::OpenApi)]
#[openapi(paths(index, index_slash, file))]
pub struct DashboardDoc;

async fn serve(app: &Dashboard, rest: &str, headers: &HeaderMap) -> Response {
    let Some(dir) = app.dir.as_deref() else {
        return (
            [
                (CONTENT_TYPE, "text/html; charset=utf-8"),
                (CACHE_CONTROL, REVALIDATE),
            ],
            NOT_BUILT,
        )
            .into_response();
    };
    let gzip = accepts_gzip(headers);
    if let Some(rel) = safe_relative(rest)
        && let Some(resp) = send_file(dir, &rel, gzip).await
    {
        return resp;
    }
    if rest.starts_with("_app/") {
        return (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such dashboard file",
        )
            .into_response();
    }
    // A route of the app: it reads the URL itself.
    send_file(dir, Path::new("index.html"), gzip)
        .await
        .unwrap_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                [(CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the dashboard's index.html is gone",
            )
                .into_response()
        })
}

/// `rest` as a path below the app folder: plain names only (no `..`, no
/// root, no `.` tricks), and not empty.
fn safe_relative(rest: &str) -> Option<PathBuf> {
    let path = Path::new(rest);
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            (name == "gzip" || name == "*") && !refused
        })
}

/// The file `rel` under `dir` (its `.gz` when the client takes gzip), or
/// `None` when it is not a regular file.
async fn send_file(dir: &Path, rel: &Path, gzip: bool) -> Option<Response> {
    let path = dir.join(rel);
    if !tokio::fs::metadata(&path).await.ok()?.is_file() {
        return None;
    }
    let mut gz = path.clone().into_os_string();
    gz.push(".gz");
    let (body, encoded) = match gzip {
        true => match tokio::fs::read(&gz).await {
            Ok(b) => (b, true),
            Err(_) => (tokio::fs::read(&path).await.ok()?, false),
        },
        false => (tokio::fs::read(&path).await.ok()?, false),
    };
    let cache = if rel.starts_with("_app/immutable") {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
    if encoded {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Some((headers, body).into_response())
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        "webmanifest" => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_served() {
        assert_eq!(safe_relative("_app/x.js"), Some(PathBuf::from("_app/x.js")));
        assert_eq!(safe_relative("../secret"), None);
        assert_eq!(safe_relative("a/../../b"), None);
        assert_eq!(safe_relative("/etc/passwd"), None);
        assert_eq!(safe_relative(""), None);
    }

    #[test]
    fn gzip_is_taken_unless_refused() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("br, gzip;q=0.8"));
        assert!(accepts_gzip(&h));
        h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0"));
        assert!(!accepts_gzip(&h));
    }
}
