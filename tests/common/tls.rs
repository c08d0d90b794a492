//! Test certificates made at test time (rcgen), and the client side of TLS tests.
//!
//! Include it with `#[path = "common/tls.rs"] mod tls_support;` (or add `pub mod tls;` to
//! `common/mod.rs`). Everything is ECDSA P-256 unless a [`LeafSpec`] says otherwise; validity
//! is relative to now, so "expired" and "expires in 5 days" certificates are easy to make.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fulcrum::config::{
    CertificateFiles, ClientAuth, ClientAuthMode, ConfigSpot, ListenerTls, Location, TlsVersion,
    UpstreamTls,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Key algorithm of a test certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256 (the default).
    P256,
    /// ECDSA P-384.
    P384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048.
    Rsa2048,
}

fn keypair(kind: KeyKind) -> KeyPair {
    let alg = match kind {
        KeyKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        KeyKind::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
    };
    KeyPair::generate_for(alg).expect("test key generation")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Sets notBefore / notAfter to now plus the given days (negative: in the past).
fn set_validity(params: &mut CertificateParams, not_before_days: i64, not_after_days: i64) {
    let at = |days: i64| {
        let secs = now_secs() as i64 + days * 86_400;
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs.max(0) as u64)
    };
    params.not_before = at(not_before_days);
    params.not_after = at(not_after_days);
}

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
    /// Its certificate, DER.
    pub der: CertificateDer<'static>,
}

/// What a leaf certificate should be.
#[derive(Clone, Debug)]
pub struct LeafSpec<'a> {
    /// DNS names (and IP addresses) in the SAN.
    pub names: &'a [&'a str],
    /// Subject CN; default the first name.
    pub cn: Option<&'a str>,
    /// Key algorithm.
    pub key: KeyKind,
    /// notBefore, days from now (negative: in the past).
    pub not_before_days: i64,
    /// notAfter, days from now.
    pub not_after_days: i64,
    /// Serial number; default random.
    pub serial: Option<u64>,
}

impl Default for LeafSpec<'_> {
    fn default() -> Self {
        LeafSpec {
            names: &["localhost"],
            cn: None,
            key: KeyKind::P256,
            not_before_days: -1,
            not_after_days: 90,
            serial: None,
        }
    }
}

/// A leaf certificate and its key.
pub struct Leaf {
    /// The certificate, PEM (leaf only; the CA is the trust anchor).
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// DER of the certificate.
    pub der: CertificateDer<'static>,
    /// Serial, lower-case hex as `CertInfo::serial` shows it.
    pub serial: String,
}

impl Ca {
    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> Ca {
        let key = keypair(KeyKind::P256);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, -2, 3650);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, ECDSA P-256, valid from yesterday for 90 days, usable by servers
    /// and clients.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.issue(&LeafSpec {
            names,
            ..LeafSpec::default()
        })
    }

    /// A leaf as `spec` says.
    pub fn issue(&self, spec: &LeafSpec<'_>) -> Leaf {
        let key = keypair(spec.key);
        // Names with "://" are URIs (SPIFFE IDs, say); the rest DNS names or IP addresses.
        let (uris, names): (Vec<&str>, Vec<&str>) =
            spec.names.iter().partition(|n| n.contains("://"));
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("valid SAN names");
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(u.try_into().expect("an ASCII URI")));
        }
        let cn = spec.cn.or(spec.names.first().copied()).unwrap_or("leaf");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, spec.not_before_days, spec.not_after_days);
        let serial = spec
            .serial
            .unwrap_or_else(|| fastrand::u64(1..u64::MAX >> 1));
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("CA signs the leaf");
        let serial_bytes = params
            .serial_number
            .as_ref()
            .map(|s| s.to_bytes())
            .unwrap_or_default();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial: der_integer_hex(&serial_bytes),
        }
    }

    /// Writes the CA certificate to `dir/NAME.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.pem"));
        std::fs::write(&p, &self.pem).expect("write CA file");
        p
    }

    /// A root store holding this CA.
    pub fn roots(&self) -> RootCertStore {
        let mut r = RootCertStore::empty();
        r.add(self.der.clone()).expect("CA is a valid anchor");
        r
    }
}

/// Hex of a serial as DER writes it: no leading zero bytes, but one if the top bit is set.
fn der_integer_hex(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    let mut v = bytes[start..].to_vec();
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    v.iter().map(|b| format!("{b:02x}")).collect()
}

impl Leaf {
    /// Writes `dir/STEM.pem` and `dir/STEM.key`.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("rcgen PEM parses")
    }
}

/// Writes `a`'s certificate with `b`'s key as `dir/STEM.pem` / `dir/STEM.key`.
pub fn mismatched(a: &Leaf, b: &Leaf, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, &a.cert_pem).expect("write cert");
    std::fs::write(&key, &b.key_pem).expect("write key");
    (cert, key)
}

/// A config place for settings built in code: `test.toml:LINE:1`.
pub fn spot(line: usize) -> ConfigSpot {
    ConfigSpot {
        file: PathBuf::from("test.toml"),
        location: Location { line, column: 1 },
    }
}

/// `CertificateFiles` for written files; the entry "was written" at `test.toml:LINE:1`.
pub fn files(cert: PathBuf, key: PathBuf, line: usize) -> CertificateFiles {
    CertificateFiles {
        cert,
        key,
        ocsp: None,
        at: spot(line),
    }
}

/// Listener TLS settings with the config defaults of an http listener.
pub fn listener_tls(certificates: Vec<CertificateFiles>) -> ListenerTls {
    ListenerTls {
        certificates,
        alpn: vec!["h2".into(), "http/1.1".into()],
        sni_strict: false,
        min_version: TlsVersion::V1_2,
        handshake_timeout: Duration::from_secs(10),
        session_tickets: true,
        session_cache: 20_000,
        client_auth: None,
        at: spot(1),
    }
}

/// `client_auth` settings.
pub fn client_auth(ca_file: PathBuf, mode: ClientAuthMode) -> ClientAuth {
    ClientAuth {
        ca_file,
        mode,
        forward_header: None,
        at: spot(2),
    }
}

/// A pool's `tls` with the config defaults (verify on, system roots).
pub fn upstream_tls() -> UpstreamTls {
    UpstreamTls {
        ca_file: None,
        sni: None,
        verify: true,
        client_cert: None,
        at: spot(3),
    }
}

/// A client that trusts `ca` and offers `alpn`.
pub fn client(ca: &Ca, alpn: &[&str]) -> ClientConfig {
    let mut c = ClientConfig::builder_with_provider(fulcrum::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    c
}

/// A client that trusts `ca`, presents `leaf`, and offers `alpn`.
pub fn client_with_cert(ca: &Ca, leaf: &Leaf, alpn: &[&str]) -> ClientConfig {
    let mut c = ClientConfig::builder_with_provider(fulcrum::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .with_root_certificates(ca.roots())
        .with_client_auth_cert(vec![leaf.der.clone()], leaf.key_der())
        .expect("client cert and key match");
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    c
}

/// A client that accepts any server certificate (to see which one a server picks).
pub fn insecure_client(alpn: &[&str]) -> ClientConfig {
    let mut c = ClientConfig::builder_with_provider(fulcrum::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    c
}

/// The server name for `name` (a DNS name or an IP address).
pub fn name(n: &str) -> ServerName<'static> {
    ServerName::try_from(n.to_string()).expect("valid server name")
}

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        fulcrum::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
