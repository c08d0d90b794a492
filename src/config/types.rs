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

/// A server address as written: `"IP:PORT"` (or `"localhost:PORT"`) is a server of its own;
/// `"HOST:PORT"` names a DNS host whose addresses are resolved at run time, each one a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    /// A fixed address.
    Ip(SocketAddr),
    /// A DNS host name and the port its servers listen on.
    Name(String, u16),
}

impl<'de> Deserialize<'de> for ServerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ServerAddr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address \"IP:PORT\" or \"HOST:PORT\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ServerAddr, E> {
                parse_server_addr(s).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses a server address: `IP:PORT`, `localhost:PORT`, or `HOST:PORT` with a DNS name.
pub fn parse_server_addr(s: &str) -> Result<ServerAddr, String> {
    if let Ok(a) = parse_addr(s) {
        return Ok(ServerAddr::Ip(a));
    }
    let t = s.trim();
    let bad = || {
        format!(
            "invalid address {t:?}; expected \"IP:PORT\" such as \"127.0.0.1:8080\", or \"HOST:PORT\" with a DNS name such as \"app.internal:9000\""
        )
    };
    let (host, port) = t.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if !is_dns_name(host) {
        return Err(bad());
    }
    Ok(ServerAddr::Name(
        host.trim_end_matches('.').to_string(),
        port,
    ))
}

/// Whether `h` is a DNS host name (RFC 1123 labels, optionally fully qualified): letters,
/// digits, `-` and `_` in labels of 1 to 63, 253 in all. A last label of digits only is
/// refused, so that a mistyped IP address is not taken for a name.
pub fn is_dns_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    let labels_ok = h.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let last_alpha = h
        .rsplit('.')
        .next()
        .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()));
    labels_ok && last_alpha
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
    fn server_addresses() {
        assert_eq!(
            parse_server_addr("127.0.0.1:80"),
            Ok(ServerAddr::Ip("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_server_addr("localhost:9"),
            Ok(ServerAddr::Ip("127.0.0.1:9".parse().unwrap()))
        );
        assert_eq!(
            parse_server_addr("app.internal.:9000"),
            Ok(ServerAddr::Name("app.internal".into(), 9000))
        );
        for bad in [
            "app.internal",
            "app.internal:x",
            "10.0.0.300:80",
            "-a.b:1",
            "a..b:1",
            ":80",
        ] {
            assert!(parse_server_addr(bad).is_err(), "{bad}");
        }
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
