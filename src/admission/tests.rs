use std::path::Path;
use std::sync::OnceLock;

use http::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::backend::monotonic_ns as now;
use crate::config::ProxyProtocol;
use crate::proxy::proxy_protocol::header as outbound;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The first listener of a config whose `[[listener]]` table ends with `extra`.
fn listener(protocol: &str, extra: &str) -> ListenerSettings {
    let text = format!(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\npool = \"p\"\n{extra}\n\n[[pool]]\nname = \"p\"\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n"
    );
    crate::config::parse(&text, Path::new("t.toml"))
        .unwrap_or_else(|e| panic!("{e}"))
        .listeners
        .remove(0)
}

fn xff(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
    h
}

#[test]
fn decide_in_order_proxy_header_then_trusted_headers_then_peer() {
    let l = listener(
        "http",
        "trusted_proxies = [\"10.0.0.0/8\"]\naccept_proxy = \"v1\"",
    );
    let s = &l.admission;
    let h = xff("6.6.6.6, 1.2.3.4");

    // An untrusted peer: its PROXY address and its headers are ignored.
    let (c, chain) = decide(sa("192.0.2.1:5000"), Some(sa("7.7.7.7:1")), Some(&h), s);
    assert_eq!(
        (c.addr, c.source, chain.is_empty()),
        (sa("192.0.2.1:5000"), ClientSource::Peer, true)
    );

    // A trusted peer's PROXY header names an untrusted sender: its headers are ignored.
    let (c, chain) = decide(sa("10.0.0.5:5000"), Some(sa("7.7.7.7:1")), Some(&h), s);
    assert_eq!(c.addr, sa("7.7.7.7:1"));
    assert_eq!(c.source, ClientSource::ProxyProtocol);
    assert!(chain.is_empty());
    assert_eq!(c.sender(), sa("7.7.7.7:1"));

    // A trusted peer without PROXY header: the right-most untrusted hop.
    let (c, chain) = decide(sa("10.0.0.5:5000"), None, Some(&h), s);
    assert_eq!(c.ip(), "1.2.3.4".parse::<IpAddr>().unwrap());
    assert_eq!(
        c.source,
        ClientSource::Forwarded(ClientHeader::XForwardedFor)
    );
    assert_eq!(chain.to_string(), "1.2.3.4");
    assert_eq!(
        c.sender(),
        sa("10.0.0.5:5000"),
        "the proxy appends the sender"
    );

    // A PROXY header naming another trusted hop: its headers are believed.
    let (c, _) = decide(sa("10.0.0.5:5000"), Some(sa("10.0.0.7:1")), Some(&h), s);
    assert_eq!(c.ip(), "1.2.3.4".parse::<IpAddr>().unwrap());
    assert_eq!(c.proxied, Some(sa("10.0.0.7:1")));

    // IPv4-mapped peers count as IPv4.
    let (c, _) = decide(sa("[::ffff:10.0.0.5]:5000"), None, Some(&h), s);
    assert_eq!(c.ip(), "1.2.3.4".parse::<IpAddr>().unwrap());
    assert_eq!(
        ClientAddr::from_peer(sa("[::ffff:127.0.0.2]:9")).addr,
        sa("127.0.0.2:9")
    );

    // No trusted proxies at all: headers never read.
    let plain = listener("http", "");
    let (c, _) = decide(sa("10.0.0.5:5000"), None, Some(&h), &plain.admission);
    assert_eq!(c.source, ClientSource::Peer);
}

async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, peer) = l.accept().await.unwrap();
    (c, s, peer)
}

fn scrape(m: &Metrics, family: &str) -> String {
    m.render()
        .lines()
        .filter(|l| l.starts_with(family))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_request_is_decided_as_decide_would_with_or_without_trusted_proxies() {
    let m = Metrics::new();
    let h = xff("6.6.6.6, 1.2.3.4");
    let cases = [
        (sa("192.0.2.1:5000"), None),
        (sa("[::ffff:10.0.0.5]:5000"), None),
        (sa("10.0.0.5:5000"), None),
        (sa("10.0.0.5:5000"), Some(sa("7.7.7.7:1"))),
    ];
    for extra in ["", "trusted_proxies = [\"10.0.0.0/8\"]"] {
        let l = listener("http", extra);
        let a = Admission::new(&l, &m, None);
        for (peer, proxied) in cases {
            // The connection's client, as accept decided it (no headers there).
            let (conn, _) = decide(peer, proxied, None, &l.admission);
            let (got, chain) = a.request(&conn, &OnceLock::new(), &h, now()).unwrap();
            let (want, want_chain) = decide(peer, proxied, Some(&h), &l.admission);
            assert_eq!(got, want, "{extra:?} {peer} {proxied:?}");
            assert_eq!(chain.as_slice(), want_chain.as_slice());
        }
    }
}

#[tokio::test]
async fn accept_reads_the_proxy_header_from_trusted_peers_and_refuses_others() {
    let m = Metrics::new();
    let trusted = listener(
        "tcp",
        "trusted_proxies = [\"127.0.0.1\"]\naccept_proxy = \"any\"",
    );
    let a = Admission::new(&trusted, &m, None);
    let (mut c, mut s, peer) = pair().await;
    let mut h = outbound(
        ProxyProtocol::V2,
        sa("203.0.113.9:4000"),
        sa("127.0.0.1:80"),
    );
    h.extend_from_slice(b"DATA");
    c.write_all(&h).await.unwrap();
    let client = a.accept(&mut s, peer).await.unwrap();
    assert_eq!(client.addr, sa("203.0.113.9:4000"));
    assert_eq!(client.source, ClientSource::ProxyProtocol);
    let mut rest = [0u8; 4];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"DATA");

    // 127.0.0.1 is not in 127.0.0.2/32: refused before reading, and counted.
    let other = listener(
        "tcp",
        "trusted_proxies = [\"127.0.0.2\"]\naccept_proxy = \"v1\"",
    );
    let a = Admission::new(&other, &m, None);
    let (_c, mut s, peer) = pair().await;
    assert!(matches!(
        a.accept(&mut s, peer).await,
        Err(Refused::Untrusted)
    ));
    let text = scrape(&m, "fulcrum_proxy_protocol_rejected_total");
    assert!(
        text.contains(
            "fulcrum_proxy_protocol_rejected_total{listener=\"l\",reason=\"untrusted\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn tcp_access_rules_and_rate_limit_apply_at_accept_and_are_counted() {
    let m = Metrics::new();
    let l = listener("tcp", "deny = [\"127.0.0.0/8\"]");
    let a = Admission::new(&l, &m, None);
    let (_c, mut s, peer) = pair().await;
    assert!(matches!(
        a.accept(&mut s, peer).await,
        Err(Refused::Denied(DenyRule::Deny(_)))
    ));
    assert!(scrape(&m, "fulcrum_access_denied_total")
        .contains("{listener=\"l\",rule=\"deny:127.0.0.0/8\"} 1"));

    let l = listener("tcp", "[listener.rate_limit]\nrate = 0.001\nburst = 2");
    let a = Admission::new(&l, &m, None);
    let mut results = Vec::new();
    for _ in 0..3 {
        let (_c, mut s, peer) = pair().await;
        results.push(a.accept(&mut s, peer).await.is_ok());
    }
    assert_eq!(results, [true, true, false], "burst of 2, then refused");
    assert!(scrape(&m, "fulcrum_rate_limited_total").contains("{listener=\"l\"} 1"));
}

#[test]
fn http_request_stage_limits_per_client_and_survives_a_reload() {
    let m = Metrics::new();
    let l = listener(
        "http",
        "trusted_proxies = [\"127.0.0.1\"]\n[listener.rate_limit]\nrate = 0.001\nburst = 1",
    );
    let a = Admission::new(&l, &m, None);
    let conn = ClientAddr::from_peer(sa("127.0.0.1:5000"));
    let (c, chain) = a
        .request(&conn, &OnceLock::new(), &xff("1.2.3.4"), now())
        .unwrap();
    assert_eq!(c.ip(), "1.2.3.4".parse::<IpAddr>().unwrap());
    assert_eq!(chain.to_string(), "1.2.3.4");
    let e = a
        .request(&conn, &OnceLock::new(), &xff("1.2.3.4"), now())
        .unwrap_err();
    let Refused::RateLimited(r) = e else {
        panic!("{e}")
    };
    assert!(r.secs() >= 1);
    assert!(
        a.request(&conn, &OnceLock::new(), &xff("1.2.3.5"), now())
            .is_ok(),
        "another client is unaffected"
    );

    // A reload with a larger burst keeps the buckets: 1.2.3.4 has one more request.
    let l2 = listener(
        "http",
        "trusted_proxies = [\"127.0.0.1\"]\n[listener.rate_limit]\nrate = 0.001\nburst = 2",
    );
    let b = Admission::new(&l2, &m, Some(&a));
    assert!(Arc::ptr_eq(b.limiter().unwrap(), a.limiter().unwrap()));
    assert!(b
        .request(&conn, &OnceLock::new(), &xff("1.2.3.4"), now())
        .is_ok());
    assert!(b
        .request(&conn, &OnceLock::new(), &xff("1.2.3.4"), now())
        .is_err());
}

#[test]
fn http_allow_list_answers_by_the_decided_client() {
    let m = Metrics::new();
    let l = listener("http", "allow = [\"127.0.0.1/32\"]");
    let a = Admission::new(&l, &m, None);
    assert!(a
        .request(
            &ClientAddr::from_peer(sa("127.0.0.1:1")),
            &OnceLock::new(),
            &HeaderMap::new(),
            now(),
        )
        .is_ok());
    let e = a
        .request(
            &ClientAddr::from_peer(sa("127.0.0.2:1")),
            &OnceLock::new(),
            &HeaderMap::new(),
            now(),
        )
        .unwrap_err();
    assert!(matches!(e, Refused::Denied(DenyRule::NotAllowed)));
    assert!(scrape(&m, "fulcrum_access_denied_total").contains("rule=\"allow:unlisted\"} 1"));
}
