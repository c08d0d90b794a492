//! Reading certificate chains, private keys, OCSP responses and CA bundles from PEM/DER
//! files, and checking them before anything is served: the key matches the certificate, and
//! no certificate in the chain is expired or not yet valid. Every failure names the file and
//! the config line it came from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};

use super::error::{TlsError, TlsErrorKind};
use super::x509;
use crate::config::{CertificateFiles, ConfigSpot};

/// Facts about one served certificate, for metrics, `/status` (it serializes as is) and
/// `fulcrum check`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// Label for `fulcrum_tls_certificate_expiry_timestamp_seconds{name}`: the first DNS
    /// name (or the file name), made unique within the listener with a `#2`-style suffix.
    pub name: String,
    /// DNS names it serves (SAN; the CN when it has no DNS SAN), lower-case.
    pub names: Vec<String>,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// Subject.
    pub subject: String,
    /// The PEM file it came from.
    pub cert_file: PathBuf,
    /// The default certificate (the first listed).
    pub is_default: bool,
    /// An OCSP response is stapled.
    pub ocsp_stapled: bool,
}

impl CertInfo {
    /// Whether it expires within `window` of `now` (Unix seconds); for `fulcrum check`'s
    /// 14-day warning.
    pub fn expires_within(&self, window: Duration, now: i64) -> bool {
        self.not_after <= now.saturating_add(window.as_secs() as i64)
    }
}

/// A checked certificate chain with its signing key.
pub(crate) struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn read(owner: &str, at: &ConfigSpot, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::file(owner, Some(at), path, TlsErrorKind::Read(e)))
}

fn pem_error(e: pem::Error) -> TlsErrorKind {
    match e {
        pem::Error::NoItemsFound => TlsErrorKind::NoCertificate,
        other => TlsErrorKind::BadPem(other.to_string()),
    }
}

/// Reads and checks the certificate chain of `path` against the clock `now`.
pub(crate) fn read_chain(
    owner: &str,
    at: &ConfigSpot,
    path: &Path,
    now: i64,
) -> Result<(Vec<CertificateDer<'static>>, x509::Facts), TlsError> {
    let bytes = read(owner, at, path)?;
    let fail = |kind| TlsError::file(owner, Some(at), path, kind);
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(pem_error(e)))?;
    if chain.is_empty() {
        return Err(fail(TlsErrorKind::NoCertificate));
    }
    let mut leaf = None;
    for (index, der) in chain.iter().enumerate() {
        let f =
            x509::facts(der).map_err(|why| fail(TlsErrorKind::BadCertificate { index, why }))?;
        if f.not_after < now {
            return Err(fail(TlsErrorKind::Expired {
                index,
                subject: f.subject,
                date: x509::rfc3339(f.not_after),
            }));
        }
        if f.not_before > now {
            return Err(fail(TlsErrorKind::NotYetValid {
                index,
                subject: f.subject,
                date: x509::rfc3339(f.not_before),
            }));
        }
        if index == 0 {
            leaf = Some(f);
        }
    }
    let leaf = leaf.ok_or_else(|| fail(TlsErrorKind::NoCertificate))?;
    Ok((chain, leaf))
}

/// Reads the private key of `path`.
pub(crate) fn read_key(
    owner: &str,
    at: &ConfigSpot,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(owner, at, path)?;
    let fail = |kind| TlsError::file(owner, Some(at), path, kind);
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => Ok(k),
        Err(pem::Error::NoItemsFound) => {
            let encrypted = bytes.windows(b"ENCRYPTED".len()).any(|w| w == b"ENCRYPTED");
            Err(fail(if encrypted {
                TlsErrorKind::EncryptedKey
            } else {
                TlsErrorKind::NoKey
            }))
        }
        Err(e) => Err(fail(TlsErrorKind::BadPem(e.to_string()))),
    }
}

/// Reads a certificate, its key and OCSP response, and checks that they belong together and
/// are valid at `now`.
pub(crate) fn load_pair(
    owner: &str,
    files: &CertificateFiles,
    now: i64,
) -> Result<Loaded, TlsError> {
    let at = &files.at;
    let (chain, leaf) = read_chain(owner, at, &files.cert, now)?;
    let key_der = read_key(owner, at, &files.key)?;
    let signing = super::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| {
            TlsError::file(
                owner,
                Some(at),
                &files.key,
                TlsErrorKind::BadKey(e.to_string()),
            )
        })?;
    let mut certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // Unknown: the provider cannot tell for this key type; the handshake would then fail
        // on the client's side only, so it is accepted as rustls itself does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::file(
                owner,
                Some(at),
                &files.cert,
                TlsErrorKind::KeyMismatch {
                    key: files.key.clone(),
                },
            ))
        }
        Err(e) => {
            return Err(TlsError::file(
                owner,
                Some(at),
                &files.cert,
                TlsErrorKind::BadCertificate {
                    index: 0,
                    why: e.to_string(),
                },
            ))
        }
    }
    if let Some(ocsp) = &files.ocsp {
        let bytes = read(owner, at, ocsp)?;
        let bad = |why| TlsError::file(owner, Some(at), ocsp, TlsErrorKind::BadOcsp(why));
        if bytes.starts_with(b"-----BEGIN") {
            return Err(bad(
                "this is PEM; give the DER response, e.g. from `openssl ocsp -respout`",
            ));
        }
        // OCSPResponse ::= SEQUENCE {...}: anything else would be stapled as garbage.
        if bytes.len() < 8 || bytes[0] != 0x30 {
            return Err(bad("expected a DER SEQUENCE"));
        }
        certified.ocsp = Some(bytes);
    }
    let name = leaf.dns_names.first().cloned().unwrap_or_else(|| {
        files.cert.file_name().map_or_else(
            || "certificate".into(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    Ok(Loaded {
        info: CertInfo {
            name,
            names: leaf.dns_names,
            serial: leaf.serial,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            subject: leaf.subject,
            cert_file: files.cert.clone(),
            is_default: false,
            ocsp_stapled: certified.ocsp.is_some(),
        },
        key: Arc::new(certified),
    })
}

/// Reads a PEM bundle of CA certificates; also returns the file's bytes (to tell, at a
/// reload, whether the trust changed).
pub(crate) fn load_roots(
    owner: &str,
    at: &ConfigSpot,
    path: &Path,
) -> Result<(RootCertStore, Vec<u8>), TlsError> {
    let bytes = read(owner, at, path)?;
    let fail = |kind| TlsError::file(owner, Some(at), path, kind);
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(pem_error(e)))?;
    if certs.is_empty() {
        return Err(fail(TlsErrorKind::NoCertificate));
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(fail(TlsErrorKind::NoRoots(format!(
            "{ignored} certificates could not be used as trust anchors; expected PEM CA certificates"
        ))));
    }
    Ok((roots, bytes))
}
