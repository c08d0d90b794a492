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
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::{AccessLog, AccessLogError};
use crate::admin::{self, AdminServer, Auth, AuthError, Shared};
use crate::backend::Registry;
use crate::config::{self, Config, ConfigError, HealthSettings};
use crate::listener::Listener;
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolSlot};
use crate::proxy::upstream::ServerUpstream;

mod apply;
mod discovered;
mod guard;

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
    /// A certificate, key or CA file could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Shutdown has begun; nothing more is applied.
    #[error("shutting down; the configuration is no longer applied")]
    ShuttingDown,
}

/// How long a start waits for discovery's first answers (and the first probes of the servers
/// they give) before it reports ready anyway.
const DISCOVERY_START_WAIT: Duration = Duration::from_secs(10);

/// A pool generation and its upstream connections.
struct PoolEntry {
    slot: Arc<PoolSlot>,
    upstreams: Arc<[Arc<ServerUpstream>]>,
}

/// TLS loaded for a generation: the certificates each TLS listener serves and the client
/// configuration of each TLS pool, read from their files before anything changes.
#[derive(Default, Clone)]
struct Tls {
    listeners: HashMap<Arc<str>, Arc<crate::tls::ServerTls>>,
    pools: HashMap<Arc<str>, PoolTls>,
}

/// A TLS pool's client configuration (ALPN h2 on an h2 pool), for proxying and probes alike.
#[derive(Clone)]
struct PoolTls {
    proxy: Arc<crate::tls::ClientTls>,
}

/// A health task and the settings it runs with.
struct HealthTask {
    settings: HealthSettings,
    /// The pool's TLS settings: probes speak TLS to a TLS pool.
    tls: Option<crate::config::UpstreamTls>,
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
    tls: Tls,
}

/// What a reload needs that can fail, prepared before anything running is touched.
struct Prepared {
    /// Listeners that get a new accept loop, with the socket it takes (new or handed over,
    /// already registered with the runtime) and a duplicate to keep.
    sockets: HashMap<Arc<str>, (tokio::net::TcpListener, std::net::TcpListener)>,
    admin_socket: Option<tokio::net::TcpListener>,
    auth: Auth,
    access_log: Option<Arc<AccessLog>>,
    tls: Tls,
}

/// The supervisor's own state: what it publishes for the admin API ([`Shared`]), and what
/// only it touches.
struct Inner {
    /// Published for the admin API.
    shared: Arc<Shared>,
    live: Mutex<Option<Live>>,
    /// The process-wide connection cap (`runtime.max_connections`), shared by every
    /// listener and resized by reloads; its size is kept beside it.
    connections: Arc<tokio::sync::Semaphore>,
    connections_size: std::sync::atomic::AtomicUsize,
    /// Ends the reload guard's watch in progress, if any. A `std` mutex: touched once per
    /// reload, never across an `.await`.
    guard: std::sync::Mutex<Option<CancellationToken>>,
    /// Listeners removed by reloads, finishing their connections.
    retiring: TaskTracker,
    shutdown: CancellationToken,
}

/// A running fulcrum.
#[derive(Clone)]
pub struct Fulcrum {
    inner: Arc<Inner>,
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
            certificates: ArcSwap::from_pointee(Vec::new()),
            splits: crate::route::SplitRegistry::new(),
            history: admin::ConfigHistory::default(),
            discovery: crate::discovery::Discovery::default(),
        });
        admin::register_collectors(&shared);
        let inner = Arc::new(Inner {
            shared,
            live: Mutex::new(None),
            connections: Arc::new(tokio::sync::Semaphore::new(config.runtime.max_connections)),
            connections_size: std::sync::atomic::AtomicUsize::new(config.runtime.max_connections),
            guard: std::sync::Mutex::new(None),
            retiring: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        });
        let f = Fulcrum { inner };
        f.apply(config).await?;
        // Pools of discovered servers start empty: give their sources a first round.
        f.shared().discovery.ready(DISCOVERY_START_WAIT).await;
        Ok(f)
    }

    /// What the supervisor publishes for the admin API.
    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Metric families.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared().metrics
    }

    /// The bound address of listener `name`.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared().listener_addrs.load().get(name).copied()
    }

    /// The bound admin address.
    pub async fn admin_addr(&self) -> Option<SocketAddr> {
        self.inner
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
        self.shared().pools.load().get(name).map(|s| s.load())
    }

    /// Fires when shutdown has been requested (by a signal or the admin API).
    pub fn shutdown_requested(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Re-reads the config file in force and applies it. On error nothing changes: the
    /// error (`file:line:col: message` for an invalid file) is logged and counted, and the
    /// previous config keeps serving.
    pub async fn reload(&self) -> Result<(), RuntimeError> {
        crate::notify::notify_reloading();
        let path = self.shared().config.load().source.clone();
        let result = match config::load(&path) {
            Ok(cfg) => {
                let guard = cfg.runtime.reload_guard;
                let before = guard::Before::take(self.shared());
                guard::stop(&self.inner);
                let applied = self.apply(cfg).await;
                if let (Ok(()), Some(g)) = (&applied, guard) {
                    guard::start(self, before, g);
                }
                applied
            }
            Err(e) => Err(RuntimeError::Config(e)),
        };
        let m = &self.shared().metrics;
        match &result {
            Ok(()) => {
                self.shared().history.reload_succeeded();
                m.reloads.with_label_values(&["success"]).inc();
                m.last_reload_ok.set(1);
                m.last_reload_success_time.set(crate::metrics::unix_now());
                tracing::info!(config = %path.display(), "configuration reloaded");
            }
            Err(e) => {
                self.shared().history.reload_failed(e);
                m.reloads.with_label_values(&["failure"]).inc();
                m.last_reload_ok.set(0);
                tracing::error!(error = %e, "reload failed; the previous configuration stays in force");
            }
        }
        crate::notify::notify_ready(match &result {
            Ok(()) => "serving; last reload succeeded".to_string(),
            Err(e) => format!("serving; last reload failed: {e}"),
        });
        result
    }

    /// Stops accepting, lets in-flight work finish for up to `grace`, then closes the rest.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        guard::stop(&self.inner);
        self.shared().discovery.stop();
        let live = self.inner.live.lock().await.take();
        let Some(live) = live else { return };
        if let Some(a) = &live.admin {
            a.stop();
        }
        for t in live.health.values() {
            t.cancel.cancel();
        }
        let stops = live.listeners.values().map(|l| l.stop(grace));
        let retiring = &self.inner.retiring;
        retiring.close();
        let (clean, retired) = tokio::join!(
            futures_util::future::join_all(stops),
            tokio::time::timeout(grace, retiring.wait())
        );
        if let Some(log) = live.access_log.clone() {
            // The writer lingers between batches: write what is queued before exiting.
            let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(2))).await;
        }
        if clean.iter().all(|c| *c) && retired.is_ok() {
            tracing::info!("all connections finished; stopped");
        } else {
            tracing::warn!(grace = ?grace, "shutdown grace period over; closed remaining connections");
        }
    }

    /// Resizes the process-wide connection cap. Growing adds permits at once; shrinking
    /// takes back free permits at once and the rest as connections close: the first
    /// permits given back after this call, ahead of every connection still waiting for one.
    fn resize_connection_cap(&self, size: usize) {
        use std::sync::atomic::Ordering;
        use std::task::{Context, Poll, Waker};
        let inner = &self.inner;
        let old = inner.connections_size.swap(size, Ordering::AcqRel);
        if size > old {
            inner.connections.add_permits(size - old);
        } else if size < old {
            let rest = (old - size) - inner.connections.forget_permits(old - size);
            if rest > 0 {
                // Queued now, not when a task gets to it: the semaphore hands permits out
                // in the order they were asked for, and a connection that asked in between
                // would get the next one. The task's first poll replaces the waker (and
                // finds any permits handed over before it).
                let mut debt = Box::pin(inner.connections.clone().acquire_many_owned(rest as u32));
                match debt.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                    Poll::Ready(p) => {
                        if let Ok(p) = p {
                            p.forget();
                        }
                    }
                    Poll::Pending => {
                        let stop = inner.shutdown.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                p = debt => if let Ok(p) = p { p.forget() },
                                _ = stop.cancelled() => {}
                            }
                        });
                    }
                }
            }
        }
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared().config.load_full()
    }
}

impl admin::Control for Fulcrum {
    fn reload(&self) -> Pin<Box<dyn Future<Output = admin::ReloadResult> + Send + 'static>> {
        let f = self.clone();
        Box::pin(async move { Fulcrum::reload(&f).await.map_err(|e| e.to_string()) })
    }
}
