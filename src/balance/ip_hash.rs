//! Client-IP affinity: the same client address goes to the same server while that server is
//! eligible.
//!
//! The IP's stable hash (`hash_ip`, which folds IPv4-mapped IPv6 to IPv4) is looked up on a
//! consistent-hash ring (`ring.rs`) with a fixed number of points per unit of weight. A ring
//! rather than `hash % n` because the tier is rebuilt whenever a server goes up or down: on a
//! ring a server leaving moves only its own clients, and one coming back takes clients only
//! for itself, so every other client keeps its server (and its sessions). Rendezvous hashing
//! would give the same guarantee but costs O(n) per pick; the ring's bucket index makes a pick
//! O(1). A request without an IP falls back to [`PickKey::effective_hash`]. No I/O here; the
//! ring is immutable after `build`.

use super::hash::hash_ip;
use super::ring::Ring;
use super::{Member, PickKey};

/// Ring points per unit of weight: ketama's (and nginx `hash ... consistent`'s) 160, which
/// keeps each weight-1 server's share within about 8% (one standard deviation) of its ideal.
const POINTS_PER_WEIGHT: u32 = 160;

/// The ring of the tier's members.
#[derive(Debug, Default)]
pub(crate) struct IpHash {
    ring: Ring,
}

impl IpHash {
    pub(crate) fn build(members: &[Member]) -> Self {
        IpHash {
            ring: Ring::build(members, POINTS_PER_WEIGHT),
        }
    }

    #[inline]
    pub(crate) fn pick(&self, _members: &[Member], key: &PickKey) -> Option<usize> {
        if self.ring.len() == 0 {
            return None;
        }
        let hash = match key.client_ip {
            Some(ip) => hash_ip(ip),
            None => key.effective_hash(),
        };
        Some(self.ring.owner(self.ring.locate(hash)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::balance::test_support::members;

    fn from(ip: IpAddr) -> PickKey {
        PickKey {
            client_ip: Some(ip),
            ..PickKey::default()
        }
    }

    fn v4(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(i))
    }

    #[test]
    fn empty_is_none() {
        let t = IpHash::build(&[]);
        assert_eq!(t.pick(&[], &from(v4(1))), None);
    }

    #[test]
    fn mapped_v6_goes_where_v4_goes() {
        let m = members(&[1, 1, 1, 1, 1]);
        let t = IpHash::build(&m);
        for i in 0..1000u32 {
            let mapped = IpAddr::V6(Ipv4Addr::from(i).to_ipv6_mapped());
            assert_eq!(
                t.pick(&m, &from(v4(i))),
                t.pick(&m, &from(mapped)),
                "client {i}"
            );
        }
    }

    #[test]
    fn ip_wins_over_key_hash_and_no_ip_falls_back() {
        let m = members(&[1; 8]);
        let t = IpHash::build(&m);
        let ip = from(v4(0x0a00_0001));
        let with_key = PickKey {
            key_hash: Some(12345),
            ..ip
        };
        assert_eq!(t.pick(&m, &ip), t.pick(&m, &with_key));
        let no_ip = PickKey {
            key_hash: Some(12345),
            ..PickKey::default()
        };
        assert_eq!(t.pick(&m, &no_ip), Some(t.ring.owner(t.ring.locate(12345))));
    }

    #[test]
    fn spreads_clients_by_weight() {
        let m = members(&[1, 1, 2]);
        let t = IpHash::build(&m);
        let mut counts = [0u32; 3];
        for i in 0..40_000u32 {
            counts[t
                .pick(&m, &from(v4(i.wrapping_mul(2_654_435_761))))
                .unwrap()] += 1;
        }
        for (c, ideal) in counts.iter().zip([10_000, 10_000, 20_000]) {
            assert!(
                c.abs_diff(ideal) < 2_500,
                "counts {counts:?} for weights 1:1:2"
            );
        }
    }

    proptest! {
        // Each case builds rings of up to 2M points, slow in a debug build.
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn same_client_same_member_across_calls_and_rebuilds(
            weights in prop::collection::vec(1u32..=256, 1..=64),
            ips in prop::collection::vec(any::<u128>(), 1..50),
        ) {
            let m = members(&weights);
            let a = IpHash::build(&m);
            let b = IpHash::build(&m);
            for ip in ips {
                let k = from(IpAddr::V6(Ipv6Addr::from(ip)));
                let first = a.pick(&m, &k);
                prop_assert_eq!(first, a.pick(&m, &k));
                prop_assert_eq!(first, b.pick(&m, &k));
            }
        }

        #[test]
        fn clients_of_remaining_servers_stay(
            weights in prop::collection::vec(1u32..=16, 2..=32),
            gone in any::<prop::sample::Index>(),
        ) {
            let all = members(&weights);
            let mut rest = all.clone();
            let removed = rest.remove(gone.index(all.len())).idx;
            let (a, b) = (IpHash::build(&all), IpHash::build(&rest));
            for i in 0..2_000u32 {
                let k = from(v4(i.wrapping_mul(2_654_435_761)));
                let before = all[a.pick(&all, &k).unwrap()].idx;
                let after = rest[b.pick(&rest, &k).unwrap()].idx;
                prop_assert!(before == after || before == removed, "client {} moved", i);
            }
        }
    }
}
