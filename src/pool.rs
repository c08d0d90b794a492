//! A pool at run time: its servers with their live states, and the eligible table that the
//! balancer picks from, republished (arc-swap) whenever a server's state changes.
//!
//! Readers (`pick`) load the table once and never lock. Writers call [`Pool::publish`], which
//! rebuilds the table from the servers' atomics under a small lock so two concurrent
//! publishers cannot store tables out of order.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwap;

use crate::backend::{now_ms, BackendState, Registry, Selection, Waiters};
use crate::balance::{hash_bytes, BackendIdx, Cursor, Member, PickKey, Tier};
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

/// What a pool keeps across its generations (a reload, a discovery update): the live figures
/// and queues that belong to the pool's name rather than to one build of it (DESIGN.md
/// rule 5). A new generation takes its predecessor's.
#[derive(Clone, Default)]
pub struct PoolCarry {
    inflight: Arc<AtomicU32>,
    budget: Arc<BudgetWindows>,
    waiters: Arc<Waiters>,
    /// Rotation cursors of the primary and backup tiers.
    cursors: [Cursor; 2],
}

/// A pool of servers behind one balancing algorithm.
pub struct Pool {
    /// Settings this pool was built from.
    pub settings: Arc<PoolSettings>,
    /// Servers in config order; `BackendIdx` indexes this.
    pub servers: Vec<Server>,
    /// In-flight requests over the whole pool (shared by its generations).
    pub inflight: Arc<AtomicU32>,
    /// Limits retries to a share of requests.
    pub budget: RetryBudget,
    /// What this generation hands to the next.
    carry: PoolCarry,
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
    /// A rebuild off the workers is queued and has not yet read the servers' states: a
    /// publish meanwhile needs no rebuild of its own (that one will see its change).
    queued: AtomicBool,
}

/// From this many servers on, a health change rebuilds the pool's table on a blocking
/// thread rather than on the runtime worker that saw the change (a hash ring of 1000
/// servers takes milliseconds; one of a few servers, microseconds).
pub const OFF_WORKER_SERVERS: usize = 32;

impl PoolSlot {
    /// A slot holding `pool`.
    pub fn new(pool: Arc<Pool>) -> Arc<Self> {
        let slot = Arc::new(PoolSlot {
            current: ArcSwap::new(pool.clone()),
            queued: AtomicBool::new(false),
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

    /// Republishes the current generation. A large pool is rebuilt on a blocking thread
    /// (when on a multi-threaded runtime), so the worker that saw a health change goes on
    /// serving; publishes that come while one is queued are folded into it.
    pub fn publish(self: &Arc<Self>) {
        let pool = self.current.load();
        if pool.servers.len() < OFF_WORKER_SERVERS || !may_rebuild_off_worker() {
            pool.publish();
            return;
        }
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let slot = self.clone();
        tokio::task::spawn_blocking(move || {
            // Cleared before the states are read: a change after this gets its own rebuild.
            slot.queued.store(false, Ordering::Release);
            slot.current.load().publish();
        });
    }
}

/// Whether a rebuild may go to a blocking thread: on a worker thread, or on a
/// multi-threaded runtime (a single-threaded test runtime rebuilds inline, at once).
fn may_rebuild_off_worker() -> bool {
    crate::workers::current().is_some()
        || tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

impl Pool {
    /// Builds the pool, taking (or creating) each server's state from the registry; `carry`
    /// is the previous generation's (`Pool::carry`), or a fresh one for a new pool.
    pub fn new(
        settings: Arc<PoolSettings>,
        registry: &Registry,
        metrics: &Metrics,
        carry: PoolCarry,
    ) -> Pool {
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
            inflight: carry.inflight.clone(),
            budget: RetryBudget::new(settings.retry_budget, carry.budget.clone()),
            queue: Queue::new(&settings, metrics, carry.waiters.clone()),
            carry,
            publish_lock: Mutex::new(()),
            slot: OnceLock::new(),
            settings,
        };
        pool.publish();
        pool
    }

    /// What the next generation of this pool takes over from this one.
    pub fn carry(&self) -> PoolCarry {
        self.carry.clone()
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
        let [c0, c1] = &self.carry.cursors;
        self.eligible.store(Arc::new(Eligible {
            primary: Tier::build_with(alg, primary, c0.clone()),
            backup: Tier::build_with(alg, backup, c1.clone()),
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

/// The request and retry counts of a retry budget, shared by a pool's generations.
#[derive(Default)]
pub struct BudgetWindows {
    window: AtomicU64,
    requests: [AtomicU64; 2],
    retries: [AtomicU64; 2],
}

/// Caps retries at a share of requests over a sliding pair of windows, so that when every
/// server fails the proxy does not multiply the load it sends them (a retry storm).
pub struct RetryBudget {
    ratio: f64,
    w: Arc<BudgetWindows>,
}

impl RetryBudget {
    fn new(ratio: f64, w: Arc<BudgetWindows>) -> Self {
        RetryBudget { ratio, w }
    }

    /// Moves to the current window if time has passed; returns its slot.
    fn slot(&self, now: u64) -> usize {
        let BudgetWindows {
            window,
            requests,
            retries,
        } = &*self.w;
        let w = now / BUDGET_WINDOW_MS;
        let cur = window.load(Ordering::Relaxed);
        if w != cur
            && window
                .compare_exchange(cur, w, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let s = (w % 2) as usize;
            if w > cur + 1 {
                // More than a whole window passed: the other slot is stale too.
                requests[1 - s].store(0, Ordering::Relaxed);
                retries[1 - s].store(0, Ordering::Relaxed);
            }
            requests[s].store(0, Ordering::Relaxed);
            retries[s].store(0, Ordering::Relaxed);
        }
        (w % 2) as usize
    }

    /// Counts a first attempt. Cheap: no clock read, one relaxed add.
    #[inline]
    pub fn note_request(&self) {
        let s = (self.w.window.load(Ordering::Relaxed) % 2) as usize;
        self.w.requests[s].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a retry may be made now; counts it if so.
    pub fn try_retry(&self) -> bool {
        let s = self.slot(now_ms());
        let w = &*self.w;
        let requests =
            w.requests[0].load(Ordering::Relaxed) + w.requests[1].load(Ordering::Relaxed);
        let retries = w.retries[0].load(Ordering::Relaxed) + w.retries[1].load(Ordering::Relaxed);
        let allowed = ((requests as f64 * self.ratio) as u64).max(MIN_RETRIES_PER_WINDOW);
        if retries >= allowed {
            return false;
        }
        w.retries[s].fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::AdminState;
    use std::path::Path;
    use std::time::Duration;

    fn pool_of(n: usize) -> (Arc<PoolSlot>, Registry) {
        let servers: Vec<String> = (0..n)
            .map(|i| format!("{{ addr = \"127.0.0.1:{}\" }}", 20000 + i))
            .collect();
        let text = format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"p\"\n\n\
             [[pool]]\nname = \"p\"\nalgorithm = \"consistent_hash\"\nhash_key = \"client_ip\"\n\
             servers = [{}]\n[pool.health]\nkind = \"none\"\n",
            servers.join(", ")
        );
        let cfg = crate::config::parse(&text, Path::new("t.toml")).unwrap();
        let registry = Registry::default();
        let metrics = Metrics::new();
        let pool = Pool::new(
            cfg.pools[0].clone(),
            &registry,
            &metrics,
            PoolCarry::default(),
        );
        (PoolSlot::new(Arc::new(pool)), registry)
    }

    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        for _ in 0..2000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_pool_is_rebuilt_off_the_workers_and_every_change_lands() {
        let (slot, _registry) = pool_of(OFF_WORKER_SERVERS + 8);
        let pool = slot.load();
        assert_eq!(
            pool.eligible().primary.members().len(),
            OFF_WORKER_SERVERS + 8
        );
        // A burst of changes, each followed by a publish: they may fold into fewer
        // rebuilds, but the table must end up with every one of them.
        for s in &pool.servers[..10] {
            s.state.set_admin_state(AdminState::Disabled);
            slot.publish();
        }
        wait_for("all ten out of the table", || {
            pool.eligible().primary.members().len() == OFF_WORKER_SERVERS - 2
        })
        .await;
        for s in &pool.servers[..10] {
            assert!(!pool.eligible().contains(s.idx));
        }
        pool.servers[3].state.set_admin_state(AdminState::Enabled);
        slot.publish();
        wait_for("the one enabled back", || {
            pool.eligible().contains(pool.servers[3].idx)
        })
        .await;
    }

    #[tokio::test]
    async fn a_small_pool_is_rebuilt_at_once() {
        let (slot, _registry) = pool_of(3);
        let pool = slot.load();
        pool.servers[0].state.set_admin_state(AdminState::Disabled);
        slot.publish();
        assert!(!pool.eligible().contains(pool.servers[0].idx));
    }
}
