//! The process clock: milliseconds since start, from a monotonic clock. Every deadline in a
//! server's state (ejections, ramps, drains, the availability record) is on this clock.

use std::sync::OnceLock;

/// Milliseconds since the process first read this clock (1 at that first read), from
/// `CLOCK_MONOTONIC`, the clock `Instant` reads. Read a few times per request: one vDSO call
/// and integer arithmetic, where `Instant::elapsed` added a checked timespec subtraction
/// and a 128-bit millisecond conversion.
#[inline]
pub fn now_ms() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    let now = monotonic_ms();
    let start = *START.get_or_init(|| now);
    // Another thread may have set the start a moment after this one read the clock.
    now.saturating_sub(start) + 1
}

fn monotonic_ms() -> u64 {
    let ts = monotonic();
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
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and CLOCK_MONOTONIC exists on every kernel
    // fulcrum runs on; the call cannot fail with these arguments.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts
}

#[cfg(test)]
mod tests {
    use super::{monotonic_ns, now_ms, since};
    use std::time::{Duration, Instant};

    #[test]
    fn counts_milliseconds_in_step_with_instant() {
        let outer = Instant::now();
        let a = now_ms();
        std::thread::sleep(Duration::from_millis(30));
        let b = now_ms();
        let span = outer.elapsed().as_millis() as u64;
        assert!(a >= 1);
        // At least the sleep lies between the two reads, and at most the span around them
        // (each read rounds down to a whole millisecond, hence the 1 either way).
        assert!(b - a + 1 >= 30, "{a} -> {b}");
        assert!(b - a <= span + 1, "{a} -> {b}, span {span}");
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
