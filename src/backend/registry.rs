//! The [`Registry`]: every server's state, by pool and address, across config generations,
//! so that a server a reload keeps keeps its health, counters and overrides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::{
    BackendState, FailureKind, Selection, DISAGREE_CHECK_FAILING, DISAGREE_TRAFFIC_FAILING,
};
use crate::config::ServerSettings;
use crate::metrics::Metrics;

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
