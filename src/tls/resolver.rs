//! The SNI certificate resolver: picks a listener's certificate from the ClientHello.
//!
//! Exact SAN names win over wildcards (`*.b.example` covers one label, RFC 6125 §6.4.3);
//! a missing or unknown name gets the default certificate (the first listed), or nothing
//! when `sni_strict` (the handshake is then refused). Several certificates may carry the
//! same names (an ECDSA and an RSA one, say): the first whose key can sign with a scheme the
//! client offers is chosen, so old RSA-only clients still get a certificate they can use.
//! Pure lookups: no I/O, no allocation unless the client sent upper-case letters.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

#[derive(Debug)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// `*.b.example` is stored under `b.example`.
    wildcard: HashMap<String, Vec<Arc<CertifiedKey>>>,
    /// The first certificate, then any other carrying exactly the same names.
    default: Vec<Arc<CertifiedKey>>,
    strict: bool,
}

impl SniResolver {
    /// `certs` in config order with their DNS names (lower-case); the first is the default.
    /// Not empty (config validation guarantees it; an empty list resolves nothing).
    pub(crate) fn new(certs: &[(Arc<CertifiedKey>, Vec<String>)], strict: bool) -> Self {
        let mut exact: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<Arc<CertifiedKey>>> = HashMap::new();
        for (key, names) in certs {
            for n in names {
                let slot = match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_default(),
                    None => exact.entry(n.clone()).or_default(),
                };
                if !slot.iter().any(|k| Arc::ptr_eq(k, key)) {
                    slot.push(key.clone());
                }
            }
        }
        let default = match certs.first() {
            Some((_, first_names)) => certs
                .iter()
                .filter(|(_, names)| names == first_names)
                .map(|(k, _)| k.clone())
                .collect(),
            None => Vec::new(),
        };
        SniResolver {
            exact,
            wildcard,
            default,
            strict,
        }
    }

    /// The certificates that may answer `sni`, best first; `None`: refuse.
    pub(crate) fn candidates(&self, sni: Option<&str>) -> Option<&[Arc<CertifiedKey>]> {
        let found = sni.and_then(|name| {
            let lower;
            let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = name.to_ascii_lowercase();
                lower.as_str()
            } else {
                name
            };
            let name = name.strip_suffix('.').unwrap_or(name);
            self.exact.get(name).or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
        });
        match found {
            Some(v) => Some(v.as_slice()),
            None if self.strict || self.default.is_empty() => None,
            None => Some(self.default.as_slice()),
        }
    }
}

/// The first certificate whose key can sign with one of `schemes`, else the first.
fn pick(list: &[Arc<CertifiedKey>], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
    if list.len() > 1 {
        if let Some(k) = list.iter().find(|k| k.key.choose_scheme(schemes).is_some()) {
            return Some(k.clone());
        }
    }
    list.first().cloned()
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        pick(
            self.candidates(hello.server_name())?,
            hello.signature_schemes(),
        )
    }
}
