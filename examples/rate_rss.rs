//! Prints the resident memory a rate limiter takes with 100,000 distinct keys, and that a
//! million more keys do not grow it past the cap: `cargo run --release --example rate_rss`.

use std::net::{IpAddr, Ipv4Addr};

use fulcrum::admission::rate::RateLimiter;
use fulcrum::backend::monotonic_ns;
use fulcrum::config::{RateKey, RateLimitSettings};

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let s = RateLimitSettings {
        rate: 10.0,
        burst: 20,
        key: RateKey::ClientIp,
        max_keys: 100_000,
    };
    let before = rss_kib();
    let l = RateLimiter::new(&s);
    for i in 0..100_000u32 {
        let _ = l.check_request(
            IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)),
            None,
            None,
            monotonic_ns(),
        );
    }
    let at_100k = rss_kib();
    println!("keys tracked: {}", l.len());
    println!(
        "RSS before: {before} KiB; with 100,000 keys: {at_100k} KiB (+{} KiB)",
        at_100k - before
    );
    for i in 0..1_000_000u32 {
        let _ = l.check_request(
            IpAddr::V4(Ipv4Addr::from(0x2000_0000 + i)),
            None,
            None,
            monotonic_ns(),
        );
    }
    let after = rss_kib();
    println!(
        "after 1,000,000 more distinct keys: {} tracked, RSS {after} KiB (+{} KiB over the start)",
        l.len(),
        after - before
    );
}
