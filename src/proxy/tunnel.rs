//! Relaying bytes both ways between two connections (L4 and upgraded HTTP), with half-close
//! and an idle timeout that counts activity in either direction.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Buffer per direction.
const BUF: usize = 32 * 1024;

/// Bytes moved by a relay: (client → server, server → client).
pub type Moved = (u64, u64);

/// How a relay ended badly.
#[derive(Debug)]
pub enum RelayEnd {
    /// No bytes either way for the idle timeout.
    Idle,
    /// The process is shutting down and the grace period ran out.
    Cancelled,
    /// A socket error.
    Io(io::Error),
}

/// Relays until both directions have ended (each side's EOF is passed on as a write
/// shutdown to the other, so half-closed connections keep working), or until idle.
pub async fn relay<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    cancel: &CancellationToken,
) -> Result<Moved, RelayEnd>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let ticks = AtomicU64::new(0);
    let mut a = Active {
        io: a,
        ticks: &ticks,
    };
    let mut b = Active {
        io: b,
        ticks: &ticks,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUF, BUF);
    let watchdog = idle_for(&ticks, idle);
    tokio::select! {
        r = copy => r.map_err(RelayEnd::Io),
        _ = watchdog => Err(RelayEnd::Idle),
        _ = cancel.cancelled() => Err(RelayEnd::Cancelled),
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
        tokio::time::sleep(idle).await;
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
