//! The process clock: milliseconds since start, from a monotonic clock. Every deadline in a
//! server's state (ejections, ramps, drains, the availability record) is on this clock.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the process started, from a monotonic clock.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}
