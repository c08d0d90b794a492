//! Reads and writes on a tokio TCP stream, with the system call made directly.
//!
//! glibc's `recv` and `send` are thread-cancellation points. Once a process has started a
//! second thread (fulcrum always has: connections are served on worker threads, apart from
//! the control plane's), each call turns the thread's asynchronous cancellation on before
//! the system call and off after it: two atomic read-modify-writes and about 45
//! instructions more per call, under callgrind 59 instructions a `recv` against the 10 of
//! single-threaded nginx. fulcrum never cancels a thread, so that work buys nothing. rustix
//! makes the same system calls without it.
//!
//! Readiness is kept as tokio keeps it in its own `poll_read` and `poll_write`: a read or
//! write that finds the socket drained (`EAGAIN`) clears it, and so does one that moved
//! fewer bytes than it could (on Linux a short read means the socket is drained and a short
//! write that its buffer is full), which saves the `EAGAIN` call the next attempt would
//! otherwise make. tokio clears readiness only through [`TcpStream::try_io`] when its
//! closure reports `WouldBlock`, so a short transfer is reported that way, with its count
//! kept aside. The readiness event the clear applies to is the one read before the call,
//! so an event that arrived during the call is not lost.
//!
//! A read or write is tried first and waits for readiness only when it could not move
//! anything, where tokio's own asks for readiness before every call. A socket with bytes
//! waiting is the common case on a busy connection, and the relay has usually just polled
//! readiness itself: the second check cost about 70 instructions a call (−190 per L4
//! request with a one-write origin, −85 per L7 request). The task's cooperative budget is
//! taken and spent as tokio's calls do, so a relay that always finds bytes still yields.

use std::io;
use std::mem::MaybeUninit;
use std::task::{ready, Context, Poll};

use rustix::net::{RecvFlags, SendFlags};
use tokio::io::{Interest, ReadBuf};
use tokio::net::TcpStream;

/// Reads what `s` has into `buf`'s unfilled part, as tokio's `poll_read` does.
pub(crate) fn poll_recv(
    s: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    // SAFETY: the kernel only writes into the slice, and only the bytes it reports written
    // are marked filled below.
    let room: &mut [MaybeUninit<u8>] = unsafe { buf.unfilled_mut() };
    let want = room.len();
    let coop = ready!(tokio::task::coop::poll_proceed(cx));
    let got = loop {
        let mut short = 0;
        let r = s.try_io(Interest::READABLE, || {
            let (_, n) = rustix::net::recv(s, &mut *room, RecvFlags::empty())?;
            if n > 0 && n < want {
                short = n;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match r {
            Ok(n) => break n,
            Err(_) if short > 0 => break short,
            // Not ready, or drained: wait for readiness (which registers the waker), then
            // try again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(s.poll_read_ready(cx))?,
            Err(e) => return Poll::Ready(Err(e)),
        }
    };
    coop.made_progress();
    // SAFETY: `recv` wrote `got` bytes (at most `want`) at the start of the unfilled part.
    unsafe { buf.assume_init(got) };
    buf.advance(got);
    Poll::Ready(Ok(()))
}

/// Writes some of `data` to `s`, as tokio's `poll_write` does. `SIGPIPE` is never raised
/// (a write to a reset connection is an `EPIPE` error).
pub(crate) fn poll_send(
    s: &TcpStream,
    cx: &mut Context<'_>,
    data: &[u8],
) -> Poll<io::Result<usize>> {
    let coop = ready!(tokio::task::coop::poll_proceed(cx));
    let n = loop {
        let mut short = 0;
        let r = s.try_io(Interest::WRITABLE, || {
            let n = rustix::net::send(s, data, SendFlags::NOSIGNAL)?;
            if n > 0 && n < data.len() {
                short = n;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match r {
            Ok(n) => break n,
            Err(_) if short > 0 => break short,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(s.poll_write_ready(cx))?,
            Err(e) => return Poll::Ready(Err(e)),
        }
    };
    coop.made_progress();
    Poll::Ready(Ok(n))
}

/// Reads what `s` has into `buf`'s spare room (after its bytes) without waiting for the
/// runtime to learn of it.
///
/// A socket accepted and registered by fulcrum starts with no readiness recorded: the
/// runtime learns that bytes are waiting only at the next turn of its event loop, and until
/// then a read through it waits. Where bytes are likely there (an HTTP listener hands a
/// connection on once its client has sent: `TCP_DEFER_ACCEPT`; an L4 client has usually
/// sent by the time its server is connected), the first read asks the socket itself.
///
/// Only while the runtime has nothing recorded: a read here leaves its record as it is, and
/// a record of bytes this read took would cost the next read an `EAGAIN` system call. So
/// when the runtime already knows of bytes, or when the socket has none, this says
/// `WouldBlock`, and the caller reads through the runtime as usual; the registration
/// reports what arrives.
pub(crate) fn recv_now(s: &TcpStream, buf: &mut bytes::BytesMut) -> io::Result<usize> {
    if !super::read_readiness_empty(s) {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let (_, n) = rustix::net::recv(s, buf.spare_capacity_mut(), RecvFlags::empty())?;
    // SAFETY: `recv` initialised the first `n` bytes of the spare room.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// [`recv_now`] into an initialised buffer; with `peek`, leaving the bytes in the socket.
pub(crate) fn recv_now_into(s: &TcpStream, buf: &mut [u8], peek: bool) -> io::Result<usize> {
    if !super::read_readiness_empty(s) {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let flags = if peek {
        RecvFlags::PEEK
    } else {
        RecvFlags::empty()
    };
    let (n, _) = rustix::net::recv(s, buf, flags)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Far longer than anything here takes: a lost wake-up fails the test instead of
    /// hanging it.
    const LONG: std::time::Duration = std::time::Duration::from_secs(30);

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (far, _) = l.accept().await.unwrap();
        (near, far)
    }

    async fn recv(s: &TcpStream, room: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; room];
        let mut rb = ReadBuf::new(&mut v);
        poll_fn(|cx| poll_recv(s, cx, &mut rb)).await?;
        let n = rb.filled().len();
        v.truncate(n);
        Ok(v)
    }

    /// Notes that it was woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Polls a read of `near` that must wait, writes `bytes` to `far`, and checks that the
    /// waker the read registered is woken, then reads them. The read is polled by hand with
    /// a waker of its own: in a `join!` or under a timeout, any other wake of the task
    /// would poll it again and hide a wake-up it lost.
    async fn read_while_written(
        near: &TcpStream,
        mut far: TcpStream,
        bytes: &'static [u8],
    ) -> (Vec<u8>, TcpStream) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut v = vec![0u8; 64];
        let mut rb = ReadBuf::new(&mut v);
        assert!(poll_recv(near, &mut cx, &mut rb).is_pending());
        far.write_all(bytes).await.unwrap();
        let give_up = tokio::time::Instant::now() + LONG;
        while !flag.0.load(Ordering::SeqCst) {
            assert!(
                tokio::time::Instant::now() < give_up,
                "the reader was not woken by new bytes"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(matches!(
            poll_recv(near, &mut cx, &mut rb),
            Poll::Ready(Ok(()))
        ));
        let got = rb.filled().to_vec();
        (got, far)
    }

    /// A short read clears the readiness; what arrives next must still wake the reader.
    #[tokio::test]
    async fn a_short_read_then_a_wait_for_what_comes_next() {
        let (near, mut far) = pair().await;
        far.write_all(b"hello").await.unwrap();
        assert_eq!(recv(&near, 64).await.unwrap(), b"hello");
        // Drained: a read poll now waits.
        let mut v = [0u8; 64];
        let mut rb = ReadBuf::new(&mut v);
        let waiting = poll_fn(|cx| Poll::Ready(poll_recv(&near, cx, &mut rb).is_pending())).await;
        assert!(waiting, "a drained socket read as ready");
        let (got, f) = read_while_written(&near, far, b"again").await;
        far = f;
        assert_eq!(got, b"again");
        // A read that fills the buffer exactly leaves the rest for the next one.
        far.write_all(b"0123456789").await.unwrap();
        assert_eq!(recv(&near, 4).await.unwrap(), b"0123");
        assert_eq!(recv(&near, 64).await.unwrap(), b"456789");
        // A read that takes exactly what there was cannot know the socket is drained: the
        // next one finds nothing (`EAGAIN`), and must then wait for what comes after.
        far.write_all(b"abcd").await.unwrap();
        assert_eq!(recv(&near, 4).await.unwrap(), b"abcd");
        let (got, f) = read_while_written(&near, far, b"efgh").await;
        far = f;
        assert_eq!(got, b"efgh");
        // The end of the stream is an empty read.
        far.shutdown().await.unwrap();
        assert_eq!(recv(&near, 64).await.unwrap(), b"");
    }

    /// A socket that always has bytes to read, or room to write, must not keep its task from
    /// yielding: each read and write spends the task's cooperative budget, as tokio's own do,
    /// so one poll of the task stops once the budget is spent, with bytes and room left.
    #[tokio::test]
    async fn reads_and_writes_spend_the_cooperative_budget() {
        const LEN: usize = 4096;
        let (near, mut far) = pair().await;
        // On loopback the bytes are in `near`'s receive queue once the write returns.
        far.write_all(&[7u8; LEN]).await.unwrap();
        near.readable().await.unwrap();
        // One byte at a time: a read that fills its buffer leaves readiness set, so only
        // the budget can stop the loop before the bytes run out.
        let reads = poll_fn(|cx| {
            let mut n = 0;
            loop {
                let mut b = [0u8; 1];
                let mut rb = ReadBuf::new(&mut b);
                match poll_recv(&near, cx, &mut rb) {
                    Poll::Ready(r) => {
                        r.unwrap();
                        n += 1;
                    }
                    Poll::Pending => return Poll::Ready(n),
                }
            }
        })
        .await;
        assert!(reads > 0, "nothing read");
        assert!(
            reads < LEN,
            "all {LEN} bytes read in one poll: no budget spent"
        );
        let mut rest = vec![0u8; LEN];
        let more = near
            .try_read(&mut rest)
            .expect("bytes left behind the budget");
        assert_eq!(reads + more, LEN);

        // A fresh budget: it is the task's, renewed each time the task is polled.
        tokio::task::yield_now().await;
        near.writable().await.unwrap();
        let writes = poll_fn(|cx| {
            let mut n = 0;
            loop {
                match poll_send(&near, cx, b"x") {
                    Poll::Ready(r) => {
                        assert_eq!(r.unwrap(), 1);
                        n += 1;
                        assert!(n < LEN, "{n} writes in one poll: no budget spent");
                    }
                    Poll::Pending => return Poll::Ready(n),
                }
            }
        })
        .await;
        assert!(writes > 0, "nothing written");
        assert!(
            near.try_write(b"y").is_ok(),
            "the socket had room: the writes stopped for the budget"
        );
    }

    /// Writes until the socket's buffers are full, then waits; the peer's reading wakes the
    /// writer, and every byte arrives in order. A write to a reset connection is an error,
    /// not a signal.
    #[tokio::test]
    async fn a_full_socket_makes_the_writer_wait_and_a_reset_is_an_error() {
        let (near, mut far) = pair().await;
        let chunk = vec![0xabu8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            let r = poll_fn(|cx| Poll::Ready(poll_send(&near, cx, &chunk))).await;
            match r {
                Poll::Ready(n) => sent += n.unwrap(),
                Poll::Pending => break,
            }
            assert!(sent < 256 << 20, "the socket never filled");
        }
        let total = sent + chunk.len();
        let writer = async {
            let mut at = 0;
            while at < chunk.len() {
                at += poll_fn(|cx| poll_send(&near, cx, &chunk[at..]))
                    .await
                    .unwrap();
            }
        };
        let reader = async {
            let mut got = vec![0u8; total];
            far.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|&b| b == 0xab));
        };
        tokio::time::timeout(LONG, async { tokio::join!(writer, reader) })
            .await
            .expect("the writer was not woken by the peer's reading");

        // The peer resets: set SO_LINGER 0 and close.
        socket2::SockRef::from(&far)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(far);
        let mut failed = None;
        for _ in 0..100 {
            match poll_fn(|cx| poll_send(&near, cx, b"x")).await {
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let e = failed.expect("writes to a reset connection kept succeeding");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        );
    }

    /// A read from a connection its peer reset returns the reset, as an error of that kind:
    /// not a wait (the reset marks the socket readable, and the read must not take that
    /// for `EAGAIN`), and not the end of the stream (a clean close reads as 0 bytes).
    #[tokio::test]
    async fn a_read_from_a_reset_connection_is_an_error() {
        let (near, far) = pair().await;
        socket2::SockRef::from(&far)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(far);
        let r = tokio::time::timeout(LONG, recv(&near, 64))
            .await
            .expect("the reader was not woken by the reset");
        let e = r.expect_err("a reset read as bytes or as the end");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
}
