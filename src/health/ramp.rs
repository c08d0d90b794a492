//! Slow start: while a server that came back (or was added) ramps its effective weight from
//! about 10% to full over the pool's `slow_start`, the eligible table must be rebuilt now and
//! then, because the weight is computed when the table is published, not per pick.
//!
//! [`begin`] marks the ramp's start on the server; [`republish`] then rebuilds the table in
//! about twenty steps (every `slow_start / 20`, between 100 ms and 1 s) until the ramp is over.
//! It stops early when a newer ramp of the same server began (that one takes over). It runs
//! at most `slow_start` long and never touches the request path.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{now_ms, BackendState};

/// Starts a ramp of `state` now; returns its start for [`republish`].
pub fn begin(state: &BackendState) -> u64 {
    let now = now_ms();
    state.set_ramp_start(now);
    now
}

/// The pause between two publishes during a ramp of `slow_start`.
pub fn step(slow_start: Duration) -> Duration {
    (slow_start / 20).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Calls `publish` at each step of the ramp that began at `started`, and once at its end.
pub async fn republish(
    state: Arc<BackendState>,
    started: u64,
    slow_start: Duration,
    publish: impl Fn(),
) {
    let end = started + slow_start.as_millis() as u64;
    let step = step(slow_start);
    loop {
        let left = end.saturating_sub(now_ms());
        tokio::time::sleep(step.min(Duration::from_millis(left))).await;
        if state.ramp_start() != started {
            return;
        }
        publish();
        if now_ms() >= end {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_steps_within_bounds() {
        assert_eq!(step(Duration::from_secs(30)), Duration::from_secs(1));
        assert_eq!(step(Duration::from_secs(10)), Duration::from_millis(500));
        assert_eq!(step(Duration::from_secs(1)), Duration::from_millis(100));
    }
}
