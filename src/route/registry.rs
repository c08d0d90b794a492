//! The split states of every listener, keyed by (listener, route name): what carries admin
//! weight overrides across reloads. A rebuild adopts the state of each split route that
//! still splits between the same pools, so an override written at any moment, even during
//! a reload, lands in the state every later table reads. Locked by reloads and admin calls
//! only, never by a request.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::split::{SplitError, SplitState};

/// An override that a rebuild could not keep, for the caller to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedOverride {
    /// Listener name.
    pub listener: Arc<str>,
    /// Route name.
    pub route: Arc<str>,
    /// The override's weights.
    pub weights: Vec<u32>,
    /// Why: the route is gone, no longer a split, or splits between other pools.
    pub reason: &'static str,
}

impl fmt::Display for DroppedOverride {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "listener {:?} route {:?}: split weight override {:?} dropped ({})",
            &*self.listener, &*self.route, self.weights, self.reason
        )
    }
}

type Key = (Arc<str>, Arc<str>);

/// The split states of every listener, keyed by (listener, route name): what carries admin
/// overrides across reloads. One per process, beside the backend state registry.
#[derive(Debug, Default)]
pub struct SplitRegistry {
    /// Locked by reloads and admin calls only, never by a request; no `.await` inside.
    states: Mutex<HashMap<Key, Arc<SplitState>>>,
}

impl SplitRegistry {
    /// An empty registry.
    pub fn new() -> SplitRegistry {
        SplitRegistry::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<SplitState>>> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For a rebuild of `listener` whose split routes are `splits` (name, pools): the state
    /// of each, kept when the same route splits between the same pools (with its override),
    /// else fresh. Forgets this listener's other routes. Returns the overrides it dropped.
    pub(crate) fn adopt(
        &self,
        listener: &str,
        splits: &[(Arc<str>, Vec<Arc<str>>)],
    ) -> (Vec<Arc<SplitState>>, Vec<DroppedOverride>) {
        let mut map = self.lock();
        let mut dropped = Vec::new();
        let mut drop_note = |route: &Arc<str>, st: &SplitState, reason: &'static str| {
            if let Some(weights) = st.override_weights() {
                dropped.push(DroppedOverride {
                    listener: listener.into(),
                    route: route.clone(),
                    weights,
                    reason,
                });
            }
        };
        let mut states = Vec::with_capacity(splits.len());
        for (route, pools) in splits {
            let key: Key = (listener.into(), route.clone());
            let state = match map.get(&key) {
                Some(st) if *st.pools == **pools => st.clone(),
                other => {
                    if let Some(st) = other {
                        drop_note(route, st, "its pools changed");
                    }
                    let st = Arc::new(SplitState::new(pools));
                    map.insert(key, st.clone());
                    st
                }
            };
            states.push(state);
        }
        map.retain(|(l, r), st| {
            let keep = &**l != listener || splits.iter().any(|(name, _)| name == r);
            if !keep {
                drop_note(r, st, "the route is gone or no longer a split");
            }
            keep
        });
        (states, dropped)
    }

    /// Forgets every listener not in `keep` (call after a reload with the new names).
    pub fn retain_listeners(&self, keep: &[&str]) {
        self.lock().retain(|(l, _), _| keep.contains(&&**l));
    }

    /// The state of split route `route` of `listener`.
    pub fn get(&self, listener: &str, route: &str) -> Option<Arc<SplitState>> {
        self.lock().get(&(listener.into(), route.into())).cloned()
    }

    /// Overrides the weights of a split route; the table in force and later ones see it.
    pub fn set(&self, listener: &str, route: &str, weights: &[u32]) -> Result<(), SplitError> {
        self.found(listener, route)?.set(weights)
    }

    /// Clears an override: back to the configured weights.
    pub fn reset(&self, listener: &str, route: &str) -> Result<(), SplitError> {
        self.found(listener, route)?.reset();
        Ok(())
    }

    fn found(&self, listener: &str, route: &str) -> Result<Arc<SplitState>, SplitError> {
        self.get(listener, route)
            .ok_or_else(|| SplitError::NotFound {
                listener: listener.into(),
                route: route.into(),
            })
    }

    /// Every override in force, sorted by listener and route.
    pub fn overrides(&self) -> Vec<SplitOverride> {
        let mut v: Vec<SplitOverride> = self
            .lock()
            .iter()
            .filter_map(|((l, r), st)| {
                st.override_weights().map(|weights| SplitOverride {
                    listener: l.clone(),
                    route: r.clone(),
                    pools: st.pools.to_vec(),
                    weights,
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.listener, &a.route).cmp(&(&b.listener, &b.route)));
        v
    }
}

/// An admin override in force (for `/status` and the reload log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitOverride {
    /// Listener name.
    pub listener: Arc<str>,
    /// Route name.
    pub route: Arc<str>,
    /// The split's pools, in order.
    pub pools: Vec<Arc<str>>,
    /// Their weights.
    pub weights: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|&n| Arc::from(n)).collect()
    }

    #[test]
    fn registry_keeps_state_for_the_same_pools_only() {
        let reg = SplitRegistry::new();
        let ab = pools(&["a", "b"]);
        let (s1, d) = reg.adopt("web", &[("canary".into(), ab.clone())]);
        assert!(d.is_empty());
        reg.set("web", "canary", &[1, 9]).unwrap();
        let (s2, d) = reg.adopt("web", &[("canary".into(), ab.clone())]);
        assert!(
            Arc::ptr_eq(&s1[0], &s2[0]) && d.is_empty(),
            "same pools: kept"
        );
        assert_eq!(s2[0].override_weights(), Some(vec![1, 9]));
        assert_eq!(reg.overrides().len(), 1);

        let (s3, d) = reg.adopt("web", &[("canary".into(), pools(&["a", "c"]))]);
        assert!(!Arc::ptr_eq(&s2[0], &s3[0]));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].reason, "its pools changed");
        assert_eq!(s3[0].override_weights(), None);

        reg.set("web", "canary", &[3, 1]).unwrap();
        let (_, d) = reg.adopt("web", &[]);
        assert_eq!(d[0].reason, "the route is gone or no longer a split");
        assert!(reg.get("web", "canary").is_none());
        assert!(matches!(
            reg.set("web", "canary", &[1, 1]),
            Err(SplitError::NotFound { .. })
        ));
    }

    #[test]
    fn registry_forgets_removed_listeners() {
        let reg = SplitRegistry::new();
        reg.adopt("a", &[("r".into(), pools(&["x", "y"]))]);
        reg.adopt("b", &[("r".into(), pools(&["x", "y"]))]);
        reg.retain_listeners(&["b"]);
        assert!(reg.get("a", "r").is_none() && reg.get("b", "r").is_some());
    }
}
