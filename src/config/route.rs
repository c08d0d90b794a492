//! `[[listener.route]]`, `split_key` and `error_pages`: their schema, their validated form,
//! and the checks that tie them to the rest of the file (pools exist, one action per route,
//! a rewrite only where it can apply). Routes an earlier route makes unreachable are
//! warnings, not errors.
//!
//! Body files (`respond.file`, `error_pages.N.file`) are read here, at load time, relative
//! to the config file: `fulcrum check` then reports a missing or oversized file at its line,
//! a reload either has every body or changes nothing, and the request path never reads a
//! file. Editing a body file takes effect at the next reload.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use http::{Method, StatusCode};
use toml::Spanned;

use super::validate::Ctx;
use super::{ConfigError, Location, Protocol};
use crate::route::{
    shadows, HeaderCond, HeaderEdits, HeaderMatch, HostPattern, MethodSet, PathMatch, Redirect,
    RedirectPath, Respond, Rewrites, SplitKey, SplitTarget,
};

mod actions;
mod body;
mod checks;
mod schema;

use actions::{action, error_pages, split_key};
use checks::{header_edits, header_name, header_value, method, path_match, strip_prefix};
pub use schema::{RawErrorPages, RawRoute};

/// One `[[listener.route]]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSettings {
    /// Name, unique in its listener (metrics, logs, the admin API).
    pub name: Arc<str>,
    /// Hosts it answers for; empty: any host.
    pub hosts: Vec<HostPattern>,
    /// What it requires of the path.
    pub path: PathMatch,
    /// Methods it accepts; `None`: any.
    pub methods: Option<MethodSet>,
    /// Header conditions, all required.
    pub headers: Vec<HeaderMatch>,
    /// What it does.
    pub action: RouteAction,
    /// What it rewrites (forwarding routes; response edits on any route).
    pub rewrites: Rewrites,
}

/// What a route does.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    /// `pool = "..."`.
    Pool(Arc<str>),
    /// `split = [ { pool, weight }, ... ]`, at least two distinct pools.
    Split(Vec<SplitTarget>),
    /// `redirect = { ... }`.
    Redirect(Redirect),
    /// `respond = { ... }`.
    Respond(Respond),
}

impl RouteAction {
    /// Whether requests go to a pool (so request rewrites can apply).
    pub fn forwards(&self) -> bool {
        matches!(self, RouteAction::Pool(_) | RouteAction::Split(_))
    }
}

impl fmt::Display for RouteAction {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            RouteAction::Pool(p) => write!(f, "pool {p}"),
            RouteAction::Split(t) => {
                f.write_str("split")?;
                for (i, t) in t.iter().enumerate() {
                    write!(
                        f,
                        "{} {} {}",
                        if i == 0 { "" } else { "," },
                        t.pool,
                        t.weight
                    )?;
                }
                Ok(())
            }
            RouteAction::Redirect(r) => {
                write!(f, "redirect {}", r.status.as_u16())?;
                if let Some(s) = &r.scheme {
                    write!(f, " scheme {s}")?;
                }
                if let Some(h) = &r.host {
                    write!(f, " host {h}")?;
                }
                if let Some(p) = r.port {
                    write!(f, " port {p}")?;
                }
                match &r.path {
                    RedirectPath::Keep => Ok(()),
                    RedirectPath::Replace(p) => write!(f, " path {p}"),
                    RedirectPath::ReplacePrefix { to, .. } => write!(f, " prefix {to}"),
                }
            }
            RouteAction::Respond(r) => write!(f, "respond {}", r.status.as_u16()),
        }
    }
}

impl RouteSettings {
    /// One line: name, what it matches, and what it does.
    pub fn describe(&self) -> String {
        format!(
            "{}: {} -> {}",
            self.name,
            self.describe_match(),
            self.action
        )
    }

    /// What it matches, e.g. `host api.example.com path_prefix /v1/ methods GET`.
    pub fn describe_match(&self) -> String {
        let mut parts = Vec::new();
        if !self.hosts.is_empty() {
            let hosts: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
            parts.push(format!("host {}", hosts.join(",")));
        }
        if self.path != PathMatch::Any {
            parts.push(self.path.to_string());
        }
        if let Some(m) = &self.methods {
            let m: Vec<&str> = m.methods().iter().map(Method::as_str).collect();
            parts.push(format!("methods {}", m.join(",")));
        }
        if !self.headers.is_empty() {
            let h: Vec<String> = self.headers.iter().map(ToString::to_string).collect();
            parts.push(format!("headers {}", h.join(",")));
        }
        if parts.is_empty() {
            return "every request".into();
        }
        parts.join(" ")
    }
}

/// A listener's custom bodies for the answers the proxy gives itself (502, 503, 504).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorPages(Vec<Respond>);

impl ErrorPages {
    /// The page for `status`, if one is configured.
    pub fn get(&self, status: StatusCode) -> Option<&Respond> {
        self.0.iter().find(|p| p.status == status)
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the routing keys of one listener validate into.
pub(super) struct Routing {
    pub default_pool: Option<Arc<str>>,
    pub routes: Vec<RouteSettings>,
    pub split_key: Option<SplitKey>,
    pub error_pages: ErrorPages,
}

/// The routing keys of listener `l`. `pools` are the defined pools, in file order.
pub(super) fn routing(
    cx: &Ctx,
    l: &super::schema::RawListener,
    listener: &str,
    protocol: Protocol,
    pools: &[&Spanned<String>],
) -> Result<Routing, ConfigError> {
    if protocol == Protocol::Tcp {
        // A tcp listener's pools are settled with its SNI routes (`sni_routes`).
        let refused = [
            ("[[listener.route]]", l.route.first().map(|r| r.name.span())),
            ("split_key", l.split_key.as_ref().map(Spanned::span)),
            ("error_pages", l.error_pages.as_ref().map(Spanned::span)),
        ];
        if let Some((key, Some(span))) = refused.into_iter().find(|(_, s)| s.is_some()) {
            return Err(cx.err(span, format!("{key} applies only to protocol = \"http\" listeners; a tcp listener relays bytes to its pool (or routes by SNI with route_by_sni)")));
        }
        return Ok(Routing {
            default_pool: None,
            routes: Vec::new(),
            split_key: None,
            error_pages: ErrorPages::default(),
        });
    }
    let default_pool = match &l.pool {
        Some(p) => Some(known_pool(cx, p, &format!("listener {listener:?}"), pools)?),
        None if l.route.is_empty() => {
            return Err(cx.err(
                l.name.span(),
                format!("listener {listener:?} needs `pool`, or [[listener.route]] tables that say where requests go"),
            ))
        }
        None => None,
    };

    let mut routes: Vec<RouteSettings> = Vec::with_capacity(l.route.len());
    let mut seen: HashMap<&str, Range<usize>> = HashMap::new();
    for r in &l.route {
        let s = route(cx, r, pools)?;
        if let Some(first) = seen.get(r.name.get_ref().as_str()) {
            return Err(cx.err(
                r.name.span(),
                format!(
                    "duplicate route name {:?} in listener {listener:?} (first defined at line {})",
                    &*s.name,
                    cx.line(first.start)
                ),
            ));
        }
        seen.insert(r.name.get_ref(), r.name.span());
        routes.push(s);
    }
    warn_unreachable(cx, l, &routes);

    let split_key = match &l.split_key {
        None => None,
        Some(k) => {
            if !routes
                .iter()
                .any(|r| matches!(r.action, RouteAction::Split(_)))
            {
                return Err(cx.err(
                    k.span(),
                    format!(
                        "split_key has no effect: no route of listener {listener:?} has a split"
                    ),
                ));
            }
            Some(split_key(cx, k)?)
        }
    };
    let error_pages = match &l.error_pages {
        None => ErrorPages::default(),
        Some(p) => error_pages(cx, p.get_ref())?,
    };
    Ok(Routing {
        default_pool,
        routes,
        split_key,
        error_pages,
    })
}

/// Warns about each route an earlier one covers, and about a default pool that no request
/// can reach.
fn warn_unreachable(cx: &Ctx, l: &super::schema::RawListener, routes: &[RouteSettings]) {
    for (j, later) in routes.iter().enumerate() {
        if let Some(i) = (0..j).find(|&i| shadows(&routes[i], later)) {
            cx.warn(
                l.route[j].name.span(),
                format!(
                    "route {:?} is never used: route {:?} above it (line {}) matches every request it would; move it up or narrow the other",
                    &*later.name,
                    &*routes[i].name,
                    cx.line(l.route[i].name.span().start)
                ),
            );
        }
    }
    let catch_all = routes.iter().position(|r| {
        r.hosts.is_empty()
            && r.path == PathMatch::Any
            && r.methods.is_none()
            && r.headers.is_empty()
    });
    if let (Some(i), Some(p)) = (catch_all, &l.pool) {
        cx.warn(
            p.span(),
            format!(
                "pool {:?} is never used as the default: route {:?} (line {}) matches every request",
                p.get_ref(),
                &*routes[i].name,
                cx.line(l.route[i].name.span().start)
            ),
        );
    }
}

pub(super) fn known_pool(
    cx: &Ctx,
    name: &Spanned<String>,
    who: &str,
    pools: &[&Spanned<String>],
) -> Result<Arc<str>, ConfigError> {
    if pools.iter().any(|p| p.get_ref() == name.get_ref()) {
        return Ok(Arc::from(name.get_ref().as_str()));
    }
    let known: Vec<String> = pools.iter().map(|p| format!("{:?}", p.get_ref())).collect();
    Err(cx.err(
        name.span(),
        format!(
            "{who} names pool {:?}, which is not defined; defined pools: {}",
            name.get_ref(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    ))
}

fn route(cx: &Ctx, r: &RawRoute, pools: &[&Spanned<String>]) -> Result<RouteSettings, ConfigError> {
    let name = cx.name(&r.name, "route")?;
    let who = format!("route {:?}", &*name);

    let mut hosts = Vec::new();
    if let Some(list) = &r.host {
        if list.get_ref().is_empty() {
            return Err(cx.err(
                list.span(),
                "host = [] matches no request; leave `host` out to match any host",
            ));
        }
        for h in list.get_ref() {
            let p = HostPattern::parse(h.get_ref()).map_err(|m| cx.err(h.span(), m))?;
            if !hosts.contains(&p) {
                hosts.push(p);
            }
        }
    }

    let path = path_match(cx, r)?;
    let methods = match &r.methods {
        None => None,
        Some(list) if list.get_ref().is_empty() => {
            return Err(cx.err(
                list.span(),
                "methods = [] matches no request; leave `methods` out to match any method",
            ))
        }
        Some(list) => Some(MethodSet::new(
            list.get_ref()
                .iter()
                .map(|m| method(cx, m))
                .collect::<Result<Vec<_>, _>>()?,
        )),
    };
    let mut headers = Vec::new();
    for (k, v) in r
        .headers
        .as_ref()
        .map(|h| h.get_ref().iter())
        .into_iter()
        .flatten()
    {
        let name = header_name(cx, k)?;
        let cond = match v.get_ref() {
            toml::Value::Boolean(true) => HeaderCond::Present,
            toml::Value::Boolean(false) => HeaderCond::Absent,
            toml::Value::String(s) => HeaderCond::Equals(header_value(cx, v.span(), s)?),
            _ => return Err(cx.err(v.span(), "a header condition is a string (the value must equal it), true (present) or false (absent)")),
        };
        headers.push(HeaderMatch { name, cond });
    }

    let action = action(cx, r, &who, &path, pools)?;
    let forwarding_only = [
        ("strip_prefix", r.strip_prefix.as_ref().map(Spanned::span)),
        (
            "request_headers",
            r.request_headers.as_ref().map(Spanned::span),
        ),
        ("host_rewrite", r.host_rewrite.as_ref().map(Spanned::span)),
    ];
    if !action.forwards() {
        if let Some((key, Some(span))) = forwarding_only.into_iter().find(|(_, s)| s.is_some()) {
            return Err(cx.err(span, format!("{key} applies only to routes that forward to a pool (pool or split); {who} answers by itself")));
        }
    }
    let host_rewrite = r.host_rewrite.as_ref().is_some_and(|b| *b.get_ref());
    let rewrites = Rewrites {
        strip_prefix: match &r.strip_prefix {
            None => None,
            Some(s) => Some(strip_prefix(cx, s, &path)?),
        },
        request_headers: match &r.request_headers {
            None => HeaderEdits::default(),
            Some(e) => header_edits(cx, e.get_ref(), true, host_rewrite)?,
        },
        response_headers: match &r.response_headers {
            None => HeaderEdits::default(),
            Some(e) => header_edits(cx, e.get_ref(), false, false)?,
        },
        host_rewrite,
    };
    Ok(RouteSettings {
        name,
        hosts,
        path,
        methods,
        headers,
        action,
        rewrites,
    })
}

impl Ctx<'_> {
    /// The 1-based line of byte offset `offset`.
    pub(super) fn line(&self, offset: usize) -> usize {
        Location::of_offset(self.text, offset).line
    }
}
