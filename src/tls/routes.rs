//! The SNI route table of a passthrough (tcp) listener: which pool a ClientHello's server
//! name goes to. Exact names are one hash lookup; `*.b.example` matches any name ending in
//! `.b.example` (one label or more before it, not `b.example` itself), the longest suffix
//! first; names compare case-insensitively. Pure: no I/O, no allocation per lookup.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{SniPattern, SniRoutes};

/// Longest DNS name (RFC 1035 §2.3.4), so a lookup lower-cases into a stack buffer.
const MAX_NAME: usize = 253;

/// A compiled `route_by_sni` table.
#[derive(Clone, Debug, Default)]
pub struct SniRouter {
    exact: HashMap<Box<str>, Arc<str>>,
    /// Keyed by the suffix with its leading dot: `.b.example`.
    suffix: HashMap<Box<str>, Arc<str>>,
    default_pool: Option<Arc<str>>,
}

impl SniRouter {
    /// Compiles validated routes.
    pub fn new(routes: &SniRoutes) -> SniRouter {
        let mut r = SniRouter {
            default_pool: routes.default_pool.clone(),
            ..SniRouter::default()
        };
        for (pattern, pool) in &routes.routes {
            match pattern {
                SniPattern::Exact(n) => r.exact.insert(n.as_str().into(), pool.clone()),
                SniPattern::Suffix(s) => r.suffix.insert(s.as_str().into(), pool.clone()),
            };
        }
        r
    }

    /// The pool for `name` by its routes alone (no default).
    pub fn lookup(&self, name: &str) -> Option<&Arc<str>> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > MAX_NAME {
            return None;
        }
        let mut buf = [0u8; MAX_NAME];
        let lower = &mut buf[..name.len()];
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        // ASCII lower-casing of valid UTF-8 is valid UTF-8.
        let lower = std::str::from_utf8(lower).ok()?;
        if let Some(p) = self.exact.get(lower) {
            return Some(p);
        }
        // Each dot starts a candidate suffix; the leftmost is the longest.
        lower
            .match_indices('.')
            .find_map(|(i, _)| self.suffix.get(&lower[i..]))
    }

    /// The pool for a connection that sent `sni`: its route, else the default pool; `None`:
    /// close the connection.
    pub fn route(&self, sni: Option<&str>) -> Option<&Arc<str>> {
        sni.and_then(|n| self.lookup(n))
            .or(self.default_pool.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(default: Option<&str>) -> SniRouter {
        SniRouter::new(&SniRoutes {
            routes: vec![
                (SniPattern::Exact("a.example".into()), Arc::from("pool_a")),
                (SniPattern::Suffix(".b.example".into()), Arc::from("pool_b")),
                (
                    SniPattern::Suffix(".x.b.example".into()),
                    Arc::from("pool_x"),
                ),
                (SniPattern::Exact("y.b.example".into()), Arc::from("pool_y")),
            ],
            default_pool: default.map(Arc::from),
        })
    }

    #[test]
    fn exact_before_wildcard_longest_suffix_first_case_insensitive() {
        let r = router(None);
        let at = |n: &str| r.lookup(n).map(|p| p.to_string());
        assert_eq!(at("a.example").as_deref(), Some("pool_a"));
        assert_eq!(at("A.Example.").as_deref(), Some("pool_a"));
        assert_eq!(at("c.b.example").as_deref(), Some("pool_b"));
        assert_eq!(at("d.c.b.example").as_deref(), Some("pool_b"), "any depth");
        assert_eq!(at("y.b.example").as_deref(), Some("pool_y"), "exact wins");
        assert_eq!(
            at("z.x.b.example").as_deref(),
            Some("pool_x"),
            "longest suffix"
        );
        assert_eq!(at("b.example"), None, "the wildcard's own parent");
        assert_eq!(at("a.example.org"), None);
        assert_eq!(at(""), None);
        assert_eq!(at(&"a".repeat(300)), None);
    }

    #[test]
    fn default_pool_or_close() {
        assert_eq!(router(None).route(None), None);
        assert_eq!(router(None).route(Some("nope.example")), None);
        let r = router(Some("dflt"));
        assert_eq!(r.route(None).map(|p| &**p), Some("dflt"));
        assert_eq!(r.route(Some("nope.example")).map(|p| &**p), Some("dflt"));
        assert_eq!(r.route(Some("a.example")).map(|p| &**p), Some("pool_a"));
    }
}
