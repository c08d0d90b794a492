//! The table on small, named route sets: each matcher and action as the issue tells them.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::*;
use crate::config::{RouteAction, RouteSettings};
use crate::route::properties::{route, RouteSpec};
use crate::route::{RedirectPath, SplitTarget};

fn find_with(
    table: &RouteTable,
    host: Option<&str>,
    path: &str,
    method: Method,
    headers: &HeaderMap,
) -> String {
    let req = RequestView {
        host,
        path,
        method: &method,
        headers,
    };
    match table.find(&req) {
        Match::Route(r) => r.name().to_string(),
        Match::Default(p) => format!("default:{}", table.pools()[p.index()]),
        Match::NotFound => "404".into(),
    }
}

fn find(table: &RouteTable, host: Option<&str>, path: &str) -> String {
    find_with(table, host, path, Method::GET, &HeaderMap::new())
}

fn table(routes: Vec<RouteSettings>, default: Option<&str>) -> RouteTable {
    let default: Option<Arc<str>> = default.map(Arc::from);
    RouteTable::compile(&routes, default.as_ref())
}

#[test]
fn tables_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<RouteTable>();
    shared::<SplitRegistry>();
}

#[test]
fn two_hosts_go_to_two_pools_and_a_wildcard_matches() {
    let t = table(
        vec![
            route(RouteSpec {
                name: "a",
                hosts: &["a.example.com"],
                pool: "pa",
                ..RouteSpec::default()
            }),
            route(RouteSpec {
                name: "b",
                hosts: &["b.example.com"],
                pool: "pb",
                ..RouteSpec::default()
            }),
            route(RouteSpec {
                name: "w",
                hosts: &["*.example.com"],
                pool: "pw",
                ..RouteSpec::default()
            }),
        ],
        Some("app"),
    );
    assert_eq!(find(&t, Some("a.example.com"), "/"), "a");
    assert_eq!(
        find(&t, Some("B.Example.COM:8080"), "/x"),
        "b",
        "case and port ignored"
    );
    assert_eq!(find(&t, Some("c.example.com"), "/"), "w");
    assert_eq!(find(&t, Some("x.y.example.com."), "/"), "w");
    assert_eq!(
        find(&t, Some("example.com"), "/"),
        "default:app",
        "a wildcard needs a label"
    );
    assert_eq!(find(&t, None, "/"), "default:app");
    assert_eq!(t.pools().len(), 4, "app, pa, pb, pw");
}

#[test]
fn paths_in_config_order_exact_prefix_and_regex() {
    let t = table(
        vec![
            route(RouteSpec {
                name: "exact",
                exact: Some("/v1/health"),
                ..RouteSpec::default()
            }),
            route(RouteSpec {
                name: "users",
                prefix: Some("/v1/users/"),
                ..RouteSpec::default()
            }),
            route(RouteSpec {
                name: "v1",
                prefix: Some("/v1/"),
                ..RouteSpec::default()
            }),
            // Written after the broader /v1/: never reached for /v1/... paths, as written.
            route(RouteSpec {
                name: "v1-admin",
                prefix: Some("/v1/admin"),
                ..RouteSpec::default()
            }),
            route(RouteSpec {
                name: "user-id",
                regex: Some("^/u/[0-9]+$"),
                ..RouteSpec::default()
            }),
        ],
        None,
    );
    assert_eq!(find(&t, None, "/v1/health"), "exact");
    assert_eq!(find(&t, None, "/v1/health/x"), "v1", "exact means exact");
    assert_eq!(find(&t, None, "/v1/users/7"), "users");
    assert_eq!(
        find(&t, None, "/v1/admin"),
        "v1",
        "first match wins, not the longest"
    );
    assert_eq!(find(&t, None, "/u/42"), "user-id");
    assert_eq!(find(&t, None, "/u/42x"), "404");
    assert_eq!(find(&t, None, "/v2"), "404", "no default pool: 404");
}

#[test]
fn methods_and_headers() {
    let t = table(
        vec![
            route(RouteSpec {
                name: "canary",
                headers: &[("x-canary", Some("1"))],
                ..RouteSpec::default()
            }),
            route(RouteSpec {
                name: "debug",
                headers: &[("x-debug", None)],
                ..RouteSpec::default()
            }),
            route(RouteSpec {
                name: "writes",
                methods: Some(&["POST", "PUT"]),
                absent: &["x-bot"],
                ..RouteSpec::default()
            }),
        ],
        Some("app"),
    );
    let mut h = HeaderMap::new();
    assert_eq!(find_with(&t, None, "/", Method::GET, &h), "default:app");
    assert_eq!(find_with(&t, None, "/", Method::POST, &h), "writes");
    h.insert("x-bot", HeaderValue::from_static("yes"));
    assert_eq!(
        find_with(&t, None, "/", Method::POST, &h),
        "default:app",
        "x-bot must be absent"
    );
    h.insert("x-canary", HeaderValue::from_static("0"));
    assert_eq!(
        find_with(&t, None, "/", Method::GET, &h),
        "default:app",
        "x-canary must equal 1"
    );
    h.insert("x-debug", HeaderValue::from_static(""));
    assert_eq!(
        find_with(&t, None, "/", Method::GET, &h),
        "debug",
        "present, even empty"
    );
    h.insert("x-canary", HeaderValue::from_static("1"));
    assert_eq!(find_with(&t, None, "/", Method::GET, &h), "canary");
}

#[test]
fn a_route_for_many_hosts_and_paths_keeps_its_place() {
    // A later any-host route must not win over an earlier host route, and vice versa.
    let t = table(
        vec![
            route(RouteSpec {
                name: "any-static",
                prefix: Some("/static/"),
                ..RouteSpec::default()
            }),
            route(RouteSpec {
                name: "api",
                hosts: &["api.example.com", "*.api.example.com"],
                ..RouteSpec::default()
            }),
            route(RouteSpec {
                name: "any",
                ..RouteSpec::default()
            }),
        ],
        None,
    );
    assert_eq!(find(&t, Some("api.example.com"), "/static/x"), "any-static");
    assert_eq!(find(&t, Some("eu.api.example.com"), "/v1"), "api");
    assert_eq!(find(&t, Some("www.example.com"), "/v1"), "any");
}

fn with_action(name: &str, action: RouteAction) -> RouteSettings {
    let mut r = route(RouteSpec {
        name: "x",
        ..RouteSpec::default()
    });
    r.name = name.into();
    r.action = action;
    r
}

#[test]
fn actions_come_through_compiled() {
    let redirect = crate::route::Redirect {
        status: StatusCode::PERMANENT_REDIRECT,
        scheme: Some("https".into()),
        host: None,
        port: None,
        path: RedirectPath::Keep,
        drop_query: false,
    };
    let t = table(
        vec![with_action("to-https", RouteAction::Redirect(redirect))],
        None,
    );
    let Match::Route(r) = t.find(&RequestView {
        host: Some("example.com:80"),
        path: "/a",
        method: &Method::GET,
        headers: &HeaderMap::new(),
    }) else {
        panic!("the redirect route matches");
    };
    let Action::Redirect(rd) = r.action() else {
        panic!("a redirect")
    };
    assert_eq!(
        rd.location(Some("example.com:80"), "/a", Some("q=1"))
            .unwrap(),
        "https://example.com/a?q=1"
    );
}

#[test]
fn split_weights_change_at_run_time() {
    let split = RouteAction::Split(vec![
        SplitTarget {
            pool: "stable".into(),
            weight: 95,
        },
        SplitTarget {
            pool: "canary".into(),
            weight: 5,
        },
    ]);
    let t = table(vec![with_action("canary", split)], Some("stable"));
    let Action::Split(s) = t.route("canary").unwrap().action() else {
        panic!("a split")
    };
    assert_eq!(t.pools()[s.members()[0].index()].as_ref(), "stable");
    assert_eq!(
        s.members()[0],
        t.default_pool().unwrap(),
        "one id per pool name"
    );
    t.set_split_weights("canary", &[0, 1]).unwrap();
    let canary = s.members()[1];
    assert!((0..100u64).all(|i| s.pick(None, || i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) == canary));
    t.reset_split_weights("canary").unwrap();
    assert_eq!(s.weights(), vec![95, 5]);
    assert!(t.set_split_weights("nope", &[1, 1]).is_err());
}

#[test]
fn overrides_survive_a_rebuild_that_keeps_the_pools() {
    let registry = SplitRegistry::new();
    let routes = vec![with_action(
        "canary",
        RouteAction::Split(vec![
            SplitTarget {
                pool: "a".into(),
                weight: 1,
            },
            SplitTarget {
                pool: "b".into(),
                weight: 1,
            },
        ]),
    )];
    let first = RouteTable::compile_shared("web", &routes, None, &registry).table;
    registry.set("web", "canary", &[3, 1]).unwrap();
    // A reload that reorders or reweights the config keeps the override.
    let mut changed = routes.clone();
    if let RouteAction::Split(t) = &mut changed[0].action {
        t[0].weight = 7;
    }
    let second = RouteTable::compile_shared("web", &changed, None, &registry);
    assert!(second.dropped.is_empty());
    let Action::Split(s) = second.table.routes()[0].action() else {
        panic!("a split")
    };
    assert_eq!(s.weights(), vec![3, 1]);
    assert_eq!(s.configured(), &[7, 1]);
    // The old table sees the same override (one shared state).
    let Action::Split(old) = first.routes()[0].action() else {
        panic!("a split")
    };
    assert!(old.is_overridden());
}
