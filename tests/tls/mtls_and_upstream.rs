//! Client certificates (mTLS) on a listener, session resumption, and upstream TLS
//! (`ClientTls` + `tls::connect`) against a `tls::accept` server.

use super::*;

fn mtls_server(ca: &Ca, d: &Path, mode: ClientAuthMode) -> ServerTls {
    let (_, mut settings) = three(ca, d);
    settings.client_auth = Some(client_auth(ca.write(d, "client-ca"), mode));
    ServerTls::load("web", &settings).expect("loads")
}

#[tokio::test]
async fn mtls_require_refuses_no_certificate_and_admits_a_valid_one() {
    let (ca, d) = (Ca::new("ca"), dir());
    let cfg = mtls_server(&ca, d.path(), ClientAuthMode::Require);

    let (seen, server) = once(&cfg, &Arc::new(client(&ca, &[])), "a.example").await;
    assert!(
        seen.map(|s| s.body).unwrap_or_default().is_empty(),
        "no data without a certificate"
    );
    assert_eq!(
        server.expect_err("refused").reason(),
        "no_client_certificate"
    );

    let alice = ca.issue(&LeafSpec {
        names: &["alice.example", "spiffe://example/alice"],
        cn: Some("alice"),
        ..LeafSpec::default()
    });
    let (seen, server) = once(
        &cfg,
        &Arc::new(client_with_cert(&ca, &alice, &[])),
        "a.example",
    )
    .await;
    assert_eq!(seen.expect("admitted").body, b"ok");
    let neg = server.expect("admitted");
    assert_eq!(
        neg.client_cert.as_deref(),
        Some("Subject=\"CN=alice\";DNS=alice.example;URI=spiffe://example/alice"),
        "the forwarded description"
    );
    assert!(http::HeaderValue::from_str(neg.client_cert.as_deref().unwrap()).is_ok());

    // A certificate from another CA is refused as bad.
    let stranger = Ca::new("stranger").leaf(&["mallory.example"]);
    let (seen, server) = once(
        &cfg,
        &Arc::new(client_with_cert(&ca, &stranger, &[])),
        "a.example",
    )
    .await;
    assert!(seen.map(|s| s.body).unwrap_or_default().is_empty());
    assert_eq!(server.expect_err("refused").reason(), "bad_certificate");
}

#[tokio::test]
async fn mtls_optional_admits_both() {
    let (ca, d) = (Ca::new("ca"), dir());
    let cfg = mtls_server(&ca, d.path(), ClientAuthMode::Optional);
    let (seen, server) = once(&cfg, &Arc::new(client(&ca, &[])), "a.example").await;
    assert_eq!(seen.expect("admitted").body, b"ok");
    assert_eq!(server.expect("admitted").client_cert, None);
    let bob = ca.leaf(&["bob.example"]);
    let (seen, server) = once(
        &cfg,
        &Arc::new(client_with_cert(&ca, &bob, &[])),
        "a.example",
    )
    .await;
    assert_eq!(seen.expect("admitted").body, b"ok");
    assert_eq!(
        server.expect("admitted").client_cert.as_deref(),
        Some("Subject=\"CN=bob.example\";DNS=bob.example")
    );
}

/// Two connections of one client (same session store); returns the second's kinds.
async fn twice(cfg: &ServerTls, c: &Arc<ClientConfig>) -> (Option<HandshakeKind>, bool) {
    let (addr, h) = serve(cfg.server_config().clone(), 2).await;
    let first = talk(addr, c, "a.example").await.expect("first");
    assert_eq!(first.kind, Some(HandshakeKind::Full));
    let second = talk(addr, c, "a.example").await.expect("second");
    let server = h.await.expect("server task");
    assert!(!server[0].as_ref().expect("first served").resumed);
    (
        second.kind,
        server[1].as_ref().expect("second served").resumed,
    )
}

#[tokio::test]
async fn sessions_resume_by_ticket_and_by_cache() {
    let (ca, d) = (Ca::new("ca"), dir());
    let (_, settings) = three(&ca, d.path());
    for (tickets, cache, what) in [(true, 20_000, "tickets"), (false, 100, "cache only")] {
        let mut s = settings.clone();
        s.session_tickets = tickets;
        s.session_cache = cache;
        let cfg = ServerTls::load("web", &s).expect("loads");
        let c = Arc::new(client(&ca, &[]));
        assert_eq!(
            twice(&cfg, &c).await,
            (Some(HandshakeKind::Resumed), true),
            "{what}"
        );
    }
    let mut off = settings.clone();
    off.session_tickets = false;
    off.session_cache = 0;
    let cfg = ServerTls::load("web", &off).expect("loads");
    let c = Arc::new(client(&ca, &[]));
    assert_eq!(
        twice(&cfg, &c).await,
        (Some(HandshakeKind::Full), false),
        "both off"
    );
}

#[tokio::test]
async fn a_reload_keeps_ticket_keys_but_a_fresh_load_does_not() {
    let (ca, d) = (Ca::new("ca"), dir());
    let (_, mut settings) = three(&ca, d.path());
    settings.session_cache = 0; // tickets only, so the keys alone decide
    let old = ServerTls::load("web", &settings).expect("loads");
    let c = Arc::new(client(&ca, &[]));
    let (addr, h) = serve(old.server_config().clone(), 1).await;
    talk(addr, &c, "a.example").await.expect("full handshake");
    h.await.unwrap();

    let reloaded = old.reload("web", &settings).expect("reloads");
    let (seen, server) = once(&reloaded, &c, "a.example").await;
    assert_eq!(
        seen.expect("resumes").kind,
        Some(HandshakeKind::Resumed),
        "after reload"
    );
    assert!(server.expect("served").resumed);

    let fresh = ServerTls::load("web", &settings).expect("loads");
    let (seen, _) = once(&fresh, &c, "a.example").await;
    assert_eq!(
        seen.expect("full").kind,
        Some(HandshakeKind::Full),
        "new keys"
    );
}

/// An upstream server for `app.internal` and 127.0.0.1, speaking h2 and http/1.1.
fn origin(ca: &Ca, d: &Path, client_ca: Option<&Ca>) -> ServerTls {
    let leaf = ca.leaf(&["app.internal", "127.0.0.1"]);
    let (c, k) = leaf.write(d, "origin");
    let mut s = listener_tls(vec![files(c, k, 1)]);
    if let Some(cc) = client_ca {
        s.client_auth = Some(client_auth(
            cc.write(d, "origin-clients"),
            ClientAuthMode::Require,
        ));
    }
    ServerTls::load("origin", &s).expect("origin loads")
}

/// `tls::connect` to a fresh `server` with `up`; returns the client stream's result and the
/// server's.
async fn upstream(
    server: &ServerTls,
    up: &ClientTls,
) -> (io::Result<Vec<u8>>, Result<Negotiated, tls::HandshakeError>) {
    let (addr, h) = serve(server.server_config().clone(), 1).await;
    let s = TcpStream::connect(addr).await.expect("connect");
    let r = match tls::connect(s, up.client_config(), up.server_name(addr), T).await {
        Ok(mut tls) => {
            let mut body = Vec::new();
            tls.read_to_end(&mut body).await.map(|_| body)
        }
        Err(e) => Err(e),
    };
    let mut server = h.await.expect("server task");
    (r, server.remove(0))
}

#[tokio::test]
async fn upstream_verifies_with_the_right_ca_and_fails_with_a_wrong_one() {
    let (ca, d) = (Ca::new("origin-ca"), dir());
    let server = origin(&ca, d.path(), None);

    let mut s = upstream_tls();
    s.ca_file = Some(ca.write(d.path(), "ca"));
    let up = ClientTls::load("app", &s, false).expect("loads");
    let (r, neg) = upstream(&server, &up).await;
    assert_eq!(r.expect("verified by IP SAN").as_slice(), b"ok");
    let neg = neg.expect("served");
    assert_eq!(neg.sni, None, "an IP name sends no SNI");
    assert_eq!(neg.alpn, Alpn::Http11);

    s.sni = Some("app.internal".into());
    let up = ClientTls::load("app", &s, true).expect("loads");
    let (r, neg) = upstream(&server, &up).await;
    assert_eq!(r.expect("verified by name").as_slice(), b"ok");
    let neg = neg.expect("served");
    assert_eq!(neg.sni.as_deref(), Some("app.internal"));
    assert_eq!(neg.alpn, Alpn::H2, "h2 pools ask for h2");

    let other = Ca::new("other");
    s.ca_file = Some(other.write(d.path(), "other"));
    let up = ClientTls::load("app", &s, false).expect("loads");
    let (r, _) = upstream(&server, &up).await;
    let e = r.expect_err("unknown issuer");
    assert_eq!(
        HandshakeReason::of_io(&e),
        HandshakeReason::BadCertificate,
        "{e}"
    );

    // The system store does not know the test CA either.
    let mut sys = upstream_tls();
    sys.sni = Some("app.internal".into());
    let up = ClientTls::load("app", &sys, false).expect("system roots load");
    assert!(up.verifies());
    let (r, _) = upstream(&server, &up).await;
    assert_eq!(
        HandshakeReason::of_io(&r.expect_err("unknown")),
        HandshakeReason::BadCertificate
    );

    // verify = false accepts it (and says so in the log).
    let mut off = upstream_tls();
    off.verify = false;
    let up = ClientTls::load("app", &off, false).expect("loads");
    assert!(!up.verifies());
    assert_eq!(
        upstream(&server, &up)
            .await
            .0
            .expect("unverified")
            .as_slice(),
        b"ok"
    );
}

#[tokio::test]
async fn upstream_presents_a_client_certificate() {
    let (ca, d) = (Ca::new("origin-ca"), dir());
    let clients = Ca::new("proxy-clients");
    let server = origin(&ca, d.path(), Some(&clients));
    let mut s = upstream_tls();
    s.ca_file = Some(ca.write(d.path(), "ca"));
    let up = ClientTls::load("app", &s, false).expect("loads");
    let (_, neg) = upstream(&server, &up).await;
    assert_eq!(
        neg.expect_err("no client cert").reason(),
        "no_client_certificate"
    );

    let me = clients.leaf(&["fulcrum.internal"]);
    let (c, k) = me.write(d.path(), "me");
    s.client_cert = Some(files(c, k, 4));
    let up = ClientTls::load("app", &s, false).expect("loads");
    let (r, neg) = upstream(&server, &up).await;
    assert_eq!(r.expect("admitted").as_slice(), b"ok");
    assert!(neg
        .expect("admitted")
        .client_cert
        .unwrap()
        .contains("DNS=fulcrum.internal"));
}
