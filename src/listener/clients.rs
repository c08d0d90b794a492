//! Connections open per client address on one listener, for `max_connections_per_client`.
//!
//! Counted once per accepted connection and once per close, never per request. The map is
//! split into shards behind short `std` mutexes (no `.await` inside, a hash-map lookup and an
//! add): a connection storm from many clients spreads over the shards, and the request path
//! never touches it. An entry is removed when its count returns to zero, so memory follows
//! the connections open now.
//!
//! The maps hash with foldhash, seeded per map at random: a client that picks its
//! addresses (an IPv6 /64 holds 2^64) cannot know which collide, and an address hashes in
//! a few multiplications, where std's SipHash cost about 190 instructions per lookup, two
//! lookups per connection.

use std::collections::hash_map::{Entry, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use foldhash::fast::RandomState;

const SHARDS: usize = 32;

/// Open connections per client IP.
#[derive(Default)]
pub struct ClientCounts {
    shards: [Mutex<HashMap<IpAddr, u32, RandomState>>; SHARDS],
}

/// The shard of `ip`'s count. A multiplicative mix, not a keyed hash: it only spreads
/// clients over the locks, and each shard's map hashes with its own seeded hasher, so a
/// client choosing its addresses can crowd one lock but cannot degrade a map.
fn shard_of(ip: &IpAddr) -> usize {
    let x = match ip {
        IpAddr::V4(a) => u64::from(u32::from(*a)),
        IpAddr::V6(a) => {
            let v = u128::from(*a);
            (v as u64) ^ ((v >> 64) as u64)
        }
    };
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % SHARDS
}

impl ClientCounts {
    /// Counts a connection from `ip` if it has fewer than `max` open; the hold releases it.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<ClientHold> {
        let shard = shard_of(&ip);
        let mut map = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        match map.entry(ip) {
            Entry::Occupied(mut e) if *e.get() < max => *e.get_mut() += 1,
            Entry::Occupied(_) => return None,
            Entry::Vacant(e) if max > 0 => {
                e.insert(1);
            }
            Entry::Vacant(_) => return None,
        }
        Some(ClientHold {
            counts: self.clone(),
            ip,
            shard,
        })
    }

    /// Connections open from `ip` now.
    #[cfg(test)]
    pub fn open(&self, ip: IpAddr) -> u32 {
        let map = self.shards[shard_of(&ip)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }
}

/// One counted connection; dropping it uncounts it.
pub struct ClientHold {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
    shard: usize,
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        let mut map = self.counts.shards[self.shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // One lookup for the decrement and the removal at zero.
        if let Entry::Occupied(mut e) = map.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_spread_v4_and_v6_clients() {
        let mut used = [0u32; SHARDS];
        for i in 0..=255u8 {
            used[shard_of(&IpAddr::from([10, 0, 0, i]))] += 1;
            used[shard_of(&IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)]))] += 1;
        }
        assert!(
            used.iter().all(|&n| n > 0),
            "every shard takes some of 512 neighbouring clients: {used:?}"
        );
    }

    #[test]
    fn caps_per_address_and_forgets_closed_ones() {
        let c = Arc::new(ClientCounts::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let h1 = c.try_open(a, 2).expect("first");
        let h2 = c.try_open(a, 2).expect("second");
        assert!(c.try_open(a, 2).is_none(), "third over the cap of 2");
        let _hb = c.try_open(b, 2).expect("another address is not affected");
        drop(h1);
        assert_eq!(c.open(a), 1);
        let _h3 = c.try_open(a, 2).expect("a slot freed");
        drop(h2);
        drop(_h3);
        assert_eq!(c.open(a), 0);
        assert!(
            c.shards[shard_of(&a)].lock().unwrap().get(&a).is_none(),
            "entry removed at zero"
        );
        assert!(c.try_open(a, 0).is_none(), "a cap of 0 admits nobody");
        assert!(
            c.shards[shard_of(&a)].lock().unwrap().get(&a).is_none(),
            "and leaves no entry behind"
        );
    }
}
