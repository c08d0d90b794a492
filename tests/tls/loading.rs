//! Loading: key types, certificate facts and metrics, and every way a file can be wrong,
//! each named with its path and config place.

use super::*;

#[tokio::test]
async fn every_key_type_loads_and_serves() {
    let (ca, d) = (Ca::new("ca"), dir());
    for kind in [
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Ed25519,
        KeyKind::Rsa2048,
    ] {
        let leaf = ca.issue(&LeafSpec {
            names: &["k.example"],
            key: kind,
            ..LeafSpec::default()
        });
        let (c, k) = leaf.write(d.path(), &format!("{kind:?}"));
        let cfg = ServerTls::load("web", &listener_tls(vec![files(c, k, 1)]))
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let (seen, _) = once(&cfg, &Arc::new(client(&ca, &[])), "k.example").await;
        assert_eq!(
            seen.unwrap_or_else(|e| panic!("{kind:?}: {e}")).cert,
            leaf.der
        );
    }
}

#[tokio::test]
async fn an_ecdsa_and_an_rsa_certificate_for_one_name_serve_each_client_what_it_can_use() {
    let (ca, d) = (Ca::new("ca"), dir());
    let ec = ca.leaf(&["dual.example"]);
    let rsa = ca.issue(&LeafSpec {
        names: &["dual.example"],
        key: KeyKind::Rsa2048,
        ..LeafSpec::default()
    });
    let (c1, k1) = ec.write(d.path(), "ec");
    let (c2, k2) = rsa.write(d.path(), "rsa");
    let cfg = ServerTls::load(
        "web",
        &listener_tls(vec![files(c1, k1, 1), files(c2, k2, 2)]),
    )
    .expect("loads");
    let names: Vec<_> = cfg.certificates().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["dual.example", "dual.example#2"],
        "distinct metric labels"
    );
    let (seen, _) = once(&cfg, &Arc::new(client(&ca, &[])), "dual.example").await;
    assert_eq!(seen.expect("modern client").cert, ec.der, "ECDSA first");

    let mut rsa_only = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_custom_certificate_verifier_rsa_only(&ca);
    rsa_only.alpn_protocols.clear();
    let (seen, _) = once(&cfg, &Arc::new(rsa_only), "dual.example").await;
    assert_eq!(
        seen.expect("rsa-only client").cert,
        rsa.der,
        "RSA for an RSA-only client"
    );
}

/// A client whose verifier accepts RSA signatures only (as an old client would).
trait RsaOnly {
    fn with_custom_certificate_verifier_rsa_only(self, ca: &Ca) -> ClientConfig;
}

impl RsaOnly for rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    fn with_custom_certificate_verifier_rsa_only(self, ca: &Ca) -> ClientConfig {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(ca.roots()),
            tls::provider(),
        )
        .build()
        .expect("verifier");
        self.dangerous()
            .with_custom_certificate_verifier(Arc::new(RsaVerifier(inner)))
            .with_no_client_auth()
    }
}

#[derive(Debug)]
struct RsaVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for RsaVerifier {
    fn verify_server_cert(
        &self,
        e: &CertificateDer<'_>,
        i: &[CertificateDer<'_>],
        n: &rustls::pki_types::ServerName<'_>,
        o: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.verify_server_cert(e, i, n, o, now)
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![
            rustls::SignatureScheme::RSA_PSS_SHA256,
            rustls::SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

#[test]
fn certificate_facts_and_expiry_metrics() {
    let (ca, d) = (Ca::new("ca"), dir());
    let a = ca.issue(&LeafSpec {
        names: &["a.example", "www.a.example"],
        serial: Some(0x1234),
        ..LeafSpec::default()
    });
    let soon = ca.issue(&LeafSpec {
        names: &["soon.example"],
        not_after_days: 5,
        ..LeafSpec::default()
    });
    let (c1, k1) = a.write(d.path(), "a");
    let (c2, k2) = soon.write(d.path(), "soon");
    let cfg = ServerTls::load(
        "web",
        &listener_tls(vec![files(c1.clone(), k1, 1), files(c2, k2, 2)]),
    )
    .expect("loads");
    let info = &cfg.certificates()[0];
    assert_eq!(info.name, "a.example");
    assert_eq!(info.names, ["a.example", "www.a.example"]);
    assert_eq!(info.serial, a.serial);
    assert_eq!(info.serial, "1234");
    assert!(info.is_default && !cfg.certificates()[1].is_default);
    assert_eq!(info.cert_file, c1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (info.not_after - now - 90 * 86_400).abs() < 2 * 86_400,
        "about 90 days"
    );
    let expiring: Vec<_> = cfg
        .expiring_within(Duration::from_secs(14 * 86_400))
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(expiring, ["soon.example"]);

    let m = fulcrum::metrics::Metrics::new();
    m.set_tls_certificates("web", cfg.certificates());
    let scrape = m.render();
    let line = format!(
        "fulcrum_tls_certificate_expiry_timestamp_seconds{{listener=\"web\",name=\"a.example\"}} {}",
        info.not_after
    );
    assert!(scrape.contains(&line), "{scrape}");
    m.set_tls_certificates("web", &cfg.certificates()[1..]);
    let scrape = m.render();
    assert!(
        !scrape.contains("name=\"a.example\""),
        "a certificate no longer served is dropped"
    );
    assert!(scrape.contains("name=\"soon.example\""));
    m.forget_tls_listener("web");
    assert!(!m
        .render()
        .contains("fulcrum_tls_certificate_expiry_timestamp_seconds{"));

    let counters = fulcrum::metrics::TlsListenerMetrics::new(&m, "web");
    counters.count(HandshakeReason::NotTls);
    let scrape = m.render();
    assert!(scrape
        .contains("fulcrum_tls_handshake_errors_total{listener=\"web\",reason=\"not_tls\"} 1"));
    assert!(scrape
        .contains("fulcrum_tls_handshake_errors_total{listener=\"web\",reason=\"timeout\"} 0"));
}

/// Loads one certificate entry (written at test.toml:7:1) and returns the error text.
fn load_err(cert: &Path, key: &Path) -> (String, TlsErrorKind) {
    let e = ServerTls::load(
        "web",
        &listener_tls(vec![files(cert.into(), key.into(), 7)]),
    )
    .expect_err("must fail");
    let text = e.to_string();
    assert!(
        text.starts_with("test.toml:7:1: listener \"web\": "),
        "{text}"
    );
    (text, *e.kind)
}

#[test]
fn loading_errors_name_the_file_and_what_is_wrong() {
    let (ca, d) = (Ca::new("ca"), dir());
    let p = d.path();
    let good = ca.leaf(&["a.example"]);
    let (cert, key) = good.write(p, "good");

    let (t, k) = load_err(&p.join("missing.pem"), &key);
    assert!(t.contains("missing.pem: cannot read: No such file"), "{t}");
    assert!(matches!(k, TlsErrorKind::Read(_)));

    let (t, _) = load_err(&cert, &p.join("missing.key"));
    assert!(t.contains("missing.key: cannot read"), "{t}");

    std::fs::write(p.join("empty.key"), "").unwrap();
    let (t, k) = load_err(&cert, &p.join("empty.key"));
    assert!(t.contains("empty.key: no private key found"), "{t}");
    assert!(matches!(k, TlsErrorKind::NoKey));

    std::fs::write(
        p.join("bad.key"),
        "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEAq7BFUpkGp3+LQmlQ\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (t, k) = load_err(&cert, &p.join("bad.key"));
    assert!(
        t.contains("bad.key: unsupported or invalid private key"),
        "{t}"
    );
    assert!(matches!(k, TlsErrorKind::BadKey(_)));

    std::fs::write(
        p.join("enc.key"),
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBVQ==\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let (t, _) = load_err(&cert, &p.join("enc.key"));
    assert!(t.contains("enc.key: the private key is encrypted"), "{t}");

    std::fs::write(p.join("nocert.pem"), "hello\n").unwrap();
    let (t, k) = load_err(&p.join("nocert.pem"), &key);
    assert!(t.contains("nocert.pem: no certificate found"), "{t}");
    assert!(matches!(k, TlsErrorKind::NoCertificate));

    let other = ca.leaf(&["a.example"]);
    let (mc, mk) = mismatched(&good, &other, p, "mixed");
    let (t, k) = load_err(&mc, &mk);
    assert!(
        t.contains(&format!(
            "mixed.pem: private key {} does not match",
            mk.display()
        )),
        "{t}"
    );
    assert!(matches!(k, TlsErrorKind::KeyMismatch { .. }));

    let old = ca.issue(&LeafSpec {
        names: &["old.example"],
        not_before_days: -30,
        not_after_days: -1,
        ..LeafSpec::default()
    });
    let (oc, ok) = old.write(p, "old");
    let (t, k) = load_err(&oc, &ok);
    assert!(
        t.contains("old.pem: certificate #0 in the chain (CN=old.example) expired on 20"),
        "{t}"
    );
    assert!(matches!(k, TlsErrorKind::Expired { index: 0, .. }));

    let early = ca.issue(&LeafSpec {
        names: &["early.example"],
        not_before_days: 2,
        not_after_days: 30,
        ..LeafSpec::default()
    });
    let (ec, ek) = early.write(p, "early");
    let (t, _) = load_err(&ec, &ek);
    assert!(
        t.contains("early.pem: certificate #0 in the chain (CN=early.example) is not valid before"),
        "{t}"
    );

    // OCSP: a DER response is stapled; a PEM file is refused.
    let mut s = listener_tls(vec![files(cert.clone(), key.clone(), 7)]);
    std::fs::write(
        p.join("a.ocsp.der"),
        [0x30, 0x82, 0x01, 0x00, 0x0a, 0x01, 0x00, 0xa0],
    )
    .unwrap();
    s.certificates[0].ocsp = Some(p.join("a.ocsp.der"));
    assert!(ServerTls::load("web", &s).expect("loads").certificates()[0].ocsp_stapled);
    std::fs::write(p.join("a.ocsp.pem"), "-----BEGIN OCSP RESPONSE-----\n").unwrap();
    s.certificates[0].ocsp = Some(p.join("a.ocsp.pem"));
    let t = ServerTls::load("web", &s).expect_err("pem").to_string();
    assert!(
        t.contains("a.ocsp.pem: not a DER OCSP response (this is PEM"),
        "{t}"
    );

    // A client CA file without certificates.
    let mut s = listener_tls(vec![files(cert, key, 7)]);
    std::fs::write(p.join("noca.pem"), "nothing\n").unwrap();
    s.client_auth = Some(client_auth(p.join("noca.pem"), ClientAuthMode::Require));
    let t = ServerTls::load("web", &s).expect_err("no CA").to_string();
    assert!(t.starts_with("test.toml:2:1: listener \"web\": "), "{t}");
    assert!(t.contains("noca.pem: no certificate found"), "{t}");

    // Upstream: a missing CA file names the pool.
    let mut u = upstream_tls();
    u.ca_file = Some(p.join("nope.pem"));
    let t = ClientTls::load("app", &u, false)
        .expect_err("missing")
        .to_string();
    assert!(t.starts_with("test.toml:3:1: pool \"app\": "), "{t}");
    assert!(t.contains("nope.pem: cannot read"), "{t}");
}
