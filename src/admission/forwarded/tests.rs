use super::*;
use http::HeaderValue;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn trusted(items: &[&str]) -> CidrSet {
    CidrSet::parse(items).unwrap()
}

fn headers(name: &str, values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn client(h: &HeaderMap, kind: ClientHeader, t: &CidrSet) -> Option<(String, String)> {
    from_headers(h, kind, t).map(|f| (f.client.ip().to_string(), f.chain.to_string()))
}

#[test]
fn nodes() {
    assert_eq!(parse_node(b"1.2.3.4"), Hop::Addr(ip("1.2.3.4"), None));
    assert_eq!(
        parse_node(b"1.2.3.4:80"),
        Hop::Addr(ip("1.2.3.4"), Some(80))
    );
    assert_eq!(parse_node(b"::1"), Hop::Addr(ip("::1"), None));
    assert_eq!(parse_node(b"[::1]"), Hop::Addr(ip("::1"), None));
    assert_eq!(
        parse_node(b"[2001:db8::1]:4711"),
        Hop::Addr(ip("2001:db8::1"), Some(4711))
    );
    assert_eq!(
        parse_node(b"[::1]:_p"),
        Hop::Addr(ip("::1"), None),
        "obfuscated port"
    );
    for bad in [
        &b"unknown"[..],
        b"_hidden",
        b"1.2.3.4:99999",
        b"1.2.3.4:",
        b"[::1",
        b"[::1]x",
        b"example.com",
        b"1.2.3.4:+1",
        b"\xff",
    ] {
        assert_eq!(
            parse_node(bad),
            Hop::Unknown,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn rightmost_untrusted_across_every_instance() {
    let t = trusted(&["10.0.0.0/8"]);
    let h = headers(
        "x-forwarded-for",
        &["6.6.6.6, 1.2.3.4", "10.0.0.2 ,10.0.0.3"],
    );
    assert_eq!(
        client(&h, ClientHeader::XForwardedFor, &t),
        Some(("1.2.3.4".into(), "1.2.3.4, 10.0.0.2, 10.0.0.3".into())),
        "the spoofable left part (6.6.6.6) is dropped"
    );
    // All trusted: the left-most.
    let h = headers("x-forwarded-for", &["10.0.0.9, 10.0.0.2"]);
    assert_eq!(
        client(&h, ClientHeader::XForwardedFor, &t),
        Some(("10.0.0.9".into(), "10.0.0.9, 10.0.0.2".into()))
    );
    // An unreadable hop stops the walk at the trusted hop to its right.
    let h = headers("x-forwarded-for", &["1.2.3.4, garbage, 10.0.0.2"]);
    assert_eq!(
        client(&h, ClientHeader::XForwardedFor, &t),
        Some(("10.0.0.2".into(), "10.0.0.2".into()))
    );
    // Unreadable right end: nothing usable.
    let h = headers("x-forwarded-for", &["1.2.3.4, unknown"]);
    assert_eq!(client(&h, ClientHeader::XForwardedFor, &t), None);
    // Empty elements are ignored; mapped addresses come out as IPv4.
    let h = headers("x-forwarded-for", &[", ::ffff:1.2.3.4 ,,"]);
    assert_eq!(
        client(&h, ClientHeader::XForwardedFor, &t),
        Some(("1.2.3.4".into(), "1.2.3.4".into()))
    );
    assert_eq!(
        client(&HeaderMap::new(), ClientHeader::XForwardedFor, &t),
        None
    );
    // The other headers are not read when XFF is the configured one.
    let h = headers("forwarded", &["for=1.2.3.4"]);
    assert_eq!(client(&h, ClientHeader::XForwardedFor, &t), None);
}

#[test]
fn rfc7239_for_quoted_bracketed_ports_and_obfuscated() {
    let t = trusted(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
    let h = headers(
        "forwarded",
        &[
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            "For=\"[2001:db8:cafe::17]:4711\", for=10.0.0.1;host=\"a,b;c\"",
        ],
    );
    let f = from_headers(&h, ClientHeader::Forwarded, &t).unwrap();
    assert_eq!(f.client, "[2001:db8:cafe::17]:4711".parse().unwrap());
    assert!(f.has_port);
    assert_eq!(f.chain.to_string(), "2001:db8:cafe::17, 10.0.0.1");
    assert_eq!(
        f.chain.rfc7239().to_string(),
        "for=\"[2001:db8:cafe::17]\", for=10.0.0.1"
    );
    // Obfuscated and unknown identifiers end the walk; an element without for= too.
    let h = headers("forwarded", &["for=1.2.3.4, for=_hidden, for=10.0.0.1"]);
    assert_eq!(
        client(&h, ClientHeader::Forwarded, &t),
        Some(("10.0.0.1".into(), "10.0.0.1".into()))
    );
    let h = headers("forwarded", &["for=1.2.3.4, by=10.0.0.5"]);
    assert_eq!(client(&h, ClientHeader::Forwarded, &t), None);
    let h = headers("forwarded", &["for=\"1.2.3.4\\\"\""]);
    assert_eq!(
        client(&h, ClientHeader::Forwarded, &t),
        None,
        "escaped quote inside"
    );
    let h = headers("forwarded", &["proto=https;for=\"1.2.3.4:_x\""]);
    assert_eq!(
        from_headers(&h, ClientHeader::Forwarded, &t).map(|f| (f.client, f.has_port)),
        Some(("1.2.3.4:0".parse().unwrap(), false))
    );
}

#[test]
fn x_real_ip_and_the_hop_bound() {
    let t = trusted(&["10.0.0.0/8"]);
    let h = headers("x-real-ip", &["198.51.100.7"]);
    assert_eq!(
        client(&h, ClientHeader::XRealIp, &t),
        Some(("198.51.100.7".into(), "198.51.100.7".into()))
    );
    // 40 trusted hops: only the last MAX_HOPS are looked at.
    let long: Vec<String> = (0..40).map(|i| format!("10.0.0.{i}")).collect();
    let h = headers("x-forwarded-for", &[&long.join(",")]);
    let f = from_headers(&h, ClientHeader::XForwardedFor, &t).unwrap();
    assert_eq!(f.client.ip(), ip(&format!("10.0.0.{}", 40 - MAX_HOPS)));
    assert_eq!(f.chain.as_slice().len(), MAX_HOPS);
}
