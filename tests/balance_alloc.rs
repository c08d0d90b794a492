//! A pick must never allocate: every algorithm precomputes in `Tier::build`, and this test
//! holds them to it by counting the allocations made on this thread while picking.
//!
//! The counting allocator wraps `System` and counts per thread (a `const`-initialised
//! thread-local, which itself never allocates), so the test harness's own threads add no
//! noise.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use fulcrum::balance::{hash_bytes, Algorithm, BackendIdx, LoadGauge, Member, PickKey, Tier};

#[path = "support/alloc_count.rs"]
mod alloc_count;

use alloc_count::allocations;

#[global_allocator]
static GLOBAL: alloc_count::Counting = alloc_count::Counting;

fn members(weights: &[u32]) -> Vec<Member> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Member {
            idx: BackendIdx(i as u32),
            weight,
            id_hash: hash_bytes(format!("10.0.0.{i}:80").as_bytes()),
            load: Arc::new(LoadGauge::new(i as u32 % 3)),
        })
        .collect()
}

#[test]
fn picks_never_allocate() {
    let algorithms = [
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
    ];
    // Keys and the bounded-load pool figure are prepared up front, as the proxy would.
    let keys: Vec<PickKey> = (0..10_000u32)
        .map(|i| PickKey {
            client_ip: Some(IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)))),
            key_hash: (i % 2 == 0).then_some(u64::from(i) << 20),
            pool_load: i % 50,
        })
        .collect();
    for algorithm in &algorithms {
        let before = allocations();
        let tier = Tier::build(algorithm, members(&[1, 5, 2, 1, 3, 8, 1, 1]));
        assert!(
            allocations() > before,
            "the counter sees the build's allocations"
        );
        // The first pick on a thread seeds `fastrand`'s thread-local generator, a one-time
        // cost that is not a pick's.
        tier.pick(&keys[0]);

        let before = allocations();
        for key in &keys {
            assert!(tier.pick(key).is_some());
        }
        let made = allocations() - before;
        assert_eq!(
            made,
            0,
            "{} allocated {made} times in 10000 picks",
            algorithm.name()
        );
    }
}

/// least_conn's larger tables keep a tree that every load change marks and the next pick
/// brings up to date: neither side may allocate either.
#[test]
fn least_conn_upkeep_never_allocates() {
    let tier = Tier::build(&Algorithm::LeastConn, members(&[1, 2, 3, 4].repeat(250)));
    let m = tier.members();
    let key = PickKey::default();
    // The first watched change on a thread registers it with `arc-swap`'s reader list, once.
    m[0].load.fetch_add(1);
    m[0].load.fetch_sub(1);

    let mut held = Vec::with_capacity(64);
    let before = allocations();
    for i in 0..10_000 {
        let idx = tier.pick(&key).expect("a member");
        m[idx.get()].load.fetch_add(1);
        if held.len() == held.capacity() {
            let done: usize = held.swap_remove(i % held.len());
            m[done].load.fetch_sub(1);
        }
        held.push(idx.get());
    }
    let made = allocations() - before;
    assert_eq!(
        made, 0,
        "least_conn allocated {made} times in 10000 requests"
    );
}
