//! The supervisor: turns a validated [`Config`] into running listeners, pools and health
//! tasks; applies reloads atomically (everything that can fail — binding sockets, reading
//! the admin token, opening the access log — is done first, off to the side, and a failure
//! there changes nothing); and stops everything in two phases at shutdown.
//!
//! Reloads and admin changes are serialised by one async mutex; the request path never
//! touches it. Server state lives in the backend registry, outside anything rebuilt here,
//! so a server that stays keeps its health, counters, connections, availability record and
//! runtime overrides across reloads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessLog, AccessLogError};
use crate::admin::{self, AdminServer, Auth, AuthError};
use crate::backend::{AdminState, Registry};
use crate::config::{
    self, Config, ConfigError, HealthSettings, ListenerSettings, PoolSettings, Protocol,
};
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
    /// The admin token file could not be used.
    #[error(transparent)]
    AdminToken(#[from] AuthError),
    /// The access log could not be opened.
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    /// Shutdown has begun; nothing more is applied.
    #[error("shutting down; the configuration is no longer applied")]
    ShuttingDown,
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

/// Everything running, owned by the supervisor.
#[derive(Default)]
struct Live {
    listeners: HashMap<Arc<str>, Listener>,
    /// A duplicate of each listener's socket, so that a listener restarted on the same
    /// address (its protocol changed, say) takes over the bound socket: binding the address
    /// a second time would fail, and closing it first would refuse connections meanwhile.
    sockets: HashMap<Arc<str>, std::net::TcpListener>,
    pools: HashMap<Arc<str>, PoolEntry>,
    health: HashMap<(Arc<str>, SocketAddr), HealthTask>,
    admin: Option<AdminServer>,
    access_log: Option<Arc<AccessLog>>,
}

/// What a reload needs that can fail, prepared before anything running is touched.
struct Prepared {
    /// Listeners that get a new accept loop, with the socket it takes (new or handed over)
    /// and a duplicate to keep.
    sockets: HashMap<Arc<str>, (std::net::TcpListener, std::net::TcpListener)>,
    admin_socket: Option<std::net::TcpListener>,
    auth: Auth,
    access_log: Option<Arc<AccessLog>>,
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
    /// Who may change state through the admin API.
    pub admin_auth: ArcSwap<Auth>,
    live: Mutex<Option<Live>>,
    /// Listeners removed by reloads, finishing their connections.
    retiring: TaskTracker,
    shutdown: CancellationToken,
}

/// A running fulcrum.
#[derive(Clone)]
pub struct Fulcrum {
    shared: Arc<Shared>,
}

/// Whether a running listener can keep its accept loop under new settings: only its route
/// (pool, headers, keep-alive and tunnel timeouts) may change; the rest is fixed when the
/// accept loop starts.
fn same_accept_loop(a: &ListenerSettings, b: &ListenerSettings) -> bool {
    a.bind == b.bind
        && a.protocol == b.protocol
        && a.max_connections == b.max_connections
        && a.timeouts.header_read == b.timeouts.header_read
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
            admin_auth: ArcSwap::from_pointee(Auth::default()),
            live: Mutex::new(None),
            retiring: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        });
        admin::register_collectors(&shared);
        let f = Fulcrum { shared };
        f.apply(config).await?;
        Ok(f)
    }

    /// The handle of a running fulcrum, for the admin API.
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Fulcrum {
        Fulcrum { shared }
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

    /// Re-reads the config file in force and applies it. On error nothing changes: the
    /// error (`file:line:col: message` for an invalid file) is logged and counted, and the
    /// previous config keeps serving.
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
                m.last_reload_success_time.set(crate::metrics::unix_now());
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
        if self.shared.shutdown.is_cancelled() {
            return Err(RuntimeError::ShuttingDown);
        }
        // 1. Everything that can fail, before touching what runs.
        let mut prepared = self.prepare(&cfg, guard.as_ref())?;
        let mut old = guard.take().unwrap_or_default();
        let shared = &self.shared;
        let metrics = &shared.metrics;

        // 2. Pools: keep unchanged ones whole; rebuild changed ones around the same states.
        let mut pools: HashMap<Arc<str>, PoolEntry> = HashMap::new();
        for ps in &cfg.pools {
            let entry = match old.pools.remove(&ps.name) {
                Some(e) if e.slot.load().settings == *ps => e,
                Some(e) => {
                    tracing::info!(pool = %ps.name, algorithm = ps.algorithm.name(), servers = ps.servers.len(), "pool changed; new requests use the new settings");
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
                match old.health.remove(&key) {
                    Some(t) if t.settings == ps.health => {
                        health.insert(key, t);
                    }
                    other => {
                        if let Some(t) = other {
                            t.cancel.cancel();
                        }
                        let cancel = CancellationToken::new();
                        // kind = "none" too: its task marks the server up as it starts,
                        // which must happen before the first request, not just after.
                        if !s.state.health_up() {
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
        for (_, t) in old.health.drain() {
            t.cancel.cancel();
        }
        // Give new servers' first probes a moment so traffic does not meet an empty pool;
        // bounded by the probe timeout (plus a little for scheduling).
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

        // 4. Listeners: swap routes of kept ones, start new ones, retire removed ones.
        // Replaced listeners stop accepting first, so that once this returns every new
        // connection meets the new settings (a handed-over socket queues them meanwhile).
        for (name, l) in &old.listeners {
            let kept = cfg.listeners.iter().any(|c| c.name == *name)
                && !prepared.sockets.contains_key(name);
            if !kept {
                l.begin_drain();
            }
        }
        let access = prepared.access_log.clone();
        let mut listeners = HashMap::new();
        let mut sockets = HashMap::new();
        let mut addrs = HashMap::new();
        for l in &cfg.listeners {
            let entry = &pools[&l.pool];
            let pool = entry.slot.load();
            let http_route = || {
                HttpRoute::new(l.clone(), pool.clone(), entry.upstreams.clone(), metrics)
                    .with_access_log(access.clone())
            };
            let tcp_route =
                || TcpRoute::new(l.clone(), pool.clone(), metrics).with_access_log(access.clone());
            let listener = match prepared.sockets.remove(&l.name) {
                None => {
                    let existing = old
                        .listeners
                        .remove(&l.name)
                        .expect("a listener without a new socket is kept");
                    match &existing.route {
                        Route::Http(r) => r.store(Arc::new(http_route())),
                        Route::Tcp(r) => r.store(Arc::new(tcp_route())),
                    }
                    if let Some(dup) = old.sockets.remove(&l.name) {
                        sockets.insert(l.name.clone(), dup);
                    }
                    existing
                }
                Some((sock, dup)) => {
                    let route = match l.protocol {
                        Protocol::Http => {
                            Route::Http(Arc::new(ArcSwap::from_pointee(http_route())))
                        }
                        Protocol::Tcp => Route::Tcp(Arc::new(ArcSwap::from_pointee(tcp_route()))),
                    };
                    match Listener::start(l.clone(), sock, route) {
                        Ok(li) => {
                            sockets.insert(l.name.clone(), dup);
                            li
                        }
                        Err(source) => {
                            // from_std on a socket bound moments ago: not expected to fail.
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
        for (name, l) in old.listeners.drain() {
            tracing::info!(listener = %name, drain_timeout = ?drain, "listener removed or restarted; its open connections drain");
            shared.retiring.spawn(async move {
                if !l.stop(drain).await {
                    tracing::warn!(listener = %name, "drain timeout over; closed the remaining connections");
                }
            });
        }
        // The duplicates of sockets no listener keeps close here; kept ones moved above.
        drop(std::mem::take(&mut old.sockets));

        // 5. Admin listener.
        let admin = match (&cfg.admin, prepared.admin_socket.take()) {
            (Some(a), Some(sock)) => {
                if let Some(o) = old.admin.take() {
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
            (Some(a), None) => old.admin.take().map(|mut o| {
                o.settings = a.clone();
                o
            }),
            (None, _) => {
                if let Some(o) = old.admin.take() {
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
        shared.admin_auth.store(Arc::new(prepared.auth));
        for (_, e) in old.pools.drain() {
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
        log_kept_overrides(&pools);
        shared.config.store(Arc::new(cfg));
        *guard = Some(Live {
            listeners,
            sockets,
            pools,
            health,
            admin,
            access_log: prepared.access_log,
        });
        Ok(())
    }

    /// Step 1 of `apply`: binds new sockets (or takes over the bound socket of a listener
    /// restarted on the same address), reads the admin token and opens the access log.
    /// Reads `live` only; any failure leaves everything as it was.
    fn prepare(&self, cfg: &Config, live: Option<&Live>) -> Result<Prepared, RuntimeError> {
        let mut sockets = HashMap::new();
        for l in &cfg.listeners {
            let old = live.and_then(|lv| lv.listeners.get(&l.name));
            if old.is_some_and(|o| same_accept_loop(&o.settings, l)) {
                continue;
            }
            // The same address as a running listener of this name, or of a listener this
            // reload removes (a rename): take its socket over instead of binding again.
            let handover = live.and_then(|lv| {
                let by_name = old
                    .filter(|o| o.settings.bind == l.bind)
                    .and(lv.sockets.get(&l.name));
                let by_bind = || {
                    lv.listeners
                        .iter()
                        .filter(|(n, o)| {
                            o.settings.bind == l.bind
                                && l.bind.port() != 0
                                && !cfg.listeners.iter().any(|c| c.name == **n)
                        })
                        .find_map(|(n, _)| lv.sockets.get(n))
                };
                by_name.or_else(by_bind)
            });
            let bind_err = |source| RuntimeError::Bind {
                what: format!("listener {:?}", &*l.name),
                addr: l.bind,
                source,
            };
            let sock = match handover {
                Some(s) => s.try_clone().map_err(bind_err)?,
                None => listener::bind(l.bind).map_err(bind_err)?,
            };
            let dup = sock.try_clone().map_err(bind_err)?;
            sockets.insert(l.name.clone(), (sock, dup));
        }
        let old_admin = live.and_then(|lv| lv.admin.as_ref());
        let admin_socket = match (&cfg.admin, old_admin) {
            (Some(a), Some(o)) if a.bind == o.settings.bind => None,
            (Some(a), _) => Some(listener::bind(a.bind).map_err(|source| RuntimeError::Bind {
                what: "the admin listener".into(),
                addr: a.bind,
                source,
            })?),
            (None, _) => None,
        };
        let auth = Auth::load(cfg.admin.as_ref())?;
        let old_log = live.and_then(|lv| lv.access_log.as_ref());
        let access_log = match (&cfg.access_log, old_log) {
            (None, _) => None,
            (Some(s), Some(o)) if o.settings == *s => {
                // Same settings: keep the writer, reopen the file (after log rotation).
                o.reopen();
                Some(o.clone())
            }
            (Some(s), _) => Some(AccessLog::open(
                s,
                self.shared.metrics.access_log_dropped.clone(),
            )?),
        };
        Ok(Prepared {
            sockets,
            admin_socket,
            auth,
            access_log,
        })
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
        let retiring = &self.shared.retiring;
        retiring.close();
        let (clean, retired) = tokio::join!(
            futures_util::future::join_all(stops),
            tokio::time::timeout(grace, retiring.wait())
        );
        if clean.iter().all(|c| *c) && retired.is_ok() {
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

/// Runtime overrides live in the servers' states, which a reload keeps for servers that
/// stay; say so, so that an operator reading the log knows why a server is still drained.
fn log_kept_overrides(pools: &HashMap<Arc<str>, PoolEntry>) {
    for e in pools.values() {
        for s in &e.slot.load().servers {
            let st = &s.state;
            if st.admin_state() != AdminState::Enabled || st.weight_override().is_some() {
                tracing::info!(pool = %st.pool, server = %st.name, admin_state = st.admin_state().as_str(), weight_override = ?st.weight_override(), "runtime override in force (POST /servers/POOL/SERVER/reset clears it)");
            }
        }
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
