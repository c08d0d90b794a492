//! The supervisor: turns a validated [`Config`] into running listeners, pools and health
//! tasks; applies reloads atomically (everything new is built and bound off to the side,
//! then swapped in); and stops everything in two phases at shutdown.
//!
//! Reloads and admin changes are serialised by one async mutex; the request path never
//! touches it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminServer};
use crate::backend::Registry;
use crate::config::{self, Config, ConfigError, HealthSettings, PoolSettings, Protocol};
use crate::health::checker;
use crate::listener::{self, Listener, Route};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolSlot};
use crate::proxy::http::HttpRoute;
use crate::proxy::tcp::TcpRoute;
use crate::proxy::upstream::ServerUpstream;

/// Why a config could not be started or applied.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A pool generation and its upstream connections.
struct PoolEntry {
    slot: Arc<PoolSlot>,
    upstreams: Arc<[Arc<ServerUpstream>]>,
}

/// A health task and the settings it runs with.
struct HealthTask {
    settings: HealthSettings,
    cancel: CancellationToken,
}

struct Live {
    listeners: HashMap<Arc<str>, Listener>,
    pools: HashMap<Arc<str>, PoolEntry>,
    health: HashMap<(Arc<str>, SocketAddr), HealthTask>,
    admin: Option<AdminServer>,
}

/// Shared by the supervisor and the admin API.
pub struct Shared {
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Server states across generations.
    pub registry: Arc<Registry>,
    /// The config in force.
    pub config: ArcSwap<Config>,
    /// Pools by name (current generations), for the admin API.
    pub pools: ArcSwap<HashMap<Arc<str>, Arc<PoolSlot>>>,
    /// Listener addresses by name.
    pub listener_addrs: ArcSwap<HashMap<Arc<str>, SocketAddr>>,
    live: Mutex<Option<Live>>,
    shutdown: CancellationToken,
}

/// A running fulcrum.
#[derive(Clone)]
pub struct Fulcrum {
    shared: Arc<Shared>,
}

impl Fulcrum {
    /// Starts everything `config` describes: binds every socket first (any failure aborts
    /// with nothing started), waits for the first round of health checks (bounded by their
    /// timeout), then accepts.
    pub async fn start(config: Config) -> Result<Fulcrum, RuntimeError> {
        let metrics = Arc::new(Metrics::new());
        let shared = Arc::new(Shared {
            metrics,
            registry: Arc::new(Registry::default()),
            config: ArcSwap::from_pointee(config.clone()),
            pools: ArcSwap::from_pointee(HashMap::new()),
            listener_addrs: ArcSwap::from_pointee(HashMap::new()),
            live: Mutex::new(None),
            shutdown: CancellationToken::new(),
        });
        admin::register_collectors(&shared);
        let f = Fulcrum { shared };
        f.apply(config).await?;
        Ok(f)
    }

    /// Shared state, for the admin API.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Metric families.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listener_addrs.load().get(name).copied()
    }

    /// The bound admin address.
    pub async fn admin_addr(&self) -> Option<SocketAddr> {
        self.shared
            .live
            .lock()
            .await
            .as_ref()?
            .admin
            .as_ref()
            .map(|a| a.local_addr)
    }

    /// The current generation of pool `name`.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.shared.pools.load().get(name).map(|s| s.load())
    }

    /// Fires when shutdown has been requested (by a signal or the admin API).
    pub fn shutdown_requested(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Re-reads the config file in force and applies it. On error nothing changes.
    pub async fn reload(&self) -> Result<(), RuntimeError> {
        crate::daemon::notify_reloading();
        let path = self.shared.config.load().source.clone();
        let result = match config::load(&path) {
            Ok(cfg) => self.apply(cfg).await,
            Err(e) => Err(RuntimeError::Config(e)),
        };
        let m = &self.shared.metrics;
        match &result {
            Ok(()) => {
                m.reloads.with_label_values(&["success"]).inc();
                m.last_reload_ok.set(1);
                tracing::info!(config = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                m.reloads.with_label_values(&["failure"]).inc();
                m.last_reload_ok.set(0);
                tracing::error!(error = %e, "reload failed; the previous configuration stays in force");
            }
        }
        crate::daemon::notify_ready(match &result {
            Ok(()) => "serving; last reload succeeded".to_string(),
            Err(e) => format!("serving; last reload failed: {e}"),
        });
        result
    }

    /// Applies a validated config: the first start, or a reload.
    pub async fn apply(&self, cfg: Config) -> Result<(), RuntimeError> {
        let mut guard = self.shared.live.lock().await;
        let shared = &self.shared;
        let metrics = &shared.metrics;
        let old = guard.take();
        let (mut old_listeners, mut old_pools, mut old_health, mut old_admin) = match old {
            Some(l) => (l.listeners, l.pools, l.health, l.admin),
            None => Default::default(),
        };
        let restore = |g: &mut Option<Live>, listeners, pools, health, admin| {
            *g = Some(Live {
                listeners,
                pools,
                health,
                admin,
            });
        };

        // 1. Bind what is new, before touching anything. A failure drops the new sockets.
        let mut fresh: HashMap<Arc<str>, std::net::TcpListener> = HashMap::new();
        for l in &cfg.listeners {
            let keep = old_listeners.get(&l.name).is_some_and(|o| {
                o.settings.bind == l.bind
                    && o.settings.protocol == l.protocol
                    && o.settings.max_connections == l.max_connections
            });
            if keep {
                continue;
            }
            // A listener moving to a socket another kept listener holds is a conflict the
            // kernel reports; a socket released by this reload is freed only after the swap.
            match listener::bind(l.bind) {
                Ok(s) => {
                    fresh.insert(l.name.clone(), s);
                }
                Err(source) => {
                    restore(&mut guard, old_listeners, old_pools, old_health, old_admin);
                    return Err(RuntimeError::Bind {
                        what: format!("listener {:?}", &*l.name),
                        addr: l.bind,
                        source,
                    });
                }
            }
        }
        let admin_rebind = match (&cfg.admin, &old_admin) {
            (Some(a), Some(o)) => a.bind != o.settings.bind,
            (Some(_), None) => true,
            _ => false,
        };
        let mut fresh_admin = None;
        if admin_rebind {
            let a = cfg
                .admin
                .as_ref()
                .expect("admin_rebind implies admin settings");
            match listener::bind(a.bind) {
                Ok(s) => fresh_admin = Some(s),
                Err(source) => {
                    restore(&mut guard, old_listeners, old_pools, old_health, old_admin);
                    return Err(RuntimeError::Bind {
                        what: "the admin listener".into(),
                        addr: a.bind,
                        source,
                    });
                }
            }
        }

        // 2. Pools: keep unchanged ones whole; rebuild changed ones around the same states.
        let mut pools: HashMap<Arc<str>, PoolEntry> = HashMap::new();
        for ps in &cfg.pools {
            let entry = match old_pools.remove(&ps.name) {
                Some(e) if e.slot.load().settings == *ps => e,
                Some(e) => {
                    let (pool, upstreams) = build_pool(ps, shared);
                    e.slot.store(pool);
                    PoolEntry {
                        slot: e.slot,
                        upstreams,
                    }
                }
                None => {
                    let (pool, upstreams) = build_pool(ps, shared);
                    PoolEntry {
                        slot: PoolSlot::new(pool),
                        upstreams,
                    }
                }
            };
            pools.insert(ps.name.clone(), entry);
        }

        // 3. Health tasks: restart only where the server or its probe settings changed.
        let mut health = HashMap::new();
        let mut first_round = Vec::new();
        for ps in &cfg.pools {
            let entry = &pools[&ps.name];
            let pool = entry.slot.load();
            for s in &pool.servers {
                let key = (ps.name.clone(), s.settings.addr);
                match old_health.remove(&key) {
                    Some(t) if t.settings == ps.health => {
                        health.insert(key, t);
                    }
                    other => {
                        if let Some(t) = other {
                            t.cancel.cancel();
                        }
                        let cancel = CancellationToken::new();
                        if !s.state.health_up()
                            && !matches!(ps.health.kind, config::HealthKind::None)
                        {
                            first_round.push((s.state.clone(), ps.health.timeout));
                        }
                        checker::spawn(
                            checker::Target {
                                slot: entry.slot.clone(),
                                idx: s.idx,
                                state: s.state.clone(),
                                settings: ps.health.clone(),
                                metrics: metrics.clone(),
                            },
                            cancel.clone(),
                        );
                        health.insert(
                            key,
                            HealthTask {
                                settings: ps.health.clone(),
                                cancel,
                            },
                        );
                    }
                }
            }
        }
        for (_, t) in old_health.drain() {
            t.cancel.cancel();
        }
        // On first start, give new servers' first probes a moment so traffic does not meet
        // an empty pool; bounded by the probe timeout (plus a little for scheduling).
        if !first_round.is_empty() {
            let wait = first_round
                .iter()
                .map(|(_, t)| *t)
                .max()
                .unwrap_or_default()
                + Duration::from_millis(200);
            let deadline = tokio::time::Instant::now() + wait;
            while tokio::time::Instant::now() < deadline
                && first_round.iter().any(|(s, _)| !s.health_up())
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        // 4. Listeners: swap routes of kept ones, start new ones, stop removed ones.
        let mut listeners = HashMap::new();
        let mut addrs = HashMap::new();
        for l in &cfg.listeners {
            let entry = &pools[&l.pool];
            let pool = entry.slot.load();
            let kept = if fresh.contains_key(&l.name) {
                None
            } else {
                old_listeners.remove(&l.name)
            };
            let listener = match kept {
                Some(existing) => {
                    match &existing.route {
                        Route::Http(r) => r.store(Arc::new(HttpRoute::new(
                            l.clone(),
                            pool,
                            entry.upstreams.clone(),
                            metrics,
                        ))),
                        Route::Tcp(r) => r.store(Arc::new(TcpRoute::new(l.clone(), pool, metrics))),
                    }
                    existing
                }
                None => {
                    let route = match l.protocol {
                        Protocol::Http => Route::Http(Arc::new(ArcSwap::from_pointee(
                            HttpRoute::new(l.clone(), pool, entry.upstreams.clone(), metrics),
                        ))),
                        Protocol::Tcp => Route::Tcp(Arc::new(ArcSwap::from_pointee(
                            TcpRoute::new(l.clone(), pool, metrics),
                        ))),
                    };
                    let sock = fresh
                        .remove(&l.name)
                        .expect("new listeners were bound in step 1");
                    match Listener::start(l.clone(), sock, route) {
                        Ok(li) => li,
                        Err(source) => {
                            tracing::error!(listener = %l.name, error = %source, "cannot start listener");
                            continue;
                        }
                    }
                }
            };
            addrs.insert(l.name.clone(), listener.local_addr);
            listeners.insert(l.name.clone(), listener);
        }
        let drain = cfg.runtime.drain_timeout;
        for (name, l) in old_listeners.drain() {
            tracing::info!(listener = %name, "listener removed; draining its connections");
            tokio::spawn(async move {
                l.stop(drain).await;
            });
        }

        // 5. Admin listener.
        let admin = match (&cfg.admin, fresh_admin) {
            (Some(a), Some(sock)) => {
                if let Some(o) = old_admin.take() {
                    o.stop();
                }
                match AdminServer::start(a.clone(), sock, shared.clone()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the admin listener");
                        None
                    }
                }
            }
            (Some(a), None) => old_admin.map(|mut o| {
                o.settings = a.clone();
                o
            }),
            (None, _) => {
                if let Some(o) = old_admin.take() {
                    o.stop();
                }
                None
            }
        };

        // 6. Publish the new world; republish pools in case a state changed mid-build.
        let slots: HashMap<Arc<str>, Arc<PoolSlot>> = pools
            .iter()
            .map(|(k, e)| (k.clone(), e.slot.clone()))
            .collect();
        for s in slots.values() {
            s.publish();
        }
        shared.pools.store(Arc::new(slots));
        shared.listener_addrs.store(Arc::new(addrs));
        for (_, e) in old_pools.drain() {
            for u in e.upstreams.iter() {
                u.clear_idle();
            }
        }
        let keep: Vec<_> = cfg
            .pools
            .iter()
            .flat_map(|p| p.servers.iter().map(|s| (p.name.clone(), s.addr)))
            .collect();
        shared.registry.retain(&keep, metrics);
        shared.config.store(Arc::new(cfg));
        *guard = Some(Live {
            listeners,
            pools,
            health,
            admin,
        });
        Ok(())
    }

    /// Stops accepting, lets in-flight work finish for up to `grace`, then closes the rest.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.shutdown.cancel();
        let live = self.shared.live.lock().await.take();
        let Some(live) = live else { return };
        if let Some(a) = &live.admin {
            a.stop();
        }
        for t in live.health.values() {
            t.cancel.cancel();
        }
        let stops = live.listeners.values().map(|l| l.stop(grace));
        let clean = futures_util::future::join_all(stops).await;
        if clean.iter().all(|c| *c) {
            tracing::info!("all connections finished; stopped");
        } else {
            tracing::warn!(grace = ?grace, "shutdown grace period over; closed remaining connections");
        }
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config.load_full()
    }
}

fn build_pool(ps: &Arc<PoolSettings>, shared: &Shared) -> (Arc<Pool>, Arc<[Arc<ServerUpstream>]>) {
    let pool = Arc::new(Pool::new(ps.clone(), &shared.registry, &shared.metrics));
    let upstreams: Arc<[Arc<ServerUpstream>]> = ps
        .servers
        .iter()
        .map(|s| ServerUpstream::new(s.addr, ps.upstream_protocol, ps.timeouts))
        .collect();
    (pool, upstreams)
}
