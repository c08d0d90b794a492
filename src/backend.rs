//! Servers as the proxy sees them: [`BackendState`] (live atomics that outlive reloads), the
//! [`Registry`] that keeps those states across config generations, and the process clock.
//!
//! Writers (health checker, passive detector, admin API) change a state's atomics and then
//! ask the pool to publish a new eligible table; readers on the request path only read
//! atomics. Nothing here does I/O.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntCounter};
use tokio_util::sync::CancellationToken;

use crate::balance::LoadGauge;
use crate::config::ServerSettings;
use crate::metrics::Metrics;

/// Milliseconds since the process started, from a monotonic clock.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

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

/// Kinds of failure talking to a server, for metrics and passive detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// TCP connect refused or timed out.
    Connect,
    /// Connection reset or closed before a response head.
    Reset,
    /// No response head within the timeout.
    Timeout,
    /// A 5xx response.
    Status5xx,
    /// A malformed response.
    Protocol,
}

impl FailureKind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::Status5xx => "5xx",
            FailureKind::Protocol => "protocol",
        }
    }
    const ALL: [FailureKind; 5] = [
        FailureKind::Connect,
        FailureKind::Reset,
        FailureKind::Timeout,
        FailureKind::Status5xx,
        FailureKind::Protocol,
    ];
}

/// Why a server was chosen for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The balancer chose it from the primary tier.
    Balance,
    /// A hashing algorithm chose it.
    Hash,
    /// The request's sticky cookie named it.
    Sticky,
    /// No primary was eligible; the backup tier was used.
    Backup,
    /// Chosen for a retry after another server failed.
    Retry,
    /// The first choice had no free slot (`max_conns`); the queue moved the request here.
    Queue,
}

impl Selection {
    const ALL: [Selection; 6] = [
        Selection::Balance,
        Selection::Hash,
        Selection::Sticky,
        Selection::Backup,
        Selection::Retry,
        Selection::Queue,
    ];
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Selection::Balance => "balance",
            Selection::Hash => "hash",
            Selection::Sticky => "sticky",
            Selection::Backup => "backup",
            Selection::Retry => "retry",
            Selection::Queue => "queue",
        }
    }
}

/// Pre-resolved metric handles of one server.
pub struct BackendMetrics {
    /// Requests or connections sent.
    pub requests: IntCounter,
    errors: [IntCounter; FailureKind::ALL.len()],
    /// Response-head latency.
    pub response: Histogram,
    selections: [IntCounter; Selection::ALL.len()],
    /// Passive ejections.
    pub ejections: IntCounter,
    /// Times flap damping held the server out.
    pub flap_suppressions: IntCounter,
    /// Disagreement episodes: checks pass while traffic fails.
    pub disagree_traffic_failing: IntCounter,
    /// Disagreement episodes: checks fail while traffic succeeds.
    pub disagree_check_failing: IntCounter,
}

impl BackendMetrics {
    fn new(m: &Metrics, pool: &str, server: &str) -> Self {
        BackendMetrics {
            requests: m.backend_requests.with_label_values(&[pool, server]),
            errors: FailureKind::ALL.map(|k| {
                m.backend_errors
                    .with_label_values(&[pool, server, k.as_str()])
            }),
            response: m.backend_response.with_label_values(&[pool, server]),
            selections: Selection::ALL
                .map(|s| m.selections.with_label_values(&[pool, server, s.as_str()])),
            ejections: m.ejections.with_label_values(&[pool, server]),
            flap_suppressions: m.flap_suppressions.with_label_values(&[pool, server]),
            disagree_traffic_failing: m.disagreements.with_label_values(&[
                pool,
                server,
                DISAGREE_TRAFFIC_FAILING,
            ]),
            disagree_check_failing: m.disagreements.with_label_values(&[
                pool,
                server,
                DISAGREE_CHECK_FAILING,
            ]),
        }
    }

    /// Failures so far of the kinds `counts` accepts (read by the health checker, not per request).
    pub fn errors_total(&self, counts: impl Fn(FailureKind) -> bool) -> u64 {
        FailureKind::ALL
            .iter()
            .filter(|k| counts(**k))
            .map(|k| self.errors[*k as usize].get())
            .sum()
    }

    /// Counts a failure.
    #[inline]
    pub fn error(&self, kind: FailureKind) {
        self.errors[kind as usize].inc();
    }

    /// Counts a selection.
    #[inline]
    pub fn selected(&self, why: Selection) {
        self.selections[why as usize].inc();
    }
}

/// `kind` label of a disagreement where active checks pass while real traffic fails.
pub const DISAGREE_TRAFFIC_FAILING: &str = "traffic_failing";
/// `kind` label of a disagreement where active checks fail while real traffic succeeds.
pub const DISAGREE_CHECK_FAILING: &str = "check_failing";

/// Up/down bookkeeping of one server since it was first configured.
#[derive(Clone, Debug, Default)]
pub struct Availability {
    /// Currently up (by the combined view: eligible for traffic).
    pub up: bool,
    /// When the current state began (ms, process clock).
    pub since_ms: u64,
    /// Completed time up, ms.
    pub up_ms: u64,
    /// Completed time down, ms.
    pub down_ms: u64,
    /// Up→down transitions.
    pub failures: u64,
    /// Down→up transitions.
    pub recoveries: u64,
    /// No verdict yet (a new server before its first check): that wait is not downtime.
    pub pending: bool,
}

impl Availability {
    /// Totals including the current, unfinished period: (up_ms, down_ms).
    pub fn totals(&self, now: u64) -> (u64, u64) {
        if self.pending {
            return (0, 0);
        }
        let cur = now.saturating_sub(self.since_ms);
        if self.up {
            (self.up_ms + cur, self.down_ms)
        } else {
            (self.up_ms, self.down_ms + cur)
        }
    }

    /// Mean time between failures and to repair, seconds, and availability in 0..=1.
    pub fn summary(&self, now: u64) -> (f64, f64, f64) {
        let (up, down) = self.totals(now);
        let mtbf = if self.failures > 0 {
            up as f64 / self.failures as f64
        } else {
            up as f64
        } / 1000.0;
        let mttr = if self.recoveries > 0 {
            down as f64 / self.recoveries as f64
        } else if self.failures > 0 {
            down as f64
        } else {
            0.0
        } / 1000.0;
        let avail = if up + down == 0 {
            if self.up {
                1.0
            } else {
                0.0
            }
        } else {
            up as f64 / (up + down) as f64
        };
        (mtbf, mttr, avail)
    }

    fn record(&mut self, up: bool, now: u64) {
        if self.pending {
            if up {
                self.pending = false;
                self.up = true;
                self.since_ms = now;
            }
            return;
        }
        if up == self.up {
            return;
        }
        let cur = now.saturating_sub(self.since_ms);
        if self.up {
            self.up_ms += cur;
            self.failures += 1;
        } else {
            self.down_ms += cur;
            if self.since_ms > 0 {
                self.recoveries += 1;
            }
        }
        self.up = up;
        self.since_ms = now;
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
    fn new(pool: Arc<str>, s: &ServerSettings, metrics: &Metrics, initial_up: bool) -> Self {
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

/// An RAII hold on one unit of a server's load gauge (an in-flight request or a connection).
///
/// For a server with `max_conns`, the same gauge is its slot count: [`LoadGuard::try_limited`]
/// takes a unit only below the limit, and dropping it wakes a request queued for a slot.
pub struct LoadGuard {
    state: Arc<BackendState>,
    waiters: Option<Arc<Waiters>>,
}

impl LoadGuard {
    /// Takes one unit.
    #[inline]
    pub fn new(state: Arc<BackendState>) -> Self {
        state.load.fetch_add(1);
        LoadGuard {
            state,
            waiters: None,
        }
    }

    /// Takes one unit if fewer than `max` are taken; its release wakes one of `waiters`.
    #[inline]
    pub fn try_limited(
        state: &Arc<BackendState>,
        max: u32,
        waiters: &Arc<Waiters>,
    ) -> Option<Self> {
        // SeqCst pairs with the waiter's SeqCst increment of its queue count (Dekker style):
        // either the waiter sees this free slot, or this release sees the waiter.
        let mut cur = state.load.load(Ordering::SeqCst);
        loop {
            if cur >= max {
                return None;
            }
            // The gauge's changes are SeqCst.
            match state.load.compare_exchange_weak(cur, cur + 1) {
                Ok(_) => {
                    return Some(LoadGuard {
                        state: state.clone(),
                        waiters: Some(waiters.clone()),
                    })
                }
                Err(v) => cur = v,
            }
        }
    }

    /// The server.
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        // SeqCst (every change of the gauge is), which the waiters' Dekker pairing needs.
        self.state.load.fetch_sub(1);
        if let Some(w) = &self.waiters {
            w.slot_freed();
        }
    }
}

/// Requests waiting for a server slot in one pool (see `crate::queue`): a count, so that a
/// release with nobody waiting costs one load, and a `Notify` to wake one waiter.
#[derive(Default)]
pub struct Waiters {
    /// Requests waiting now.
    pub(crate) waiting: std::sync::atomic::AtomicUsize,
    /// Woken once per freed slot while someone waits.
    pub(crate) notify: tokio::sync::Notify,
}

impl Waiters {
    /// A slot of some server of the pool was just freed.
    #[inline]
    fn slot_freed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }
}

/// Registry key: a server is identified by its pool and address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    pool: Arc<str>,
    addr: SocketAddr,
}

/// Keeps every server's state across reloads.
///
/// A `std::sync::Mutex` because it is touched only while building or pruning a config
/// generation and at scrape time, never on the request path and never across an `.await`.
#[derive(Default)]
pub struct Registry {
    states: Mutex<HashMap<Key, Arc<BackendState>>>,
}

impl Registry {
    /// The state of `server` in `pool`, created if new (or if the server was renamed).
    pub fn get_or_create(
        &self,
        pool: &Arc<str>,
        server: &ServerSettings,
        metrics: &Metrics,
        initial_up: bool,
    ) -> Arc<BackendState> {
        let mut map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let key = Key {
            pool: pool.clone(),
            addr: server.addr,
        };
        if let Some(s) = map.get(&key) {
            if s.name == server.name {
                return s.clone();
            }
        }
        let state = Arc::new(BackendState::new(pool.clone(), server, metrics, initial_up));
        map.insert(key, state.clone());
        state
    }

    /// Drops the states of servers not in `keep` (pool, addr), removing their metric series.
    pub fn retain(&self, keep: &[(Arc<str>, SocketAddr)], metrics: &Metrics) {
        let mut map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, s| {
            let kept = keep.iter().any(|(p, a)| *p == k.pool && *a == k.addr);
            if !kept {
                forget_series(metrics, s);
            }
            kept
        });
    }

    /// Every live state, for scrapes and /status.
    pub fn all(&self) -> Vec<Arc<BackendState>> {
        let map = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map.values().cloned().collect();
        v.sort_by(|a, b| (&a.pool, &a.name).cmp(&(&b.pool, &b.name)));
        v
    }
}

fn forget_series(m: &Metrics, s: &BackendState) {
    let (p, n) = (&*s.pool, &*s.name);
    let _ = m.backend_requests.remove_label_values(&[p, n]);
    let _ = m.backend_response.remove_label_values(&[p, n]);
    for k in FailureKind::ALL {
        let _ = m.backend_errors.remove_label_values(&[p, n, k.as_str()]);
    }
    for r in Selection::ALL {
        let _ = m.selections.remove_label_values(&[p, n, r.as_str()]);
    }
    let _ = m.ejections.remove_label_values(&[p, n]);
    let _ = m.flap_suppressions.remove_label_values(&[p, n]);
    for k in [DISAGREE_TRAFFIC_FAILING, DISAGREE_CHECK_FAILING] {
        let _ = m.disagreements.remove_label_values(&[p, n, k]);
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

    #[test]
    fn availability_record() {
        let mut a = Availability {
            up: true,
            since_ms: 1,
            ..Default::default()
        };
        a.record(false, 1001); // up 1 s
        a.record(true, 1501); // down 0.5 s
        let (mtbf, mttr, avail) = a.summary(1501);
        assert_eq!(a.failures, 1);
        assert_eq!(a.recoveries, 1);
        assert!((mtbf - 1.0).abs() < 1e-9);
        assert!((mttr - 0.5).abs() < 1e-9);
        assert!((avail - 1.0 / 1.5).abs() < 1e-9);
    }
}
