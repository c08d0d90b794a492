//! Least connections: the member with the fewest in-flight requests per unit of weight.
//!
//! The score is `(load + 1) / weight`, HAProxy's `leastconn` convention: the `+ 1` counts the
//! request being placed, so between idle servers the heavier one wins (plain `load / weight`
//! would score every idle server 0 and ignore weights until the pool is busy). Members that tie
//! share the traffic: the scan starts at a rotating offset and keeps the first minimum, so
//! equal servers take turns instead of the first in the list taking everything.
//!
//! The scan is O(n) over the members' live load gauges; `build` copies the gauges into a
//! contiguous table together with a precomputed integer multiplier standing for `1 / weight`,
//! so each step is one load, one multiply and one compare. Nothing is written but the offset.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
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
    next: AtomicUsize,
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
            next: AtomicUsize::new(0),
        }
    }

    #[inline]
    pub(crate) fn pick(&self, _members: &[Member]) -> Option<usize> {
        let n = self.slots.len() / 2;
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let pos = start + first_min(&self.slots[start..start + n]);
        Some(if pos >= n { pos - n } else { pos })
    }
}

/// Index of the first slot with the lowest score.
///
/// Four lanes, each keeping its own minimum, so that the compare-and-select chains of
/// consecutive slots do not wait on each other: one chain measured 62 ns a pick at 100
/// members, four lanes 43 ns (eight ran out of registers). Lane `j` sees slots `j, j + 4, ...`;
/// the lanes are merged by score, then by index, which is the same answer as one scan in order.
#[inline]
fn first_min(slots: &[Slot]) -> usize {
    const LANES: usize = 4;
    let mut score = [u64::MAX; LANES];
    let mut index = [0usize; LANES];
    let chunks = slots.chunks_exact(LANES);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        for lane in 0..LANES {
            let s = chunk[lane].score();
            if s < score[lane] {
                score[lane] = s;
                index[lane] = c * LANES + lane;
            }
        }
    }
    let base = slots.len() - tail.len();
    for (lane, slot) in tail.iter().enumerate() {
        let s = slot.score();
        if s < score[lane] {
            score[lane] = s;
            index[lane] = base + lane;
        }
    }
    let mut best = 0;
    for lane in 1..LANES {
        if (score[lane], index[lane]) < (score[best], index[best]) {
            best = lane;
        }
    }
    index[best]
}

impl Slot {
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

    proptest! {
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
