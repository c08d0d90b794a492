//! Forwarding headers from a trusted sender: `X-Forwarded-For`, RFC 7239 `Forwarded: for=`,
//! `X-Real-IP`, read into hops and walked right to left to find the client.
//!
//! The standard algorithm: each proxy appends the address it received the request from, so
//! the right end of the list was written by the sender we trust, and every hop further left
//! is only as good as the proxy to its right. The client is the right-most hop that is not a
//! trusted proxy; if every hop is trusted, the left-most one. A hop that cannot be read (an
//! RFC 7239 `unknown` or obfuscated `_name`, or garbage) ends the walk: nothing to its left
//! can be vouched for, so the client is the trusted hop to its right (or the sender itself).
//!
//! Only the last [`MAX_HOPS`] hops are kept, in a fixed array: the work per request is one
//! pass over the header bytes, and the only allocation is the chain handed on, when a
//! trusted sender's header names one. Which header is read
//! is the listener's choice (`client_ip_header`): a trusted proxy vouches only for the header
//! it writes, and a client could put anything in the others.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName};

use super::cidr::{canonical, CidrSet};

/// Hops kept from the right end of a forwarding header; beyond them the walk stops.
pub const MAX_HOPS: usize = 16;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Real-IP`.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Which header a listener's trusted proxies write (`client_ip_header`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (every instance, in order).
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
    /// `X-Real-IP: client`.
    XRealIp,
}

impl ClientHeader {
    /// The header's name.
    pub fn name(self) -> &'static HeaderName {
        match self {
            ClientHeader::XForwardedFor => &X_FORWARDED_FOR,
            ClientHeader::Forwarded => &http::header::FORWARDED,
            ClientHeader::XRealIp => &X_REAL_IP,
        }
    }
}

/// The three inbound headers that claim a client address; the proxy removes them from every
/// request and writes its own (see [`ForwardChain`]).
pub fn client_headers() -> [&'static HeaderName; 3] {
    [&X_FORWARDED_FOR, &http::header::FORWARDED, &X_REAL_IP]
}

/// One entry of a forwarding list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// An address, with a port when one was given.
    Addr(IpAddr, Option<u16>),
    /// `unknown`, an obfuscated identifier, or something that is not an address.
    Unknown,
}

/// The last [`MAX_HOPS`] hops of a header, left to right.
#[derive(Clone, Copy, Debug)]
pub struct Hops {
    ring: [Hop; MAX_HOPS],
    /// Hops seen in all (may exceed MAX_HOPS; only the last MAX_HOPS are kept).
    seen: usize,
}

impl Default for Hops {
    fn default() -> Self {
        Hops {
            ring: [Hop::Unknown; MAX_HOPS],
            seen: 0,
        }
    }
}

impl Hops {
    fn push(&mut self, h: Hop) {
        self.ring[self.seen % MAX_HOPS] = h;
        self.seen += 1;
    }

    /// Hops kept.
    pub fn len(&self) -> usize {
        self.seen.min(MAX_HOPS)
    }

    /// Whether no hop was found.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// Hop `i` of the kept ones, 0 = left-most kept.
    pub fn get(&self, i: usize) -> Option<Hop> {
        (i < self.len()).then(|| self.ring[(self.seen - self.len() + i) % MAX_HOPS])
    }

    /// Reads every value of `kind`, in order.
    pub fn read<'a>(kind: ClientHeader, values: impl IntoIterator<Item = &'a [u8]>) -> Hops {
        let mut hops = Hops::default();
        for v in values {
            match kind {
                ClientHeader::XForwardedFor | ClientHeader::XRealIp => {
                    for item in v.split(|&b| b == b',') {
                        let item = trim(item);
                        // RFC 9110 §5.6.1: empty list elements are ignored.
                        if !item.is_empty() {
                            hops.push(parse_node(item));
                        }
                    }
                }
                ClientHeader::Forwarded => forwarded_elements(v, |h| hops.push(h)),
            }
        }
        hops
    }
}

/// The part of a forwarding list that fulcrum vouches for: from the chosen client to the
/// right end, as addresses. The proxy writes it, then the address it received the request
/// from, so the server sees `client, proxy1, ..., sender`. Empty for a request that came
/// straight from its client (most of them), and then nothing is allocated: the value is
/// made and moved on every request, and a fixed array of [`MAX_HOPS`] addresses cost more
/// to fill and to move than an allocation costs the requests that use one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardChain {
    hops: Vec<IpAddr>,
}

impl ForwardChain {
    /// The addresses, left to right.
    pub fn as_slice(&self) -> &[IpAddr] {
        &self.hops
    }

    /// Whether there is nothing to forward (the client is the sender itself).
    pub fn is_empty(&self) -> bool {
        self.hops.is_empty()
    }

    /// The chain as RFC 7239 elements: `for=1.2.3.4, for="[2001:db8::1]"`.
    pub fn rfc7239(&self) -> impl fmt::Display + '_ {
        Rfc7239(self)
    }
}

/// `1.2.3.4, 10.0.0.1`: the `X-Forwarded-For` form.
impl fmt::Display for ForwardChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ip) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{ip}")?;
        }
        Ok(())
    }
}

struct Rfc7239<'a>(&'a ForwardChain);

impl fmt::Display for Rfc7239<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ip) in self.0.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match ip {
                // RFC 7239 §6: IPv6 nodes are quoted and bracketed.
                IpAddr::V6(v6) => write!(f, "for=\"[{v6}]\"")?,
                IpAddr::V4(v4) => write!(f, "for={v4}")?,
            }
        }
        Ok(())
    }
}

/// The client of a request from a trusted sender, and the chain to forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The client address as the header gave it.
    pub client: SocketAddr,
    /// Whether the header gave a port (else `client`'s port is 0).
    pub has_port: bool,
    /// From the client to the right end.
    pub chain: ForwardChain,
}

/// The standard right-to-left walk over `hops`; `None` when no hop is usable (the header is
/// absent, or its right-most entry is unreadable): the sender itself is then the client.
pub fn choose(hops: &Hops, trusted: &CidrSet) -> Option<Found> {
    let n = hops.len();
    let mut chosen = None;
    for i in (0..n).rev() {
        match hops.get(i)? {
            Hop::Unknown => break,
            Hop::Addr(ip, _) => {
                chosen = Some(i);
                if !trusted.matches(ip) {
                    break;
                }
            }
        }
    }
    let first = chosen?;
    let mut chain = ForwardChain {
        hops: Vec::with_capacity(n - first),
    };
    for i in first..n {
        if let Some(Hop::Addr(ip, _)) = hops.get(i) {
            chain.hops.push(canonical(ip));
        }
    }
    let Hop::Addr(ip, port) = hops.get(first)? else {
        return None;
    };
    Some(Found {
        client: SocketAddr::new(canonical(ip), port.unwrap_or(0)),
        has_port: port.is_some(),
        chain,
    })
}

/// Reads `kind` from `headers` and walks it (see [`choose`]).
pub fn from_headers(headers: &HeaderMap, kind: ClientHeader, trusted: &CidrSet) -> Option<Found> {
    let mut values = headers.get_all(kind.name()).iter().peekable();
    values.peek()?;
    choose(&Hops::read(kind, values.map(|v| v.as_bytes())), trusted)
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(s, |i| i + 1);
    &b[s..e]
}

/// One node: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`, `unknown`, `_hidden`,
/// with an obfuscated port (`[::1]:_p`) read as no port.
pub fn parse_node(b: &[u8]) -> Hop {
    let Ok(s) = std::str::from_utf8(b) else {
        return Hop::Unknown;
    };
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Hop::Addr(ip, None);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return Hop::Unknown;
        };
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Hop::Unknown,
            },
        }
    } else {
        match s.rsplit_once(':') {
            // More than one colon without brackets: an IPv6 address that failed above.
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => return Hop::Unknown,
        }
    };
    let Ok(ip) = host.parse::<IpAddr>() else {
        return Hop::Unknown;
    };
    let port = match port {
        None => None,
        Some(p) if p.starts_with('_') => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(n) => Some(n),
                Err(_) => return Hop::Unknown,
            }
        }
        Some(_) => return Hop::Unknown,
    };
    Hop::Addr(ip, port)
}

/// Calls `f` with the `for=` node of each element of an RFC 7239 value, in order; an element
/// without `for=` is a hop of unknown origin.
pub fn forwarded_elements(v: &[u8], mut f: impl FnMut(Hop)) {
    let mut i = 0;
    while i < v.len() {
        let mut node: Option<Hop> = None;
        let mut any = false;
        // One element: pairs separated by ';' up to an unquoted ','.
        loop {
            let (pair_end, next) = scan_pair(v, i);
            let pair = trim(&v[i..pair_end]);
            if !pair.is_empty() {
                any = true;
                if let Some(eq) = pair.iter().position(|&b| b == b'=') {
                    let (name, value) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
                    if name.eq_ignore_ascii_case(b"for") && node.is_none() {
                        node = Some(unquote_node(value));
                    }
                }
            }
            i = next;
            if pair_end >= v.len() || v[pair_end] == b',' {
                break;
            }
        }
        if any {
            f(node.unwrap_or(Hop::Unknown));
        }
    }
}

/// From `start`, the end of one `name=value` pair (at ';', ',' or the end, outside quotes)
/// and where the next one begins.
fn scan_pair(v: &[u8], start: usize) -> (usize, usize) {
    let mut quoted = false;
    let mut j = start;
    while j < v.len() {
        match v[j] {
            b'\\' if quoted => j += 1,
            b'"' => quoted = !quoted,
            b';' | b',' if !quoted => return (j, j + 1),
            _ => {}
        }
        j += 1;
    }
    (v.len(), v.len())
}

/// A `for=` value, quoted or not (RFC 7230 quoted-string with `\` escapes).
fn unquote_node(value: &[u8]) -> Hop {
    let Some(inner) = value.strip_prefix(b"\"") else {
        return parse_node(value);
    };
    let Some(inner) = inner.strip_suffix(b"\"") else {
        return Hop::Unknown;
    };
    // The longest node, "[v6]:port", is 47 bytes; anything longer is not an address.
    let mut buf = [0u8; 64];
    let mut n = 0;
    let mut esc = false;
    for &b in inner {
        if !esc && b == b'\\' {
            esc = true;
            continue;
        }
        esc = false;
        if n == buf.len() {
            return Hop::Unknown;
        }
        buf[n] = b;
        n += 1;
    }
    parse_node(&buf[..n])
}

#[cfg(test)]
mod tests;
