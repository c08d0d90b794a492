//! The answers a route gives without a pool: redirects (building `Location` from the route's
//! parts and the request) and fixed responses. Pure: the proxy turns them into responses.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

/// How a redirect's path is formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectPath {
    /// The request's path, unchanged.
    Keep,
    /// `path = "/new"`: this path.
    Replace(Box<str>),
    /// `prefix = "/new/"`: the route's `path_prefix` (`from`) replaced by `to`.
    ReplacePrefix {
        /// The route's path prefix.
        from: Box<str>,
        /// Its replacement.
        to: Box<str>,
    },
}

/// `redirect = { ... }`: answer with a redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
    /// `"http"` or `"https"`; `None`: the client's own (a scheme-relative `//host/...`).
    pub scheme: Option<Box<str>>,
    /// Target host; `None`: the request's host (without its port).
    pub host: Option<Box<str>>,
    /// Target port; `None`: none (the scheme's default), or, when nothing but the path
    /// changes, the request's own authority is kept by a relative `Location`.
    pub port: Option<u16>,
    /// The path.
    pub path: RedirectPath,
    /// Leave the request's query string out.
    pub drop_query: bool,
}

/// Why a `Location` could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    /// The redirect keeps the request's host, and the request named none (or one that is
    /// not a plain name or address).
    #[error("the request has no usable Host to redirect to")]
    NoHost,
    /// The result is not a valid header value.
    #[error("the redirect target is not a valid Location")]
    Invalid,
}

impl Redirect {
    /// The `Location` for a request with this `Host` (or authority), path and query.
    ///
    /// Only the path changes → a relative `/path?query`; a new scheme, host or port → an
    /// absolute `scheme://host[:port]/path?query` (scheme-relative `//host...` when only the
    /// host or port changes), the host being the request's without its port unless given.
    pub fn location(
        &self,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Result<HeaderValue, RedirectError> {
        let mut s = String::with_capacity(64 + path.len() + query.map_or(0, str::len));
        if self.scheme.is_some() || self.host.is_some() || self.port.is_some() {
            let name = match &self.host {
                Some(h) => h,
                None => without_port(host.ok_or(RedirectError::NoHost)?),
            };
            // The request's host goes into the answer: only a plain name or address may.
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
            {
                return Err(RedirectError::NoHost);
            }
            if let Some(scheme) = &self.scheme {
                s.push_str(scheme);
                s.push(':');
            }
            s.push_str("//");
            s.push_str(name);
            if let Some(p) = self.port {
                s.push(':');
                s.push_str(&p.to_string());
            }
        }
        match &self.path {
            RedirectPath::Keep => s.push_str(path),
            RedirectPath::Replace(p) => s.push_str(p),
            RedirectPath::ReplacePrefix { from, to } => match path.strip_prefix(&**from) {
                Some(rest) => {
                    s.push_str(to);
                    s.push_str(rest);
                }
                None => s.push_str(path),
            },
        }
        if let (false, Some(q)) = (self.drop_query, query) {
            s.push(if s.contains('?') { '&' } else { '?' });
            s.push_str(q);
        }
        HeaderValue::try_from(s).map_err(|_| RedirectError::Invalid)
    }
}

/// `host:port` or `[v6]:port` without the port.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// `respond = { ... }`: answer with a fixed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Respond {
    /// Status, 200..=599.
    pub status: StatusCode,
    /// `Content-Type`; `None` only when the body is empty.
    pub content_type: Option<HeaderValue>,
    /// Body bytes (from `body` or read from `file` at config load).
    pub body: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> Redirect {
        Redirect {
            status: StatusCode::PERMANENT_REDIRECT,
            scheme: None,
            host: None,
            port: None,
            path: RedirectPath::Keep,
            drop_query: false,
        }
    }

    #[test]
    fn to_https_keeps_host_path_and_query_and_drops_the_port() {
        let r = Redirect {
            scheme: Some("https".into()),
            ..redirect()
        };
        assert_eq!(
            r.location(Some("Example.com:8080"), "/a/b", Some("x=1&y=2"))
                .unwrap(),
            "https://Example.com/a/b?x=1&y=2"
        );
        assert_eq!(
            r.location(Some("[::1]:8080"), "/", None).unwrap(),
            "https://[::1]/"
        );
        assert_eq!(r.location(None, "/", None), Err(RedirectError::NoHost));
        assert_eq!(
            r.location(Some("evil.example/x?"), "/", None),
            Err(RedirectError::NoHost),
            "a Host with URL syntax in it is not echoed into Location"
        );
    }

    #[test]
    fn drop_query_and_explicit_parts() {
        let r = Redirect {
            scheme: Some("https".into()),
            host: Some("www.example.com".into()),
            port: Some(8443),
            path: RedirectPath::Replace("/new".into()),
            drop_query: true,
            ..redirect()
        };
        assert_eq!(
            r.location(None, "/old", Some("q=1")).unwrap(),
            "https://www.example.com:8443/new"
        );
    }

    #[test]
    fn only_the_path_changes_gives_a_relative_location() {
        let r = Redirect {
            path: RedirectPath::ReplacePrefix {
                from: "/old/".into(),
                to: "/new/".into(),
            },
            ..redirect()
        };
        assert_eq!(
            r.location(Some("h"), "/old/x/y", Some("q")).unwrap(),
            "/new/x/y?q"
        );
        let host_only = Redirect {
            host: Some("other.example".into()),
            ..redirect()
        };
        assert_eq!(
            host_only.location(Some("h:1"), "/p", None).unwrap(),
            "//other.example/p",
            "scheme-relative: the client keeps its scheme"
        );
    }

    #[test]
    fn a_target_with_its_own_query_gets_the_request_query_appended() {
        let r = Redirect {
            path: RedirectPath::Replace("/login?next=1".into()),
            ..redirect()
        };
        assert_eq!(
            r.location(Some("h"), "/x", Some("a=b")).unwrap(),
            "/login?next=1&a=b"
        );
    }
}
