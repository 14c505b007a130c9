use super::*;

fn routes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn routes_parse_into_matchit_patterns() {
    let r = RouteSpec::parse("get /users/:id/files/*path").unwrap();
    assert_eq!(r.method, "GET");
    assert_eq!(r.pattern, "/users/{id}/files/{*path}");
    assert_eq!(r.to_string(), "GET /users/:id/files/*path");
    assert_eq!(RouteSpec::parse("* /").unwrap().pattern, "/");
    assert_eq!(RouteSpec::parse("POST /a/b/").unwrap().pattern, "/a/b/");
}

#[test]
fn bad_routes_are_refused_naming_the_route() {
    let long = format!("GET /{}", "a".repeat(MAX_ROUTE_LEN));
    let deep = format!("GET {}", "/a".repeat(MAX_SEGMENTS + 1));
    for bad in [
        "",
        "GET",
        "/users",
        "GET users",
        "GET /a b",
        "G3T /a",
        "GET /users/:",
        "GET /users/*",
        "GET /files/*path/more",
        "GET /a//b",
        "GET /a/{id}",
        "GET /a/:i-d",
        "GET /a/:id/:id",
        "GET /a?b",
        "GET /a\u{1b}[31m",
        "GET /caf\u{e9}",
        "GET\u{a0}/a",
        "GET /fn/x",
        "GET /api/v1/x",
        "GET /status/x",
        "* /healthz",
        long.as_str(),
        deep.as_str(),
    ] {
        let e = RouteSpec::parse(bad).expect_err(bad);
        assert!(e.0.starts_with("invalid route"), "{bad}: {e}");
    }
}

#[test]
fn a_list_is_bounded_and_may_not_overlap_itself() {
    let many: Vec<String> = (0..=MAX_ROUTES).map(|i| format!("GET /r{i}")).collect();
    assert!(RouteSpec::parse_all(&many).is_err());
    assert!(RouteSpec::parse_all(&many[..MAX_ROUTES]).is_ok());
    let e = RouteSpec::parse_all(&routes(&["GET /u/:id", "GET /u/:name"])).unwrap_err();
    assert!(
        e.0.contains("GET /u/:name") && e.0.contains("GET /u/:id"),
        "{e}"
    );
    assert!(RouteSpec::parse_all(&routes(&["GET /a", "get /a"])).is_err());
    assert!(RouteSpec::parse_all(&routes(&["GET /u/:id", "POST /u/:name", "GET /u/me"])).is_ok());
}

#[test]
fn conflicts_name_the_holder() {
    let other = routes(&["GET /users/:id", "* /files/*path"]);
    let held = [("other", other.as_slice())];
    let c = check_conflicts(held, "mine", &routes(&["GET /users/:name"])).unwrap_err();
    assert_eq!(c.script, "other");
    assert_eq!(c.held, "GET /users/:id");
    assert_eq!(c.route, "GET /users/:name");
    // `*` overlaps every method, both ways.
    let c = check_conflicts(held, "mine", &routes(&["DELETE /files/*rest"])).unwrap_err();
    assert_eq!(c.held, "* /files/*path");
    let c = check_conflicts(held, "mine", &routes(&["* /users/:x"])).unwrap_err();
    assert_eq!(c.held, "GET /users/:id");
    // Another method, or a static segment beside a parameter: no conflict.
    check_conflicts(
        held,
        "mine",
        &routes(&["POST /users/:name", "GET /users/me"]),
    )
    .unwrap();
    // A script's own routes are replaced, not conflicting.
    check_conflicts(held, "other", &routes(&["GET /users/:name"])).unwrap();
}

#[test]
fn static_beats_param_beats_catch_all() {
    let a = routes(&["GET /users/me", "* /users/:id"]);
    let b = routes(&["GET /users/:id/*rest", "GET /files/*path"]);
    let (m, skipped) = RouteMatcher::build([("a", a.as_slice()), ("b", b.as_slice())]);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(m.len(), 4);
    assert_eq!(&*m.find("GET", "/users/me").unwrap().script, "a");
    let hit = m.find("PATCH", "/users/42").unwrap();
    assert_eq!(hit.route.as_ref(), "* /users/:id");
    assert_eq!(hit.params["id"], "42");
    let hit = m.find("GET", "/users/42/x/y%20z").unwrap();
    assert_eq!(&*hit.script, "b");
    assert_eq!(hit.params["rest"], "x/y z");
    assert_eq!(m.find("GET", "/files/a/b").unwrap().params["path"], "a/b");
    assert!(m.find("GET", "/files/").is_none());
    assert!(m.find("POST", "/files/a").is_none());
    assert!(m.find("GET", "/nothing").is_none());
}
