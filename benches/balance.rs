//! Cost of one `Tier::pick` per algorithm at 3, 100 and 1000 members (least_conn also at 10),
//! of a least_conn pick together with the load changes a request makes around it, and of
//! rebuilding the tables a health change or reload triggers.
//!
//! Targets on the reference 2-core machine: under 50 ns a pick at 100 members for every
//! algorithm, under 150 ns for consistent_hash at 1000, under 50 ms to rebuild a 1000-member
//! consistent-hash ring at 100 vnodes. Hashing algorithms get a different key every
//! iteration (a counter through a multiplicative mix, which costs a nanosecond), so the ring
//! lookups land all over their tables rather than on one warm cache line.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use fulcrum::balance::{hash_bytes, Algorithm, BackendIdx, LoadGauge, Member, PickKey, Tier};

const SIZES: [usize; 3] = [3, 100, 1000];

/// least_conn's cost grows with the pool, so it gets a point between the two small sizes.
const LEAST_CONN_SIZES: [usize; 4] = [3, 10, 100, 1000];

fn sizes(name: &str) -> &'static [usize] {
    if name.starts_with("least_conn") {
        &LEAST_CONN_SIZES
    } else {
        &SIZES
    }
}

fn algorithms() -> Vec<(&'static str, Algorithm)> {
    vec![
        ("round_robin", Algorithm::RoundRobin),
        ("weighted_round_robin", Algorithm::WeightedRoundRobin),
        ("least_conn", Algorithm::LeastConn),
        ("ip_hash", Algorithm::IpHash),
        (
            "consistent_hash",
            Algorithm::ConsistentHash {
                vnodes_per_weight: 100,
                balance_factor: None,
            },
        ),
        (
            "consistent_hash_bounded",
            Algorithm::ConsistentHash {
                vnodes_per_weight: 100,
                balance_factor: Some(1.25),
            },
        ),
        ("random", Algorithm::Random),
        ("p2c", Algorithm::P2c),
    ]
}

/// `n` members with the given weights and small, uneven loads (so load-aware algorithms have
/// something to compare).
fn members(n: usize, weight: impl Fn(usize) -> u32) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            idx: BackendIdx(i as u32),
            weight: weight(i),
            id_hash: hash_bytes(format!("10.0.{}.{}:8080", i / 256, i % 256).as_bytes()),
            load: Arc::new(LoadGauge::new((i as u32).wrapping_mul(7) % 11)),
        })
        .collect()
}

fn key(i: u64, pool_load: u32) -> PickKey {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    PickKey {
        client_ip: Some(IpAddr::V4(Ipv4Addr::from((h >> 32) as u32))),
        key_hash: Some(h),
        pool_load,
    }
}

fn pick(c: &mut Criterion) {
    for (name, algorithm) in algorithms() {
        let mut group = c.benchmark_group(format!("pick/{name}"));
        for &n in sizes(name) {
            // Weights cycle 1..=4, so rings hold 250 points per server and WRR has a real period.
            let m = members(n, |i| 1 + (i % 4) as u32);
            let pool_load = m.iter().map(Member::current_load).sum();
            let tier = Tier::build(&algorithm, m);
            let mut i = 0u64;
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    i += 1;
                    tier.pick(black_box(&key(i, pool_load)))
                })
            });
        }
        group.finish();
    }
    // least_conn skips its per-member multiply when all weights are equal, the common case.
    let mut group = c.benchmark_group("pick/least_conn_equal_weights");
    for n in LEAST_CONN_SIZES {
        let tier = Tier::build(&Algorithm::LeastConn, members(n, |_| 1));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| tier.pick(black_box(&PickKey::default())))
        });
    }
    group.finish();
}

/// A request's whole life as least_conn sees it: a pick, the chosen server's gauge going up,
/// and the gauge of the request placed `IN_FLIGHT` picks earlier coming down. Loads move
/// between picks here, as they do in the proxy, so a structure that caches them pays its
/// upkeep inside this figure.
fn pick_acquire_release(c: &mut Criterion) {
    const IN_FLIGHT: usize = 64;
    let mut group = c.benchmark_group("pick_acquire_release/least_conn");
    for n in LEAST_CONN_SIZES {
        let tier = Tier::build(&Algorithm::LeastConn, members(n, |i| 1 + (i % 4) as u32));
        let m = tier.members();
        let mut ring = [0usize; IN_FLIGHT];
        for (k, slot) in ring.iter_mut().enumerate() {
            *slot = k % n;
            m[*slot].load.fetch_add(1);
        }
        let mut next = 0;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                let Some(idx) = tier.pick(black_box(&PickKey::default())) else {
                    return;
                };
                // Members are built with idx == position.
                m[idx.get()].load.fetch_add(1);
                let done = std::mem::replace(&mut ring[next], idx.get());
                m[done].load.fetch_sub(1);
                next = (next + 1) % IN_FLIGHT;
            })
        });
    }
    group.finish();
}

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("rebuild_1000");
    group.sample_size(10);
    let weight_one = members(1000, |_| 1);
    for (name, algorithm) in algorithms() {
        if name == "consistent_hash_bounded" {
            continue;
        }
        group.bench_function(name, |b| {
            b.iter_batched(
                || weight_one.clone(),
                |m| Tier::build(&algorithm, m),
                BatchSize::LargeInput,
            )
        });
    }
    // The smooth schedule's worst case: every weight from 1 to 256 present, a period of 128k.
    let mixed = members(1000, |i| 1 + (i as u32 * 37) % 256);
    group.bench_function("weighted_round_robin_mixed_weights", |b| {
        b.iter_batched(
            || mixed.clone(),
            |m| Tier::build(&Algorithm::WeightedRoundRobin, m),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, pick, pick_acquire_release, rebuild);
criterion_main!(benches);
