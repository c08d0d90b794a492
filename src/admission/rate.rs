//! Per-key rate limiting: GCRA over a sharded, capped table of keys.
//!
//! **Why GCRA.** The generic cell rate algorithm keeps one number per key, the theoretical
//! arrival time (TAT), where a token bucket keeps two (tokens and last refill). It allows
//! exactly `burst` back-to-back requests from rest and then one per `1/rate`, and a refusal
//! knows at once how long to wait (the `Retry-After`). A key whose TAT is in the past is a
//! full bucket: forgetting it changes nothing, so expiry is free of any visible effect.
//!
//! **Why not the `governor` crate.** Its keyed limiter (GCRA too) keeps keys in a DashMap
//! with no cap: memory stays bounded only if someone calls `retain_recent` often enough,
//! and `header:NAME` keys are chosen by clients. Its quota is fixed when it is built, so a
//! reload could not change `rate` or `burst` without dropping every bucket.
//!
//! **No global lock.** Keys are hashed (SipHash with a per-limiter random key, so clients
//! cannot aim collisions) to one of [`SHARDS`] shards, each a small map behind its own
//! `std::sync::Mutex`, padded to its own cache line. A check holds one shard's lock for a
//! map lookup and a few additions; nothing else is shared but two read-mostly atomics.
//! On 2 workers, two checks contend only when their keys land in the same shard (1 in 64
//! for distinct keys), and then one waits for the other's ~50 ns critical section; the same
//! key always contends, as it must.
//!
//! **Bounded memory.** At most `max_keys` keys are tracked, each as two `u64` in a hash
//! map (the key's hash, not the key: no allocation per key). The cap is split evenly across
//! shards, so the first shard to fill starts evicting a little before the total reaches
//! `max_keys` (~92% of it with 100,000 random keys).
//! When a shard is full, a new key first sweeps out expired entries (full buckets); if none
//! expired, the entry closest to full is dropped, which loses the least information.
//!
//! Nothing here does I/O or reads a clock it was not given, except [`RateLimiter::check`]
//! and [`RateLimiter::sweep`], which read the monotonic clock once. A request is checked
//! at the time its handler already read ([`RateLimiter::check_request`]), so the check
//! reads no clock of its own (one `Instant` read and conversion was ~240 instructions,
//! half of the check's cost).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::HeaderMap;

use super::cidr::canonical;
use crate::backend::monotonic_ns;
use crate::config::{RateKey, RateLimitSettings};

/// Number of shards; a power of two, well above the worker count.
pub const SHARDS: usize = 64;
/// Keys per shard whose room is reserved when a limiter is built (larger caps grow on use).
pub const PRESIZE: usize = 4096;

/// A refusal: how long until the key may send again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for a `Retry-After` header: rounded up, at least 1.
    pub fn secs(self) -> u64 {
        let s = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        s.max(1)
    }
}

/// Hashes are already uniform (keyed SipHash): the map uses them as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; fold anything else rather than panic.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// key hash -> TAT (nanoseconds since the limiter's epoch).
type Table = HashMap<u64, u64, BuildHasherDefault<Identity>>;

/// One shard, alone on its cache line so that two workers never false-share.
#[repr(align(64))]
struct Shard(Mutex<Table>);

/// A keyed GCRA limiter. Share it as `Arc`; keep the same one across reloads.
pub struct RateLimiter {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Emission interval `1/rate`, ns.
    interval: AtomicU64,
    /// `burst × interval`, ns: how far ahead of now a key's TAT may run.
    tolerance: AtomicU64,
    /// Keys per shard, at most.
    shard_cap: AtomicUsize,
    /// The [`monotonic_ns`] reading the limiter's times count from.
    epoch: u64,
    key: RateKey,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("interval_ns", &self.interval.load(Ordering::Relaxed))
            .field("tolerance_ns", &self.tolerance.load(Ordering::Relaxed))
            .field("keys", &self.len())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter for `s`, with no key tracked yet.
    pub fn new(s: &RateLimitSettings) -> RateLimiter {
        let l = RateLimiter {
            shards: (0..SHARDS)
                .map(|_| Shard(Mutex::new(Table::default())))
                .collect(),
            hasher: RandomState::new(),
            interval: AtomicU64::new(0),
            tolerance: AtomicU64::new(0),
            shard_cap: AtomicUsize::new(0),
            epoch: monotonic_ns(),
            key: s.key.clone(),
        };
        l.update(s);
        l
    }

    /// The limiter to use after a reload: `old` itself, updated in place, when it counts the
    /// same kind of key (its buckets stay); otherwise a fresh one.
    pub fn reuse_or_new(old: Option<&Arc<RateLimiter>>, s: &RateLimitSettings) -> Arc<RateLimiter> {
        match old {
            Some(o) if o.key == s.key => {
                o.update(s);
                o.clone()
            }
            _ => Arc::new(RateLimiter::new(s)),
        }
    }

    /// Applies new `rate`, `burst` and `max_keys` in place; tracked keys keep their state.
    pub fn update(&self, s: &RateLimitSettings) {
        // Validation keeps rate within 0.001..=1e9 and burst >= 1.
        let interval = ((1e9 / s.rate).round() as u64).max(1);
        self.interval.store(interval, Ordering::Relaxed);
        self.tolerance.store(
            interval.saturating_mul(u64::from(s.burst.max(1))),
            Ordering::Relaxed,
        );
        self.shard_cap
            .store(s.max_keys.div_ceil(SHARDS).max(1), Ordering::Relaxed);
    }

    /// What this limiter keys on.
    pub fn key(&self) -> &RateKey {
        &self.key
    }

    /// Checks one request (or connection) of `client` with these request headers, at `at`
    /// (a [`monotonic_ns`] reading): the key is the client IP, or the configured header's
    /// value (the client IP when it is absent, so that leaving the header out is no way
    /// around the limit).
    ///
    /// `kept` keeps the client's [`client_key`] for a connection's later requests,
    /// when `client` is the connection's own client.
    pub fn check_request(
        &self,
        client: IpAddr,
        kept: Option<&OnceLock<u64>>,
        headers: Option<&HeaderMap>,
        at: u64,
    ) -> Result<(), RetryAfter> {
        let value = match (&self.key, headers) {
            (RateKey::Header(name), Some(h)) => h.get(name),
            _ => None,
        };
        let h = match (value, kept) {
            (Some(v), _) => self.hash(&(1u8, v.as_bytes())),
            (None, Some(k)) => *k.get_or_init(|| client_key(client)),
            (None, None) => client_key(client),
        };
        // A limiter made (by a reload) after `at` was read counts it as its first moment.
        self.check_hashed(h, at.saturating_sub(self.epoch))
    }

    /// Checks one event for `key` now.
    pub fn check<K: Hash + ?Sized>(&self, key: &K) -> Result<(), RetryAfter> {
        self.check_hashed(self.hash(key), self.now())
    }

    /// Nanoseconds since the limiter's epoch.
    fn now(&self) -> u64 {
        monotonic_ns().saturating_sub(self.epoch)
    }

    /// The limiter's hash of `key` (for [`RateLimiter::check_hashed`]).
    pub fn hash<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Checks one event for the key with hash `h` at `now` (ns since the limiter's epoch).
    pub fn check_hashed(&self, h: u64, now: u64) -> Result<(), RetryAfter> {
        let t = self.interval.load(Ordering::Relaxed);
        let tau = self.tolerance.load(Ordering::Relaxed);
        // High bits pick the shard; the map uses all of them, unrelated to the shard.
        let shard = &self.shards[(h >> 58) as usize % SHARDS];
        // A poisoned shard only means another check panicked mid-update of two integers.
        let mut map = shard.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = map.get_mut(&h) {
            let next = (*tat).max(now).saturating_add(t);
            if next - now > tau {
                return Err(RetryAfter(Duration::from_nanos(next - tau - now)));
            }
            *tat = next;
            return Ok(());
        }
        // An untracked key is a full bucket: the first event always passes (burst >= 1).
        let cap = self.shard_cap.load(Ordering::Relaxed);
        if map.len() >= cap {
            make_room(&mut map, now, cap);
        }
        map.insert(h, now.saturating_add(t));
        Ok(())
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired key (a full bucket) from every shard; optional housekeeping.
    pub fn sweep(&self) {
        self.sweep_at(self.now());
    }

    /// [`RateLimiter::sweep`] at `now` (ns since the limiter's epoch).
    pub fn sweep_at(&self, now: u64) {
        for s in self.shards.iter() {
            let mut map = s.0.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, tat| *tat > now);
        }
    }
}

/// The key of a client IP in every limiter: SipHash with a key random to the process, so
/// that a connection can keep it for all its requests (a SipHash per request was ~200
/// instructions). A header's value is hashed with the limiter's own key; the two never
/// collide but by chance.
pub fn client_key(ip: IpAddr) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    // One 16-byte write of the address, where hashing the `IpAddr` itself wrote its
    // variant and its octets apart (three SipHash writes).
    KEY.get_or_init(RandomState::new).hash_one(ip_bits(ip))
}

/// The client's address as one integer: IPv4 (and IPv4-mapped IPv6) as its IPv4-mapped
/// IPv6 form, so that both spellings of one client are one key.
fn ip_bits(ip: IpAddr) -> u128 {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

/// Frees at least one slot in a full shard: expired keys first, else the one nearest full.
fn make_room(map: &mut Table, now: u64, cap: usize) {
    map.retain(|_, tat| *tat > now);
    while map.len() >= cap {
        let Some((&k, _)) = map.iter().min_by_key(|(_, tat)| **tat) else {
            return;
        };
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: f64, burst: u32, max_keys: usize) -> RateLimitSettings {
        RateLimitSettings {
            rate,
            burst,
            key: RateKey::ClientIp,
            max_keys,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_one_per_interval_with_retry_after() {
        let l = RateLimiter::new(&settings(10.0, 5, 1000));
        let k = l.hash("a");
        for i in 0..5 {
            assert_eq!(l.check_hashed(k, 0), Ok(()), "burst request {i}");
        }
        let e = l.check_hashed(k, 0).unwrap_err();
        assert_eq!(
            e.0,
            Duration::from_millis(100),
            "one interval until the next"
        );
        assert_eq!(e.secs(), 1);
        assert!(l.check_hashed(k, S / 10 - 1).is_err());
        assert_eq!(l.check_hashed(k, S / 10), Ok(()));
        assert!(l.check_hashed(k, S / 10).is_err());
        // Another key is unaffected.
        assert_eq!(l.check_hashed(l.hash("b"), 0), Ok(()));
        // After a long rest the full burst is back.
        for _ in 0..5 {
            assert_eq!(l.check_hashed(k, 100 * S), Ok(()));
        }
        assert!(l.check_hashed(k, 100 * S).is_err());
    }

    #[test]
    fn slow_rates_give_whole_seconds() {
        let l = RateLimiter::new(&settings(0.1, 1, 1000));
        let k = l.hash("a");
        assert_eq!(l.check_hashed(k, 0), Ok(()));
        assert_eq!(l.check_hashed(k, S).unwrap_err().secs(), 9);
        assert_eq!(RetryAfter(Duration::from_millis(1)).secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(2001)).secs(), 3);
    }

    #[test]
    fn update_in_place_keeps_state() {
        let s = settings(1.0, 2, 1000);
        let l = Arc::new(RateLimiter::new(&s));
        let k = l.hash("a");
        assert!(l.check_hashed(k, 0).is_ok() && l.check_hashed(k, 0).is_ok());
        assert!(l.check_hashed(k, 0).is_err());
        let same = RateLimiter::reuse_or_new(Some(&l), &settings(1.0, 3, 1000));
        assert!(Arc::ptr_eq(&same, &l), "same key kind: the same limiter");
        assert!(
            l.check_hashed(k, 0).is_ok(),
            "the larger burst applies at once"
        );
        assert!(
            l.check_hashed(k, 0).is_err(),
            "and the earlier requests still count"
        );
        let mut hdr = settings(1.0, 3, 1000);
        hdr.key = RateKey::Header(http::HeaderName::from_static("x-user"));
        let other = RateLimiter::reuse_or_new(Some(&l), &hdr);
        assert!(!Arc::ptr_eq(&other, &l), "another key kind starts afresh");
    }

    #[test]
    fn memory_is_capped_and_expired_keys_are_swept() {
        let cap = SHARDS * 4;
        let l = RateLimiter::new(&settings(1.0, 1, cap));
        for i in 0..10_000u32 {
            assert!(
                l.check_hashed(l.hash(&i), 0).is_ok(),
                "a new key always passes"
            );
        }
        let n = l.len();
        assert!(
            n <= cap && n > cap / 2,
            "{n} keys tracked with a cap of {cap}"
        );
        // A shard full of expired keys makes room without dropping a live one.
        let live = l.hash("live");
        l.check_hashed(live, 2 * S).unwrap();
        assert!(l.check_hashed(live, 2 * S).is_err());
        l.sweep_at(2 * S);
        assert_eq!(l.len(), 1, "only the live key is left");
        assert!(
            l.check_hashed(live, 2 * S).is_err(),
            "and it is still limited"
        );
        l.sweep_at(4 * S);
        assert!(l.is_empty());
    }

    #[test]
    fn header_key_falls_back_to_the_client_ip() {
        let mut s = settings(1.0, 1, 1000);
        s.key = RateKey::Header(http::HeaderName::from_static("x-user"));
        let l = RateLimiter::new(&s);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-user", http::HeaderValue::from_static("alice"));
        assert!(l.check_request(ip, None, Some(&h), 0).is_ok());
        assert!(
            l.check_request(ip, None, Some(&h), 0).is_err(),
            "alice is limited"
        );
        h.insert("x-user", http::HeaderValue::from_static("bob"));
        assert!(l.check_request(ip, None, Some(&h), 0).is_ok(), "bob is not");
        assert!(
            l.check_request(ip, None, None, 0).is_ok(),
            "no header: keyed on the IP"
        );
        assert!(l
            .check_request(ip, None, Some(&HeaderMap::new()), 0)
            .is_err());
    }

    #[test]
    fn a_kept_key_and_both_spellings_of_an_ipv4_client_share_one_bucket() {
        let l = RateLimiter::new(&settings(1.0, 2, 1000));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(v4), client_key(mapped));
        assert_ne!(client_key(v4), client_key("192.0.2.8".parse().unwrap()));
        let kept = OnceLock::new();
        let at = monotonic_ns();
        assert!(l.check_request(v4, Some(&kept), None, at).is_ok());
        assert_eq!(kept.get(), Some(&client_key(v4)), "kept for later requests");
        assert!(l.check_request(mapped, None, None, at).is_ok());
        assert!(
            l.check_request(v4, Some(&kept), None, at).is_err(),
            "the burst of 2 is spent by either spelling"
        );
        // A reading from before the limiter was made counts as its first moment.
        let late = RateLimiter::new(&settings(1.0, 1, 1000));
        assert!(late.check_request(v4, None, None, at).is_ok());
        assert!(late.check_request(v4, None, None, at).is_err());
    }

    #[test]
    fn two_threads_share_one_limit() {
        let l = Arc::new(RateLimiter::new(&settings(1e-3, 1000, 1000)));
        let ok = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    for _ in 0..1000 {
                        if l.check(&"shared").is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::Relaxed), 1000, "exactly the burst passes");
    }
}
