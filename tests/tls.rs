//! The tls module alone, over loopback: certificate choice by SNI, ALPN, refused versions
//! and plain HTTP, client certificates, resumption (also across a reload), loading errors,
//! upstream TLS, and the SNI peek of passthrough routing. Certificates are made at test time.

#[path = "common/tls.rs"]
mod tls_support;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fulcrum::config::{ClientAuthMode, TlsVersion};
use fulcrum::tls::{self, Alpn, ClientTls, HandshakeReason, Negotiated, ServerTls, TlsErrorKind};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, HandshakeKind, ServerConfig};
use tls_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

const T: Duration = Duration::from_secs(5);

type Served = JoinHandle<Vec<Result<Negotiated, tls::HandshakeError>>>;

/// Accepts `n` connections with `tls::accept`; each that succeeds is sent "ok" and closed.
async fn serve(cfg: Arc<ServerConfig>, n: usize) -> (SocketAddr, Served) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = l.local_addr().expect("bound address");
    let h = tokio::spawn(async move {
        let mut out = Vec::new();
        for _ in 0..n {
            let (s, _) = l.accept().await.expect("accept");
            out.push(match tls::accept(s, &cfg, T).await {
                Ok((mut tls, neg)) => {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                    Ok(neg)
                }
                Err(e) => Err(e),
            });
        }
        out
    });
    (addr, h)
}

/// What a client saw of one connection.
struct Seen {
    cert: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    kind: Option<HandshakeKind>,
    body: Vec<u8>,
}

/// Connects with `client` to `addr` as `sni` and reads until the server closes.
async fn talk(addr: SocketAddr, client: &Arc<ClientConfig>, sni: &str) -> io::Result<Seen> {
    let s = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(client.clone())
        .connect(name(sni), s)
        .await?;
    let (_, conn) = tls.get_ref();
    let cert = conn.peer_certificates().expect("server sent a chain")[0].clone();
    let (alpn, kind) = (
        conn.alpn_protocol().map(<[u8]>::to_vec),
        conn.handshake_kind(),
    );
    let mut body = Vec::new();
    tokio::time::timeout(T, tls.read_to_end(&mut body))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok(Seen {
        cert,
        alpn,
        kind,
        body,
    })
}

/// One handshake against a fresh server; returns the client's view and the server's result.
async fn once(
    cfg: &ServerTls,
    client: &Arc<ClientConfig>,
    sni: &str,
) -> (io::Result<Seen>, Result<Negotiated, tls::HandshakeError>) {
    let (addr, h) = serve(cfg.server_config().clone(), 1).await;
    let seen = talk(addr, client, sni).await;
    let mut server = h.await.expect("server task");
    (seen, server.remove(0))
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Three certificates: a.example (default, also 127.0.0.1), b.example, *.w.example.
fn three(ca: &Ca, d: &Path) -> (Vec<Leaf>, fulcrum::config::ListenerTls) {
    let leaves = vec![
        ca.leaf(&["a.example", "127.0.0.1"]),
        ca.leaf(&["b.example"]),
        ca.leaf(&["*.w.example"]),
    ];
    let files = leaves
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (c, k) = l.write(d, &format!("c{i}"));
            files(c, k, 10 + i)
        })
        .collect();
    (leaves, listener_tls(files))
}

#[tokio::test]
async fn sni_picks_exact_names_then_wildcards_and_the_default_otherwise() {
    let (ca, d) = (Ca::new("ca"), dir());
    let (leaves, settings) = three(&ca, d.path());
    let cfg = ServerTls::load("web", &settings).expect("loads");
    let any = Arc::new(insecure_client(&[]));
    for (sni, want, what) in [
        ("a.example", 0, "exact a"),
        ("B.Example", 1, "exact b, any case"),
        ("x.w.example", 2, "wildcard"),
        ("y.x.w.example", 0, "a wildcard covers one label: default"),
        ("unknown.example", 0, "unknown: default"),
        ("127.0.0.1", 0, "no SNI (an IP sends none): default"),
    ] {
        let (seen, server) = once(&cfg, &any, sni).await;
        let seen = seen.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(seen.cert, leaves[want].der, "{what}");
        assert_eq!(seen.body, b"ok", "{what}");
        let neg = server.expect("server side succeeds");
        let want_sni = (sni != "127.0.0.1").then(|| sni.to_ascii_lowercase());
        assert_eq!(neg.sni, want_sni, "{what}: SNI seen by the server");
    }
    // A verifying client accepts what it is given.
    let (seen, _) = once(&cfg, &Arc::new(client(&ca, &[])), "b.example").await;
    assert_eq!(seen.expect("verifies").body, b"ok");
}

#[tokio::test]
async fn sni_strict_refuses_missing_and_unknown_names() {
    let (ca, d) = (Ca::new("ca"), dir());
    let (_, mut settings) = three(&ca, d.path());
    settings.sni_strict = true;
    let cfg = ServerTls::load("web", &settings).expect("loads");
    let any = Arc::new(insecure_client(&[]));
    let (seen, server) = once(&cfg, &any, "x.w.example").await;
    assert_eq!(seen.expect("known name is served").body, b"ok");
    assert!(server.is_ok());
    for sni in ["unknown.example", "127.0.0.1"] {
        let (seen, server) = once(&cfg, &any, sni).await;
        let e = seen.err().expect("client refused");
        assert!(
            e.to_string().contains("UnrecognisedName"),
            "{sni}: client saw {e}"
        );
        let e = server.expect_err("server refused");
        assert_eq!(e.reason(), "unknown_sni", "{sni}");
        assert_eq!(e.kind(), HandshakeReason::UnknownSni);
    }
}

#[tokio::test]
async fn alpn_picks_h2_or_http11_per_client() {
    let (ca, d) = (Ca::new("ca"), dir());
    let (_, settings) = three(&ca, d.path());
    let cfg = ServerTls::load("web", &settings).expect("loads");
    for (offer, want_client, want) in [
        (&["h2", "http/1.1"][..], Some(&b"h2"[..]), Alpn::H2),
        (&["http/1.1"][..], Some(&b"http/1.1"[..]), Alpn::Http11),
        (&[][..], None, Alpn::Absent),
    ] {
        let c = Arc::new(client(&ca, offer));
        let (seen, server) = once(&cfg, &c, "a.example").await;
        assert_eq!(
            seen.expect("handshake").alpn.as_deref(),
            want_client,
            "{offer:?}"
        );
        assert_eq!(server.expect("server side").alpn, want, "{offer:?}");
    }
    let (seen, server) = once(&cfg, &Arc::new(client(&ca, &["spdy/3"])), "a.example").await;
    assert!(seen.is_err(), "no protocol in common");
    assert_eq!(server.expect_err("refused").reason(), "no_alpn");
}

/// A ClientHello that offers TLS 1.1 only (legacy_version 0x0302, no supported_versions),
/// with these cipher suites.
fn tls11_client_hello(suites: &[u16]) -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0); // no session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

/// Sends raw bytes to a fresh server and returns what came back before it closed.
async fn raw(cfg: &ServerTls, bytes: &[u8]) -> (Vec<u8>, Result<Negotiated, tls::HandshakeError>) {
    let (addr, h) = serve(cfg.server_config().clone(), 1).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("send");
    let mut back = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut back)).await;
    let mut server = h.await.expect("server task");
    (back, server.remove(0))
}

#[tokio::test]
async fn tls11_and_plain_http_are_refused_and_named() {
    let (ca, d) = (Ca::new("ca"), dir());
    let (_, settings) = three(&ca, d.path());
    let cfg = ServerTls::load("web", &settings).expect("loads");

    // As a real TLS 1.1 client sends it: CBC suites (ECDHE-RSA-AES128-SHA, AES128-SHA).
    let (back, server) = raw(&cfg, &tls11_client_hello(&[0xc013, 0x002f])).await;
    let e = server.expect_err("refused");
    assert_eq!(e.reason(), "protocol_version", "{e}");
    assert_eq!(
        back.first(),
        Some(&0x15),
        "an alert record came back: {back:?}"
    );
    // The same with a suite of ours (ECDHE-ECDSA-AES128-GCM-SHA256): only the version is wrong.
    let (back, server) = raw(&cfg, &tls11_client_hello(&[0xc02b])).await;
    let e = server.expect_err("refused");
    assert_eq!(e.reason(), "protocol_version", "{e}");
    assert_eq!(
        back.first(),
        Some(&0x15),
        "an alert record came back: {back:?}"
    );
    assert_eq!(back.get(5), Some(&2), "a fatal alert: {back:?}");

    let (_, server) = raw(&cfg, b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_eq!(server.expect_err("refused").reason(), "not_tls");

    // TLS 1.2 against min_version = "1.3".
    let mut only13 = settings.clone();
    only13.min_version = TlsVersion::V1_3;
    let cfg13 = ServerTls::load("web", &only13).expect("loads");
    let mut c12 = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls 1.2")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    c12.alpn_protocols = vec![];
    let (seen, server) = once(&cfg13, &Arc::new(c12.clone()), "a.example").await;
    assert!(seen.is_err());
    assert_eq!(server.expect_err("refused").reason(), "protocol_version");
    // ... which the default (1.2) listener serves.
    let (seen, server) = once(&cfg, &Arc::new(c12), "a.example").await;
    assert_eq!(seen.expect("tls 1.2 served").body, b"ok");
    assert_eq!(server.expect("served").version, "TLSv1.2");
}

#[tokio::test]
async fn a_handshake_that_never_comes_times_out() {
    let (ca, d) = (Ca::new("ca"), dir());
    let (_, settings) = three(&ca, d.path());
    let cfg = ServerTls::load("web", &settings).expect("loads");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let _idle = TcpStream::connect(addr).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    let e = tls::accept(s, cfg.server_config(), Duration::from_millis(100))
        .await
        .expect_err("nothing was sent");
    assert_eq!(e.reason(), "timeout");
    drop(_idle);
    let c = TcpStream::connect(addr).await.unwrap();
    drop(c);
    let (s, _) = l.accept().await.unwrap();
    let e = tls::accept(s, cfg.server_config(), T)
        .await
        .expect_err("closed");
    assert_eq!(e.reason(), "eof");
}

#[path = "tls/mtls_and_upstream.rs"]
mod mtls_and_upstream;

#[path = "tls/loading.rs"]
mod loading;

#[path = "tls/passthrough.rs"]
mod passthrough;
