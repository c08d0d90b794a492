//! Why TLS settings could not be loaded: which listener or pool, which config line, which
//! file, and what is wrong with it (and, where it helps, what would be right).

use std::fmt;
use std::path::PathBuf;

use crate::config::ConfigSpot;

/// A TLS loading failure. Displayed as
/// `fulcrum.toml:12:5: listener "web": /etc/fulcrum/a.pem: certificate expired on 2026-01-01T00:00:00Z`.
#[derive(Debug)]
pub struct TlsError {
    /// `listener "web"` or `pool "app"`.
    pub owner: String,
    /// Where the setting was written, when known.
    pub at: Option<Box<ConfigSpot>>,
    /// The file involved, when one is.
    pub path: Option<PathBuf>,
    /// What is wrong (boxed: errors travel in `Result`s on the load path).
    pub kind: Box<TlsErrorKind>,
}

/// What is wrong, without the where.
#[derive(Debug, thiserror::Error)]
pub enum TlsErrorKind {
    /// The file could not be read (missing, permissions...).
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// No PEM certificate in the file.
    #[error("no certificate found; expected a PEM file with -----BEGIN CERTIFICATE-----")]
    NoCertificate,
    /// No usable PEM private key in the file.
    #[error("no private key found; expected a PEM file with -----BEGIN PRIVATE KEY----- (PKCS#8), RSA PRIVATE KEY or EC PRIVATE KEY")]
    NoKey,
    /// An encrypted private key.
    #[error("the private key is encrypted; give an unencrypted key (e.g. `openssl pkey -in KEY -out KEY.plain`)")]
    EncryptedKey,
    /// A PEM block that does not parse.
    #[error("invalid PEM: {0}")]
    BadPem(String),
    /// The key was read but cannot be used for signing.
    #[error("unsupported or invalid private key ({0}); expected RSA (2048+ bits), ECDSA P-256/P-384 or Ed25519")]
    BadKey(String),
    /// The key is not the certificate's.
    #[error("private key {key} does not match this certificate")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
    },
    /// A certificate that does not parse as X.509.
    #[error("certificate #{index} in the chain is not valid X.509: {why}")]
    BadCertificate {
        /// 0 = the leaf.
        index: usize,
        /// The parser's words.
        why: String,
    },
    /// A certificate past its notAfter.
    #[error("certificate #{index} in the chain ({subject}) expired on {date}")]
    Expired {
        /// 0 = the leaf.
        index: usize,
        /// Its subject.
        subject: String,
        /// notAfter, RFC 3339.
        date: String,
    },
    /// A certificate before its notBefore.
    #[error("certificate #{index} in the chain ({subject}) is not valid before {date}")]
    NotYetValid {
        /// 0 = the leaf.
        index: usize,
        /// Its subject.
        subject: String,
        /// notBefore, RFC 3339.
        date: String,
    },
    /// An OCSP file that is not a DER OCSP response.
    #[error("not a DER OCSP response ({0})")]
    BadOcsp(&'static str),
    /// A CA file with no usable certificate.
    #[error("no usable CA certificate ({0})")]
    NoRoots(String),
    /// rustls refused the assembled configuration.
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

impl TlsError {
    pub(crate) fn new(owner: &str, at: Option<&ConfigSpot>, kind: TlsErrorKind) -> Self {
        TlsError {
            owner: owner.to_string(),
            at: at.map(|a| Box::new(a.clone())),
            path: None,
            kind: Box::new(kind),
        }
    }

    pub(crate) fn file(
        owner: &str,
        at: Option<&ConfigSpot>,
        path: &std::path::Path,
        kind: TlsErrorKind,
    ) -> Self {
        TlsError {
            path: Some(path.to_path_buf()),
            ..TlsError::new(owner, at, kind)
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        write!(f, "{}: ", self.owner)?;
        if let Some(p) = &self.path {
            write!(f, "{}: ", p.display())?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            TlsErrorKind::Read(e) => Some(e),
            _ => None,
        }
    }
}
