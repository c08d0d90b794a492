//! Metric families, their names and label sets, in one place.
//!
//! Each fulcrum instance owns a [`Metrics`] with its own Prometheus registry (tests run many
//! instances in one process). Hot-path users hold pre-resolved child handles (resolved once
//! when a listener or server is built), so a request never hashes label values. Gauges that
//! mirror live state (in-flight, health, availability) are read from the backend registry at
//! scrape time instead of being updated per request; see `admin`. The two latency
//! histograms the request path observes are kept per worker (see `sharded`).

mod sharded;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proxy::Rejection;
pub use sharded::{HistogramFamily, HistogramSnapshot, ShardedHistogram};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric family fulcrum exports.
pub struct Metrics {
    registry: Registry,
    /// Connections accepted per listener.
    pub listener_connections: IntCounterVec,
    /// Connections open per listener.
    pub listener_active: IntGaugeVec,
    /// HTTP/1 connections parked while idle, per listener.
    pub listener_parked: IntGaugeVec,
    /// Responses per listener by status class.
    pub listener_requests: IntCounterVec,
    /// Request duration per listener.
    pub listener_duration: HistogramFamily,
    /// Requests the proxy answered itself for a server-side reason, per listener and reason.
    pub proxy_errors: IntCounterVec,
    /// Requests and connections refused for what the client sent (or how slowly).
    pub requests_rejected: IntCounterVec,
    /// Clients that aborted a request body or went away before their response ended.
    pub client_aborts: IntCounterVec,
    /// Local resource errors (descriptors, ports, buffers), by kind.
    pub local_errors: IntCounterVec,
    /// Requests (L7) or connections (L4) sent to each server.
    /// Failures per server by kind.
    pub backend_errors: IntCounterVec,
    /// Response-head latency per server.
    pub backend_response: HistogramFamily,
    /// Why each server was chosen.
    pub selections: IntCounterVec,
    /// Retries per pool.
    pub retries: IntCounterVec,
    /// Retries refused by the budget, per pool.
    pub retries_budget_exhausted: IntCounterVec,
    /// Health probes per server by result.
    pub health_checks: IntCounterVec,
    /// Probe duration per server.
    pub health_check_duration: HistogramVec,
    /// Server state transitions.
    pub transitions: IntCounterVec,
    /// Passive ejections.
    pub ejections: IntCounterVec,
    /// Flap-damping suppressions.
    pub flap_suppressions: IntCounterVec,
    /// Active-vs-passive disagreement episodes.
    pub disagreements: IntCounterVec,
    /// Requests rejected because every slot and the queue were full or the wait timed out.
    pub queue_rejections: IntCounterVec,
    /// Config reloads by result.
    pub reloads: IntCounterVec,
    /// Whether the last reload succeeded.
    pub last_reload_ok: IntGauge,
    /// When the config in force was applied (start or last successful reload), Unix seconds.
    pub last_reload_success_time: Gauge,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Reloads the reload guard undid.
    pub rollbacks: IntCounter,
    /// Failed TLS handshakes per listener and reason.
    pub tls_handshake_errors: IntCounterVec,
    /// Expiry (notAfter, Unix seconds) of each certificate a listener serves.
    pub tls_certificate_expiry: GaugeVec,
    /// The `name` labels of `tls_certificate_expiry` per listener, to drop stale series.
    /// A std Mutex: held only to swap a short list, never across an `.await`.
    tls_expiry_names: Mutex<HashMap<String, Vec<String>>>,
    /// Server discovery failures (unanswered or failed lookups, etcd unreachable, malformed
    /// registrations), per pool and source kind.
    pub discovery_errors: IntCounterVec,
    /// Requests (http) or connections (tcp) refused by a listener's rate limit.
    pub rate_limited: IntCounterVec,
    /// Requests or connections refused by `allow` / `deny`, per rule label.
    pub access_denied: IntCounterVec,
    /// Connections closed for want of a valid PROXY header, by reason.
    pub proxy_protocol_rejected: IntCounterVec,
    /// Requests per listener and the route that served them.
    pub route_requests: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition is valid");
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("metric definition is valid");
    r.register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

impl Metrics {
    /// A fresh set of families in a fresh registry.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let listener_active = IntGaugeVec::new(
            Opts::new(
                "fulcrum_listener_connections_active",
                "Client connections open now.",
            ),
            &["listener"],
        )
        .expect("metric definition is valid");
        r.register(Box::new(listener_active.clone()))
            .expect("metric names are unique");
        let listener_parked = IntGaugeVec::new(
            Opts::new(
                "fulcrum_listener_connections_parked",
                "Idle HTTP/1 client connections parked now: open, holding no buffers.",
            ),
            &["listener"],
        )
        .expect("metric definition is valid");
        r.register(Box::new(listener_parked.clone()))
            .expect("metric names are unique");
        let last_reload_ok = IntGauge::new(
            "fulcrum_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was tried), else 0.",
        )
        .expect("metric definition is valid");
        r.register(Box::new(last_reload_ok.clone()))
            .expect("metric names are unique");
        last_reload_ok.set(1);
        let last_reload_success_time = Gauge::new(
            "fulcrum_config_last_reload_success_timestamp_seconds",
            "When the configuration in force was applied (start or last successful reload).",
        )
        .expect("metric definition is valid");
        r.register(Box::new(last_reload_success_time.clone()))
            .expect("metric names are unique");
        last_reload_success_time.set(unix_now());
        let start_time = Gauge::new(
            "fulcrum_start_time_seconds",
            "When this fulcrum process started, in Unix seconds.",
        )
        .expect("metric definition is valid");
        r.register(Box::new(start_time.clone()))
            .expect("metric names are unique");
        start_time.set(unix_now());
        let build = IntGaugeVec::new(
            Opts::new("fulcrum_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("metric definition is valid");
        r.register(Box::new(build.clone()))
            .expect("metric names are unique");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let access_log_dropped = IntCounter::new(
            "fulcrum_access_log_dropped_total",
            "Access-log lines dropped because the writer could not keep up.",
        )
        .expect("metric definition is valid");
        r.register(Box::new(access_log_dropped.clone()))
            .expect("metric names are unique");

        let rollbacks = IntCounter::new(
            "fulcrum_config_rollbacks_total",
            "Reloads undone by the reload guard (the previous configuration put back).",
        )
        .expect("metric definition is valid");
        r.register(Box::new(rollbacks.clone()))
            .expect("metric names are unique");

        let tls_certificate_expiry = GaugeVec::new(
            Opts::new(
                "fulcrum_tls_certificate_expiry_timestamp_seconds",
                "When each certificate a listener serves expires (notAfter), in Unix seconds.",
            ),
            &["listener", "name"],
        )
        .expect("metric definition is valid");
        r.register(Box::new(tls_certificate_expiry.clone()))
            .expect("metric names are unique");

        let m = Metrics {
            listener_connections: counter(
                &r,
                "fulcrum_listener_connections_total",
                "Client connections accepted.",
                &["listener"],
            ),
            listener_active,
            listener_parked,
            listener_requests: counter(
                &r,
                "fulcrum_listener_requests_total",
                "Responses sent to clients, by status class.",
                &["listener", "class"],
            ),
            listener_duration: HistogramFamily::register(
                &r,
                "fulcrum_listener_request_duration_seconds",
                "Time from request head received to response head sent.",
                &["listener"],
            ),
            proxy_errors: counter(
                &r,
                "fulcrum_proxy_errors_total",
                "Requests answered by the proxy itself because no server could serve them, by reason.",
                &["listener", "reason"],
            ),
            requests_rejected: counter(
                &r,
                "fulcrum_requests_rejected_total",
                "Requests or connections refused for what the client sent or how slowly, by reason.",
                &["listener", "reason"],
            ),
            client_aborts: counter(
                &r,
                "fulcrum_client_aborts_total",
                "Clients that aborted or stalled a request body, or went away before their response ended.",
                &["listener", "phase"],
            ),
            local_errors: counter(
                &r,
                "fulcrum_local_errors_total",
                "Local resource errors (file descriptors, ephemeral ports, kernel buffers), by kind.",
                &["kind"],
            ),
            backend_errors: counter(
                &r,
                "fulcrum_server_errors_total",
                "Failures talking to a server, by kind.",
                &["pool", "server", "kind"],
            ),
            backend_response: HistogramFamily::register(
                &r,
                "fulcrum_server_response_seconds",
                "Time from request sent to response head received, per server.",
                &["pool", "server"],
            ),
            selections: counter(
                &r,
                "fulcrum_selections_total",
                "Why each server was chosen.",
                &["pool", "server", "reason"],
            ),
            retries: counter(
                &r,
                "fulcrum_retries_total",
                "Requests retried on another server.",
                &["pool"],
            ),
            retries_budget_exhausted: counter(
                &r,
                "fulcrum_retries_budget_exhausted_total",
                "Retries not attempted because the retry budget was spent.",
                &["pool"],
            ),
            health_checks: counter(
                &r,
                "fulcrum_health_checks_total",
                "Active health probes, by result.",
                &["pool", "server", "result"],
            ),
            health_check_duration: histogram(
                &r,
                "fulcrum_health_check_duration_seconds",
                "Duration of active health probes.",
                &["pool", "server"],
            ),
            transitions: counter(
                &r,
                "fulcrum_server_state_transitions_total",
                "Server state changes, by new state.",
                &["pool", "server", "to"],
            ),
            ejections: counter(
                &r,
                "fulcrum_server_ejections_total",
                "Passive ejections of a server.",
                &["pool", "server"],
            ),
            flap_suppressions: counter(
                &r,
                "fulcrum_server_flap_suppressions_total",
                "Times flap damping held a server out.",
                &["pool", "server"],
            ),
            disagreements: counter(
                &r,
                "fulcrum_server_check_disagreements_total",
                "Episodes where active checks and real traffic disagreed about a server.",
                &["pool", "server", "kind"],
            ),
            queue_rejections: counter(
                &r,
                "fulcrum_queue_rejections_total",
                "Requests refused because no server slot became free in time.",
                &["pool"],
            ),
            reloads: counter(
                &r,
                "fulcrum_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            ),
            discovery_errors: counter(
                &r,
                "fulcrum_discovery_errors_total",
                "Server discovery failures (lookup failed, registry unreachable, malformed entry), by pool and source.",
                &["pool", "source"],
            ),
            route_requests: counter(
                &r,
                "fulcrum_route_requests_total",
                "Requests by the route that served them; (default): no route matched, the default pool served; (none): no route matched and no default pool, 404.",
                &["listener", "route"],
            ),
            last_reload_ok,
            last_reload_success_time,
            access_log_dropped,
            rollbacks,
            tls_handshake_errors: counter(
                &r,
                "fulcrum_tls_handshake_errors_total",
                "Failed TLS handshakes with clients, by reason.",
                &["listener", "reason"],
            ),
            tls_certificate_expiry,
            tls_expiry_names: Mutex::new(HashMap::new()),
            rate_limited: counter(
                &r,
                "fulcrum_rate_limited_total",
                "Requests (http) or connections (tcp) refused by the listener's rate limit.",
                &["listener"],
            ),
            access_denied: counter(
                &r,
                "fulcrum_access_denied_total",
                "Requests (http) or connections (tcp) refused by allow/deny, by rule.",
                &["listener", "rule"],
            ),
            proxy_protocol_rejected: counter(
                &r,
                "fulcrum_proxy_protocol_rejected_total",
                "Connections closed for want of a valid PROXY protocol header, by reason.",
                &["listener", "reason"],
            ),
            registry: r,
        };
        // Export both results from the start, so `increase(...[5m])` sees the first failure.
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        for kind in crate::proxy::error::LOCAL_ERROR_KINDS {
            m.local_errors.with_label_values(&[kind]);
        }
        m
    }

    /// Sets the expiry gauges of listener `listener` to the certificates it now serves
    /// (`ServerTls::certificates()`), dropping the series of certificates it no longer serves.
    /// Call after each successful load or reload of the listener's TLS.
    pub fn set_tls_certificates(&self, listener: &str, certs: &[crate::tls::CertInfo]) {
        let mut names = self
            .tls_expiry_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now: Vec<String> = certs.iter().map(|c| c.name.clone()).collect();
        if let Some(old) = names.get(listener) {
            for gone in old.iter().filter(|n| !now.contains(n)) {
                let _ = self
                    .tls_certificate_expiry
                    .remove_label_values(&[listener, gone]);
            }
        }
        for c in certs {
            self.tls_certificate_expiry
                .with_label_values(&[listener, &c.name])
                .set(c.not_after as f64);
        }
        names.insert(listener.to_string(), now);
    }

    /// Drops the expiry gauges of a listener that no longer terminates TLS (or is gone).
    pub fn forget_tls_listener(&self, listener: &str) {
        self.set_tls_certificates(listener, &[]);
        let mut names = self
            .tls_expiry_names
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        names.remove(listener);
    }

    /// The registry, to register scrape-time collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        let enc = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = enc.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The status class label of an HTTP status.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Pre-resolved handles for one listener.
#[derive(Clone)]
pub struct ListenerMetrics {
    /// Accepted connections.
    pub connections: IntCounter,
    /// Open connections.
    pub active: IntGauge,
    /// Open HTTP/1 connections parked while idle (holding no buffers).
    pub parked: IntGauge,
    /// Responses by class: index 0 = 1xx ... 4 = 5xx.
    pub by_class: [IntCounter; 5],
    /// Request duration.
    pub duration: ShardedHistogram,
    /// Refusals, indexed by `Rejection as usize`.
    rejected: [IntCounter; Rejection::ALL.len()],
    /// Client aborts: [request body, response].
    aborts: [IntCounter; 2],
    local: IntCounterVec,
}

/// When a client gave up (`phase` of `fulcrum_client_aborts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortPhase {
    /// While sending its request body.
    RequestBody = 0,
    /// While waiting for or reading its response.
    Response = 1,
}

impl ListenerMetrics {
    /// Resolves the handles of listener `name`.
    pub fn new(m: &Metrics, name: &str) -> Self {
        let class = |c: &str| m.listener_requests.with_label_values(&[name, c]);
        ListenerMetrics {
            connections: m.listener_connections.with_label_values(&[name]),
            active: m.listener_active.with_label_values(&[name]),
            parked: m.listener_parked.with_label_values(&[name]),
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: m.listener_duration.with_label_values(&[name]),
            rejected: Rejection::ALL
                .map(|r| m.requests_rejected.with_label_values(&[name, r.as_str()])),
            aborts: ["request_body", "response"]
                .map(|p| m.client_aborts.with_label_values(&[name, p])),
            local: m.local_errors.clone(),
        }
    }

    /// Counts a refusal.
    #[inline]
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }

    /// Counts a client that gave up.
    #[inline]
    pub fn aborted(&self, phase: AbortPhase) {
        self.aborts[phase as usize].inc();
    }

    /// Counts `e` if it is a local resource error; returns whether it was.
    pub fn local_error(&self, e: &std::io::Error) -> bool {
        match crate::proxy::local_error_kind(e) {
            Some(kind) => {
                self.local.with_label_values(&[kind]).inc();
                true
            }
            None => false,
        }
    }

    /// Counts one response.
    #[inline]
    pub fn count_status(&self, status: u16) {
        let i = usize::from((status / 100).clamp(1, 5) - 1);
        self.by_class[i].inc();
    }
}

/// Pre-resolved handshake-error counters of one TLS listener, one per reason; every reason's
/// series exists from the start at 0, so `increase()` sees the first failure.
#[derive(Clone)]
pub struct TlsListenerMetrics {
    by_reason: Vec<IntCounter>,
}

impl TlsListenerMetrics {
    /// Resolves the counters of listener `name`.
    pub fn new(m: &Metrics, name: &str) -> Self {
        TlsListenerMetrics {
            by_reason: crate::tls::HandshakeReason::ALL
                .iter()
                .map(|r| {
                    m.tls_handshake_errors
                        .with_label_values(&[name, r.as_str()])
                })
                .collect(),
        }
    }

    /// Counts one failed handshake.
    #[inline]
    pub fn count(&self, reason: crate::tls::HandshakeReason) {
        if let Some(i) = crate::tls::HandshakeReason::ALL
            .iter()
            .position(|r| *r == reason)
        {
            self.by_reason[i].inc();
        }
    }
}
/// Pre-resolved `fulcrum_route_requests_total` handles for one listener's route table, so a
/// request counts its route by index without hashing label values.
#[derive(Clone)]
pub struct RouteMetrics {
    listener: Arc<str>,
    names: Box<[Arc<str>]>,
    by_route: Box<[IntCounter]>,
    /// `(default)` when the table has a default pool, else `(none)`: only the series that
    /// can move is exported.
    fallback: &'static str,
    unmatched: IntCounter,
}

impl RouteMetrics {
    /// Resolves the handles of every route of `table`, for listener `listener`.
    pub fn new(m: &Metrics, listener: &str, table: &crate::route::RouteTable) -> Self {
        let names: Box<[Arc<str>]> = table.routes().iter().map(|r| r.name().clone()).collect();
        let fallback = if table.default_pool().is_some() {
            "(default)"
        } else {
            "(none)"
        };
        RouteMetrics {
            by_route: names
                .iter()
                .map(|n| m.route_requests.with_label_values(&[listener, n]))
                .collect(),
            unmatched: m.route_requests.with_label_values(&[listener, fallback]),
            fallback,
            listener: listener.into(),
            names,
        }
    }

    /// Counts one routed request.
    #[inline]
    pub fn count(&self, matched: &crate::route::Match) {
        match matched {
            crate::route::Match::Route(r) => {
                if let Some(c) = self.by_route.get(r.index()) {
                    c.inc();
                }
            }
            _ => self.unmatched.inc(),
        }
    }

    /// After a reload: drops the series that `next` (the same listener's new handles;
    /// `None` when the listener is gone) no longer has, so removed routes leave the scrape.
    pub fn forget_removed(&self, m: &Metrics, next: Option<&RouteMetrics>) {
        let kept = |label: &str| {
            next.is_some_and(|n| n.fallback == label || n.names.iter().any(|k| &**k == label))
        };
        let labels = self.names.iter().map(|n| &**n).chain([self.fallback]);
        for label in labels.filter(|l| !kept(l)) {
            let _ = m
                .route_requests
                .remove_label_values(&[&self.listener, label]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{RequestView, RouteTable};

    fn table(text: &str) -> RouteTable {
        let cfg = crate::config::parse(text, std::path::Path::new("m.toml")).unwrap();
        let l = &cfg.listeners[0];
        RouteTable::compile(&l.routes, l.pool.as_ref())
    }

    const ROUTES: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"

[[listener.route]]
name = "api"
path_prefix = "/api/"
pool = "app"

[[listener.route]]
name = "old"
path_prefix = "/old/"
respond = { status = 410 }

[[pool]]
name = "app"
servers = [ { addr = "127.0.0.1:1" } ]
"#;

    fn route<'t>(t: &'t RouteTable, path: &str) -> crate::route::Match<'t> {
        t.find(&RequestView {
            host: None,
            path,
            method: &http::Method::GET,
            headers: &http::HeaderMap::new(),
        })
    }

    #[test]
    fn route_requests_count_each_route_and_the_default() {
        let m = Metrics::new();
        let t = table(ROUTES);
        let rm = RouteMetrics::new(&m, "web", &t);
        for path in ["/api/a", "/api/b", "/old/x", "/"] {
            rm.count(&route(&t, path));
        }
        let text = m.render();
        for line in [
            "fulcrum_route_requests_total{listener=\"web\",route=\"api\"} 2",
            "fulcrum_route_requests_total{listener=\"web\",route=\"old\"} 1",
            "fulcrum_route_requests_total{listener=\"web\",route=\"(default)\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("route=\"(none)\""),
            "a listener with a default pool never 404s"
        );

        // A reload that drops "old" and the default pool drops their series.
        let next = table(&ROUTES.replacen("pool = \"app\"\n\n[[listener.route]]", "\n[[listener.route]]", 1).replace(
            "[[listener.route]]\nname = \"old\"\npath_prefix = \"/old/\"\nrespond = { status = 410 }\n",
            "",
        ));
        let next_rm = RouteMetrics::new(&m, "web", &next);
        rm.forget_removed(&m, Some(&next_rm));
        next_rm.count(&route(&next, "/nowhere"));
        let text = m.render();
        assert!(text.contains("route=\"api\"} 2"), "{text}");
        assert!(!text.contains("route=\"old\""), "{text}");
        assert!(!text.contains("route=\"(default)\""), "{text}");
        assert!(text.contains("route=\"(none)\"} 1"), "{text}");
    }
}
