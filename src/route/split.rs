//! Weighted splits between pools (canaries) and their stickiness key.
//!
//! A [`Split`] belongs to one table generation and holds the configured weights. Its
//! [`SplitState`] (the admin override) is shared: the
//! [`SplitRegistry`](super::SplitRegistry) keeps one per (listener, route name) and hands the
//! same state to every generation whose split names the same pools, so an override written
//! into it is seen by the table in force and by every later one, with no step that could
//! miss a concurrent reload. Picking reads a flag and, when overridden, the weights, all
//! atomics: no lock, no allocation.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use super::PoolId;
use crate::balance::{hash_bytes, hash_ip};

/// The largest weight of one side of a split.
pub const MAX_SPLIT_WEIGHT: u32 = 10_000;

/// One side of a split as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitTarget {
    /// Pool name.
    pub pool: Arc<str>,
    /// Weight, 1..=MAX_SPLIT_WEIGHT.
    pub weight: u32,
}

/// What keeps a client on one side of a split (`split_key`); without one, each request is
/// placed at random.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitKey {
    /// The client's IP address.
    ClientIp,
    /// A request header's (first) value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(Box<str>),
}

impl SplitKey {
    /// The key's hash for this request; `None` when the header or cookie is missing (that
    /// request is then placed at random).
    pub fn hash(&self, client_ip: IpAddr, headers: &HeaderMap) -> Option<u64> {
        match self {
            SplitKey::ClientIp => Some(hash_ip(client_ip)),
            SplitKey::Header(h) => headers.get(h).map(|v| hash_bytes(v.as_bytes())),
            SplitKey::Cookie(c) => {
                crate::proxy::headers::cookie(headers, c).map(|v| hash_bytes(v.as_bytes()))
            }
        }
    }
}

impl fmt::Display for SplitKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SplitKey::ClientIp => f.write_str("client_ip"),
            SplitKey::Header(h) => write!(f, "header:{h}"),
            SplitKey::Cookie(c) => write!(f, "cookie:{c}"),
        }
    }
}

/// Why a weight override was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// No split route by that name.
    #[error("no split route {route:?} on listener {listener:?}")]
    NotFound {
        /// Listener name.
        listener: String,
        /// Route name.
        route: String,
    },
    /// The number of weights differs from the number of pools.
    #[error("the split has {pools} pools; got {got} weights")]
    Count {
        /// Pools in the split.
        pools: usize,
        /// Weights given.
        got: usize,
    },
    /// A weight out of range, or all zero.
    #[error("weights must each be 0 to {MAX_SPLIT_WEIGHT}, and not all 0")]
    Range,
}

/// A split's live state, shared across table generations: the admin override, if any.
#[derive(Debug)]
pub struct SplitState {
    pub(super) pools: Box<[Arc<str>]>,
    weights: Box<[AtomicU32]>,
    overridden: AtomicBool,
}

impl SplitState {
    pub(crate) fn new(pools: &[Arc<str>]) -> SplitState {
        SplitState {
            pools: pools.into(),
            weights: pools.iter().map(|_| AtomicU32::new(0)).collect(),
            overridden: AtomicBool::new(false),
        }
    }

    /// The pools, in split order.
    pub fn pools(&self) -> &[Arc<str>] {
        &self.pools
    }

    /// The override in force, if any.
    pub fn override_weights(&self) -> Option<Vec<u32>> {
        self.overridden
            .load(Ordering::Acquire)
            .then(|| self.load_weights())
    }

    fn load_weights(&self) -> Vec<u32> {
        self.weights
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect()
    }

    /// Overrides the weights (one per pool, in split order; 0 takes a pool out).
    pub fn set(&self, weights: &[u32]) -> Result<(), SplitError> {
        if weights.len() != self.pools.len() {
            return Err(SplitError::Count {
                pools: self.pools.len(),
                got: weights.len(),
            });
        }
        if weights.iter().any(|&w| w > MAX_SPLIT_WEIGHT) || weights.iter().all(|&w| w == 0) {
            return Err(SplitError::Range);
        }
        for (a, &w) in self.weights.iter().zip(weights) {
            a.store(w, Ordering::Relaxed);
        }
        // Release: a picker that sees the flag sees these weights (or a later set's).
        self.overridden.store(true, Ordering::Release);
        Ok(())
    }

    /// Back to the configured weights.
    pub fn reset(&self) {
        self.overridden.store(false, Ordering::Release);
    }
}

/// A weighted split of one table generation.
#[derive(Clone, Debug)]
pub struct Split {
    members: Box<[PoolId]>,
    configured: Box<[u32]>,
    configured_total: u64,
    state: Arc<SplitState>,
}

/// Maps a uniform 64-bit `point` into `0..total` (multiply-shift: no modulo bias worth
/// naming, and a given point keeps its place while the total stays the same).
#[inline]
fn scale(point: u64, total: u64) -> u64 {
    ((u128::from(point) * u128::from(total)) >> 64) as u64
}

impl Split {
    pub(crate) fn new(
        members: Box<[PoolId]>,
        configured: Box<[u32]>,
        state: Arc<SplitState>,
    ) -> Split {
        debug_assert_eq!(members.len(), configured.len());
        debug_assert_eq!(members.len(), state.pools.len());
        Split {
            configured_total: configured.iter().map(|&w| u64::from(w)).sum(),
            members,
            configured,
            state,
        }
    }

    /// The pool for this request: by `key` (a [`SplitKey::hash`]) when given, so a key
    /// always lands on the same side while the weights stay; else by `random()` (e.g.
    /// `|| fastrand::u64(..)`).
    #[inline]
    pub fn pick(&self, key: Option<u64>, random: impl FnOnce() -> u64) -> PoolId {
        let point = key.unwrap_or_else(random);
        if self.state.overridden.load(Ordering::Acquire) {
            let w = &self.state.weights;
            let total: u64 = w.iter().map(|a| u64::from(a.load(Ordering::Relaxed))).sum();
            if total > 0 {
                let mut x = scale(point, total);
                for (i, a) in w.iter().enumerate() {
                    let wi = u64::from(a.load(Ordering::Relaxed));
                    if x < wi {
                        return self.members[i];
                    }
                    x -= wi;
                }
                // An override changed between the two reads: this request uses the config.
            }
        }
        let mut x = scale(point, self.configured_total);
        for (i, &wi) in self.configured.iter().enumerate() {
            let wi = u64::from(wi);
            if x < wi {
                return self.members[i];
            }
            x -= wi;
        }
        self.members[self.members.len() - 1]
    }

    /// The pools, in split order.
    pub fn members(&self) -> &[PoolId] {
        &self.members
    }

    /// The configured weights.
    pub fn configured(&self) -> &[u32] {
        &self.configured
    }

    /// The weights in force: the override, else the configured ones.
    pub fn weights(&self) -> Vec<u32> {
        self.state
            .override_weights()
            .unwrap_or_else(|| self.configured.to_vec())
    }

    /// Whether an admin override is in force.
    pub fn is_overridden(&self) -> bool {
        self.state.overridden.load(Ordering::Acquire)
    }

    /// The shared state (override weights).
    pub fn state(&self) -> &Arc<SplitState> {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[u32]) -> Split {
        let p: Vec<Arc<str>> = (0..weights.len())
            .map(|i| Arc::from(format!("p{i}")))
            .collect();
        Split::new(
            (0..weights.len() as u32).map(PoolId).collect(),
            weights.into(),
            Arc::new(SplitState::new(&p)),
        )
    }

    fn shares(s: &Split, n: u64) -> Vec<u64> {
        let mut counts = vec![0u64; s.members().len()];
        for i in 0..n {
            let p = s.pick(Some(hash_bytes(&i.to_le_bytes())), || unreachable!("keyed"));
            counts[p.0 as usize] += 1;
        }
        counts
    }

    #[test]
    fn configured_weights_divide_keys() {
        let c = shares(&split(&[95, 5]), 100_000);
        assert!((94_000..=96_000).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn a_key_stays_on_its_side() {
        let s = split(&[50, 30, 20]);
        for k in 0..1000u64 {
            let h = hash_bytes(&k.to_le_bytes());
            let first = s.pick(Some(h), || 0);
            assert!((0..10).all(|_| s.pick(Some(h), || fastrand::u64(..)) == first));
        }
    }

    #[test]
    fn random_points_cover_every_side() {
        let s = split(&[1, 1]);
        assert_eq!(s.pick(None, || 0), PoolId(0));
        assert_eq!(s.pick(None, || u64::MAX), PoolId(1));
    }

    #[test]
    fn overrides_apply_and_reset() {
        let s = split(&[95, 5]);
        s.state().set(&[0, 1]).unwrap();
        assert!(s.is_overridden());
        assert_eq!(shares(&s, 1000), vec![0, 1000]);
        assert_eq!(s.weights(), vec![0, 1]);
        s.state().reset();
        assert_eq!(s.weights(), vec![95, 5]);
        assert_eq!(
            s.state().set(&[1]),
            Err(SplitError::Count { pools: 2, got: 1 })
        );
        assert_eq!(s.state().set(&[0, 0]), Err(SplitError::Range));
        assert_eq!(
            s.state().set(&[0, MAX_SPLIT_WEIGHT + 1]),
            Err(SplitError::Range)
        );
    }

    #[test]
    fn split_keys_hash_their_source() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-user", "alice".parse().unwrap());
        h.insert(http::header::COOKIE, "a=1; sid=xyz".parse().unwrap());
        assert_eq!(SplitKey::ClientIp.hash(ip, &h), Some(hash_ip(ip)));
        let header = SplitKey::Header(HeaderName::from_static("x-user"));
        assert_eq!(header.hash(ip, &h), Some(hash_bytes(b"alice")));
        assert_eq!(
            SplitKey::Cookie("sid".into()).hash(ip, &h),
            Some(hash_bytes(b"xyz"))
        );
        assert_eq!(SplitKey::Cookie("nope".into()).hash(ip, &h), None);
    }
}
