//! CIDR sets: `trusted_proxies`, `allow` and `deny` compiled into sorted, disjoint address
//! ranges, answered by binary search.
//!
//! Why sorted ranges and not a prefix trie: a lookup at 10,000 prefixes is ~14 comparisons
//! over one contiguous array (IPv4 and IPv6 kept apart, so IPv4 compares `u32`s), where a
//! binary trie walks up to 32 or 128 nodes through pointers. Nested prefixes
//! ("10.0.0.0/8" around "10.1.0.0/16") are flattened at build time into pieces that each
//! name the most specific rule covering them, so a lookup answers with that rule.
//!
//! IPv4-mapped IPv6 (`::ffff:10.0.0.1`, and prefixes of length 96 or more inside
//! `::ffff:0:0/96`) is treated as IPv4, both in rules and in lookups, because a dual-stack
//! socket reports IPv4 clients that way. Nothing here does I/O or allocates per lookup.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The index of a rule in the list it was built from (file order), as returned by a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleIdx(pub u32);

/// One prefix: a network address (host bits zero) and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a CIDR string is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not an address at all.
    #[error("invalid address {0:?}; expected an IP address or a CIDR such as \"10.0.0.0/8\" or \"::1/128\"")]
    Address(String),
    /// The length after `/` is not a number within the family's bits.
    #[error("invalid prefix length in {0:?}; expected /0 to /32 for IPv4 or /0 to /128 for IPv6")]
    Length(String),
    /// Bits are set past the prefix length.
    #[error("{given:?} has host bits set; did you mean \"{fixed}\"?")]
    HostBits {
        /// As written.
        given: String,
        /// With the host bits cleared.
        fixed: String,
    },
}

impl Cidr {
    /// Parses "10.0.0.0/8", "::1/128", or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let t = s.trim();
        let (a, l) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (t, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::Address(s.to_string()))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => bits,
            // Digits only: u8's parser would also take "+8".
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => l
                .parse::<u8>()
                .map_err(|_| CidrError::Length(s.to_string()))?,
            Some(_) => return Err(CidrError::Length(s.to_string())),
        };
        if len > bits {
            return Err(CidrError::Length(s.to_string()));
        }
        let c = Cidr::new_truncated(addr, len);
        if c.addr != addr {
            return Err(CidrError::HostBits {
                given: s.to_string(),
                fixed: c.to_string(),
            });
        }
        Ok(c.canonical())
    }

    /// The prefix of `addr` with `len` bits (clamped to the family's width), host bits cleared.
    pub fn new_truncated(addr: IpAddr, len: u8) -> Cidr {
        match addr {
            IpAddr::V4(v4) => {
                let len = len.min(32);
                Cidr {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask32(len))),
                    len,
                }
            }
            IpAddr::V6(v6) => {
                let len = len.min(128);
                Cidr {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask128(len))),
                    len,
                }
            }
        }
    }

    /// An IPv4-mapped IPv6 prefix as the IPv4 prefix it stands for.
    fn canonical(self) -> Cidr {
        if let IpAddr::V6(v6) = self.addr {
            if self.len >= 96 {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return Cidr {
                        addr: IpAddr::V4(v4),
                        len: self.len - 96,
                    };
                }
            }
        }
        self
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is inside (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.len) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.len) == u128::from(n),
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// An IPv4-mapped IPv6 address as plain IPv4; anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Disjoint, sorted ranges of one address family, each tagged with its rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ranges<T> {
    /// Range starts, ascending (kept apart from the rest so the search touches fewer lines).
    starts: Vec<T>,
    /// Inclusive range ends, by the same index.
    ends: Vec<T>,
    /// The most specific rule covering each range.
    rules: Vec<RuleIdx>,
}

impl<T: Copy + Ord> Ranges<T> {
    fn lookup(&self, a: T) -> Option<RuleIdx> {
        // The last range starting at or before `a`.
        let i = self.starts.partition_point(|s| *s <= a).checked_sub(1)?;
        (a <= self.ends[i]).then(|| self.rules[i])
    }

    fn push(&mut self, start: T, end: T, rule: RuleIdx) {
        self.starts.push(start);
        self.ends.push(end);
        self.rules.push(rule);
    }
}

/// A set of prefixes that answers "which rule covers this address" in O(log n).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrSet {
    /// The prefixes as given, in order (index = [`RuleIdx`]).
    cidrs: Vec<Cidr>,
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl CidrSet {
    /// Builds the set; rule `i` is `cidrs[i]`. Where prefixes nest, the longest one wins;
    /// where the same prefix repeats, the first one does.
    pub fn new(cidrs: Vec<Cidr>) -> CidrSet {
        let mut v4: Vec<(u32, u32, u8, RuleIdx)> = Vec::new();
        let mut v6: Vec<(u128, u128, u8, RuleIdx)> = Vec::new();
        for (i, c) in cidrs.iter().enumerate() {
            let rule = RuleIdx(i as u32);
            match c.addr {
                IpAddr::V4(a) => {
                    let s = u32::from(a);
                    v4.push((s, s | !mask32(c.len), c.len, rule));
                }
                IpAddr::V6(a) => {
                    let s = u128::from(a);
                    v6.push((s, s | !mask128(c.len), c.len, rule));
                }
            }
        }
        CidrSet {
            v4: flatten(v4),
            v6: flatten(v6),
            cidrs,
        }
    }

    /// Parses each string (see [`Cidr::parse`]); the first error names its index.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<CidrSet, (usize, CidrError)> {
        let mut v = Vec::with_capacity(items.len());
        for (i, s) in items.iter().enumerate() {
            v.push(Cidr::parse(s.as_ref()).map_err(|e| (i, e))?);
        }
        Ok(CidrSet::new(v))
    }

    /// The most specific rule covering `ip`, if any.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> Option<RuleIdx> {
        match canonical(ip) {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// Whether any rule covers `ip`.
    #[inline]
    pub fn matches(&self, ip: IpAddr) -> bool {
        self.contains(ip).is_some()
    }

    /// The prefix of rule `r`.
    pub fn rule(&self, r: RuleIdx) -> Option<&Cidr> {
        self.cidrs.get(r.0 as usize)
    }

    /// The prefixes as given.
    pub fn cidrs(&self) -> &[Cidr] {
        &self.cidrs
    }

    /// Whether the set has no prefixes.
    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty()
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.cidrs.len()
    }
}

/// Number types the flattening works on.
trait Bound: Copy + Ord {
    fn succ(self) -> Option<Self>;
    fn pred(self) -> Option<Self>;
}

impl Bound for u32 {
    fn succ(self) -> Option<u32> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<u32> {
        self.checked_sub(1)
    }
}

impl Bound for u128 {
    fn succ(self) -> Option<u128> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<u128> {
        self.checked_sub(1)
    }
}

/// Turns prefixes (which either nest or are disjoint, never overlap partly) into disjoint
/// ranges labelled with the innermost prefix, by a sweep with a stack of open prefixes.
fn flatten<T: Bound>(mut items: Vec<(T, T, u8, RuleIdx)>) -> Ranges<T> {
    // Outer before inner at the same start; the first-listed of equal prefixes first.
    items.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    items.dedup_by(|b, a| a.0 == b.0 && a.2 == b.2);
    let mut out = Ranges {
        starts: Vec::with_capacity(items.len()),
        ends: Vec::with_capacity(items.len()),
        rules: Vec::with_capacity(items.len()),
    };
    // Open prefixes, outermost at the bottom: (end, rule).
    let mut stack: Vec<(T, RuleIdx)> = Vec::new();
    // The first address not yet emitted; `None` once the top of the space has been.
    let mut pos: Option<T> = None;
    // Emits [pos, to] for `rule` if that is not empty, and moves `pos` past `to`.
    fn emit<T: Bound>(out: &mut Ranges<T>, pos: &mut Option<T>, to: T, rule: RuleIdx) {
        if let Some(from) = *pos {
            if from <= to {
                out.push(from, to, rule);
                *pos = to.succ();
            }
        }
    }
    for (start, end, _, rule) in items {
        // Close the prefixes that end before this one starts, emitting what is left of them.
        while let Some(&(e, r)) = stack.last() {
            if e >= start {
                break;
            }
            stack.pop();
            emit(&mut out, &mut pos, e, r);
        }
        match (stack.last(), start.pred()) {
            // Inside an open prefix: emit its part before this one.
            (Some(&(_, r)), Some(before)) => emit(&mut out, &mut pos, before, r),
            // Outside every prefix: skip the gap.
            _ => pos = Some(start),
        }
        stack.push((end, rule));
    }
    while let Some((e, r)) = stack.pop() {
        emit(&mut out, &mut pos, e, r);
    }
    merge_adjacent(out)
}

/// Joins neighbouring ranges of the same rule (left by splitting around a removed inner prefix).
fn merge_adjacent<T: Bound>(r: Ranges<T>) -> Ranges<T> {
    let mut out: Ranges<T> = Ranges {
        starts: Vec::with_capacity(r.starts.len()),
        ends: Vec::with_capacity(r.starts.len()),
        rules: Vec::with_capacity(r.starts.len()),
    };
    for i in 0..r.starts.len() {
        let same = out.rules.last() == Some(&r.rules[i]);
        if let Some(last) = out.ends.last_mut() {
            if same && Bound::succ(*last) == Some(r.starts[i]) {
                *last = r.ends[i];
                continue;
            }
        }
        out.push(r.starts[i], r.ends[i], r.rules[i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(items: &[&str]) -> CidrSet {
        CidrSet::parse(items).unwrap()
    }

    #[test]
    fn parses_prefixes_bare_addresses_and_refuses_host_bits() {
        assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::parse("::1/128").unwrap().to_string(), "::1/128");
        assert_eq!(
            Cidr::parse("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(Cidr::parse("2001:db8::1").unwrap().prefix_len(), 128);
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().prefix_len(), 0);
        assert_eq!(
            Cidr::parse("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8",
            "an IPv4-mapped prefix is IPv4"
        );
        assert_eq!(
            Cidr::parse("10.0.0.1/8"),
            Err(CidrError::HostBits {
                given: "10.0.0.1/8".into(),
                fixed: "10.0.0.0/8".into()
            })
        );
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10/8",
            "x",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn most_specific_rule_wins_and_mapped_addresses_count_as_v4() {
        let s = set(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.3",
            "::1/128",
            "2001:db8::/32",
        ]);
        assert_eq!(s.contains(ip("10.9.9.9")), Some(RuleIdx(0)));
        assert_eq!(s.contains(ip("10.1.9.9")), Some(RuleIdx(1)));
        assert_eq!(s.contains(ip("10.1.2.3")), Some(RuleIdx(2)));
        assert_eq!(s.contains(ip("10.1.2.4")), Some(RuleIdx(1)));
        assert_eq!(s.contains(ip("10.2.0.0")), Some(RuleIdx(0)));
        assert_eq!(s.contains(ip("11.0.0.0")), None);
        assert_eq!(s.contains(ip("9.255.255.255")), None);
        assert_eq!(s.contains(ip("::ffff:10.1.2.3")), Some(RuleIdx(2)));
        assert_eq!(s.contains(ip("::1")), Some(RuleIdx(3)));
        assert_eq!(s.contains(ip("::2")), None);
        assert_eq!(s.contains(ip("2001:db8:ffff::1")), Some(RuleIdx(4)));
    }

    #[test]
    fn whole_space_and_edges() {
        let s = set(&["0.0.0.0/0", "255.255.255.255", "0.0.0.0"]);
        assert_eq!(s.contains(ip("0.0.0.0")), Some(RuleIdx(2)));
        assert_eq!(s.contains(ip("255.255.255.255")), Some(RuleIdx(1)));
        assert_eq!(s.contains(ip("255.255.255.254")), Some(RuleIdx(0)));
        assert_eq!(s.contains(ip("::")), None, "IPv4 rules never match IPv6");
        let s = set(&["::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]);
        assert_eq!(
            s.contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(RuleIdx(1))
        );
        assert_eq!(s.contains(ip("::5")), Some(RuleIdx(0)));
        let s = set(&["10.0.0.0/8", "10.0.0.0/8"]);
        assert_eq!(
            s.contains(ip("10.0.0.1")),
            Some(RuleIdx(0)),
            "first of equal prefixes"
        );
    }

    fn arb_cidr() -> impl Strategy<Value = Cidr> {
        prop_oneof![
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, l)| Cidr::new_truncated(IpAddr::V4(a.into()), l)),
            // Few distinct high bits, so that IPv6 prefixes nest often.
            (0u128..8, any::<u64>(), 0u8..=128).prop_map(|(h, lo, l)| Cidr::new_truncated(
                IpAddr::V6(((h << 125) | u128::from(lo)).into()),
                l
            )),
        ]
    }

    fn naive(cidrs: &[Cidr], a: IpAddr) -> Option<RuleIdx> {
        let mut best: Option<(u8, usize)> = None;
        for (i, c) in cidrs.iter().enumerate() {
            if c.contains(a) && best.is_none_or(|(l, _)| c.len > l) {
                best = Some((c.len, i));
            }
        }
        best.map(|(_, i)| RuleIdx(i as u32))
    }

    proptest! {
        #[test]
        fn lookup_equals_the_longest_matching_prefix(
            cidrs in proptest::collection::vec(arb_cidr(), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let s = CidrSet::new(cidrs.clone());
            // Probe each prefix's edges, and random addresses.
            let mut addrs: Vec<IpAddr> = probes.iter().map(|p| IpAddr::V4((*p).into())).collect();
            for c in &cidrs {
                match c.addr {
                    IpAddr::V4(a) => {
                        let s = u32::from(a);
                        let e = s | !mask32(c.len);
                        for x in [s.wrapping_sub(1), s, e, e.wrapping_add(1)] {
                            addrs.push(IpAddr::V4(x.into()));
                        }
                    }
                    IpAddr::V6(a) => {
                        let s = u128::from(a);
                        let e = s | !mask128(c.len);
                        for x in [s.wrapping_sub(1), s, e, e.wrapping_add(1)] {
                            addrs.push(IpAddr::V6(x.into()));
                        }
                    }
                }
            }
            for a in addrs {
                prop_assert_eq!(s.contains(a), naive(&cidrs, a), "address {}", a);
            }
        }
    }
}
