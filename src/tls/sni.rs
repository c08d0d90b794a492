//! The SNI of a ClientHello, read without terminating TLS, for passthrough routing.
//!
//! [`client_hello_sni`] is a pure parser over the bytes received so far: it reassembles a
//! ClientHello that spans several TLS records (and so several TCP segments), never reads past
//! [`MAX_CLIENT_HELLO`] bytes, and never panics. [`peek_sni`] feeds it with `MSG_PEEK`, so
//! every byte stays in the socket and the relay sends the ClientHello on untouched.

use std::borrow::Cow;
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{Interest, ReadBuf};
use tokio::net::TcpStream;

/// The most bytes (record headers included) read for one ClientHello: a full 16 KiB record
/// fits; real ones are 0.2 to 2 KiB (3 KiB with post-quantum key shares).
pub const MAX_CLIENT_HELLO: usize = 17 * 1024;

/// The largest TLSPlaintext fragment (RFC 8446 §5.1).
const MAX_RECORD: usize = 16 * 1024;

/// Why no name could be read (yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The bytes so far are a valid beginning: read more.
    #[error("incomplete ClientHello")]
    NeedMore,
    /// The first bytes are not a TLS handshake record.
    #[error("not TLS")]
    NotTls,
    /// A TLS record that does not hold a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello needs more than [`MAX_CLIENT_HELLO`] bytes.
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
}

/// The server name in the ClientHello at the start of `buf`: `Ok(None)` when it has no SNI.
/// Borrowed from `buf` when the ClientHello sits in one record, owned when it was split.
pub fn client_hello_sni(buf: &[u8]) -> Result<Option<Cow<'_, str>>, SniError> {
    let (start, end) = record(buf, 0)?;
    let first = &buf[start..end.min(buf.len())];
    if first.len() >= 4 {
        // Checked before waiting for the rest, so an oversized or wrong message fails early.
        let need = 4 + hs_len(first)?;
        if first.len() >= need {
            // The common case: the whole ClientHello is in the first record.
            return Ok(client_hello_body(&first[4..need])?.map(Cow::Borrowed));
        }
    }
    if end > buf.len() {
        return Err(SniError::NeedMore);
    }
    // Split over several records: gather their payloads.
    let mut msg = Vec::with_capacity(2048);
    msg.extend_from_slice(first);
    let mut pos = end;
    loop {
        let (start, end) = record(buf, pos)?;
        msg.extend_from_slice(&buf[start..end.min(buf.len())]);
        if msg.len() >= 4 {
            let need = 4 + hs_len(&msg)?;
            if msg.len() >= need {
                let name = client_hello_body(&msg[4..need])?;
                return Ok(name.map(|n| Cow::Owned(n.to_string())));
            }
        }
        if end > buf.len() {
            return Err(SniError::NeedMore);
        }
        pos = end;
    }
}

/// The payload bounds of the handshake record whose header is at `pos`; the end may lie
/// beyond `buf` (the record is still arriving).
fn record(buf: &[u8], pos: usize) -> Result<(usize, usize), SniError> {
    let first = pos == 0;
    let not_handshake = || {
        if first {
            SniError::NotTls
        } else {
            SniError::Malformed("a non-handshake record inside the ClientHello")
        }
    };
    let Some(&kind) = buf.get(pos) else {
        return Err(SniError::NeedMore);
    };
    if kind != 0x16 {
        return Err(not_handshake());
    }
    let Some(&major) = buf.get(pos + 1) else {
        return Err(SniError::NeedMore);
    };
    if major != 0x03 {
        return Err(not_handshake());
    }
    let Some(hdr) = buf.get(pos + 3..pos + 5) else {
        return Err(SniError::NeedMore);
    };
    let len = usize::from(u16::from_be_bytes([hdr[0], hdr[1]]));
    if len == 0 || len > MAX_RECORD {
        return Err(SniError::Malformed("record length out of range"));
    }
    let end = pos + 5 + len;
    if end > MAX_CLIENT_HELLO {
        return Err(SniError::TooLarge);
    }
    Ok((pos + 5, end))
}

/// The length of the handshake message whose 4-byte header starts `msg`; it must be a
/// ClientHello.
fn hs_len(msg: &[u8]) -> Result<usize, SniError> {
    if msg[0] != 0x01 {
        return Err(SniError::Malformed(
            "first handshake message is not a ClientHello",
        ));
    }
    let len = usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]);
    if len + 4 > MAX_CLIENT_HELLO {
        return Err(SniError::TooLarge);
    }
    Ok(len)
}

/// A cursor that fails with `Malformed` instead of reading past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        if self.0.len() < n {
            return Err(SniError::Malformed(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<usize, SniError> {
        Ok(usize::from(self.take(1, what)?[0]))
    }
    fn u16(&mut self, what: &'static str) -> Result<usize, SniError> {
        let b = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    /// A vector with a `width`-byte length prefix.
    fn vec(&mut self, width: usize, what: &'static str) -> Result<&'a [u8], SniError> {
        let n = if width == 1 {
            self.u8(what)?
        } else {
            self.u16(what)?
        };
        self.take(n, what)
    }
}

/// RFC 8446 §4.1.2 ClientHello and RFC 6066 §3 server_name.
fn client_hello_body(body: &[u8]) -> Result<Option<&str>, SniError> {
    let mut r = Reader(body);
    r.take(2 + 32, "short ClientHello")?; // legacy_version, random
    if r.vec(1, "bad session id")?.len() > 32 {
        return Err(SniError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec(2, "bad cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(SniError::Malformed("bad cipher suites"));
    }
    if r.vec(1, "bad compression methods")?.is_empty() {
        return Err(SniError::Malformed("no compression method"));
    }
    if r.0.is_empty() {
        return Ok(None); // no extensions at all (old clients)
    }
    let mut exts = Reader(r.vec(2, "bad extensions")?);
    if !r.0.is_empty() {
        return Err(SniError::Malformed("bytes after the extensions"));
    }
    while !exts.0.is_empty() {
        let kind = exts.u16("bad extension")?;
        let data = exts.vec(2, "bad extension")?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let mut names = Reader(list.vec(2, "bad server name list")?);
        if !list.0.is_empty() {
            return Err(SniError::Malformed("bytes after the server name list"));
        }
        while !names.0.is_empty() {
            let name_type = names.u8("bad server name")?;
            let name = names.vec(2, "bad server name")?;
            if name_type == 0 {
                return host_name(name).map(Some);
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// A DNS host name: letters, digits, `-`, `_`, `.`; 1 to 253 bytes once a final dot is cut.
fn host_name(b: &[u8]) -> Result<&str, SniError> {
    let b = b.strip_suffix(b".").unwrap_or(b);
    let ok = !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !ok {
        return Err(SniError::Malformed("server name is not a DNS name"));
    }
    std::str::from_utf8(b).map_err(|_| SniError::Malformed("server name is not a DNS name"))
}

/// Why [`peek_sni`] found no name.
#[derive(Debug, thiserror::Error)]
pub enum PeekError {
    /// No complete ClientHello within the deadline.
    #[error("no complete ClientHello within the deadline")]
    Timeout,
    /// The client closed before sending a complete ClientHello.
    #[error("the client closed before a complete ClientHello")]
    Closed,
    /// A socket error.
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a usable ClientHello (never `NeedMore`).
    #[error(transparent)]
    Sni(SniError),
}

/// Waits (at most `timeout`) for a complete ClientHello on `stream` and returns its SNI,
/// leaving every byte in the socket. Looks at no more than `cap` bytes (at most
/// [`MAX_CLIENT_HELLO`]); a ClientHello that needs more is `Sni(TooLarge)`.
pub async fn peek_sni(
    stream: &TcpStream,
    cap: usize,
    timeout: Duration,
) -> Result<Option<String>, PeekError> {
    let cap = cap.clamp(16, MAX_CLIENT_HELLO);
    let mut buf = vec![0u8; cap];
    match tokio::time::timeout(timeout, peek_loop(stream, &mut buf)).await {
        Ok(r) => r,
        Err(_) => Err(PeekError::Timeout),
    }
}

async fn peek_loop(stream: &TcpStream, buf: &mut [u8]) -> Result<Option<String>, PeekError> {
    let mut seen = 0;
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let n = stream.peek(buf).await?;
        if n == 0 {
            return Err(PeekError::Closed);
        }
        if n > seen {
            seen = n;
            match client_hello_sni(&buf[..n]) {
                Ok(name) => return Ok(name.map(Cow::into_owned)),
                Err(SniError::NeedMore) if n < buf.len() => {}
                Err(SniError::NeedMore) => return Err(PeekError::Sni(SniError::TooLarge)),
                Err(e) => return Err(PeekError::Sni(e)),
            }
        } else if ready.is_read_closed() {
            return Err(PeekError::Closed);
        }
        // Wait for more bytes. A peek leaves them in the socket, so it stays "readable" and
        // the loop would spin: clear tokio's readiness, but only if no byte came in since the
        // peek above (checked inside `try_io`, whose clear tokio also skips when an event
        // arrives meanwhile), so no wake-up is lost. It is never cleared once the ClientHello
        // is complete: the relay reads these bytes next and needs the socket readable.
        let _ = stream.try_io(Interest::READABLE, || {
            let mut rb = ReadBuf::new(buf);
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            match stream.poll_peek(&mut cx, &mut rb) {
                Poll::Ready(Ok(m)) if m > seen => Ok(()),
                _ => Err(io::ErrorKind::WouldBlock.into()),
            }
        });
    }
}

#[cfg(test)]
#[path = "sni_tests.rs"]
mod tests;
