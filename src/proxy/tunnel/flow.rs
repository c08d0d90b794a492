//! One direction of a relay: read from one side, write everything read to the other, pass
//! the end of the stream on as a write shutdown. A direction holds a buffer only while it
//! has bytes in flight (read, not yet written), so an idle relay holds none.
//!
//! This module never decides when a relay ends (that is the caller's select over both
//! directions, the idle watchdog and the hard stop) and never logs.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Size of a buffer in flight. On loopback a bulk transfer costs the relay about a third
/// more CPU with 16 KiB than with 32 KiB, and no less with 64 KiB; a buffer is held only
/// while its bytes are in flight, so its size does not weigh on idle connections.
const BUF: usize = 32 * 1024;

/// Buffers kept for reuse per thread (at most 512 KiB); the rest go back to the allocator.
/// Reuse saved about 1 µs of relay CPU per small round trip over allocating each time.
const KEEP: usize = 16;

/// How long after the read that emptied the source its next bytes come, with nothing moved
/// the other way in between, when the source waited for the ACK of what it had sent
/// (milliseconds on the process clock, which lags by a kernel tick at most). Linux holds a
/// delayed ACK for 40 ms at least and 200 ms at most; a pause outside this range is the
/// peer's own.
const HELD_BACK_MS: std::ops::RangeInclusive<u64> = 30..=250;

thread_local! {
    /// Drained buffers kept for the next read on this thread, so a burst reuses an
    /// initialised buffer instead of allocating and zeroing one. Only this thread touches it,
    /// and no borrow of it outlives `take` or `give`.
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's free list, or a new one.
fn take() -> Box<[u8]> {
    FREE.try_with(|f| f.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; BUF].into_boxed_slice())
}

/// Returns a drained buffer to this thread's free list, or frees it when the list is full.
fn give(buf: Box<[u8]>) {
    let _ = FREE.try_with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEEP {
            f.push(buf);
        }
    });
}

/// One end of a relay, as a direction sees it: something to read from or write to.
pub(super) trait Side {
    /// Ready when a read would not block. A side that cannot tell without reading says
    /// ready, and the direction polls a read with a borrowed buffer instead.
    fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    /// True when nothing can have become readable since a read poll last returned
    /// Pending, whose waker is then still registered: the direction can wait on without
    /// polling again. A side that cannot tell says false.
    fn quiet(&self) -> bool {
        false
    }
    /// Reads into `buf` without asking the runtime first (see
    /// [`crate::proxy::sock::recv_now`]); `WouldBlock` from a side that cannot.
    fn recv_now(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    /// Reads into `buf`; `Ok(0)` is the end of the stream.
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// Writes some of `data`.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>>;
    /// Pushes out whatever the side buffers itself.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ends the write direction (TCP: a FIN), leaving the read direction open.
    fn poll_close_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Acknowledges at once what has been read (see [`crate::proxy::quick_ack`]); nothing
    /// for a side that is not a TCP socket of its own.
    fn ack_now(&self) {}
}

/// A TCP stream: waits for readiness without a buffer, then reads and writes through its
/// `AsyncRead`/`AsyncWrite`, which clear readiness after a short read or write and so save
/// the EAGAIN syscall that `try_read` would make next.
impl Side for &mut TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    /// See [`crate::proxy::read_readiness_empty`]: only this direction reads the socket.
    fn quiet(&self) -> bool {
        crate::proxy::read_readiness_empty(self)
    }

    fn recv_now(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::proxy::sock::recv_now_into(self, buf, false)
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(crate::proxy::sock::poll_recv(self, cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        crate::proxy::sock::poll_send(self, cx, data)
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP buffers nothing in user space.
        Poll::Ready(Ok(()))
    }

    fn poll_close_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // shutdown(Write): a FIN to the peer, reading stays open.
        Pin::new(&mut **self).poll_shutdown(cx)
    }

    fn ack_now(&self) {
        use std::os::fd::AsRawFd;
        crate::proxy::quick_ack(self.as_raw_fd());
    }
}

/// Any async stream (an upgraded HTTP connection, later TLS): a read needs a buffer to
/// poll with, so an idle direction borrows one from the free list for the poll and gives it
/// back when nothing came.
pub(super) struct Stream<'a, T: ?Sized>(pub(super) &'a mut T);

impl<T: AsyncRead + AsyncWrite + Unpin + ?Sized> Side for Stream<'_, T> {
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        ready!(Pin::new(&mut *self.0).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, data)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_close_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// One direction's state between polls.
#[derive(Default)]
pub(super) struct Flow {
    /// Bytes read before the relay began (what hyper had buffered past an upgrade), sent
    /// before anything else.
    first: Bytes,
    /// The buffer in flight, holding `buf[pos..end]` still to write; `None` when drained.
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    /// Bytes written to the destination so far.
    pub(super) moved: u64,
    /// The source has ended; what remains is to pass the end on.
    eof: bool,
    /// Written since the destination was last flushed.
    unflushed: bool,
    /// The last read poll of the source returned Pending, registering this task's waker.
    /// The connection's task is woken by either direction, so on most wakes one of them
    /// has nothing new: `Side::quiet` lets it stay asleep without a poll.
    waiting: bool,
    /// The end has been passed on: nothing more to do.
    pub(super) done: bool,
    /// The source was accepted just now: its first read asks the socket, not the runtime,
    /// which has not been told yet what the socket holds (see [`Flow::fresh`]).
    fresh: bool,
    /// What the reads of the source have shown of its writes (see [`Flow::note_read`]).
    ack: AckWatch,
}

/// What a direction has seen of how its source writes, to tell one that waits for ACKs.
#[derive(Default)]
struct AckWatch {
    /// The last read took all the source had.
    emptied: bool,
    /// How far the other direction had moved at the last read.
    other_then: u64,
    /// The source has written a message in pieces: reads that empty it are timed.
    timing: bool,
    /// When the last read that emptied the source came, if timed (process clock, ms; 0:
    /// not timed).
    emptied_at: u64,
    /// The source has been seen waiting for an ACK: every read that empties it is
    /// acknowledged at once.
    each: bool,
}

impl Flow {
    /// A direction whose source is a connection accepted just now. The runtime learns what
    /// such a socket holds at the next turn of its event loop; the client's first bytes are
    /// usually there already, and asking the runtime first would wait that turn for them.
    pub(super) fn fresh() -> Flow {
        let mut f = Flow::default();
        f.fresh = true;
        f
    }

    /// A direction that first sends `first`, then relays.
    pub(super) fn starting_with(first: Bytes) -> Flow {
        let mut f = Flow::default();
        f.first = first;
        f
    }

    /// Moves bytes from `from` to `to` until the source ends (then shuts down `to`'s write
    /// side and is ready with `Ok`), an error, or nothing can move now (`Pending`). Every
    /// completed read or write bumps `ticks`, which the idle watchdog watches. `other` is
    /// how many bytes the other direction has moved so far.
    pub(super) fn poll<R: Side, W: Side>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        ticks: &AtomicU64,
        other: u64,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        if self.fresh {
            // The first poll of a relay, before anything else is in flight.
            self.fresh = false;
            let mut buf = take();
            match from.recv_now(&mut buf) {
                // Nothing yet (or nothing this side can say): ask the runtime, below.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => give(buf),
                r => self.got(buf, r, ticks, from, other)?,
            }
        }
        loop {
            if !self.first.is_empty() {
                while !self.first.is_empty() {
                    let n = ready!(self.send(cx, to, ticks, None))?;
                    self.first.advance(n);
                }
                // Even empty, `first` shares hyper's whole read buffer: let it go now, not
                // at the end of the connection.
                self.first = Bytes::new();
            }
            if let Some(buf) = self.buf.take() {
                // Kept while the destination is slow: a Pending write puts it back.
                while self.pos < self.end {
                    match self.send(cx, to, ticks, Some(&buf)) {
                        Poll::Ready(Ok(n)) => self.pos += n,
                        Poll::Ready(Err(e)) => {
                            give(buf);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            self.buf = Some(buf);
                            return Poll::Pending;
                        }
                    }
                }
                give(buf);
            }
            if self.eof {
                if self.unflushed {
                    ready!(to.poll_flush(cx))?;
                    self.unflushed = false;
                }
                ready!(to.poll_close_write(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if self.waiting && from.quiet() {
                return self.flush_while_waiting(cx, to);
            }
            // Woken with something to read: read at once, without asking first.
            if !std::mem::take(&mut self.waiting) {
                match from.poll_readable(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.waiting = true;
                        return self.flush_while_waiting(cx, to);
                    }
                }
            }
            let mut buf = take();
            match from.poll_recv(cx, &mut buf) {
                Poll::Ready(r) => self.got(buf, r, ticks, from, other)?,
                Poll::Pending => {
                    give(buf);
                    self.waiting = true;
                    return self.flush_while_waiting(cx, to);
                }
            }
        }
    }

    /// Takes in what a read into `buf` gave: bytes to write (the buffer is kept), the end
    /// of the stream, or an error.
    #[inline(always)]
    fn got<R: Side>(
        &mut self,
        buf: Box<[u8]>,
        r: io::Result<usize>,
        ticks: &AtomicU64,
        from: &R,
        other: u64,
    ) -> io::Result<()> {
        match r {
            Ok(0) => {
                give(buf);
                ticks.fetch_add(1, Ordering::Relaxed);
                self.eof = true;
                Ok(())
            }
            Ok(n) => {
                ticks.fetch_add(1, Ordering::Relaxed);
                self.note_read(from, n < buf.len(), other);
                self.buf = Some(buf);
                (self.pos, self.end) = (0, n);
                Ok(())
            }
            Err(e) => {
                give(buf);
                Err(e)
            }
        }
    }

    /// Notes a read that found bytes (`emptied`: and took all the source had), to spare a
    /// source that waits for ACKs the delayed ACK on every message.
    ///
    /// A peer that leaves Nagle's algorithm on and writes a message in two small pieces (as
    /// Python's http.server writes a response's head and body) sends the second only once
    /// the first is acknowledged, and on a connection whose ends take turns the kernel
    /// holds that ACK back for 40 ms or more (see [`crate::proxy::quick_ack`]). The HTTP
    /// codecs know when a message came in part; a relay does not, so it watches for the
    /// mark such a wait leaves. A source whose bytes go on after a read emptied it, with
    /// nothing moved the other way in between (a reply would have carried the ACK), wrote
    /// a message in pieces: from then on the reads that empty it are timed. When its next
    /// bytes come [`HELD_BACK_MS`] after such a read, under the same condition, it waited
    /// for an ACK, and from then on every read that empties it is acknowledged at once: one
    /// `setsockopt` per such read, on this relay only. A source that writes each message
    /// whole costs a few comparisons per read, and no clock read.
    #[inline(always)]
    fn note_read<R: Side>(&mut self, from: &R, emptied: bool, other: u64) {
        let a = &mut self.ack;
        if a.each || a.timing || (a.emptied && other == a.other_then) {
            self.note_read_further(from, emptied, other);
        } else {
            (a.emptied, a.other_then) = (emptied, other);
        }
    }

    /// The rest of [`Flow::note_read`], once the source has written a message in pieces.
    #[cold]
    #[inline(never)]
    fn note_read_further<R: Side>(&mut self, from: &R, emptied: bool, other: u64) {
        let a = &mut self.ack;
        if a.each {
            if emptied {
                from.ack_now();
            }
            return;
        }
        let split = a.emptied && other == a.other_then;
        let mut now = 0;
        if a.timing && split {
            // Timed reads record when they emptied the source: `emptied_at` is when the
            // wait began.
            now = crate::backend::now_ms();
            if HELD_BACK_MS.contains(&now.saturating_sub(a.emptied_at)) {
                a.each = true;
                return;
            }
        }
        a.timing |= split;
        (a.emptied, a.other_then) = (emptied, other);
        a.emptied_at = match (emptied && a.timing, now) {
            (false, _) => 0,
            (true, 0) => crate::backend::now_ms(),
            (true, now) => now,
        };
    }

    /// Writes some of `first` (when `buf` is `None`) or of `buf[pos..end]`.
    fn send<W: Side>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut W,
        ticks: &AtomicU64,
        buf: Option<&[u8]>,
    ) -> Poll<io::Result<usize>> {
        let data = match buf {
            Some(b) => &b[self.pos..self.end],
            None => &self.first[..],
        };
        let n = ready!(to.poll_send(cx, data))?;
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the relay's destination accepted no bytes",
            )));
        }
        ticks.fetch_add(1, Ordering::Relaxed);
        self.moved += n as u64;
        self.unflushed = true;
        Poll::Ready(Ok(n))
    }

    /// Nothing to read now: push out what the destination buffers (as tokio's copy does),
    /// then wait.
    fn flush_while_waiting<W: Side>(
        &mut self,
        cx: &mut Context<'_>,
        to: &mut W,
    ) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(to.poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Pending
    }

    /// Whether this direction holds a buffer now (for tests).
    #[cfg(test)]
    pub(super) fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    use super::*;

    /// A connected pair (connecting side, accepted side); `small` shrinks the connecting
    /// side's send buffer and the accepted side's receive buffer, so a reader that stops
    /// reading stalls a writer within a few KiB.
    async fn pair(small: bool) -> (TcpStream, TcpStream) {
        let listen = TcpSocket::new_v4().unwrap();
        let connect = TcpSocket::new_v4().unwrap();
        if small {
            // Set before the handshake, so the window is sized from them.
            listen.set_recv_buffer_size(4096).unwrap();
            connect.set_send_buffer_size(4096).unwrap();
        }
        listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listen.local_addr().unwrap();
        let l = listen.listen(1).unwrap();
        let (c, a) = tokio::join!(connect.connect(addr), l.accept());
        (c.unwrap(), a.unwrap().0)
    }

    /// Polls `flow` (from `a` to `b`) until `want` holds for its state and the poll's
    /// result; panics naming `what` after 10 s.
    async fn until(
        what: &str,
        flow: &mut Flow,
        a: &mut TcpStream,
        b: &mut TcpStream,
        ticks: &AtomicU64,
        want: impl Fn(&Flow, &Poll<io::Result<()>>) -> bool,
    ) {
        let step = poll_fn(|cx| {
            let p = flow.poll(cx, &mut &mut *a, &mut &mut *b, ticks, 0);
            if want(flow, &p) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(10), step)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
    }

    /// A socket accepted outside the runtime and registered afterwards, as the listener
    /// does, with `bytes` already waiting in it: the runtime has recorded nothing yet.
    async fn accepted_with(bytes: &[u8]) -> (TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut far = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        // On loopback the bytes are in the accepted socket's queue once the write returns.
        far.write_all(bytes).await.unwrap();
        (TcpStream::from_std(s).unwrap(), far)
    }

    /// A fresh direction (a client just accepted) moves the bytes already in its socket on
    /// its first poll; an ordinary one waits for the runtime to report them.
    #[tokio::test]
    async fn a_fresh_direction_reads_what_the_runtime_has_not_seen_yet() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for (fresh, moved) in [(true, 5), (false, 0)] {
            let (mut b, mut dst) = pair(false).await;
            // Last: no await between its registration and the poll below.
            let (mut a, _far) = accepted_with(b"hello").await;
            let ticks = AtomicU64::new(0);
            let mut flow = if fresh {
                Flow::fresh()
            } else {
                Flow::default()
            };
            // Polled once, before anything lets the runtime turn.
            let p = flow.poll(&mut cx, &mut &mut a, &mut &mut b, &ticks, 0);
            assert!(p.is_pending());
            assert_eq!(flow.moved, moved, "fresh: {fresh}");
            if fresh {
                let mut got = [0u8; 5];
                dst.read_exact(&mut got).await.unwrap();
                assert_eq!(&got, b"hello");
            }
        }
    }

    /// A source that writes each message whole, answered in between, is never timed (no
    /// clock read, no quick ACK: see [`Flow::note_read`]); one message in two pieces, with
    /// no answer between them, starts the timing.
    #[tokio::test]
    async fn only_a_message_in_pieces_starts_the_ack_watch() {
        let (mut src, mut a) = pair(false).await;
        let (mut b, mut dst) = pair(false).await;
        let ticks = AtomicU64::new(0);
        let mut flow = Flow::default();
        // Writes `piece`, then polls the direction (the other one having moved `other`
        // bytes) until it has moved `piece` to `dst`.
        let mut relay = async |piece: &[u8], other: u64, flow: &mut Flow| {
            src.write_all(piece).await.unwrap();
            let want = flow.moved + piece.len() as u64;
            let moved = poll_fn(|cx| {
                let _ = flow.poll(cx, &mut &mut a, &mut &mut b, &ticks, other);
                if flow.moved == want {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            tokio::time::timeout(Duration::from_secs(10), moved)
                .await
                .expect("relayed");
            let mut got = vec![0u8; piece.len()];
            dst.read_exact(&mut got).await.unwrap();
        };
        for answered in 1..=5 {
            relay(b"a whole message", answered, &mut flow).await;
        }
        assert!(
            !flow.ack.timing && !flow.ack.each,
            "whole messages: not timed"
        );
        relay(b"a head, ", 5, &mut flow).await;
        relay(b"then its body", 5, &mut flow).await;
        assert!(flow.ack.timing, "a message in pieces: timed from now on");
    }

    #[tokio::test]
    async fn a_direction_holds_a_buffer_only_while_bytes_are_in_flight() {
        const LEN: usize = 4 << 20;
        let (mut src, mut a) = pair(false).await;
        let (mut b, mut dst) = pair(true).await;
        let ticks = AtomicU64::new(0);
        let mut flow = Flow::default();
        let idle = |f: &Flow, p: &Poll<io::Result<()>>| p.is_pending() && !f.holds_buffer();
        until(
            "idle: waiting without a buffer",
            &mut flow,
            &mut a,
            &mut b,
            &ticks,
            idle,
        )
        .await;

        let writer = tokio::spawn(async move {
            src.write_all(&vec![7u8; LEN]).await.unwrap();
            src
        });
        until(
            "a reader that does not read: the buffer is kept with its bytes",
            &mut flow,
            &mut a,
            &mut b,
            &ticks,
            |f, p| p.is_pending() && f.holds_buffer(),
        )
        .await;
        assert!(flow.moved < LEN as u64, "stalled before the end");

        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; LEN];
            dst.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|&x| x == 7), "bytes intact");
            dst
        });
        until(
            "all bytes written: idle again without a buffer",
            &mut flow,
            &mut a,
            &mut b,
            &ticks,
            |f, p| idle(f, p) && f.moved == LEN as u64,
        )
        .await;
        let mut dst = reader.await.unwrap();

        let mut src = writer.await.unwrap();
        src.shutdown().await.unwrap();
        until(
            "EOF passed on",
            &mut flow,
            &mut a,
            &mut b,
            &ticks,
            |_, p| matches!(p, Poll::Ready(Ok(()))),
        )
        .await;
        assert!(!flow.holds_buffer(), "no buffer after the end");
        let mut rest = Vec::new();
        dst.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "EOF and nothing after the {LEN} bytes");
        assert!(ticks.load(Ordering::Relaxed) > 0, "activity counted");
    }
}
