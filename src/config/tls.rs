//! TLS settings as written (`[listener.tls]`, a pool's `tls = {...}`, a tcp listener's
//! `route_by_sni`) and their validation into typed settings.
//!
//! Like the rest of `config`, this never opens a file: certificate, key, CA and OCSP paths are
//! only checked for shape here and resolved against the config file's directory. Each file
//! setting keeps the place it was written ([`ConfigSpot`]), so that `tls::ServerTls::load`,
//! which does read the files, can point an error at `fulcrum.toml:LINE:COL`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::types::Dur;
use super::validate::Ctx;
use super::{ConfigError, Location, Protocol};

// ---------------------------------------------------------------- schema (as written)

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

// ---------------------------------------------------------------- settings (validated)

/// Where a setting was written, for errors found later (when its file is read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpot {
    /// The config file.
    pub file: PathBuf,
    /// Line and column.
    pub location: Location,
}

impl fmt::Display for ConfigSpot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.file.display(),
            self.location.line,
            self.location.column
        )
    }
}

/// A certificate chain and its key (and, for a listener, an optional OCSP response).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// DER OCSP response to staple.
    pub ocsp: Option<PathBuf>,
    /// Where the entry was written.
    pub at: ConfigSpot,
}

/// `min_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// `client_auth.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// A valid client certificate is required.
    Require,
    /// A client certificate is verified when sent.
    Optional,
}

/// `[listener.tls.client_auth]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAuth {
    /// CAs of client certificates.
    pub ca_file: PathBuf,
    /// Require or optional.
    pub mode: ClientAuthMode,
    /// Header carrying the verified subject/SANs upstream (http listeners).
    pub forward_header: Option<http::HeaderName>,
    /// Where the table was written.
    pub at: ConfigSpot,
}

/// `[listener.tls]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// At least one; the first is the default.
    pub certificates: Vec<CertificateFiles>,
    /// ALPN protocols in preference order (may be empty: no ALPN).
    pub alpn: Vec<String>,
    /// Refuse a missing or unknown SNI.
    pub sni_strict: bool,
    /// Lowest version.
    pub min_version: TlsVersion,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
    /// Stateless tickets on.
    pub session_tickets: bool,
    /// Server-side session cache size (0: off).
    pub session_cache: usize,
    /// mTLS.
    pub client_auth: Option<ClientAuth>,
    /// Where `[listener.tls]` was written.
    pub at: ConfigSpot,
}

/// A pool's `tls`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Trusted CAs; `None`: the system store.
    pub ca_file: Option<PathBuf>,
    /// SNI and verified name; `None`: the server's IP.
    pub sni: Option<String>,
    /// Verify the server certificate.
    pub verify: bool,
    /// Client certificate presented to the servers.
    pub client_cert: Option<CertificateFiles>,
    /// Where `tls` was written.
    pub at: ConfigSpot,
}

/// One `route_by_sni` entry's name pattern, lower-case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SniPattern {
    /// `a.example`: that name only.
    Exact(String),
    /// `*.b.example`, stored as `.b.example`: any name ending so (one or more labels before it).
    Suffix(String),
}

/// A tcp listener's `route_by_sni`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniRoutes {
    /// Patterns and their pools, in file order.
    pub routes: Vec<(SniPattern, Arc<str>)>,
    /// Pool for a missing SNI or a name no route matches; `None`: close the connection.
    pub default_pool: Option<Arc<str>>,
}

// ---------------------------------------------------------------- validation

impl Ctx<'_> {
    fn spot(&self, span: std::ops::Range<usize>) -> ConfigSpot {
        ConfigSpot {
            file: self.path.to_path_buf(),
            location: Location::of_offset(self.text, span.start),
        }
    }

    /// A file path: not empty; relative paths are taken from the config file's directory.
    fn file(&self, v: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        let s = v.get_ref().trim();
        if s.is_empty() {
            return Err(self.err(v.span(), format!("{key} must name a file")));
        }
        let p = Path::new(s);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or_else(|| Path::new("")).join(p)
        })
    }
}

/// Headers whose meaning to HTTP would change if a client certificate were written into them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

pub(super) fn listener_tls(
    cx: &Ctx,
    raw: &Spanned<RawListenerTls>,
    protocol: Protocol,
) -> Result<ListenerTls, ConfigError> {
    let t = raw.get_ref();
    let list = t.certificates.get_ref();
    if list.is_empty() {
        return Err(cx.err(
            t.certificates.span(),
            "certificates must list at least one { cert = \"FILE.pem\", key = \"FILE.key\" }",
        ));
    }
    let mut certificates = Vec::with_capacity(list.len());
    for c in list {
        let e = c.get_ref();
        certificates.push(CertificateFiles {
            cert: cx.file(&e.cert, "cert")?,
            key: cx.file(&e.key, "key")?,
            ocsp: e.ocsp.as_ref().map(|o| cx.file(o, "ocsp")).transpose()?,
            at: cx.spot(c.span()),
        });
    }

    let alpn = match &t.alpn {
        None if protocol == Protocol::Http => vec!["h2".to_string(), "http/1.1".to_string()],
        None => Vec::new(),
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for p in list.get_ref() {
                let s = p.get_ref();
                if protocol == Protocol::Http && s != "h2" && s != "http/1.1" {
                    return Err(cx.err(
                        p.span(),
                        format!("alpn protocol {s:?} cannot be served by an http listener; expected \"h2\" or \"http/1.1\""),
                    ));
                }
                if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(cx.err(
                        p.span(),
                        format!("alpn protocol {s:?} is invalid; expected 1 to 255 visible ASCII characters such as \"h2\""),
                    ));
                }
                if out.contains(s) {
                    return Err(cx.err(p.span(), format!("alpn protocol {s:?} is listed twice")));
                }
                out.push(s.clone());
            }
            out
        }
    };

    let min_version = match cx.choice(&t.min_version, "min_version", &["1.2", "1.3"])? {
        Some("1.3") => TlsVersion::V1_3,
        _ => TlsVersion::V1_2,
    };

    let client_auth = match &t.client_auth {
        None => None,
        Some(ca) => {
            let a = ca.get_ref();
            let mode = match cx.choice(&a.mode, "client_auth mode", &["require", "optional"])? {
                Some("optional") => ClientAuthMode::Optional,
                _ => ClientAuthMode::Require,
            };
            let forward_header = match &a.forward_header {
                None => None,
                Some(h) if protocol == Protocol::Tcp => {
                    return Err(cx.err(
                        h.span(),
                        "forward_header applies only to protocol = \"http\" listeners",
                    ))
                }
                Some(h) => {
                    let name = http::HeaderName::from_bytes(h.get_ref().trim().as_bytes())
                        .map_err(|_| {
                            cx.err(
                                h.span(),
                                format!(
                                    "forward_header {:?} is not a valid header name; expected e.g. \"X-Client-Cert\"",
                                    h.get_ref()
                                ),
                            )
                        })?;
                    if RESERVED_HEADERS.contains(&name.as_str()) {
                        return Err(cx.err(
                            h.span(),
                            format!("forward_header {:?} is reserved; choose a header of your own such as \"X-Client-Cert\"", name.as_str()),
                        ));
                    }
                    Some(name)
                }
            };
            Some(ClientAuth {
                ca_file: cx.file(&a.ca_file, "ca_file")?,
                mode,
                forward_header,
                at: cx.spot(ca.span()),
            })
        }
    };

    Ok(ListenerTls {
        certificates,
        alpn,
        sni_strict: t.sni_strict.unwrap_or(false),
        min_version,
        handshake_timeout: cx.dur(
            &t.handshake_timeout,
            "handshake_timeout",
            Duration::from_secs(10),
        )?,
        session_tickets: t.session_tickets.unwrap_or(true),
        session_cache: cx.int(&t.session_cache, "session_cache", 0..=10_000_000, 20_000)? as usize,
        client_auth,
        at: cx.spot(raw.span()),
    })
}

pub(super) fn upstream_tls(
    cx: &Ctx,
    raw: &Spanned<RawUpstreamTls>,
) -> Result<UpstreamTls, ConfigError> {
    let t = raw.get_ref();
    let verify = t.verify.as_ref().map_or(true, |v| *v.get_ref());
    if let (false, Some(ca)) = (verify, &t.ca_file) {
        return Err(cx.err(
            ca.span(),
            "ca_file has no effect with verify = false; remove one of them",
        ));
    }
    let sni = match &t.sni {
        None => None,
        Some(s) => {
            let name = s
                .get_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(cx.err(
                    s.span(),
                    format!(
                        "sni {:?} is not a valid DNS name or IP address; expected e.g. \"app.internal\"",
                        s.get_ref()
                    ),
                ));
            }
            Some(name)
        }
    };
    let client_cert = match (&t.cert, &t.key) {
        (None, None) => None,
        (Some(c), Some(k)) => Some(CertificateFiles {
            cert: cx.file(c, "cert")?,
            key: cx.file(k, "key")?,
            ocsp: None,
            at: cx.spot(c.span()),
        }),
        (Some(c), None) => return Err(cx.err(c.span(), "cert needs key = \"FILE.key\" beside it")),
        (None, Some(k)) => return Err(cx.err(k.span(), "key needs cert = \"FILE.pem\" beside it")),
    };
    Ok(UpstreamTls {
        ca_file: t
            .ca_file
            .as_ref()
            .map(|c| cx.file(c, "ca_file"))
            .transpose()?,
        sni,
        verify,
        client_cert,
        at: cx.spot(raw.span()),
    })
}

/// A `route_by_sni` key: a DNS name, or `*.` followed by one.
fn sni_pattern(s: &str) -> Option<SniPattern> {
    let lower = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return None;
    }
    Some(if wild {
        SniPattern::Suffix(format!(".{name}"))
    } else {
        SniPattern::Exact(name.to_string())
    })
}

/// Settles which pool(s) a listener uses, each checked to exist: returns the value of
/// `ListenerSettings::pool` and the validated SNI routes.
///
/// Without `route_by_sni`, `pool` is required and `default_pool` refused. With it (tcp only),
/// the default for a missing or unknown name is `default_pool` or, equally, `pool`: setting
/// both is refused as ambiguous, and setting neither closes such connections. Then
/// `ListenerSettings::pool` is the default pool, or the first route's pool when there is no
/// default (the routes decide; it only names a pool the listener uses).
#[allow(clippy::too_many_arguments)]
pub(super) fn listener_pools(
    cx: &Ctx,
    protocol: Protocol,
    pool: Option<&Spanned<String>>,
    default_pool: Option<&Spanned<String>>,
    routes: Option<&RawSniRoutes>,
    tls_span: Option<std::ops::Range<usize>>,
    listener_span: std::ops::Range<usize>,
    pool_exists: &dyn Fn(&Spanned<String>) -> Result<(), ConfigError>,
) -> Result<(Arc<str>, Option<SniRoutes>), ConfigError> {
    let Some(routes) = routes else {
        if let Some(d) = default_pool {
            return Err(cx.err(
                d.span(),
                "default_pool applies only with route_by_sni; use pool = \"NAME\"",
            ));
        }
        return match pool {
            Some(p) => {
                pool_exists(p)?;
                Ok((Arc::from(p.get_ref().as_str()), None))
            }
            None => Err(cx.err(listener_span, "listener needs pool = \"NAME\"")),
        };
    };
    if protocol == Protocol::Http {
        return Err(cx.err(
            routes.span(),
            "route_by_sni applies only to protocol = \"tcp\" listeners (an http listener routes after TLS termination)",
        ));
    }
    if let Some(span) = tls_span {
        return Err(cx.err(
            span,
            "route_by_sni relays TLS untouched and cannot be combined with [listener.tls] on the same listener",
        ));
    }
    let default = match (pool, default_pool) {
        (Some(_), Some(d)) => {
            return Err(cx.err(
                d.span(),
                "set either pool or default_pool on a route_by_sni listener, not both (they mean the same: where a missing or unknown SNI goes)",
            ))
        }
        (p, d) => p.or(d),
    };
    if routes.get_ref().is_empty() {
        return Err(cx.err(
            routes.span(),
            "route_by_sni must list at least one \"NAME\" = \"POOL\"",
        ));
    }
    let mut entries: Vec<_> = routes.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut seen: HashMap<SniPattern, usize> = HashMap::new();
    let mut out: Vec<(SniPattern, Arc<str>)> = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let pattern = sni_pattern(k.get_ref()).ok_or_else(|| {
            cx.err(
                k.span(),
                format!(
                    "route_by_sni name {:?} is invalid; expected a DNS name such as \"a.example\" or a wildcard such as \"*.b.example\"",
                    k.get_ref()
                ),
            )
        })?;
        if let Some(first) = seen.get(&pattern) {
            let line = Location::of_offset(cx.text, *first).line;
            return Err(cx.err(
                k.span(),
                format!(
                    "route_by_sni name {:?} is listed twice (names are case-insensitive; first at line {line})",
                    k.get_ref()
                ),
            ));
        }
        seen.insert(pattern.clone(), k.span().start);
        pool_exists(v)?;
        out.push((pattern, Arc::from(v.get_ref().as_str())));
    }
    let default_pool = match default {
        Some(d) => {
            pool_exists(d)?;
            Some(Arc::from(d.get_ref().as_str()))
        }
        None => None,
    };
    // `out` is not empty: an empty table was refused above.
    let listener_pool = default_pool.clone().unwrap_or_else(|| out[0].1.clone());
    Ok((
        listener_pool,
        Some(SniRoutes {
            routes: out,
            default_pool,
        }),
    ))
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
