//! The admin listener: `/healthz`, `/metrics` (Prometheus text), `/status` (JSON).
//!
//! It binds to loopback unless configured otherwise. Gauges that mirror live server state
//! (health, in-flight, availability) are computed here at scrape time from the backend
//! registry, so the request path never updates them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntGaugeVec, Opts};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend::{now_ms, Registry};
use crate::config::AdminSettings;
use crate::runtime::Shared;

/// A running admin listener.
pub struct AdminServer {
    /// Settings in force.
    pub settings: AdminSettings,
    /// Bound address.
    pub local_addr: SocketAddr,
    stop: CancellationToken,
}

impl AdminServer {
    /// Serves the admin API on `socket`.
    pub fn start(
        settings: AdminSettings,
        socket: std::net::TcpListener,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        let local_addr = socket.local_addr()?;
        let listener = TcpListener::from_std(socket)?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let shared = shared.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, shared.clone(), peer));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = token.cancelled() => conn.as_mut().graceful_shutdown(),
                    }
                });
            }
        });
        tracing::info!(addr = %local_addr, "admin listening");
        Ok(AdminServer {
            settings,
            local_addr,
            stop,
        })
    }

    /// Stops accepting.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

type AdminResponse = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    _peer: SocketAddr,
) -> Result<AdminResponse, Infallible> {
    let path = req.uri().path();
    let resp = match (req.method(), path) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, shared.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        (&Method::GET, "/status") => json(StatusCode::OK, &status(&shared)),
        (_, "/healthz" | "/metrics" | "/status") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /metrics or /status\n",
        ),
    };
    Ok(resp)
}

/// The `/status` document.
pub fn status(shared: &Shared) -> serde_json::Value {
    let cfg = shared.config.load();
    let addrs = shared.listener_addrs.load();
    let pools = shared.pools.load();
    let now = now_ms();
    let listeners: Vec<_> = cfg
        .listeners
        .iter()
        .map(|l| {
            serde_json::json!({
                "name": &*l.name,
                "bind": addrs.get(&l.name).map(|a| a.to_string()),
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "pool": &*l.pool,
            })
        })
        .collect();
    let pools_json: Vec<_> = cfg
        .pools
        .iter()
        .filter_map(|ps| {
            let pool = pools.get(&ps.name)?.load();
            let eligible = pool.eligible();
            let servers: Vec<_> = pool
                .servers
                .iter()
                .map(|s| {
                    let st = &s.state;
                    let a = st.availability();
                    let (up_ms, down_ms) = a.totals(now);
                    let (mtbf, mttr, avail) = a.summary(now);
                    serde_json::json!({
                        "name": &*st.name,
                        "addr": st.addr.to_string(),
                        "backup": s.settings.backup,
                        "weight": s.settings.weight,
                        "effective_weight": st.effective_weight(s.settings.weight, ps.slow_start, now),
                        "eligible": eligible.contains(s.idx),
                        "health": if st.health_up() { "up" } else { "down" },
                        "admin_state": st.admin_state().as_str(),
                        "weight_override": st.weight_override(),
                        "ejected": st.ejected_until() > now,
                        "flap_suppressed": st.suppressed(),
                        "inflight": st.load.load(std::sync::atomic::Ordering::Relaxed),
                        "requests": st.metrics.requests.get(),
                        "availability": {
                            "up_seconds": up_ms as f64 / 1000.0,
                            "down_seconds": down_ms as f64 / 1000.0,
                            "failures": a.failures,
                            "mtbf_seconds": mtbf,
                            "mttr_seconds": mttr,
                            "ratio": avail,
                        },
                    })
                })
                .collect();
            Some(serde_json::json!({
                "name": &*ps.name,
                "algorithm": ps.algorithm.name(),
                "servers": servers,
            }))
        })
        .collect();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": cfg.source.display().to_string(),
        "listeners": listeners,
        "pools": pools_json,
    })
}

/// Registers the scrape-time collectors of live server state.
pub fn register_collectors(shared: &Arc<Shared>) {
    let c = StateCollector::new(shared.registry.clone());
    // Registering a collector with fresh names into a fresh registry cannot fail.
    let _ = shared.metrics.registry().register(Box::new(c));
}

/// Reads server states at scrape time.
struct StateCollector {
    registry: Arc<Registry>,
    up: IntGaugeVec,
    eligible: IntGaugeVec,
    inflight: IntGaugeVec,
    up_seconds: GaugeVec,
    down_seconds: GaugeVec,
    failures: IntGaugeVec,
    availability: GaugeVec,
    mtbf: GaugeVec,
    mttr: GaugeVec,
    descs: Vec<Desc>,
}

impl StateCollector {
    fn new(registry: Arc<Registry>) -> Self {
        let l = &["pool", "server"];
        let ig = |n: &str, h: &str| {
            IntGaugeVec::new(Opts::new(n, h), l).expect("metric definition is valid")
        };
        let g = |n: &str, h: &str| {
            GaugeVec::new(Opts::new(n, h), l).expect("metric definition is valid")
        };
        let up = ig(
            "fulcrum_server_up",
            "1 if active health checks consider the server up.",
        );
        let eligible = ig(
            "fulcrum_server_eligible",
            "1 if the server may receive new traffic now.",
        );
        let inflight = ig(
            "fulcrum_server_inflight",
            "In-flight requests (L7) or open connections (L4).",
        );
        let up_seconds = g(
            "fulcrum_server_up_seconds",
            "Time the server has been up since it was configured.",
        );
        let down_seconds = g(
            "fulcrum_server_down_seconds",
            "Time the server has been down since it was configured.",
        );
        let failures = ig(
            "fulcrum_server_failures",
            "Up-to-down transitions since the server was configured.",
        );
        let availability = g(
            "fulcrum_server_availability_ratio",
            "MTBF / (MTBF + MTTR) since the server was configured.",
        );
        let mtbf = g("fulcrum_server_mtbf_seconds", "Mean time between failures.");
        let mttr = g("fulcrum_server_mttr_seconds", "Mean time to repair.");
        let mut descs = Vec::new();
        for d in [up.desc(), eligible.desc(), inflight.desc(), failures.desc()] {
            descs.extend(d.into_iter().cloned());
        }
        for d in [
            up_seconds.desc(),
            down_seconds.desc(),
            availability.desc(),
            mtbf.desc(),
            mttr.desc(),
        ] {
            descs.extend(d.into_iter().cloned());
        }
        StateCollector {
            registry,
            up,
            eligible,
            inflight,
            up_seconds,
            down_seconds,
            failures,
            availability,
            mtbf,
            mttr,
            descs,
        }
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = now_ms();
        for v in [&self.up, &self.eligible, &self.inflight, &self.failures] {
            v.reset();
        }
        for v in [
            &self.up_seconds,
            &self.down_seconds,
            &self.availability,
            &self.mtbf,
            &self.mttr,
        ] {
            v.reset();
        }
        for st in self.registry.all() {
            let l = [&*st.pool, &*st.name];
            let a = st.availability();
            let (up_ms, down_ms) = a.totals(now);
            let (mtbf, mttr, avail) = a.summary(now);
            self.up.with_label_values(&l).set(i64::from(st.health_up()));
            self.eligible
                .with_label_values(&l)
                .set(i64::from(st.eligible(now)));
            self.inflight.with_label_values(&l).set(i64::from(
                st.load.load(std::sync::atomic::Ordering::Relaxed),
            ));
            self.failures.with_label_values(&l).set(a.failures as i64);
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
        let mut out = Vec::new();
        for v in [&self.up, &self.eligible, &self.inflight, &self.failures] {
            out.extend(v.collect());
        }
        for v in [
            &self.up_seconds,
            &self.down_seconds,
            &self.availability,
            &self.mtbf,
            &self.mttr,
        ] {
            out.extend(v.collect());
        }
        out
    }
}
