//! The `/status` document: listeners, pools, and every server's state, weights, overrides,
//! counters and availability record, read from the current generation without locking the
//! request path.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::backend::{now_ms, AdminState, BackendState};
use crate::pool::Server;
use crate::runtime::Shared;

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
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": cfg.source.display().to_string(),
        "listeners": listeners,
        "pools": pools_json,
    })
}

/// One server as `/status` and the runtime API show it.
pub fn server_json(s: &Server, slow_start: Option<std::time::Duration>) -> Value {
    let st = &s.state;
    let now = now_ms();
    let a = st.availability();
    let (up_ms, down_ms) = a.totals(now);
    let (mtbf, mttr, avail) = a.summary(now);
    json!({
        "name": &*st.name,
        "addr": st.addr.to_string(),
        "backup": s.settings.backup,
        "weight": s.settings.weight,
        "effective_weight": st.effective_weight(s.settings.weight, slow_start, now),
        "eligible": st.eligible(now),
        "health": if st.health_up() { "up" } else { "down" },
        "admin_state": st.admin_state().as_str(),
        "weight_override": st.weight_override(),
        "overrides": overrides(st),
        "ejected": st.ejected_until() > now,
        "flap_suppressed": st.suppressed(),
        "inflight": st.load.load(Ordering::Relaxed),
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
    Value::Object(o)
}
