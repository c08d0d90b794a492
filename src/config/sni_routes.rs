//! A tcp listener's `route_by_sni`: its validated form, and the rules that settle which
//! pool(s) a listener names (`pool`, `default_pool`, the routes). Pure: no I/O.

use std::collections::HashMap;
use std::sync::Arc;

use toml::Spanned;

use super::tls_schema::RawSniRoutes;
use super::validate::Ctx;
use super::{ConfigError, Location, Protocol};

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
