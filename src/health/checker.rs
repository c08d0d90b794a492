//! Active health checking: one task per server, probing at the pool's interval (±10% jitter;
//! `fast_interval` while the server is changing state, `down_interval` while it is down) and
//! flipping its health after `rise` successes or `fall` failures in a row.
//!
//! The task owns everything about its server's active view: the probe and its connection, the
//! rise/fall streaks, the flap-damping penalty and the disagreement watch. The function that
//! flips a state also logs it (pool, server, old → new, reason, check duration), counts it and
//! publishes the pool's new eligible table, so each transition is reported exactly once. The
//! task ends when its cancellation token fires (a reload changed its settings, or shutdown);
//! every wait races that token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};
use tokio_util::sync::CancellationToken;

use super::damping::{Damping, Hold};
use super::disagree::{Checks, Disagreement, Episode, TrafficCounters, Watch};
use super::probe::Prober;
use super::ramp;
use super::rise_fall::{jitter, RiseFall};
use crate::backend::{now_ms, BackendState};
use crate::config::{HealthKind, HealthSettings};
use crate::metrics::Metrics;
use crate::pool::PoolSlot;

/// What one health task watches.
pub struct Target {
    /// The pool (current generation).
    pub slot: Arc<PoolSlot>,
    /// The server's live state.
    pub state: Arc<BackendState>,
    /// Probe settings.
    pub settings: HealthSettings,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// TLS towards the server (a TLS pool), for http probes.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// Whether the pool speaks h2 to its servers (http probes then do too).
    pub h2: bool,
}

/// Starts the probe loop for `target`; it ends when `cancel` fires.
pub fn spawn(target: Target, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stop = cancel.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run(target, cancel) => {}
        }
    })
}

async fn run(t: Target, cancel: CancellationToken) {
    let mut c = Checker::new(t, cancel);
    c.resume_ramp();
    if matches!(c.t.settings.kind, HealthKind::None) {
        if !c.t.state.health_up() {
            c.transition(true, false, &"health checks disabled", Duration::ZERO);
        }
        return std::future::pending().await;
    }
    c.run().await
}

/// Metric handles of one server's checks, resolved once.
struct Handles {
    success: IntCounter,
    failure: IntCounter,
    duration: Histogram,
    to_up: IntCounter,
    to_down: IntCounter,
}

struct Checker {
    t: Target,
    cancel: CancellationToken,
    probe: Prober,
    rf: RiseFall,
    damping: Option<Damping>,
    watch: Watch,
    h: Handles,
}

fn state_name(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

impl Checker {
    fn new(t: Target, cancel: CancellationToken) -> Self {
        let st = &t.state;
        let (pool, server) = (&*st.pool, &*st.name);
        let m = &t.metrics;
        let h = Handles {
            success: m
                .health_checks
                .with_label_values(&[pool, server, "success"]),
            failure: m
                .health_checks
                .with_label_values(&[pool, server, "failure"]),
            duration: m.health_check_duration.with_label_values(&[pool, server]),
            to_up: m.transitions.with_label_values(&[pool, server, "up"]),
            to_down: m.transitions.with_label_values(&[pool, server, "down"]),
        };
        let rf = RiseFall::new(
            st.health_up(),
            st.availability().pending,
            t.settings.rise,
            t.settings.fall,
        );
        let damping = t
            .settings
            .flap_damping
            .map(|cfg| Damping::new(cfg, st.suppressed(), now_ms()));
        if damping.is_none() && st.set_suppressed(false) {
            // Damping was turned off by a reload: nothing holds the server out any more.
            tracing::info!(pool = %st.pool, server = %st.name, "flap damping off; hold released");
            t.slot.publish();
        }
        let watch = Watch::new(st.metrics.requests(), traffic_failures(&t));
        Checker {
            probe: Prober::new(&t.settings.kind, st.addr, t.tls.clone(), t.h2),
            rf,
            damping,
            watch,
            h,
            cancel,
            t,
        }
    }

    async fn run(&mut self) {
        loop {
            let started = Instant::now();
            let result = self.probe.check(self.t.settings.timeout).await;
            let took = started.elapsed();
            self.record(result.is_ok(), took);
            let was_pending = self.rf.pending();
            match (self.rf.observe(result.is_ok()), &result) {
                (Some(true), _) => {
                    let why = if was_pending {
                        "first check passed".to_string()
                    } else {
                        format!("{} checks passed in a row", self.t.settings.rise)
                    };
                    self.transition(true, was_pending, &why, took);
                }
                (Some(false), Err(e)) => self.transition(false, false, e, took),
                _ => {}
            }
            self.damp_tick();
            self.disagreement(result.is_ok());
            let wait = jitter(self.rf.next_interval(&self.t.settings), fastrand::f64());
            tokio::time::sleep(wait).await;
        }
    }

    fn record(&self, ok: bool, took: Duration) {
        let st = &self.t.state;
        st.last_check_ok
            .store(ok, std::sync::atomic::Ordering::Relaxed);
        st.last_check_us.store(
            took.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if ok {
            self.h.success.inc();
        } else {
            self.h.failure.inc();
        }
        self.h.duration.observe(took.as_secs_f64());
    }

    /// Flips the active verdict: logs, counts, charges flap damping, starts slow start, and
    /// publishes — once per transition. `pending`: the server had no verdict yet.
    fn transition(
        &mut self,
        up: bool,
        pending: bool,
        reason: &dyn std::fmt::Display,
        took: Duration,
    ) {
        let st = &self.t.state;
        let was = st.set_health_up(up);
        if was == up {
            return;
        }
        let from = if pending { "pending" } else { state_name(was) };
        if up {
            tracing::info!(pool = %st.pool, server = %st.name, from, to = state_name(up), reason = %reason, check_duration = ?took, "server state changed");
            self.h.to_up.inc();
            if super::passive::end_ejection(st) {
                tracing::info!(pool = %st.pool, server = %st.name, "active checks saw the server recover; passive ejection ended");
            }
            if !st.suppressed() {
                self.start_ramp();
            }
        } else {
            tracing::warn!(pool = %st.pool, server = %st.name, from, to = state_name(up), reason = %reason, check_duration = ?took, "server state changed");
            self.h.to_down.inc();
            let now = now_ms();
            if let Some(Hold::Suppress) = self.damping.as_mut().and_then(|d| d.flap(now)) {
                st.set_suppressed(true);
                st.metrics.flap_suppressions.inc();
                let penalty = self.damping.as_ref().map_or(0.0, |d| d.penalty(now));
                tracing::warn!(pool = %st.pool, server = %st.name, penalty = penalty.round(), "server keeps flapping; held out by flap damping until it is stable");
            }
        }
        self.t.slot.publish();
    }

    /// Lets a held-out server back once its flap penalty has decayed below `reuse`.
    fn damp_tick(&mut self) {
        let now = now_ms();
        if let Some(Hold::Reuse) = self.damping.as_mut().and_then(|d| d.tick(now)) {
            let st = &self.t.state;
            st.set_suppressed(false);
            tracing::info!(pool = %st.pool, server = %st.name, health = state_name(st.health_up()), "flap damping released the server");
            if st.health_up() {
                self.start_ramp();
            }
            self.t.slot.publish();
        }
    }

    fn disagreement(&mut self, probe_ok: bool) {
        let st = &self.t.state;
        let checks = Checks {
            up: self.rf.up(),
            probe_ok,
        };
        let traffic = TrafficCounters {
            attempts: st.metrics.requests(),
            failures: traffic_failures(&self.t),
            ejected: st.ejected_until() > now_ms(),
        };
        match self.watch.observe(checks, traffic) {
            Some(Episode::Began(k)) => {
                match k {
                    Disagreement::TrafficFailing => st.metrics.disagree_traffic_failing.inc(),
                    Disagreement::CheckFailing => st.metrics.disagree_check_failing.inc(),
                }
                tracing::warn!(pool = %st.pool, server = %st.name, kind = k.as_str(), "active checks and real traffic disagree; does the health check test what matters?");
            }
            Some(Episode::Ended(k)) => {
                tracing::info!(pool = %st.pool, server = %st.name, kind = k.as_str(), "active checks and real traffic agree again");
            }
            None => {}
        }
    }

    /// Begins slow start (when the pool has it) for a server that just came back.
    fn start_ramp(&self) {
        if self.t.slot.load().settings.slow_start.is_some() {
            let started = ramp::begin(&self.t.state);
            self.spawn_ramp(started);
        }
    }

    /// Keeps republishing a ramp already under way when this task starts (a server added
    /// up, or a task restarted by a reload mid-ramp).
    fn resume_ramp(&self) {
        let st = &self.t.state;
        let Some(ss) = self.t.slot.load().settings.slow_start else {
            return;
        };
        let started = st.ramp_start();
        if started > 0 && now_ms() < started + ss.as_millis() as u64 && st.health_up() {
            self.spawn_ramp(started);
        }
    }

    fn spawn_ramp(&self, started: u64) {
        let Some(ss) = self.t.slot.load().settings.slow_start else {
            return;
        };
        let slot = self.t.slot.clone();
        let state = self.t.state.clone();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = ramp::republish(state, started, ss, || slot.publish()) => {}
            }
        });
    }
}

/// Failures of real traffic to the server, of the kinds passive detection counts.
fn traffic_failures(t: &Target) -> u64 {
    let pool = t.slot.load();
    let p = &pool.settings.passive;
    t.state
        .metrics
        .errors_total(|k| super::passive::kind_counts(p, k))
}
