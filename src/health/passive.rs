//! Passive failure detection: real traffic's failures eject a server for a while.
//!
//! Called on the request path with the outcome of each attempt; the common case (success on
//! a server with no failures) is one relaxed load.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::backend::{now_ms, FailureKind};
use crate::pool::{Pool, Server};

/// The outcome of one attempt on a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived (and was not a counted 5xx).
    Success,
    /// The attempt failed.
    Failure(FailureKind),
}

/// Records an outcome; may eject the server and republish the pool.
pub fn observe(pool: &Arc<Pool>, server: &Server, outcome: Outcome) {
    let st = &server.state;
    let cfg = &pool.settings.passive;
    match outcome {
        Outcome::Success => {
            if st.consecutive_failures.load(Ordering::Relaxed) != 0 {
                st.consecutive_failures.store(0, Ordering::Relaxed);
            }
        }
        Outcome::Failure(kind) => {
            let counted = cfg.enabled
                && match kind {
                    FailureKind::Connect => cfg.count_connect,
                    FailureKind::Reset => cfg.count_reset,
                    FailureKind::Timeout => cfg.count_timeout,
                    FailureKind::Status5xx => cfg.count_5xx,
                };
            if !counted {
                return;
            }
            let n = st.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= cfg.consecutive_failures && st.ejected_until() <= now_ms() {
                eject(pool, server, kind);
            }
        }
    }
}

fn eject(pool: &Arc<Pool>, server: &Server, kind: FailureKind) {
    let cfg = &pool.settings.passive;
    let now = now_ms();
    // Cap on the share of the pool ejected at once.
    let ejected = pool
        .servers
        .iter()
        .filter(|s| s.state.ejected_until() > now)
        .count();
    let cap = pool.servers.len() * cfg.max_ejected_percent as usize / 100;
    if ejected + 1 > cap {
        return;
    }
    let st = &server.state;
    let times = st.ejections.fetch_add(1, Ordering::Relaxed);
    let dur = cfg
        .base_ejection
        .saturating_mul(1u32 << times.min(16))
        .min(cfg.max_ejection);
    st.set_ejected_until(now + dur.as_millis() as u64);
    st.consecutive_failures.store(0, Ordering::Relaxed);
    tracing::warn!(pool = %pool.name(), server = %st.name, reason = kind.as_str(), ejection = ?dur, "server ejected by passive detection");
    pool.publish();
    let pool = pool.clone();
    let idx = server.idx;
    tokio::spawn(async move {
        tokio::time::sleep(dur).await;
        let s = &pool.servers[idx.get()];
        tracing::info!(pool = %pool.name(), server = %s.state.name, "ejection over; server back on probation");
        pool.publish_latest();
    });
}
