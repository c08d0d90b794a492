//! Serving one HTTP client connection: wait for its first bytes (bounded by `first_byte`)
//! and tell HTTP/1 from h2 by the connection preface, or complete the TLS handshake (bounded
//! by `handshake_timeout`) and take the protocol ALPN chose; then hand it to hyper and hold
//! it to its deadlines until it ends.
//!
//! hyper serves; [`super::watch`] decides when the connection has broken a deadline. An idle
//! connection, and any connection on drain, is shut down gracefully (HTTP/1 closes when no
//! request is in flight, h2 sends GOAWAY and lets open streams finish); a connection whose
//! request head is too slow or whose client stopped reading is cut at once. Nothing waits
//! unbounded: a graceful shutdown stays under the watchdog (and the hard stop) too.

use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::watch::{join, watch, ClientSocket, ConnWatch, Deadlines, Fired, Watched};
use super::{boxed_in_place, pinned_in_place, Control};
use crate::admission::ClientAddr;
use crate::proxy::cancel::cancelled;
use crate::proxy::http::{ConnCtx, HttpRoute, Scheme};
use crate::proxy::Rejection;
use crate::tls::Alpn;

/// How long a draining HTTP/1 connection must be quiet before it is closed: longer than a
/// request already sent by the client takes to arrive (the reset-on-reload race).
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// How long an idle connection gets to finish a graceful close before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long an HTTP/1 connection with nothing in flight keeps its hyper connection (with
/// its read and write buffers and the slot for a request future, about 30 KiB) before it
/// is parked: hyper is let go without closing the socket, and the connection waits for
/// its client's next bytes holding no buffer at all. A client that speaks again gets a
/// fresh hyper connection on the same socket. Long enough that a busy keep-alive
/// connection never parks; short enough that a crowd of idle ones costs little.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// The h2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a new connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// Why a connection sent no request.
enum Silent {
    /// Nothing within `first_byte`.
    Timeout,
    /// Closed (or failed) before a byte.
    Closed,
}

/// Bytes read from a plain connection before its protocol is known (a small request's
/// whole head, usually). Small, because a connection waiting for its first byte holds this
/// buffer; what a full read leaves is read on at once ([`read_on`]), hyper reads the rest.
const FIRST_READ: usize = 1024;

/// Reads the first bytes and tells h2's preface from HTTP/1; returns them, for hyper to
/// read first (through [`Watched::unread`]). Reading rather than peeking: a peek left the
/// bytes in the socket for hyper's own read to fetch again, a system call more on every
/// connection.
async fn sniff(stream: &mut TcpStream, limit: Duration) -> Result<(Proto, Bytes), Silent> {
    let deadline = Instant::now() + limit;
    let mut buf = bytes::BytesMut::with_capacity(FIRST_READ);
    // Without asking the runtime first: the first read of a connection an HTTP listener
    // accepted finds the request at once instead of waiting a turn of the event loop.
    let mut first = Some(crate::proxy::sock::recv_now(stream, &mut buf));
    loop {
        let read = match first.take() {
            Some(r) if !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) => r,
            _ => match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Err(_) => return Err(Silent::Timeout),
                Ok(r) => r,
            },
        };
        match read {
            Err(_) | Ok(0) => return Err(Silent::Closed),
            Ok(_) => {}
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            if buf.len() >= FIRST_READ {
                read_on(stream, &mut buf);
            }
            return Ok((Proto::H1, buf.freeze()));
        }
        if n == H2_PREFACE.len() {
            return Ok((Proto::H2, buf.freeze()));
        }
        // A prefix of the preface so far: the next read waits for more.
    }
}

/// What a full first read may have left in the socket is read with it, up to this many
/// bytes in all: hyper's first read buffer.
const FIRST_READ_ON: usize = 8 * 1024;

/// After a first read that filled [`FIRST_READ`]: reads, without waiting, what else has
/// come (a body, a larger head), so that hyper's first parse has it with the head. A body
/// that came with its head then goes to the server in the head's write, as on a
/// keep-alive connection's later requests, instead of in a write and a segment of its own.
/// Reads like [`sniff`]'s first read: past the runtime while it knows of no bytes, through
/// it otherwise. A read that finds nothing, the end or an error leaves `buf` as it was, and
/// hyper's own read meets whatever comes next.
fn read_on(stream: &TcpStream, buf: &mut bytes::BytesMut) {
    buf.reserve(FIRST_READ_ON.saturating_sub(buf.len()));
    if let Err(e) = crate::proxy::sock::recv_now(stream, buf) {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            let _ = stream.try_read_buf(buf);
        }
    }
}

/// Serves one client connection to its end: TLS first if the listener terminates it, then
/// HTTP/1.1 or h2 (by ALPN over TLS, by the preface in plain text).
///
/// A plain HTTP/1 connection that parks (see [`PARK_AFTER`]) waits here, in the
/// connection's own task, holding only what [`Parked`] keeps: the serving itself is boxed
/// and its box is freed for as long as the connection is parked. `keep` (the connection's
/// permits and its client's hold) is dropped when the connection ends.
pub(super) fn run(
    stream: TcpStream,
    client: ClientAddr,
    route: Arc<ArcSwap<HttpRoute>>,
    ctl: Control,
    keep: impl Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let active = {
        let cur = route.load();
        cur.metrics.connections.inc();
        cur.metrics.active.inc();
        cur.metrics.active.clone()
    };
    // Boxed before the task's future is built, so that the task does not keep room for the
    // arguments it hands on: a future keeps what it captures for its whole life.
    let first = pinned_in_place(|| serve(stream, client, route, ctl.clone()));
    async move {
        between_bursts(first.await, &ctl).await;
        active.dec();
        drop(keep);
    }
}

/// Holds a parked connection between bursts of requests and serves each burst, until the
/// connection ends. Each burst is boxed, so that what waits is only [`Parked`] and its wait.
#[allow(clippy::manual_async_fn)] // an `async fn` would keep `next` twice
fn between_bursts<'a, T>(
    mut next: Option<Parked<T>>,
    ctl: &'a Control,
) -> impl Future<Output = ()> + Send + 'a
where
    T: ClientSocket + Send + 'static,
{
    async move {
        // Waited on in place (`as_mut`), not moved out, so that the future keeps one slot
        // for the parked connection, not two.
        while let Some(p) = next.as_mut() {
            if let Some(end) = p.wait(ctl).await {
                ended(&p.cx, end);
                return;
            }
            let Some(p) = next.take() else { return };
            next = pinned_in_place(|| p.burst(ctl)).await;
        }
    }
}

/// Serves a connection until it ends, or until it parks (plain HTTP/1 only: a parked TLS
/// connection waits inside, its TLS session being part of what is kept).
async fn serve(
    stream: TcpStream,
    client: ClientAddr,
    route: Arc<ArcSwap<HttpRoute>>,
    ctl: Control,
) -> Option<Parked<TcpStream>> {
    let ctl = &ctl;
    let cur = route.load_full();
    match &cur.tls {
        None => {
            let mut stream = stream;
            let sniffed = tokio::select! {
                p = sniff(&mut stream, cur.listener.timeouts.first_byte) => p,
                _ = cancelled(&ctl.hard_stop) => Err(Silent::Closed),
            };
            match sniffed {
                Ok((proto, first)) => {
                    let conn = Conn {
                        client,
                        proto,
                        scheme: Scheme::Http,
                        client_cert: None,
                        fd: stream.as_raw_fd(),
                        first,
                    };
                    serve_http(stream, conn, route, &cur, ctl).await
                }
                Err(Silent::Timeout) => {
                    cur.metrics.rejected(Rejection::FirstByteTimeout);
                    tracing::debug!(listener = %cur.listener.name, client = %client.addr, "no request within first_byte; closed");
                    None
                }
                Err(Silent::Closed) => None,
            }
        }
        Some((tls, tls_metrics)) => {
            // Boxed, handshake and all: a TLS stream and its handshake are large, and
            // inline they would size every plain connection's task too.
            pinned_in_place(|| serve_tls(stream, client, tls, tls_metrics, route, &cur, ctl)).await;
            None
        }
    }
}

/// The TLS side of [`serve`]: the handshake (bounded by `handshake_timeout`), then HTTP as
/// ALPN chose.
async fn serve_tls(
    stream: TcpStream,
    client: ClientAddr,
    tls: &crate::tls::ServerTls,
    tls_metrics: &crate::metrics::TlsListenerMetrics,
    route: Arc<ArcSwap<HttpRoute>>,
    cur: &HttpRoute,
    ctl: &Control,
) {
    let fd = stream.as_raw_fd();
    let handshake = tokio::select! {
        h = crate::tls::accept(stream, tls.server_config(), tls.handshake_timeout()) => h,
        _ = cancelled(&ctl.hard_stop) => return,
    };
    match handshake {
        Ok((stream, negotiated)) => {
            // ALPN decides; a client that offered none speaks HTTP/1.1.
            let proto = match negotiated.alpn {
                Alpn::H2 => Proto::H2,
                _ => Proto::H1,
            };
            let conn = Conn {
                client,
                proto,
                scheme: Scheme::Https,
                client_cert: negotiated
                    .client_cert
                    .and_then(|c| HeaderValue::from_str(&c).ok()),
                fd,
                first: Bytes::new(),
            };
            between_bursts(serve_http(stream, conn, route, cur, ctl).await, ctl).await;
        }
        Err(e) => {
            // Counted, and logged at debug only: a flood of bad handshakes must not flood
            // the log.
            tls_metrics.count(e.kind());
            tracing::debug!(listener = %cur.listener.name, client = %client.addr, reason = e.reason(), sni = ?e.sni(), "TLS handshake failed");
        }
    }
}

/// What is known of a connection once its protocol is settled.
struct Conn {
    client: ClientAddr,
    proto: Proto,
    scheme: Scheme,
    client_cert: Option<HeaderValue>,
    /// The client's TCP socket (under TLS, the one beneath it).
    fd: RawFd,
    /// Bytes already read from the connection, which hyper reads first.
    first: Bytes,
}

/// Serves HTTP on a connection (plain or TLS) under its deadlines, until it ends or (HTTP/1)
/// parks.
async fn serve_http<T>(
    io: T,
    conn: Conn,
    route: Arc<ArcSwap<HttpRoute>>,
    cur: &HttpRoute,
    ctl: &Control,
) -> Option<Parked<T>>
where
    T: ClientSocket + Send + 'static,
{
    let t = cur.listener.timeouts;
    let watch_state = ConnWatch::new(conn.proto == Proto::H1);
    // Plain HTTP/1 only (see `CloseWatch`); hyper's connection is then built without its
    // own look (`serve_h1`).
    let watch_state = Arc::new(if conn.proto == Proto::H1 && conn.scheme == Scheme::Http {
        watch_state.with_close_watch(conn.fd)
    } else {
        watch_state
    });
    let cx = Arc::new(ConnCtx {
        route,
        client: conn.client,
        client_key: Default::default(),
        sender: crate::proxy::headers::Sender::new(conn.client.sender().ip(), conn.scheme.as_str()),
        h2: conn.proto == Proto::H2,
        ctl: ctl.clone(),
        draining: AtomicBool::new(false),
        watch: watch_state.clone(),
        client_cert: conn.client_cert,
        response_timer: Default::default(),
        // See the field: HTTP/1 only.
        client_fd: (conn.proto == Proto::H1).then_some(conn.fd),
    });
    let mut io = Watched::new(io, watch_state);
    if !conn.first.is_empty() {
        // The head began with these bytes: its read deadline runs from here.
        io.unread = conn.first;
        io.watch.read_some();
    }
    let d = Deadlines {
        idle: t.keepalive_idle,
        head: t.header_read,
        stall: t.send_stall,
    };
    match conn.proto {
        Proto::H1 => {
            let first = Parked {
                io: TokioIo::new(io),
                cx,
                d,
            };
            first.burst(ctl).await
        }
        Proto::H2 => {
            let svc_cx = cx.clone();
            // Each stream's future boxed: hyper spawns every h2 stream as a task, and the
            // spawn moves the stream's future several times on its way into the task's cell
            // (3 KB each time, inline); a box is moved as a pointer. (HTTP/1 keeps the future
            // inline: hyper holds it in one box per connection, reused by every request.)
            let svc = service_fn(move |req| {
                let cx = svc_cx.clone();
                pinned_in_place(move || crate::proxy::http::serve(req, cx))
            });
            // Boxed, as the HTTP/1 one is: inline, it would size every connection's task.
            let mut c = pinned_in_place(|| cur.h2.serve_connection(TokioIo::new(io), svc));
            let end = pinned_in_place(|| {
                drive(c.as_mut(), |c| c.graceful_shutdown(), &cx, ctl, d, false)
            })
            .await;
            ended(&cx, end);
            None
        }
    }
}

/// Counts and logs how a connection ended.
fn ended(cx: &ConnCtx, end: End) {
    let peer = cx.client.addr;
    match end {
        End::Done(Ok(())) | End::Closed | End::Parked => {}
        End::Done(Err(e)) => {
            if let Some(r) = rejection_of(&e) {
                cx.route.load().metrics.rejected(r);
            }
            tracing::debug!(client = %peer, error = %e, "http connection ended with an error");
        }
        End::Cut(why) => {
            cx.route.load().metrics.rejected(why);
            tracing::debug!(client = %peer, reason = why.as_str(), "http connection cut off");
        }
    }
}

/// What is kept of an HTTP/1 connection between bursts of requests: the socket (with any
/// bytes read ahead), the connection's context and its deadlines. No hyper connection, no
/// buffer.
pub(super) struct Parked<T> {
    io: TokioIo<Watched<T>>,
    cx: Arc<ConnCtx>,
    d: Deadlines,
}

impl<T> Parked<T>
where
    T: ClientSocket + Send + 'static,
{
    /// Serves a burst of requests (a connection's first, or the one that woke it from a
    /// park) until the connection parks again or ends.
    #[allow(clippy::manual_async_fn)] // deliberate, as said inside
    fn burst(self, ctl: &Control) -> impl Future<Output = Option<Parked<T>>> + '_ {
        // Not an `async fn`: that would keep `self` twice in its state (the argument and
        // its binding).
        async move {
            let cur = self.cx.route.load_full();
            match serve_h1(self.io, &cur, &self.cx, ctl, self.d).await {
                Ok(io) => {
                    self.cx.response_timer.clear();
                    Some(Parked { io, ..self })
                }
                Err(end) => {
                    ended(&self.cx, end);
                    None
                }
            }
        }
    }

    /// Waits, counted as parked, until the client speaks again (`None`: resume) or the
    /// connection ends: idle past `keepalive_idle` (closed gracefully), closed by the
    /// client, quiet for [`DRAIN_QUIET`] once the listener drains, or the hard stop.
    #[allow(clippy::manual_async_fn)] // deliberate, as said inside
    fn wait<'a>(&'a mut self, ctl: &'a Control) -> impl Future<Output = Option<End>> + 'a {
        // Not an `async fn`, which would keep its arguments twice: this future is what a
        // parked connection's task holds.
        async move {
            // The gauge's handle only (the listener's metrics are large).
            let gauge = self.cx.route.load().metrics.parked.clone();
            gauge.inc();
            let idle_ms = self.d.idle.as_millis() as u64;
            let mut until = self.cx.watch.idle_since_ms().saturating_add(idle_ms);
            let mut draining = false;
            // Small: the rest of a request stays in the socket for hyper to read.
            let mut first = [0u8; 32];
            let io = self.io.inner_mut();
            let end = loop {
                let left = Duration::from_millis(until.saturating_sub(crate::backend::now_ms()));
                // One token waited on at a time: the hard stop only ever follows the drain.
                let signal = if draining { &ctl.hard_stop } else { &ctl.drain };
                let read = tokio::select! {
                    r = io.io.read(&mut first) => r,
                    _ = tokio::time::sleep(left) => {
                        // Idle too long (or quiet on drain): close as hyper would have.
                        let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
                        break Some(End::Closed);
                    }
                    _ = cancelled(signal) => {
                        if draining {
                            break Some(End::Closed);
                        }
                        // As for a connection hyper holds: whatever arrives in a moment is
                        // answered (with `Connection: close`), then the connection closes.
                        draining = true;
                        until = until.min(crate::backend::now_ms() + DRAIN_QUIET.as_millis() as u64);
                        continue;
                    }
                };
                break match read {
                    Ok(0) | Err(_) => Some(End::Closed),
                    Ok(n) => {
                        io.unread = Bytes::copy_from_slice(&first[..n]);
                        io.watch.read_some();
                        None
                    }
                };
            };
            gauge.dec();
            end
        }
    }
}

/// Serves HTTP/1 on a connection with a hyper connection until it ends (`Err`) or has been
/// idle for [`PARK_AFTER`] and parks (`Ok`, the socket handed back).
async fn serve_h1<T>(
    mut io: TokioIo<Watched<T>>,
    cur: &HttpRoute,
    cx: &Arc<ConnCtx>,
    ctl: &Control,
    d: Deadlines,
) -> Result<TokioIo<Watched<T>>, End>
where
    T: ClientSocket + Send + 'static,
{
    let svc_cx = cx.clone();
    let svc = service_fn(move |req| crate::proxy::http::serve(req, svc_cx.clone()));
    // Parking only pays where the connection would otherwise stay open longer.
    let park = d.idle > PARK_AFTER;
    // Whoever looks for a client that leaves mid-request: the watchdog, or else hyper.
    let h1 = if cx.watch.watches_close() {
        &cur.h1_watched
    } else {
        &cur.h1
    };
    loop {
        // Boxed: dropping it at a park gives back all of hyper's memory, not just its
        // buffers.
        let mut c = boxed_in_place(|| h1.serve_connection(io, svc.clone()).with_upgrades());
        // The watchdog boxed too: only the socket outlives this burst.
        match pinned_in_place(|| {
            drive(
                Pin::new(&mut *c),
                |c| c.graceful_shutdown(),
                cx,
                ctl,
                d,
                park,
            )
        })
        .await
        {
            End::Parked => {}
            end => return Err(end),
        }
        // Out of the box first, so that its memory is given back now; hyper's read buffer
        // goes too unless it holds bytes.
        match unbox(c).into_parts() {
            Some(parts) => {
                io = parts.io;
                if parts.read_buf.is_empty() {
                    return Ok(io);
                }
                // hyper had read ahead: a fresh hyper connection gets those bytes first,
                // at once.
                let w = io.inner_mut();
                w.unread = join(parts.read_buf, std::mem::take(&mut w.unread));
            }
            None => return Err(End::Closed),
        }
    }
}

/// The value out of its box, the box freed on return.
#[allow(clippy::boxed_local)] // the point: take the box and free it here
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// The refusal hyper made itself (it has already answered 431 or 400), if any.
fn rejection_of(e: &hyper::Error) -> Option<Rejection> {
    if e.is_parse_too_large() {
        Some(Rejection::HeaderTooLarge)
    } else if e.is_parse() || e.is_parse_status() {
        Some(Rejection::BadRequest)
    } else if e.is_timeout() {
        Some(Rejection::HeaderTimeout)
    } else {
        None
    }
}

/// How a connection ended.
enum End {
    /// hyper finished it (cleanly or with an error).
    Done(hyper::Result<()>),
    /// Closed by us after a graceful shutdown, or at the hard stop.
    Closed,
    /// Cut off for breaking a deadline.
    Cut(Rejection),
    /// HTTP/1 idle long enough to park: hyper has let go without closing the socket.
    Parked,
}

impl From<Fired> for End {
    fn from(f: Fired) -> End {
        match f {
            Fired::Idle => End::Closed,
            Fired::HeadTimeout => End::Cut(Rejection::HeaderTimeout),
            Fired::SendStall => End::Cut(Rejection::SendStall),
            // Counted as the request's abort when hyper's connection drops it.
            Fired::ClientGone => End::Closed,
        }
    }
}

/// Runs a hyper connection under its watchdog, the drain signal and the hard stop. With
/// `park`, an HTTP/1 connection idle for [`PARK_AFTER`] ends as [`End::Parked`].
async fn drive<C>(
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    cx: &ConnCtx,
    ctl: &Control,
    d: Deadlines,
    park: bool,
) -> End
where
    C: Future<Output = hyper::Result<()>>,
{
    let w = &*cx.watch;
    let first = if park {
        Deadlines {
            idle: PARK_AFTER,
            ..d
        }
    } else {
        d
    };
    // Biased: polled in this order on every wake of the connection, without drawing a
    // random start. Only hyper is ready often, and then the connection is done.
    let fired = tokio::select! {
        biased;
        r = conn.as_mut() => return End::Done(r),
        _ = cancelled(&ctl.drain) => None,
        f = watch(w, first) => Some(f),
    };
    match fired {
        Some(Fired::Idle) if park => {
            // `Idle` means nothing in flight and no head begun (the watch checked both just
            // now, in this task): hyper closes an idle connection at once on a graceful
            // shutdown, holding no request bytes. Its shutdown of the socket is skipped, so
            // the socket outlives it.
            w.set_parking(true);
            graceful(conn.as_mut());
            let end = tokio::select! {
                biased;
                r = conn.as_mut() => match r {
                    Ok(()) => End::Parked,
                    Err(e) => End::Done(Err(e)),
                },
                _ = tokio::time::sleep(CLOSE_GRACE) => End::Closed,
                _ = cancelled(&ctl.hard_stop) => End::Closed,
            };
            w.set_parking(false);
            end
        }
        Some(Fired::Idle) => {
            // Nothing in flight: HTTP/1 closes at once, h2 says GOAWAY.
            graceful(conn.as_mut());
            let bound = Deadlines {
                idle: CLOSE_GRACE,
                ..d
            };
            tokio::select! {
                // hyper first: the connection has been idle for longer than the bound, so
                // the watch fires at once and would cut the graceful close short.
                biased;
                r = conn.as_mut() => End::Done(r),
                f = watch(w, bound) => match f { Fired::Idle => End::Closed, f => f.into() },
                _ = cancelled(&ctl.hard_stop) => End::Closed,
            }
        }
        Some(f) => f.into(),
        None => {
            if !cx.h2 {
                // Draining an HTTP/1 connection. hyper's graceful shutdown closes an idle one
                // at once, even with a request already on its way (or accepted just before
                // the drain and not read yet): that request would fail. Instead answer
                // whatever arrives with `Connection: close`, and close once the connection
                // has been quiet for a moment.
                cx.draining.store(true, Ordering::Relaxed);
                let quiet = Deadlines {
                    idle: d.idle.min(DRAIN_QUIET),
                    ..d
                };
                tokio::select! {
                    r = conn.as_mut() => return End::Done(r),
                    f = watch(w, quiet) => if f != Fired::Idle { return f.into() },
                    _ = cancelled(&ctl.hard_stop) => return End::Closed,
                }
            }
            // h1: closes when idle, else after the response in progress (Connection:
            // close); h2: GOAWAY, in-flight streams finish. Stalls are still cut.
            graceful(conn.as_mut());
            let no_idle = Deadlines {
                idle: Duration::from_secs(u32::MAX as u64),
                ..d
            };
            tokio::select! {
                r = conn.as_mut() => End::Done(r),
                f = watch(w, no_idle) => f.into(),
                _ = cancelled(&ctl.hard_stop) => End::Closed,
            }
        }
    }
}
