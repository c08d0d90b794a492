//! Applying a config generation, in named steps: prepare everything that can fail (sockets,
//! the admin token, the access log) off to the side; then swap pools, health tasks,
//! listeners and the admin listener; then publish the new world. Only a fully prepared
//! config reaches the swapping steps, so a failed reload changes nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::{Fulcrum, HealthTask, Inner, Live, PoolEntry, PoolTls, Prepared, RuntimeError, Tls};
use crate::access_log::AccessLog;
use crate::admin::{AdminServer, Auth, Shared};
use crate::admission::Admission;
use crate::backend::{AdminState, BackendState};
use crate::config::{Config, ListenerSettings, PoolSettings, Protocol};
use crate::health::checker;
use crate::listener::{self, Listener, Route};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolSlot};
use crate::proxy::http::{HttpRoute, Target};
use crate::proxy::tcp::{SniTable, TcpRoute};
use crate::proxy::upstream::ServerUpstream;

/// Health tasks by (pool, server address).
type HealthTasks = HashMap<(Arc<str>, SocketAddr), HealthTask>;

/// Whether a running listener can keep its accept loop under new settings: only its route
/// (pool, headers, limits, timeouts, serving settings) may change; the socket, the protocol
/// and the listener's connection cap are fixed when the accept loop starts.
fn same_accept_loop(a: &ListenerSettings, b: &ListenerSettings) -> bool {
    a.bind == b.bind && a.protocol == b.protocol && a.max_connections == b.max_connections
}

impl Fulcrum {
    /// Applies a validated config: the first start, or a reload.
    pub(crate) async fn apply(&self, cfg: Config) -> Result<(), RuntimeError> {
        let mut guard = self.inner.live.lock().await;
        if self.inner.shutdown.is_cancelled() {
            return Err(RuntimeError::ShuttingDown);
        }
        let shared = self.shared();
        // 1. Everything that can fail, before touching what runs.
        let mut prepared = self.prepare(&cfg, guard.as_ref())?;
        let mut old = guard.take().unwrap_or_default();
        // Pools are built with the servers discovery last found, so that they survive.
        let eff = shared.discovery.effective(&cfg);
        // 2. Pools: keep unchanged ones whole; rebuild changed ones around the same states.
        let pools = swap_pools(&eff, &mut old.pools, &prepared.tls, shared);
        // 3. Health tasks: restart only where the server or its probe settings changed.
        let (health, first_round) = sync_health(
            &eff,
            &pools,
            &mut old.health,
            &prepared.tls,
            &shared.metrics,
        );
        wait_for_first_probes(&first_round).await;
        // 4. Listeners: swap routes of kept ones, start new ones, retire removed ones.
        let (listeners, sockets, addrs) =
            swap_listeners(&cfg, &pools, &mut old, &mut prepared, &self.inner);
        // 5. Admin listener.
        let admin = swap_admin(&cfg, prepared.admin_socket.take(), old.admin.take(), self);
        self.resize_connection_cap(cfg.runtime.max_connections);
        let mut certs: Vec<(Arc<str>, crate::tls::CertInfo)> = Vec::new();
        for l in &cfg.listeners {
            if let Some(t) = prepared.tls.listeners.get(&l.name) {
                certs.extend(t.certificates().iter().map(|c| (l.name.clone(), c.clone())));
            }
        }
        shared.certificates.store(Arc::new(certs));
        // 6. Publish the new world; republish pools in case a state changed mid-build.
        publish(&eff, &pools, &mut old.pools, addrs, prepared.auth, shared);
        shared.config.store(Arc::new(cfg));
        // 7. Discovery tasks for the pools that have dynamic sources.
        shared
            .discovery
            .sync(&eff, &self.discovery_publisher(), &shared.metrics);
        *guard = Some(Live {
            listeners,
            sockets,
            pools,
            health,
            admin,
            access_log: prepared.access_log,
            tls: prepared.tls,
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
            // Registered with the runtime here, so that starting the listener later cannot
            // fail: a reload either starts every listener or changes nothing.
            let sock = tokio::net::TcpListener::from_std(sock).map_err(bind_err)?;
            sockets.insert(l.name.clone(), (sock, dup));
        }
        let old_admin = live.and_then(|lv| lv.admin.as_ref());
        let admin_socket = match (&cfg.admin, old_admin) {
            (Some(a), Some(o)) if a.bind == o.settings.bind => None,
            (Some(a), _) => {
                let err = |source| RuntimeError::Bind {
                    what: "the admin listener".into(),
                    addr: a.bind,
                    source,
                };
                let sock = listener::bind(a.bind).map_err(err)?;
                Some(tokio::net::TcpListener::from_std(sock).map_err(err)?)
            }
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
                self.shared().metrics.access_log_dropped.clone(),
            )?),
        };
        let tls = load_tls(cfg, live.map(|lv| &lv.tls))?;
        Ok(Prepared {
            sockets,
            admin_socket,
            auth,
            access_log,
            tls,
        })
    }
}

/// Reads every certificate, key and CA file `cfg` names (a reload reads them again, so new
/// files on disk take effect). A listener that served TLS before keeps its session ticket
/// keys and cache, so its clients resume across the reload.
fn load_tls(cfg: &Config, old: Option<&Tls>) -> Result<Tls, RuntimeError> {
    let mut tls = Tls::default();
    for l in &cfg.listeners {
        let Some(t) = &l.tls else { continue };
        let loaded = match old.and_then(|o| o.listeners.get(&l.name)) {
            Some(prev) => prev.reload(&l.name, t)?,
            None => crate::tls::ServerTls::load(&l.name, t)?,
        };
        tls.listeners.insert(l.name.clone(), Arc::new(loaded));
    }
    for p in &cfg.pools {
        let Some(t) = &p.tls else { continue };
        let h2 = p.upstream_protocol == crate::config::UpstreamProtocol::H2;
        // Probes speak the pool's protocol, so they share its ALPN.
        let proxy = Arc::new(crate::tls::ClientTls::load(&p.name, t, h2)?);
        tls.pools.insert(p.name.clone(), PoolTls { proxy });
    }
    Ok(tls)
}

/// Step 2: the pool generations of `cfg`, reusing unchanged ones from `old`.
fn swap_pools(
    cfg: &Config,
    old: &mut HashMap<Arc<str>, PoolEntry>,
    tls: &Tls,
    shared: &Shared,
) -> HashMap<Arc<str>, PoolEntry> {
    let mut pools: HashMap<Arc<str>, PoolEntry> = HashMap::new();
    for ps in &cfg.pools {
        let entry = swap_pool(ps, old.remove(&ps.name), tls, shared);
        pools.insert(ps.name.clone(), entry);
    }
    pools
}

/// One pool of step 2: the old generation if its settings did not change, else a new one
/// stored in the same slot (or a new slot for a new pool).
fn swap_pool(
    ps: &Arc<PoolSettings>,
    old: Option<PoolEntry>,
    tls: &Tls,
    shared: &Shared,
) -> PoolEntry {
    let client_tls = tls.pools.get(&ps.name).map(|t| t.proxy.clone());
    match old {
        Some(e) if e.slot.load().settings == *ps => {
            // Unchanged, but its CA and certificate files were read again.
            for u in e.upstreams.iter() {
                u.set_tls(client_tls.clone());
            }
            e
        }
        Some(e) => {
            tracing::info!(pool = %ps.name, algorithm = ps.algorithm.name(), servers = ps.servers.len(), "pool changed; new requests use the new settings");
            let (pool, upstreams) = build_pool(ps, shared, Some(&e), client_tls);
            e.slot.store(pool);
            PoolEntry {
                slot: e.slot,
                upstreams,
            }
        }
        None => {
            let (pool, upstreams) = build_pool(ps, shared, None, client_tls);
            PoolEntry {
                slot: PoolSlot::new(pool),
                upstreams,
            }
        }
    }
}

/// Step 3: one health task per server, kept where its settings did not change. Returns the
/// tasks and the servers whose first probe has not passed yet.
fn sync_health(
    cfg: &Config,
    pools: &HashMap<Arc<str>, PoolEntry>,
    old: &mut HealthTasks,
    tls: &Tls,
    metrics: &Arc<Metrics>,
) -> (HealthTasks, Vec<(Arc<BackendState>, Duration)>) {
    let mut health = HashMap::new();
    let mut first_round = Vec::new();
    for ps in &cfg.pools {
        let entry = &pools[&ps.name];
        sync_pool_health(ps, entry, old, &mut health, &mut first_round, tls, metrics);
    }
    for (_, t) in old.drain() {
        t.cancel.cancel();
    }
    (health, first_round)
}

/// One pool of step 3: moves the tasks of its servers that stay from `old` to `health`, and
/// starts tasks for the others (collecting those whose first probe has not passed).
fn sync_pool_health(
    ps: &PoolSettings,
    entry: &PoolEntry,
    old: &mut HealthTasks,
    health: &mut HealthTasks,
    first_round: &mut Vec<(Arc<BackendState>, Duration)>,
    tls: &Tls,
    metrics: &Arc<Metrics>,
) {
    let pool = entry.slot.load();
    for s in &pool.servers {
        let key = (ps.name.clone(), s.settings.addr);
        match old.remove(&key) {
            Some(t) if t.settings == ps.health && t.tls == ps.tls => {
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
                        state: s.state.clone(),
                        settings: ps.health.clone(),
                        metrics: metrics.clone(),
                        tls: tls.pools.get(&ps.name).map(|t| t.proxy.clone()),
                        h2: ps.upstream_protocol == crate::config::UpstreamProtocol::H2,
                    },
                    cancel.clone(),
                );
                health.insert(
                    key,
                    HealthTask {
                        settings: ps.health.clone(),
                        tls: ps.tls.clone(),
                        cancel,
                    },
                );
            }
        }
    }
}

/// Gives new servers' first probes a moment so traffic does not meet an empty pool;
/// bounded by the probe timeout (plus a little for scheduling).
pub(super) async fn wait_for_first_probes(first_round: &[(Arc<BackendState>, Duration)]) {
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
}

/// Step 4: listeners. Replaced listeners stop accepting first, so that once this returns
/// every new connection meets the new settings (a handed-over socket queues them meanwhile).
#[allow(clippy::type_complexity)]
fn swap_listeners(
    cfg: &Config,
    pools: &HashMap<Arc<str>, PoolEntry>,
    old: &mut Live,
    prepared: &mut Prepared,
    inner: &Inner,
) -> (
    HashMap<Arc<str>, Listener>,
    HashMap<Arc<str>, std::net::TcpListener>,
    HashMap<Arc<str>, SocketAddr>,
) {
    let shared = &inner.shared;
    let metrics = &shared.metrics;
    for (name, l) in &old.listeners {
        let kept =
            cfg.listeners.iter().any(|c| c.name == *name) && !prepared.sockets.contains_key(name);
        if !kept {
            l.begin_drain();
        }
    }
    let access = prepared.access_log.clone();
    let mut listeners = HashMap::new();
    let mut sockets = HashMap::new();
    let mut addrs = HashMap::new();
    for l in &cfg.listeners {
        let tls = &prepared.tls;
        match tls.listeners.get(&l.name) {
            Some(t) => metrics.set_tls_certificates(&l.name, t.certificates()),
            None => metrics.forget_tls_listener(&l.name),
        }
        let adm = admission(l, old.listeners.get(&l.name).map(|o| &o.route), metrics);
        let http_route = || http_route(l, pools, &access, tls, adm.clone(), shared);
        let tcp_route = || tcp_route(l, pools, &access, tls, adm.clone(), metrics);
        let listener = match prepared.sockets.remove(&l.name) {
            None => {
                let existing = old
                    .listeners
                    .remove(&l.name)
                    .expect("a listener without a new socket is kept");
                match &existing.route {
                    Route::Http(r) => {
                        let new = http_route();
                        r.load().routes.forget_removed(metrics, Some(&new.routes));
                        r.store(Arc::new(new))
                    }
                    Route::Tcp(r) => r.store(Arc::new(tcp_route())),
                }
                if let Some(dup) = old.sockets.remove(&l.name) {
                    sockets.insert(l.name.clone(), dup);
                }
                existing
            }
            Some((sock, dup)) => {
                let route = match l.protocol {
                    Protocol::Http => Route::Http(Arc::new(ArcSwap::from_pointee(http_route()))),
                    Protocol::Tcp => Route::Tcp(Arc::new(ArcSwap::from_pointee(tcp_route()))),
                };
                sockets.insert(l.name.clone(), dup);
                Listener::start(l.clone(), sock, route, inner.connections.clone())
            }
        };
        addrs.insert(l.name.clone(), listener.local_addr);
        listeners.insert(l.name.clone(), listener);
    }
    let drain = cfg.runtime.drain_timeout;
    for (name, l) in &old.listeners {
        if !cfg.listeners.iter().any(|c| c.name == *name) {
            metrics.forget_tls_listener(name);
            if let Route::Http(r) = &l.route {
                r.load().routes.forget_removed(metrics, None);
            }
        }
    }
    let names: Vec<&str> = cfg.listeners.iter().map(|l| &*l.name).collect();
    shared.splits.retain_listeners(&names);
    for (name, l) in old.listeners.drain() {
        tracing::info!(listener = %name, drain_timeout = ?drain, "listener removed or restarted; its open connections drain");
        inner.retiring.spawn(async move {
            if !l.stop(drain).await {
                tracing::warn!(listener = %name, "drain timeout over; closed the remaining connections");
            }
        });
    }
    // The duplicates of sockets no listener keeps close here; kept ones moved above.
    drop(std::mem::take(&mut old.sockets));
    (listeners, sockets, addrs)
}

/// Step 5: the admin listener, restarted only when its address changed.
fn swap_admin(
    cfg: &Config,
    socket: Option<tokio::net::TcpListener>,
    mut old: Option<AdminServer>,
    f: &Fulcrum,
) -> Option<AdminServer> {
    match (&cfg.admin, socket) {
        (Some(a), Some(sock)) => {
            if let Some(o) = old.take() {
                o.stop();
            }
            Some(AdminServer::start(
                a.clone(),
                sock,
                f.shared().clone(),
                Arc::new(f.clone()),
            ))
        }
        (Some(a), None) => old.take().map(|mut o| {
            o.settings = a.clone();
            o
        }),
        (None, _) => {
            if let Some(o) = old.take() {
                o.stop();
            }
            None
        }
    }
}

/// Step 6: makes the new pools, addresses and token visible, closes what the old generation
/// alone used, and forgets servers no pool has any more.
fn publish(
    cfg: &Config,
    pools: &HashMap<Arc<str>, PoolEntry>,
    old: &mut HashMap<Arc<str>, PoolEntry>,
    addrs: HashMap<Arc<str>, SocketAddr>,
    auth: Auth,
    shared: &Shared,
) {
    let metrics = &shared.metrics;
    let slots: HashMap<Arc<str>, Arc<PoolSlot>> = pools
        .iter()
        .map(|(k, e)| (k.clone(), e.slot.clone()))
        .collect();
    for s in slots.values() {
        s.publish();
    }
    shared.pools.store(Arc::new(slots));
    shared.listener_addrs.store(Arc::new(addrs));
    shared.admin_auth.store(Arc::new(auth));
    for (_, e) in old.drain() {
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
    log_kept_overrides(pools);
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

/// The route of http listener `l` over the current generations of the pools it names.
fn http_route(
    l: &ListenerSettings,
    pools: &HashMap<Arc<str>, PoolEntry>,
    access: &Option<Arc<AccessLog>>,
    tls: &Tls,
    admission: Arc<Admission>,
    shared: &Shared,
) -> HttpRoute {
    let metrics = &shared.metrics;
    let pool_of = |name: &str| {
        pools
            .get(name)
            .map(|e| Target::new(e.slot.load(), e.upstreams.clone(), metrics))
    };
    let (route, dropped) = HttpRoute::new(l.clone(), &pool_of, &shared.splits, metrics);
    for d in dropped {
        tracing::warn!(listener = %d.listener, route = %d.route, weights = ?d.weights, reason = d.reason, "split weight override dropped");
    }
    route
        .with_access_log(access.clone())
        .with_tls(tls.listeners.get(&l.name).cloned(), metrics)
        .with_admission(admission)
}

/// The admission of listener `l`, keeping the rate-limit buckets of the one it had
/// (`previous`), so a reload never lets a limited client off.
fn admission(l: &ListenerSettings, previous: Option<&Route>, metrics: &Metrics) -> Arc<Admission> {
    let prev = previous.map(|r| match r {
        Route::Http(r) => r.load().admission.clone(),
        Route::Tcp(r) => r.load().admission.clone(),
    });
    Arc::new(Admission::new(l, metrics, prev.as_deref()))
}

/// The admission a route has now.
fn current_admission(r: &Route) -> Arc<Admission> {
    match r {
        Route::Http(r) => r.load().admission.clone(),
        Route::Tcp(r) => r.load().admission.clone(),
    }
}

/// The route of tcp listener `l` over the current generations of its pool and of the pools
/// its SNI routes name.
fn tcp_route(
    l: &ListenerSettings,
    pools: &HashMap<Arc<str>, PoolEntry>,
    access: &Option<Arc<AccessLog>>,
    tls: &Tls,
    admission: Arc<Admission>,
    metrics: &Metrics,
) -> TcpRoute {
    let sni = l.sni_routes.as_ref().map(|r| {
        let named = r.routes.iter().map(|(_, p)| p).chain(&r.default_pool);
        let by_name = named
            .filter_map(|p| Some((p.clone(), pools.get(p)?.slot.load())))
            .collect();
        SniTable::new(r, by_name)
    });
    let pool = l
        .pool
        .as_ref()
        .and_then(|p| pools.get(p))
        .map(|e| e.slot.load());
    TcpRoute::new(l.clone(), pool, metrics)
        .with_access_log(access.clone())
        .with_tls(tls.listeners.get(&l.name).cloned(), metrics)
        .with_sni(sni)
        .with_admission(admission)
}

/// Applies new settings to one running pool exactly as a reload that changed only that pool
/// would (steps 2, 3, 4's route swap and 6 for that pool alone): a new generation in the same
/// slot, health tasks kept for servers that stay and started for new ones, the routes of its
/// listeners re-stored, and the states of servers no pool has any more dropped. Returns the
/// new servers whose first probe has not passed. Called with the supervisor's lock held.
pub(super) fn apply_one_pool(
    ps: &Arc<PoolSettings>,
    live: &mut Live,
    shared: &Shared,
) -> Vec<(Arc<BackendState>, Duration)> {
    let Some(old) = live.pools.remove(&ps.name) else {
        return Vec::new();
    };
    let old_upstreams = old.upstreams.clone();
    let changed = old.slot.load().settings != *ps;
    let entry = swap_pool(ps, Some(old), &live.tls, shared);
    let mut first_round = Vec::new();
    if changed {
        let mut mine: HealthTasks = HashMap::new();
        let keys: Vec<_> = live
            .health
            .keys()
            .filter(|(p, _)| *p == ps.name)
            .cloned()
            .collect();
        let mut old_tasks: HealthTasks = keys
            .into_iter()
            .filter_map(|k| live.health.remove_entry(&k))
            .collect();
        let metrics = &shared.metrics;
        sync_pool_health(
            ps,
            &entry,
            &mut old_tasks,
            &mut mine,
            &mut first_round,
            &live.tls,
            metrics,
        );
        for (_, t) in old_tasks {
            t.cancel.cancel();
        }
        live.health.extend(mine);
        entry.slot.publish();
    }
    live.pools.insert(ps.name.clone(), entry);
    if changed {
        for l in live
            .listeners
            .values()
            .filter(|l| l.settings.uses_pool(&ps.name))
        {
            let adm = current_admission(&l.route);
            match &l.route {
                Route::Http(r) => r.store(Arc::new(http_route(
                    &l.settings,
                    &live.pools,
                    &live.access_log,
                    &live.tls,
                    adm,
                    shared,
                ))),
                Route::Tcp(r) => r.store(Arc::new(tcp_route(
                    &l.settings,
                    &live.pools,
                    &live.access_log,
                    &live.tls,
                    adm,
                    &shared.metrics,
                ))),
            }
        }
        // Connections to servers that stay were carried into the new generation; the rest
        // close.
        let kept = &live.pools[&ps.name].upstreams;
        for u in old_upstreams.iter() {
            if !kept.iter().any(|k| Arc::ptr_eq(k, u)) {
                u.clear_idle();
            }
        }
    }
    if changed {
        let keep: Vec<_> = live
            .pools
            .iter()
            .flat_map(|(name, e)| {
                let servers: Vec<_> = e
                    .slot
                    .load()
                    .servers
                    .iter()
                    .map(|s| s.settings.addr)
                    .collect();
                servers.into_iter().map(move |a| (name.clone(), a))
            })
            .collect();
        shared.registry.retain(&keep, &shared.metrics);
    }
    first_round
}

/// A generation of pool `ps`. From `previous` (the generation it replaces) it takes the
/// pool's carry (in-flight count, retry budget, queue waiters, cursors) and, for each server
/// that stays on the same upstream protocol, its connections (retimed to the new settings).
fn build_pool(
    ps: &Arc<PoolSettings>,
    shared: &Shared,
    previous: Option<&PoolEntry>,
    tls: Option<Arc<crate::tls::ClientTls>>,
) -> (Arc<Pool>, Arc<[Arc<ServerUpstream>]>) {
    let carry = previous.map(|e| e.slot.load().carry()).unwrap_or_default();
    let pool = Arc::new(Pool::new(
        ps.clone(),
        &shared.registry,
        &shared.metrics,
        carry,
    ));
    let upstreams: Arc<[Arc<ServerUpstream>]> = pool
        .servers
        .iter()
        .map(|s| {
            let kept = previous.and_then(|e| {
                e.upstreams.iter().find(|u| {
                    Arc::ptr_eq(u.state(), &s.state)
                        && u.protocol() == ps.upstream_protocol
                        && u.is_tls() == tls.is_some()
                })
            });
            match kept {
                Some(u) => {
                    u.retime(ps.timeouts);
                    u.set_tls(tls.clone());
                    u.clone()
                }
                None => ServerUpstream::new(
                    s.state.clone(),
                    ps.upstream_protocol,
                    ps.timeouts,
                    tls.clone(),
                ),
            }
        })
        .collect();
    (pool, upstreams)
}
