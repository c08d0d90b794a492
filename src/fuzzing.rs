//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which runs
//! every saved corpus file through them on stable Rust. Not a public API.
//!
//! Each function takes arbitrary bytes, runs one parser that reads input from outside
//! (config files, PROXY headers, forwarding headers, CIDR lists, cookies, heartbeat
//! replies), and asserts the properties that must hold for any input. A parser that panics,
//! or an assertion that fails, is a finding: the input goes into `fuzz/corpus/TARGET/` and
//! a regression test. To add a target, see `fuzz/README.md`.

use std::net::IpAddr;
use std::path::Path;

use http::{HeaderMap, HeaderValue};

use crate::admission::cidr::{Cidr, CidrSet};
use crate::admission::forwarded::{self, ClientHeader, Hop, Hops, MAX_HOPS};
use crate::admission::proxy_in::{self, Accept, Parse};
use crate::config::{self, HashKey};
use crate::health::probe::{match_reply, Reply};

/// A target: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus runner.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("proxy_header", proxy_header),
    ("heartbeat_expect", heartbeat_expect),
    ("forwarded", forwarded),
    ("cidr", cidr),
    ("cookie_hash_key", cookie_hash_key),
    ("client_hello_sni", client_hello_sni),
    ("upstream_response", upstream_response),
];

/// A ClientHello's SNI (passthrough routing): never a panic; a name is DNS-shaped; `NotTls`
/// only for bytes that do not start like a TLS handshake record; a name found in a prefix
/// stays the same name in the whole input.
pub fn client_hello_sni(data: &[u8]) {
    use crate::tls::{client_hello_sni as sni, SniError};
    match sni(data) {
        Ok(Some(name)) => {
            assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
                "{name:?}"
            );
        }
        Err(SniError::NotTls) => {
            assert!(data.first() != Some(&0x16) || data.get(1).is_some_and(|b| *b != 3));
        }
        _ => {}
    }
}

/// TOML text → validated config: never a panic; an error always points inside the text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = config::parse(text, Path::new("fuzz.toml")) {
        if let Some(loc) = e.location() {
            let lines = text.split('\n').count();
            assert!(
                loc.line >= 1 && loc.line <= lines,
                "{e}: line past the end ({lines} lines)"
            );
            assert!(loc.column >= 1, "{e}");
        }
        assert!(!e.to_string().is_empty());
    }
}

/// Inbound PROXY header: the first byte picks the accepted versions. A parsed header claims
/// no more than it was given, and parses the same from its own bytes alone.
pub fn proxy_header(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let accept = match sel % 3 {
        0 => Accept::V1,
        1 => Accept::V2,
        _ => Accept::Any,
    };
    match proxy_in::parse(rest, accept) {
        Parse::Parsed { src, dst, consumed } => {
            assert!(consumed > 0 && consumed <= rest.len());
            assert!(consumed <= proxy_in::MAX_V2_LEN);
            assert_eq!(src.is_some(), dst.is_some(), "addresses come in pairs");
            assert_eq!(
                proxy_in::parse(&rest[..consumed], accept),
                Parse::Parsed { src, dst, consumed },
                "a header does not depend on the bytes after it"
            );
        }
        Parse::NeedMore => {
            assert!(rest.len() < proxy_in::MAX_V2_LEN, "no endless NeedMore");
        }
        Parse::Invalid(r) => {
            assert!(!r.reason().is_empty());
        }
    }
}

/// Heartbeat: the config string (first line, with escapes) against a reply (the rest).
pub fn heartbeat_expect(data: &[u8]) {
    let (exp, got) = split_line(data);
    let Ok(exp) = std::str::from_utf8(exp) else {
        return;
    };
    let expect = config::unescape(exp);
    assert!(expect.len() <= exp.len(), "unescaping never grows");
    let r = match_reply(got, &expect);
    match r {
        Reply::Match => assert!(got.starts_with(&expect)),
        Reply::Incomplete => assert!(got.len() < expect.len() && expect.starts_with(got)),
        Reply::Mismatch => {
            let n = got.len().min(expect.len());
            assert_ne!(got[..n], expect[..n]);
        }
    }
    // Feeding the reply byte by byte never leaves a state it cannot reach at once.
    if let Some(i) = (0..=got.len()).find(|&i| match_reply(&got[..i], &expect) != Reply::Incomplete)
    {
        assert_eq!(
            match_reply(&got[..i], &expect),
            r,
            "the verdict is final once given"
        );
    }
}

/// Forwarding headers: the first byte picks the header; the rest are values, one a line.
/// The client is the chain's first hop, the chain is bounded, and trust is respected.
pub fn forwarded(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let kind = match sel % 3 {
        0 => ClientHeader::XForwardedFor,
        1 => ClientHeader::Forwarded,
        _ => ClientHeader::XRealIp,
    };
    let trusted = CidrSet::parse(&["10.0.0.0/8", "127.0.0.0/8", "::1", "fd00::/8"])
        .expect("fixed CIDRs parse");
    let hops = Hops::read(kind, rest.split(|&b| b == b'\n'));
    assert!(hops.len() <= MAX_HOPS);
    let found = forwarded::choose(&hops, &trusted);
    if let Some(f) = found {
        let chain = f.chain.as_slice();
        assert!(!chain.is_empty() && chain.len() <= MAX_HOPS);
        assert_eq!(chain[0], f.client.ip());
        // Every hop right of the client is trusted.
        assert!(chain[1..].iter().all(|ip| trusted.matches(*ip)));
        let _ = f.chain.to_string();
        let _ = f.chain.rfc7239().to_string();
    } else if let Some(Hop::Addr(..)) = hops.get(hops.len().wrapping_sub(1)) {
        panic!("a readable right-most hop always yields a client");
    }
    // The same through a header map, where the bytes are valid header values.
    let mut h = HeaderMap::new();
    for v in rest.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.append(kind.name(), v);
        }
    }
    let _ = forwarded::from_headers(&h, kind, &trusted);
}

/// CIDR lines: each that parses prints and re-parses to itself and contains its own
/// network address; the set answers like a linear scan for the longest match.
pub fn cidr(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut ok = Vec::new();
    for line in text.lines().take(256) {
        if let Ok(c) = Cidr::parse(line) {
            assert_eq!(Cidr::parse(&c.to_string()), Ok(c), "round trip of {line:?}");
            assert!(c.contains(c.addr()));
            ok.push(c);
        }
    }
    let set = CidrSet::new(ok.clone());
    let mut probes: Vec<IpAddr> = ok.iter().map(|c| c.addr()).collect();
    for line in text.lines().take(256) {
        if let Ok(ip) = line.trim().parse::<IpAddr>() {
            probes.push(ip);
        }
    }
    for ip in probes {
        let best = ok
            .iter()
            .enumerate()
            .filter(|(_, c)| c.contains(ip))
            .max_by(|a, b| a.1.prefix_len().cmp(&b.1.prefix_len()).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i as u32);
        assert_eq!(set.contains(ip).map(|r| r.0), best, "lookup of {ip}");
    }
}

/// Cookie and hash-key extraction: the first line is a `hash_key` setting, the rest are
/// Cookie header values; a found cookie value is a substring of one of them.
pub fn cookie_hash_key(data: &[u8]) {
    let (key, rest) = split_line(data);
    let Ok(key) = std::str::from_utf8(key) else {
        return;
    };
    let name = match config::parse_hash_key(key) {
        Ok(HashKey::Cookie(c)) => c,
        Ok(_) | Err(_) => key.to_string(),
    };
    let mut h = HeaderMap::new();
    let mut values = Vec::new();
    for v in rest.split(|&b| b == b'\n') {
        if let Ok(hv) = HeaderValue::from_bytes(v) {
            values.push(v);
            h.append(http::header::COOKIE, hv);
        }
    }
    if let Some(found) = crate::proxy::headers::cookie(&h, &name) {
        // An empty value (`sid=`) is in every header; `windows(0)` would panic.
        assert!(
            found.is_empty()
                || values
                    .iter()
                    .any(|v| v.windows(found.len()).any(|w| w == found.as_bytes())),
            "a cookie value comes from a Cookie header"
        );
    }
}

/// A server's response, as the proxy's own HTTP/1.1 client (`proxy::h1`) reads it, with
/// hyper's client reading the same bytes as a second opinion. Byte 0: bit 0 sends HEAD
/// instead of GET. The rest is what the server writes, over loopback, before it closes its
/// side. Must hold for every input:
/// - the client never waits on a server that has closed (a hang is a finding);
/// - a head it accepts carries no hop-by-hop field (they are the connection's), but for a
///   101, and a body it accepts was framed by `chunked` alone if by Transfer-Encoding at
///   all (any other coding would reach the client unannounced);
/// - a body it reads whole is empty for HEAD, 204 and 304, and as long as the head's
///   Content-Length says when there is one;
/// - where both clients read a whole response, they agree on its status and body: two
///   readings of the same bytes that differ are how requests get smuggled and responses
///   mixed up between clients.
pub fn upstream_response(data: &[u8]) {
    let Some((&flags, server)) = data.split_first() else {
        return;
    };
    // Larger answers only take longer to say the same.
    if server.len() > 64 * 1024 {
        return;
    }
    let head = flags & 1 == 1;
    thread_local! {
        // One runtime for every input: building one each time cost more than the input.
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    RT.with(|rt| {
        rt.block_on(async {
            let hang = std::time::Duration::from_secs(10);
            let ours = tokio::time::timeout(hang, upstream::ours(server, head))
                .await
                .expect("the proxy's client waits on a server that has closed");
            let theirs = tokio::time::timeout(hang, upstream::hypers(server, head)).await;
            if let Ok(read) = &ours {
                upstream::check(read, head, server);
            }
            if let (Ok(a), Ok(Ok(b))) = (&ours, &theirs) {
                if let (Ok(x), Ok(y)) = (&a.body, &b.body) {
                    assert_eq!(a.status, b.status, "status read differently");
                    assert_eq!(x, y, "body read differently (status {})", a.status);
                }
            }
        })
    });
}

/// The two clients of [`upstream_response`] over loopback.
mod upstream {
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr};

    use bytes::Bytes;
    use http::{header, HeaderMap, Method, Request, StatusCode};
    use http_body_util::BodyExt;
    use tokio::net::TcpStream;
    use tokio_util::sync::CancellationToken;

    use crate::proxy::body::ReqBody;
    use crate::proxy::h1::{send, Conn, Io, Outgoing};
    use crate::proxy::headers::{fixed_hop_by_hop, Forwarding};

    /// A response as read: its head, and its body whole (or the error that ended it).
    pub struct Reading {
        pub status: StatusCode,
        pub headers: HeaderMap,
        pub body: Result<Bytes, ()>,
    }

    /// A server on loopback that writes `bytes`, closes its side, and reads until the
    /// client goes (so that unread request bytes never turn its close into a reset).
    fn server(bytes: &[u8]) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("address");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(Shutdown::Write);
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        });
        addr
    }

    fn request(head: bool) -> http::request::Builder {
        let method = if head { Method::HEAD } else { Method::GET };
        Request::builder()
            .method(method)
            .uri("/")
            .header(header::HOST, "origin")
    }

    /// A response's head, and its body read to the end.
    async fn reading<B: http_body::Body<Data = Bytes>>(resp: http::Response<B>) -> Reading {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).map_err(|_| ());
        Reading {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// The proxy's client. `Err` when it refused the head.
    pub async fn ours(bytes: &[u8], head: bool) -> Result<Reading, ()> {
        let addr = server(bytes);
        let s = TcpStream::connect(addr).await.map_err(|_| ())?;
        let conn = Conn::new(Io::Tcp(s), addr, CancellationToken::new());
        let req = request(head).body(ReqBody::Empty).expect("request");
        let resp = send(conn, &mut Outgoing::new(req, false), &Forwarding::default())
            .await
            .map_err(|_| ())?;
        Ok(reading(resp).await)
    }

    /// hyper's client, as configured by default.
    pub async fn hypers(bytes: &[u8], head: bool) -> Result<Reading, ()> {
        let addr = server(bytes);
        let s = TcpStream::connect(addr).await.map_err(|_| ())?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .map_err(|_| ())?;
        // Ended with this input: the runtime is shared by every input.
        let _conn = AbortOnDrop(tokio::spawn(conn));
        let req = request(head)
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let resp = tx.send_request(req).await.map_err(|_| ())?;
        Ok(reading(resp).await)
    }

    /// The Transfer-Encoding values of the final response head at the start of `bytes`
    /// (interim 1xx heads skipped), as httparse reads it.
    fn transfer_codings(mut bytes: &[u8]) -> Vec<String> {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut fields);
            let Ok(httparse::Status::Complete(n)) = r.parse(bytes) else {
                return Vec::new();
            };
            if r.code.is_some_and(|c| (100..200).contains(&c) && c != 101) {
                bytes = &bytes[n..];
                continue;
            }
            return r
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .collect();
        }
    }

    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    /// What must hold of any response the proxy's client accepted, from `bytes`.
    pub fn check(r: &Reading, head: bool, bytes: &[u8]) {
        if r.status != StatusCode::SWITCHING_PROTOCOLS {
            for name in r.headers.keys() {
                assert!(!fixed_hop_by_hop(name), "hop-by-hop {name} handed on");
            }
        }
        let bodiless =
            head || r.status == StatusCode::NO_CONTENT || r.status == StatusCode::NOT_MODIFIED;
        if !bodiless {
            // Transfer-Encoding is not handed on, so a body it frames may only have been
            // chunked: any other coding would reach the client unannounced.
            let codings = transfer_codings(bytes);
            assert!(
                codings.is_empty()
                    || (codings.len() == 1
                        && codings[0]
                            .trim_matches(|c: char| c.is_ascii_whitespace())
                            .eq_ignore_ascii_case("chunked")),
                "a body framed by {codings:?} accepted"
            );
        }
        let Ok(body) = &r.body else { return };
        if bodiless {
            assert!(body.is_empty(), "a body for HEAD, 204 or 304");
            return;
        }
        if let Some(v) = r.headers.get(header::CONTENT_LENGTH) {
            let text = v.to_str().expect("a length is ASCII");
            let n: u64 = text
                .split(',')
                .next()
                .and_then(|t| t.trim().parse().ok())
                .expect("a Content-Length handed on is a number");
            assert_eq!(
                body.len() as u64,
                n,
                "the body is as long as its Content-Length"
            );
        }
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

#[cfg(test)]
mod tests {
    /// Found by the cookie_hash_key target: an empty cookie value (`sid=`) made the harness
    /// itself panic (`windows(0)`); `proxy::headers::cookie` was right to return `Some("")`.
    #[test]
    fn empty_cookie_value() {
        super::cookie_hash_key(b"cookie:sid\na=1; sid=\nsid=\"sid=ed\"");
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; sid="),
        );
        assert_eq!(crate::proxy::headers::cookie(&h, "sid"), Some(""));
    }
}
