//! The meaning of one route on its own: whether it matches a request (a plain linear check,
//! the reference the indexed table must agree with), and whether an earlier route covers a
//! later one so that the later can never match (the `fulcrum check` shadow warning).

use super::host::{normalize_host, HOST_BUF};
use super::RequestView;
use crate::config::RouteSettings;

/// Whether `route`'s predicates all hold for `req`, checked one by one.
pub fn matches(route: &RouteSettings, req: &RequestView) -> bool {
    let host_ok = route.hosts.is_empty() || {
        let mut buf = [0u8; HOST_BUF];
        req.host
            .and_then(|h| normalize_host(h, &mut buf))
            .is_some_and(|h| route.hosts.iter().any(|p| p.matches(h)))
    };
    host_ok
        && route.path.matches(req.path)
        && route
            .methods
            .as_ref()
            .is_none_or(|m| m.contains(req.method))
        && route.headers.iter().all(|h| h.matches(req.headers))
}

/// Whether every request `later` matches is matched by `earlier` too, so that `later`
/// placed below `earlier` is never used. Conservative: `false` whenever it cannot be sure
/// (two different regexes, say), so a warning is always true.
pub fn shadows(earlier: &RouteSettings, later: &RouteSettings) -> bool {
    let hosts = earlier.hosts.is_empty()
        || (!later.hosts.is_empty()
            && later
                .hosts
                .iter()
                .all(|l| earlier.hosts.iter().any(|e| l.within(e))));
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.within(e),
    };
    let headers = earlier
        .headers
        .iter()
        .all(|e| later.headers.iter().any(|l| l.implies(e)));
    hosts && methods && headers && later.path.within(&earlier.path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::properties::{route, RouteSpec};

    #[test]
    fn broader_earlier_routes_shadow() {
        let all = route(RouteSpec::default());
        let api = route(RouteSpec {
            hosts: &["api.example.com"],
            prefix: Some("/v1/"),
            methods: Some(&["GET"]),
            ..RouteSpec::default()
        });
        assert!(shadows(&all, &api), "a catch-all covers everything");
        assert!(!shadows(&api, &all));
        let wild = route(RouteSpec {
            hosts: &["*.example.com"],
            prefix: Some("/"),
            ..RouteSpec::default()
        });
        assert!(shadows(&wild, &api));
        let narrower_methods = route(RouteSpec {
            hosts: &["api.example.com"],
            prefix: Some("/"),
            methods: Some(&["POST"]),
            ..RouteSpec::default()
        });
        assert!(!shadows(&narrower_methods, &api), "GET is not within POST");
    }

    #[test]
    fn header_conditions_must_be_implied() {
        let canary = route(RouteSpec {
            headers: &[("x-canary", Some("1"))],
            ..RouteSpec::default()
        });
        let canary_v1 = route(RouteSpec {
            prefix: Some("/v1"),
            headers: &[("x-canary", Some("1")), ("x-user", None)],
            ..RouteSpec::default()
        });
        let plain_v1 = route(RouteSpec {
            prefix: Some("/v1"),
            ..RouteSpec::default()
        });
        assert!(shadows(&canary, &canary_v1));
        assert!(
            !shadows(&canary, &plain_v1),
            "requests without the header reach it"
        );
        assert!(shadows(&plain_v1, &canary_v1));
    }
}
