//! Power of two random choices: draw two distinct members, send to the less loaded.
//!
//! The two are drawn uniformly; weight enters through the comparison, by the same score as
//! `least_conn`, `(load + 1) / weight` (cross-multiplied, exact). Uniform draws keep a pick to
//! two cheap draws from `fastrand`'s thread-local generator (no lock, no allocation) and still
//! favour heavy servers, which win more of their duels; weighted draws of a distinct pair would
//! need rejection. Compared with `least_conn` this looks at two gauges instead of n, and avoids
//! the herd that a global minimum attracts when many proxy threads pick at once (Mitzenmacher,
//! "The Power of Two Choices in Randomized Load Balancing").

use super::Member;

/// Nothing to precompute: the draws are uniform over positions.
#[derive(Debug, Default)]
pub(crate) struct P2c;

impl P2c {
    pub(crate) fn build(_members: &[Member]) -> Self {
        P2c
    }

    #[inline]
    pub(crate) fn pick(&self, members: &[Member]) -> Option<usize> {
        let n = members.len();
        if n <= 1 {
            return if n == 1 { Some(0) } else { None };
        }
        let a = fastrand::usize(..n);
        // Drawing from n - 1 and skipping `a` gives a distinct second choice without a retry.
        let mut b = fastrand::usize(..n - 1);
        if b >= a {
            b += 1;
        }
        let (ma, mb) = (&members[a], &members[b]);
        let score_a = (u64::from(ma.current_load()) + 1) * u64::from(mb.weight.max(1));
        let score_b = (u64::from(mb.current_load()) + 1) * u64::from(ma.weight.max(1));
        Some(if score_b < score_a { b } else { a })
    }
}

#[cfg(test)]
mod tests {

    use proptest::prelude::*;

    use super::*;
    use crate::balance::properties::slow_server_sim;
    use crate::balance::test_support::members;

    #[test]
    fn single_member_is_always_chosen() {
        let m = members(&[3]);
        assert_eq!(P2c::build(&m).pick(&m), Some(0));
    }

    #[test]
    fn empty_is_none() {
        assert_eq!(P2c::build(&[]).pick(&[]), None);
    }

    #[test]
    fn of_two_takes_the_less_loaded() {
        let m = members(&[1, 1]);
        let t = P2c::build(&m);
        m[0].load.store(5);
        for _ in 0..100 {
            assert_eq!(t.pick(&m), Some(1));
        }
    }

    #[test]
    fn never_picks_the_most_loaded_of_three_or_more() {
        let m = members(&[1, 1, 1, 1]);
        let t = P2c::build(&m);
        m[2].load.store(9);
        for _ in 0..1000 {
            assert_ne!(t.pick(&m), Some(2), "it loses every duel");
        }
    }

    #[test]
    fn heavier_servers_win_more() {
        let m = members(&[1, 4]);
        let t = P2c::build(&m);
        // (3 + 1) / 4 = 1 < (1 + 1) / 1 = 2.
        m[0].load.store(1);
        m[1].load.store(3);
        assert_eq!(t.pick(&m), Some(1));
    }

    proptest! {
        #[test]
        fn slow_server_gets_fewer(
            n in 2usize..=16,
            slow in any::<prop::sample::Index>(),
            per_server in 1usize..=4,
            seed in any::<u64>(),
        ) {
            fastrand::seed(seed);
            let m = members(&vec![1; n]);
            let t = P2c::build(&m);
            let slow = slow.index(n);
            let counts = slow_server_sim(&m, slow, n * per_server, || t.pick(&m).unwrap());
            for (i, &c) in counts.iter().enumerate() {
                prop_assert!(i == slow || counts[slow] < c, "slow server {}: {:?}", slow, counts);
            }
        }
    }
}
