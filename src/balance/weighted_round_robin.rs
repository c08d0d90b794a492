//! Smooth weighted round-robin, nginx's scheme, made lock-free by precomputing its schedule.
//!
//! nginx keeps a mutable "current weight" per server: every pick adds each server's weight to
//! its current weight, takes the server with the highest (the first on a tie) and subtracts
//! the total weight from it. Over any `W = sum(weights)` consecutive picks each server gets
//! exactly its weight, interleaved rather than bunched (5:1:1 gives a a b a c a a). The state
//! returns to all zeros after `W` picks, so the sequence is periodic: `build` runs the scheme
//! once over a period and stores the positions, and `pick` reads the schedule at an atomic
//! counter. No lock, no per-pick state beyond one counter, no allocation.

use std::sync::atomic::Ordering;

use super::{Cursor, Member};

/// Longest schedule kept (4M positions, 16 MiB). The config's range (1000 servers × weight
/// 256 = 256k) stays far below; beyond it weights are scaled down, which bends the ratios.
const MAX_PERIOD: u64 = 1 << 22;

/// One period of the smooth schedule and the cursor into it (shared with the tiers this one
/// replaces, so a rebuild continues from where the old schedule was).
#[derive(Debug, Default)]
pub(crate) struct WeightedRoundRobin {
    schedule: Vec<u32>,
    next: Cursor,
}

impl WeightedRoundRobin {
    pub(crate) fn build(members: &[Member], cursor: Cursor) -> Self {
        let weights: Vec<u64> = members.iter().map(|m| u64::from(m.weight.max(1))).collect();
        WeightedRoundRobin {
            schedule: smooth_schedule(&reduce(weights)),
            next: cursor,
        }
    }

    #[inline]
    pub(crate) fn pick(&self, _members: &[Member]) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        // After a rebuild the shared cursor lands somewhere in the new schedule: at most one
        // period of smoothness is lost, and the rotation does not restart at the first server.
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        Some(self.schedule[i] as usize)
    }
}

/// Divides the weights by their gcd: the scheme scaled by a constant makes the same choices, so
/// the period shrinks from `W` to `W / gcd` (equal weights give a plain rotation of `n`).
/// Weights whose period would exceed [`MAX_PERIOD`] are first scaled down to fit.
fn reduce(mut weights: Vec<u64>) -> Vec<u64> {
    let total: u64 = weights.iter().sum();
    if total > MAX_PERIOD {
        // Each weight becomes at least 1, so leave room for one per server.
        let budget = MAX_PERIOD.saturating_sub(weights.len() as u64);
        weights
            .iter_mut()
            .for_each(|w| *w = *w * budget / total + 1);
    }
    let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    weights.iter_mut().for_each(|w| *w /= g);
    weights
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Servers of equal weight in the smooth scheme: their current weights differ only by how often
/// each was picked, so among them the least picked (lowest position on a tie) is the
/// candidate, and they take turns in position order. Tracking groups instead of servers makes
/// each step cost O(distinct weights) instead of O(servers).
struct Group {
    weight: i64,
    /// Positions of the servers with this weight, ascending.
    positions: Vec<u32>,
    /// Which of `positions` is next.
    cursor: usize,
    /// `positions[cursor]`, kept beside `current` because every step compares both.
    candidate: u32,
    /// The candidate's current weight: `t × weight − W × (completed rounds of the group)`.
    current: i64,
}

/// One period of nginx's smooth weighted round-robin over `weights` (indexed by position).
fn smooth_schedule(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut groups: Vec<Group> = Vec::new();
    for (pos, &w) in weights.iter().enumerate() {
        match groups.iter_mut().find(|g| g.weight == w as i64) {
            Some(g) => g.positions.push(pos as u32),
            None => groups.push(Group {
                weight: w as i64,
                positions: vec![pos as u32],
                cursor: 0,
                candidate: pos as u32,
                current: 0,
            }),
        }
    }

    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..groups.len() {
            groups[i].current += groups[i].weight;
            if i > 0 && groups[i].beats(&groups[best]) {
                best = i;
            }
        }
        let g = &mut groups[best];
        schedule.push(g.candidate);
        g.cursor += 1;
        if g.cursor == g.positions.len() {
            // Every server of the group has now paid the total once this round.
            g.cursor = 0;
            g.current -= total as i64;
        }
        g.candidate = g.positions[g.cursor];
    }
    schedule
}

impl Group {
    /// nginx scans servers in order and keeps the first maximum: highest current weight wins,
    /// then the lowest position.
    fn beats(&self, other: &Group) -> bool {
        self.current > other.current
            || (self.current == other.current && self.candidate < other.candidate)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::balance::test_support::members;

    /// nginx's loop as written, one current weight per server.
    fn reference(weights: &[u64], picks: usize) -> Vec<u32> {
        let total: i64 = weights.iter().map(|&w| w as i64).sum();
        let mut current = vec![0i64; weights.len()];
        (0..picks)
            .map(|_| {
                let mut best = 0;
                for (i, &w) in weights.iter().enumerate() {
                    current[i] += w as i64;
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                best as u32
            })
            .collect()
    }

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let m = members(weights);
        let t = WeightedRoundRobin::build(&m, Cursor::default());
        (0..n).map(|_| t.pick(&m).unwrap()).collect()
    }

    #[test]
    fn interleaves_five_one_one() {
        assert_eq!(
            picks(&[5, 1, 1], 14),
            [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]
        );
    }

    #[test]
    fn equal_weights_rotate() {
        assert_eq!(picks(&[3, 3, 3], 6), [0, 1, 2, 0, 1, 2]);
        let t = WeightedRoundRobin::build(&members(&[100; 4]), Cursor::default());
        assert_eq!(t.schedule.len(), 4, "gcd reduction keeps the period at n");
    }

    #[test]
    fn empty_is_none() {
        let t = WeightedRoundRobin::build(&[], Cursor::default());
        assert_eq!(t.pick(&[]), None);
    }

    #[test]
    fn oversized_periods_are_scaled_down() {
        let weights: Vec<u64> = (0..5000).map(|i| 1_000 + i).collect();
        let reduced = reduce(weights);
        assert!(reduced.iter().sum::<u64>() <= MAX_PERIOD);
        assert!(reduced[0] < reduced[4999], "order of weights is kept");
        assert!(reduced.iter().all(|&w| w >= 1));
    }

    proptest! {
        #[test]
        fn schedule_equals_nginx(weights in prop::collection::vec(1u32..=256, 1..=64)) {
            let wide: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
            let total = wide.iter().sum::<u64>() as usize;
            let got: Vec<u32> = picks(&weights, 2 * total).iter().map(|&p| p as u32).collect();
            prop_assert_eq!(got, reference(&wide, 2 * total));
        }

        #[test]
        fn exact_shares_over_any_window(
            weights in prop::collection::vec(1u32..=256, 1..=64),
            skip in 0usize..20_000,
        ) {
            let m = members(&weights);
            let t = WeightedRoundRobin::build(&m, Cursor::default());
            for _ in 0..skip {
                t.pick(&m);
            }
            let mut counts = vec![0u32; m.len()];
            for _ in 0..weights.iter().sum::<u32>() {
                counts[t.pick(&m).unwrap()] += 1;
            }
            prop_assert_eq!(counts, weights, "one window of W picks after skipping {}", skip);
        }
    }
}
