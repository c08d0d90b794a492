//! Relaying bytes both ways between two connections (L4 and upgraded HTTP), with half-close
//! and an idle timeout that counts activity in either direction.
//!
//! Memory: a direction holds a buffer only while it has bytes in flight (see `flow.rs`), so
//! an idle relay costs its sockets and its task, not 2 × 32 KiB as a copy with fixed buffers
//! did. TCP↔TCP relays ([`relay_tcp`]) wait for readiness without a buffer; any other
//! stream ([`relay`]) borrows a buffer for each read poll and gives it back when nothing came.
//! An upgraded HTTP connection ([`relay_upgraded_to`]) is unwrapped to its TCP streams
//! when it can be. Every relay reports the bytes it moved, however it ended. Nothing here logs: the
//! caller decides what an ending means.

mod flow;
mod upgraded;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use self::flow::{Flow, Side, Stream};
pub use self::upgraded::{relay_upgraded_as, relay_upgraded_to, ClientIo, TcpInside};
use crate::proxy::cancel::Which;

/// Bytes moved by a relay: (client → server, server → client), i.e. (a → b, b → a).
pub type Moved = (u64, u64);

/// How a relay ended badly.
#[derive(Debug)]
pub enum RelayEnd {
    /// No bytes either way for the idle timeout.
    Idle,
    /// The process is shutting down and the grace period ran out.
    Cancelled,
    /// An operator's drain deadline for the server ran out.
    Drained,
    /// A socket error.
    Io(io::Error),
}

impl RelayEnd {
    /// The access log's name for this ending.
    pub fn outcome(&self) -> &'static str {
        match self {
            RelayEnd::Idle => "idle",
            RelayEnd::Cancelled => "shutdown",
            RelayEnd::Drained => "drained",
            RelayEnd::Io(_) => "error",
        }
    }
}

pub use crate::proxy::cancel::Signal;

/// What cuts a relay short from outside.
#[derive(Clone, Copy)]
pub struct Stops<'a> {
    /// The listener's hard stop (the grace period of a shutdown ran out).
    pub shutdown: &'a Signal,
    /// The drain deadline of the server relayed to (its sever token).
    pub drain: &'a CancellationToken,
}

/// Stops that nothing fires (tests of relays with no listener or server behind them).
#[cfg(test)]
#[derive(Default)]
struct NeverStops(Signal, CancellationToken);

#[cfg(test)]
impl NeverStops {
    fn stops(&self) -> Stops<'_> {
        Stops {
            shutdown: &self.0,
            drain: &self.1,
        }
    }
}

/// A relay that ended before both directions finished, with the bytes it had moved by then.
#[derive(Debug)]
pub struct Cut {
    /// Why it ended.
    pub end: RelayEnd,
    /// What it had moved.
    pub moved: Moved,
}

/// Relays between two TCP streams until both directions have ended (each side's EOF is
/// passed on as a write shutdown to the other, so half-closed connections keep working),
/// until no byte moves either way for `idle`, or until one of `stops` fires. However it
/// ends, it reports the bytes it moved. `a` is a client connection accepted just now: its
/// first read asks the socket, not the runtime ([`Flow::fresh`]).
pub async fn relay_tcp(
    a: &mut TcpStream,
    b: &mut TcpStream,
    idle: Duration,
    stops: Stops<'_>,
) -> Result<Moved, Cut> {
    run(a, b, Flow::fresh(), Flow::default(), idle, stops).await
}

/// [`relay_tcp`] for any two async streams (an upgraded connection, a TLS stream).
pub async fn relay<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    stops: Stops<'_>,
) -> Result<Moved, Cut>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    run(
        Stream(a),
        Stream(b),
        Flow::default(),
        Flow::default(),
        idle,
        stops,
    )
    .await
}

/// Drives both directions, the idle watchdog and the stops; `ab` and `ba` may start with
/// bytes already read.
async fn run<A: Side, B: Side>(
    mut a: A,
    mut b: B,
    mut ab: Flow,
    mut ba: Flow,
    idle: Duration,
    stops: Stops<'_>,
) -> Result<Moved, Cut> {
    let ticks = AtomicU64::new(0);
    let copy = poll_fn(|cx| {
        // Both directions are polled on every wake: each registers its own interest, and an
        // error in either ends the relay, as with tokio's copy_bidirectional.
        let ab_ready = ab.poll(cx, &mut a, &mut b, &ticks, ba.moved)?.is_ready();
        let ba_ready = ba.poll(cx, &mut b, &mut a, &ticks, ab.moved)?.is_ready();
        if ab_ready && ba_ready {
            Poll::Ready(Ok::<(), io::Error>(()))
        } else {
            Poll::Pending
        }
    });
    // Biased: the branches are polled in this order on every wake, without drawing a
    // random start; only the copy can be ready often, and when it is the relay is done.
    // Both stops are branches here, not a select around the relay, so a cut relay still
    // reports what it moved.
    let end = tokio::select! {
        biased;
        r = copy => r.err().map(RelayEnd::Io),
        _ = idle_for(&ticks, idle) => Some(RelayEnd::Idle),
        which = crate::proxy::cancel::first_of(stops.shutdown, stops.drain) => Some(match which {
            Which::First => RelayEnd::Cancelled,
            Which::Second => RelayEnd::Drained,
        }),
    };
    let moved = (ab.moved, ba.moved);
    match end {
        None => Ok(moved),
        Some(end) => Err(Cut { end, moved }),
    }
}

/// Counts reads and writes so a watchdog can tell an idle connection from a busy one.
/// `C` is whatever holds the counter: a borrow inside one task, an `Arc` across tasks.
pub struct Active<T, C> {
    /// The connection.
    pub io: T,
    /// Bumped on every completed read or write.
    pub ticks: C,
}

/// Waits until `ticks` has not moved for a whole `idle` period.
pub async fn idle_for(ticks: &AtomicU64, idle: Duration) {
    let mut seen = u64::MAX;
    loop {
        // In a `select!` with the relay, polled on every wake of the connection: poll the
        // timer again only once it has fired.
        crate::listener::watch::Snooze::new(idle).await;
        let now = ticks.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

impl<T: AsyncRead + Unpin, C: std::ops::Deref<Target = AtomicU64> + Unpin> AsyncRead
    for Active<T, C>
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if r.is_ready() {
            self.ticks.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, C: std::ops::Deref<Target = AtomicU64> + Unpin> AsyncWrite
    for Active<T, C>
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if r.is_ready() {
            self.ticks.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// (client's end, relay's client side, relay's server side, server's end).
    async fn ends() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, a) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (b, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), a.unwrap().0, b.unwrap(), s.unwrap().0)
    }

    /// Client sends `up`, server sends `down`; each reads what the other sent.
    async fn exchange(c: &mut TcpStream, s: &mut TcpStream, up: &[u8], down: &[u8]) {
        c.write_all(up).await.unwrap();
        s.write_all(down).await.unwrap();
        let mut got = vec![0u8; up.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, up);
        let mut got = vec![0u8; down.len()];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, down);
    }

    /// Relays, exchanges a few bytes each way, fires the hard stop (`drain` false) or the
    /// drain deadline (true), and returns how the relay ended.
    async fn cut_by(drain: bool) -> Cut {
        let (mut c, mut a, mut b, mut s) = ends().await;
        let (shutdown, deadline) = (
            std::sync::Arc::new(Signal::default()),
            CancellationToken::new(),
        );
        let relay = {
            let (shutdown, deadline) = (shutdown.clone(), deadline.clone());
            tokio::spawn(async move {
                let stops = Stops {
                    shutdown: &shutdown,
                    drain: &deadline,
                };
                relay_tcp(&mut a, &mut b, LIMIT, stops).await
            })
        };
        exchange(&mut c, &mut s, b"0123456789", b"abcdefg").await;
        if drain {
            deadline.cancel();
        } else {
            shutdown.fire();
        }
        tokio::time::timeout(LIMIT, relay)
            .await
            .expect("the relay stops at once")
            .unwrap()
            .expect_err("cut")
    }

    #[tokio::test]
    async fn a_relay_cut_by_the_hard_stop_reports_what_it_moved() {
        let cut = cut_by(false).await;
        assert!(matches!(cut.end, RelayEnd::Cancelled), "{cut:?}");
        assert_eq!(cut.end.outcome(), "shutdown");
        assert_eq!(cut.moved, (10, 7), "bytes moved each way before the stop");
    }

    #[tokio::test]
    async fn a_relay_cut_at_a_drain_deadline_reports_what_it_moved() {
        let cut = cut_by(true).await;
        assert!(matches!(cut.end, RelayEnd::Drained), "{cut:?}");
        assert_eq!(cut.end.outcome(), "drained");
        assert_eq!(
            cut.moved,
            (10, 7),
            "bytes moved each way before the deadline"
        );
    }

    #[tokio::test]
    async fn an_idle_relay_is_cut_and_reports_what_it_moved() {
        let (mut c, mut a, mut b, mut s) = ends().await;
        let relay = tokio::spawn(async move {
            let idle = Duration::from_millis(100);
            let never = NeverStops::default();
            relay_tcp(&mut a, &mut b, idle, never.stops()).await
        });
        exchange(&mut c, &mut s, b"abc", b"de").await;
        let cut = tokio::time::timeout(LIMIT, relay)
            .await
            .expect("the idle relay is cut")
            .unwrap()
            .expect_err("idle");
        assert!(matches!(cut.end, RelayEnd::Idle), "{cut:?}");
        assert_eq!(cut.moved, (3, 2), "bytes moved each way before going idle");
    }

    #[tokio::test]
    async fn each_direction_wakes_for_its_own_bytes_after_many_wakes_of_the_other() {
        // A direction that found nothing to read stays asleep on later wakes while its
        // socket has seen no event (`Side::quiet`), trusting the waker it registered.
        // Here one side talks for many rounds while the other is silent, then they swap,
        // then they alternate: a direction that missed its wake would stall the exchange.
        let (mut c, mut a, mut b, mut s) = ends().await;
        let relay = tokio::spawn(async move {
            let never = NeverStops::default();
            relay_tcp(&mut a, &mut b, LIMIT, never.stops()).await
        });
        let run = async {
            let mut buf = [0u8; 4];
            for i in 0..200u32 {
                c.write_all(&i.to_be_bytes()).await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, i.to_be_bytes(), "client to server, round {i}");
            }
            for i in 0..200u32 {
                s.write_all(&i.to_be_bytes()).await.unwrap();
                c.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, i.to_be_bytes(), "server to client, round {i}");
            }
            for i in 0..200u32 {
                c.write_all(&i.to_be_bytes()).await.unwrap();
                s.read_exact(&mut buf).await.unwrap();
                s.write_all(&buf).await.unwrap();
                c.read_exact(&mut buf).await.unwrap();
                assert_eq!(buf, i.to_be_bytes(), "round trip {i}");
            }
            c.shutdown().await.unwrap();
            s.shutdown().await.unwrap();
        };
        tokio::time::timeout(LIMIT, run)
            .await
            .expect("every byte crossed the relay");
        let moved = tokio::time::timeout(LIMIT, relay)
            .await
            .expect("the relay ends after both EOFs")
            .unwrap()
            .unwrap();
        assert_eq!(moved, (1600, 1600));
    }

    #[tokio::test]
    async fn the_generic_relay_passes_half_close_both_ways_and_counts() {
        let (mut c, mut a, mut b, mut s) = ends().await;
        let relay = tokio::spawn(async move {
            let never = NeverStops::default();
            relay(&mut a, &mut b, LIMIT, never.stops()).await
        });
        // The server ends its side first; the client keeps sending after seeing that EOF.
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye", "server's bytes, then its EOF");
        c.write_all(b"still here").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, b"still here",
            "client's bytes after the server's EOF, then EOF"
        );
        let moved = tokio::time::timeout(LIMIT, relay)
            .await
            .expect("the relay ends after both EOFs")
            .unwrap()
            .unwrap();
        assert_eq!(moved, (10, 3));
    }
}
