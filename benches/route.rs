//! Cost of routing one request (`RouteTable::find`) at 10, 100 and 1000 routes, and of
//! compiling a table.
//!
//! Route sets, parsed from TOML as an operator writes them:
//! - `mixed`: exact and wildcard hosts, exact and prefix paths, header and method
//!   conditions, splits, and a few regexes (one route in ten is a host-bound regex; two
//!   any-host regexes sit at the end);
//! - `hosts`: one exact host per route;
//! - `prefixes`: one path prefix per route, any host;
//! - `linear_scan`: the `mixed` set checked route by route (what the index saves).
//!
//! Each iteration routes the next of 512 prepared requests (hits on early and late routes,
//! defaults and misses), so lookups do not sit on one warm path. Target (issue 16): under
//! 100 ns at 100 routes, and sub-linear growth for hosts and prefixes.

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::config::RouteSettings;
use fulcrum::route::{matches, RequestView, RouteTable};
use http::{HeaderMap, HeaderValue, Method};

const SIZES: [usize; 3] = [10, 100, 1000];

fn parse(routes: &str, n_pools: usize) -> Vec<RouteSettings> {
    let mut s = String::from(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p0\"\n",
    );
    s.push_str(routes);
    for p in 0..n_pools {
        let _ = write!(
            s,
            "\n[[pool]]\nname = \"p{p}\"\nservers = [ {{ addr = \"127.0.0.1:{}\" }} ]\n",
            9000 + p
        );
    }
    let cfg = fulcrum::config::parse(&s, Path::new("bench.toml")).expect("valid bench config");
    cfg.listeners[0].routes.clone()
}

fn mixed(n: usize) -> Vec<RouteSettings> {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(s, "\n[[listener.route]]\nname = \"r{i}\"\n");
        let _ = match i % 10 {
            0 | 6 => write!(s, "host = [\"svc{i}.example.com\"]\npath_prefix = \"/api/\"\n"),
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
    for (i, re) in ["^/static/.+\\.(css|js)$", "^/(a|b)/[0-9]+$"]
        .iter()
        .enumerate()
    {
        let _ = write!(
            s,
            "\n[[listener.route]]\nname = \"re-any{i}\"\npath_regex = '{re}'\npool = \"p0\"\n"
        );
    }
    parse(&s, 3)
}

fn hosts(n: usize) -> Vec<RouteSettings> {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(s, "\n[[listener.route]]\nname = \"h{i}\"\nhost = [\"svc{i}.example.com\"]\npool = \"p{}\"\n", i % 3);
    }
    parse(&s, 3)
}

fn prefixes(n: usize) -> Vec<RouteSettings> {
    let mut s = String::new();
    for i in 0..n {
        let _ = write!(s, "\n[[listener.route]]\nname = \"p{i}\"\npath_prefix = \"/svc{i}/api/\"\npool = \"p{}\"\n", i % 3);
    }
    parse(&s, 3)
}

/// A prepared request: owned parts a `RequestView` borrows.
struct Req {
    host: Option<String>,
    path: String,
    method: Method,
    canary: bool,
}

fn requests(n: usize, kind: &str) -> Vec<Req> {
    let mut rng = fastrand::Rng::with_seed(16);
    (0..512)
        .map(|_| {
            // Keys slightly beyond `n` give misses (the default pool) too.
            let k = rng.usize(..n + n / 8 + 1);
            let (host, path) = match kind {
                "hosts" => (format!("svc{k}.example.com"), "/index.html".to_string()),
                "prefixes" => ("www.example.com".into(), format!("/svc{k}/api/users/42")),
                _ => match rng.u8(..6) {
                    0 => (format!("svc{k}.example.com"), "/api/orders".into()),
                    1 => (format!("a.t{k}.example.org:8080"), "/".into()),
                    2 => ("www.example.com".into(), format!("/exact/{k}")),
                    3 => (format!("re{k}.example.com"), format!("/u/7/{k}")),
                    4 => (format!("x.svc{k}.example.net"), format!("/v{k}/y")),
                    _ => ("www.example.com".into(), format!("/p{k}/x")),
                },
            };
            Req {
                host: Some(host),
                path,
                method: if rng.u8(..8) == 0 {
                    Method::POST
                } else {
                    Method::GET
                },
                canary: rng.bool(),
            }
        })
        .collect()
}

fn view<'a>(r: &'a Req, canary: &'a HeaderMap, plain: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        host: r.host.as_deref(),
        path: &r.path,
        method: &r.method,
        headers: if r.canary { canary } else { plain },
    }
}

fn find(c: &mut Criterion) {
    let mut canary = HeaderMap::new();
    canary.insert("x-canary", HeaderValue::from_static("1"));
    let plain = HeaderMap::new();
    for (kind, build) in [
        ("mixed", mixed as fn(usize) -> Vec<RouteSettings>),
        ("hosts", hosts),
        ("prefixes", prefixes),
    ] {
        let mut group = c.benchmark_group(format!("find/{kind}"));
        for n in SIZES {
            let routes = build(n);
            let default = "p0".into();
            let table = RouteTable::compile(&routes, Some(&default));
            let reqs = requests(n, kind);
            let mut i = 0usize;
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    i = (i + 1) & 511;
                    let m = table.find(black_box(&view(&reqs[i], &canary, &plain)));
                    black_box(m.label().len())
                })
            });
        }
        group.finish();
    }
    let mut group = c.benchmark_group("find/linear_scan");
    for n in SIZES {
        let routes = mixed(n);
        let reqs = requests(n, "mixed");
        let mut i = 0usize;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                i = (i + 1) & 511;
                let v = view(&reqs[i], &canary, &plain);
                black_box(routes.iter().position(|r| matches(r, black_box(&v))))
            })
        });
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile/mixed");
    group.sample_size(20);
    for n in SIZES {
        let routes = mixed(n);
        let default = "p0".into();
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| RouteTable::compile(black_box(&routes), Some(&default)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = find, compile
}
criterion_main!(benches);
