//! HTTP/1.1 towards servers, spoken by the request's own task.
//!
//! hyper's client runs every connection in a task of its own and passes each request and
//! its response across a channel: per request, a hop each way and a wake-up of a second
//! task, and a general client's work besides (its own buffering and header encoding).
//! Under callgrind that was 13.4k of the 35.5k instructions a small proxied request cost.
//! What a proxy needs of HTTP/1.1 towards its servers is narrower: write a head it has
//! already checked, stream a body it has already framed, read one response head, and frame
//! the response body exactly, knowing when the connection may carry another request.
//!
//! Here the request's task writes the head and body itself and reads the response head;
//! the response body ([`RespIn`]) owns the connection while it streams and gives it back
//! when it ended cleanly. An idle connection has no task at all: it is a socket in the
//! pool, checked for a close or stray bytes when it is taken ([`Conn::is_usable`]).
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when it is
//! the last transfer coding; otherwise Content-Length, whose values must agree; otherwise
//! the body runs to the close. Anything else is a protocol error, charged to the server.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::body::{Peek, ReqBody};
use super::headers::{
    chunked_alone, connection_tokens, fixed_hop_by_hop, listed_in_connection, names_a_field,
    Forwarding,
};

/// Headers in a response head, at most (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Bytes in a response head, at most.
const MAX_HEAD: usize = 256 * 1024;
/// Bytes of a chunk-size line or of the trailer section, at most.
const MAX_CHUNK_META: usize = 16 * 1024;
/// Read buffer reserved at a time for a body.
const READ_CHUNK: usize = 8 * 1024;
/// Room below which the read buffer is grown before a body's read, and the least reserved.
const MIN_READ: usize = 2 * 1024;
/// Room below which the read buffer is grown (or taken back to its start) before a response
/// head's read.
///
/// The buffer stays with the connection, idle in the pool included (unless a body or a long
/// head grew it: see [`RespIn::take_reusable`]), and each read lands at its next free byte
/// until the room left is below this. With 8 KiB reserved
/// for heads (and 2 KiB as the mark), a connection's reads walked through 6 KiB of it
/// before it was taken back to its start, and those pages stayed resident. Heads get
/// [`MIN_READ`] (most are a few hundred bytes; a longer one grows it), taken back to its
/// start every few responses. At 1,000 connections the RSS held while serving went from
/// 38.4–38.7 MiB to 30.8–31.5 (HAProxy's 32.0–33.0), for 7 more instructions per request.
const HEAD_ROOM: usize = 512;

/// A connection's stream: plain TCP, or TLS over it.
pub enum Io {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS towards the server.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => super::sock::poll_recv(s, cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => super::sock::poll_send(s, cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// Why an exchange with a server failed.
#[derive(Debug)]
pub enum Error {
    /// The connection failed (reset, broken pipe...).
    Io(io::Error),
    /// The server closed before a whole response.
    Closed,
    /// The server's response is not valid HTTP/1.1, or is framed ambiguously.
    Protocol(&'static str),
    /// The request body failed on the client's side (its state says how).
    RequestBody,
    /// The server's connections were severed (an operator's drain deadline).
    Severed,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "connection to the server failed: {e}"),
            Error::Closed => {
                f.write_str("the server closed the connection before a whole response")
            }
            Error::Protocol(why) => write!(f, "invalid response from the server: {why}"),
            Error::RequestBody => f.write_str("the request body failed"),
            Error::Severed => f.write_str("the server's connections were severed"),
        }
    }
}

impl std::error::Error for Error {}

/// An HTTP/1.1 connection to a server, between requests.
pub struct Conn {
    io: Io,
    /// Bytes read from the server and not yet used.
    rd: BytesMut,
    /// `rd` was grown past twice [`MIN_READ`] (for a body, or a long head): its
    /// allocation is let go when the response ends cleanly (see [`RespIn::take_reusable`]).
    grown: bool,
    /// The request head (and chunk framing, and small body frames) being written; its
    /// capacity is kept.
    wr: Vec<u8>,
    /// Body frames written from where they are, each after `wr[..at]` for its `at` (see
    /// [`Out::add`]); its capacity is kept.
    segs: Vec<(usize, Bytes)>,
    /// Fires when the server's connections are severed.
    sever: CancellationToken,
    /// Waits on `sever` with [`SeverRelay`]'s waker: set up the first time the connection
    /// waits on the server, polled that once, and kept (so registered) for its life.
    sever_wait: Option<(Pin<Box<WaitForCancellationFutureOwned>>, Arc<SeverRelay>)>,
    /// The header names this server sends.
    names: NameCache,
    /// Where the ACK of what the server sent since the proxy last wrote to it stands. See
    /// [`Conn::poll_fill`].
    ack: Ack,
    /// A plain TCP connection to a loopback address: the server gets an ACK within the
    /// system call that sends it, and what that ACK let it send is here when the call
    /// returns, to be read straight from the socket (see [`Conn::ack_and_read_now`]).
    local: bool,
}

/// The kernel may hold back the ACK of what a server sent (delayed ACK: up to 40 ms on a
/// connection whose two ends take turns, as a keep-alive connection does), and a server
/// that leaves Nagle's algorithm on holds a small write until its previous one is
/// acknowledged: a response head and body written apart then take 40 ms.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ack {
    /// Nothing read since the proxy last wrote (its write carried the ACK).
    Even,
    /// Bytes read since, and perhaps not acknowledged yet.
    Owed,
    /// Acknowledged at once, which also leaves the turn-taking mode: the kernel
    /// acknowledges what comes next when it is read, until the proxy writes again.
    Sent,
}

/// Passes a sever on to whichever task waits on the connection now. The connection's wait
/// on its sever token is registered once, with this as its waker; a task that waits on the
/// connection registers its own waker here, which costs a compare-and-swap, where polling
/// the token's wait with a new waker takes the token's lock (the connection serves a
/// different client task nearly every request).
#[derive(Default)]
struct SeverRelay {
    fired: AtomicBool,
    waiter: AtomicWaker,
}

impl std::task::Wake for SeverRelay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.waiter.wake();
    }
}

/// The header names a server has sent on a connection, up to [`NameCache::MAX`], each with
/// the bytes it came as. A server answers with the same few names, spelt the same way, every
/// time, and finding those bytes here (a length check, then a comparison) is cheaper than
/// making the name again: recognising a standard name walks a table, and a name of the
/// server's own (`x-...`) is validated, lower-cased and copied into a new allocation.
#[derive(Default)]
struct NameCache(Vec<(Box<[u8]>, HeaderName)>);

impl NameCache {
    const MAX: usize = 16;

    fn name(&mut self, raw: &[u8]) -> Result<HeaderName, Error> {
        if let Some((_, n)) = self.0.iter().find(|(r, _)| **r == *raw) {
            return Ok(n.clone());
        }
        let n = HeaderName::from_bytes(raw).map_err(|_| Error::Protocol("invalid header name"))?;
        if self.0.len() < Self::MAX {
            self.0.push((raw.into(), n.clone()));
        }
        Ok(n)
    }
}

impl Conn {
    /// A connection over `io`; `sever` is a token of its own (a child of the server's).
    /// Boxed: it moves between the pool, the request and the response body, and a pointer
    /// moves cheaper than the struct.
    pub fn new(io: Io, server: SocketAddr, sever: CancellationToken) -> Box<Self> {
        let local = matches!(io, Io::Tcp(_)) && server.ip().is_loopback();
        Box::new(Conn {
            io,
            rd: BytesMut::new(),
            grown: false,
            wr: Vec::new(),
            segs: Vec::new(),
            sever,
            sever_wait: None,
            names: NameCache::default(),
            ack: Ack::Even,
            local,
        })
    }

    /// Whether the connection was severed; if not, the sever wakes the task polling now.
    fn poll_severed(&mut self, cx: &mut Context<'_>) -> bool {
        let sever = &self.sever;
        let (_, relay) = match &mut self.sever_wait {
            Some(w) => w,
            slot @ None => {
                let relay = Arc::new(SeverRelay::default());
                let mut wait = Box::pin(sever.clone().cancelled_owned());
                let relay_waker = Waker::from(relay.clone());
                if wait
                    .as_mut()
                    .poll(&mut Context::from_waker(&relay_waker))
                    .is_ready()
                {
                    return true;
                }
                slot.insert((wait, relay))
            }
        };
        relay.waiter.register(cx.waker());
        // Checked after the register: a sever before it is seen here, one after it wakes.
        relay.fired.load(Ordering::Acquire)
    }

    /// Whether the connection was severed: the relay's flag once there is one (a load),
    /// else the token's (which takes its lock).
    fn severed(&self) -> bool {
        match &self.sever_wait {
            Some((_, relay)) => relay.fired.load(Ordering::Acquire),
            None => self.sever.is_cancelled(),
        }
    }

    /// Whether an idle connection can carry a request: not severed, and the server has
    /// neither closed it nor sent anything unasked since its last response (either would
    /// make the next response unreadable). Costs no system call while the socket has
    /// nothing to read.
    /// This connection, fit to go back to the pool after a response: `None` if the server
    /// sent bytes past it. A buffer grown for a body or a long head would otherwise stay
    /// with the connection for life: idle in the pool (up to `upstream_idle`), and under
    /// every later head read, which walks through it. Given back now, its memory is the
    /// allocator's to hand to the next large read on any connection, while it is still in
    /// the cache; the next head gets its 2 KiB afresh.
    pub fn reusable(mut self: Box<Self>) -> Option<Box<Self>> {
        if !self.rd.is_empty() {
            return None;
        }
        if self.grown {
            self.rd = BytesMut::new();
            self.grown = false;
        }
        // Likewise the write buffer, grown for a long head or body frames gathered into one
        // write.
        if self.wr.capacity() > READ_CHUNK {
            self.wr = Vec::new();
        }
        Some(self)
    }

    pub fn is_usable(&mut self) -> bool {
        if !self.rd.is_empty() || self.severed() {
            return false;
        }
        // The last read, at the end of the response, found the socket drained: nothing
        // since, nothing to probe for.
        if matches!(&self.io, Io::Tcp(s) if super::read_readiness_empty(s)) {
            return true;
        }
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        // Pending: nothing to read, the connection is open. A TLS session ticket is read
        // and consumed inside the TLS stream and also comes out as Pending.
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }

    /// Gives up the stream and what was read past the response head (an upgrade).
    pub fn into_parts(self) -> (Io, Bytes) {
        (self.io, self.rd.freeze())
    }

    /// Reads more into `rd`; `Ok(0)` at the server's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        // Read into what room is left unless it is small: reserving again each time would
        // reclaim (or replace) the buffer on every response. When reserving, make room for a
        // byte more than is wanted: a read that fills the buffer leaves the socket marked
        // readable (tokio clears that on a short read), and when the read took the rest of
        // a body, the next one would only find the socket empty: a wasted system call per
        // response (3 reads instead of 2 for a 16 KiB body).
        if self.rd.capacity() - self.rd.len() < want.min(MIN_READ) {
            let more = (want + 1).clamp(MIN_READ, 4 * READ_CHUNK);
            self.grown |= self.rd.len() + more > 2 * MIN_READ;
            self.rd.reserve(more);
        }
        if self.ack == Ack::Owed && self.local {
            if let Some(r) = self.ack_and_read_now() {
                return Poll::Ready(r);
            }
        }
        let r = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rd);
        match r {
            Poll::Ready(Ok(n)) if n > 0 && self.ack == Ack::Even => self.ack = Ack::Owed,
            // A response came in part and the rest is not here: the server may be waiting
            // for the ACK of what it sent (see [`Ack`]). Acknowledge now: one system call
            // per response that comes in pieces, none for one that comes whole or while
            // the proxy waits for a response to begin.
            Poll::Pending if self.ack == Ack::Owed => {
                self.ack = Ack::Sent;
                self.ack_now();
            }
            _ => {}
        }
        r
    }

    /// A server on this host that wrote a response in pieces: when the socket is drained
    /// (a read now would wait), acknowledges what came and reads at once what the ACK let
    /// the server send. On loopback the ACK reaches the server, and the server's next piece
    /// comes back, inside the `setsockopt` call, so the response is read whole in this poll
    /// instead of in a second wake-up of the task for the rest. No waker is registered, so
    /// the readiness the runtime records for those bytes a moment later wakes nobody; it
    /// costs the connection's next read, or its check when it is taken from the pool, one
    /// `EAGAIN` system call. `None` when there is nothing to do here: the caller reads
    /// through the runtime as usual (and acknowledges then if it still owes the ACK).
    #[cold]
    fn ack_and_read_now(&mut self) -> Option<io::Result<usize>> {
        // `local` is set only on plain TCP connections.
        let Io::Tcp(s) = &self.io else {
            return None;
        };
        if !super::read_readiness_empty(s) {
            // Bytes (or a FIN) may be waiting: the read through the runtime takes them.
            return None;
        }
        self.ack = Ack::Sent;
        self.ack_now();
        match super::sock::recv_now(s, &mut self.rd) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            r => Some(r),
        }
    }

    /// Acknowledges at once what was read (see [`Ack`]).
    fn ack_now(&self) {
        use std::os::fd::AsRawFd;
        super::quick_ack(match &self.io {
            Io::Tcp(s) => s.as_raw_fd(),
            Io::Tls(s) => s.get_ref().0.as_raw_fd(),
        });
    }
}

/// How the request body goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    /// As it comes: Content-Length framed it, or there is none.
    Raw,
    /// Chunked.
    Chunked,
}

/// Writes the request head into `wr`; returns how its body is framed, and whether the head
/// asks for an upgrade (has an Upgrade field: told on the way rather than looked up).
fn encode_head(
    wr: &mut Vec<u8>,
    req: &Request<ReqBody>,
    forwarding: &Forwarding<'_>,
) -> (ReqFraming, bool) {
    wr.clear();
    wr.extend_from_slice(req.method().as_str().as_bytes());
    wr.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    wr.extend_from_slice(target.as_bytes());
    wr.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut chunked, mut upgrade) = (false, false);
    for (name, value) in req.headers() {
        if name == header::TRANSFER_ENCODING {
            chunked = last_coding_is_chunked(value);
        }
        upgrade |= name == header::UPGRADE;
        wr.extend_from_slice(name.as_str().as_bytes());
        wr.extend_from_slice(b": ");
        wr.extend_from_slice(value.as_bytes());
        wr.extend_from_slice(b"\r\n");
    }
    forwarding.write(wr);
    wr.extend_from_slice(b"\r\n");
    let framing = if chunked && !req.body().is_end_stream() {
        ReqFraming::Chunked
    } else if chunked {
        // Framed chunked but with nothing to send: the body is the last chunk alone.
        wr.extend_from_slice(b"0\r\n\r\n");
        ReqFraming::Raw
    } else {
        ReqFraming::Raw
    };
    (framing, upgrade)
}

fn last_coding_is_chunked(v: &HeaderValue) -> bool {
    v.as_bytes()
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A request on its way to a server, and how far it has got.
pub struct Outgoing {
    /// The request. An HTTP/1.1 exchange takes the body out when the first byte is written,
    /// then keeps the head if `keep` says so and drops it otherwise; an h2 exchange takes
    /// the request whole and gives it back only if none of it was sent.
    pub req: Option<Request<ReqBody>>,
    /// Some of it was written: it has reached a server.
    pub written: bool,
    /// Keep the head once written, to send it again elsewhere (a retry of a request without
    /// a body). Kept, it needs no copy made beforehand for the chance of a retry.
    pub keep: bool,
}

impl Outgoing {
    pub fn new(req: Request<ReqBody>, keep: bool) -> Outgoing {
        Outgoing {
            req: Some(req),
            written: false,
            keep,
        }
    }

    /// The request, if it is here and was never written: it may go to any server, on any
    /// connection.
    pub fn unsent_req(&self) -> Option<&Request<ReqBody>> {
        self.req.as_ref().filter(|_| !self.written)
    }

    /// Whether [`unsent_req`](Self::unsent_req) has the request.
    pub fn unsent(&self) -> bool {
        self.unsent_req().is_some()
    }

    /// Takes the request out whole if it was never written (an h2 exchange sends it whole,
    /// and gives it back only if none of it went out).
    pub fn take_unsent(&mut self) -> Option<Request<ReqBody>> {
        if self.written {
            return None;
        }
        self.req.take()
    }

    /// After it reached a server, makes it ready to go again: true if its head was kept (its
    /// body is empty then, as only a request without one is kept).
    pub fn rewind(&mut self) -> bool {
        if self.req.is_none() {
            return false;
        }
        self.written = false;
        true
    }
}

/// Body bytes gathered into one write, at most (past this, the write goes out as it is).
/// Frames are gathered only while more are here at once: a chunked body's chunks, an h2
/// stream's DATA frames.
const GATHER: usize = 32 * 1024;

/// Body frames this long or longer are written from where they are (an `iovec` each), up
/// to [`GATHER_SEGS`] a write; shorter ones are copied after the head, where a copy costs
/// less than the kernel's work on one more `iovec`.
const COPY_UNDER: usize = 1024;

/// Body frames written from where they are in one write, at most: the write's `iovec`s
/// (two a frame, and the framing after the last) fit a small array on the stack. Any more
/// are copied.
const GATHER_SEGS: usize = 16;

/// Body frames in one write, at most, whatever their size. Before the first write the
/// frames looked at stay in the body, and are dropped one by one once written: a client
/// sending 1-byte chunks would otherwise have thousands kept per write, and their dropping
/// cost grow with their square (30,000 such chunks took 1.3 s). Frames of no bytes count
/// too, though none comes today: the h2 crate passes no empty DATA frame on (and ends a
/// connection that sends over 100), and a chunk of size 0 ends an HTTP/1 body.
const GATHER_FRAMES: u32 = 64;

/// The request's way out, as far as it has got.
struct Out {
    framing: ReqFraming,
    /// Written of `conn.wr` so far.
    at: usize,
    /// The next of `conn.segs` to write (what was written of it is gone from its front).
    seg: usize,
    /// The body, until its end.
    body: Option<ReqBody>,
    /// Sent whole (last byte written).
    done: bool,
    /// Body frames in the write being gathered, and their bytes: the frames that are here
    /// go out in one write.
    frames: u32,
    gathered: u32,
    /// Before the first write: frames of the unsent request's body in the write (still the
    /// body's, [`ReqBody::poll_peek`]), and whether the look ahead is over.
    peeked: u32,
    looked: bool,
    /// The body's end is in the write (nothing of it is left to send after it).
    sealed: bool,
    /// The task was woken to look again for body frames, and has not had one since: a
    /// chunked body's next chunk is often in hyper's buffer, handed over once the client's
    /// connection has had its turn. Next time, wait.
    yielded: bool,
}

impl Out {
    fn new(framing: ReqFraming) -> Out {
        Out {
            framing,
            at: 0,
            seg: 0,
            body: None,
            done: false,
            frames: 0,
            gathered: 0,
            peeked: 0,
            looked: false,
            sealed: false,
            yielded: false,
        }
    }

    /// Writes until the request is sent whole, or the socket or the body must wait. Until the
    /// first byte is written, `sending` holds the request; then its body is taken from it
    /// (`None`: that is done already).
    fn poll_send(
        &mut self,
        conn: &mut Conn,
        mut sending: Option<&mut Outgoing>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        // Until the first byte is written, the body's first frames may join the head.
        if !self.looked {
            let unsent = sending.as_deref_mut().filter(|o| !o.written);
            match unsent.and_then(|o| o.req.as_mut()) {
                Some(req) => ready!(self.look_ahead(conn, req.body_mut(), cx)),
                None => self.looked = true,
            }
        }
        loop {
            while self.at < conn.wr.len() || self.seg < conn.segs.len() {
                let (wr, io) = (&conn.wr, Pin::new(&mut conn.io));
                let r = match &conn.segs[self.seg..] {
                    [] => io.poll_write(cx, &wr[self.at..]),
                    // One frame (most bodies that come in one piece): no array to fill.
                    [(pos, d)] => {
                        let (before, after) = (&wr[self.at..*pos], &wr[*pos..]);
                        let bufs = [IoSlice::new(before), IoSlice::new(d), IoSlice::new(after)];
                        io.poll_write_vectored(cx, &bufs)
                    }
                    segs => {
                        let mut bufs = [IoSlice::new(&[]); 2 * GATHER_SEGS + 1];
                        let k = iovecs(&mut bufs, wr, self.at, segs);
                        io.poll_write_vectored(cx, &bufs[..k])
                    }
                };
                let n = match ready!(r) {
                    Ok(0) => return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into()))),
                    Ok(n) => n,
                    Err(e) => return Poll::Ready(Err(Error::Io(e))),
                };
                if let Some(o) = sending.take().filter(|o| !o.written) {
                    // The first byte is out: from here on the request has reached the server.
                    // Its body is taken out, and the rest kept or dropped in place (taking
                    // the whole request out would move all of it first).
                    if let Some(req) = o.req.as_mut() {
                        let mut body = std::mem::replace(req.body_mut(), ReqBody::Empty);
                        // The frames looked at are in this write.
                        body.drop_ahead(self.peeked as usize);
                        // Chunked, the body is polled to its end for the last chunk.
                        let more = !self.sealed
                            && (self.framing == ReqFraming::Chunked || !body.is_end_stream());
                        self.body = more.then_some(body);
                    }
                    o.written = true;
                    if !o.keep {
                        o.req = None;
                    }
                }
                self.wrote(&conn.wr, &mut conn.segs, n);
            }
            conn.wr.clear();
            conn.segs.clear();
            (self.at, self.seg) = (0, 0);
            (self.frames, self.gathered) = (0, 0);
            if self.body.is_none() {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            ready!(self.gather(conn, cx))?;
        }
    }

    /// Takes the body frames that are here into the next write, up to [`GATHER`] bytes;
    /// ready when there is something to write (or the body has ended), pending when the
    /// body waits on the client.
    fn gather(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            let gathering = self.frames > 0 || !conn.wr.is_empty();
            let now = gathering || self.may_yield();
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let r = if now {
                body.poll_frame_now(cx)
            } else {
                Pin::new(body).poll_frame(cx)
            };
            match r {
                Poll::Pending if self.may_yield() => return self.yield_once(cx),
                Poll::Pending if gathering => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    self.yielded = false;
                    match frame.into_data() {
                        Ok(d) if d.is_empty() => {}
                        Ok(d) => {
                            if !self.add(&mut conn.wr, &mut conn.segs, d) {
                                return Poll::Ready(Ok(()));
                            }
                        }
                        Err(frame) => {
                            if let (Ok(trailers), ReqFraming::Chunked) =
                                (frame.into_trailers(), self.framing)
                            {
                                self.body = None;
                                let wr = &mut conn.wr;
                                wr.extend_from_slice(b"0\r\n");
                                for (name, value) in &trailers {
                                    wr.extend_from_slice(name.as_str().as_bytes());
                                    wr.extend_from_slice(b": ");
                                    wr.extend_from_slice(value.as_bytes());
                                    wr.extend_from_slice(b"\r\n");
                                }
                                wr.extend_from_slice(b"\r\n");
                                return Poll::Ready(Ok(()));
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(Error::RequestBody)),
                Poll::Ready(None) => {
                    self.body = None;
                    self.seal(&mut conn.wr);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Before the head's first write: the body frames that are here already go into the
    /// same write (after their chunk-size lines when chunked), the body's end too if it is
    /// known. One system call and one segment or more fewer per such request, and the
    /// server reads head and body at once. hyper hands an HTTP/1 request over with the body
    /// bytes that came in the head's read already in its channel (an h2 stream's DATA that
    /// came with its HEADERS likewise). The frames stay in the request's body too until the
    /// first byte is written, so that a request whose first write fails still has them for
    /// the next server. A body not here yet is not waited for (but for one turn of the
    /// client's connection when chunked: see [`Out::yielded`]).
    fn look_ahead(
        &mut self,
        conn: &mut Conn,
        body: &mut ReqBody,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        while self.peeked == 0 || (self.gathered < GATHER as u32 && self.peeked < GATHER_FRAMES) {
            if self.peeked == 0 && body.is_end_stream() {
                break;
            }
            match body.poll_peek(self.peeked as usize, cx) {
                Poll::Pending if self.may_yield() => return self.yield_once(cx),
                Poll::Pending | Poll::Ready(Peek::Other) => break,
                Poll::Ready(Peek::End) => {
                    self.seal(&mut conn.wr);
                    break;
                }
                Poll::Ready(Peek::Data(d)) => {
                    self.peeked += 1;
                    self.yielded = false;
                    let more = d.is_empty() || self.add(&mut conn.wr, &mut conn.segs, d);
                    if body.peeked_to_end(self.peeked as usize) {
                        self.seal(&mut conn.wr);
                        break;
                    }
                    if !more {
                        break;
                    }
                }
            }
        }
        self.looked = true;
        Poll::Ready(())
    }

    /// Whether a body that is not here should be looked for once more after a turn of the
    /// client's connection ([`Out::yielded`]).
    fn may_yield(&self) -> bool {
        self.framing == ReqFraming::Chunked && !self.yielded
    }

    /// Wakes the task to look again after the client's connection has had its turn.
    fn yield_once<T>(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Accounts for `n` bytes written: of `wr` up to the next of `segs`, of that frame, and
    /// so on.
    fn wrote(&mut self, wr: &[u8], segs: &mut [(usize, Bytes)], mut n: usize) {
        while n > 0 {
            let upto = segs.get(self.seg).map_or(wr.len(), |s| s.0);
            let from_wr = n.min(upto - self.at);
            self.at += from_wr;
            n -= from_wr;
            let Some((_, d)) = segs.get_mut(self.seg).filter(|_| n > 0) else {
                break;
            };
            let from_seg = n.min(d.len());
            d.advance(from_seg);
            n -= from_seg;
            if d.is_empty() {
                self.seg += 1;
            }
        }
    }

    /// Puts a body frame into the write, after its chunk-size line when chunked: a long
    /// frame (up to [`GATHER_SEGS`] of them) written from where it is, with no copy, a short
    /// one copied into `wr`. Whether to look for more.
    fn add(&mut self, wr: &mut Vec<u8>, segs: &mut Vec<(usize, Bytes)>, d: Bytes) -> bool {
        use std::io::Write;
        self.gathered += d.len() as u32;
        self.frames += 1;
        let chunked = self.framing == ReqFraming::Chunked;
        if chunked {
            let _ = write!(wr, "{:x}\r\n", d.len());
        }
        if d.len() >= COPY_UNDER && segs.len() < GATHER_SEGS {
            segs.push((wr.len(), d));
        } else {
            wr.extend_from_slice(&d);
        }
        if chunked {
            wr.extend_from_slice(b"\r\n");
        }
        self.gathered < GATHER as u32 && self.frames < GATHER_FRAMES
    }

    /// The body ends with this write: its last chunk goes after what is in it.
    fn seal(&mut self, wr: &mut Vec<u8>) {
        self.sealed = true;
        if self.framing == ReqFraming::Chunked {
            wr.extend_from_slice(b"0\r\n\r\n");
        }
    }
}

/// Fills `bufs` with what is left to write: `wr` from `at`, with each of `segs` after
/// `wr[..its at]`. Returns how many it filled. `bufs` holds two for each of `segs`, and
/// one for the end of `wr`.
fn iovecs<'a>(
    bufs: &mut [IoSlice<'a>],
    wr: &'a [u8],
    mut at: usize,
    segs: &'a [(usize, Bytes)],
) -> usize {
    let mut k = 0;
    for (pos, d) in segs {
        if *pos > at {
            bufs[k] = IoSlice::new(&wr[at..*pos]);
            k += 1;
        }
        bufs[k] = IoSlice::new(d);
        k += 1;
        at = *pos;
    }
    if at < wr.len() {
        bufs[k] = IoSlice::new(&wr[at..]);
        k += 1;
    }
    k
}

/// Sends the request in `outgoing` on `conn` and reads the response head. It stays in
/// `outgoing`, unwritten, until its first byte is written, so that a connection that fails
/// before that leaves it there to be sent elsewhere (and it is not moved about meanwhile).
/// Its head stays there after that too if `outgoing.keep` says so. The request
/// body keeps going out while the head is awaited, and after it if the server answered
/// first (a server may stream its answer as it reads, or refuse an upload early); the
/// connection is reused only if the request went out whole. A 1xx other than 101 is
/// skipped.
pub async fn send(
    mut conn: Box<Conn>,
    outgoing: &mut Outgoing,
    forwarding: &Forwarding<'_>,
) -> Result<Response<RespIn>, Error> {
    let Some(r) = outgoing.unsent_req() else {
        return Err(Error::Closed);
    };
    let head_req = r.method() == Method::HEAD;
    // The request about to go out acknowledges everything read before it.
    conn.ack = Ack::Even;
    let (framing, upgrade) = encode_head(&mut conn.wr, r, forwarding);
    let mut out = Out::new(framing);
    let head = std::future::poll_fn(|cx| {
        if !out.done {
            if let Poll::Ready(Err(e)) = out.poll_send(&mut conn, Some(&mut *outgoing), cx) {
                return Poll::Ready(Err(e));
            }
        }
        loop {
            if let Some(head) = parse_head(&mut conn.rd, &mut conn.names, head_req, upgrade)? {
                return Poll::Ready(Ok(head));
            }
            match conn.poll_fill(cx, HEAD_ROOM) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::Closed)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                Poll::Pending => {
                    if conn.poll_severed(cx) {
                        return Poll::Ready(Err(Error::Severed));
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await?;
    let out = (!out.done).then(|| Box::new(out));
    Ok(head.resp.map(|()| RespIn {
        framing: head.framing,
        reuse: head.keep_alive,
        out,
        conn: Some(conn),
    }))
}

/// A parsed response head.
struct Head {
    resp: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a whole response head off the front of `rd`, skipping interim 1xx responses;
/// `None` until one has arrived whole.
fn parse_head(
    rd: &mut BytesMut,
    names: &mut NameCache,
    head_req: bool,
    upgrade: bool,
) -> Result<Option<Head>, Error> {
    loop {
        if rd.is_empty() {
            return Ok(None);
        }
        // Uninitialised slots: zeroing 100 of them would cost more than parsing a short head.
        let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let n = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut r, rd, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if rd.len() > MAX_HEAD => {
                return Err(Error::Protocol("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Error::Protocol("too many response headers"))
            }
            Err(_) => return Err(Error::Protocol("malformed response head")),
        };
        let code = r.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Protocol("invalid status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints...: the final response follows.
            rd.advance(n);
            continue;
        }
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Where each field sits in the head, so that once the head is split off the buffer
        // its values can be slices of it (no copy). Few heads have more than 16 fields.
        let base = rd.as_ptr() as usize;
        let count = r.headers.len();
        let mut small = [[0u32; 4]; 16];
        let mut big = Vec::new();
        let spans: &mut [[u32; 4]] = if count <= small.len() {
            &mut small[..count]
        } else {
            big.resize(count, [0u32; 4]);
            &mut big
        };
        for (span, h) in spans.iter_mut().zip(r.headers.iter()) {
            let name_at = (h.name.as_ptr() as usize - base) as u32;
            let value_at = (h.value.as_ptr() as usize - base) as u32;
            *span = [name_at, h.name.len() as u32, value_at, h.value.len() as u32];
        }
        let head = rd.split_to(n).freeze();
        // The map is filled where it ends up: a map built apart and then put in would be
        // moved in, and the response's own empty one dropped.
        let mut resp = Response::new(());
        let map = resp.headers_mut();
        // Room for the X-Request-ID the proxy echoes by default too: a map one field short
        // grows on that insert (a second allocation, every entry rehashed: 1.2k instructions
        // for a three-field head, as Go's and Python's servers send). A table sized for 4
        // has room for 6; reserving one more for every head would double the table for
        // heads of 6, 12... fields, and cost more time than the rare growth saves.
        map.reserve(count.max(4));
        // What the framing and reuse depend on, noted on the way rather than looked up after.
        let (mut close, mut keep_alive_token) = (false, false);
        // Transfer-Encoding: how many fields, and whether any says more than `chunked`.
        let (mut te_fields, mut other_coding, mut length) = (0u32, false, None);
        // Hop-by-hop fields belong to this connection alone (RFC 9110 §7.6.1): what this
        // codec needs of them is noted here, and they stay out of the response the client
        // is given, so `respond` finds nothing to strip (an origin's `Connection:
        // keep-alive` cost ~400 instructions a response to strip there). A 101 keeps them
        // all: they are its upgrade's.
        let tunnel = status == StatusCode::SWITCHING_PROTOCOLS;
        let mut lists_names = false;
        for &[name_at, name_len, value_at, value_len] in spans.iter() {
            let (name_at, value_at) = (name_at as usize, value_at as usize);
            let name = names.name(&head[name_at..name_at + name_len as usize])?;
            let bytes = head.slice(value_at..value_at + value_len as usize);
            // SAFETY: httparse, with the default config used above (no obsolete line
            // folding), admits in a value only tab, 0x20..=0x7e and 0x80..=0xff, which are
            // the bytes `HeaderValue` allows; it refused the head otherwise. hyper builds
            // its values from httparse's the same way. Checking again cost about 190
            // instructions a response.
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) };
            if name == header::CONNECTION {
                for t in connection_tokens(value.as_bytes()) {
                    let (c, k) = (
                        t.eq_ignore_ascii_case(b"close"),
                        t.eq_ignore_ascii_case(b"keep-alive"),
                    );
                    close |= c;
                    keep_alive_token |= k;
                    lists_names |= names_a_field(t);
                }
                if !tunnel {
                    continue;
                }
            } else if name == header::TRANSFER_ENCODING {
                te_fields += 1;
                other_coding |= !chunked_alone(&value);
                if !tunnel {
                    continue;
                }
            } else if name == header::CONTENT_LENGTH {
                let n = content_length(value.as_bytes())?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Protocol("conflicting content-length values"));
                }
                length = Some(n);
            } else if !tunnel && fixed_hop_by_hop(&name) {
                continue;
            }
            map.append(name, value);
        }
        let has_te = te_fields > 0;
        if !tunnel {
            if has_te && length.is_some() {
                // RFC 9112 §6.3: with both, Transfer-Encoding frames the body and
                // Content-Length must be ignored; passing it on would frame it wrongly.
                map.remove(header::CONTENT_LENGTH);
            }
            if lists_names {
                // Rare: Connection names other fields as hop-by-hop; they go too.
                drop_listed(map, &head, spans);
            }
        }
        let keep_alive = if version == Version::HTTP_10 {
            // Transfer-Encoding in HTTP/1.0 is faulty framing: the connection closes after
            // it (RFC 9112 §6.1).
            keep_alive_token && !close && !has_te
        } else {
            !close
        };
        let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
            if !upgrade {
                return Err(Error::Protocol(
                    "101 to a request that asked for no upgrade",
                ));
            }
            Framing::Upgraded
        } else if head_req || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
        {
            Framing::Length(0)
        } else if has_te {
            // Only `chunked` alone can be passed on: Transfer-Encoding is this connection's,
            // so the client is given the body with the chunking taken off and no field
            // saying how it was coded. A gzip (or any other coding) under or after the
            // chunks would reach the client as the body's bytes, and chunked twice (RFC
            // 9112 §6.1 forbids it) would leave one layer of chunks in the body. Refused as
            // the server's fault, as HAProxy does; nginx 1.22 passes them on, coding lost.
            if te_fields > 1 || other_coding {
                return Err(Error::Protocol("unsupported transfer coding in response"));
            }
            Framing::Chunked(Chunk::Size)
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            Framing::Eof
        };
        let keep_alive = keep_alive && !matches!(framing, Framing::Eof | Framing::Upgraded);
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        return Ok(Some(Head {
            resp,
            framing,
            keep_alive,
        }));
    }
}

/// Removes from `map` the fields that the head's Connection fields (at `spans` in `head`)
/// name. (`headers::strip_hop_by_hop` does the same on a map that still holds Connection;
/// here Connection never entered the map, so its values are read from the head.)
fn drop_listed(map: &mut HeaderMap, head: &[u8], spans: &[[u32; 4]]) {
    for &[name_at, name_len, value_at, value_len] in spans {
        let name = &head[name_at as usize..(name_at + name_len) as usize];
        if !name.eq_ignore_ascii_case(b"connection") {
            continue;
        }
        for n in listed_in_connection(&head[value_at as usize..(value_at + value_len) as usize]) {
            map.remove(n);
        }
    }
}

/// One Content-Length field's value: a number, or a list of the same number repeated.
fn content_length(v: &[u8]) -> Result<u64, Error> {
    let mut len = None;
    for item in v.split(|&b| b == b',') {
        let item = item.trim_ascii();
        if item.is_empty() || item.len() > 18 || !item.iter().all(u8::is_ascii_digit) {
            return Err(Error::Protocol("invalid content-length"));
        }
        let n = item.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if len.is_some_and(|l| l != n) {
            return Err(Error::Protocol("conflicting content-length values"));
        }
        len = Some(n);
    }
    len.ok_or(Error::Protocol("invalid content-length"))
}

/// How the response body is framed, and how far it has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked, at this step.
    Chunked(Chunk),
    /// Until the server closes.
    Eof,
    /// Switched protocols: no body; the connection belongs to the tunnel.
    Upgraded,
    /// Ended.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The trailer section is next.
    Trailers,
}

/// A server's response body, read from the connection it came on; the connection goes back
/// to its lease once the body has ended cleanly (see [`RespIn::take_reusable`]).
pub struct RespIn {
    framing: Framing,
    /// Whether the connection may carry another request once this body ends (and the
    /// request has gone out whole).
    reuse: bool,
    /// The rest of the request, when the server answered before it was sent whole.
    out: Option<Box<Out>>,
    conn: Option<Box<Conn>>,
}

/// The rest of a request whose server answered before it was sent whole, with the
/// connection it goes out on ([`RespIn::take_upload`]).
pub struct Upload {
    out: Box<Out>,
    conn: Box<Conn>,
    /// The connection may carry another request once this one is sent whole.
    reuse: bool,
}

impl Upload {
    /// Sends the rest of the request, giving up after `idle` without progress (a server
    /// that stopped reading what it had answered; a client too slow is cut off by its body's
    /// own limits). Returns the connection if it may carry another request.
    pub async fn finish(self, idle: std::time::Duration) -> Option<Box<Conn>> {
        let Upload {
            mut out,
            mut conn,
            reuse,
        } = self;
        loop {
            let mark = |o: &Out, c: &Conn| {
                let seg = c.segs.get(o.seg).map_or(0, |s| s.1.len());
                (o.at, o.seg, seg, c.wr.len(), c.segs.len())
            };
            let before = mark(&out, &conn);
            let step = std::future::poll_fn(|cx| match out.poll_send(&mut conn, None, cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                // Moved (written, or a frame taken from the client): the wait starts over.
                Poll::Pending if mark(&out, &conn) != before => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            });
            match tokio::time::timeout(idle, step).await {
                Ok(None) => {}
                Ok(Some(Ok(()))) => return conn.reusable().filter(|_| reuse),
                Ok(Some(Err(_))) | Err(_) => return None,
            }
        }
    }
}

impl RespIn {
    /// After the response has ended, the rest of the request if it is still going out:
    /// sent on by [`Upload::finish`], so that the client's body is taken to its end (its
    /// connection kept, not reset with the body unread) and this connection can be reused.
    pub fn take_upload(&mut self) -> Option<Upload> {
        if self.framing != Framing::Done || self.out.is_none() || self.conn.is_none() {
            return None;
        }
        Some(Upload {
            out: self.out.take()?,
            conn: self.conn.take()?,
            reuse: self.reuse,
        })
    }

    /// The connection, if the body ended cleanly and it may carry another request.
    pub fn take_reusable(&mut self) -> Option<Box<Conn>> {
        if self.framing == Framing::Done && self.reuse && self.out.is_none() {
            self.conn.take()?.reusable()
        } else {
            None
        }
    }

    /// Whether the rest of the body is short (at most `max` bytes, by Content-Length), not
    /// here yet, fits in the room left in the read buffer (with a byte to spare: see
    /// [`Conn::poll_fill`]), and the request has gone out
    /// whole: then it is worth reading before the head is handed on
    /// ([`RespIn::poll_short_rest`]). A rest that does not fit would move what was read to
    /// a larger buffer, a copy that streaming it never makes (−9 % CPU per 16 KiB response
    /// when every such body was awaited).
    pub fn short_rest_pending(&self, max: u64) -> bool {
        match (self.framing, &self.conn, &self.out) {
            (Framing::Length(left), Some(conn), None) => {
                // The rest (`left` less what is here) fits in the room left (capacity less
                // what is here), with a byte to spare, exactly when `left` < capacity.
                left <= max && (conn.rd.len() as u64) < left && left < conn.rd.capacity() as u64
            }
            _ => false,
        }
    }

    /// Body bytes read and not yet handed on.
    pub fn buffered(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.rd.len())
    }

    /// Reads until the rest of a Content-Length body is buffered. Also ready when it cannot
    /// come (the server closed or failed, or the connection was severed): the body's first
    /// poll finds that again and reports it.
    pub fn poll_short_rest(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Framing::Length(left), Some(conn)) = (self.framing, self.conn.as_mut()) else {
            return Poll::Ready(());
        };
        loop {
            let have = conn.rd.len() as u64;
            if have >= left {
                return Poll::Ready(());
            }
            match conn.poll_fill(cx, (left - have) as usize) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending if conn.poll_severed(cx) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The connection of a 101 response, for the tunnel.
    pub fn take_upgraded(&mut self) -> Option<Box<Conn>> {
        if self.framing == Framing::Upgraded {
            self.conn.take()
        } else {
            None
        }
    }

    /// Reads more from the server; the sever wakes a body that waits.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<Result<(), Error>> {
        let conn = self.conn.as_mut().ok_or(Error::Closed)?;
        match conn.poll_fill(cx, want.min(4 * READ_CHUNK as u64) as usize) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(Error::Closed)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::Io(e))),
            Poll::Pending => {
                if conn.poll_severed(cx) {
                    return Poll::Ready(Err(Error::Severed));
                }
                Poll::Pending
            }
        }
    }

    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.framing = Framing::Done;
        self.reuse = false;
        self.conn = None;
        self.out = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Sends more of the request, if the server answered before it was sent whole.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        let (Some(out), Some(conn)) = (self.out.as_mut(), self.conn.as_mut()) else {
            return Ok(());
        };
        match out.poll_send(conn, None, cx) {
            Poll::Ready(Ok(())) => self.out = None,
            Poll::Ready(Err(Error::RequestBody)) => return Err(Error::RequestBody),
            Poll::Ready(Err(_)) => {
                // The server stopped reading what it had already answered: its response
                // may still come whole, but the connection is done.
                self.out = None;
                self.reuse = false;
            }
            Poll::Pending => {}
        }
        Ok(())
    }

    /// The next step of a chunked body.
    fn step_chunked(&mut self, at: Chunk) -> Result<Step, Error> {
        let conn = self.conn.as_mut().ok_or(Error::Closed)?;
        let rd = &mut conn.rd;
        match at {
            Chunk::Size => {
                let Some(eol) = find_crlf(rd) else {
                    return too_long(rd.len()).map(|()| Step::More);
                };
                let line = &rd[..eol];
                let digits = line
                    .iter()
                    .position(|&b| b == b';' || b == b' ' || b == b'\t')
                    .map_or(line, |p| &line[..p]);
                if digits.is_empty() || digits.len() > 15 {
                    return Err(Error::Protocol("invalid chunk size"));
                }
                let mut size = 0u64;
                for &d in digits {
                    let v = (d as char)
                        .to_digit(16)
                        .ok_or(Error::Protocol("invalid chunk size"))?;
                    size = size * 16 + u64::from(v);
                }
                rd.advance(eol + 2);
                self.framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(Step::Again)
            }
            Chunk::Data(left) => {
                if rd.is_empty() {
                    return Ok(Step::More);
                }
                let k = left.min(rd.len() as u64) as usize;
                let d = rd.split_to(k).freeze();
                let left = left - k as u64;
                self.framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Step::Frame(Frame::data(d)))
            }
            Chunk::DataEnd => {
                if rd.len() < 2 {
                    return Ok(Step::More);
                }
                if &rd[..2] != b"\r\n" {
                    return Err(Error::Protocol("chunk data not followed by CRLF"));
                }
                rd.advance(2);
                self.framing = Framing::Chunked(Chunk::Size);
                Ok(Step::Again)
            }
            Chunk::Trailers => {
                // The trailer section ends with an empty line; with no trailers it is that
                // line alone.
                if rd.starts_with(b"\r\n") {
                    rd.advance(2);
                    self.framing = Framing::Done;
                    return Ok(Step::End);
                }
                let Some(end) = rd.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return too_long(rd.len()).map(|()| Step::More);
                };
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let fields = match httparse::parse_headers(&rd[..end + 4], &mut headers) {
                    Ok(httparse::Status::Complete((_, fields))) => fields,
                    _ => return Err(Error::Protocol("malformed trailers")),
                };
                let mut map = HeaderMap::with_capacity(fields.len());
                for h in fields.iter() {
                    let name = HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| Error::Protocol("invalid trailer name"))?;
                    let value = HeaderValue::from_bytes(h.value)
                        .map_err(|_| Error::Protocol("invalid trailer value"))?;
                    map.append(name, value);
                }
                rd.advance(end + 4);
                self.framing = Framing::Done;
                Ok(Step::Frame(Frame::trailers(map)))
            }
        }
    }
}

/// What a step through a chunked body came to.
enum Step {
    /// A frame to pass on.
    Frame(Frame<Bytes>),
    /// The body's end (no trailers).
    End,
    /// The framing moved on: step again.
    Again,
    /// More bytes are needed.
    More,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn too_long(have: usize) -> Result<(), Error> {
    if have > MAX_CHUNK_META {
        Err(Error::Protocol("chunk framing too long"))
    } else {
        Ok(())
    }
}

impl Body for RespIn {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Err(e) = this.poll_out(cx) {
            return this.fail(e);
        }
        loop {
            match this.framing {
                Framing::Done | Framing::Upgraded => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    let Some(conn) = this.conn.as_mut() else {
                        return this.fail(Error::Closed);
                    };
                    if !conn.rd.is_empty() {
                        let k = left.min(conn.rd.len() as u64) as usize;
                        let d = conn.rd.split_to(k).freeze();
                        let left = left - k as u64;
                        this.framing = if left == 0 {
                            Framing::Done
                        } else {
                            Framing::Length(left)
                        };
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                    if let Err(e) = ready!(this.poll_fill(cx, left)) {
                        return this.fail(e);
                    }
                }
                Framing::Eof => {
                    let Some(conn) = this.conn.as_mut() else {
                        return this.fail(Error::Closed);
                    };
                    if !conn.rd.is_empty() {
                        let d = conn.rd.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                    match ready!(this.poll_fill(cx, READ_CHUNK as u64)) {
                        Ok(()) => {}
                        Err(Error::Closed) => {
                            // The close is this body's end.
                            this.framing = Framing::Done;
                            this.conn = None;
                            return Poll::Ready(None);
                        }
                        Err(e) => return this.fail(e),
                    }
                }
                Framing::Chunked(at) => match this.step_chunked(at) {
                    Ok(Step::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(Step::End) => return Poll::Ready(None),
                    Ok(Step::Again) => {}
                    Ok(Step::More) => {
                        let want = match at {
                            Chunk::Data(left) => left,
                            _ => READ_CHUNK as u64,
                        };
                        if let Err(e) = ready!(this.poll_fill(cx, want)) {
                            return this.fail(e);
                        }
                    }
                    Err(e) => return this.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Done | Framing::Upgraded | Framing::Length(0)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done | Framing::Upgraded => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
