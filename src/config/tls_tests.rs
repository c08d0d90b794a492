//! Validation of the TLS keys: defaults, shape errors at their line and column, the pool /
//! default_pool / route_by_sni rules, and the "not supported yet" gate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::super::schema::RawConfig;
use super::super::validate::validate_with;
use super::super::{Config, ConfigError, SniPattern};
use super::*;
use crate::tls::Served;

const ALL: Served = Served {
    listener_tls: true,
    upstream_tls: true,
    sni_routing: true,
};

const FILE: &str = "/etc/fulcrum/fulcrum.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    let path = Path::new(FILE);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        ConfigError::at(
            path,
            text,
            e.span().unwrap_or(0..0),
            e.message().to_string(),
        )
    })?;
    validate_with(raw, text, path, ALL)
}

/// The error text, which starts with `FILE:LINE:COL:`.
fn err(text: &str) -> String {
    parse(text).expect_err("config must be refused").to_string()
}

fn pools() -> &'static str {
    "\n[[pool]]\nname = \"app\"\nservers = [ { addr = \"127.0.0.1:9001\" } ]\n\
     [[pool]]\nname = \"pool_a\"\nservers = [ { addr = \"127.0.0.1:9002\" } ]\n\
     [[pool]]\nname = \"pool_b\"\nservers = [ { addr = \"127.0.0.1:9003\" } ]\n"
}

fn http_tls(tls_body: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"app\"\n\
         [listener.tls]\n{tls_body}\n{}",
        pools()
    )
}

const ONE_CERT: &str = "certificates = [ { cert = \"a.pem\", key = \"/keys/a.key\" } ]";

#[test]
fn listener_tls_defaults_and_paths() {
    let cfg = parse(&http_tls(&format!(
        "{ONE_CERT}\n[listener.tls.client_auth]\nca_file = \"clients.pem\""
    )))
    .unwrap();
    let t = cfg.listeners[0].tls.as_ref().expect("tls settings");
    assert_eq!(t.certificates.len(), 1);
    let c = &t.certificates[0];
    assert_eq!(
        c.cert,
        PathBuf::from("/etc/fulcrum/a.pem"),
        "relative to the config"
    );
    assert_eq!(c.key, PathBuf::from("/keys/a.key"));
    assert_eq!(c.ocsp, None);
    assert_eq!(
        c.at.to_string(),
        format!("{FILE}:7:18"),
        "the entry's own place"
    );
    assert_eq!(t.alpn, ["h2", "http/1.1"]);
    assert!(!t.sni_strict);
    assert_eq!(t.min_version, TlsVersion::V1_2);
    assert_eq!(t.handshake_timeout, Duration::from_secs(10));
    assert!(t.session_tickets);
    assert_eq!(t.session_cache, 20_000);
    let ca = t.client_auth.as_ref().expect("client auth");
    assert_eq!(ca.mode, ClientAuthMode::Require, "require unless told");
    assert_eq!(ca.ca_file, PathBuf::from("/etc/fulcrum/clients.pem"));
    assert_eq!(ca.forward_header, None);
    assert!(cfg.listeners[0].sni_routes.is_none());
}

#[test]
fn listener_tls_every_key() {
    let cfg = parse(&http_tls(
        "certificates = [\n  { cert = \"a.pem\", key = \"a.key\", ocsp = \"a.der\" },\n  { cert = \"b.pem\", key = \"b.key\" },\n]\n\
         alpn = [\"http/1.1\"]\nsni_strict = true\nmin_version = \"1.3\"\nhandshake_timeout = \"3s\"\n\
         session_tickets = false\nsession_cache = 0\n\
         [listener.tls.client_auth]\nca_file = \"c.pem\"\nmode = \"optional\"\nforward_header = \"X-Client-Cert\"",
    ))
    .unwrap();
    let t = cfg.listeners[0].tls.as_ref().unwrap();
    assert_eq!(t.certificates.len(), 2);
    assert_eq!(
        t.certificates[0].ocsp,
        Some(PathBuf::from("/etc/fulcrum/a.der"))
    );
    assert_eq!(t.certificates[1].at.location.line, 9);
    assert_eq!(t.alpn, ["http/1.1"]);
    assert!(t.sni_strict);
    assert_eq!(t.min_version, TlsVersion::V1_3);
    assert_eq!(t.handshake_timeout, Duration::from_secs(3));
    assert!(!t.session_tickets);
    assert_eq!(t.session_cache, 0);
    let ca = t.client_auth.as_ref().unwrap();
    assert_eq!(ca.mode, ClientAuthMode::Optional);
    assert_eq!(
        ca.forward_header.as_ref().unwrap().as_str(),
        "x-client-cert"
    );
}

#[test]
fn tcp_listener_tls_has_no_alpn_unless_asked() {
    let text = format!(
        "[[listener]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"app\"\n\
         [listener.tls]\n{ONE_CERT}\n{}",
        pools()
    );
    let cfg = parse(&text).unwrap();
    assert!(cfg.listeners[0].tls.as_ref().unwrap().alpn.is_empty());
    let imap = text.replace(ONE_CERT, &format!("{ONE_CERT}\nalpn = [\"imap\"]"));
    assert_eq!(
        parse(&imap).unwrap().listeners[0]
            .tls
            .as_ref()
            .unwrap()
            .alpn,
        ["imap"]
    );
    let fwd = format!(
        "{ONE_CERT}\n[listener.tls.client_auth]\nca_file = \"c.pem\"\nforward_header = \"X-C\""
    );
    let e = err(&text.replace(ONE_CERT, &fwd));
    assert!(
        e.contains("forward_header applies only to protocol = \"http\""),
        "{e}"
    );
}

#[test]
fn listener_tls_shape_errors_point_at_their_place() {
    let cases: &[(&str, &str)] = &[
        ("certificates = []", ":7:16: certificates must list at least one"),
        ("certificates = [ { cert = \"a.pem\" } ]", ":7:18: missing field `key`"),
        (
            "certificates = [ { cert = \"a.pem\", key = \"k\", chain = \"c\" } ]",
            ":7:47: unknown field `chain`",
        ),
        ("certificates = [ { cert = \"\", key = \"k\" } ]", ":7:27: cert must name a file"),
        (&format!("{ONE_CERT}\nciphers = \"x\""), ":8:1: unknown field `ciphers`"),
        (&format!("{ONE_CERT}\nmin_version = \"1.1\""), ":8:15: unknown min_version \"1.1\""),
        (&format!("{ONE_CERT}\nalpn = [\"spdy/3\"]"), ":8:9: alpn protocol \"spdy/3\" cannot be served"),
        (&format!("{ONE_CERT}\nalpn = [\"h2\", \"h2\"]"), ":8:15: alpn protocol \"h2\" is listed twice"),
        (&format!("{ONE_CERT}\nhandshake_timeout = \"0s\""), ":8:21: handshake_timeout must be greater than zero"),
        (&format!("{ONE_CERT}\nsession_cache = -1"), ":8:17: session_cache must be between 0"),
        (
            &format!("{ONE_CERT}\n[listener.tls.client_auth]\nca_file = \"c.pem\"\nmode = \"maybe\""),
            ":10:8: unknown client_auth mode \"maybe\", expected one of `require`, `optional`",
        ),
        (
            &format!("{ONE_CERT}\n[listener.tls.client_auth]\nmode = \"require\""),
            ":8:1: missing field `ca_file`",
        ),
        (
            &format!("{ONE_CERT}\n[listener.tls.client_auth]\nca_file = \"c.pem\"\nforward_header = \"Host\""),
            ":10:18: forward_header \"host\" is reserved",
        ),
        (
            &format!("{ONE_CERT}\n[listener.tls.client_auth]\nca_file = \"c.pem\"\nforward_header = \"bad header\""),
            ":10:18: forward_header \"bad header\" is not a valid header name",
        ),
    ];
    for (body, want) in cases {
        let e = err(&http_tls(body));
        assert!(e.starts_with(FILE), "{e}");
        assert!(e.contains(want), "for {body:?}\n  got  {e}\n  want {want}");
    }
}

fn pool_tls(tls: &str) -> String {
    format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nservers = [ {{ addr = \"127.0.0.1:9001\" }} ]\ntls = {tls}\n"
    )
}

#[test]
fn upstream_tls_defaults_and_errors() {
    let cfg = parse(&pool_tls("{}")).unwrap();
    let t = cfg.pools[0].tls.as_ref().expect("pool tls");
    assert!(t.verify);
    assert_eq!((t.ca_file.as_ref(), t.sni.as_ref()), (None, None));
    assert!(t.client_cert.is_none());
    assert_eq!(t.at.location.line, 9);

    let cfg = parse(&pool_tls(
        "{ ca_file = \"ca.pem\", sni = \"App.Internal\", cert = \"c.pem\", key = \"c.key\" }",
    ))
    .unwrap();
    let t = cfg.pools[0].tls.as_ref().unwrap();
    assert_eq!(t.ca_file, Some(PathBuf::from("/etc/fulcrum/ca.pem")));
    assert_eq!(t.sni.as_deref(), Some("app.internal"));
    let cc = t.client_cert.as_ref().unwrap();
    assert_eq!(cc.key, PathBuf::from("/etc/fulcrum/c.key"));

    let cfg = parse(&pool_tls("{ verify = false }")).unwrap();
    assert!(!cfg.pools[0].tls.as_ref().unwrap().verify);

    for (tls, want) in [
        (
            "{ verify = false, ca_file = \"ca.pem\" }",
            ":9:35: ca_file has no effect with verify = false",
        ),
        ("{ cert = \"c.pem\" }", ":9:16: cert needs key"),
        ("{ key = \"c.key\" }", ":9:15: key needs cert"),
        (
            "{ sni = \"not a name\" }",
            ":9:15: sni \"not a name\" is not a valid DNS name",
        ),
        ("{ verify = \"no\" }", ":9:18: invalid type"),
        ("{ ciphers = [] }", ":9:9: unknown field `ciphers`"),
    ] {
        let e = err(&pool_tls(tls));
        assert!(e.contains(want), "for {tls}\n  got  {e}\n  want {want}");
    }
}

fn tcp_routes(extra: &str, routes: &str) -> String {
    format!(
        "[[listener]]\nname = \"sni\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n{extra}\nroute_by_sni = {routes}\n{}",
        pools()
    )
}

#[test]
fn route_by_sni_and_its_default() {
    let routes = "{ \"a.example\" = \"pool_a\", \"*.B.example\" = \"pool_b\" }";
    let cfg = parse(&tcp_routes("pool = \"app\"", routes)).unwrap();
    let l = &cfg.listeners[0];
    let r = l.sni_routes.as_ref().expect("routes");
    assert_eq!(
        r.routes,
        [
            (SniPattern::Exact("a.example".into()), Arc::from("pool_a")),
            (SniPattern::Suffix(".b.example".into()), Arc::from("pool_b")),
        ]
    );
    assert_eq!(
        r.default_pool.as_deref(),
        Some("app"),
        "pool is the default"
    );
    assert_eq!(l.pool.as_deref(), Some("app"));

    let cfg = parse(&tcp_routes("default_pool = \"pool_b\"", routes)).unwrap();
    let l = &cfg.listeners[0];
    assert_eq!(
        l.sni_routes.as_ref().unwrap().default_pool.as_deref(),
        Some("pool_b")
    );
    assert_eq!(l.pool.as_deref(), Some("pool_b"));

    let cfg = parse(&tcp_routes("", routes)).unwrap();
    let l = &cfg.listeners[0];
    assert_eq!(
        l.sni_routes.as_ref().unwrap().default_pool,
        None,
        "no default: close"
    );
    assert_eq!(l.pool, None, "no default pool");
}

#[test]
fn route_by_sni_errors() {
    let ok = "{ \"a.example\" = \"pool_a\" }";
    let cases: Vec<(String, &str)> = vec![
        (
            tcp_routes("pool = \"app\"\ndefault_pool = \"pool_a\"", ok),
            ":6:16: set either pool or default_pool",
        ),
        (
            tcp_routes("", "{ \"a.example\" = \"nope\" }"),
            ":6:32: listener \"sni\" names pool \"nope\", which is not defined",
        ),
        (
            tcp_routes("default_pool = \"nope\"", ok),
            ":5:16: listener \"sni\" names pool \"nope\"",
        ),
        (
            tcp_routes("", "{}"),
            ":6:16: route_by_sni must list at least one",
        ),
        (
            tcp_routes("", "{ \"a b\" = \"pool_a\" }"),
            ":6:18: route_by_sni name \"a b\" is invalid",
        ),
        (
            tcp_routes("", "{ \"a.*.example\" = \"pool_a\" }"),
            ":6:18: route_by_sni name \"a.*.example\" is invalid",
        ),
        (
            tcp_routes(
                "",
                "{ \"a.example\" = \"pool_a\", \"A.EXAMPLE\" = \"pool_b\" }",
            ),
            "is listed twice (names are case-insensitive; first at line 6)",
        ),
        (
            tcp_routes("pool = \"app\"", ok).replace("protocol = \"tcp\"", "protocol = \"http\""),
            ":6:16: route_by_sni applies only to protocol = \"tcp\"",
        ),
        (
            format!(
                "[[listener]]\nname = \"sni\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n\
                 route_by_sni = {ok}\n[listener.tls]\n{ONE_CERT}\n{}",
                pools()
            ),
            ":6:1: route_by_sni relays TLS untouched",
        ),
        (
            http_tls(ONE_CERT).replace(
                "pool = \"app\"\n[listener.tls]",
                "default_pool = \"app\"\n[listener.tls]",
            ),
            ":5:16: default_pool applies only with route_by_sni",
        ),
        (
            http_tls(ONE_CERT).replace("pool = \"app\"\n[listener.tls]", "[listener.tls]"),
            ":2:8: listener \"web\" needs `pool`",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "for\n{text}\n  got  {e}\n  want {want}");
    }
}

#[test]
fn features_not_served_yet_are_refused_by_parse() {
    let path = Path::new(FILE);
    let served = crate::tls::SERVED;
    let r = crate::config::parse(&http_tls(ONE_CERT), path);
    match (served.listener_tls, r) {
        (true, r) => assert!(r.is_ok(), "{r:?}"),
        (false, r) => {
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains(":6:1: listener.tls: TLS termination is not supported yet"),
                "{e}"
            );
        }
    }
    let r = crate::config::parse(&pool_tls("{}"), path);
    match (served.upstream_tls, r) {
        (true, r) => assert!(r.is_ok(), "{r:?}"),
        (false, r) => {
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains(":9:7: pool tls: TLS towards servers is not supported yet"),
                "{e}"
            );
        }
    }
    let r = crate::config::parse(
        &tcp_routes("pool = \"app\"", "{ \"a.example\" = \"pool_a\" }"),
        path,
    );
    match (served.sni_routing, r) {
        (true, r) => assert!(r.is_ok(), "{r:?}"),
        (false, r) => {
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains(":6:16: route_by_sni: SNI routing is not supported yet"),
                "{e}"
            );
        }
    }
}
