//! Host patterns and host normalisation. Hosts match case-insensitively, without the
//! port and a trailing dot; normalising writes into the caller's stack buffer, so matching a
//! host never allocates.

use std::fmt;

/// Longest host name a route can name (RFC 1035: 253 characters) plus room for a port; a
/// longer `Host` cannot equal any configured name, so it only matches routes for any host.
pub const HOST_BUF: usize = 256;

/// A host a route answers for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `api.example.com`: this name only (stored lower-case, without port or trailing dot).
    Exact(Box<str>),
    /// `*.example.com`: any name ending in `.example.com` with at least one label before it
    /// (not `example.com` itself); stored as the suffix `example.com`.
    Wildcard(Box<str>),
}

impl HostPattern {
    /// Parses `api.example.com`, `*.example.com`, an IPv4 address or `[v6]`; no port.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let bad = |why: &str| {
            format!("host {s:?} is invalid: {why}; expected a name such as \"api.example.com\" or \"*.example.com\"")
        };
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if lower == "*" {
            return Err(bad(
                "\"*\" alone matches every host; leave `host` out instead",
            ));
        }
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.is_empty() || name.len() > 253 {
            return Err(bad("empty or longer than 253 characters"));
        }
        if name.starts_with('[') {
            let inner = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
            if wild
                || inner
                    .and_then(|i| i.parse::<std::net::Ipv6Addr>().ok())
                    .is_none()
            {
                return Err(bad("not a bracketed IPv6 address"));
            }
        } else if name.contains(':') {
            return Err(bad(
                "a port is not part of a host pattern (matching ignores the port)",
            ));
        } else if name.contains('*') {
            return Err(bad(
                "`*` is only allowed as the whole first label (\"*.example.com\")",
            ));
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            || name.split('.').any(str::is_empty)
        {
            return Err(bad(
                "expected labels of letters, digits, - and _ separated by dots",
            ));
        }
        Ok(if wild {
            HostPattern::Wildcard(name.into())
        } else {
            HostPattern::Exact(name.into())
        })
    }

    /// Whether a normalised host (see [`normalize_host`]) matches.
    pub fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostPattern::Exact(e) => host == e.as_bytes(),
            HostPattern::Wildcard(suffix) => wildcard_matches(suffix.as_bytes(), host),
        }
    }

    /// Whether every host this pattern matches is also matched by `other`.
    pub fn within(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), _) => other.matches(a.as_bytes()),
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
                a == b || wildcard_matches(b.as_bytes(), a.as_bytes())
            }
            (HostPattern::Wildcard(_), HostPattern::Exact(_)) => false,
        }
    }
}

fn wildcard_matches(suffix: &[u8], host: &[u8]) -> bool {
    host.len() > suffix.len() + 1
        && host.ends_with(suffix)
        && host[host.len() - suffix.len() - 1] == b'.'
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// Writes `host` lower-cased, without a port and a trailing dot, into `buf`; `None` when it
/// does not fit (then no named route can match it).
pub fn normalize_host<'b>(host: &str, buf: &'b mut [u8; HOST_BUF]) -> Option<&'b [u8]> {
    let b = host.as_bytes();
    let mut end = b.len();
    if b.first() == Some(&b'[') {
        // `[v6]:port`: the port follows the bracket.
        end = b.iter().position(|&c| c == b']').map_or(b.len(), |i| i + 1);
    } else {
        // A port is the digits after the last `:`; scanning back over digits only, a name
        // without a port costs one comparison.
        let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
        if digits < b.len() && b[b.len() - digits - 1] == b':' {
            end = b.len() - digits - 1;
        }
    }
    let mut name = &b[..end];
    if let [rest @ .., b'.'] = name {
        name = rest;
    }
    let out = buf.get_mut(..name.len())?;
    let mut from = name.chunks_exact(8);
    let mut to = out.chunks_exact_mut(8);
    for (o, i) in to.by_ref().zip(from.by_ref()) {
        let mut w = [0u8; 8];
        w.copy_from_slice(i);
        o.copy_from_slice(&lower8(u64::from_le_bytes(w)).to_le_bytes());
    }
    for (o, i) in to.into_remainder().iter_mut().zip(from.remainder()) {
        *o = i.to_ascii_lowercase();
    }
    Some(out)
}

/// ASCII lower-casing of 8 bytes at once: `A`..=`Z` gain 0x20, every other byte (non-ASCII
/// included) stays. Per byte, on its low 7 bits (so no carry crosses bytes): adding 0x3f
/// sets the top bit from `A` up, adding 0x25 from `[` (just past `Z`) up.
#[inline]
fn lower8(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const TOP: u64 = 0x8080_8080_8080_8080;
    let b = w & LOW7;
    let from_a = b + 0x3f3f_3f3f_3f3f_3f3f;
    let past_z = b + 0x2525_2525_2525_2525;
    let upper = from_a & !past_z & !w & TOP;
    w | (upper >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(h: &str) -> Option<String> {
        let mut buf = [0u8; HOST_BUF];
        normalize_host(h, &mut buf).map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn hosts_normalise_case_port_and_trailing_dot() {
        assert_eq!(
            norm("API.Example.COM:8080").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(norm("example.com.").as_deref(), Some("example.com"));
        assert_eq!(norm("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(norm("[::1]").as_deref(), Some("[::1]"));
        assert_eq!(norm("10.0.0.1:80").as_deref(), Some("10.0.0.1"));
        assert_eq!(norm("example.com:").as_deref(), Some("example.com"));
        assert_eq!(
            norm("10.0.0.1").as_deref(),
            Some("10.0.0.1"),
            "digits, but no port"
        );
        assert_eq!(norm(&"a".repeat(300)), None, "too long for any named route");
    }

    proptest::proptest! {
        /// Word-at-a-time lower-casing equals byte-at-a-time, for any bytes.
        #[test]
        fn lower8_is_ascii_lowercase(bytes in proptest::array::uniform8(proptest::num::u8::ANY)) {
            let want = u64::from_le_bytes(bytes.map(|b| b.to_ascii_lowercase()));
            proptest::prop_assert_eq!(lower8(u64::from_le_bytes(bytes)), want);
        }
    }

    #[test]
    fn lower8_on_the_edges() {
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b; 8]);
            assert_eq!(
                lower8(w),
                u64::from_le_bytes([b.to_ascii_lowercase(); 8]),
                "byte {b:#x}"
            );
        }
        assert_eq!(
            norm("ABCDEFGHIJKLMNOPQRSTUVWXYZ.Example").as_deref(),
            Some("abcdefghijklmnopqrstuvwxyz.example")
        );
    }

    #[test]
    fn host_patterns_parse_and_refuse() {
        assert_eq!(
            HostPattern::parse("API.example.com.").unwrap(),
            HostPattern::Exact("api.example.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.example.com").unwrap(),
            HostPattern::Wildcard("example.com".into())
        );
        assert!(HostPattern::parse("[::1]").is_ok());
        for bad in [
            "*",
            "a.*.com",
            "example.com:80",
            "a..b",
            "",
            "sp ace.com",
            "*.[::1]",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn wildcard_needs_a_label_before_the_suffix() {
        let w = HostPattern::parse("*.example.com").unwrap();
        assert!(w.matches(b"a.example.com"));
        assert!(w.matches(b"a.b.example.com"));
        assert!(!w.matches(b"example.com"));
        assert!(!w.matches(b"badexample.com"));
        assert!(!w.matches(b".example.com"), "an empty label is not a label");
    }

    #[test]
    fn host_containment() {
        let p = |s| HostPattern::parse(s).unwrap();
        assert!(p("a.example.com").within(&p("*.example.com")));
        assert!(p("*.a.example.com").within(&p("*.example.com")));
        assert!(!p("*.example.com").within(&p("*.a.example.com")));
        assert!(!p("*.example.com").within(&p("x.example.com")));
        assert!(!p("example.com").within(&p("*.example.com")));
    }
}
