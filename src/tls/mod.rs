//! TLS: rustls server and client configurations built from validated settings, the SNI
//! certificate resolver, certificate loading and checking, the handshake helpers the listener
//! and the proxy call, and the bounded ClientHello SNI reader for passthrough routing.
//!
//! Data enters as `config` settings (paths, never bytes) and leaves as `Arc<ServerConfig>` /
//! `Arc<ClientConfig>` plus certificate facts for metrics and `/status`. Loading reads files
//! and may fail with a [`TlsError`] naming the file and the config line; it never panics on
//! what it reads. The handshake helpers never log: they return a [`HandshakeError`] whose
//! [`reason`](HandshakeError::reason) is a bounded metric label, so a flood of bad clients
//! cannot flood the log. Nothing here binds sockets or knows about pools' servers.
//!
//! Crypto provider: aws-lc-rs (see [`provider`]); no OpenSSL anywhere.

mod certs;
mod client;
mod error;
mod handshake;
mod resolver;
mod routes;
mod server;
pub mod sni;
mod x509;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use certs::CertInfo;
pub use client::ClientTls;
pub use error::{TlsError, TlsErrorKind};
pub use handshake::{accept, connect, Alpn, HandshakeError, HandshakeReason, Negotiated};
pub use routes::SniRouter;
pub use server::ServerTls;
pub use sni::{client_hello_sni, peek_sni, PeekError, SniError};

/// Which TLS features this build's listeners and proxies serve. `config` validates every TLS
/// key, and refuses one whose feature is not served yet (`... is not supported yet`), so a
/// config can never ask for TLS and silently get plaintext. Flip each when it is wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    /// `[listener.tls]`: termination in the listener.
    pub listener_tls: bool,
    /// A pool's `tls = {...}`: TLS to servers (proxy and http health checks).
    pub upstream_tls: bool,
    /// A tcp listener's `route_by_sni`.
    pub sni_routing: bool,
}

/// What this build serves (see [`Served`]).
pub const SERVED: Served = Served {
    listener_tls: true,
    upstream_tls: true,
    sni_routing: true,
};

/// The process-wide crypto provider: aws-lc-rs with rustls's default (safe) cipher suites
/// and key-exchange groups.
///
/// Chosen over `ring` because it signs RSA-2048 about twice as fast (measured on this machine:
/// server side of a full TLS 1.3 handshake ~0.45 ms vs ~1.0 ms) and is on par for ECDSA P-256
/// (~0.16 ms both), offers the X25519MLKEM768 post-quantum hybrid, and is rustls's default;
/// it builds here from crates.io with only a C compiler (no cmake, no Go, no OpenSSL).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// How far ahead `fulcrum check` warns about a certificate's expiry.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// What `fulcrum check` does with a config's TLS: loads every listener's certificates and
/// every pool's CA and client certificate exactly as a start or reload would (so a file that
/// would fail the reload fails the check), and returns a warning for each certificate that
/// expires within [`EXPIRY_WARNING`].
pub fn preflight(cfg: &crate::config::Config) -> Result<Vec<String>, TlsError> {
    let mut warnings = Vec::new();
    for l in &cfg.listeners {
        let Some(t) = &l.tls else { continue };
        let served = ServerTls::load(&l.name, t)?;
        for c in served.expiring_within(EXPIRY_WARNING) {
            let days = (c.not_after - certs::unix_now()) as f64 / 86_400.0;
            warnings.push(format!(
                "listener {:?}: certificate {} ({}) expires in {days:.1} days",
                &*l.name,
                c.name,
                c.cert_file.display()
            ));
        }
    }
    for p in &cfg.pools {
        if let Some(t) = &p.tls {
            let h2 = p.upstream_protocol == crate::config::UpstreamProtocol::H2;
            ClientTls::load(&p.name, t, h2)?;
        }
    }
    Ok(warnings)
}
