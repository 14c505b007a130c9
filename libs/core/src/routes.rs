//! Custom HTTP routes of scripts: `METHOD /path/:param/*rest`.
//!
//! A script version may declare routes (see docs/scripting.md). This module
//! parses and validates them ([`RouteSpec::parse`]), decides whether a set of
//! routes conflicts with the routes other scripts hold ([`check_conflicts`],
//! used by the manager before it stores a version), and matches a request
//! against the whole table ([`RouteMatcher`], built by every gateway).
//!
//! Matching is `matchit`'s (axum's own router): a static segment beats a
//! parameter, which beats a catch-all; two routes that `matchit` cannot
//! tell apart (`/users/:id` and `/users/:name`, `/files/:f` and
//! `/files/*path`, or the same path twice) conflict. A route whose method is
//! `*` answers every method, so it conflicts with any route of the same path.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// Most routes one script version may declare.
pub const MAX_ROUTES: usize = 32;
/// Longest route (`METHOD /path`), in bytes.
pub const MAX_ROUTE_LEN: usize = 256;
/// Most path segments in one route.
pub const MAX_SEGMENTS: usize = 16;
/// Longest method token.
const MAX_METHOD_LEN: usize = 16;
/// Longest parameter name.
const MAX_PARAM_LEN: usize = 64;
/// First path segments that belong to PiCloud itself.
pub const RESERVED_PREFIXES: &[&str] = &[
    "fn",
    "api",
    "status",
    "healthz",
    "readyz",
    "metrics",
    "dashboard",
];

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Upper-case method token, or `*` for every method.
    pub method: String,
    /// The path as the user writes it (`/users/:id/*rest`).
    pub path: String,
    /// The same path in `matchit`'s syntax (`/users/{id}/{*rest}`).
    pattern: String,
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Why a route was refused (400): the message names the route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RouteError(pub String);

/// A route that overlaps one another script holds (409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {route:?} conflicts with route {held:?} of script {script:?}")]
pub struct RouteConflict {
    /// The refused route.
    pub route: String,
    /// The route it overlaps.
    pub held: String,
    /// The script that holds `held`.
    pub script: String,
}

fn bad(route: &str, why: impl fmt::Display) -> RouteError {
    let shown: String = route.chars().take(MAX_ROUTE_LEN).collect();
    RouteError(format!("invalid route {shown:?}: {why}"))
}

impl RouteSpec {
    /// Parses `METHOD /path`; the method is upper-cased.
    pub fn parse(route: &str) -> Result<Self, RouteError> {
        if route.len() > MAX_ROUTE_LEN {
            return Err(bad(
                route,
                format_args!("longer than {MAX_ROUTE_LEN} bytes"),
            ));
        }
        let mut parts = route.split_ascii_whitespace();
        let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(
                route,
                "write it as METHOD /path, e.g. \"GET /users/:id\"",
            ));
        };
        let method = method.to_ascii_uppercase();
        if method != "*"
            && (method.len() > MAX_METHOD_LEN || !method.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(bad(
                route,
                format_args!("the method must be `*` or letters only (at most {MAX_METHOD_LEN})"),
            ));
        }
        let pattern = parse_path(route, path)?;
        Ok(Self {
            method,
            path: path.to_owned(),
            pattern,
        })
    }

    /// Parses a whole list: each route, no more than [`MAX_ROUTES`], no
    /// route twice, and no two that conflict with each other.
    pub fn parse_all(routes: &[String]) -> Result<Vec<Self>, RouteError> {
        if routes.len() > MAX_ROUTES {
            return Err(RouteError(format!(
                "{} routes; a script may declare at most {MAX_ROUTES}",
                routes.len()
            )));
        }
        let specs = routes
            .iter()
            .map(|r| Self::parse(r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut table = Builder::default();
        for s in &specs {
            if let Err(c) = table.insert("", s) {
                return Err(bad(
                    &s.to_string(),
                    format_args!("it overlaps {:?} of the same script", c.held),
                ));
            }
        }
        Ok(specs)
    }
}

/// `/a/:b/*c` → `/a/{b}/{*c}`, or why not.
fn parse_path(route: &str, path: &str) -> Result<String, RouteError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(bad(route, "the path must start with /"));
    };
    if rest.is_empty() {
        return Ok("/".to_owned());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.len() > MAX_SEGMENTS {
        return Err(bad(
            route,
            format_args!("more than {MAX_SEGMENTS} segments"),
        ));
    }
    let first = segments[0];
    if RESERVED_PREFIXES.contains(&first) {
        return Err(bad(
            route,
            format_args!("/{first} belongs to PiCloud; choose another first segment"),
        ));
    }
    let mut pattern = String::with_capacity(path.len() + 8);
    let mut names: Vec<&str> = Vec::new();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        pattern.push('/');
        if let Some(name) = seg.strip_prefix(':') {
            param_name(route, name, &names)?;
            names.push(name);
            pattern.push('{');
            pattern.push_str(name);
            pattern.push('}');
        } else if let Some(name) = seg.strip_prefix('*') {
            if i != last {
                return Err(bad(route, "a catch-all (*name) must be the last segment"));
            }
            param_name(route, name, &names)?;
            names.push(name);
            pattern.push_str("{*");
            pattern.push_str(name);
            pattern.push('}');
        } else if seg.is_empty() {
            // A trailing slash is a path of its own; `//` is not.
            if i != last {
                return Err(bad(route, "empty segment (//)"));
            }
        } else if let Some(c) = seg.chars().find(|c| !literal_char(*c)) {
            return Err(bad(
                route,
                format_args!("{c:?} is not allowed in a path segment"),
            ));
        } else {
            pattern.push_str(seg);
        }
    }
    Ok(pattern)
}

fn param_name(route: &str, name: &str, seen: &[&str]) -> Result<(), RouteError> {
    if name.is_empty() {
        return Err(bad(route, "a parameter needs a name (:id, *rest)"));
    }
    if name.len() > MAX_PARAM_LEN || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(bad(
            route,
            format_args!(
                "parameter name {name:?} must be letters, digits or _ (at most {MAX_PARAM_LEN})"
            ),
        ));
    }
    if seen.contains(&name) {
        return Err(bad(route, format_args!("parameter {name:?} appears twice")));
    }
    Ok(())
}

/// RFC 3986 path characters, minus those the route syntax uses (`:` `*`)
/// and `matchit`'s braces.
fn literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,;=@%".contains(c)
}

/// Which script a request goes to, and what its route captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub script: Arc<str>,
    /// The route as declared (`GET /users/:id`).
    pub route: Arc<str>,
    /// Captured values, percent-decoded; a catch-all without its leading `/`.
    pub params: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Target {
    script: Arc<str>,
    route: Arc<str>,
}

/// Who holds a pattern: (script, route as declared).
type Holder = (Arc<str>, Arc<str>);

/// Routers per method: for a method that some route names, a router with
/// its routes and the `*` ones; for any other method, the `*` ones alone.
///
/// An insert that conflicts may leave a router half-changed, so a builder
/// that refused a route is only good for naming the conflict: callers drop
/// it (the gateway's table never conflicts: the manager refuses first).
#[derive(Default)]
struct Builder {
    by_method: HashMap<String, matchit::Router<Target>>,
    any: matchit::Router<Target>,
    /// Per router (method or `*`): matchit pattern → (script, route), to
    /// name the holder of a conflict.
    holders: HashMap<String, HashMap<String, Holder>>,
    /// The `*` routes so far, to seed a new method's router.
    wildcards: Vec<(Arc<str>, Arc<str>, String)>,
}

impl Builder {
    fn insert(&mut self, script: &str, spec: &RouteSpec) -> Result<(), RouteConflict> {
        let script: Arc<str> = script.into();
        let route: Arc<str> = spec.to_string().into();
        if spec.method != "*" && !self.by_method.contains_key(&spec.method) {
            // A new method's router starts with every `*` route so far
            // (they fit: they did not conflict with each other).
            let mut router = matchit::Router::new();
            let holders = self.holders.entry(spec.method.clone()).or_default();
            for (s, r, pattern) in &self.wildcards {
                let _ = router.insert(
                    pattern.clone(),
                    Target {
                        script: s.clone(),
                        route: r.clone(),
                    },
                );
                holders.insert(pattern.clone(), (s.clone(), r.clone()));
            }
            self.by_method.insert(spec.method.clone(), router);
        }
        let keys: Vec<String> = if spec.method == "*" {
            self.wildcards
                .push((script.clone(), route.clone(), spec.pattern.clone()));
            std::iter::once("*".to_owned())
                .chain(self.by_method.keys().cloned())
                .collect()
        } else {
            vec![spec.method.clone()]
        };
        for key in keys {
            let router = if key == "*" {
                &mut self.any
            } else {
                self.by_method.get_mut(&key).expect("router exists")
            };
            let target = Target {
                script: script.clone(),
                route: route.clone(),
            };
            let holders = self.holders.entry(key).or_default();
            if let Err(e) = router.insert(spec.pattern.clone(), target) {
                let (held_by, held) = match &e {
                    matchit::InsertError::Conflict { with } => holders
                        .get(with)
                        .map(|(s, r)| (s.to_string(), r.to_string()))
                        .unwrap_or_else(|| (String::new(), with.clone())),
                    other => (String::new(), other.to_string()),
                };
                return Err(RouteConflict {
                    route: route.to_string(),
                    held,
                    script: held_by,
                });
            }
            holders.insert(spec.pattern.clone(), (script.clone(), route.clone()));
        }
        Ok(())
    }

    fn find(&self, method: &str, path: &str) -> Option<RouteMatch> {
        let router = self.by_method.get(method).unwrap_or(&self.any);
        let m = router.at(path).ok()?;
        let params = m
            .params
            .iter()
            .map(|(k, v)| {
                let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                (k.to_owned(), v.into_owned())
            })
            .collect();
        Some(RouteMatch {
            script: m.value.script.clone(),
            route: m.value.route.clone(),
            params,
        })
    }
}

/// Refuses `mine` (the routes `script` is about to hold) when one overlaps
/// a route another script holds; `held` is every other script's routes as
/// stored. Routes of `script` itself in `held` are ignored: a new version
/// replaces them.
pub fn check_conflicts<'a>(
    held: impl IntoIterator<Item = (&'a str, &'a [String])>,
    script: &str,
    mine: &[String],
) -> Result<(), RouteConflict> {
    let mut table = Builder::default();
    for (s, routes) in held {
        if s == script {
            continue;
        }
        for spec in routes.iter().filter_map(|r| RouteSpec::parse(r).ok()) {
            // Held routes were checked when stored.
            let _ = table.insert(s, &spec);
        }
    }
    for spec in mine.iter().filter_map(|r| RouteSpec::parse(r).ok()) {
        table.insert(script, &spec)?;
    }
    Ok(())
}

/// The whole route table of a gateway, immutable once built: rebuilt and
/// swapped on a change.
#[derive(Default)]
pub struct RouteMatcher {
    table: Builder,
    len: usize,
}

impl RouteMatcher {
    /// Builds the table from (script, its routes). A route that does not
    /// parse or conflicts (never so when the manager stored it) is skipped
    /// and returned, to be logged.
    pub fn build<'a>(
        scripts: impl IntoIterator<Item = (&'a str, &'a [String])>,
    ) -> (Self, Vec<String>) {
        let mut table = Builder::default();
        let mut skipped = Vec::new();
        let mut len = 0;
        for (script, routes) in scripts {
            for r in routes {
                match RouteSpec::parse(r) {
                    Ok(spec) => match table.insert(script, &spec) {
                        Ok(()) => len += 1,
                        Err(e) => skipped.push(e.to_string()),
                    },
                    Err(e) => skipped.push(e.to_string()),
                }
            }
        }
        (Self { table, len }, skipped)
    }

    /// How many routes the table holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The route `method path` goes to, if any (`path` as received, still
    /// percent-encoded).
    pub fn find(&self, method: &str, path: &str) -> Option<RouteMatch> {
        if self.len == 0 {
            return None;
        }
        self.table.find(method, path)
    }
}

#[cfg(test)]
mod tests;
