//! The balancing core: given the eligible servers of one tier and a request key, choose one.
//!
//! This module is pure. It knows nothing of sockets, tokio, clocks or config files: a
//! [`Tier`] is built from a list of [`Member`]s (precomputing whatever its algorithm needs,
//! such as a hash ring or a weighted schedule) and then asked for picks. Live load figures
//! enter only through the [`LoadGauge`]s the members carry (which tell a table that watches
//! them when they move) and the pool-wide total in [`PickKey`]. A pick never allocates, never
//! locks and never blocks.
//!
//! One file per algorithm; the closed set is an enum dispatched with a `match`.

mod consistent_hash;
mod gauge;
mod hash;
mod ip_hash;
mod least_conn;
mod min_tree;
mod p2c;
#[cfg(test)]
mod properties;
mod random;
mod ring;
mod round_robin;
mod weighted_round_robin;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use gauge::LoadGauge;
pub use hash::{hash_bytes, hash_ip};

/// Index of a server in its pool's server list (stable for the lifetime of one pool build).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendIdx(pub u32);

impl BackendIdx {
    /// The index as a `usize`, for indexing the pool's server list.
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// One eligible server as the balancer sees it.
#[derive(Clone, Debug)]
pub struct Member {
    /// Which server of the pool this is.
    pub idx: BackendIdx,
    /// Effective weight (>= 1); slow start lowers it for a while.
    pub weight: u32,
    /// A stable hash of the server's identity (its name): ring positions derive from it, so a
    /// server keeps its ring points across rebuilds and reloads.
    pub id_hash: u64,
    /// In-flight requests (L7) or open connections (L4) on this server right now.
    pub load: Arc<LoadGauge>,
}

impl Member {
    /// The current load gauge.
    #[inline]
    pub fn current_load(&self) -> u32 {
        self.load.load(Ordering::Relaxed)
    }
}

/// A rotation counter that outlives the tiers built around it: the pool hands the same one to
/// every rebuild of a tier, so rotations continue across health changes and reloads.
pub type Cursor = Arc<AtomicUsize>;

/// What a hashing algorithm needs about one request, computed once per request by the proxy
/// and only when the pool's algorithm needs it.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickKey {
    /// The client's address, IPv4-mapped IPv6 already folded to IPv4.
    pub client_ip: Option<IpAddr>,
    /// Hash of the consistent-hash key (header, cookie, path...); `None` falls back to the IP.
    pub key_hash: Option<u64>,
    /// In-flight requests over the whole pool, for bounded-load consistent hashing.
    pub pool_load: u32,
}

impl PickKey {
    /// The hash a hashing algorithm should use: the explicit key, else the client IP, else 0.
    #[inline]
    pub fn effective_hash(&self) -> u64 {
        match (self.key_hash, self.client_ip) {
            (Some(h), _) => h,
            (None, Some(ip)) => hash_ip(ip),
            (None, None) => 0,
        }
    }
}

/// The algorithm a pool balances with, with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Algorithm {
    /// Strict rotation over eligible servers; weights are ignored.
    RoundRobin,
    /// Smooth weighted round-robin (interleaves 5:1:1 as a a b a c a a).
    WeightedRoundRobin,
    /// Fewest in-flight per unit of weight; ties rotate.
    LeastConn,
    /// Hash of the client IP over the eligible servers.
    IpHash,
    /// Hash ring with virtual nodes and optional bounded loads.
    ConsistentHash {
        /// Ring points per unit of weight.
        vnodes_per_weight: u32,
        /// Cap a server at `factor` × its weighted share of the pool's in-flight load (> 1.0; with
        /// equal weights, factor × the average), spilling along the ring.
        balance_factor: Option<f64>,
    },
    /// Weighted random.
    Random,
    /// Power of two random choices by load relative to weight.
    P2c,
}

impl Algorithm {
    /// Whether picks depend on a per-request key (so the proxy must compute one).
    pub fn needs_key(&self) -> bool {
        matches!(self, Algorithm::IpHash | Algorithm::ConsistentHash { .. })
    }

    /// The config name of the algorithm.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::LeastConn => "least_conn",
            Algorithm::IpHash => "ip_hash",
            Algorithm::ConsistentHash { .. } => "consistent_hash",
            Algorithm::Random => "random",
            Algorithm::P2c => "p2c",
        }
    }
}

/// The precomputed state of one algorithm over one tier.
#[derive(Debug)]
enum Table {
    RoundRobin(round_robin::RoundRobin),
    WeightedRoundRobin(weighted_round_robin::WeightedRoundRobin),
    LeastConn(least_conn::LeastConn),
    IpHash(ip_hash::IpHash),
    ConsistentHash(consistent_hash::ConsistentHash),
    Random(random::Random),
    P2c(p2c::P2c),
}

/// One tier (primary or backup) of eligible servers, ready to answer picks.
#[derive(Debug)]
pub struct Tier {
    members: Vec<Member>,
    table: Table,
}

impl Tier {
    /// Builds the tier for `algorithm` over `members` (possibly empty), with a fresh cursor.
    pub fn build(algorithm: &Algorithm, members: Vec<Member>) -> Tier {
        Self::build_with(algorithm, members, Cursor::default())
    }

    /// Builds the tier, rotating with `cursor` (the one the tier it replaces used).
    pub fn build_with(algorithm: &Algorithm, members: Vec<Member>, cursor: Cursor) -> Tier {
        let table = match algorithm {
            Algorithm::RoundRobin => {
                Table::RoundRobin(round_robin::RoundRobin::build(&members, cursor))
            }
            Algorithm::WeightedRoundRobin => Table::WeightedRoundRobin(
                weighted_round_robin::WeightedRoundRobin::build(&members, cursor),
            ),
            Algorithm::LeastConn => Table::LeastConn(least_conn::LeastConn::build(&members)),
            Algorithm::IpHash => Table::IpHash(ip_hash::IpHash::build(&members)),
            Algorithm::ConsistentHash {
                vnodes_per_weight,
                balance_factor,
            } => Table::ConsistentHash(consistent_hash::ConsistentHash::build(
                &members,
                *vnodes_per_weight,
                *balance_factor,
            )),
            Algorithm::Random => Table::Random(random::Random::build(&members)),
            Algorithm::P2c => Table::P2c(p2c::P2c::build(&members)),
        };
        Tier { members, table }
    }

    /// Chooses a server; `None` only when the tier is empty.
    #[inline]
    pub fn pick(&self, key: &PickKey) -> Option<BackendIdx> {
        if self.members.is_empty() {
            return None;
        }
        let m = &self.members;
        let pos = match &self.table {
            Table::RoundRobin(t) => t.pick(m),
            Table::WeightedRoundRobin(t) => t.pick(m),
            Table::LeastConn(t) => t.pick(m),
            Table::IpHash(t) => t.pick(m, key),
            Table::ConsistentHash(t) => t.pick(m, key),
            Table::Random(t) => t.pick(m),
            Table::P2c(t) => t.pick(m),
        };
        pos.map(|p| m[p].idx)
    }

    /// The members of this tier.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether the tier has no eligible server.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Members with the given weights, indices 0.., zero load.
    pub(crate) fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Member {
                idx: BackendIdx(i as u32),
                weight: *w,
                id_hash: hash_bytes(format!("server-{i}").as_bytes()),
                load: Arc::new(LoadGauge::new(0)),
            })
            .collect()
    }
}
