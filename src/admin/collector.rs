//! Scrape-time metrics: gauges that mirror live server and pool state (health, eligibility,
//! in-flight, weights, runtime overrides, the availability record) are read from the current
//! pool generations when Prometheus scrapes, so the request path never updates them. So is
//! `fulcrum_server_requests_total`, the sum of the per-reason selection counters the request
//! path does keep: one count per request, not two.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};

use super::Shared;
use crate::backend::{now_ms, AdminState};

/// Registers the scrape-time collectors of live server state.
pub fn register_collectors(shared: &Arc<Shared>) {
    let c = StateCollector::new(Arc::downgrade(shared));
    // Fresh names in a fresh registry: registration cannot fail.
    if let Err(e) = shared.metrics.registry().register(Box::new(c)) {
        tracing::error!(error = %e, "cannot register the server state collector");
    }
}

const SERVER: &[&str] = &["pool", "server"];

/// Reads server states at scrape time. Holds the shared state weakly: the metrics registry
/// that owns this collector is itself owned by the shared state.
struct StateCollector {
    shared: Weak<Shared>,
    up: IntGaugeVec,
    eligible: IntGaugeVec,
    inflight: IntGaugeVec,
    weight: IntGaugeVec,
    ejected: IntGaugeVec,
    admin_state: IntGaugeVec,
    pool_inflight: IntGaugeVec,
    pool_eligible: IntGaugeVec,
    worker_connections: IntGaugeVec,
    failures: IntCounterVec,
    requests: IntCounterVec,
    up_seconds: GaugeVec,
    down_seconds: GaugeVec,
    availability: GaugeVec,
    mtbf: GaugeVec,
    mttr: GaugeVec,
    descs: Vec<Desc>,
    /// Serialises scrapes: each one resets and refills the same families. Never taken on
    /// the request path, and held across no `.await`.
    scrape: Mutex<()>,
}

fn int_gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("metric definition is valid")
}

fn gauge(name: &str, help: &str) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), SERVER).expect("metric definition is valid")
}

impl StateCollector {
    fn new(shared: Weak<Shared>) -> Self {
        let mut c = StateCollector {
            shared,
            up: int_gauge(
                "fulcrum_server_up",
                "1 if active health checks consider the server up.",
                SERVER,
            ),
            eligible: int_gauge(
                "fulcrum_server_eligible",
                "1 if the server may receive new traffic now.",
                SERVER,
            ),
            inflight: int_gauge(
                "fulcrum_server_inflight",
                "In-flight requests (L7) or open connections (L4) on the server.",
                SERVER,
            ),
            weight: int_gauge(
                "fulcrum_server_weight",
                "Effective weight: configured, or the admin override, lowered during slow start.",
                SERVER,
            ),
            ejected: int_gauge(
                "fulcrum_server_ejected",
                "1 while passive failure detection holds the server out.",
                SERVER,
            ),
            admin_state: int_gauge(
                "fulcrum_server_admin_state",
                "1 for the operator state the server is in (enabled, draining, disabled).",
                &["pool", "server", "state"],
            ),
            pool_inflight: int_gauge(
                "fulcrum_pool_inflight",
                "In-flight requests (L7) or open connections (L4) over the pool.",
                &["pool"],
            ),
            pool_eligible: int_gauge(
                "fulcrum_pool_eligible_servers",
                "Servers that may receive new traffic now, per tier.",
                &["pool", "tier"],
            ),
            worker_connections: int_gauge(
                "fulcrum_worker_connections",
                "Client connections open on each worker thread (accepts are balanced across them).",
                &["worker"],
            ),
            failures: IntCounterVec::new(
                Opts::new(
                    "fulcrum_server_availability_failures_total",
                    "Up-to-down transitions of the server since it was configured.",
                ),
                SERVER,
            )
            .expect("metric definition is valid"),
            requests: IntCounterVec::new(
                Opts::new(
                    "fulcrum_server_requests_total",
                    "Requests (L7) or connections (L4) sent to a server: the sum of \
                     fulcrum_selections_total over reasons.",
                ),
                SERVER,
            )
            .expect("metric definition is valid"),
            up_seconds: gauge(
                "fulcrum_server_up_seconds",
                "Time the server has been up since it was configured.",
            ),
            down_seconds: gauge(
                "fulcrum_server_down_seconds",
                "Time the server has been down since it was configured.",
            ),
            availability: gauge(
                "fulcrum_server_availability_ratio",
                "Share of time up since the server was configured (0 to 1).",
            ),
            mtbf: gauge(
                "fulcrum_server_mtbf_seconds",
                "Mean time between failures of the server.",
            ),
            mttr: gauge(
                "fulcrum_server_mttr_seconds",
                "Mean time to repair of the server.",
            ),
            descs: Vec::new(),
            scrape: Mutex::new(()),
        };
        let mut descs = Vec::new();
        for v in c.int_gauges() {
            descs.extend(v.desc().into_iter().cloned());
        }
        for v in c.gauges() {
            descs.extend(v.desc().into_iter().cloned());
        }
        descs.extend(c.failures.desc().into_iter().cloned());
        descs.extend(c.requests.desc().into_iter().cloned());
        c.descs = descs;
        c
    }

    fn int_gauges(&self) -> [&IntGaugeVec; 9] {
        [
            &self.up,
            &self.eligible,
            &self.inflight,
            &self.weight,
            &self.ejected,
            &self.admin_state,
            &self.pool_inflight,
            &self.pool_eligible,
            &self.worker_connections,
        ]
    }

    fn gauges(&self) -> [&GaugeVec; 5] {
        [
            &self.up_seconds,
            &self.down_seconds,
            &self.availability,
            &self.mtbf,
            &self.mttr,
        ]
    }

    fn fill(&self, shared: &Shared) {
        let now = now_ms();
        for (i, n) in crate::workers::loads().enumerate() {
            self.worker_connections
                .with_label_values(&[&i.to_string()])
                .set(n as i64);
        }
        for slot in shared.pools.load().values() {
            let pool = slot.load();
            let p = pool.name();
            let table = pool.eligible();
            self.pool_inflight
                .with_label_values(&[p])
                .set(i64::from(pool.inflight.load(Ordering::Relaxed)));
            self.pool_eligible
                .with_label_values(&[p, "primary"])
                .set(table.primary.members().len() as i64);
            self.pool_eligible
                .with_label_values(&[p, "backup"])
                .set(table.backup.members().len() as i64);
            for s in &pool.servers {
                let st = &s.state;
                let l = [p, &*st.name];
                let a = st.availability();
                let (up_ms, down_ms) = a.totals(now);
                let (mtbf, mttr, avail) = a.summary(now);
                self.up.with_label_values(&l).set(i64::from(st.health_up()));
                self.eligible
                    .with_label_values(&l)
                    .set(i64::from(table.contains(s.idx)));
                self.inflight
                    .with_label_values(&l)
                    .set(i64::from(st.load.load(Ordering::Relaxed)));
                self.weight
                    .with_label_values(&l)
                    .set(i64::from(st.effective_weight(
                        s.settings.weight,
                        pool.settings.slow_start,
                        now,
                    )));
                self.ejected
                    .with_label_values(&l)
                    .set(i64::from(st.ejected_until() > now));
                let current = st.admin_state();
                for state in [
                    AdminState::Enabled,
                    AdminState::Draining,
                    AdminState::Disabled,
                ] {
                    self.admin_state
                        .with_label_values(&[p, &*st.name, state.as_str()])
                        .set(i64::from(state == current));
                }
                self.failures.with_label_values(&l).inc_by(a.failures);
                self.requests
                    .with_label_values(&l)
                    .inc_by(st.metrics.requests());
                self.up_seconds
                    .with_label_values(&l)
                    .set(up_ms as f64 / 1000.0);
                self.down_seconds
                    .with_label_values(&l)
                    .set(down_ms as f64 / 1000.0);
                self.availability.with_label_values(&l).set(avail);
                self.mtbf.with_label_values(&l).set(mtbf);
                self.mttr.with_label_values(&l).set(mttr);
            }
        }
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        // Start from empty families each scrape, so removed servers disappear.
        for v in self.int_gauges() {
            v.reset();
        }
        for v in self.gauges() {
            v.reset();
        }
        self.failures.reset();
        self.requests.reset();
        if let Some(shared) = self.shared.upgrade() {
            self.fill(&shared);
        }
        let mut out = Vec::new();
        for v in self.int_gauges() {
            out.extend(v.collect());
        }
        for v in self.gauges() {
            out.extend(v.collect());
        }
        out.extend(self.failures.collect());
        out.extend(self.requests.collect());
        out
    }
}
