//! Active health checking: one task per server, probing at the pool's interval and flipping
//! the server's health after `rise` successes or `fall` failures in a row.
//!
//! The function that flips the state also logs it, counts it and publishes the pool's new
//! eligible table, so each transition is reported exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::backend::BackendState;
use crate::balance::BackendIdx;
use crate::config::{HealthKind, HealthSettings};
use crate::metrics::Metrics;
use crate::pool::PoolSlot;

/// What one health task watches.
pub struct Target {
    /// The pool (current generation).
    pub slot: Arc<PoolSlot>,
    /// The server's position in the pool when the task started.
    pub idx: BackendIdx,
    /// The server's live state.
    pub state: Arc<BackendState>,
    /// Probe settings.
    pub settings: HealthSettings,
    /// Metric families.
    pub metrics: Arc<Metrics>,
}

/// Starts the probe loop for `target`; it ends when `cancel` fires.
pub fn spawn(target: Target, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = run(target) => {}
        }
    })
}

async fn run(t: Target) {
    if matches!(t.settings.kind, HealthKind::None) {
        if !t.state.health_up() {
            set_state(&t, true, "health checks disabled");
        }
        return std::future::pending().await;
    }
    let mut streak_ok = 0u32;
    let mut streak_fail = 0u32;
    loop {
        let started = Instant::now();
        let result = probe(&t).await;
        let took = started.elapsed();
        let up = t.state.health_up();
        let label = if result.is_ok() { "success" } else { "failure" };
        t.metrics
            .health_checks
            .with_label_values(&[&t.state.pool, &t.state.name, label])
            .inc();
        t.metrics
            .health_check_duration
            .with_label_values(&[&t.state.pool, &t.state.name])
            .observe(took.as_secs_f64());
        match result {
            Ok(()) => {
                streak_fail = 0;
                streak_ok = streak_ok.saturating_add(1);
                if !up && streak_ok >= t.settings.rise {
                    set_state(&t, true, "check passed");
                }
            }
            Err(why) => {
                streak_ok = 0;
                streak_fail = streak_fail.saturating_add(1);
                if up && streak_fail >= t.settings.fall {
                    set_state(&t, false, &why);
                }
            }
        }
        let changing = (up && streak_fail > 0) || (!up && streak_ok > 0);
        let wait = if changing {
            t.settings.fast_interval
        } else if !t.state.health_up() {
            t.settings.down_interval
        } else {
            t.settings.interval
        };
        tokio::time::sleep(jitter(wait)).await;
    }
}

/// ±10% so that probes of many servers do not align.
fn jitter(d: Duration) -> Duration {
    let f = 0.9 + fastrand::f64() * 0.2;
    d.mul_f64(f)
}

fn set_state(t: &Target, up: bool, reason: &str) {
    let was = t.state.set_health_up(up);
    if was == up {
        return;
    }
    let to = if up { "up" } else { "down" };
    tracing::warn!(pool = %t.state.pool, server = %t.state.name, from = if was { "up" } else { "down" }, to, reason, "server state changed");
    t.metrics
        .transitions
        .with_label_values(&[&t.state.pool, &t.state.name, to])
        .inc();
    t.slot.publish();
}

async fn probe(t: &Target) -> Result<(), String> {
    let addr = t.state.addr;
    match &t.settings.kind {
        HealthKind::None => Ok(()),
        HealthKind::Tcp | HealthKind::Http(_) | HealthKind::Heartbeat { .. } => {
            match tokio::time::timeout(t.settings.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect failed: {e}")),
                Err(_) => Err("connect timed out".to_string()),
            }
        }
    }
}
