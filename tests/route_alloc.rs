//! Routing a request must never allocate: `RouteTable::find` works on borrowed request
//! parts and stack buffers. This test counts the allocations made on this thread while
//! finding routes in a table of 100 mixed routes (exact and wildcard hosts, exact and prefix
//! paths, regexes, methods, headers), parsed from TOML as an operator would write them.
//!
//! The counting allocator wraps `System` and counts per thread, as in `balance_alloc.rs`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use fulcrum::route::{Action, Match, RequestView, RouteTable};
use http::{HeaderMap, HeaderValue, Method};

#[path = "support/alloc_count.rs"]
mod alloc_count;

use alloc_count::allocations;

#[global_allocator]
static GLOBAL: alloc_count::Counting = alloc_count::Counting;

/// 100 routes of every kind, then pools.
fn config() -> String {
    let mut s = String::from(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p0\"\nsplit_key = \"header:x-user\"\n",
    );
    for i in 0..100 {
        let _ = write!(s, "\n[[listener.route]]\nname = \"r{i}\"\n");
        let _ = match i % 10 {
            0 => write!(s, "host = [\"svc{i}.example.com\"]\npath_prefix = \"/api/\"\n"),
            1 => writeln!(s, "host = [\"*.t{i}.example.org\"]"),
            2 => write!(s, "path = \"/exact/{i}\"\nmethods = [\"GET\", \"HEAD\"]\n"),
            3 => write!(s, "host = [\"re{i}.example.com\"]\npath_regex = \"^/u/[0-9]+/{i}$\"\n"),
            4 => write!(s, "path_prefix = \"/p{i}/\"\nheaders = {{ \"x-canary\" = \"1\" }}\n"),
            5 => write!(s, "host = [\"svc{i}.example.com\", \"*.svc{i}.example.net\"]\npath_prefix = \"/v{i}/\"\n"),
            _ => writeln!(s, "path_prefix = \"/p{i}/\""),
        };
        let _ = if i % 10 == 5 {
            writeln!(
                s,
                "split = [ {{ pool = \"p1\", weight = 9 }}, {{ pool = \"p2\", weight = 1 }} ]"
            )
        } else {
            writeln!(s, "pool = \"p{}\"", i % 3)
        };
    }
    for p in 0..3 {
        let _ = write!(
            s,
            "\n[[pool]]\nname = \"p{p}\"\nservers = [ {{ addr = \"127.0.0.1:{}\" }} ]\n",
            9000 + p
        );
    }
    s
}

#[test]
fn finding_a_route_never_allocates() {
    let cfg = fulcrum::config::parse(&config(), Path::new("alloc.toml")).expect("valid config");
    let l = &cfg.listeners[0];
    assert_eq!(l.routes.len(), 100);
    let table = RouteTable::compile(&l.routes, l.pool.as_ref());
    let split_key = l.split_key.clone().expect("split_key is set");

    // Requests are prepared up front, as the proxy has them: a borrowed view of each.
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", HeaderValue::from_static("1"));
    canary.insert("x-user", HeaderValue::from_static("alice"));
    let plain = HeaderMap::new();
    let hosts: Vec<String> = (0..100)
        .flat_map(|i| {
            [
                format!("svc{i}.example.com"),
                format!("a.t{i}.example.org:8080"),
                format!("re{i}.example.com"),
                format!("x.svc{i}.example.net"),
                "unknown.example".to_string(),
            ]
        })
        .collect();
    let paths: Vec<String> = (0..100)
        .flat_map(|i| {
            [
                "/api/x".to_string(),
                format!("/exact/{i}"),
                format!("/u/7/{i}"),
                format!("/p{i}/x"),
                format!("/v{i}/y"),
            ]
        })
        .collect();
    let methods = [Method::GET, Method::POST, Method::HEAD];
    let client: IpAddr = "10.0.0.1".parse().unwrap();
    // Counts of (route, default, not found): on the stack, so counting allocates nothing.
    let run = || {
        let mut seen = [0usize; 3];
        for (i, host) in hosts.iter().enumerate() {
            for (j, path) in paths.iter().enumerate().skip(i % 7).step_by(7) {
                let headers = if (i + j) % 2 == 0 { &canary } else { &plain };
                let req = RequestView {
                    host: (j % 11 != 0).then_some(host.as_str()),
                    path,
                    method: &methods[(i + j) % 3],
                    headers,
                };
                let m = table.find(&req);
                if let Match::Route(r) = m {
                    if let Action::Split(s) = r.action() {
                        s.pick(split_key.hash(client, headers), || 7);
                    }
                }
                seen[match m {
                    Match::Route(_) => 0,
                    Match::Default(_) => 1,
                    Match::NotFound => 2,
                }] += 1;
            }
        }
        seen
    };
    // The first pass warms what is per thread and made once: regex caches.
    let seen = run();
    assert!(
        seen[0] > 1000 && seen[1] > 1000,
        "the requests reach routes and the default: {seen:?}"
    );

    let before = allocations();
    let seen = run();
    let made = allocations() - before;
    let n: usize = seen.iter().sum();
    assert_eq!(made, 0, "{made} allocations in {n} lookups");
}
