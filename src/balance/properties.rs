//! Properties every algorithm must keep, checked through the public seam ([`Tier`]), and the
//! simulation shared by the load-aware algorithms' own properties.
//!
//! Tiers here are built from random subsets of a random pool, as the health checker would build
//! them when servers come and go, including the empty subset.

use proptest::prelude::*;

use super::test_support::members;
use super::{Algorithm, Member, PickKey, Tier};

/// Every algorithm, with the parameters the config would give it.
fn algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConn,
        Algorithm::IpHash,
        Algorithm::ConsistentHash {
            vnodes_per_weight: 100,
            balance_factor: None,
        },
        Algorithm::ConsistentHash {
            vnodes_per_weight: 100,
            balance_factor: Some(1.25),
        },
        Algorithm::Random,
        Algorithm::P2c,
    ]
}

/// Sends `per_tick` requests at each of 200 ticks, placing each with `pick`. A request holds
/// its server's load gauge for one tick, or for ten on the `slow` server. Returns how many
/// requests each member received.
pub(crate) fn slow_server_sim(
    m: &[Member],
    slow: usize,
    per_tick: usize,
    mut pick: impl FnMut() -> usize,
) -> Vec<u64> {
    const TICKS: usize = 200;
    const SLOW_TICKS: usize = 10;
    let mut counts = vec![0; m.len()];
    let mut finishing: Vec<Vec<usize>> = vec![Vec::new(); TICKS + SLOW_TICKS];
    for tick in 0..TICKS {
        for pos in std::mem::take(&mut finishing[tick]) {
            m[pos].load.fetch_sub(1);
        }
        for _ in 0..per_tick {
            let pos = pick();
            m[pos].load.fetch_add(1);
            counts[pos] += 1;
            let hold = if pos == slow { SLOW_TICKS } else { 1 };
            finishing[tick + hold].push(pos);
        }
    }
    counts
}

proptest! {
    // Each case builds every algorithm, hash rings of up to 2M points included.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn picks_are_in_range_and_none_only_when_empty(
        pool in prop::collection::vec((1u32..=256, any::<bool>()), 1..=64),
        loads in prop::collection::vec(0u32..50, 64),
        hashes in prop::collection::vec(any::<u64>(), 1..20),
    ) {
        let all = members(&pool.iter().map(|p| p.0).collect::<Vec<_>>());
        let eligible: Vec<Member> = all
            .iter()
            .zip(&pool)
            .filter(|(_, p)| p.1)
            .map(|(m, _)| m.clone())
            .collect();
        for (m, &l) in eligible.iter().zip(&loads) {
            m.load.store(l);
        }
        let pool_load = loads.iter().take(eligible.len()).sum();
        for algorithm in algorithms() {
            let tier = Tier::build(&algorithm, eligible.clone());
            for &h in &hashes {
                let key = PickKey {
                    client_ip: Some(std::net::IpAddr::from((h as u32).to_be_bytes())),
                    key_hash: Some(h),
                    pool_load,
                };
                match tier.pick(&key) {
                    None => prop_assert!(eligible.is_empty(), "{} gave None", algorithm.name()),
                    Some(idx) => prop_assert!(
                        eligible.iter().any(|m| m.idx == idx),
                        "{} picked {:?}, not an eligible member", algorithm.name(), idx
                    ),
                }
            }
        }
    }
}
