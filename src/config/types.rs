//! Value types that validate themselves while they are parsed, so that a bad value is
//! reported by the TOML parser at its own line and column.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration written as a string such as `"500ms"`, `"2s"` or `"1m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"2s\" or \"1m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {s:?} ({e}); expected a duration such as \"500ms\", \"2s\" or \"1m\""
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A socket address written as `"IP:PORT"` (`"127.0.0.1:8080"`, `"[::1]:8080"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Addr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address \"IP:PORT\" such as \"127.0.0.1:8080\" or \"[::1]:8080\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Addr, E> {
                parse_addr(s).map(Addr).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses `IP:PORT`, also accepting `localhost:PORT` as 127.0.0.1 (no DNS at load time).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    s.parse().map_err(|_| {
        format!(
            "invalid address {s:?}; expected \"IP:PORT\" such as \"127.0.0.1:8080\" or \"[::1]:8080\""
        )
    })
}

/// A size in bytes, written as an integer (`65536`) or a string with a unit (`"64KiB"`,
/// `"10MiB"`, `"1GB"`; B, KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a size: bytes as an integer, or a string such as \"64KiB\" or \"10MiB\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("a size must not be negative, got {v}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `"512"`, `"64KiB"`, `"10 MiB"`, `"1GB"` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!("invalid size {s:?}; expected bytes such as 65536 or \"64KiB\", \"10MiB\", \"1GB\"")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// A server weight, 1 to 256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weight(pub u32);

/// The largest weight a server may have.
pub const MAX_WEIGHT: u32 = 256;

impl Default for Weight {
    fn default() -> Self {
        Weight(1)
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = i64::deserialize(d)?;
        if (1..=i64::from(MAX_WEIGHT)).contains(&w) {
            Ok(Weight(w as u32))
        } else {
            Err(de::Error::custom(format!(
                "weight must be between 1 and {MAX_WEIGHT}, got {w}"
            )))
        }
    }
}

/// A count that must be at least 1 (rise, fall, thresholds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count(pub u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        if (1..=i64::from(u32::MAX)).contains(&n) {
            Ok(Count(n as u32))
        } else {
            Err(de::Error::custom(format!("must be at least 1, got {n}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("127.0.0.1:80").unwrap().port(), 80);
        assert!(parse_addr("[::1]:80").unwrap().is_ipv6());
        assert_eq!(
            parse_addr("localhost:9").unwrap().to_string(),
            "127.0.0.1:9"
        );
        assert!(parse_addr("127.0.0.1").is_err());
        assert!(parse_addr("example.com:80").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("10 MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
