//! Properties of the whole table, over random route sets and requests: the indexed lookup
//! finds exactly what a linear first-match scan finds; a shadow warning is never wrong;
//! splits divide keys by weight and keep each key on one side. Also the small builder the
//! route tests use to write routes in one line.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

use super::*;
use crate::config::{RouteAction, RouteSettings};

/// A route in one line, for tests.
#[derive(Clone, Debug)]
pub(crate) struct RouteSpec<'a> {
    pub name: &'a str,
    pub hosts: &'a [&'a str],
    pub exact: Option<&'a str>,
    pub prefix: Option<&'a str>,
    pub regex: Option<&'a str>,
    pub methods: Option<&'a [&'a str]>,
    /// (name, Some(value)): equals; (name, None): present.
    pub headers: &'a [(&'a str, Option<&'a str>)],
    /// Headers that must be absent.
    pub absent: &'a [&'a str],
    pub pool: &'a str,
}

impl Default for RouteSpec<'_> {
    fn default() -> Self {
        RouteSpec {
            name: "r",
            hosts: &[],
            exact: None,
            prefix: None,
            regex: None,
            methods: None,
            headers: &[],
            absent: &[],
            pool: "p",
        }
    }
}

/// The settings `spec` describes.
pub(crate) fn route(spec: RouteSpec) -> RouteSettings {
    let path = match (spec.exact, spec.prefix, spec.regex) {
        (Some(p), _, _) => PathMatch::Exact(p.into()),
        (_, Some(p), _) => PathMatch::Prefix(p.into()),
        (_, _, Some(r)) => PathMatch::Regex(PathRegex::new(r).unwrap()),
        _ => PathMatch::Any,
    };
    let mut headers: Vec<HeaderMatch> = spec
        .headers
        .iter()
        .map(|(n, v)| HeaderMatch {
            name: HeaderName::from_bytes(n.as_bytes()).unwrap(),
            cond: v.map_or(HeaderCond::Present, |v| {
                HeaderCond::Equals(HeaderValue::from_str(v).unwrap())
            }),
        })
        .collect();
    headers.extend(spec.absent.iter().map(|n| HeaderMatch {
        name: HeaderName::from_bytes(n.as_bytes()).unwrap(),
        cond: HeaderCond::Absent,
    }));
    RouteSettings {
        name: spec.name.into(),
        hosts: spec
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h).unwrap())
            .collect(),
        path,
        methods: spec
            .methods
            .map(|ms| MethodSet::new(ms.iter().map(|m| Method::from_bytes(m.as_bytes()).unwrap()))),
        headers,
        action: RouteAction::Pool(spec.pool.into()),
        rewrites: Rewrites::default(),
    }
}

const HOSTS: [&[&str]; 7] = [
    &[],
    &["a.com"],
    &["b.com"],
    &["*.a.com"],
    &["x.a.com"],
    &["*.x.a.com"],
    &["a.com", "*.b.com"],
];
const PATHS: [(Option<&str>, Option<&str>, Option<&str>); 13] = [
    (None, None, None),
    (Some("/"), None, None),
    (Some("/a"), None, None),
    (Some("/a/b"), None, None),
    (None, Some("/"), None),
    (None, Some("/a"), None),
    (None, Some("/a/"), None),
    (None, Some("/ab"), None),
    (None, None, Some("^/a/[0-9]+$")),
    (None, None, Some("b")),
    // Indexed at their literal start ("/a", "/a"), or not at all (alternation).
    (None, None, Some("^/ab?/?$")),
    (None, None, Some("^/a[0-9]*$")),
    (None, None, Some("^/a$|^/b")),
];
const METHODS: [Option<&[&str]>; 4] = [
    None,
    Some(&["GET"]),
    Some(&["GET", "POST"]),
    Some(&["PURGE"]),
];
type Headers = (
    &'static [(&'static str, Option<&'static str>)],
    &'static [&'static str],
);
const HEADERS: [Headers; 5] = [
    (&[], &[]),
    (&[("x-a", None)], &[]),
    (&[("x-a", Some("1"))], &[]),
    (&[], &["x-a"]),
    (&[("x-b", None)], &[]),
];

fn random_route() -> impl Strategy<Value = RouteSettings> {
    (
        0..HOSTS.len(),
        0..PATHS.len(),
        0..METHODS.len(),
        0..HEADERS.len(),
    )
        .prop_map(|(h, p, m, hd)| {
            route(RouteSpec {
                hosts: HOSTS[h],
                exact: PATHS[p].0,
                prefix: PATHS[p].1,
                regex: PATHS[p].2,
                methods: METHODS[m],
                headers: HEADERS[hd].0,
                absent: HEADERS[hd].1,
                ..RouteSpec::default()
            })
        })
}

fn named(mut routes: Vec<RouteSettings>) -> Vec<RouteSettings> {
    for (i, r) in routes.iter_mut().enumerate() {
        r.name = format!("r{i}").into();
        r.action = RouteAction::Pool(format!("p{i}").into());
    }
    routes
}

const REQ_HOSTS: [Option<&str>; 10] = [
    None,
    Some("a.com"),
    Some("A.COM:80"),
    Some("b.com"),
    Some("x.a.com"),
    Some("y.x.a.com"),
    Some("c.com"),
    Some("q.b.com."),
    Some("a.com."),
    Some(".a.com"),
];
const REQ_PATHS: [&str; 10] = [
    "/", "/a", "/a/", "/a/b", "/a/12", "/ab", "/b", "/a/b/c", "", "*",
];

/// (host, path, method, headers) indices of a random request.
fn random_request() -> impl Strategy<Value = (usize, usize, usize, u8)> {
    (0..REQ_HOSTS.len(), 0..REQ_PATHS.len(), 0..4usize, 0..8u8)
}

fn headers(bits: u8) -> HeaderMap {
    let mut h = HeaderMap::new();
    if bits & 1 != 0 {
        h.append("x-a", HeaderValue::from_static("1"));
    }
    if bits & 2 != 0 {
        h.append("x-a", HeaderValue::from_static("2"));
    }
    if bits & 4 != 0 {
        h.append("x-b", HeaderValue::from_static("y"));
    }
    h
}

fn method(i: usize) -> Method {
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::from_bytes(b"PURGE").unwrap(),
    ][i]
        .clone()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The key property: the indexed table answers exactly as a linear first-match scan.
    #[test]
    fn first_match_equals_linear_scan(
        routes in proptest::collection::vec(random_route(), 0..24),
        default in any::<bool>(),
        requests in proptest::collection::vec(random_request(), 1..16),
    ) {
        let routes = named(routes);
        let default_pool: Arc<str> = "fallback".into();
        let table = RouteTable::compile(&routes, default.then_some(&default_pool));
        for (h, p, m, hd) in requests {
            let (method, headers) = (method(m), headers(hd));
            let req = RequestView { host: REQ_HOSTS[h], path: REQ_PATHS[p], method: &method, headers: &headers };
            let want = routes.iter().position(|r| matches(r, &req));
            let got = match table.find(&req) {
                Match::Route(r) => Some(r.index()),
                Match::Default(id) => {
                    prop_assert!(default);
                    prop_assert_eq!(&*table.pools()[id.index()], "fallback");
                    None
                }
                Match::NotFound => {
                    prop_assert!(!default);
                    None
                }
            };
            prop_assert_eq!(got, want, "request {:?}", req);
        }
    }

    /// A shadow warning is never wrong: whatever the later route matches, the earlier does.
    #[test]
    fn shadowed_routes_are_really_unreachable(
        a in random_route(),
        b in random_route(),
        requests in proptest::collection::vec(random_request(), 1..40),
    ) {
        if shadows(&a, &b) {
            for (h, p, m, hd) in requests {
                let (method, headers) = (method(m), headers(hd));
                let req = RequestView { host: REQ_HOSTS[h], path: REQ_PATHS[p], method: &method, headers: &headers };
                prop_assert!(!matches(&b, &req) || matches(&a, &req), "{:?}", req);
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Over many keys, each pool's share is within 2 points of its weight's share, and a
    /// key picks the same pool every time.
    #[test]
    fn split_shares_follow_weights_and_keys_stick(
        weights in proptest::collection::vec(1u32..=100, 2..5),
        salt in any::<u64>(),
    ) {
        let pools: Vec<Arc<str>> = (0..weights.len()).map(|i| Arc::from(format!("p{i}"))).collect();
        let split = Split::new(
            (0..weights.len() as u32).map(PoolId).collect(),
            weights.clone().into(),
            Arc::new(SplitState::new(&pools)),
        );
        let n = 20_000u64;
        let mut counts = vec![0u64; weights.len()];
        for i in 0..n {
            let key = crate::balance::hash_bytes(&(i ^ salt).to_le_bytes());
            let p = split.pick(Some(key), || unreachable!("keyed picks draw no randomness"));
            prop_assert_eq!(split.pick(Some(key), || 0), p, "sticky");
            counts[p.index()] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (c, w) in counts.iter().zip(&weights) {
            let share = *c as f64 / n as f64;
            let want = f64::from(*w) / f64::from(total);
            prop_assert!((share - want).abs() <= 0.02, "share {share:.3} vs {want:.3}: {counts:?} for {weights:?}");
        }
    }
}
