use super::*;
use crate::config::ProxyProtocol;
use crate::proxy::proxy_protocol::header as outbound;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn parsed(src: &str, dst: &str, consumed: usize) -> Parse {
    Parse::Parsed {
        src: Some(sa(src)),
        dst: Some(sa(dst)),
        consumed,
    }
}

#[test]
fn v1_tcp4_tcp6_unknown() {
    let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
    assert_eq!(
        parse(h, Accept::V1),
        parsed("192.0.2.1:56324", "198.51.100.2:443", h.len() - 5)
    );
    let h = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
    assert_eq!(
        parse(h, Accept::Any),
        parsed("[2001:db8::1]:1", "[::1]:65535", h.len())
    );
    let h = b"PROXY UNKNOWN whatever follows\r\nX";
    assert_eq!(
        parse(h, Accept::Any),
        Parse::Parsed {
            src: None,
            dst: None,
            consumed: h.len() - 1
        }
    );
}

#[test]
fn v1_refusals() {
    let bad: &[(&[u8], &str)] = &[
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare LF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "missing port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "extra field"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "double space"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "v6 in TCP4"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v4 in TCP6"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "port too big"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "signed port"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "family"),
        (b"PROXY UNKNOWNX\r\n", "UNKNOWN run into another word"),
    ];
    for (h, why) in bad {
        assert!(
            matches!(parse(h, Accept::V1), Parse::Invalid(Reject::Malformed(_))),
            "{why}: {:?}",
            parse(h, Accept::V1)
        );
    }
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\n", Accept::Any),
        Parse::Invalid(Reject::NotProxy)
    );
    assert_eq!(
        parse(b"PROXX", Accept::V1),
        Parse::Invalid(Reject::NotProxy)
    );
    assert_eq!(parse(b"PRO", Accept::V1), Parse::NeedMore);
    assert_eq!(parse(b"", Accept::V1), Parse::NeedMore);
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
    assert_eq!(parse(&long, Accept::V1), Parse::Invalid(Reject::TooLong));
    assert_eq!(parse(&long[..106], Accept::V1), Parse::NeedMore);
}

#[test]
fn v2_matches_what_our_own_writer_sends() {
    for (src, dst) in [
        ("192.0.2.1:56324", "198.51.100.2:443"),
        ("[2001:db8::1]:1", "[::1]:65535"),
    ] {
        let mut h = outbound(ProxyProtocol::V2, sa(src), sa(dst));
        let n = h.len();
        h.extend_from_slice(b"payload");
        assert_eq!(parse(&h, Accept::V2), parsed(src, dst, n));
        assert_eq!(parse(&h, Accept::Any), parsed(src, dst, n));
        for cut in 0..n {
            assert_eq!(
                parse(&h[..cut], Accept::V2),
                Parse::NeedMore,
                "cut at {cut}"
            );
        }
        let v1 = outbound(ProxyProtocol::V1, sa(src), sa(dst));
        assert_eq!(parse(&v1, Accept::V1), parsed(src, dst, v1.len()));
    }
}

fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(body);
    h
}

#[test]
fn v2_local_unspec_unix_tlvs_and_refusals() {
    let inet = [192, 0, 2, 1, 10, 0, 0, 1, 0x1F, 0x90, 0, 80];
    // LOCAL: addresses ignored.
    let h = v2(0x20, 0x11, &inet);
    assert_eq!(
        parse(&h, Accept::V2),
        Parse::Parsed {
            src: None,
            dst: None,
            consumed: h.len()
        }
    );
    // LOCAL whose family claims addresses it does not carry: the block is discarded.
    let h = v2(0x20, 0x11, &[]);
    assert!(matches!(
        parse(&h, Accept::V2),
        Parse::Parsed {
            src: None,
            consumed: 16,
            ..
        }
    ));
    // UNSPEC with no body.
    let h = v2(0x21, 0x00, &[]);
    assert_eq!(
        parse(&h, Accept::Any),
        Parse::Parsed {
            src: None,
            dst: None,
            consumed: 16
        }
    );
    // AF_UNIX: paths skipped.
    let h = v2(0x21, 0x31, &[0u8; 216]);
    assert!(matches!(
        parse(&h, Accept::V2),
        Parse::Parsed { src: None, .. }
    ));
    // TLVs after the addresses are skipped: ALPN "h2" and a NOOP.
    let mut body = inet.to_vec();
    body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]);
    let h = v2(0x21, 0x11, &body);
    assert_eq!(
        parse(&h, Accept::V2),
        parsed("192.0.2.1:8080", "10.0.0.1:80", h.len())
    );
    // A TLV that runs past the header.
    let mut body = inet.to_vec();
    body.extend_from_slice(&[0x01, 0x00, 0x09, b'h']);
    assert!(matches!(
        parse(&v2(0x21, 0x11, &body), Accept::V2),
        Parse::Invalid(Reject::Malformed(_))
    ));
    for (h, why) in [
        (v2(0x11, 0x11, &inet), "version 1 nibble"),
        (v2(0x22, 0x11, &inet), "command 2"),
        (v2(0x21, 0x12, &inet), "DGRAM"),
        (v2(0x21, 0x41, &inet), "family 4"),
        (v2(0x21, 0x21, &inet), "INET6 with an INET length"),
    ] {
        assert!(
            matches!(parse(&h, Accept::V2), Parse::Invalid(Reject::Malformed(_))),
            "{why}"
        );
    }
    let mut big = V2_SIGNATURE.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
    assert_eq!(parse(&big, Accept::V2), Parse::Invalid(Reject::TooLong));
}

#[test]
fn versions_are_kept_apart() {
    let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
    let v2h = v2(0x21, 0x00, &[]);
    assert_eq!(
        parse(v1, Accept::V2),
        Parse::Invalid(Reject::WrongVersion("v1"))
    );
    assert_eq!(
        parse(&v2h, Accept::V1),
        Parse::Invalid(Reject::WrongVersion("v2"))
    );
    assert_eq!(
        parse(&v2h[..3], Accept::V1),
        Parse::Invalid(Reject::WrongVersion("v2"))
    );
    assert_eq!(Reject::WrongVersion("v2").reason(), "version");
}

proptest! {
    #[test]
    fn never_panics_and_never_claims_more_than_given(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for a in [Accept::V1, Accept::V2, Accept::Any] {
            if let Parse::Parsed { consumed, .. } = parse(&bytes, a) {
                prop_assert!(consumed <= bytes.len());
                prop_assert!(consumed <= MAX_V2_LEN);
            }
        }
    }

    #[test]
    fn every_prefix_of_a_header_needs_more(src in any::<(u32, u16)>(), dst in any::<(u32, u16)>(), v in 0..2) {
        let s = SocketAddr::from((Ipv4Addr::from(src.0), src.1));
        let d = SocketAddr::from((Ipv4Addr::from(dst.0), dst.1));
        let h = outbound(if v == 0 { ProxyProtocol::V1 } else { ProxyProtocol::V2 }, s, d);
        for cut in 0..h.len() {
            prop_assert_eq!(parse(&h[..cut], Accept::Any), Parse::NeedMore);
        }
        prop_assert_eq!(parse(&h, Accept::Any), parsed(&s.to_string(), &d.to_string(), h.len()));
    }
}

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

#[tokio::test]
async fn reader_consumes_exactly_the_header_even_when_it_arrives_in_pieces() {
    for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
        let (mut c, mut s) = pair().await;
        let h = outbound(version, sa("203.0.113.9:4000"), sa("127.0.0.1:80"));
        let writer = tokio::spawn(async move {
            // One byte at a time, then the payload in the same write as the last byte.
            for b in &h[..h.len() - 1] {
                c.write_all(&[*b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            let mut last = vec![h[h.len() - 1]];
            last.extend_from_slice(b"HELLO");
            c.write_all(&last).await.unwrap();
            c
        });
        let got = read_proxy_header(&mut s, Accept::Any, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(got, Some(sa("203.0.113.9:4000")));
        let mut payload = [0u8; 5];
        s.read_exact(&mut payload).await.unwrap();
        assert_eq!(
            &payload, b"HELLO",
            "no payload byte was taken with the header"
        );
        drop(writer.await.unwrap());
    }
}

#[tokio::test]
async fn reader_refuses_garbage_closes_and_silence() {
    let (mut c, mut s) = pair().await;
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let e = read_proxy_header(&mut s, Accept::Any, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "missing");

    let (mut c, mut s) = pair().await;
    c.write_all(b"PROXY TCP4 1.2").await.unwrap();
    drop(c);
    let e = read_proxy_header(&mut s, Accept::Any, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "closed");

    let (_c, mut s) = pair().await;
    let e = read_proxy_header(&mut s, Accept::V1, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "timeout");
}
