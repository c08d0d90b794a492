//! The `/status` document: listeners, pools, and every server's state, weights, overrides,
//! counters, latency quantiles and availability record, plus the configuration generation
//! and the last reload's outcome; read from the current generation without locking the
//! request path. The status page (`page`) renders the same document.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::Shared;
use crate::backend::{now_ms, AdminState, BackendState};
use crate::config::RouteAction;
use crate::metrics::{HistogramSnapshot, ShardedHistogram};
use crate::pool::Server;

/// A split route's pools with their configured and effective weights, and whether an
/// admin override is in force.
pub fn split_json(shared: &Shared, listener: &str, route: &str) -> Value {
    let cfg = shared.config.load();
    let configured: Vec<u32> = cfg
        .listeners
        .iter()
        .find(|l| &*l.name == listener)
        .and_then(|l| l.routes.iter().find(|r| &*r.name == route))
        .and_then(|r| match &r.action {
            RouteAction::Split(t) => Some(t.iter().map(|t| t.weight).collect()),
            _ => None,
        })
        .unwrap_or_default();
    let state = shared.splits.get(listener, route);
    let pools: Vec<&str> = state
        .as_ref()
        .map(|s| s.pools().iter().map(|p| &**p).collect())
        .unwrap_or_default();
    let over = state.as_ref().and_then(|s| s.override_weights());
    json!({
        "listener": listener,
        "route": route,
        "pools": pools,
        "configured_weights": configured,
        "weights": over.clone().unwrap_or_else(|| configured.clone()),
        "overridden": over.is_some(),
    })
}

/// The `/status` document.
pub fn status(shared: &Shared) -> Value {
    let cfg = shared.config.load();
    let addrs = shared.listener_addrs.load();
    let pools = shared.pools.load();
    let listeners: Vec<_> = cfg
        .listeners
        .iter()
        .map(|l| {
            json!({
                "name": &*l.name,
                "bind": addrs.get(&l.name).map(|a| a.to_string()),
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "pool": l.pool.as_deref(),
                "routes": l.routes.iter().map(|r| {
                    let mut v = json!({
                        "name": &*r.name,
                        "match": r.describe_match(),
                        "action": r.describe(),
                    });
                    if matches!(r.action, RouteAction::Split(_)) {
                        v["split"] = split_json(shared, &l.name, &r.name);
                    }
                    v
                }).collect::<Vec<_>>(),
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
                    let mut v = server_json(s, ps.slow_start);
                    v["eligible"] = Value::Bool(eligible.contains(s.idx));
                    v
                })
                .collect();
            Some(json!({
                "name": &*ps.name,
                "algorithm": ps.algorithm.name(),
                "inflight": pool.inflight.load(Ordering::Relaxed),
                "servers": servers,
            }))
        })
        .collect();
    let (generation, reload) = config_history(shared);
    let tls: Vec<Value> = shared
        .certificates
        .load()
        .iter()
        .map(|(listener, c)| {
            json!({
                "listener": &**listener,
                "name": c.name,
                "names": c.names,
                "serial": c.serial,
                "subject": c.subject,
                "default": c.is_default,
                "not_before_unix": c.not_before,
                "not_after_unix": c.not_after,
                "ocsp_stapled": c.ocsp_stapled,
            })
        })
        .collect();
    json!({
        "tls": tls,
        "version": env!("CARGO_PKG_VERSION"),
        "config": cfg.source.display().to_string(),
        "generation": generation,
        "reload": reload,
        "listeners": listeners,
        "pools": pools_json,
    })
}

/// The generation in force and the `reload` section.
fn config_history(shared: &Shared) -> (u64, Value) {
    let m = &shared.metrics;
    let count = |r: &str| m.reloads.with_label_values(&[r]).get();
    let (successes, failures) = (count("success"), count("failure"));
    let generation = shared.history.generation();
    let last = match shared.history.last_reload() {
        Some(o) => json!({
            "result": o.result(),
            "at_unix": o.at_unix,
            "error": o.error,
        }),
        None => Value::Null,
    };
    let reload = json!({
        "last": last,
        "successes": successes,
        "failures": failures,
        "rollbacks": m.rollbacks.get(),
        "applied_at_unix": m.last_reload_success_time.get(),
    });
    (generation, reload)
}

/// One server as `/status` and the runtime API show it.
pub fn server_json(s: &Server, slow_start: Option<std::time::Duration>) -> Value {
    let st = &s.state;
    let now = now_ms();
    let a = st.availability();
    let (up_ms, down_ms) = a.totals(now);
    let (mtbf, mttr, avail) = a.summary(now);
    let ejected_until = st.ejected_until();
    json!({
        "name": &*st.name,
        "addr": st.addr.to_string(),
        "backup": s.settings.backup,
        "origin": s.settings.origin.as_str(),
        "weight": s.settings.weight,
        "effective_weight": st.effective_weight(s.settings.weight, slow_start, now),
        "eligible": st.eligible(now),
        "health": if st.health_up() { "up" } else { "down" },
        "admin_state": st.admin_state().as_str(),
        "weight_override": st.weight_override(),
        "overrides": overrides(st),
        "ejected": ejected_until > now,
        "ejection_remaining_seconds": (ejected_until > now)
            .then(|| (ejected_until - now) as f64 / 1000.0),
        "ejections": st.metrics.ejections.get(),
        "flap_suppressed": st.suppressed(),
        "inflight": st.load.load(Ordering::Relaxed),
        "requests": st.metrics.requests(),
        "errors": st.metrics.errors_total(|_| true),
        "latency": latency(&st.metrics.response),
        "availability": {
            "up_seconds": up_ms as f64 / 1000.0,
            "down_seconds": down_ms as f64 / 1000.0,
            "failures": a.failures,
            "mtbf_seconds": mtbf,
            "mttr_seconds": mttr,
            "ratio": avail,
        },
    })
}

/// Response-time quantiles of one server, from its `fulcrum_server_response_seconds`
/// histogram, since the server was configured; `null` quantiles when it has no samples.
fn latency(h: &ShardedHistogram) -> Value {
    let HistogramSnapshot {
        cumulative: buckets,
        count,
        sum,
    } = h.snapshot();
    json!({
        "count": count,
        "sum_seconds": sum,
        "p50_seconds": quantile(0.5, &buckets, count),
        "p99_seconds": quantile(0.99, &buckets, count),
    })
}

/// The `q` quantile of a cumulative histogram (finite upper bounds, ascending; `count`
/// includes the samples above the last bound), interpolated linearly inside the bucket
/// that holds it, as Prometheus' `histogram_quantile` does. Samples above the last finite
/// bound report that bound: the histogram cannot say more. `None` without samples.
pub fn quantile(q: f64, buckets: &[(f64, u64)], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in buckets {
        if cumulative as f64 >= rank && cumulative > lower.1 {
            let in_bucket = (cumulative - lower.1) as f64;
            let share = (rank - lower.1 as f64) / in_bucket;
            return Some(lower.0 + (bound - lower.0) * share.clamp(0.0, 1.0));
        }
        lower = (bound, cumulative);
    }
    buckets.last().map(|b| b.0)
}

/// The runtime changes an operator made to this server (empty when none): they outlive
/// reloads until `POST .../reset`.
pub fn overrides(st: &BackendState) -> Value {
    let mut o = serde_json::Map::new();
    if st.admin_state() != AdminState::Enabled {
        o.insert("admin_state".into(), st.admin_state().as_str().into());
    }
    if let Some(w) = st.weight_override() {
        o.insert("weight".into(), w.into());
    }
    let now = now_ms();
    if let Some(r) = st.weight_ramp() {
        o.insert(
            "weight_ramp".into(),
            json!({
                "from": r.from,
                "to": r.to,
                "now": r.at(now),
                "remaining_seconds": r.end_ms().saturating_sub(now) as f64 / 1000.0,
            }),
        );
    }
    let deadline = st.drain_deadline();
    if deadline > now && st.admin_state() == AdminState::Draining {
        o.insert(
            "drain_deadline_seconds".into(),
            ((deadline - now) as f64 / 1000.0).into(),
        );
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        // 10 samples at or below 0.01, 10 more at or below 0.1.
        let b = [(0.01, 10), (0.1, 20), (1.0, 20)];
        assert_eq!(quantile(0.5, &b, 20), Some(0.01));
        let p75 = quantile(0.75, &b, 20).unwrap();
        assert!((p75 - 0.055).abs() < 1e-9, "{p75}");
        assert_eq!(quantile(0.5, &b, 0), None, "no samples, no quantile");
        // Everything above the last bound: the last bound is all we can say.
        assert_eq!(quantile(0.99, &[(0.5, 0), (1.0, 0)], 3), Some(1.0));
        // A first bucket interpolates from zero.
        let p = quantile(0.5, &[(0.002, 4)], 4).unwrap();
        assert!((p - 0.001).abs() < 1e-12, "{p}");
    }
}
