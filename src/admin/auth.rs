//! Who may change things through the admin API.
//!
//! State-changing and expensive calls (`/servers/...`, `/reload`, `/preview`, which parses a
//! posted config and samples every hashing pool) need `Authorization: Bearer <token>` with
//! the token read from `admin.token_file`. Without a token file they are refused, unless the
//! admin listener is bound to loopback and `admin.allow_unauthenticated_loopback = true`.
//! Reading calls (`/metrics`, `/status`) need the token too when `admin.read_auth = true`;
//! `/healthz` never does, so container and load-balancer probes keep working.
//!
//! The token is read when a config is applied (start and every reload), so rotating it is
//! a file write and a reload; a token file that cannot be read fails that start or reload.
//! Each load also warns when the admin listener is reachable off this host without a token.

use std::path::{Path, PathBuf};

use http::{header, HeaderMap};

use crate::config::AdminSettings;

/// Why a token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read admin.token_file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("admin.token_file {} is empty; write a token (e.g. 32 random hex characters) into it", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Why a state-changing call was refused (each maps to 403).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token file is configured and unauthenticated loopback calls are not allowed.
    NoTokenConfigured,
    /// The request carried no bearer token.
    MissingToken,
    /// The request's token does not match.
    WrongToken,
}

impl Denied {
    /// The reason, for the response body and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::NoTokenConfigured => "state-changing admin calls are disabled: set admin.token_file (or, on a loopback bind, admin.allow_unauthenticated_loopback = true)",
            Denied::MissingToken => "missing `Authorization: Bearer <token>` header",
            Denied::WrongToken => "wrong bearer token",
        }
    }
}

/// The authorisation rule in force.
#[derive(Default)]
pub struct Auth {
    token: Option<Box<[u8]>>,
    open_on_loopback: bool,
    read_auth: bool,
}

impl Auth {
    /// The rule for `settings`, reading the token file if one is set.
    pub fn load(settings: Option<&AdminSettings>) -> Result<Auth, AuthError> {
        let Some(s) = settings else {
            return Ok(Auth::default());
        };
        warn_if_exposed(s);
        let token = match &s.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        Ok(Auth {
            token,
            open_on_loopback: s.allow_unauthenticated_loopback && s.bind.ip().is_loopback(),
            read_auth: s.read_auth,
        })
    }

    /// Whether a request with these headers may read `/status` or `/metrics`.
    pub fn check_read(&self, headers: &HeaderMap) -> Result<(), Denied> {
        if self.read_auth {
            self.check(headers)
        } else {
            Ok(())
        }
    }

    /// Whether a request with these headers may change state.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Denied> {
        // A configured token always applies, even on loopback: other local users exist.
        let Some(token) = &self.token else {
            return if self.open_on_loopback {
                Ok(())
            } else {
                Err(Denied::NoTokenConfigured)
            };
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            // RFC 9110 §11.1: the scheme name is case-insensitive.
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..])
            .ok_or(Denied::MissingToken)?;
        if constant_time_eq(trim(given), token) {
            Ok(())
        } else {
            Err(Denied::WrongToken)
        }
    }
}

/// Whether the admin listener is reachable off this host with no token configured: anyone
/// who can reach the port reads status and metrics.
pub fn is_exposed(s: &AdminSettings) -> bool {
    !s.bind.ip().is_loopback() && s.token_file.is_none()
}

/// Logs a warning when [`is_exposed`]; called on every start and reload. Returns whether it warned.
pub fn warn_if_exposed(s: &AdminSettings) -> bool {
    let exposed = is_exposed(s);
    if exposed {
        tracing::warn!(
            bind = %s.bind,
            "the admin listener is not on loopback and has no token: anyone who can reach it reads /status and /metrics; set admin.token_file (and admin.read_auth = true) or bind to 127.0.0.1"
        );
    }
    exposed
}

fn read_token(path: &Path) -> Result<Box<[u8]>, AuthError> {
    let bytes = std::fs::read(path).map_err(|source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let t = trim(&bytes);
    if t.is_empty() {
        return Err(AuthError::Empty {
            path: path.to_path_buf(),
        });
    }
    warn_if_readable_by_others(path);
    Ok(t.into())
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o004 != 0 {
            tracing::warn!(file = %path.display(), "admin token file is readable by every user; chmod 600 it");
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end]
}

/// Compares in time that depends only on the lengths, so a remote caller cannot find the
/// token byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    // Walk the longer input whole; indexes past the shorter one compare against 0.
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn token_rules() {
        let a = Auth {
            token: Some(b"s3cret".to_vec().into()),
            open_on_loopback: true,
            read_auth: false,
        };
        assert_eq!(a.check(&headers(None)), Err(Denied::MissingToken));
        assert_eq!(
            a.check(&headers(Some("Bearer nope"))),
            Err(Denied::WrongToken)
        );
        assert_eq!(
            a.check(&headers(Some("Bearer s3cre"))),
            Err(Denied::WrongToken)
        );
        assert_eq!(
            a.check(&headers(Some("Basic s3cret"))),
            Err(Denied::MissingToken)
        );
        assert_eq!(a.check(&headers(Some("Bearer s3cret"))), Ok(()));
        assert_eq!(a.check(&headers(Some("bearer s3cret"))), Ok(()));
    }

    #[test]
    fn no_token_file() {
        let closed = Auth::default();
        assert_eq!(closed.check(&headers(None)), Err(Denied::NoTokenConfigured));
        let open = Auth {
            token: None,
            open_on_loopback: true,
            read_auth: false,
        };
        assert_eq!(open.check(&headers(None)), Ok(()));
    }

    #[test]
    fn reads_need_the_token_only_with_read_auth() {
        let mut a = Auth {
            token: Some(b"s3cret".to_vec().into()),
            open_on_loopback: false,
            read_auth: false,
        };
        assert_eq!(a.check_read(&headers(None)), Ok(()));
        a.read_auth = true;
        assert_eq!(a.check_read(&headers(None)), Err(Denied::MissingToken));
        assert_eq!(a.check_read(&headers(Some("Bearer s3cret"))), Ok(()));
    }

    #[test]
    fn exposed_means_off_loopback_without_a_token() {
        let s = |bind: &str, token: bool| AdminSettings {
            bind: bind.parse().unwrap(),
            token_file: token.then(|| PathBuf::from("/t")),
            allow_unauthenticated_loopback: false,
            read_auth: false,
        };
        assert!(!is_exposed(&s("127.0.0.1:9901", false)));
        assert!(!is_exposed(&s("[::1]:9901", false)));
        assert!(is_exposed(&s("0.0.0.0:9901", false)));
        assert!(warn_if_exposed(&s("192.0.2.1:9901", false)));
        assert!(!is_exposed(&s("0.0.0.0:9901", true)));
    }

    #[test]
    fn equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(!constant_time_eq(b"", b"a"));
        assert_eq!(trim(b"  tok\n"), b"tok");
    }
}
