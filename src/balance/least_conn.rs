//! Least connections: the member with the fewest in-flight requests per unit of weight.
//!
//! The score is `(load + 1) / weight`, HAProxy's `leastconn` convention: the `+ 1` counts the
//! request being placed, so between idle servers the heavier one wins (plain `load / weight`
//! would score every idle server 0 and ignore weights until the pool is busy). Members that tie
//! share the traffic: the scan starts at a rotating offset and keeps the first minimum, so
//! equal servers take turns instead of the first in the list taking everything.
//!
//! The scan is O(n) over the members' live load gauges; `build` copies the gauges into a
//! contiguous table together with a precomputed integer multiplier standing for `1 / weight`
//! (skipped when all weights are equal, the common case), so each step is a gauge read, a
//! multiply and a compare. Nothing is written but the rotating offset.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::Member;

/// Largest common numerator: scores `(load + 1) × (K / weight)` must fit in a u64 for any u32
/// load.
const MAX_K: u64 = 1 << 31;

/// One member as the scan sees it.
#[derive(Debug)]
struct Slot {
    load: Arc<AtomicU32>,
    /// `K / weight`, so that `(load + 1) × scale` orders members by `(load + 1) / weight`.
    scale: u64,
}

/// The members' gauges, twice over, and the rotating start.
#[derive(Debug, Default)]
pub(crate) struct LeastConn {
    /// Members in position order, then again: a scan of `n` slots from any start is then one
    /// contiguous slice, with no wrap-around test in the loop.
    slots: Vec<Slot>,
    /// All weights equal: scores reduce to raw loads, which saves the multiply (32 ns instead
    /// of 43 at 100 members).
    uniform: bool,
    /// Where the next scan starts. Advanced by a relaxed load and store rather than a
    /// `fetch_add`: the locked read-modify-write cost more than the rest of a 3-member pick
    /// (14 ns against 6), and a lost increment when two threads race only makes them start
    /// at the same place, which still shares ties.
    next: AtomicU32,
}

impl LeastConn {
    pub(crate) fn build(members: &[Member]) -> Self {
        let k = common_numerator(members);
        let one = members.iter().map(|m| Slot {
            load: Arc::clone(&m.load),
            scale: k / u64::from(m.weight.max(1)),
        });
        LeastConn {
            slots: one.clone().chain(one).collect(),
            uniform: members
                .windows(2)
                .all(|w| w[0].weight.max(1) == w[1].weight.max(1)),
            next: AtomicU32::new(0),
        }
    }

    #[inline]
    pub(crate) fn pick(&self, _members: &[Member]) -> Option<usize> {
        let n = self.slots.len() / 2;
        if n == 0 {
            return None;
        }
        let count = self.next.load(Ordering::Relaxed);
        self.next.store(count.wrapping_add(1), Ordering::Relaxed);
        let start = (count % n as u32) as usize;
        let window = &self.slots[start..start + n];
        let pos = start
            + if self.uniform {
                first_min(window, Slot::load)
            } else {
                first_min(window, Slot::score)
            };
        Some(if pos >= n { pos - n } else { pos })
    }
}

/// Index of the first slot with the lowest score.
///
/// Slots go four at a time: the four scores are reduced with branch-free `min`s, and only a
/// group that beats the best so far takes a branch. A plain scan either branches on every new
/// running minimum, which the predictor misses a few times a scan, or (as a `cmov`) chains
/// every slot's compare onto the previous one; it measured 62 ns at 100 members, this 43.
#[inline]
fn first_min(slots: &[Slot], score_of: impl Fn(&Slot) -> u64) -> usize {
    const CHUNK: usize = 4;
    let mut best = u64::MAX;
    let mut best_index = 0;
    let chunks = slots.chunks_exact(CHUNK);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        let s = [
            score_of(&chunk[0]),
            score_of(&chunk[1]),
            score_of(&chunk[2]),
            score_of(&chunk[3]),
        ];
        let low = s[0].min(s[1]).min(s[2].min(s[3]));
        if low < best {
            best = low;
            // The first of the group holding it, to keep the first minimum in scan order.
            best_index = c * CHUNK + s.iter().position(|&x| x == low).unwrap_or(0);
        }
    }
    let base = slots.len() - tail.len();
    for (j, slot) in tail.iter().enumerate() {
        let s = score_of(slot);
        if s < best {
            best = s;
            best_index = base + j;
        }
    }
    best_index
}

impl Slot {
    /// The score when all weights are equal.
    #[inline]
    fn load(&self) -> u64 {
        u64::from(self.load.load(Ordering::Relaxed))
    }

    /// `(load + 1) / weight`, scaled to an integer.
    #[inline]
    fn score(&self) -> u64 {
        (u64::from(self.load.load(Ordering::Relaxed)) + 1) * self.scale
    }
}

/// `K` such that `K / weight` is exact for every member when the weights allow it (their lcm
/// fits under [`MAX_K`], as it does for equal weights, 5:1:1, 100:50:25...), which makes ties
/// between equal ratios exact. Otherwise `K = MAX_K`, and ratios closer than about one part
/// in `2^23` (at weight 256) may be ordered either way: a near-tie, broken arbitrarily.
fn common_numerator(members: &[Member]) -> u64 {
    let mut lcm = 1u64;
    for m in members {
        let w = u64::from(m.weight.max(1));
        lcm = lcm / gcd(lcm, w) * w;
        if lcm > MAX_K {
            return MAX_K;
        }
    }
    lcm
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::balance::properties::slow_server_sim;
    use crate::balance::test_support::members;

    fn set_loads(m: &[Member], loads: &[u32]) {
        for (member, &l) in m.iter().zip(loads) {
            member.load.store(l, Ordering::Relaxed);
        }
    }

    #[test]
    fn picks_the_least_loaded() {
        let m = members(&[1, 1, 1]);
        let t = LeastConn::build(&m);
        set_loads(&m, &[4, 1, 3]);
        for _ in 0..5 {
            assert_eq!(t.pick(&m), Some(1));
        }
    }

    #[test]
    fn load_is_relative_to_weight() {
        let m = members(&[1, 4]);
        let t = LeastConn::build(&m);
        // (2 + 1) / 1 = 3 against (8 + 1) / 4 = 2.25.
        set_loads(&m, &[2, 8]);
        assert_eq!(t.pick(&m), Some(1));
        // (2 + 1) / 1 = 3 against (12 + 1) / 4 = 3.25.
        set_loads(&m, &[2, 12]);
        assert_eq!(t.pick(&m), Some(0));
    }

    #[test]
    fn idle_servers_prefer_the_heavier() {
        let m = members(&[1, 3, 1]);
        let t = LeastConn::build(&m);
        for _ in 0..6 {
            assert_eq!(t.pick(&m), Some(1));
        }
    }

    #[test]
    fn ties_take_turns() {
        let m = members(&[2, 2, 2, 2]);
        let t = LeastConn::build(&m);
        set_loads(&m, &[3, 3, 3, 3]);
        let picks: Vec<usize> = (0..8).map(|_| t.pick(&m).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn exact_ties_between_different_weights() {
        let m = members(&[1, 2]);
        let t = LeastConn::build(&m);
        // (1 + 1) / 1 = (3 + 1) / 2: a tie, so both get turns.
        set_loads(&m, &[1, 3]);
        let picks: Vec<usize> = (0..4).map(|_| t.pick(&m).unwrap()).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
    }

    #[test]
    fn empty_is_none() {
        let t = LeastConn::build(&[]);
        assert_eq!(t.pick(&[]), None);
    }

    /// The k-th pick by the definition: scan from `k mod n`, keep the first lowest
    /// `(load + 1) / weight`, compared exactly by cross-multiplying.
    fn reference(m: &[Member], k: usize) -> usize {
        let n = m.len();
        let ratio = |p: usize| (u64::from(m[p].current_load()) + 1, u64::from(m[p].weight));
        let mut best = k % n;
        for p in (0..n).map(|j| (k + j) % n) {
            let ((la, wa), (lb, wb)) = (ratio(p), ratio(best));
            if la * wb < lb * wa {
                best = p;
            }
        }
        best
    }

    proptest! {
        #[test]
        fn matches_a_plain_scan(
            // Few distinct weights and loads, so that exact ties are common.
            pool in prop::collection::vec((1u32..=4, 0u32..6), 1..=64),
            equal in any::<bool>(),
        ) {
            let weights: Vec<u32> = pool.iter().map(|p| if equal { 3 } else { p.0 }).collect();
            let m = members(&weights);
            for (member, p) in m.iter().zip(&pool) {
                member.load.store(p.1, Ordering::Relaxed);
            }
            let t = LeastConn::build(&m);
            for k in 0..2 * m.len() {
                prop_assert_eq!(t.pick(&m), Some(reference(&m, k)), "pick {}", k);
            }
        }

        #[test]
        fn slow_server_gets_fewer(
            n in 2usize..=16,
            slow in any::<prop::sample::Index>(),
            per_server in 1usize..=4,
        ) {
            let m = members(&vec![1; n]);
            let t = LeastConn::build(&m);
            let slow = slow.index(n);
            let counts = slow_server_sim(&m, slow, n * per_server, || t.pick(&m).unwrap());
            for (i, &c) in counts.iter().enumerate() {
                prop_assert!(i == slow || counts[slow] < c, "slow server {}: {:?}", slow, counts);
            }
        }
    }
}
