//! A listener's TLS: loads and checks its certificates and builds the rustls `ServerConfig`
//! (SNI resolver, ALPN, versions, resumption, client-certificate verifier).
//!
//! A reload builds a new [`ServerTls`] off to the side from the new settings
//! ([`ServerTls::reload`]): if any file is wrong, the error is returned and the old one keeps
//! serving. Ticket keys and the session cache carry over a reload (so clients keep resuming),
//! unless the client-certificate policy changed: a session admitted under the old policy must
//! not skip the new one.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::{
    NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::ServerConfig;

use super::certs::{self, CertInfo};
use super::error::{TlsError, TlsErrorKind};
use super::resolver::SniResolver;
use crate::config::{ClientAuthMode, ListenerTls, TlsVersion};

/// A listener's loaded TLS configuration.
pub struct ServerTls {
    config: Arc<ServerConfig>,
    certificates: Vec<CertInfo>,
    handshake_timeout: Duration,
    forward_header: Option<http::HeaderName>,
    /// The client-certificate policy the sessions below were admitted under.
    client_policy: Option<(ClientAuthMode, Vec<u8>)>,
    ticketer: Option<Arc<dyn ProducesTickets>>,
    cache: Option<(usize, Arc<dyn StoresServerSessions>)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certificates", &self.certificates)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads and checks every file of `settings` and builds the configuration of listener
    /// `listener`, with fresh ticket keys and an empty session cache.
    pub fn load(listener: &str, settings: &ListenerTls) -> Result<ServerTls, TlsError> {
        build(listener, settings, None)
    }

    /// Like [`load`](Self::load), keeping this one's ticket keys and session cache when the
    /// client-certificate policy is unchanged, so clients resume across a reload.
    pub fn reload(&self, listener: &str, settings: &ListenerTls) -> Result<ServerTls, TlsError> {
        build(listener, settings, Some(self))
    }

    /// The rustls configuration to hand to [`accept`](super::accept).
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The certificates served, in config order (the first is the default).
    pub fn certificates(&self) -> &[CertInfo] {
        &self.certificates
    }

    /// The handshake deadline (`handshake_timeout`).
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The header that carries a verified client certificate upstream (`forward_header`);
    /// the proxy strips inbound copies of it whether or not the client sent a certificate.
    pub fn forward_header(&self) -> Option<&http::HeaderName> {
        self.forward_header.as_ref()
    }

    /// Certificates that expire within `window` from now (for `fulcrum check`: 14 days).
    pub fn expiring_within(&self, window: Duration) -> Vec<&CertInfo> {
        let now = certs::unix_now();
        self.certificates
            .iter()
            .filter(|c| c.expires_within(window, now))
            .collect()
    }
}

fn build(
    listener: &str,
    s: &ListenerTls,
    previous: Option<&ServerTls>,
) -> Result<ServerTls, TlsError> {
    let owner = format!("listener {listener:?}");
    let provider = super::provider();
    let now = certs::unix_now();

    let mut keys = Vec::with_capacity(s.certificates.len());
    let mut infos: Vec<CertInfo> = Vec::with_capacity(s.certificates.len());
    for (i, files) in s.certificates.iter().enumerate() {
        let loaded = certs::load_pair(&owner, files, now)?;
        let mut info = loaded.info;
        info.is_default = i == 0;
        // Two certificates for the same name (ECDSA + RSA) need distinct metric labels.
        let base = info.name.clone();
        let mut n = 1;
        while infos.iter().any(|o| o.name == info.name) {
            n += 1;
            info.name = format!("{base}#{n}");
        }
        keys.push((loaded.key, info.names.clone()));
        infos.push(info);
    }
    let resolver = Arc::new(SniResolver::new(&keys, s.sni_strict));

    let versions: &[&'static rustls::SupportedProtocolVersion] = match s.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::new(&owner, Some(&s.at), TlsErrorKind::Config(e.to_string())))?;

    let (builder, client_policy) = match &s.client_auth {
        None => (builder.with_no_client_auth(), None),
        Some(ca) => {
            let (roots, ca_bytes) = certs::load_roots(&owner, &ca.at, &ca.ca_file)?;
            let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if ca.mode == ClientAuthMode::Optional {
                vb = vb.allow_unauthenticated();
            }
            let verifier = vb.build().map_err(|e| {
                TlsError::file(
                    &owner,
                    Some(&ca.at),
                    &ca.ca_file,
                    TlsErrorKind::Config(e.to_string()),
                )
            })?;
            (
                builder.with_client_cert_verifier(verifier),
                Some((ca.mode, ca_bytes)),
            )
        }
    };
    let mut cfg = builder.with_cert_resolver(resolver);
    cfg.alpn_protocols = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();

    // Sessions admitted under another client-certificate policy must not be resumed.
    let keep = previous.filter(|p| p.client_policy == client_policy);
    let ticketer = if s.session_tickets {
        match keep.and_then(|p| p.ticketer.clone()) {
            Some(t) => Some(t),
            None => Some(rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
                TlsError::new(&owner, Some(&s.at), TlsErrorKind::Config(e.to_string()))
            })?),
        }
    } else {
        None
    };
    let cache = match s.session_cache {
        0 => None,
        size => match keep.and_then(|p| p.cache.clone()) {
            Some((n, c)) if n == size => Some((n, c)),
            _ => Some((
                size,
                ServerSessionMemoryCache::new(size) as Arc<dyn StoresServerSessions>,
            )),
        },
    };
    if let Some(t) = &ticketer {
        cfg.ticketer = t.clone();
    }
    cfg.session_storage = match &cache {
        Some((_, c)) => c.clone(),
        None => Arc::new(NoServerSessionStorage {}),
    };
    if ticketer.is_none() && cache.is_none() {
        cfg.send_tls13_tickets = 0;
    }
    // No 0-RTT: early data can be replayed, and the proxy could not tell.
    cfg.max_early_data_size = 0;

    Ok(ServerTls {
        config: Arc::new(cfg),
        certificates: infos,
        handshake_timeout: s.handshake_timeout,
        forward_header: s
            .client_auth
            .as_ref()
            .and_then(|c| c.forward_header.clone()),
        client_policy,
        ticketer,
        cache,
    })
}
