//! Passive failure detection: real traffic's failures eject a server for a while.
//!
//! The proxies call [`observe`] with the outcome of each attempt; the common case (a success
//! on a server with no failures) is one relaxed load. Failures of the configured kinds
//! (`count`: connect, reset, timeout, 5xx) in a row past `consecutive_failures` eject the
//! server for `base_ejection × 2^(ejections so far)`, capped at `max_ejection`; the count of
//! ejections starts over once a server has stayed in for longer than `max_ejection`.
//!
//! At most `max_ejected_percent` of a pool's servers (rounded down) are ejected at once, so
//! passive detection alone never empties a pool: with 4 servers and the default 50%, at most
//! 2. An ejected server returns by itself when its time is up, **on probation**: its failure
//! streak restarts one short of the threshold, so a single failure ejects it again (for
//! longer) while a single success ends the probation.
//!
//! When active checks saw the server go down and then come back (`rise` passes after a
//! down), that recovery ends an ejection early ([`end_ejection`]), as Envoy does by default:
//! the checks have just confirmed the server is healthy again. Checks that simply keep passing
//! while traffic fails do not: that is a disagreement (see `disagree`), not a recovery.
//!
//! The ejection and the return are each logged once, counted, and published at once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ramp;
use crate::backend::{now_ms, BackendState, FailureKind};
use crate::config::PassiveSettings;
use crate::pool::{Pool, Server};

/// The outcome of one attempt on a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived (and was not a counted 5xx).
    Success,
    /// The attempt failed.
    Failure(FailureKind),
}

/// Whether `kind` counts towards ejection under `cfg`.
pub fn counts(cfg: &PassiveSettings, kind: FailureKind) -> bool {
    cfg.enabled && kind_counts(cfg, kind)
}

/// Whether `kind` is one of the kinds `cfg.count` lists (enabled or not).
pub fn kind_counts(cfg: &PassiveSettings, kind: FailureKind) -> bool {
    match kind {
        FailureKind::Connect => cfg.count_connect,
        // A malformed response is a broken exchange like a reset.
        FailureKind::Reset | FailureKind::Protocol => cfg.count_reset,
        FailureKind::Timeout => cfg.count_timeout,
        FailureKind::Status5xx => cfg.count_5xx,
    }
}

/// Records an outcome; may eject the server and republish the pool.
#[inline]
pub fn observe(pool: &Arc<Pool>, server: &Server, outcome: Outcome) {
    let st = &server.state;
    let cfg = &pool.settings.passive;
    match outcome {
        Outcome::Success => {
            if st.consecutive_failures.load(Ordering::Relaxed) != 0 {
                // Also ends a probation.
                st.consecutive_failures.store(0, Ordering::Relaxed);
            }
        }
        Outcome::Failure(kind) => {
            if !counts(cfg, kind) {
                return;
            }
            let n = st.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= cfg.consecutive_failures && st.ejected_until() <= now_ms() {
                eject(pool, server, kind, n);
            }
        }
    }
}

/// How many servers of `servers` may be ejected at once.
pub fn max_ejected(servers: usize, percent: u32) -> usize {
    servers * percent as usize / 100
}

/// The ejection time after `previous` ejections: doubling from `base`, capped at `max`.
pub fn ejection_time(base: Duration, max: Duration, previous: u32) -> Duration {
    base.saturating_mul(1u32 << previous.min(16)).min(max)
}

/// Ends an ejection in force now (the caller publishes); returns whether there was one.
pub fn end_ejection(st: &BackendState) -> bool {
    let now = now_ms();
    let until = st.ejected_until();
    if until <= now {
        return false;
    }
    // compare_exchange: a concurrent new ejection wins over this early end.
    st.end_ejection_early(until, now)
}

/// Serialises ejection decisions, so that failures arriving together on several servers
/// cannot all pass the cap. A `std` mutex: taken only when a server reaches its failure
/// threshold (never on the common path) and never held across an `.await`.
static EJECTING: Mutex<()> = Mutex::new(());

fn eject(pool: &Arc<Pool>, server: &Server, kind: FailureKind, streak: u32) {
    let cfg = &pool.settings.passive;
    let st = &server.state;
    let _one_at_a_time = EJECTING.lock().unwrap_or_else(|e| e.into_inner());
    let now = now_ms();
    if st.ejected_until() > now {
        return; // a concurrent failure got here first
    }
    let ejected = pool
        .servers
        .iter()
        .filter(|s| s.state.ejected_until() > now)
        .count();
    let cap = max_ejected(pool.servers.len(), cfg.max_ejected_percent);
    if ejected >= cap {
        tracing::debug!(pool = %pool.name(), server = %st.name, ejected, cap, "not ejecting: the pool's ejection cap is reached");
        return;
    }
    // A server that stayed in longer than the longest ejection starts over at the base time.
    let last_end = st.ejected_until();
    if last_end > 0 && now.saturating_sub(last_end) > cfg.max_ejection.as_millis() as u64 {
        st.ejections.store(0, Ordering::Relaxed);
    }
    let previous = st.ejections.fetch_add(1, Ordering::Relaxed);
    let dur = ejection_time(cfg.base_ejection, cfg.max_ejection, previous);
    let until = now + dur.as_millis() as u64;
    st.set_ejected_until(until);
    st.consecutive_failures.store(0, Ordering::Relaxed);
    st.metrics.ejections.inc();
    tracing::warn!(pool = %pool.name(), server = %st.name, reason = kind.as_str(), consecutive_failures = streak, ejection = ?dur, ejections = previous + 1, "server ejected by passive detection");
    pool.publish_latest();

    let pool = pool.clone();
    let idx = server.idx;
    // Bounded: lives for the ejection time plus any slow-start ramp, then ends.
    tokio::spawn(async move {
        let st = pool.servers[idx.get()].state.clone();
        loop {
            if st.ejected_until() != until {
                return; // ended early by an active-check recovery
            }
            let left = until.saturating_sub(now_ms());
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(left)).await;
        }
        // Probation: one short of the threshold, so the next counted failure re-ejects.
        let threshold = pool.settings.passive.consecutive_failures;
        st.consecutive_failures
            .store(threshold.saturating_sub(1), Ordering::Relaxed);
        tracing::info!(pool = %pool.name(), server = %st.name, "ejection over; server back on probation");
        let ramp = pool
            .settings
            .slow_start
            .filter(|_| st.eligible(now_ms()))
            .map(|ss| (ramp::begin(&st), ss));
        pool.publish_latest();
        if let Some((started, ss)) = ramp {
            ramp::republish(st, started, ss, || pool.publish_latest()).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_time_doubles_up_to_the_cap() {
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(300));
        let got: Vec<u64> = (0..7).map(|n| ejection_time(b, m, n).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(ejection_time(b, m, u32::MAX), m);
    }

    #[test]
    fn ejection_cap_rounds_down() {
        assert_eq!(max_ejected(4, 50), 2);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(1, 50), 0);
        assert_eq!(max_ejected(5, 100), 5);
        assert_eq!(max_ejected(10, 0), 0);
    }
}
