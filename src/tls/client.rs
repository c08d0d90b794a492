//! A pool's TLS towards its servers: trust roots (the pool's `ca_file`, else the system
//! store), an optional client certificate, ALPN, and the name to verify.
//!
//! System roots come from `rustls-native-certs`, read at each load (so a reload picks up an
//! updated `ca-certificates`), rather than `webpki-roots`' compiled-in Mozilla list: an
//! operator's OS store is what they manage, and it holds their private CAs. `verify = false`
//! installs a verifier that accepts any certificate but still checks the handshake
//! signatures, and warns at every load.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::certs;
use super::error::{TlsError, TlsErrorKind};
use crate::config::UpstreamTls;

/// A pool's loaded upstream TLS configuration.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    sni: Option<ServerName<'static>>,
    verify: bool,
}

impl ClientTls {
    /// Reads the files of pool `pool`'s `tls` settings and builds its client configuration;
    /// ALPN offers `h2` when `alpn_h2` (an `upstream_protocol = "h2"` pool), else `http/1.1`.
    pub fn load(pool: &str, s: &UpstreamTls, alpn_h2: bool) -> Result<ClientTls, TlsError> {
        let owner = format!("pool {pool:?}");
        let provider = super::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(&owner, Some(&s.at), TlsErrorKind::Config(e.to_string())))?;
        let builder = if s.verify {
            let roots = match &s.ca_file {
                Some(path) => certs::load_roots(&owner, &s.at, path)?.0,
                None => system_roots(&owner, s)?,
            };
            builder.with_root_certificates(roots)
        } else {
            tracing::warn!(
                pool = %pool,
                "upstream TLS certificate verification is off (verify = false): anyone on the path to these servers can read and change the traffic"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        };
        let mut config = match &s.client_cert {
            None => builder.with_no_client_auth(),
            Some(files) => {
                let loaded = certs::load_pair(&owner, files, certs::unix_now())?;
                builder
                    .with_client_auth_cert(loaded.key.cert.clone(), read_key(&owner, files)?)
                    .map_err(|e| {
                        TlsError::file(
                            &owner,
                            Some(&files.at),
                            &files.key,
                            TlsErrorKind::BadKey(e.to_string()),
                        )
                    })?
            }
        };
        config.alpn_protocols = vec![if alpn_h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let sni = match &s.sni {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                TlsError::new(&owner, Some(&s.at), TlsErrorKind::Config(e.to_string()))
            })?),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            sni,
            verify: s.verify,
        })
    }

    /// The rustls configuration to hand to [`connect`](super::connect).
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The name to send and verify for server `addr`: the pool's `sni`, else the server's IP
    /// (verified against an IP SAN; rustls sends no SNI for an IP).
    pub fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        self.sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// Whether server certificates are verified.
    pub fn verifies(&self) -> bool {
        self.verify
    }
}

fn read_key(
    owner: &str,
    files: &crate::config::CertificateFiles,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    certs::read_key(owner, &files.at, &files.key)
}

fn system_roots(owner: &str, s: &UpstreamTls) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => format!("the system store could not be read: {e}"),
            None => "the system store is empty".to_string(),
        };
        return Err(TlsError::new(
            owner,
            Some(&s.at),
            TlsErrorKind::NoRoots(format!("{why}; install ca-certificates or set ca_file")),
        ));
    }
    Ok(roots)
}

/// `verify = false`: any certificate is accepted, but the handshake signature must still be
/// made by the key of the certificate presented (so the session keys are not forgeable by a
/// passive observer).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
