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

/// The time from `start` (a [`monotonic_ns`] reading) to now.
#[inline]
pub fn since(start: u64) -> std::time::Duration {
    std::time::Duration::from_nanos(monotonic_ns().saturating_sub(start))
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
    use super::{monotonic_ns, now_ms, since};
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
        let took = since(start);
        assert!(took >= Duration::from_millis(20), "{took:?}");
        assert!(took <= outer.elapsed(), "{took:?}");
    }
}
