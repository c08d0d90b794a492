//! `fulcrum check` on routed listeners: a valid routed config passes with its routes in the
//! summary; each broken route config exits 2 with `PATH:LINE:COL: message` at the offending
//! line; unreachable routes are warnings with their line, and the exit stays 0.

#[path = "support/check.rs"]
mod check_cmd;

use check_cmd::{check, check_files};

use fulcrum::config::{self, RouteAction};
use fulcrum::route::{HostPattern, PathMatch};

const BASE: &str = r#"[[listener]]
name = "web"
bind = "127.0.0.1:8080"
protocol = "http"
pool = "app"

[[listener.route]]
name = "api"
path_prefix = "/v1/"
pool = "api"

[[pool]]
name = "app"
servers = [ { addr = "127.0.0.1:9001" } ]

[[pool]]
name = "api"
servers = [ { addr = "127.0.0.1:9002" } ]
"#;

/// BASE with line `n` (1-based) replaced by `with` (which may hold several lines).
fn line(n: usize, with: &str) -> String {
    let mut lines: Vec<&str> = BASE.lines().collect();
    lines[n - 1] = with;
    lines.join("\n") + "\n"
}

#[test]
fn the_issue_example_is_valid_and_summarised() {
    let text = r#"[[listener]]
name = "web"
bind = "127.0.0.1:8080"
protocol = "http"
pool = "default"
split_key = "cookie:sid"
error_pages = { 503 = { file = "503.html" }, 502 = { body = "bad gateway\n" } }

[[listener.route]]
name = "api"
host = ["api.example.com", "*.api.example.com"]
path_prefix = "/v1/"
methods = ["GET", "POST"]
headers = { "x-canary" = "1" }
split = [ { pool = "api", weight = 95 }, { pool = "api-next", weight = 5 } ]
strip_prefix = "/v1"
request_headers = { set = { "x-env" = "prod" }, remove = ["x-debug"] }
response_headers = { set = { "strict-transport-security" = "max-age=31536000" }, remove = ["server"] }

[[listener.route]]
name = "maintenance"
path_prefix = "/old/"
respond = { status = 410, body = "gone\n", content_type = "text/plain" }

[[listener.route]]
name = "to-https"
redirect = { scheme = "https", status = 308 }

[[pool]]
name = "default"
servers = [ { addr = "127.0.0.1:9001" } ]

[[pool]]
name = "api"
servers = [ { addr = "127.0.0.1:9002" } ]

[[pool]]
name = "api-next"
servers = [ { addr = "127.0.0.1:9003" } ]
"#;
    let (code, out, err) = check_files(text, &[("503.html", "<h1>down</h1>\n")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("web http on 127.0.0.1:8080 -> 3 routes, then pool default"),
        "{out}"
    );
    assert!(
        out.contains("api: host api.example.com,*.api.example.com path_prefix /v1/ methods GET,POST headers x-canary=1 -> split api 95, api-next 5"),
        "{out}"
    );
    assert!(
        out.contains("maintenance: path_prefix /old/ -> respond 410"),
        "{out}"
    );
    assert!(
        out.contains("to-https: every request -> redirect 308 scheme https"),
        "{out}"
    );
    // The catch-all redirect makes the default pool unreachable: said once, as a warning.
    assert!(
        err.contains("F:5:8: warning: pool \"default\" is never used as the default: route \"to-https\" (line 26)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn shadowed_routes_are_warnings_with_their_line() {
    let text = format!(
        "{}\n[[listener.route]]\nname = \"users\"\npath_prefix = \"/v1/users\"\npool = \"app\"\n\n[[listener.route]]\nname = \"v2\"\npath_prefix = \"/v2/\"\npool = \"app\"\n",
        BASE.split("\n[[pool]]").next().unwrap()
    ) + "\n[[pool]]" + BASE.split_once("\n[[pool]]").unwrap().1;
    let (code, _, err) = check(&text);
    assert_eq!(code, 0, "warnings do not fail the check: {err}");
    assert!(
        err.contains(
            "F:13:8: warning: route \"users\" is never used: route \"api\" above it (line 8)"
        ),
        "{err}"
    );
    assert!(!err.contains("\"v2\""), "v2 is reachable: {err}");
}

#[test]
fn routes_without_a_default_pool_answer_404() {
    let text = BASE.replace(
        "pool = \"app\"\n\n[[listener.route]]",
        "\n[[listener.route]]",
    );
    let (code, out, err) = check(&text);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("-> 1 routes, then 404"), "{out}");
    let cfg = config::parse(&text, std::path::Path::new("f.toml")).unwrap();
    assert_eq!(cfg.listeners[0].pool, None);
}

#[test]
fn parsed_routes_carry_their_values() {
    let text = line(
        9,
        "host = [\"API.example.com\", \"*.example.org\"]\npath_regex = \"^/u/[0-9]+$\"\nmethods = [\"GET\", \"PURGE\"]\nheaders = { \"x-canary\" = \"1\", \"x-debug\" = true, \"x-bot\" = false }",
    );
    let cfg = config::parse(&text, std::path::Path::new("f.toml")).unwrap();
    let r = &cfg.listeners[0].routes[0];
    assert_eq!(
        r.hosts,
        vec![
            HostPattern::Exact("api.example.com".into()),
            HostPattern::Wildcard("example.org".into())
        ]
    );
    assert!(matches!(&r.path, PathMatch::Regex(re) if re.as_str() == "^/u/[0-9]+$"));
    assert_eq!(r.methods.as_ref().unwrap().methods().len(), 2);
    assert_eq!(r.headers.len(), 3);
    assert_eq!(r.action, RouteAction::Pool("api".into()));
}

#[test]
fn body_files_are_read_at_load_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("busy.html"), "<p>busy</p>").unwrap();
    let text = line(5, "pool = \"app\"\nerror_pages = { 503 = { file = \"busy.html\" }, 504 = { body = \"slow\" } }");
    let path = dir.path().join("f.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = config::load(&path).unwrap();
    let pages = &cfg.listeners[0].error_pages;
    let busy = pages.get(http::StatusCode::SERVICE_UNAVAILABLE).unwrap();
    assert_eq!(&busy.body[..], b"<p>busy</p>");
    assert_eq!(
        busy.content_type.as_ref().unwrap(),
        "text/html; charset=utf-8"
    );
    let slow = pages.get(http::StatusCode::GATEWAY_TIMEOUT).unwrap();
    assert_eq!(
        slow.content_type.as_ref().unwrap(),
        "text/plain; charset=utf-8"
    );
    assert!(pages.get(http::StatusCode::BAD_GATEWAY).is_none());
}

/// (name, config, expected line, a fragment of the message)
fn broken() -> Vec<(&'static str, String, usize, &'static str)> {
    let split = |a: u32, b: u32| {
        format!(
            "split = [ {{ pool = \"api\", weight = {a} }}, {{ pool = \"app\", weight = {b} }} ]"
        )
    };
    vec![
        ("unknown pool", line(10, "pool = \"nope\""), 10, "route \"api\" names pool \"nope\", which is not defined; defined pools: \"app\", \"api\""),
        ("bad regex", line(9, "path_regex = \"^/u/[0-9+$\""), 9, "invalid path_regex \"^/u/[0-9+$\": unclosed character class"),
        ("two path kinds", line(9, "path_prefix = \"/v1/\"\npath = \"/x\""), 10, "a route takes one of path, path_prefix and path_regex; this one has both path_prefix and path"),
        ("path without slash", line(9, "path = \"v1\""), 9, "path \"v1\" is invalid"),
        ("query in a path", line(9, "path = \"/a?b=1\""), 9, "without ?query"),
        ("two actions", line(10, "pool = \"api\"\nrespond = { status = 200 }"), 11, "route \"api\" has both `pool` and `respond`; a route does one thing"),
        ("no action", line(10, ""), 8, "route \"api\" has no action; expected one of pool, split, redirect or respond"),
        ("weight zero", line(10, &split(0, 1)), 10, "split weight must be between 1 and 10000, got 0"),
        ("weight too big", line(10, &split(1, 10_001)), 10, "split weight must be between 1 and 10000, got 10001"),
        ("one-pool split", line(10, "split = [ { pool = \"api\", weight = 1 } ]"), 10, "a split needs at least two pools"),
        ("pool twice in a split", line(10, "split = [ { pool = \"api\", weight = 1 }, { pool = \"api\", weight = 2 } ]"), 10, "pool \"api\" appears twice in the split"),
        ("bad header name", line(9, "headers = { \"x canary\" = \"1\" }"), 9, "invalid header name \"x canary\""),
        ("bad header condition", line(9, "headers = { \"x-canary\" = 1 }"), 9, "a header condition is a string"),
        ("bad redirect status", line(10, "redirect = { scheme = \"https\", status = 304 }"), 10, "redirect status must be 301, 302, 303, 307 or 308, got 304"),
        ("bad redirect scheme", line(10, "redirect = { scheme = \"ftp\" }"), 10, "unknown redirect scheme \"ftp\""),
        ("redirect to itself", line(10, "redirect = { status = 301 }"), 10, "sends clients back to the same URL"),
        ("redirect prefix without path_prefix", line(9, "path = \"/x\"\nredirect = { prefix = \"/y/\" }").replace("pool = \"api\"\n\n[[pool]]\nname = \"app\"", "\n[[pool]]\nname = \"app\""), 10, "redirect prefix replaces the route's path_prefix"),
        ("bad respond status", line(10, "respond = { status = 99 }"), 10, "respond status must be between 200 and 599, got 99"),
        ("body on a 204", line(10, "respond = { status = 204, body = \"x\" }"), 10, "a 204 response has no body"),
        ("missing respond file", line(10, "respond = { status = 200, file = \"nope.html\" }"), 10, "cannot read body file"),
        ("routes on tcp", BASE.replace("protocol = \"http\"", "protocol = \"tcp\""), 8, "[[listener.route]] applies only to protocol = \"http\" listeners"),
        ("duplicate route", format!("{}\n[[listener.route]]\nname = \"api\"\npool = \"app\"\n{}", &BASE[..BASE.find("\n[[pool]]").unwrap()], &BASE[BASE.find("\n[[pool]]").unwrap()..]), 13, "duplicate route name \"api\" in listener \"web\" (first defined at line 8)"),
        ("bad route name", line(8, "name = \"a b\""), 8, "route name \"a b\" is invalid"),
        ("lower-case method", line(9, "methods = [\"get\"]"), 9, "methods are case-sensitive; did you mean \"GET\"?"),
        ("empty methods", line(9, "methods = []"), 9, "methods = [] matches no request"),
        ("host with port", line(9, "host = [\"a.example.com:80\"]"), 9, "a port is not part of a host pattern"),
        ("star host", line(9, "host = [\"*\"]"), 9, "\"*\" alone matches every host"),
        ("empty host list", line(9, "host = []"), 9, "host = [] matches no request"),
        ("strip_prefix never applies", line(10, "pool = \"api\"\nstrip_prefix = \"/v2\""), 11, "strip_prefix \"/v2\" never applies: every path this route matches starts with \"/v1/\""),
        ("strip_prefix on respond", line(10, "respond = { status = 410 }\nstrip_prefix = \"/v1\""), 11, "strip_prefix applies only to routes that forward to a pool"),
        ("host_rewrite on a redirect", line(10, "redirect = { scheme = \"https\" }\nhost_rewrite = true"), 11, "host_rewrite applies only to routes that forward"),
        ("framing header edit", line(10, "pool = \"api\"\nrequest_headers = { remove = [\"content-length\"] }"), 11, "content-length frames the message"),
        ("host removed", line(10, "pool = \"api\"\nrequest_headers = { remove = [\"host\"] }"), 11, "a request needs a Host"),
        ("host set twice", line(10, "pool = \"api\"\nhost_rewrite = true\nrequest_headers = { set = { host = \"x\" } }"), 12, "host is set here and by host_rewrite"),
        ("bad header value", line(10, "pool = \"api\"\nresponse_headers = { set = { \"x-a\" = \"a\\u0001b\" } }"), 11, "invalid header value"),
        ("unknown route key", line(10, "pool = \"api\"\ntimeout = \"1s\""), 11, "unknown field `timeout`"),
        ("split_key without a split", line(5, "pool = \"app\"\nsplit_key = \"client_ip\""), 6, "split_key has no effect: no route of listener \"web\" has a split"),
        ("bad split_key", line(5, "pool = \"app\"\nsplit_key = \"path\"").replace("pool = \"api\"\n\n[[pool]]\nname = \"app\"", &format!("{}\n\n[[pool]]\nname = \"app\"", split(95, 5))), 6, "invalid split_key \"path\": unknown key"),
        ("missing error page file", line(5, "pool = \"app\"\nerror_pages = { 503 = { file = \"missing.html\" } }"), 6, "cannot read body file"),
        ("error page for another status", line(5, "pool = \"app\"\nerror_pages = { 500 = { body = \"x\" } }"), 6, "unknown field `500`, expected one of `502`, `503`, `504`"),
        ("error page without a body", line(5, "pool = \"app\"\nerror_pages = { 502 = { content_type = \"text/html\" } }"), 6, "error page 502 needs `body` or `file`"),
        ("error pages on tcp", BASE.replace("protocol = \"http\"", "protocol = \"tcp\"\nerror_pages = { 502 = { body = \"x\" } }").replace("[[listener.route]]\nname = \"api\"\npath_prefix = \"/v1/\"\npool = \"api\"\n", ""), 5, "error_pages applies only to protocol = \"http\" listeners"),
        ("no pool and no routes", BASE.replace("pool = \"app\"\n\n[[listener.route]]\nname = \"api\"\npath_prefix = \"/v1/\"\npool = \"api\"\n", ""), 2, "listener \"web\" needs `pool`, or [[listener.route]] tables"),
    ]
}

#[test]
fn each_broken_route_config_names_its_line_and_exits_2() {
    for (name, text, line, msg) in broken() {
        let (code, _, err) = check(&text);
        assert_eq!(code, 2, "{name}: exit code; stderr: {err}\n{text}");
        let first = err.lines().next().unwrap_or_default();
        let prefix = format!("F:{line}:");
        assert!(
            first.starts_with(&prefix),
            "{name}: expected {prefix}COL: ..., got {first:?}\n{text}"
        );
        assert!(first.contains(msg), "{name}: expected {msg:?} in {first:?}");
    }
}
