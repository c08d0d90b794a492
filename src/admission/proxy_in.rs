//! Inbound PROXY protocol (HAProxy's spec, versions 1 and 2): a pure, bounded parser and an
//! async reader that takes exactly the header's bytes off a socket.
//!
//! The parser never reads past what it is given, never allocates, and answers one of: more
//! bytes are needed, the bytes cannot be a header (and why), or the header with its length.
//! A v1 header is at most 107 bytes; a v2 header at most [`MAX_V2_LEN`] (TLVs it has no use
//! for are checked for framing and skipped). `LOCAL` (v2) and `UNKNOWN` (v1) carry no
//! address: the connection's own peer stands. The reader peeks before it reads, so the
//! first byte of the payload is never consumed; it must be called only for a peer that the
//! listener trusts (the caller checks `trusted_proxies` first, and counts a refusal).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature (spec §2.2); kept apart from the outbound writer's copy, which is private.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// The v1 prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 header, CRLF included (spec §2.1).
pub const MAX_V1_LEN: usize = 107;
/// Longest v2 header accepted, the 16 fixed bytes included. Real senders stay far below
/// (addresses plus a few TLVs such as ALPN, authority or a VPC endpoint id).
pub const MAX_V2_LEN: usize = 4096;

/// Which versions a listener accepts (`accept_proxy = "v1" | "v2" | "any"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    /// Text only.
    V1,
    /// Binary only.
    V2,
    /// Either, told apart by the first byte.
    Any,
}

/// Why bytes are not an acceptable PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// They do not start with either signature.
    #[error("the connection does not start with a PROXY protocol header")]
    NotProxy,
    /// A header of a version this listener does not accept.
    #[error("a PROXY {0} header where this listener accepts only the other version")]
    WrongVersion(&'static str),
    /// The header is longer than allowed.
    #[error("the PROXY header is longer than allowed")]
    TooLong,
    /// The header is malformed, for the reason given.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

impl Reject {
    /// A short, bounded label for `fulcrum_proxy_protocol_rejected_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::NotProxy => "missing",
            Reject::WrongVersion(_) => "version",
            Reject::TooLong => "too_long",
            Reject::Malformed(_) => "malformed",
        }
    }
}

/// What a parse of the bytes so far found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    /// A prefix of a valid header: read more.
    NeedMore,
    /// Not a header this listener accepts.
    Invalid(Reject),
    /// A whole header.
    Parsed {
        /// The client as the sender saw it; `None` for LOCAL / UNKNOWN / UNSPEC / AF_UNIX.
        src: Option<SocketAddr>,
        /// The address the client connected to, when given.
        dst: Option<SocketAddr>,
        /// The header's length: the payload starts at this offset.
        consumed: usize,
    },
}

/// Parses a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8], accept: Accept) -> Parse {
    let Some(&first) = buf.first() else {
        return Parse::NeedMore;
    };
    let v1 = first == V1_PREFIX[0];
    let v2 = first == V2_SIGNATURE[0];
    match (accept, v1, v2) {
        (Accept::V1 | Accept::Any, true, _) => parse_v1(buf),
        (Accept::V2 | Accept::Any, _, true) => parse_v2(buf),
        // The other version, if the bytes so far are a start of its signature.
        (Accept::V1, _, true) if is_prefix(buf, &V2_SIGNATURE) => {
            Parse::Invalid(Reject::WrongVersion("v2"))
        }
        (Accept::V2, true, _) if is_prefix(buf, V1_PREFIX) => {
            Parse::Invalid(Reject::WrongVersion("v1"))
        }
        _ => Parse::Invalid(Reject::NotProxy),
    }
}

/// Whether `buf` and `sig` agree on their common length.
fn is_prefix(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

fn malformed(why: &'static str) -> Parse {
    Parse::Invalid(Reject::Malformed(why))
}

/// `PROXY TCP4 SRC DST SPORT DPORT\r\n`, `PROXY TCP6 ...`, or `PROXY UNKNOWN...\r\n`.
fn parse_v1(buf: &[u8]) -> Parse {
    if !is_prefix(buf, V1_PREFIX) {
        return Parse::Invalid(Reject::NotProxy);
    }
    let window = &buf[..buf.len().min(MAX_V1_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_V1_LEN {
            Parse::Invalid(Reject::TooLong)
        } else {
            Parse::NeedMore
        };
    };
    let consumed = lf + 1;
    if lf == 0 || buf[lf - 1] != b'\r' {
        return malformed("v1 line does not end in CRLF");
    }
    let Ok(line) = std::str::from_utf8(&buf[V1_PREFIX.len()..lf - 1]) else {
        return malformed("v1 line is not text");
    };
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        // Spec §2.1: the rest of an UNKNOWN line is ignored.
        return Parse::Parsed {
            src: None,
            dst: None,
            consumed,
        };
    }
    let mut f = line.split(' ');
    let (Some(fam), Some(src), Some(dst), Some(sport), Some(dport), None) =
        (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return malformed("v1 line needs exactly: family, two addresses, two ports");
    };
    let (src, dst) = match fam {
        "TCP4" => match (src.parse::<Ipv4Addr>(), dst.parse::<Ipv4Addr>()) {
            (Ok(s), Ok(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
            _ => return malformed("v1 TCP4 address is not IPv4"),
        },
        "TCP6" => match (src.parse::<Ipv6Addr>(), dst.parse::<Ipv6Addr>()) {
            (Ok(s), Ok(d)) => (IpAddr::V6(s), IpAddr::V6(d)),
            _ => return malformed("v1 TCP6 address is not IPv6"),
        },
        _ => return malformed("v1 family is not TCP4, TCP6 or UNKNOWN"),
    };
    let (Some(sport), Some(dport)) = (port(sport), port(dport)) else {
        return malformed("v1 port is not a number from 0 to 65535");
    };
    Parse::Parsed {
        src: Some(SocketAddr::new(src, sport)),
        dst: Some(SocketAddr::new(dst, dport)),
        consumed,
    }
}

/// A decimal port: 1 to 5 digits, at most 65535.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The binary header: signature, version/command, family/transport, length, addresses, TLVs.
fn parse_v2(buf: &[u8]) -> Parse {
    if !is_prefix(buf, &V2_SIGNATURE) {
        return Parse::Invalid(Reject::NotProxy);
    }
    if buf.len() < 16 {
        return Parse::NeedMore;
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return malformed("v2 version nibble is not 2");
    }
    let local = match ver_cmd & 0x0F {
        0 => true,
        1 => false,
        _ => return malformed("v2 command is neither LOCAL nor PROXY"),
    };
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let consumed = 16 + len;
    if consumed > MAX_V2_LEN {
        return Parse::Invalid(Reject::TooLong);
    }
    if buf.len() < consumed {
        return Parse::NeedMore;
    }
    let body = &buf[16..consumed];
    if local {
        // Spec §2.2: LOCAL (the sender's own health check) keeps the real endpoints and
        // discards the whole block, whatever its family says.
        return Parse::Parsed {
            src: None,
            dst: None,
            consumed,
        };
    }
    let (addr_len, stream) = match (fam >> 4, fam & 0x0F) {
        (0, t) => (0, t == 0),   // UNSPEC
        (1, t) => (12, t <= 1),  // AF_INET over UNSPEC or STREAM
        (2, t) => (36, t <= 1),  // AF_INET6
        (3, t) => (216, t <= 1), // AF_UNIX: no use for the paths
        _ => return malformed("v2 address family is unknown"),
    };
    if !stream {
        return malformed("v2 transport is not a stream");
    }
    if body.len() < addr_len {
        return malformed("v2 length is shorter than its addresses");
    }
    if !tlvs_frame(&body[addr_len..]) {
        return malformed("v2 TLV runs past the header");
    }
    let (src, dst) = match fam >> 4 {
        1 => {
            let ip = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[o],
                    body[o + 1],
                    body[o + 2],
                    body[o + 3],
                ))
            };
            let p = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                Some(SocketAddr::new(ip(0), p(8))),
                Some(SocketAddr::new(ip(4), p(10))),
            )
        }
        2 => {
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let p = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                Some(SocketAddr::new(ip(0), p(32))),
                Some(SocketAddr::new(ip(16), p(34))),
            )
        }
        _ => (None, None),
    };
    Parse::Parsed { src, dst, consumed }
}

/// Whether `b` is a whole number of type-length-value records (spec §2.2.7).
fn tlvs_frame(mut b: &[u8]) -> bool {
    while !b.is_empty() {
        if b.len() < 3 {
            return false;
        }
        let n = 3 + usize::from(u16::from_be_bytes([b[1], b[2]]));
        if b.len() < n {
            return false;
        }
        b = &b[n..];
    }
    true
}

/// Why no PROXY header could be read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyInError {
    /// Not all of it arrived in time.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The peer closed before the header ended.
    #[error("the connection closed before the PROXY header ended")]
    Closed,
    /// The socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not an acceptable header.
    #[error("{0}")]
    Invalid(Reject),
}

impl ProxyInError {
    /// A short, bounded label for `fulcrum_proxy_protocol_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyInError::Timeout(_) => "timeout",
            ProxyInError::Closed => "closed",
            ProxyInError::Io(_) => "io",
            ProxyInError::Invalid(r) => r.reason(),
        }
    }
}

/// Reads a PROXY header off `stream` within `timeout`, consuming exactly its bytes, and
/// returns the client address it carries (`None` for LOCAL / UNKNOWN: use the peer).
pub async fn read_proxy_header(
    stream: &mut TcpStream,
    accept: Accept,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyInError> {
    match tokio::time::timeout(timeout, read_inner(stream, accept)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyInError::Timeout(timeout)),
    }
}

async fn read_inner(
    stream: &mut TcpStream,
    accept: Accept,
) -> Result<Option<SocketAddr>, ProxyInError> {
    let cap = match accept {
        Accept::V1 => MAX_V1_LEN,
        Accept::V2 | Accept::Any => MAX_V2_LEN,
    };
    let mut buf = vec![0u8; cap];
    // Bytes of the header already taken off the socket; buf[..taken] holds them.
    let mut taken = 0;
    loop {
        // Peek never consumes: whatever follows the header stays in the socket. Each peek
        // after a read sees only bytes not yet seen, so this loop never spins. The socket is
        // asked first: on a new connection the runtime has not yet seen the bytes that the
        // sender usually wrote with its handshake (see `sock::recv_now`).
        let n = match crate::proxy::sock::recv_now_into(stream, &mut buf[taken..], true) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.peek(&mut buf[taken..]).await?
            }
            r => r?,
        };
        if n == 0 {
            return Err(ProxyInError::Closed);
        }
        match parse(&buf[..taken + n], accept) {
            Parse::Parsed { src, consumed, .. } => {
                // The header ends past what was taken, or NeedMore would not have been said.
                let rest = buf.get_mut(taken..consumed).ok_or(ProxyInError::Invalid(
                    Reject::Malformed("header shorter than read"),
                ))?;
                take(stream, rest).await?;
                return Ok(src);
            }
            Parse::Invalid(r) => return Err(ProxyInError::Invalid(r)),
            Parse::NeedMore => {
                // Every byte seen so far belongs to the header: take it, wait for more.
                take(stream, &mut buf[taken..taken + n]).await?;
                taken += n;
                if taken == cap {
                    return Err(ProxyInError::Invalid(Reject::TooLong));
                }
            }
        }
    }
}

/// Takes `buf.len()` bytes that a peek saw off the socket: at once from the socket itself
/// (they are there, whatever the runtime has seen yet), through the runtime for any rest.
async fn take(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    let got = match crate::proxy::sock::recv_now_into(stream, buf, false) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if got < buf.len() {
        stream.read_exact(&mut buf[got..]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
