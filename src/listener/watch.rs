//! The watchdog of one HTTP client connection: when it is idle, when a request head is
//! too slow, and when the client has stopped reading.
//!
//! "Idle" means no request in flight (DESIGN.md rule 2): the request path counts requests
//! in and out ([`ConnWatch::request_started`], [`ConnWatch::request_ended`]), so h2 pings,
//! window updates and settings never keep a connection open, and a long download is never
//! idle. The socket wrapper [`Watched`] notes when a new request head starts to arrive (an
//! HTTP/1 read while nothing is in flight) and when a write has been blocked since (the
//! client's receive window is shut). [`watch`] sleeps until the next deadline those allow,
//! one timer per connection, re-armed only when it fires.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::backend::now_ms;
use crate::proxy::cancel::Mark;

/// Activity of one client connection, in process milliseconds (`backend::now_ms`).
pub struct ConnWatch {
    inflight: AtomicU32,
    /// When the in-flight count last fell to zero (or the connection began).
    idle_since: AtomicU64,
    /// When the first byte of a request head arrived while nothing was in flight; 0: none.
    head_since: AtomicU64,
    /// When a write to the client first found its buffer full, unless one went through
    /// since; 0: not blocked.
    blocked_since: AtomicU64,
    /// Whether head timing applies (HTTP/1; h2 reads control frames while idle).
    h1: bool,
    /// Set while hyper is let go of an idle HTTP/1 connection that is to be parked: its
    /// shutdown of the socket is then skipped, so the socket outlives the hyper connection.
    parking: AtomicBool,
    /// Notices a client that leaves while its request is in flight (plain HTTP/1: see
    /// [`CloseWatch`]).
    close: Option<CloseWatch>,
}

impl ConnWatch {
    /// A connection whose first bytes have just arrived.
    pub fn new(h1: bool) -> Self {
        let now = now_ms();
        ConnWatch {
            inflight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            head_since: AtomicU64::new(if h1 { now } else { 0 }),
            blocked_since: AtomicU64::new(0),
            h1,
            parking: AtomicBool::new(false),
            close: None,
        }
    }

    /// A plain HTTP/1 connection on socket `fd`, whose hyper connection does not read while
    /// a request is in flight (`half_close`): the watchdog notices its client leaving
    /// instead (see [`CloseWatch`]).
    pub fn with_close_watch(mut self, fd: RawFd) -> Self {
        let flag = Arc::new(Mark::default());
        self.close = Some(CloseWatch {
            fd,
            waker: Waker::from(flag.clone()),
            flag,
        });
        self
    }

    /// Whether the watchdog looks for a client that leaves mid-request ([`CloseWatch`]), so
    /// that hyper need not.
    pub fn watches_close(&self) -> bool {
        self.close.is_some()
    }

    /// Whether the next shutdown of the socket is to be skipped (see [`Watched`]).
    pub fn set_parking(&self, on: bool) {
        self.parking.store(on, Ordering::Relaxed);
    }

    /// When the connection last became idle.
    pub fn idle_since_ms(&self) -> u64 {
        self.idle_since.load(Ordering::Relaxed)
    }

    /// A request is being served.
    #[inline]
    pub fn request_started(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        if self.h1 {
            self.head_since.store(0, Ordering::Relaxed);
        }
    }

    /// A response is over (or was abandoned).
    #[inline]
    pub fn request_ended(&self) {
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    #[inline]
    pub(super) fn read_some(&self) {
        if self.h1
            && self.head_since.load(Ordering::Relaxed) == 0
            && self.inflight.load(Ordering::Acquire) == 0
        {
            self.head_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    #[inline]
    fn write_blocked(&self) {
        if self.blocked_since.load(Ordering::Relaxed) == 0 {
            self.blocked_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    #[inline]
    fn wrote(&self) {
        if self.blocked_since.load(Ordering::Relaxed) != 0 {
            self.blocked_since.store(0, Ordering::Relaxed);
        }
    }
}

/// How an HTTP/1 connection learns that its client left while a request is in flight.
///
/// hyper can look for that itself: with a request in flight it polls a read of the socket,
/// to see an end of stream. But that read first reserves room in its read buffer, and the
/// head it has just parsed still shares that buffer (the request's URI and field values
/// are slices of it), so every request cost a fresh 8 KiB buffer and the read that found
/// nothing: about 570 instructions, 3 % of a small proxied request. Plain HTTP/1
/// connections therefore run hyper with `half_close` (the route's `h1_watched`), which
/// skips that read, and are
/// watched this way instead:
/// - each time hyper has read bytes, the socket's read readiness is polled with a waker of
///   this watch (no system call: the read just drained the socket, so the readiness is
///   clear and the poll only registers the waker). hyper's next read registers its own,
///   so this one stays only while hyper reads nothing: while a request is in flight;
/// - an end of stream, a reset or new bytes wake it: it notes the stir and wakes the
///   connection's task, whose watchdog then peeks at the socket (`MSG_PEEK`): an end of
///   stream or an error with a request in flight is a client that left, as hyper would
///   have found it. Bytes (a pipelined request) are not: hyper reads them in their turn.
///
/// TLS connections keep hyper's own look (a peek of the TCP socket cannot tell a TLS
/// close from data), and so do h2 connections (h2 reads all the time).
pub struct CloseWatch {
    fd: RawFd,
    flag: Arc<Mark>,
    /// Wakes `flag`: the waker the socket's readiness is polled with.
    waker: Waker,
}

impl CloseWatch {
    /// Whether the client has gone: the socket stirred since the last look, a request is
    /// in flight, and a peek finds the end of the stream or an error.
    fn client_gone(&self, inflight: bool) -> bool {
        // Most wakes pay one load here. The mark is set by the readiness waker, which the
        // runtime's I/O driver may wake from another thread (in a test).
        if !self.flag.take() {
            return false;
        }
        inflight && peek_closed(self.fd)
    }
}

/// Whether the socket `fd` has reached the end of its stream, or failed: a peek that finds
/// nothing to read but the end (or an error other than "nothing yet").
fn peek_closed(fd: RawFd) -> bool {
    let mut b = 0u8;
    // SAFETY: recv(2) writes at most one byte into `b`, which lives across the call; on an
    // fd that is not a socket (or closed) it fails, and that reads as closed.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(
            io::Error::last_os_error().kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    }
}

/// A client's stream, as a watched connection reads and writes it.
pub trait ClientSocket: AsyncRead + AsyncWrite + Unpin {
    /// Polls the read readiness with `cx`'s waker, to be woken by what arrives next, for a
    /// [`CloseWatch`]. Does nothing where readiness cannot be polled without reading.
    fn hint_readable(&self, _cx: &mut Context<'_>) {}

    /// Reads into `buf`: the stream's `poll_read`, or a cheaper way to the same result.
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_read(cx, buf)
    }

    /// Writes some of `data`: the stream's `poll_write`, or a cheaper way to the same
    /// result.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, data)
    }
}

/// Plain TCP reads and writes without glibc's cancellation wrapper (`crate::proxy::sock`).
impl ClientSocket for tokio::net::TcpStream {
    fn hint_readable(&self, cx: &mut Context<'_>) {
        let _ = self.poll_read_ready(cx);
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        crate::proxy::sock::poll_recv(self, cx, buf)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        crate::proxy::sock::poll_send(self, cx, data)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientSocket for tokio_rustls::server::TlsStream<S> {}

/// The deadlines a connection is held to.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// No request in flight for this long: close.
    pub idle: Duration,
    /// A request head (HTTP/1) not complete this long after its first byte: close.
    pub head: Duration,
    /// A write blocked this long: the client stopped reading; cut it off.
    pub stall: Duration,
}

/// Why [`watch`] fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fired {
    /// No request in flight for `idle`.
    Idle,
    /// A request head took longer than `head`.
    HeadTimeout,
    /// The client read nothing for `stall` while a response waited.
    SendStall,
    /// The client closed (or reset) the connection with a request in flight.
    ClientGone,
}

/// Resolves when the connection breaks one of its deadlines.
pub async fn watch(w: &ConnWatch, d: Deadlines) -> Fired {
    let ms = |d: Duration| d.as_millis() as u64;
    let (idle, head, stall) = (ms(d.idle), ms(d.head), ms(d.stall));
    loop {
        let now = now_ms();
        // With nothing pending, look again within the shortest deadline: a stall or a head
        // that starts now is then caught within twice its limit at worst.
        let mut next = now + idle.min(head).min(stall);
        let blocked = w.blocked_since.load(Ordering::Relaxed);
        if blocked != 0 {
            if now.saturating_sub(blocked) >= stall {
                return Fired::SendStall;
            }
            next = next.min(blocked + stall);
        }
        if w.inflight() == 0 {
            let head_since = w.head_since.load(Ordering::Relaxed);
            if head_since != 0 {
                if now.saturating_sub(head_since) >= head {
                    return Fired::HeadTimeout;
                }
                next = next.min(head_since + head);
            } else {
                let since = w.idle_since.load(Ordering::Relaxed);
                if now.saturating_sub(since) >= idle {
                    return Fired::Idle;
                }
                next = next.min(since + idle);
            }
        }
        let snooze = Snooze::new(Duration::from_millis(next.saturating_sub(now).max(1)));
        let mut snooze = std::pin::pin!(snooze);
        let gone = std::future::poll_fn(|cx| {
            // On every wake of the connection: one load while nothing stirred.
            if w.close
                .as_ref()
                .is_some_and(|c| c.client_gone(w.inflight() > 0))
            {
                return Poll::Ready(true);
            }
            std::future::Future::poll(snooze.as_mut(), cx).map(|()| false)
        })
        .await;
        if gone {
            return Fired::ClientGone;
        }
    }
}

pin_project_lite::pin_project! {
    /// A sleep that, once its first poll has armed the timer, is polled again only after the
    /// timer fired. The watchdog sits in a `select!` with the connection, which every I/O
    /// event wakes, a few times per request: polling an armed sleep re-registers the waker
    /// each time, where checking whether it fired is one load. Must be polled from one task
    /// (as a `select!` branch is): the timer wakes the task that armed it.
    pub(crate) struct Snooze {
        #[pin]
        sleep: tokio::time::Sleep,
        armed: bool,
    }
}

impl Snooze {
    /// A sleep of `d`, armed by its first poll.
    pub(crate) fn new(d: Duration) -> Self {
        Snooze {
            sleep: tokio::time::sleep(d),
            armed: false,
        }
    }
}

impl std::future::Future for Snooze {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if *this.armed && !this.sleep.is_elapsed() {
            return Poll::Pending;
        }
        // A sleep polled when the task has spent its scheduling budget returns Pending
        // before it arms its timer: armed then, it would never fire. Only a poll made with
        // budget left arms it.
        let arms = tokio::task::coop::has_budget_remaining();
        let r = this.sleep.poll(cx);
        *this.armed |= arms;
        r
    }
}

/// A client socket that reports reads and blocked writes to its [`ConnWatch`].
pub struct Watched<T> {
    /// The connection.
    pub io: T,
    /// What it reports to.
    pub watch: Arc<ConnWatch>,
    /// Bytes already taken from `io` that the next reads return first: what a parked
    /// connection read to learn that its client spoke again, or what hyper had buffered
    /// when it was let go.
    pub unread: Bytes,
}

/// `a` then `b`, copying only when both hold bytes.
pub fn join(a: Bytes, b: Bytes) -> Bytes {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a,
        (true, false) => b,
        (false, false) => {
            let mut v = Vec::with_capacity(a.len() + b.len());
            v.extend_from_slice(&a);
            v.extend_from_slice(&b);
            v.into()
        }
    }
}

impl<T> Watched<T> {
    /// `io` reporting to `watch`.
    pub fn new(io: T, watch: Arc<ConnWatch>) -> Self {
        Watched {
            io,
            watch,
            unread: Bytes::new(),
        }
    }
}

impl<T: ClientSocket> Watched<T> {
    /// After hyper has read bytes: watch the socket for what comes next, in case hyper
    /// reads nothing more for a while (see [`CloseWatch`]).
    #[inline]
    fn arm(&self, cx: &mut Context<'_>) {
        if let Some(c) = &self.watch.close {
            c.flag.register(cx.waker());
            self.io.hint_readable(&mut Context::from_waker(&c.waker));
        }
    }
}

impl<T: ClientSocket> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() && buf.remaining() > 0 {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            if self.unread.is_empty() {
                // Emptied, a `Bytes` still holds its whole buffer: let it go now rather
                // than for the rest of the connection's life.
                self.unread = Bytes::new();
                self.arm(cx);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = self.io.poll_recv(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.read_some();
            self.arm(cx);
        }
        r
    }
}

/// Writes of at most this many bytes in all are sent from one buffer when they come in
/// more than one slice.
const GATHER: usize = 4096;

/// `bufs` copied into `out`, when there are two or more of them and they fit.
///
/// hyper hands a response over as its head and its body: two slices or more. For a socket,
/// `writev` of them costs more in the kernel than `send` of the same bytes in one piece: the
/// iovec array is copied in, the write takes the generic file path, and the bytes are
/// copied into the socket's buffer one slice at a time. Copying a few hundred bytes here
/// costs less (measured: about 1 % less CPU per small proxied request, for 0.13k more
/// user-space instructions). Larger writes go out as they are: the copy would grow with
/// them, the saving would not.
fn gather<'a>(
    bufs: &[io::IoSlice<'_>],
    out: &'a mut [MaybeUninit<u8>; GATHER],
) -> Option<&'a [u8]> {
    if bufs.len() < 2 {
        return None;
    }
    let total = bufs.iter().try_fold(0usize, |n, b| {
        let n = n + b.len();
        (n <= GATHER).then_some(n)
    })?;
    let mut at = 0;
    for b in bufs {
        // SAFETY: `at + b.len()` is at most `total`, which is at most `GATHER`: the bytes
        // written lie in `out`, a buffer of the caller's that no slice of `bufs` can overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                b.as_ptr(),
                out.as_mut_ptr().cast::<u8>().add(at),
                b.len(),
            )
        };
        at += b.len();
    }
    // SAFETY: the first `total` bytes were all written just now.
    Some(unsafe { std::slice::from_raw_parts(out.as_ptr().cast::<u8>(), total) })
}

impl<T: ClientSocket> Watched<T> {
    fn note<R>(&self, r: &Poll<io::Result<R>>) {
        match r {
            Poll::Pending => self.watch.write_blocked(),
            Poll::Ready(_) => self.watch.wrote(),
        }
    }
}

impl<T: ClientSocket> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = self.io.poll_send(cx, buf);
        self.note(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut room = [const { MaybeUninit::uninit() }; GATHER];
        let r = match gather(bufs, &mut room) {
            Some(buf) => self.io.poll_send(cx, buf),
            None => Pin::new(&mut self.io).poll_write_vectored(cx, bufs),
        };
        self.note(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.note(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.watch.parking.load(Ordering::Relaxed) {
            // hyper is being let go of an idle connection; the socket stays open.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A socket that records each write it is given: its bytes, and whether vectored.
    #[derive(Default)]
    struct Recorder(Vec<(bool, Vec<u8>)>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push((false, buf.to_vec()));
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len();
            self.0.push((true, all));
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl ClientSocket for Recorder {}

    #[tokio::test]
    async fn small_slices_go_out_as_one_write_and_large_ones_as_they_are() {
        let mut w = Watched::new(Recorder::default(), Arc::new(ConnWatch::new(true)));
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec();
        let slices = [io::IoSlice::new(&head), io::IoSlice::new(b"hello")];
        let n = w.write_vectored(&slices).await.unwrap();
        assert_eq!(n, head.len() + 5);

        // Exactly the limit still fits; one byte more does not.
        let big = vec![7u8; GATHER - 5];
        let at_limit = [io::IoSlice::new(&big), io::IoSlice::new(b"12345")];
        assert_eq!(w.write_vectored(&at_limit).await.unwrap(), GATHER);
        let over = [io::IoSlice::new(&big), io::IoSlice::new(b"123456")];
        assert_eq!(w.write_vectored(&over).await.unwrap(), GATHER + 1);
        // A single slice is passed on as it is.
        let one = [io::IoSlice::new(b"alone")];
        assert_eq!(w.write_vectored(&one).await.unwrap(), 5);

        let mut first = head.clone();
        first.extend_from_slice(b"hello");
        let mut limit = big.clone();
        limit.extend_from_slice(b"12345");
        let mut beyond = big.clone();
        beyond.extend_from_slice(b"123456");
        let seen = &w.io.0;
        assert_eq!(
            seen,
            &vec![
                (false, first),
                (false, limit),
                (true, beyond),
                (true, b"alone".to_vec()),
            ]
        );
    }

    fn deadlines() -> Deadlines {
        Deadlines {
            idle: Duration::from_millis(200),
            head: Duration::from_millis(100),
            stall: Duration::from_millis(300),
        }
    }

    // Real time: the watchdog reads the process clock, which a paused runtime does not move.
    #[tokio::test]
    async fn the_watchdog_fires_even_if_first_polled_with_the_task_budget_spent() {
        let w = ConnWatch::new(false);
        let d = Deadlines {
            idle: Duration::from_millis(50),
            head: Duration::from_secs(60),
            stall: Duration::from_secs(60),
        };
        let mut fut = Box::pin(watch(&w, d));
        let mut first = true;
        let fired = tokio::time::timeout(
            Duration::from_secs(20),
            std::future::poll_fn(|cx| {
                if first {
                    first = false;
                    // Spend the poll's whole budget, as a busy connection can before the
                    // watchdog's turn in its select!.
                    while tokio::task::coop::has_budget_remaining() {
                        let spend = std::pin::pin!(tokio::task::coop::consume_budget());
                        let _ = std::future::Future::poll(spend, cx);
                    }
                }
                std::future::Future::poll(fut.as_mut(), cx)
            }),
        )
        .await;
        assert_eq!(fired.expect("the watchdog fired"), Fired::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_h2_connection_with_nothing_in_flight_idles_out() {
        let w = ConnWatch::new(false);
        // Control frames (pings) are reads; they do not count.
        w.read_some();
        assert_eq!(watch(&w, deadlines()).await, Fired::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle_but_a_blocked_write_stalls() {
        let w = ConnWatch::new(true);
        w.request_started();
        w.write_blocked();
        let t = tokio::time::Instant::now();
        assert_eq!(watch(&w, deadlines()).await, Fired::SendStall);
        assert!(t.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_head_times_out_on_http1() {
        let w = ConnWatch::new(true);
        assert_eq!(watch(&w, deadlines()).await, Fired::HeadTimeout);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_response_http1_idles_until_a_head_begins() {
        let w = ConnWatch::new(true);
        w.request_started();
        w.request_ended();
        assert_eq!(watch(&w, deadlines()).await, Fired::Idle);
        w.read_some();
        assert_eq!(watch(&w, deadlines()).await, Fired::HeadTimeout);
    }
}
