//! Routing: a listener's compiled route table. It maps a request's host, path, method and
//! headers to an action — a pool, a weighted split between pools, a redirect, or a fixed
//! response — plus the rewrites to apply on the way. It is pure: no I/O, no clocks, no
//! sockets, and no allocation per match.
//!
//! Data enters as validated [`RouteSettings`](crate::config::RouteSettings) (one list per
//! listener, in config order) and leaves as a [`Match`] per request.
//!
//! **Matching.** Routes are tried in config order and the first whose predicates all hold
//! wins. [`RouteTable::compile`] (once per config generation) indexes them so a request
//! only looks at routes that can match: exact hosts in a hash map, wildcard hosts in a
//! suffix table, and, per host, paths in a prefix tree (exact and prefix paths) beside the
//! regex and any-path routes. Each index yields candidates in config order, and the lowest
//! index whose remaining predicates (method, headers, regex) hold is the answer — exactly
//! what a linear scan would return (a property test holds the table to it). Hosts match
//! case-insensitively, ignoring a port and a trailing dot. No route matching → the
//! listener's default pool, or [`Match::NotFound`] (404) when it has none.
//!
//! **The request path, in named steps** (how the proxy uses this module):
//! 1. *route*: `table.find(&RequestView { .. })`. A [`Action::Redirect`] or
//!    [`Action::Respond`] answers here, with the route's response header edits, without
//!    touching a pool. A split picks its pool with [`Split::pick`] (keyed by the listener's
//!    [`SplitKey`], else random).
//! 2. *rewrite*: [`Rewrites::rewrite_path`] (`strip_prefix`), then
//!    [`Rewrites::edit_request`] (request header removes, then sets).
//! 3. *admit → pick → send → retry* as before, on the chosen pool; once a server is
//!    picked, `host_rewrite` sets `Host` (and the h2 authority) to the server's name
//!    ([`Rewrites::host_for`]).
//! 4. On the response head: [`Rewrites::edit_response`] (removes, then sets), last.
//!
//! Split weight overrides outlive rebuilds in a [`SplitRegistry`]. [`RequestId`] makes
//! `X-Request-ID` values (whether to trust an inbound one is the proxy's call).

mod action;
mod host;
mod pattern;
mod radix;
mod registry;
mod request_id;
mod rewrite;
mod semantics;
mod split;
mod table;

#[cfg(test)]
mod properties;

use http::{HeaderMap, Method};

pub use action::{Redirect, RedirectError, RedirectPath, Respond};
pub use host::{normalize_host, HostPattern, HOST_BUF};
pub use pattern::{HeaderCond, HeaderMatch, MethodSet, PathMatch, PathRegex};
pub use registry::{DroppedOverride, SplitOverride, SplitRegistry};
pub use request_id::{RequestId, X_REQUEST_ID};
pub use rewrite::{host_value, HeaderEdits, Rewrites};
pub use semantics::{matches, shadows};
pub use split::{Split, SplitError, SplitKey, SplitState, SplitTarget, MAX_SPLIT_WEIGHT};
pub use table::{Action, Compiled, Route, RouteTable};

/// What routing looks at in a request. Nothing is copied: the proxy lends its parts.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The `Host` header, or the URI authority (h2 `:authority`, absolute-form).
    pub host: Option<&'a str>,
    /// The path, without the query.
    pub path: &'a str,
    /// The method.
    pub method: &'a Method,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

/// A pool named by a table: an index into [`RouteTable::pools`], so the proxy can resolve
/// each name to its pool once per generation and index per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolId(pub u32);

impl PoolId {
    /// As an index into [`RouteTable::pools`].
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The outcome of routing one request.
#[derive(Clone, Copy, Debug)]
pub enum Match<'t> {
    /// This route matched: do its action.
    Route(&'t Route),
    /// No route matched: the listener's default pool serves.
    Default(PoolId),
    /// No route matched and there is no default pool: answer 404.
    NotFound,
}

impl Match<'_> {
    /// The `route` label for metrics and the access log: the route's name, `(default)` or
    /// `(none)` (parentheses cannot appear in route names, so these never collide).
    pub fn label(&self) -> &str {
        match self {
            Match::Route(r) => r.name(),
            Match::Default(_) => "(default)",
            Match::NotFound => "(none)",
        }
    }
}
