//! Connections open per client address on one listener, for `max_connections_per_client`.
//!
//! Counted once per accepted connection and once per close, never per request. The map is
//! split into shards behind short `std` mutexes (no `.await` inside, a hash-map lookup and an
//! add): a connection storm from many clients spreads over the shards, and the request path
//! never touches it. An entry is removed when its count returns to zero, so memory follows
//! the connections open now.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 32;

/// Open connections per client IP.
#[derive(Default)]
pub struct ClientCounts {
    shards: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

impl ClientCounts {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// Counts a connection from `ip` if it has fewer than `max` open; the hold releases it.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<ClientHold> {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(ClientHold {
            counts: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip` now.
    #[cfg(test)]
    pub fn open(&self, ip: IpAddr) -> u32 {
        let map = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }
}

/// One counted connection; dropping it uncounts it.
pub struct ClientHold {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl Drop for ClientHold {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .shard(&self.ip)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            c.shard(&a).lock().unwrap().get(&a).is_none(),
            "entry removed at zero"
        );
    }
}
