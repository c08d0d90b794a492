//! Least connections: the member with the fewest in-flight requests per unit of weight.
//!
//! The score is `(load + 1) / weight`, HAProxy's `leastconn` convention: the `+ 1` counts the
//! request being placed, so between idle servers the heavier one wins (plain `load / weight`
//! would score every idle server 0 and ignore weights until the pool is busy). Members that tie
//! share the traffic: the search starts at a rotating offset and keeps the first minimum, so
//! equal servers take turns instead of the first in the list taking everything.
//!
//! Two ways to find that member, with the same answer:
//!
//! - **The scan**, for small tables: O(n) over the members' live gauges, from a contiguous
//!   copy of them with a precomputed integer multiplier standing for `1 / weight` (skipped
//!   when all weights are equal), so each step is a gauge read, a multiply and a compare.
//! - **The tree**, from [`TREE_FROM`] members: a [`MinTree`] of the scores, O(log n) a pick.
//!   Loads move outside the balancer, so the table watches its members' gauges
//!   ([`LoadGauge::watch`]): each change marks the member in a [`DirtySet`], and a pick first
//!   folds the marked members' fresh scores into the tree. One pick at a time does that, under
//!   a try-flag that nobody waits for: a pick that finds the flag taken, by a repair still in
//!   progress, scans instead of reading a tree that is being written. So every pick reflects
//!   every load change that finished before it began, exactly as the scan does; changes racing
//!   the pick may or may not count, also as with the scan.
//!
//! A gauge reports to one table at a time, the newest built. The table it was taken from (the
//! one a publish replaced, still answering the requests that loaded it) is marked orphaned and
//! scans from then on. Nothing is written per pick but the rotating offset and, after loads
//! moved, the marks taken and the tree.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use super::gauge::{DirtySet, LoadGauge};
use super::min_tree::MinTree;
use super::Member;

/// Tables of at least this many members pick with the tree; smaller ones scan. The tree's
/// upkeep (marks on every acquire and release, folded in on the next pick) costs a request
/// 60–80 ns on the reference machine, about a scan of 100 members: a pick with its acquire and
/// release measured the same either way from 64 to 100 members, and 87 ns with the tree
/// against 131 with the scan at 150 (`pick_acquire_release`).
const TREE_FROM: usize = 128;

/// Largest common numerator: scores `(load + 1) × (K / weight)` must fit in a u64 for any u32
/// load.
const MAX_K: u64 = 1 << 31;

/// One member as the scan sees it.
#[derive(Debug)]
struct Slot {
    load: Arc<LoadGauge>,
    /// `K / weight`, so that `(load + 1) × scale` orders members by `(load + 1) / weight`.
    scale: u64,
}

/// The members' gauges, twice over, the rotating start and, for larger tables, the tree.
#[derive(Debug, Default)]
pub(crate) struct LeastConn {
    /// Members in position order, then again: a scan of `n` slots from any start is then one
    /// contiguous slice, with no wrap-around test in the loop.
    slots: Vec<Slot>,
    /// All weights equal: scores reduce to raw loads, which saves the multiply (32 ns instead
    /// of 43 at 100 members).
    uniform: bool,
    /// Where the next search starts. Advanced by a relaxed load and store rather than a
    /// `fetch_add`: the locked read-modify-write cost more than the rest of a 3-member pick
    /// (14 ns against 6), and a lost increment when two threads race only makes them start
    /// at the same place, which still shares ties.
    next: AtomicU32,
    /// The scores in a tree, kept fresh from the gauges' marks; `None` below [`TREE_FROM`].
    tracked: Option<Tracked>,
}

/// The tree and what keeps it fresh.
#[derive(Debug)]
struct Tracked {
    /// Score of each member, by position.
    tree: MinTree,
    /// Members whose gauges moved since their score went into the tree.
    dirty: Arc<DirtySet>,
    /// Held by the one pick that writes the tree. Taken with a swap, never waited for.
    repairing: AtomicBool,
}

impl LeastConn {
    pub(crate) fn build(members: &[Member]) -> Self {
        Self::build_at(members, TREE_FROM)
    }

    /// Builds the table, with the tree when there are at least `tree_from` members.
    fn build_at(members: &[Member], tree_from: usize) -> Self {
        let k = common_numerator(members);
        let one = members.iter().map(|m| Slot {
            load: Arc::clone(&m.load),
            scale: k / u64::from(m.weight.max(1)),
        });
        let slots: Vec<Slot> = one.clone().chain(one).collect();
        let tracked = (!members.is_empty() && members.len() >= tree_from).then(|| {
            let dirty = Arc::new(DirtySet::new(members.len()));
            // A change before the watch is in the value it returns; one after it is marked.
            let scores: Vec<u64> = slots[..members.len()]
                .iter()
                .enumerate()
                .map(|(pos, slot)| slot.score_of(slot.load.watch(&dirty, pos)))
                .collect();
            Tracked {
                tree: MinTree::new(scores.into_iter()),
                dirty,
                repairing: AtomicBool::new(false),
            }
        });
        LeastConn {
            slots,
            uniform: members
                .windows(2)
                .all(|w| w[0].weight.max(1) == w[1].weight.max(1)),
            next: AtomicU32::new(0),
            tracked,
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
        if let Some(pos) = self
            .tracked
            .as_ref()
            .and_then(|t| t.pick(&self.slots[..n], start))
        {
            return Some(pos);
        }
        Some(self.scan(start, n))
    }

    /// The first lowest score from `start`, by reading every gauge.
    #[inline]
    fn scan(&self, start: usize, n: usize) -> usize {
        let window = &self.slots[start..start + n];
        let pos = start
            + if self.uniform {
                first_min(window, Slot::load)
            } else {
                first_min(window, Slot::score)
            };
        if pos >= n {
            pos - n
        } else {
            pos
        }
    }
}

impl Tracked {
    /// The tree's answer, brought up to date first; `None` when only a scan can answer
    /// exactly (the table is orphaned, or another pick is writing the tree).
    #[inline]
    fn pick(&self, slots: &[Slot], start: usize) -> Option<usize> {
        if self.dirty.is_orphaned() {
            return None;
        }
        if !self.dirty.is_clean() {
            if self.repairing.swap(true, Ordering::Acquire) {
                return None;
            }
            self.dirty
                .drain(|pos| self.tree.set(pos, slots[pos].score()));
            self.repairing.store(false, Ordering::Release);
        } else if self.repairing.load(Ordering::Acquire) {
            // The set reads clean because a repair took the marks, but the repair has not
            // finished writing them (it sets the flag before it takes them).
            return None;
        }
        self.tree.first_min_from(start)
    }
}

impl Drop for LeastConn {
    fn drop(&mut self) {
        if let Some(t) = &self.tracked {
            for slot in &self.slots[..self.slots.len() / 2] {
                slot.load.unwatch(&t.dirty);
            }
        }
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
        self.score_of(self.load.load(Ordering::Relaxed))
    }

    /// The score at a given load.
    #[inline]
    fn score_of(&self, load: u32) -> u64 {
        (u64::from(load) + 1) * self.scale
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

    /// Both ways to build: the tree at any size, and the scan at any size.
    const WAYS: [(&str, usize); 2] = [("tree", 1), ("scan", usize::MAX)];

    fn set_loads(m: &[Member], loads: &[u32]) {
        for (member, &l) in m.iter().zip(loads) {
            member.load.store(l);
        }
    }

    fn picks(t: &LeastConn, m: &[Member], count: usize) -> Vec<usize> {
        (0..count).map(|_| t.pick(m).unwrap()).collect()
    }

    #[test]
    fn picks_the_least_loaded() {
        for (way, from) in WAYS {
            let m = members(&[1, 1, 1]);
            let t = LeastConn::build_at(&m, from);
            set_loads(&m, &[4, 1, 3]);
            assert_eq!(picks(&t, &m, 5), [1; 5], "{way}");
        }
    }

    #[test]
    fn load_is_relative_to_weight() {
        for (way, from) in WAYS {
            let m = members(&[1, 4]);
            let t = LeastConn::build_at(&m, from);
            // (2 + 1) / 1 = 3 against (8 + 1) / 4 = 2.25.
            set_loads(&m, &[2, 8]);
            assert_eq!(t.pick(&m), Some(1), "{way}");
            // (2 + 1) / 1 = 3 against (12 + 1) / 4 = 3.25.
            set_loads(&m, &[2, 12]);
            assert_eq!(t.pick(&m), Some(0), "{way}");
        }
    }

    #[test]
    fn idle_servers_prefer_the_heavier() {
        for (way, from) in WAYS {
            let m = members(&[1, 3, 1]);
            let t = LeastConn::build_at(&m, from);
            assert_eq!(picks(&t, &m, 6), [1; 6], "{way}");
        }
    }

    #[test]
    fn ties_take_turns() {
        for (way, from) in WAYS {
            let m = members(&[2, 2, 2, 2]);
            let t = LeastConn::build_at(&m, from);
            set_loads(&m, &[3, 3, 3, 3]);
            assert_eq!(picks(&t, &m, 8), [0, 1, 2, 3, 0, 1, 2, 3], "{way}");
        }
    }

    #[test]
    fn exact_ties_between_different_weights() {
        for (way, from) in WAYS {
            let m = members(&[1, 2]);
            let t = LeastConn::build_at(&m, from);
            // (1 + 1) / 1 = (3 + 1) / 2: a tie, so both get turns.
            set_loads(&m, &[1, 3]);
            assert_eq!(picks(&t, &m, 4), [0, 1, 0, 1], "{way}");
        }
    }

    #[test]
    fn empty_is_none() {
        for (way, from) in WAYS {
            let t = LeastConn::build_at(&[], from);
            assert_eq!(t.pick(&[]), None, "{way}");
        }
    }

    #[test]
    fn large_tables_use_the_tree_and_small_ones_scan() {
        assert!(LeastConn::build(&members(&[1; TREE_FROM]))
            .tracked
            .is_some());
        assert!(LeastConn::build(&members(&[1; TREE_FROM - 1]))
            .tracked
            .is_none());
    }

    #[test]
    fn the_tree_follows_loads_moved_outside() {
        // Past 1024 members, the marks go through the dirty set's summary word too.
        for n in [40, 2000] {
            let m = members(&vec![1; n]);
            let t = LeastConn::build_at(&m, 1);
            set_loads(&m, &vec![5; n]);
            m[17].load.fetch_sub(1);
            assert_eq!(picks(&t, &m, 3), [17; 3], "{n}");
            m[17].load.fetch_add(2);
            m[n - 3].load.fetch_sub(2);
            assert_eq!(t.pick(&m), Some(n - 3), "{n}");
        }
    }

    #[test]
    fn a_replaced_table_still_picks_right() {
        let m = members(&[1; 40]);
        let old = LeastConn::build_at(&m, 1);
        let new = LeastConn::build_at(&m, 1);
        set_loads(&m, &[2; 40]);
        m[9].load.store(0);
        assert_eq!(old.pick(&m), Some(9), "orphaned: scans");
        assert_eq!(new.pick(&m), Some(9), "watching: the tree");
        drop(new);
        m[9].load.store(3);
        m[4].load.store(1);
        assert_eq!(old.pick(&m), Some(4));
    }

    #[test]
    fn dropping_the_table_stops_the_marking() {
        let m = members(&[1; 40]);
        let t = LeastConn::build_at(&m, 1);
        assert!(m.iter().all(|m| m.load.is_watched()));
        drop(t);
        assert!(m.iter().all(|m| !m.load.is_watched()));
    }

    /// Pickers and connections racing on two threads, then a quiet moment: the tree must have
    /// caught up with every change, whichever thread wrote the tree and whichever scanned.
    #[test]
    fn racing_changes_are_all_seen_once_quiet() {
        let m = members(&(0..200).map(|i| 1 + i % 3).collect::<Vec<_>>());
        let t = LeastConn::build_at(&m, 1);
        std::thread::scope(|s| {
            for seed in 0..2u64 {
                let (m, t) = (&m, &t);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(seed);
                    let mut held = Vec::new();
                    for _ in 0..20_000 {
                        let pos = t.pick(m).unwrap();
                        m[pos].load.fetch_add(1);
                        held.push(pos);
                        if held.len() > 50 || rng.bool() {
                            let done = held.swap_remove(rng.usize(..held.len()));
                            m[done].load.fetch_sub(1);
                        }
                    }
                });
            }
        });
        let scan = LeastConn::build_at(&m, usize::MAX);
        scan.next
            .store(t.next.load(Ordering::Relaxed), Ordering::Relaxed);
        assert!(t.tracked.as_ref().is_some_and(|t| !t.dirty.is_orphaned()));
        assert_eq!(picks(&t, &m, 400), picks(&scan, &m, 400));
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

    /// A change a request (or a test) makes to a gauge between picks.
    #[derive(Clone, Debug)]
    enum Change {
        /// The last pick's server takes the request.
        TakeLast,
        Release(prop::sample::Index),
        Set(prop::sample::Index, u32),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            3 => Just(Change::TakeLast),
            2 => any::<prop::sample::Index>().prop_map(Change::Release),
            1 => (any::<prop::sample::Index>(), 0u32..8).prop_map(|(i, l)| Change::Set(i, l)),
        ]
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
                member.load.store(p.1);
            }
            for (way, from) in WAYS {
                let t = LeastConn::build_at(&m, from);
                for k in 0..2 * m.len() {
                    prop_assert_eq!(t.pick(&m), Some(reference(&m, k)), "{} pick {}", way, k);
                }
            }
        }

        /// The tree against the scan, pick by pick, over an eligible subset of a pool whose
        /// loads keep moving through the gauges between picks. Small weights make exact ties
        /// common (and the definition checkable exactly); weights up to 256 make the common
        /// numerator inexact, where the tree must still agree with the scan's rounding.
        #[test]
        fn tree_picks_what_the_scan_picks_as_loads_move(
            pool in prop::collection::vec((1u32..=256, 0u32..6, any::<bool>()), 1..=300),
            small_weights in any::<bool>(),
            changes in prop::collection::vec(change(), 0..200),
        ) {
            let weights: Vec<u32> = pool
                .iter()
                .map(|p| if small_weights { 1 + p.0 % 4 } else { p.0 })
                .collect();
            let all = members(&weights);
            let m: Vec<Member> = all
                .iter()
                .zip(&pool)
                .filter(|(_, p)| p.2)
                .map(|(m, p)| {
                    m.load.store(p.1);
                    m.clone()
                })
                .collect();
            prop_assume!(!m.is_empty());
            let tree = LeastConn::build_at(&m, 1);
            let scan = LeastConn::build_at(&m, usize::MAX);
            let mut last = 0;
            for (k, c) in changes.iter().enumerate() {
                let picked = tree.pick(&m);
                prop_assert_eq!(picked, scan.pick(&m), "pick {}", k);
                if small_weights {
                    prop_assert_eq!(picked, Some(reference(&m, k)), "pick {}", k);
                }
                last = picked.unwrap_or(last);
                match c {
                    Change::TakeLast => {
                        m[last].load.fetch_add(1);
                    }
                    Change::Release(i) => {
                        let g = &m[i.index(m.len())].load;
                        if g.load(Ordering::Relaxed) > 0 {
                            g.fetch_sub(1);
                        }
                    }
                    Change::Set(i, l) => m[i.index(m.len())].load.store(*l),
                }
            }
        }

        #[test]
        fn slow_server_gets_fewer(
            n in 2usize..=16,
            slow in any::<prop::sample::Index>(),
            per_server in 1usize..=4,
            tree in any::<bool>(),
        ) {
            let m = members(&vec![1; n]);
            let t = LeastConn::build_at(&m, if tree { 1 } else { usize::MAX });
            let slow = slow.index(n);
            let counts = slow_server_sim(&m, slow, n * per_server, || t.pick(&m).unwrap());
            for (i, &c) in counts.iter().enumerate() {
                prop_assert!(i == slow || counts[slow] < c, "slow server {}: {:?}", slow, counts);
            }
        }
    }
}
