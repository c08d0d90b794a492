//! Tests of the ClientHello SNI reader: real ClientHellos from rustls, hand-made edge cases,
//! and properties (never panics; any split or re-fragmentation reads the same).

use std::sync::Arc;

use proptest::prelude::*;
use rustls::pki_types::ServerName;

use super::*;

/// The first flight of a rustls client for `name` (a ClientHello in one record).
fn real_hello(name: &str) -> Vec<u8> {
    let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("default versions are valid")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = ServerName::try_from(name.to_string()).expect("valid test name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).expect("client starts");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// Re-frames one record's handshake payload into records cut at `cuts` (offsets into it).
fn refragment(hello: &[u8], cuts: &[usize]) -> Vec<u8> {
    let payload = &hello[5..];
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % payload.len())
        .filter(|&c| c > 0)
        .collect();
    points.push(payload.len());
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for to in points {
        let part = &payload[from..to];
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(part.len() as u16).to_be_bytes());
        out.extend_from_slice(part);
        from = to;
    }
    out
}

/// A minimal ClientHello record with the given extensions block (None: no extensions).
fn hand_hello(extensions: Option<&[u8]>) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    if let Some(e) = extensions {
        body.extend_from_slice(&(e.len() as u16).to_be_bytes());
        body.extend_from_slice(e);
    }
    let mut hs = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name);
    let mut list = (entry.len() as u16).to_be_bytes().to_vec();
    list.extend_from_slice(&entry);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(list.len() as u16).to_be_bytes());
    ext.extend_from_slice(&list);
    ext
}

#[test]
fn reads_the_name_of_a_real_client_hello() {
    let hello = real_hello("a.example");
    assert_eq!(
        client_hello_sni(&hello).unwrap().as_deref(),
        Some("a.example")
    );
    assert!(matches!(
        client_hello_sni(&hello),
        Ok(Some(Cow::Borrowed(_)))
    ));
}

#[test]
fn every_prefix_needs_more() {
    let hello = real_hello("svc.b.example");
    for k in 0..hello.len() {
        assert_eq!(
            client_hello_sni(&hello[..k]),
            Err(SniError::NeedMore),
            "prefix of {k} bytes"
        );
    }
}

#[test]
fn a_hello_over_several_records_reads_the_same() {
    let hello = real_hello("a.example");
    let split = refragment(&hello, &[1, 3, 100, 101]);
    assert_eq!(
        client_hello_sni(&split).unwrap().as_deref(),
        Some("a.example")
    );
    for k in 0..split.len() {
        assert_eq!(
            client_hello_sni(&split[..k]),
            Err(SniError::NeedMore),
            "{k}"
        );
    }
}

#[test]
fn not_tls_and_malformed() {
    assert_eq!(
        client_hello_sni(b"GET / HTTP/1.1\r\n"),
        Err(SniError::NotTls)
    );
    assert_eq!(client_hello_sni(b"\x16\x02"), Err(SniError::NotTls));
    assert_eq!(
        client_hello_sni(b"\x80\x2e\x01"),
        Err(SniError::NotTls),
        "SSLv2"
    );
    assert_eq!(client_hello_sni(b""), Err(SniError::NeedMore));
    assert!(matches!(
        client_hello_sni(&[0x16, 3, 1, 0, 0]),
        Err(SniError::Malformed(_))
    ));
    // A ServerHello (type 2) is not a ClientHello.
    assert!(matches!(
        client_hello_sni(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0]),
        Err(SniError::Malformed(_))
    ));
    // An alert record after the first fragment.
    let hello = real_hello("a.example");
    let mut split = refragment(&hello, &[10]);
    let second = 5 + 10;
    split[second] = 0x15;
    assert!(matches!(
        client_hello_sni(&split),
        Err(SniError::Malformed(_))
    ));
}

#[test]
fn no_extensions_or_no_sni_is_none() {
    assert_eq!(client_hello_sni(&hand_hello(None)), Ok(None));
    let other_ext = [0x00, 0x0b, 0x00, 0x02, 0x01, 0x00];
    assert_eq!(client_hello_sni(&hand_hello(Some(&other_ext))), Ok(None));
    assert_eq!(
        client_hello_sni(&hand_hello(Some(&sni_ext(b"x.example."))))
            .unwrap()
            .as_deref(),
        Some("x.example"),
        "a final dot is cut"
    );
    assert!(matches!(
        client_hello_sni(&hand_hello(Some(&sni_ext(b"bad name")))),
        Err(SniError::Malformed(_))
    ));
}

#[test]
fn a_huge_hello_is_too_large_without_waiting_for_it() {
    let mut rec = vec![0x16, 3, 1, 0x40, 0x00, 0x01, 0x00, 0xff, 0xff];
    rec.extend_from_slice(&[0; 100]);
    assert_eq!(client_hello_sni(&rec), Err(SniError::TooLarge));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = client_hello_sni(&bytes);
    }

    #[test]
    fn never_panics_behind_a_valid_header(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut bytes = vec![0x16, 3, 1, (tail.len() >> 8) as u8, tail.len() as u8];
        bytes.extend_from_slice(&tail);
        let _ = client_hello_sni(&bytes);
        if tail.len() >= 4 {
            bytes[5] = 1;
            let _ = client_hello_sni(&bytes);
        }
    }

    #[test]
    fn any_fragmentation_reads_the_same(cuts in proptest::collection::vec(0usize..4096, 0..8)) {
        let hello = real_hello("p.example");
        let split = refragment(&hello, &cuts);
        let name = client_hello_sni(&split).unwrap().map(Cow::into_owned);
        prop_assert_eq!(name.as_deref(), Some("p.example"));
    }
}
