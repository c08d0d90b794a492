//! The process clock: milliseconds since start, from a monotonic clock. Every deadline in a
//! server's state (ejections, ramps, drains, the availability record) is on this clock.

use std::sync::OnceLock;

/// Milliseconds since the process first read this clock (1 at that first read), from
/// `CLOCK_MONOTONIC_COARSE`: the monotonic clock (the one `Instant` reads) as of the kernel's
/// last timer tick, so it lags by at most one tick (1 to 4 ms, by the kernel's HZ, as
/// `clock_getres` tells). It is read a few times per request (idle and head deadlines, idle
/// upstream connections), for deadlines of tens of milliseconds and more, where a tick's lag
/// does not matter. The coarse clock is read from the vDSO without reading the TSC: under
/// load, the fine clock's reads were 1.9 % of the proxy's CPU time (about 20 ns each).
#[inline]
pub fn now_ms() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    let now = monotonic_ms();
    let start = *START.get_or_init(|| now);
    // Another thread may have set the start a moment after this one read the clock.
    now.saturating_sub(start) + 1
}

fn monotonic_ms() -> u64 {
    let ts = read(libc::CLOCK_MONOTONIC_COARSE);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Nanoseconds on `CLOCK_MONOTONIC` from an arbitrary start, for timing a request: one vDSO
/// call and a multiply-add, where an `Instant::now` and `elapsed` pair adds conversions and a
/// checked timespec subtraction (about 60 instructions more).
#[inline]
pub fn monotonic_ns() -> u64 {
    let ts = monotonic();
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// [`monotonic_ns`] as first read in the current poll of a [`PerPoll`] future (read then,
/// and kept until that poll returns); outside one, a fresh reading.
///
/// A request's times are taken where a connection's task runs: its start, the moment it
/// goes to a server, the server's answer, its end. Several of those fall in one poll of the
/// task (the start and the send, or the answer and the end), microseconds apart at most,
/// since a poll never waits. Each read of the fine clock costs about 25 ns in the vDSO (it
/// reads the TSC and scales it): under load, fulcrum's reads were 1.1 % of its CPU time
/// against HAProxy's 0.13 %, which reads its clock once per turn of its event loop. This
/// reads it once per poll, and only in polls that ask.
#[inline]
pub fn poll_ns() -> u64 {
    this_poll().unwrap_or_else(monotonic_ns)
}

/// The time from `start` (a [`poll_ns`] or [`monotonic_ns`] reading) to [`poll_ns`]: to
/// now, outside a [`PerPoll`].
#[inline]
pub fn poll_since(start: u64) -> std::time::Duration {
    std::time::Duration::from_nanos(poll_ns().saturating_sub(start))
}

/// The current [`PerPoll`] poll's reading, taken now if it has none yet; `None` outside
/// every such poll.
#[inline]
fn this_poll() -> Option<u64> {
    POLL_NS.with(|c| match c.get() {
        OUTSIDE => None,
        UNREAD => {
            let now = monotonic_ns();
            c.set(now);
            Some(now)
        }
        now => Some(now),
    })
}

/// The time of [`poll_ns`], for a tokio timer's deadline: inside a [`PerPoll`] poll it is
/// built from that poll's one reading, outside one it is tokio's `Instant::now` (which
/// follows a paused test clock).
#[inline]
pub fn poll_instant() -> tokio::time::Instant {
    let Some(ns) = this_poll() else {
        return tokio::time::Instant::now();
    };
    // An `Instant` and a `monotonic_ns` reading taken together, once: both count on
    // CLOCK_MONOTONIC, so a reading converts by its distance from the pair (the pair's
    // own two reads are nanoseconds apart).
    static BASE: OnceLock<(std::time::Instant, u64)> = OnceLock::new();
    let (at, base_ns) = *BASE.get_or_init(|| (std::time::Instant::now(), monotonic_ns()));
    let at = match ns.checked_sub(base_ns) {
        Some(after) => at + std::time::Duration::from_nanos(after),
        None => at - std::time::Duration::from_nanos(base_ns - ns),
    };
    tokio::time::Instant::from_std(at)
}

/// [`POLL_NS`] outside every [`PerPoll`] poll.
const OUTSIDE: u64 = u64::MAX;
/// [`POLL_NS`] inside a poll that has not read the clock yet. (`CLOCK_MONOTONIC` counts
/// from boot: it never reads 0 or `u64::MAX`.)
const UNREAD: u64 = 0;

thread_local! {
    /// The current [`PerPoll`] poll's reading of the fine clock, or [`UNREAD`], or
    /// [`OUTSIDE`] between such polls.
    static POLL_NS: std::cell::Cell<u64> = const { std::cell::Cell::new(OUTSIDE) };
}

pin_project_lite::pin_project! {
    /// A future (a connection's whole serving) during each poll of which [`poll_ns`] reads
    /// the fine clock at most once.
    pub struct PerPoll<F> {
        #[pin]
        inner: F,
    }
}

impl<F> PerPoll<F> {
    /// `inner`, its polls each with a clock of their own.
    pub fn new(inner: F) -> Self {
        PerPoll { inner }
    }
}

impl<F: std::future::Future> std::future::Future for PerPoll<F> {
    type Output = F::Output;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        /// Puts back what the cell held before this poll, even if the poll panics (tokio
        /// catches a task's panic, and the thread goes on to poll other tasks).
        struct Restore(u64);
        impl Drop for Restore {
            fn drop(&mut self) {
                POLL_NS.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(POLL_NS.with(|c| c.replace(UNREAD)));
        self.project().inner.poll(cx)
    }
}

fn monotonic() -> libc::timespec {
    read(libc::CLOCK_MONOTONIC)
}

fn read(clock: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and both clocks read here
    // (CLOCK_MONOTONIC and CLOCK_MONOTONIC_COARSE, Linux 2.6.32) exist on every kernel
    // fulcrum runs on; the call cannot fail with these arguments.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts
}

#[cfg(test)]
mod tests {
    use super::{monotonic_ns, now_ms, poll_instant, poll_ns, poll_since, PerPoll};
    use std::time::{Duration, Instant};

    /// How far [`now_ms`] may lag behind the fine clock, in whole milliseconds (rounded up).
    fn resolution_ms() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        (ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64).div_ceil(1_000_000)
    }

    #[test]
    fn counts_milliseconds_in_step_with_instant() {
        let outer = Instant::now();
        let a = now_ms();
        std::thread::sleep(Duration::from_millis(30));
        let b = now_ms();
        let span = outer.elapsed().as_millis() as u64;
        let tick = resolution_ms();
        assert!(a >= 1);
        assert!((1..=10).contains(&tick), "{tick} ms");
        // At least the sleep lies between the two reads, and at most the span around them,
        // give or take the clock's lag (a tick at most) and the rounding down of each read
        // to a whole millisecond.
        assert!(b - a + 1 + tick >= 30, "{a} -> {b}, tick {tick}");
        assert!(
            b - a <= span + 1 + tick,
            "{a} -> {b}, span {span}, tick {tick}"
        );
    }

    #[test]
    fn times_a_span_in_step_with_instant() {
        let outer = Instant::now();
        let start = monotonic_ns();
        std::thread::sleep(Duration::from_millis(20));
        // Outside a `PerPoll`, `poll_since` reads the clock afresh.
        let took = poll_since(start);
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(took <= outer.elapsed(), "{took:?}");
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn reads_the_clock_once_per_poll_and_afresh_outside() {
        // Outside a poll, every read is fresh.
        let a = poll_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(poll_ns() >= a + 2_000_000);
        let mut polls = Vec::new();
        let mut sleeping = 0;
        let fut = PerPoll::new(std::future::poll_fn(|cx| {
            // Two reads around a sleep, in one poll: the same reading.
            let first = poll_ns();
            std::thread::sleep(Duration::from_millis(2));
            assert_eq!(poll_ns(), first, "one reading per poll");
            assert_eq!(poll_since(first), Duration::ZERO);
            // The timer's view of the same reading: one instant, within the poll's span
            // of the fine clock's.
            let at = poll_instant();
            assert_eq!(poll_instant(), at);
            let real = tokio::time::Instant::now();
            assert!(
                at <= real && real - at < Duration::from_secs(1),
                "{at:?} {real:?}"
            );
            polls.push(first);
            sleeping += 1;
            if sleeping < 3 {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        }));
        block_on(fut);
        // Each poll read afresh: the sleeps lie between them.
        assert_eq!(polls.len(), 3);
        assert!(polls[1] >= polls[0] + 2_000_000 && polls[2] >= polls[1] + 2_000_000);
        // And after the last poll the clock is fresh again.
        let b = poll_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(poll_ns() >= b + 2_000_000);
    }

    #[test]
    fn a_panicking_poll_leaves_the_clock_fresh() {
        let r = std::panic::catch_unwind(|| {
            block_on(PerPoll::new(async {
                let _ = poll_ns();
                panic!("a task's panic");
            }))
        });
        assert!(r.is_err());
        let b = poll_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            poll_ns() >= b + 2_000_000,
            "not stuck on the panicking poll's reading"
        );
    }
}
