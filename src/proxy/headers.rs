//! Header rewriting between client and server: hop-by-hop removal (RFC 9110 §7.6.1) and the
//! forwarding headers (X-Forwarded-*, RFC 7239 `Forwarded`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::admission::ForwardChain;
use crate::config::Forwarded;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = crate::route::X_REQUEST_ID;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Whether a Transfer-Encoding value is `chunked` and nothing else (any case, padded): the
/// one framing the proxy passes on in either direction, since Transfer-Encoding stays on
/// its connection and any other coding would reach the other side unannounced.
pub(crate) fn chunked_alone(v: &HeaderValue) -> bool {
    v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// Whether `name` is hop-by-hop whatever `Connection` says: the names [`classify`] calls
/// [`Class::Hop`], `Connection`, `Upgrade` or `Te`, compared as names. Every response's
/// names go through this, and a comparison with a standard name is one of its tag, cheaper
/// than spelling the name out for `classify` (about 30 instructions a response); the scan's
/// test holds the two to the same list.
pub(crate) fn fixed_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == HTTP2_SETTINGS
}

/// Removes every header whose name `doomed` picks. The names present are scanned instead of
/// hashing every candidate name for a `remove`: a request carries a handful of names and
/// usually none to remove. Each removal rescans; nothing is allocated for a standard name
/// (Connection, TE, Transfer-Encoding, Upgrade, Forwarded), the usual finds.
fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    while let Some(name) = headers.keys().find(|k| doomed(k)).cloned() {
        headers.remove(&name);
    }
}

/// Whether any header is hop-by-hop by its name. Connection is one of them, so without
/// one there are no names listed in it either, and nothing to strip. One scan of the few
/// names a head carries, where looking up Connection and TE would hash each.
pub fn any_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(fixed_hop_by_hop)
}

/// What a request's header names hold that the proxy acts on, found in one pass: its Host,
/// and whether any name is hop-by-hop, an inbound forwarding header or X-Request-ID. Each
/// name is told apart by its length and then at most two byte comparisons; finding the same
/// by lookups would hash every candidate name, and most heads carry none of them.
#[derive(Debug, Default)]
pub struct HeadScan {
    /// Some name is hop-by-hop by itself ([`any_hop_by_hop`]).
    pub hop: bool,
    /// A Connection field lists a name of a field of its own ([`names_a_field`]), or is not
    /// text: what is hop-by-hop then needs the full reading ([`strip_hop_by_hop`]). Browsers
    /// send `Connection: keep-alive` with every HTTP/1.1 request, which lists none.
    pub connection_names: bool,
    /// A Connection field lists `upgrade`.
    pub connection_upgrade: bool,
    /// An Upgrade field is present.
    pub upgrade: bool,
    /// A TE field is present.
    pub te: bool,
    /// A Transfer-Encoding field is present (hop-by-hop too).
    pub transfer_encoding: bool,
    /// Some name is an inbound forwarding header or an underscore spelling of one (what
    /// [`strip_inbound_forwarding`] removes).
    pub forwarding: bool,
    /// X-Request-ID is present.
    pub request_id: bool,
    /// The first Host field's value.
    pub host: Option<HeaderValue>,
}

/// A name the scan picks out.
enum Class {
    Hop,
    TransferEncoding,
    Connection,
    Upgrade,
    Te,
    Forwarding,
    RequestId,
    Host,
}

impl HeadScan {
    pub fn of(headers: &HeaderMap) -> HeadScan {
        let mut scan = HeadScan::default();
        for (name, value) in headers {
            match classify(name) {
                None => {}
                Some(Class::Hop) => scan.hop = true,
                Some(Class::TransferEncoding) => {
                    scan.hop = true;
                    scan.transfer_encoding = true;
                }
                Some(Class::Connection) => {
                    scan.hop = true;
                    scan.read_connection(value);
                }
                Some(Class::Upgrade) => {
                    scan.hop = true;
                    scan.upgrade = true;
                }
                Some(Class::Te) => {
                    scan.hop = true;
                    scan.te = true;
                }
                Some(Class::Forwarding) => scan.forwarding = true,
                Some(Class::RequestId) => scan.request_id = true,
                Some(Class::Host) if scan.host.is_none() => scan.host = Some(value.clone()),
                Some(Class::Host) => {}
            }
        }
        scan
    }

    /// Notes what one Connection field lists. Kept out of the scan's loop, which most heads
    /// run without reaching it (inlined, it cost every head about 50 instructions).
    #[inline(never)]
    fn read_connection(&mut self, value: &HeaderValue) {
        // A field that is not text is left to the full reading, which skips it.
        let Ok(list) = value.to_str() else {
            self.connection_names = true;
            return;
        };
        for t in connection_tokens(list.as_bytes()) {
            if t.eq_ignore_ascii_case(b"upgrade") {
                self.connection_upgrade = true;
            } else if names_a_field(t) {
                self.connection_names = true;
            }
        }
    }
}

/// The class of a header name: the hop-by-hop names (RFC 9110 §7.6.1, with `keep-alive`,
/// `proxy-connection` and `http2-settings`; [`fixed_hop_by_hop`] has them too) and the one
/// list of the inbound forwarding names. A forwarding name matches spelt with dashes or with underscores for them, in one
/// comparison: servers that map headers to CGI-style variables read `x_forwarded_for` as
/// the real one.
#[inline(always)]
fn classify(name: &HeaderName) -> Option<Class> {
    // Header names are lower case.
    let n = name.as_str().as_bytes();
    let fwd = |f: &[u8]| {
        f.iter()
            .zip(n)
            .all(|(&a, &b)| a == b || (a == b'-' && b == b'_'))
    };
    let class = match n.len() {
        2 if n == b"te" => Class::Te,
        4 if n == b"host" => Class::Host,
        7 if n == b"upgrade" => Class::Upgrade,
        9 if fwd(b"forwarded") || fwd(b"x-real-ip") => Class::Forwarding,
        10 if n == b"connection" => Class::Connection,
        10 if n == b"keep-alive" => Class::Hop,
        12 if n == b"x-request-id" => Class::RequestId,
        14 if n == b"http2-settings" => Class::Hop,
        15 if fwd(b"x-forwarded-for") => Class::Forwarding,
        16 if n == b"proxy-connection" => Class::Hop,
        16 if fwd(b"x-forwarded-host") || fwd(b"x-forwarded-port") => Class::Forwarding,
        17 if n == b"transfer-encoding" => Class::TransferEncoding,
        17 if fwd(b"x-forwarded-proto") => Class::Forwarding,
        _ => return None,
    };
    Some(class)
}

/// Removes the headers that are hop-by-hop by their names alone: all [`strip_hop_by_hop`]
/// has to do when no Connection field lists a name of its own ([`HeadScan`] tells), without
/// reading the Connection fields again. With `keep_te`, Transfer-Encoding stays (a chunked
/// body going on chunked: see `check::prepare`).
pub fn strip_fixed_hop_by_hop(headers: &mut HeaderMap, keep_te: bool) {
    remove_where(headers, |k| {
        fixed_hop_by_hop(k) && !(keep_te && k == header::TRANSFER_ENCODING)
    });
}

/// Removes hop-by-hop headers: the fixed set and any named in any `Connection` field.
/// `Trailer` is end-to-end (RFC 9110 §6.6.2) and stays, so trailers can follow the body.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !any_hop_by_hop(headers) {
        return;
    }
    // Names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1), in every Connection
    // field, not just the first. The common tokens (close, keep-alive, upgrade) are in the
    // fixed list; collect the rest (nothing is allocated when there are none).
    let mut extra: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(header::CONNECTION) {
        let Ok(list) = v.to_str() else { continue };
        extra.extend(listed_in_connection(list.as_bytes()));
    }
    remove_where(headers, |k| fixed_hop_by_hop(k) || extra.contains(k));
}

/// Whether a token of a Connection field names a field of its own (one that is hop-by-hop
/// for that reason), rather than being empty or one of the options `close`, `keep-alive`
/// and `upgrade`, which name fields already in the fixed hop-by-hop list.
pub(crate) fn names_a_field(token: &[u8]) -> bool {
    !(token.is_empty()
        || token.eq_ignore_ascii_case(b"close")
        || token.eq_ignore_ascii_case(b"keep-alive")
        || token.eq_ignore_ascii_case(b"upgrade"))
}

/// The tokens of a Connection field's value, trimmed: the one reading of that list for
/// requests ([`HeadScan`], [`strip_hop_by_hop`]) and responses (the HTTP/1.1 codec).
pub(crate) fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// The field names a Connection field's value lists ([`names_a_field`]).
pub(crate) fn listed_in_connection(value: &[u8]) -> impl Iterator<Item = HeaderName> + '_ {
    connection_tokens(value)
        .filter(|t| names_a_field(t))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
}

/// Removes inbound forwarding headers (X-Forwarded-*, Forwarded, X-Real-IP, and their
/// underscore spellings): a client must not be able to claim another address or scheme.
pub fn strip_inbound_forwarding(headers: &mut HeaderMap) {
    remove_where(headers, inbound_forwarding);
}

fn inbound_forwarding(k: &HeaderName) -> bool {
    matches!(classify(k), Some(Class::Forwarding))
}

/// Whether the request says it accepts trailers (`TE: trailers`).
pub fn asks_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("trailers")
            })
        })
}

/// The headers the proxy adds to one request, computed apart from its header map: the
/// forwarding headers and, when the proxy made it, the request's X-Request-ID. For an
/// HTTP/1.1 server they are written after the request's own headers as the head is encoded
/// ([`Forwarding::write`]), which costs a fraction of inserting custom names into the map
/// (each insert hashes its name, and may grow the map); for h2 they go into the map
/// ([`Forwarding::insert_into`]). Inbound ones were removed first, so these are the only
/// ones.
#[derive(Default)]
pub struct Forwarding<'a> {
    /// The connection's sender, when X-Forwarded-For and X-Forwarded-Proto name only it
    /// (the request came straight from it): their lines are the sender's own, encoded once
    /// per connection ([`Sender::lines`]).
    direct: Option<&'a Sender>,
    /// X-Forwarded-Host: the request's Host.
    host: Option<HeaderValue>,
    /// The fields few requests have. Kept apart so that the whole value is small enough to
    /// move without a call to `memcpy`: it is returned by value twice per request.
    rare: Option<Box<RareFields>>,
    /// The X-Request-ID to add.
    request_id: Option<&'a HeaderValue>,
}

/// Forwarding fields few requests have.
#[derive(Default)]
struct RareFields {
    /// X-Forwarded-For and X-Forwarded-Proto when a trusted sender's chain goes first.
    chain_for: Option<HeaderValue>,
    chain_proto: Option<HeaderValue>,
    /// `Forwarded` (RFC 7239), when the listener sends it.
    forwarded: Option<HeaderValue>,
}

impl<'a> Forwarding<'a> {
    /// The headers' names, in the order they are written, each with what leads its line
    /// on the wire.
    fn fields() -> [(&'static HeaderName, &'static [u8]); 5] {
        [
            (&X_FORWARDED_FOR, b"x-forwarded-for: "),
            (&X_FORWARDED_PROTO, b"x-forwarded-proto: "),
            (&X_FORWARDED_HOST, b"x-forwarded-host: "),
            (&header::FORWARDED, b"forwarded: "),
            (&X_REQUEST_ID, b"x-request-id: "),
        ]
    }

    /// By position, the values of [`Forwarding::fields`] besides `direct`'s (`None`: not
    /// sent).
    fn values(&self) -> [Option<&HeaderValue>; 5] {
        let rare = self.rare.as_deref();
        [
            rare.and_then(|r| r.chain_for.as_ref()),
            rare.and_then(|r| r.chain_proto.as_ref()),
            self.host.as_ref(),
            rare.and_then(|r| r.forwarded.as_ref()),
            self.request_id,
        ]
    }

    /// The headers for a request that `sender` sent with Host `host`: `chain` (what a
    /// trusted sender's own header said, empty otherwise) and then the sender. `sender` is
    /// the connection's [`Sender`]: its address and scheme, with the header text for them
    /// formatted once per connection rather than once per request. `request_id` is an
    /// X-Request-ID to add.
    pub fn new(
        host: Option<HeaderValue>,
        mode: Forwarded,
        chain: &ForwardChain,
        sender: &'a Sender,
        request_id: Option<&'a HeaderValue>,
    ) -> Forwarding<'a> {
        let (ip, scheme) = (sender.ip, sender.scheme);
        let mut f = Forwarding {
            request_id,
            ..Forwarding::default()
        };
        if mode.x_forwarded {
            if chain.is_empty() {
                f.direct = Some(sender);
            } else {
                let rare = f.rare.get_or_insert_with(Default::default);
                rare.chain_for = HeaderValue::try_from(format!("{chain}, {ip}")).ok();
                rare.chain_proto = Some(HeaderValue::from_static(scheme));
            }
        }
        if mode.rfc7239 {
            // RFC 7239 §6: IPv6 nodes are quoted and bracketed.
            let mut elem = match ip {
                IpAddr::V4(v4) => format!("for={v4}"),
                IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
            };
            elem.push_str(";proto=");
            elem.push_str(scheme);
            if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
                if h.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                {
                    elem.push_str(";host=\"");
                    elem.push_str(h);
                    elem.push('"');
                }
            }
            if !chain.is_empty() {
                elem = format!("{}, {elem}", chain.rfc7239());
            }
            f.rare.get_or_insert_with(Default::default).forwarded =
                HeaderValue::try_from(elem).ok();
        }
        // X-Forwarded-Host takes the Host last: the `Forwarded` element above reads it.
        if mode.x_forwarded {
            f.host = host;
        }
        f
    }

    /// Puts the headers into `headers`, replacing any of the same names.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        if let Some(s) = self.direct {
            headers.insert(&X_FORWARDED_FOR, s.text.clone());
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(s.scheme));
        }
        for ((name, _), value) in Self::fields().into_iter().zip(self.values()) {
            if let Some(v) = value {
                headers.insert(name, v.clone());
            }
        }
    }

    /// Appends the headers to an HTTP/1.1 head being encoded, as `name: value\r\n` lines.
    pub fn write(&self, wr: &mut Vec<u8>) {
        if let Some(s) = self.direct {
            wr.extend_from_slice(&s.lines);
        }
        for ((_, lead), value) in Self::fields().into_iter().zip(self.values()) {
            if let Some(v) = value {
                line(wr, lead, v.as_bytes());
            }
        }
    }
}

/// Appends one `name: value\r\n` line; `lead` is the name with its `: `.
fn line(wr: &mut Vec<u8>, lead: &[u8], value: &[u8]) {
    wr.reserve(lead.len() + value.len() + 2);
    wr.extend_from_slice(lead);
    wr.extend_from_slice(value);
    wr.extend_from_slice(b"\r\n");
}

/// The peer that sent a connection's requests, as forwarding headers name it.
#[derive(Clone, Debug)]
pub struct Sender {
    /// Its address, IPv4-mapped IPv6 as plain IPv4.
    pub ip: IpAddr,
    /// The same, as header text.
    pub text: HeaderValue,
    /// The scheme it used to reach the proxy: `http` or `https`.
    pub scheme: &'static str,
    /// X-Forwarded-For and X-Forwarded-Proto for a request straight from it, as the lines
    /// of an HTTP/1.1 head: one copy per request instead of six. `text` is a slice of it.
    lines: bytes::Bytes,
}

impl Sender {
    /// The sender at `ip`, over `scheme`. Built once per connection: the address is written
    /// without `fmt` (which cost about 1k instructions here) straight into the lines, and
    /// `text` shares their buffer: two allocations (the buffer and its shared count), where
    /// a text of its own took three.
    pub fn new(ip: IpAddr, scheme: &'static str) -> Sender {
        let ip = canonical_ip(ip);
        let fields = Forwarding::fields();
        let (xff, proto) = (fields[0].1, fields[1].1);
        let mut lines =
            Vec::with_capacity(xff.len() + IP_TEXT_MAX + proto.len() + scheme.len() + 4);
        lines.extend_from_slice(xff);
        let at = lines.len();
        write_ip(&mut lines, ip);
        let addr = at..lines.len();
        lines.extend_from_slice(b"\r\n");
        line(&mut lines, proto, scheme.as_bytes());
        let lines = bytes::Bytes::from(lines);
        // An address's text is digits, dots, colons and hex letters: always a valid value.
        let text = HeaderValue::from_maybe_shared(lines.slice(addr))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Sender {
            ip,
            text,
            scheme,
            lines,
        }
    }
}

/// The longest text of an IPv4 address (`255.255.255.255`).
const IPV4_TEXT_MAX: usize = 15;

/// The longest text of an IPv6 address (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
const IP_TEXT_MAX: usize = 45;

/// Appends `a` as text, as `Display` writes it; IPv4 without `fmt`, digit by digit.
pub fn write_ip(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            let mut text = [0u8; IPV4_TEXT_MAX];
            let mut at = octet(&mut text, a);
            for x in [b, c, d] {
                text[at] = b'.';
                at += 1 + octet(&mut text[at + 1..], x);
            }
            out.extend_from_slice(&text[..at]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Writes `x` in decimal at the start of `to` (3 bytes of room at least); returns its length.
fn octet(to: &mut [u8], x: u8) -> usize {
    let (h, t, u) = (x / 100, x / 10 % 10, x % 10);
    if h > 0 {
        to[..3].copy_from_slice(&[b'0' + h, b'0' + t, b'0' + u]);
        3
    } else if t > 0 {
        to[..2].copy_from_slice(&[b'0' + t, b'0' + u]);
        2
    } else {
        to[0] = b'0' + u;
        1
    }
}

/// An IPv4-mapped IPv6 address as plain IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_fixed_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn every_connection_field_is_honoured_and_trailer_stays() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-second"));
        h.insert("x-second", HeaderValue::from_static("1"));
        h.insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        strip_hop_by_hop(&mut h);
        assert!(
            !h.contains_key("x-second"),
            "named in the second Connection field"
        );
        assert!(!h.contains_key(header::TE));
        assert!(!h.contains_key("http2-settings"));
        assert!(h.contains_key(header::TRAILER));
    }

    #[test]
    fn inbound_forwarding_headers_are_removed_with_their_underscore_spellings() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x_forwarded_for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x_real_ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x_other_thing", HeaderValue::from_static("kept"));
        strip_inbound_forwarding(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x_other_thing"));
    }

    #[test]
    fn sets_forwarding_headers_for_the_real_scheme_in_the_map_and_on_the_wire_alike() {
        let mut h = HeaderMap::new();
        let sender = Sender::new("::ffff:127.0.0.2".parse().unwrap(), "https");
        let id = HeaderValue::from_static("0123abcd");
        let f = Forwarding::new(
            Some(HeaderValue::from_static("example.test")),
            Forwarded {
                x_forwarded: true,
                rfc7239: true,
            },
            &ForwardChain::default(),
            &sender,
            Some(&id),
        );
        let mut wire = Vec::new();
        f.write(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "x-forwarded-for: 127.0.0.2\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: example.test\r\n\
             forwarded: for=127.0.0.2;proto=https;host=\"example.test\"\r\n\
             x-request-id: 0123abcd\r\n"
        );
        f.insert_into(&mut h);
        assert_eq!(h["x-forwarded-for"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.test");
        assert_eq!(
            h["forwarded"],
            "for=127.0.0.2;proto=https;host=\"example.test\""
        );
        assert_eq!(h["x-request-id"], "0123abcd");
    }

    #[test]
    fn without_forwarding_nothing_is_written() {
        let off = Forwarded {
            x_forwarded: false,
            rfc7239: false,
        };
        let sender = Sender::new("127.0.0.2".parse().unwrap(), "http");
        let f = Forwarding::new(None, off, &ForwardChain::default(), &sender, None);
        let mut wire = Vec::new();
        f.write(&mut wire);
        assert!(wire.is_empty());
    }

    #[test]
    fn the_scan_finds_what_the_lookups_would() {
        // Each name, and what it is: (h)op-by-hop, (f)orwarding, (r)equest id, Host (o),
        // or nothing (-). The strips use the same classes.
        let names = [
            ("host", 'o'),
            ("te", 'h'),
            ("tf", '-'),
            ("upgrade", 'h'),
            ("connection", 'h'),
            ("keep-alive", 'h'),
            ("keep_alive", '-'),
            ("proxy-connection", 'h'),
            ("http2-settings", 'h'),
            ("transfer-encoding", 'h'),
            ("transfer_encoding", '-'),
            ("forwarded", 'f'),
            ("forwardee", '-'),
            ("x-real-ip", 'f'),
            ("x_real_ip", 'f'),
            ("x-real_ip", 'f'),
            ("x-real-iq", '-'),
            ("x-forwarded-for", 'f'),
            ("x_forwarded_for", 'f'),
            ("x-forwarded_for", 'f'),
            ("y-forwarded-for", '-'),
            ("x-forwarded-host", 'f'),
            ("x_forwarded_host", 'f'),
            ("x-forwarded-port", 'f'),
            ("x_forwarded_port", 'f'),
            ("x-forwarded-proto", 'f'),
            ("x_forwarded_proto", 'f'),
            ("x-forwarded-prot", '-'),
            ("x-request-id", 'r'),
            ("x_request_id", '-'),
            ("x-request-ie", '-'),
            ("accept", '-'),
            ("user-agent", '-'),
            ("cookie", '-'),
            ("x-custom-header", '-'),
        ];
        for (n, class) in names {
            let name = HeaderName::from_static(n);
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("v"));
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            let scan = HeadScan::of(&h);
            assert_eq!(scan.hop, class == 'h', "{n}: hop");
            assert_eq!(scan.transfer_encoding, n == "transfer-encoding", "{n}: TE");
            assert_eq!(scan.forwarding, class == 'f', "{n}: forwarding");
            assert_eq!(scan.request_id, class == 'r', "{n}: request id");
            assert_eq!(scan.host.is_some(), class == 'o', "{n}: host");
            assert_eq!(fixed_hop_by_hop(&name), class == 'h', "{n}: strip hop");
            assert_eq!(
                inbound_forwarding(&name),
                class == 'f',
                "{n}: strip forwarding"
            );
        }
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("first"));
        h.append(header::HOST, HeaderValue::from_static("second"));
        assert_eq!(HeadScan::of(&h).host.unwrap(), "first");
    }

    #[test]
    fn the_scan_reads_what_connection_lists_and_its_short_strip_matches_the_full_one() {
        /// Connection fields, other fields, whether a name is listed, whether upgrade is.
        type Head<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], bool, bool);
        let heads: &[Head] = &[
            (&["keep-alive"], &[], false, false),
            (&["Close"], &[("te", "trailers")], false, false),
            (
                &[" keep-alive , close ,"],
                &[("keep-alive", "timeout=5")],
                false,
                false,
            ),
            (&["Upgrade"], &[("upgrade", "websocket")], false, true),
            (&["keep-alive, x-secret"], &[("x-secret", "1")], true, false),
            (
                &["keep-alive", "x-second"],
                &[("x-second", "1")],
                true,
                false,
            ),
            (&["upgrade, host"], &[("upgrade", "foo")], true, true),
            (
                &[],
                &[("transfer-encoding", "chunked"), ("proxy-connection", "x")],
                false,
                false,
            ),
        ];
        for &(connection, others, names, upgrade) in heads {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("example.test"));
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            for &c in connection {
                h.append(header::CONNECTION, HeaderValue::from_static(c));
            }
            for &(n, v) in others {
                h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
            }
            let scan = HeadScan::of(&h);
            assert!(scan.hop, "{connection:?}");
            assert_eq!(scan.connection_names, names, "{connection:?}: names");
            assert_eq!(scan.connection_upgrade, upgrade, "{connection:?}: upgrade");
            assert_eq!(scan.upgrade, h.contains_key(header::UPGRADE));
            assert_eq!(scan.te, h.contains_key(header::TE));
            let mut full = h.clone();
            strip_hop_by_hop(&mut full);
            if !names {
                let mut short = h.clone();
                strip_fixed_hop_by_hop(&mut short, false);
                assert_eq!(short, full, "{connection:?}");
                // Kept for a chunked body going on chunked, Transfer-Encoding alone stays.
                let mut kept = h.clone();
                strip_fixed_hop_by_hop(&mut kept, true);
                let te = kept.remove(header::TRANSFER_ENCODING);
                assert_eq!(te.as_ref(), h.get(header::TRANSFER_ENCODING));
                assert_eq!(kept, full, "{connection:?}");
            }
            assert!(full.contains_key(header::ACCEPT));
            assert_eq!(
                full.contains_key(header::HOST),
                !connection.iter().any(|c| c.contains("host"))
            );
            assert!(!full.contains_key(header::CONNECTION));
        }
        // A Connection field that is not text goes to the full reading.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"close, \xff").unwrap(),
        );
        assert!(HeadScan::of(&h).connection_names);
    }

    #[test]
    fn trailers_are_asked_for_by_te() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        assert!(asks_trailers(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        assert!(!asks_trailers(&h));
    }

    #[test]
    fn a_sender_is_written_as_display_writes_its_address() {
        for (addr, want) in [
            ("0.0.0.0", "0.0.0.0"),
            ("10.2.30.255", "10.2.30.255"),
            ("255.255.255.255", "255.255.255.255"),
            ("::ffff:192.168.100.9", "192.168.100.9"),
            ("::1", "::1"),
            ("2001:db8::8a2e:370:7334", "2001:db8::8a2e:370:7334"),
        ] {
            let s = Sender::new(addr.parse().unwrap(), "https");
            assert_eq!(s.text.to_str().unwrap(), want, "{addr}");
            assert_eq!(s.ip.to_string(), want, "{addr}");
            let lines = format!("x-forwarded-for: {want}\r\nx-forwarded-proto: https\r\n");
            assert_eq!(std::str::from_utf8(&s.lines).unwrap(), lines, "{addr}");
            let (text, all) = (s.text.as_bytes().as_ptr_range(), s.lines.as_ptr_range());
            assert!(
                all.start <= text.start && text.end <= all.end,
                "{addr}: the text is a slice of the lines, not a copy"
            );
        }
    }

    #[test]
    fn finds_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; fulcrum=abc; b=2"),
        );
        assert_eq!(cookie(&h, "fulcrum"), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
