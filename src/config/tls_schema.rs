//! The TLS keys as written: `[listener.tls]`, `[listener.tls.client_auth]`, a pool's
//! `tls = {...}` and a tcp listener's `route_by_sni`. Serde structs with
//! `deny_unknown_fields`; `config::tls` validates them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::types::Dur;

/// `[listener.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// `[ { cert = "a.pem", key = "a.key", ocsp = "a.ocsp.der" }, ... ]`; the first is the
    /// default certificate (no SNI, or a name no certificate carries). At least one.
    pub certificates: Spanned<Vec<Spanned<RawCertificate>>>,
    /// ALPN protocols in server preference order; default `["h2", "http/1.1"]` on http
    /// listeners (which accept only those two), none on tcp listeners.
    pub alpn: Option<Spanned<Vec<Spanned<String>>>>,
    /// Refuse the handshake (alert `unrecognized_name`) when SNI is missing or matches no
    /// certificate, instead of serving the default one; default false.
    pub sni_strict: Option<bool>,
    /// Lowest TLS version: "1.2" (default) or "1.3". TLS 1.0 and 1.1 are never offered.
    pub min_version: Option<Spanned<String>>,
    /// Time for a client to complete the handshake; default 10s.
    pub handshake_timeout: Option<Spanned<Dur>>,
    /// Stateless session tickets (keys made in memory, rotated every 6h, kept across
    /// reloads); default true.
    pub session_tickets: Option<bool>,
    /// Sessions kept in the server-side resumption cache; 0 turns it off; default 20000.
    pub session_cache: Option<Spanned<i64>>,
    /// Client certificates (mTLS).
    pub client_auth: Option<Spanned<RawClientAuth>>,
}

/// One entry of `certificates = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file: the certificate, then its intermediates.
    pub cert: Spanned<String>,
    /// PEM file: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC; RSA, ECDSA P-256/P-384, Ed25519).
    pub key: Spanned<String>,
    /// DER OCSP response stapled to handshakes; optional.
    pub ocsp: Option<Spanned<String>>,
}

/// `[listener.tls.client_auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// PEM file of the CAs that sign client certificates.
    pub ca_file: Spanned<String>,
    /// "require" (default: a client without a valid certificate is refused in the handshake)
    /// or "optional" (a certificate, when sent, must be valid).
    pub mode: Option<Spanned<String>>,
    /// http only: request header that carries the verified subject and SANs upstream; inbound
    /// copies are always removed. Default: none.
    pub forward_header: Option<Spanned<String>>,
}

/// A pool's `tls = { ... }`: TLS towards the servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM file of the CAs trusted for the servers; default: the system store.
    pub ca_file: Option<Spanned<String>>,
    /// Name sent as SNI and verified against the server certificate; default: the server's IP
    /// address (verified against an IP SAN; no SNI sent).
    pub sni: Option<Spanned<String>>,
    /// Verify the server certificate; default true. `false` must be written out and logs a
    /// warning at every load.
    pub verify: Option<Spanned<bool>>,
    /// Client certificate (PEM chain) presented to the servers; needs `key`.
    pub cert: Option<Spanned<String>>,
    /// Its private key; needs `cert`.
    pub key: Option<Spanned<String>>,
}

/// `route_by_sni = { "a.example" = "pool_a", "*.b.example" = "pool_b" }`.
pub type RawSniRoutes = Spanned<BTreeMap<Spanned<String>, Spanned<String>>>;
