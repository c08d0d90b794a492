//! [`BackendState`]: the live state of one server, in atomics that outlive reloads. The
//! health checker, the passive detector and the admin API write it; the request path only
//! reads it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{now_ms, Availability, BackendMetrics};
use crate::balance::LoadGauge;
use crate::config::ServerSettings;
use crate::metrics::Metrics;

/// What an operator asked of a server through the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    /// Normal.
    Enabled = 0,
    /// No new requests; in-flight ones finish.
    Draining = 1,
    /// No traffic at all.
    Disabled = 2,
}

impl AdminState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => AdminState::Draining,
            2 => AdminState::Disabled,
            _ => AdminState::Enabled,
        }
    }

    /// Lower-case name for JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

/// Live state of one server, shared by every config generation that keeps it.
pub struct BackendState {
    /// Pool name.
    pub pool: Arc<str>,
    /// Server name.
    pub name: Arc<str>,
    /// Address.
    pub addr: SocketAddr,
    /// In-flight requests (L7) or open connections (L4): the balancer's load gauge.
    pub load: Arc<LoadGauge>,
    /// Metric handles.
    pub metrics: BackendMetrics,
    health_up: AtomicBool,
    admin: AtomicU8,
    weight_override: AtomicU32,
    ejected_until: AtomicU64,
    suppressed: AtomicBool,
    ramp_start: AtomicU64,
    /// Consecutive passive failures.
    pub consecutive_failures: AtomicU32,
    /// Ejections so far (drives the growing ejection time).
    pub ejections: AtomicU32,
    /// Last active-probe result and how long it took.
    pub last_check_ok: AtomicBool,
    /// Duration of the last probe, µs.
    pub last_check_us: AtomicU64,
    /// Availability record. A mutex: touched only on state transitions and scrapes.
    availability: Mutex<Availability>,
    /// An operator's weight change in progress (`weight?over=`). A mutex: read when a table
    /// is published and at scrapes, written by admin calls; never per request.
    weight_ramp: Mutex<Option<WeightRamp>>,
    /// When an operator's drain closes what is left (process ms), 0 if never.
    drain_deadline: AtomicU64,
    /// Cancelled to sever every open connection to the server (a drain deadline); connections
    /// take the current one when they open. A mutex: taken once per upstream connection or
    /// L4 connection, never per request, and never across an `.await`.
    sever: Mutex<CancellationToken>,
    /// Bumped each time connections are severed, so a request that fails then knows why.
    sever_epoch: AtomicU64,
}

/// A weight moving from `from` to `to` over `over_ms`, in [`WeightRamp::STEPS`] steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightRamp {
    /// Weight at the start.
    pub from: u32,
    /// Weight at the end.
    pub to: u32,
    /// Start, process ms.
    pub start_ms: u64,
    /// Length, ms.
    pub over_ms: u64,
}

impl WeightRamp {
    /// Steps a ramp takes (each a table publish).
    pub const STEPS: u64 = 10;

    /// The weight at `now`: `from`, then each step a tenth of the way closer, `to` at the end.
    pub fn at(&self, now: u64) -> u32 {
        let done = now.saturating_sub(self.start_ms);
        if done >= self.over_ms {
            return self.to;
        }
        let step = done * Self::STEPS / self.over_ms.max(1);
        let (from, to) = (i64::from(self.from), i64::from(self.to));
        (from + (to - from) * step as i64 / Self::STEPS as i64).max(1) as u32
    }

    /// When it ends, process ms.
    pub fn end_ms(&self) -> u64 {
        self.start_ms + self.over_ms
    }
}

impl BackendState {
    pub(super) fn new(
        pool: Arc<str>,
        s: &ServerSettings,
        metrics: &Metrics,
        initial_up: bool,
    ) -> Self {
        let now = now_ms();
        BackendState {
            metrics: BackendMetrics::new(metrics, &pool, &s.name),
            pool,
            name: s.name.clone(),
            addr: s.addr,
            load: Arc::new(LoadGauge::new(0)),
            health_up: AtomicBool::new(initial_up),
            admin: AtomicU8::new(AdminState::Enabled as u8),
            weight_override: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            suppressed: AtomicBool::new(false),
            // A server that starts up is "added" now: slow start (when the pool has it)
            // ramps it from this moment. One that starts down ramps from its first success.
            ramp_start: AtomicU64::new(if initial_up { now } else { 0 }),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            last_check_ok: AtomicBool::new(initial_up),
            last_check_us: AtomicU64::new(0),
            availability: Mutex::new(Availability {
                up: initial_up,
                since_ms: now,
                pending: !initial_up,
                ..Default::default()
            }),
            weight_ramp: Mutex::new(None),
            drain_deadline: AtomicU64::new(0),
            sever: Mutex::new(CancellationToken::new()),
            sever_epoch: AtomicU64::new(0),
        }
    }

    /// A state for tests and tools, outside any registry.
    pub fn detached(pool: &str, s: &ServerSettings, metrics: &Metrics) -> Arc<Self> {
        Arc::new(BackendState::new(Arc::from(pool), s, metrics, true))
    }

    /// Whether active checks say it is up.
    pub fn health_up(&self) -> bool {
        self.health_up.load(Ordering::Acquire)
    }

    /// Sets the active-check verdict; returns the previous one.
    pub fn set_health_up(&self, up: bool) -> bool {
        self.health_up.swap(up, Ordering::AcqRel)
    }

    /// Operator state.
    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Acquire))
    }

    /// Sets the operator state.
    pub fn set_admin_state(&self, s: AdminState) {
        self.admin.store(s as u8, Ordering::Release);
    }

    /// Operator weight override, if any.
    pub fn weight_override(&self) -> Option<u32> {
        match self.weight_override.load(Ordering::Acquire) {
            0 => None,
            w => Some(w),
        }
    }

    /// Sets (Some) or clears (None) the weight override.
    pub fn set_weight_override(&self, w: Option<u32>) {
        self.weight_override
            .store(w.unwrap_or(0), Ordering::Release);
    }

    /// Passive ejection deadline (process ms), 0 when not ejected.
    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Acquire)
    }

    /// Sets the ejection deadline (0 clears it).
    pub fn set_ejected_until(&self, t: u64) {
        self.ejected_until.store(t, Ordering::Release);
    }

    /// Moves an ejection deadline `until` to `now` unless it changed meanwhile; returns
    /// whether it did. The past deadline is kept: it tells when the last ejection ended.
    pub fn end_ejection_early(&self, until: u64, now: u64) -> bool {
        self.ejected_until
            .compare_exchange(until, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether flap damping holds it out.
    pub fn suppressed(&self) -> bool {
        self.suppressed.load(Ordering::Acquire)
    }

    /// Sets the flap-damping hold.
    pub fn set_suppressed(&self, s: bool) -> bool {
        self.suppressed.swap(s, Ordering::AcqRel)
    }

    /// When the slow-start ramp began (process ms), 0 if none.
    pub fn ramp_start(&self) -> u64 {
        self.ramp_start.load(Ordering::Acquire)
    }

    /// Starts (or clears, with 0) the slow-start ramp.
    pub fn set_ramp_start(&self, t: u64) {
        self.ramp_start.store(t, Ordering::Release);
    }

    /// Whether it may receive new traffic now.
    pub fn eligible(&self, now: u64) -> bool {
        self.operational(now) && self.admin_state() == AdminState::Enabled
    }

    /// Whether the server itself is fit for traffic (checks pass, not ejected, not held out
    /// by flap damping), whatever an operator asked; this is what availability records.
    pub fn operational(&self, now: u64) -> bool {
        self.health_up() && !self.suppressed() && self.ejected_until() <= now
    }

    /// Records the combined up/down view for the availability record; returns true on change.
    pub fn record_availability(&self, up: bool) -> bool {
        let mut a = self.availability.lock().unwrap_or_else(|e| e.into_inner());
        let changed = a.up != up;
        a.record(up, now_ms());
        changed
    }

    /// A copy of the availability record.
    pub fn availability(&self) -> Availability {
        self.availability
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The weight change in progress, if any.
    pub fn weight_ramp(&self) -> Option<WeightRamp> {
        *self.weight_ramp.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (Some) or cancels (None) a weight change.
    pub fn set_weight_ramp(&self, r: Option<WeightRamp>) {
        *self.weight_ramp.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// Ends the ramp `r` if it is still the one in force: its target becomes the override.
    pub fn finish_weight_ramp(&self, r: WeightRamp) -> bool {
        let mut cur = self.weight_ramp.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != Some(r) {
            return false;
        }
        *cur = None;
        self.set_weight_override(Some(r.to));
        true
    }

    /// The operator's weight now: a ramp's current step, else the override.
    pub fn operator_weight(&self, now: u64) -> Option<u32> {
        match self.weight_ramp() {
            Some(r) => Some(r.at(now)),
            None => self.weight_override(),
        }
    }

    /// The drain deadline in force (process ms), 0 if none.
    pub fn drain_deadline(&self) -> u64 {
        self.drain_deadline.load(Ordering::Acquire)
    }

    /// Sets (or clears, with 0) the drain deadline.
    pub fn set_drain_deadline(&self, t: u64) {
        self.drain_deadline.store(t, Ordering::Release);
    }

    /// The token that fires when the server's open connections are severed.
    pub fn sever_token(&self) -> CancellationToken {
        self.sever.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Severs every connection open to the server now; later ones are not affected.
    pub fn sever_connections(&self) {
        let mut t = self.sever.lock().unwrap_or_else(|e| e.into_inner());
        self.sever_epoch.fetch_add(1, Ordering::AcqRel);
        t.cancel();
        *t = CancellationToken::new();
    }

    /// How many times connections were severed so far (one load: read per request, so a
    /// request that fails because its connection was severed is not blamed on the server).
    #[inline]
    pub fn sever_epoch(&self) -> u64 {
        self.sever_epoch.load(Ordering::Acquire)
    }

    /// Effective weight given the configured one, the operator's and slow start.
    pub fn effective_weight(&self, configured: u32, slow_start: Option<Duration>, now: u64) -> u32 {
        let w = self.operator_weight(now).unwrap_or(configured);
        let ramp = self.ramp_start();
        match slow_start {
            Some(d) if ramp > 0 && now < ramp + d.as_millis() as u64 => {
                // Linear from 10% to 100% over the ramp; never below 1.
                let frac = 0.1 + 0.9 * ((now - ramp) as f64 / d.as_millis().max(1) as f64);
                ((w as f64 * frac).round() as u32).clamp(1, w)
            }
            _ => w,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_ramp_moves_in_ten_steps() {
        let r = WeightRamp {
            from: 1,
            to: 21,
            start_ms: 1000,
            over_ms: 10_000,
        };
        let got: Vec<u32> = (0..=11).map(|s| r.at(1000 + s * 1000)).collect();
        assert_eq!(got, [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 21]);
        let down = WeightRamp {
            from: 10,
            to: 1,
            ..r
        };
        assert_eq!(down.at(1000), 10);
        assert_eq!(down.at(6000), 6);
        assert_eq!(down.at(11_000), 1);
    }
}
