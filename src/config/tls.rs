//! TLS settings (`[listener.tls]`, a pool's `tls = {...}`) validated into typed settings;
//! the keys as written are in `tls_schema`, `route_by_sni` in `sni_routes`.
//!
//! Like the rest of `config`, this never opens a file: certificate, key, CA and OCSP paths are
//! only checked for shape here and resolved against the config file's directory. Each file
//! setting keeps the place it was written ([`ConfigSpot`]), so that `tls::ServerTls::load`,
//! which does read the files, can point an error at `fulcrum.toml:LINE:COL`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::tls_schema::{RawListenerTls, RawUpstreamTls};
use super::validate::Ctx;
use super::{ConfigError, Location, Protocol};

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
    let verify = t.verify.as_ref().is_none_or(|v| *v.get_ref());
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

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
