//! Admission costs on the request path: a CIDR lookup at 10, 1,000 and 10,000 prefixes,
//! a rate-limit check with one hot key and with 100,000 distinct keys, and reading a
//! three-hop X-Forwarded-For from a trusted sender.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use fulcrum::admission::cidr::{Cidr, CidrSet};
use fulcrum::admission::forwarded::{self, ClientHeader};
use fulcrum::admission::rate::RateLimiter;
use fulcrum::backend::monotonic_ns;
use fulcrum::config::{RateKey, RateLimitSettings};

/// `n` random IPv4 prefixes of length 8 to 32 (deterministic).
fn prefixes(n: usize) -> Vec<Cidr> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..n)
        .map(|_| Cidr::new_truncated(IpAddr::V4(Ipv4Addr::from(rng.u32(..))), rng.u8(8..=32)))
        .collect()
}

fn addrs(n: usize) -> Vec<IpAddr> {
    let mut rng = fastrand::Rng::with_seed(11);
    (0..n)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.u32(..))))
        .collect()
}

/// A plain binary trie over IPv4 prefixes, only here to compare against the sorted ranges
/// `CidrSet` uses: each node has two children and maybe a rule; a lookup walks the bits.
struct Trie {
    nodes: Vec<([u32; 2], Option<u32>)>,
}

impl Trie {
    fn new(cidrs: &[Cidr]) -> Trie {
        let mut t = Trie {
            nodes: vec![([0, 0], None)],
        };
        for (i, c) in cidrs.iter().enumerate() {
            let IpAddr::V4(a) = c.addr() else { continue };
            let a = u32::from(a);
            let mut n = 0usize;
            for bit in 0..c.prefix_len() {
                let b = ((a >> (31 - bit)) & 1) as usize;
                if t.nodes[n].0[b] == 0 {
                    t.nodes.push(([0, 0], None));
                    let id = (t.nodes.len() - 1) as u32;
                    t.nodes[n].0[b] = id;
                }
                n = t.nodes[n].0[b] as usize;
            }
            if t.nodes[n].1.is_none() {
                t.nodes[n].1 = Some(i as u32);
            }
        }
        t
    }

    fn lookup(&self, ip: IpAddr) -> Option<u32> {
        let IpAddr::V4(a) = ip else { return None };
        let a = u32::from(a);
        let (mut n, mut best) = (0usize, self.nodes[0].1);
        for bit in 0..32 {
            let next = self.nodes[n].0[((a >> (31 - bit)) & 1) as usize];
            if next == 0 {
                break;
            }
            n = next as usize;
            best = self.nodes[n].1.or(best);
        }
        best
    }
}

fn cidr_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("cidr_lookup");
    let probes = addrs(4096);
    for n in [10, 1_000, 10_000] {
        let set = CidrSet::new(prefixes(n));
        let mut i = 0;
        g.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(set.contains(black_box(probes[i])))
            })
        });
    }
    // The same 10,000 prefixes in a binary trie, for comparison.
    let pre = prefixes(10_000);
    let trie = Trie::new(&pre);
    let set = CidrSet::new(pre);
    for p in &probes {
        assert_eq!(
            trie.lookup(*p),
            set.contains(*p).map(|r| r.0),
            "trie and set agree"
        );
    }
    let mut i = 0;
    g.bench_function("trie_10000", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(trie.lookup(black_box(probes[i])))
        })
    });
    g.finish();
}

fn limiter(c: &mut Criterion) {
    let s = RateLimitSettings {
        rate: 1e6,
        burst: 1000,
        key: RateKey::ClientIp,
        max_keys: 100_000,
    };
    let mut g = c.benchmark_group("rate_check");
    let one = RateLimiter::new(&s);
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    g.bench_function("1_key", |b| {
        b.iter(|| black_box(one.check_request(black_box(ip), None, None, monotonic_ns())))
    });
    let many = RateLimiter::new(&s);
    let keys = addrs(100_000);
    for k in &keys {
        let _ = many.check_request(*k, None, None, monotonic_ns());
    }
    let mut i = 0;
    g.bench_function("100000_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(many.check_request(black_box(keys[i]), None, None, monotonic_ns()))
        })
    });
    g.finish();
}

fn forwarding(c: &mut Criterion) {
    let trusted = CidrSet::parse(&["10.0.0.0/8"]).unwrap();
    let mut h = http::HeaderMap::new();
    h.insert(
        "x-forwarded-for",
        "203.0.113.7, 10.1.2.3, 10.4.5.6".parse().unwrap(),
    );
    let empty = http::HeaderMap::new();
    c.bench_function("forwarded/xff_3_hops", |b| {
        b.iter(|| {
            black_box(forwarded::from_headers(
                black_box(&h),
                ClientHeader::XForwardedFor,
                &trusted,
            ))
        })
    });
    c.bench_function("forwarded/absent", |b| {
        b.iter(|| {
            black_box(forwarded::from_headers(
                black_box(&empty),
                ClientHeader::XForwardedFor,
                &trusted,
            ))
        })
    });
}

criterion_group!(benches, cidr_lookup, limiter, forwarding);
criterion_main!(benches);
