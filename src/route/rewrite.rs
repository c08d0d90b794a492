//! Rewrites a route applies to what it forwards: `strip_prefix`, request and response header
//! edits, and `host_rewrite`. Values are validated at config load; applying them cannot fail.
//!
//! Order (the proxy applies them in this order; see the module doc of `route`):
//! 1. `strip_prefix` on the request path ([`Rewrites::rewrite_path`]);
//! 2. request header removes, then sets ([`Rewrites::edit_request`]);
//! 3. after the server is picked, `host_rewrite` ([`Rewrites::host_for`]);
//! 4. on the response head, response header removes, then sets
//!    ([`Rewrites::edit_response`]), last, so that they win over anything added before.

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header edits: remove these names, then set these values (replacing any present).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Removed first.
    pub remove: Vec<HeaderName>,
    /// Then set, each replacing every value of its name.
    pub set: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    /// Removes, then sets.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// What a forwarding route changes in the request and response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrites {
    /// Removed from the front of the path when the path starts with it.
    pub strip_prefix: Option<Box<str>>,
    /// Request header edits.
    pub request_headers: HeaderEdits,
    /// Response header edits.
    pub response_headers: HeaderEdits,
    /// Send `Host` as the chosen server's name (its address unless named).
    pub host_rewrite: bool,
}

impl Rewrites {
    /// The path and query to send upstream when `strip_prefix` changes them; `None` when they
    /// stay as they are. The result always starts with `/`.
    pub fn rewrite_path(&self, path: &str, query: Option<&str>) -> Option<PathAndQuery> {
        let rest = strip_prefix(path, self.strip_prefix.as_deref()?)?;
        let mut s = String::with_capacity(rest.len() + 1 + query.map_or(0, |q| q.len() + 1));
        if !rest.starts_with('/') {
            s.push('/');
        }
        s.push_str(rest);
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        // The pieces came from a valid URI, and a leading `/` keeps them one.
        PathAndQuery::try_from(s).ok()
    }

    /// Request header removes, then sets.
    pub fn edit_request(&self, headers: &mut HeaderMap) {
        self.request_headers.apply(headers);
    }

    /// Response header removes, then sets.
    pub fn edit_response(&self, headers: &mut HeaderMap) {
        self.response_headers.apply(headers);
    }

    /// The `Host` value for server `server_name` when `host_rewrite` is on. Cheaper still:
    /// build each server's value once with [`host_value`] and send that when
    /// `host_rewrite` is true.
    pub fn host_for(&self, server_name: &str) -> Option<HeaderValue> {
        self.host_rewrite.then(|| host_value(server_name)).flatten()
    }
}

/// A server name (or `IP:PORT`) as a `Host` value; `None` if it cannot be one (config server
/// names are always valid).
pub fn host_value(server_name: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(server_name).ok()
}

/// `path` without `prefix` when it starts with it (a plain byte prefix, like `path_prefix`).
fn strip_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(prefix: &str) -> Rewrites {
        Rewrites {
            strip_prefix: Some(prefix.into()),
            ..Rewrites::default()
        }
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash_and_the_query() {
        let r = strip("/v1");
        assert_eq!(
            r.rewrite_path("/v1/users", Some("a=1")).unwrap(),
            "/users?a=1"
        );
        assert_eq!(r.rewrite_path("/v1", None).unwrap(), "/");
        assert_eq!(
            r.rewrite_path("/v1x", None).unwrap(),
            "/x",
            "a plain prefix, as written"
        );
        assert_eq!(
            r.rewrite_path("/v2/users", None),
            None,
            "no prefix, no change"
        );
        assert_eq!(
            strip("/v1/").rewrite_path("/v1/users", None).unwrap(),
            "/users"
        );
        assert_eq!(Rewrites::default().rewrite_path("/v1", None), None);
    }

    #[test]
    fn header_edits_remove_then_set() {
        let edits = HeaderEdits {
            remove: vec![
                HeaderName::from_static("x-debug"),
                HeaderName::from_static("x-env"),
            ],
            set: vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("prod"),
            )],
        };
        let mut h = HeaderMap::new();
        h.append("x-debug", HeaderValue::from_static("1"));
        h.append("x-env", HeaderValue::from_static("dev"));
        h.append("x-env", HeaderValue::from_static("test"));
        h.append("keep", HeaderValue::from_static("k"));
        edits.apply(&mut h);
        assert!(!h.contains_key("x-debug"));
        let env: Vec<_> = h.get_all("x-env").iter().collect();
        assert_eq!(env, ["prod"], "set replaces every value");
        assert_eq!(h["keep"], "k");
    }

    #[test]
    fn host_rewrite_only_when_on() {
        let mut r = Rewrites::default();
        assert_eq!(r.host_for("app1"), None);
        r.host_rewrite = true;
        assert_eq!(r.host_for("app1").unwrap(), "app1");
        assert_eq!(r.host_for("127.0.0.1:9001").unwrap(), "127.0.0.1:9001");
    }
}
