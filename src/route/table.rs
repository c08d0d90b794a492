//! The compiled route table and its lookup.
//!
//! Layout: routes in config order; hosts index into *buckets* (one per exact host, one per
//! wildcard suffix, one for routes without `host`), and each bucket indexes its routes by
//! path in a radix tree (exact and prefix paths) beside a list of the others (regex and
//! any-path routes). Every list holds route indices in ascending order. A lookup visits the
//! buckets the host selects and, in each, the lists the path selects, scanning each list
//! only while its indices are below the best match found so far: the result is the lowest
//! index that matches, as a linear scan would find, without visiting unrelated routes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::host::{normalize_host, HostPattern, HOST_BUF};
use super::pattern::{HeaderMatch, MethodSet, PathMatch, PathRegex};
use super::radix::Radix;
use super::registry::{DroppedOverride, SplitRegistry};
use super::split::{Split, SplitError, SplitState};
use super::{Match, PoolId, Redirect, RequestView, Respond, Rewrites};
use crate::config::{RouteAction, RouteSettings};

/// What a matched route does.
#[derive(Clone, Debug)]
pub enum Action {
    /// Forward to this pool.
    Pool(PoolId),
    /// Forward to one of these pools, by weight.
    Split(Split),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    Respond(Respond),
}

/// One compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    index: u32,
    name: Arc<str>,
    action: Action,
    rewrites: Rewrites,
    methods: Option<MethodSet>,
    headers: Box<[HeaderMatch]>,
    /// Set for regex routes only: exact and prefix paths are checked by the index.
    regex: Option<PathRegex>,
}

impl Route {
    /// Position in the listener's route list, from 0 (for per-route metric handles).
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// Name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// What it does.
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// What it rewrites.
    pub fn rewrites(&self) -> &Rewrites {
        &self.rewrites
    }

    /// The predicates the index does not decide.
    #[inline]
    fn rest_matches(&self, req: &RequestView) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(req.method))
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.regex.as_ref().is_none_or(|r| r.is_match(req.path))
    }
}

/// A word-at-a-time multiply-rotate hash (as rustc's FxHash) with a final fold, for the
/// exact-host map. Lookups use keys from the network, but the map's contents come only from
/// the config, so keys chosen to collide cost nothing extra.
#[derive(Default)]
struct HostHasher(u64);

const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl HostHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
    }
}

impl Hasher for HostHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // Fold the high bits down: the map takes its bucket from the low bits and its
        // control byte from the top ones.
        self.0 ^ (self.0 >> 32)
    }
}

/// Routes of one host bucket, by path.
#[derive(Clone, Debug)]
struct PathIndex {
    tree: Radix<PathNode>,
    /// Regex and any-path routes.
    others: Vec<u32>,
    /// The lowest route index in this bucket, to skip it when a better match is known.
    min: u32,
}

#[derive(Clone, Debug, Default)]
struct PathNode {
    prefix: Vec<u32>,
    exact: Vec<u32>,
}

impl Default for PathIndex {
    fn default() -> Self {
        PathIndex {
            tree: Radix::new(),
            others: Vec::new(),
            min: u32::MAX,
        }
    }
}

/// Appends `i` unless it is already last (a route naming a host twice).
fn push(list: &mut Vec<u32>, i: u32) {
    if list.last() != Some(&i) {
        list.push(i);
    }
}

impl PathIndex {
    fn add(&mut self, i: u32, path: &PathMatch) {
        self.min = self.min.min(i);
        match path {
            PathMatch::Exact(p) => push(&mut self.tree.entry(p.as_bytes()).exact, i),
            PathMatch::Prefix(p) => push(&mut self.tree.entry(p.as_bytes()).prefix, i),
            // A regex anchored with a literal start only matches paths that begin with it:
            // indexed there, it is only run on those paths (and checked as a candidate).
            PathMatch::Regex(r) => match r.literal_prefix() {
                Some(p) => push(&mut self.tree.entry(p.as_bytes()).prefix, i),
                None => push(&mut self.others, i),
            },
            PathMatch::Any => push(&mut self.others, i),
        }
    }
}

/// A listener's routes, compiled for lookup.
#[derive(Clone, Debug)]
pub struct RouteTable {
    listener: Arc<str>,
    routes: Box<[Route]>,
    pools: Box<[Arc<str>]>,
    default: Option<PoolId>,
    exact_hosts: HashMap<Box<[u8]>, u32, BuildHasherDefault<HostHasher>>,
    /// Keyed by the reversed `.suffix`, so a walk over the reversed host finds every
    /// wildcard that matches it.
    wildcard_hosts: Radix<Option<u32>>,
    has_wildcards: bool,
    any_host: PathIndex,
    buckets: Box<[PathIndex]>,
}

/// A table built against a [`SplitRegistry`], with the overrides the rebuild dropped.
#[derive(Debug)]
pub struct Compiled {
    /// The table.
    pub table: RouteTable,
    /// Overrides that could not be kept (log each once).
    pub dropped: Vec<DroppedOverride>,
}

impl RouteTable {
    /// Compiles `routes` (in config order) with `default_pool` for requests no route
    /// matches. Splits get private states: use [`RouteTable::compile_shared`] in the proxy,
    /// so that weight overrides survive reloads.
    pub fn compile(routes: &[RouteSettings], default_pool: Option<&Arc<str>>) -> RouteTable {
        let states = split_pools(routes)
            .iter()
            .map(|(_, pools)| Arc::new(SplitState::new(pools)))
            .collect();
        RouteTable::build("", routes, default_pool, states)
    }

    /// Compiles the routes of `listener`, taking each split's state (and admin override)
    /// from `registry` (see [`SplitRegistry`]). Call once per config generation, in the
    /// reload step that can no longer fail.
    pub fn compile_shared(
        listener: &str,
        routes: &[RouteSettings],
        default_pool: Option<&Arc<str>>,
        registry: &SplitRegistry,
    ) -> Compiled {
        let (states, dropped) = registry.adopt(listener, &split_pools(routes));
        Compiled {
            table: RouteTable::build(listener, routes, default_pool, states),
            dropped,
        }
    }

    fn build(
        listener: &str,
        settings: &[RouteSettings],
        default_pool: Option<&Arc<str>>,
        states: Vec<Arc<SplitState>>,
    ) -> RouteTable {
        let mut pools: Vec<Arc<str>> = Vec::new();
        let mut pool_id = |name: &Arc<str>| {
            let i = pools.iter().position(|p| p == name).unwrap_or_else(|| {
                pools.push(name.clone());
                pools.len() - 1
            });
            PoolId(u32::try_from(i).expect("fewer than 2^32 pools"))
        };
        let default = default_pool.map(&mut pool_id);
        let mut states = states.into_iter();
        let mut routes = Vec::with_capacity(settings.len());
        let mut exact_hosts: HashMap<Box<[u8]>, u32, BuildHasherDefault<HostHasher>> =
            HashMap::default();
        let mut wildcards: HashMap<Box<str>, u32> = HashMap::new();
        let mut buckets: Vec<PathIndex> = Vec::new();
        let mut any_host = PathIndex::default();
        for (i, s) in settings.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 routes");
            let action = match &s.action {
                RouteAction::Pool(p) => Action::Pool(pool_id(p)),
                RouteAction::Split(targets) => Action::Split(Split::new(
                    targets.iter().map(|t| pool_id(&t.pool)).collect(),
                    targets.iter().map(|t| t.weight).collect(),
                    states.next().expect("one state per split route"),
                )),
                RouteAction::Redirect(r) => Action::Redirect(r.clone()),
                RouteAction::Respond(r) => Action::Respond(r.clone()),
            };
            if s.hosts.is_empty() {
                any_host.add(i, &s.path);
            }
            for h in &s.hosts {
                let slot = match h {
                    HostPattern::Exact(name) => *exact_hosts
                        .entry(name.as_bytes().into())
                        .or_insert_with(|| {
                            buckets.push(PathIndex::default());
                            (buckets.len() - 1) as u32
                        }),
                    HostPattern::Wildcard(suffix) => {
                        *wildcards.entry(suffix.clone()).or_insert_with(|| {
                            buckets.push(PathIndex::default());
                            (buckets.len() - 1) as u32
                        })
                    }
                };
                buckets[slot as usize].add(i, &s.path);
            }
            routes.push(Route {
                index: i,
                name: s.name.clone(),
                action,
                rewrites: s.rewrites.clone(),
                methods: s.methods.clone(),
                headers: s.headers.clone().into(),
                regex: match &s.path {
                    PathMatch::Regex(r) => Some(r.clone()),
                    _ => None,
                },
            });
        }
        let mut wildcard_hosts = Radix::new();
        for (suffix, bucket) in &wildcards {
            let key: Vec<u8> = suffix.bytes().rev().chain([b'.']).collect();
            // Walked from the host's end: the reversed `.suffix`.
            *wildcard_hosts.entry(&key) = Some(*bucket);
        }
        RouteTable {
            listener: listener.into(),
            routes: routes.into(),
            pools: pools.into(),
            default,
            exact_hosts,
            wildcard_hosts,
            has_wildcards: !wildcards.is_empty(),
            any_host,
            buckets: buckets.into(),
        }
    }

    /// Whether any route names a host: if none does, [`RouteTable::find`] never reads
    /// [`RequestView::host`], and a caller need not look it up.
    pub fn uses_host(&self) -> bool {
        !self.buckets.is_empty()
    }

    /// The route for this request: the first in config order whose predicates all hold,
    /// else the default pool, else `NotFound`. Allocates nothing.
    pub fn find<'t>(&'t self, req: &RequestView) -> Match<'t> {
        let mut best = u32::MAX;
        let mut buf = [0u8; HOST_BUF];
        let host = match req.host {
            Some(h) if !self.buckets.is_empty() => normalize_host(h, &mut buf),
            _ => None,
        };
        if let Some(host) = host {
            if !self.exact_hosts.is_empty() {
                if let Some(&b) = self.exact_hosts.get(host) {
                    self.scan(&self.buckets[b as usize], req, &mut best);
                }
            }
            if self.has_wildcards {
                // A wildcard needs at least one byte beyond its `.suffix`: not `exact`.
                self.wildcard_hosts.walk_rev(host, |bucket, exact| {
                    if let (Some(b), false) = (bucket, exact) {
                        self.scan(&self.buckets[*b as usize], req, &mut best);
                    }
                });
            }
        }
        self.scan(&self.any_host, req, &mut best);
        match self.routes.get(best as usize) {
            Some(r) => Match::Route(r),
            None => self.default.map_or(Match::NotFound, Match::Default),
        }
    }

    /// Lowers `best` to the first matching route of this bucket below it, if any.
    #[inline]
    fn scan(&self, idx: &PathIndex, req: &RequestView, best: &mut u32) {
        if idx.min >= *best {
            return;
        }
        // Most nodes of a path tree only join edges: skip their empty lists without a call.
        idx.tree.walk(req.path.as_bytes(), |node, exact| {
            if !node.prefix.is_empty() {
                self.first(&node.prefix, req, best);
            }
            if exact && !node.exact.is_empty() {
                self.first(&node.exact, req, best);
            }
        });
        if !idx.others.is_empty() {
            self.first(&idx.others, req, best);
        }
    }

    #[inline]
    fn first(&self, list: &[u32], req: &RequestView, best: &mut u32) {
        for &i in list {
            if i >= *best {
                return;
            }
            if self.routes[i as usize].rest_matches(req) {
                *best = i;
                return;
            }
        }
    }

    /// The routes, in config order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// The pools the table names, indexed by [`PoolId`]: resolve each once per generation.
    pub fn pools(&self) -> &[Arc<str>] {
        &self.pools
    }

    /// The default pool.
    pub fn default_pool(&self) -> Option<PoolId> {
        self.default
    }

    /// Overrides the weights of split route `route` (one per pool, in split order). With a
    /// table from [`RouteTable::compile_shared`], the override lives in the registry and
    /// survives reloads that keep the route's pools.
    pub fn set_split_weights(&self, route: &str, weights: &[u32]) -> Result<(), SplitError> {
        self.split(route)?.state().set(weights)
    }

    /// Clears the override of split route `route`.
    pub fn reset_split_weights(&self, route: &str) -> Result<(), SplitError> {
        self.split(route)?.state().reset();
        Ok(())
    }

    fn split(&self, route: &str) -> Result<&Split, SplitError> {
        match self.route(route).map(Route::action) {
            Some(Action::Split(s)) => Ok(s),
            _ => Err(SplitError::NotFound {
                listener: self.listener.to_string(),
                route: route.into(),
            }),
        }
    }
}

/// (route name, pools) of each split route, in order.
fn split_pools(routes: &[RouteSettings]) -> Vec<(Arc<str>, Vec<Arc<str>>)> {
    routes
        .iter()
        .filter_map(|r| match &r.action {
            RouteAction::Split(t) => {
                Some((r.name.clone(), t.iter().map(|t| t.pool.clone()).collect()))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
