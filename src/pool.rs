//! A pool at run time: its servers with their live states, and the eligible table that the
//! balancer picks from, republished (arc-swap) whenever a server's state changes.
//!
//! Readers (`pick`) load the table once and never lock. Writers call [`Pool::publish`], which
//! rebuilds the table from the servers' atomics under a small lock so two concurrent
//! publishers cannot store tables out of order.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwap;

use crate::backend::{now_ms, BackendState, Registry, Selection};
use crate::balance::{hash_bytes, BackendIdx, Member, PickKey, Tier};
use crate::config::{HealthKind, PoolSettings, ServerSettings};
use crate::metrics::Metrics;
use crate::queue::Queue;

/// One server of a pool.
pub struct Server {
    /// Its position in the pool.
    pub idx: BackendIdx,
    /// Configured settings.
    pub settings: ServerSettings,
    /// Live state (shared with other generations that keep this server).
    pub state: Arc<BackendState>,
    /// Opaque id used in sticky cookies (never the address).
    pub cookie_id: String,
    id_hash: u64,
}

/// The servers that may receive traffic now, per tier, with the balancer's precomputation.
pub struct Eligible {
    /// Primary servers.
    pub primary: Tier,
    /// Backup servers, used only when no primary is eligible.
    pub backup: Tier,
    mask: Vec<bool>,
}

impl Eligible {
    /// Whether server `idx` is in either tier.
    pub fn contains(&self, idx: BackendIdx) -> bool {
        self.mask.get(idx.get()).copied().unwrap_or(false)
    }
}

/// A pool of servers behind one balancing algorithm.
pub struct Pool {
    /// Settings this pool was built from.
    pub settings: Arc<PoolSettings>,
    /// Servers in config order; `BackendIdx` indexes this.
    pub servers: Vec<Server>,
    /// In-flight requests over the whole pool.
    pub inflight: AtomicU32,
    /// Limits retries to a share of requests.
    pub budget: RetryBudget,
    /// Requests waiting for a server slot (servers with `max_conns`).
    pub queue: Queue,
    eligible: ArcSwap<Eligible>,
    /// Serialises publishers only; never taken on the request path.
    publish_lock: Mutex<()>,
    /// The slot this pool is installed in, so late publishers reach its successor.
    slot: OnceLock<Weak<PoolSlot>>,
}

/// The current generation of a named pool; outlives reloads, so long-lived tasks (health
/// checks, ejection timers) publish into whichever generation is current.
pub struct PoolSlot {
    current: ArcSwap<Pool>,
}

impl PoolSlot {
    /// A slot holding `pool`.
    pub fn new(pool: Arc<Pool>) -> Arc<Self> {
        let slot = Arc::new(PoolSlot {
            current: ArcSwap::new(pool.clone()),
        });
        let _ = pool.slot.set(Arc::downgrade(&slot));
        slot
    }

    /// The current generation.
    pub fn load(&self) -> Arc<Pool> {
        self.current.load_full()
    }

    /// Installs a new generation and publishes it.
    pub fn store(self: &Arc<Self>, pool: Arc<Pool>) {
        let _ = pool.slot.set(Arc::downgrade(self));
        self.current.store(pool.clone());
        pool.publish();
    }

    /// Republishes the current generation.
    pub fn publish(&self) {
        self.current.load().publish();
    }
}

impl Pool {
    /// Builds the pool, taking (or creating) each server's state from the registry.
    pub fn new(settings: Arc<PoolSettings>, registry: &Registry, metrics: &Metrics) -> Pool {
        // Without active checks there is no first check to wait for: servers start up.
        let initial_up =
            settings.health.initial_up || matches!(settings.health.kind, HealthKind::None);
        let servers: Vec<Server> = settings
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let id_hash = hash_bytes(s.name.as_bytes());
                let cookie_hash = hash_bytes(format!("{}/{}", settings.name, s.name).as_bytes());
                Server {
                    idx: BackendIdx(i as u32),
                    settings: s.clone(),
                    state: registry.get_or_create(&settings.name, s, metrics, initial_up),
                    cookie_id: format!("{cookie_hash:016x}"),
                    id_hash,
                }
            })
            .collect();
        let pool = Pool {
            eligible: ArcSwap::from_pointee(Eligible {
                primary: Tier::build(&settings.algorithm, Vec::new()),
                backup: Tier::build(&settings.algorithm, Vec::new()),
                mask: vec![false; servers.len()],
            }),
            servers,
            inflight: AtomicU32::new(0),
            budget: RetryBudget::new(settings.retry_budget),
            queue: Queue::new(&settings, metrics),
            publish_lock: Mutex::new(()),
            slot: OnceLock::new(),
            settings,
        };
        pool.publish();
        pool
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The current eligible table.
    #[inline]
    pub fn eligible(&self) -> arc_swap::Guard<Arc<Eligible>> {
        self.eligible.load()
    }

    /// Rebuilds and stores the eligible table from the servers' current states.
    pub fn publish(&self) {
        let _serialise = self.publish_lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        let mut primary = Vec::new();
        let mut backup = Vec::new();
        let mut mask = vec![false; self.servers.len()];
        for s in &self.servers {
            let st = &s.state;
            st.record_availability(st.operational(now));
            if !st.eligible(now) {
                continue;
            }
            mask[s.idx.get()] = true;
            let member = Member {
                idx: s.idx,
                weight: st.effective_weight(s.settings.weight, self.settings.slow_start, now),
                id_hash: s.id_hash,
                load: st.load.clone(),
            };
            if s.settings.backup {
                backup.push(member);
            } else {
                primary.push(member);
            }
        }
        let alg = &self.settings.algorithm;
        self.eligible.store(Arc::new(Eligible {
            primary: Tier::build(alg, primary),
            backup: Tier::build(alg, backup),
            mask,
        }));
    }

    /// Republishes the newest generation of this pool (this one if it is not installed).
    pub fn publish_latest(&self) {
        match self.slot.get().and_then(Weak::upgrade) {
            Some(slot) => slot.publish(),
            None => self.publish(),
        }
    }

    /// Chooses a server for a request: primaries first, then backups.
    #[inline]
    pub fn pick(&self, key: &PickKey) -> Option<(&Server, Selection)> {
        let table = self.eligible.load();
        if let Some(i) = table.primary.pick(key) {
            let why = if self.settings.algorithm.needs_key() {
                Selection::Hash
            } else {
                Selection::Balance
            };
            return Some((&self.servers[i.get()], why));
        }
        table
            .backup
            .pick(key)
            .map(|i| (&self.servers[i.get()], Selection::Backup))
    }

    /// Chooses a server other than those in `tried`, for a retry.
    pub fn pick_other(&self, key: &PickKey, tried: &[BackendIdx]) -> Option<&Server> {
        let table = self.eligible.load();
        for tier in [&table.primary, &table.backup] {
            for _ in 0..3 {
                match tier.pick(key) {
                    Some(i) if !tried.contains(&i) => return Some(&self.servers[i.get()]),
                    Some(_) => continue,
                    None => break,
                }
            }
            if let Some(m) = tier.members().iter().find(|m| !tried.contains(&m.idx)) {
                return Some(&self.servers[m.idx.get()]);
            }
        }
        None
    }

    /// The eligible server whose sticky cookie id is `id`.
    pub fn sticky_target(&self, id: &str) -> Option<&Server> {
        let s = self.servers.iter().find(|s| s.cookie_id == id)?;
        self.eligible.load().contains(s.idx).then_some(s)
    }

    /// Takes one unit of pool-wide in-flight load (released by the returned guard).
    #[inline]
    pub fn enter(self: &Arc<Self>) -> PoolLoad {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        PoolLoad(self.clone())
    }
}

/// RAII hold on the pool's in-flight gauge.
pub struct PoolLoad(Arc<Pool>);

impl PoolLoad {
    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.0
    }

    /// The server of this pool whose state is `st` (a scan: for failures, not per request).
    pub fn server_of(&self, st: &Arc<BackendState>) -> Option<&Server> {
        self.0.servers.iter().find(|s| Arc::ptr_eq(&s.state, st))
    }
}

impl Drop for PoolLoad {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Retries allowed per window regardless of traffic, so a quiet pool can still retry.
const MIN_RETRIES_PER_WINDOW: u64 = 10;
/// Length of a retry-budget window, ms.
const BUDGET_WINDOW_MS: u64 = 10_000;

/// Caps retries at a share of requests over a sliding pair of windows, so that when every
/// server fails the proxy does not multiply the load it sends them (a retry storm).
pub struct RetryBudget {
    ratio: f64,
    window: AtomicU64,
    requests: [AtomicU64; 2],
    retries: [AtomicU64; 2],
}

impl RetryBudget {
    fn new(ratio: f64) -> Self {
        RetryBudget {
            ratio,
            window: AtomicU64::new(0),
            requests: [AtomicU64::new(0), AtomicU64::new(0)],
            retries: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Moves to the current window if time has passed; returns its slot.
    fn slot(&self, now: u64) -> usize {
        let w = now / BUDGET_WINDOW_MS;
        let cur = self.window.load(Ordering::Relaxed);
        if w != cur
            && self
                .window
                .compare_exchange(cur, w, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let s = (w % 2) as usize;
            if w > cur + 1 {
                // More than a whole window passed: the other slot is stale too.
                self.requests[1 - s].store(0, Ordering::Relaxed);
                self.retries[1 - s].store(0, Ordering::Relaxed);
            }
            self.requests[s].store(0, Ordering::Relaxed);
            self.retries[s].store(0, Ordering::Relaxed);
        }
        (w % 2) as usize
    }

    /// Counts a first attempt. Cheap: no clock read, one relaxed add.
    #[inline]
    pub fn note_request(&self) {
        let s = (self.window.load(Ordering::Relaxed) % 2) as usize;
        self.requests[s].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a retry may be made now; counts it if so.
    pub fn try_retry(&self) -> bool {
        let s = self.slot(now_ms());
        let requests =
            self.requests[0].load(Ordering::Relaxed) + self.requests[1].load(Ordering::Relaxed);
        let retries =
            self.retries[0].load(Ordering::Relaxed) + self.retries[1].load(Ordering::Relaxed);
        let allowed = ((requests as f64 * self.ratio) as u64).max(MIN_RETRIES_PER_WINDOW);
        if retries >= allowed {
            return false;
        }
        self.retries[s].fetch_add(1, Ordering::Relaxed);
        true
    }
}
