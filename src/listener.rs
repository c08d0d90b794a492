//! Listeners: binding sockets, accept loops, connection limits, and handing each connection
//! to its proxy (TLS handshakes will sit here too).
//!
//! A listener's route (settings + pool) sits behind an arc-swap that a reload replaces; the
//! socket and its accept loop stay, so a reload never closes a listening socket that it
//! keeps. Stopping is two-phase: `drain` stops accepting and asks every connection to finish
//! (HTTP/1.1 gets `Connection: close`, h2 a GOAWAY), then `hard_stop` ends what is left.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ListenerSettings, Protocol};
use crate::proxy::http::{ConnCtx, HttpRoute};
use crate::proxy::tcp::TcpRoute;
use crate::proxy::tunnel::{idle_for, Active};

/// How long a draining HTTP/1 connection must be quiet before it is closed: longer than a
/// request already sent by the client takes to arrive. (The wait ends after one to two such
/// periods of silence, or earlier when the keep-alive idle timeout is shorter.)
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// A listener's swappable route.
#[derive(Clone)]
pub enum Route {
    /// L7.
    Http(Arc<ArcSwap<HttpRoute>>),
    /// L4.
    Tcp(Arc<ArcSwap<TcpRoute>>),
}

/// Binds `addr` with SO_REUSEADDR and a deep backlog; synchronous, so a reload can bind
/// every new socket before it changes anything.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// A running listener.
pub struct Listener {
    /// Settings it was started with (the route holds the current ones).
    pub settings: ListenerSettings,
    /// The bound address (the real port when the config said 0).
    pub local_addr: SocketAddr,
    /// Its route.
    pub route: Route,
    drain: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
}

impl Listener {
    /// Starts accepting on `socket` with `route`.
    pub fn start(
        settings: ListenerSettings,
        socket: std::net::TcpListener,
        route: Route,
    ) -> io::Result<Listener> {
        let local_addr = socket.local_addr()?;
        let listener = TcpListener::from_std(socket)?;
        let drain = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let acceptor = Acceptor {
            listener,
            route: route.clone(),
            limit: Arc::new(Semaphore::new(settings.max_connections)),
            drain: drain.clone(),
            hard_stop: hard_stop.clone(),
            tracker: tracker.clone(),
            http: Arc::new(http_builder(&settings)),
            name: settings.name.clone(),
        };
        tracker.spawn(acceptor.run());
        tracing::info!(listener = %settings.name, addr = %local_addr, protocol = ?settings.protocol, "listening");
        Ok(Listener {
            settings,
            local_addr,
            route,
            drain,
            hard_stop,
            tracker,
        })
    }

    /// Stops accepting and asks open connections to finish; waits up to `grace`, then
    /// closes what is left. Returns whether everything finished in time.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.drain.cancel();
        self.tracker.close();
        let clean = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !clean {
            self.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        }
        clean
    }

    /// Stops accepting and asks open connections to finish, without waiting: `stop`
    /// completes the job. A reload calls this before another accept loop takes the socket.
    pub fn begin_drain(&self) {
        self.drain.cancel();
    }

    /// Closes everything at once.
    pub fn abort(&self) {
        self.drain.cancel();
        self.hard_stop.cancel();
    }
}

fn http_builder(s: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.timeouts.header_read)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(256);
    b
}

struct Acceptor {
    listener: TcpListener,
    route: Route,
    limit: Arc<Semaphore>,
    drain: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
    http: Arc<auto::Builder<TokioExecutor>>,
    name: Arc<str>,
}

impl Acceptor {
    async fn run(self) {
        loop {
            let permit = tokio::select! {
                _ = self.drain.cancelled() => break,
                p = self.limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                // Drain first: once a reload has handed this socket to a new accept loop,
                // no further connection may land on this one.
                biased;
                _ = self.drain.cancelled() => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let conn = self.connection(stream, peer);
                    self.tracker.spawn(async move {
                        conn.await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; never end the loop.
                    tracing::warn!(listener = %self.name, error = %e, "accept failed; backing off");
                    tokio::select! {
                        _ = self.drain.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        }
        tracing::debug!(listener = %self.name, "accept loop stopped");
    }

    fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let route = self.route.clone();
        let drain = self.drain.clone();
        let hard_stop = self.hard_stop.clone();
        let tracker = self.tracker.clone();
        let http = self.http.clone();
        async move {
            let _ = stream.set_nodelay(true);
            match route {
                Route::Tcp(r) => {
                    let r = r.load_full();
                    r.metrics.connections.inc();
                    r.metrics.active.inc();
                    let active = r.metrics.active.clone();
                    crate::proxy::tcp::serve(stream, peer, r, hard_stop).await;
                    active.dec();
                }
                Route::Http(r) => {
                    let (m, idle) = {
                        let cur = r.load();
                        (cur.metrics.clone(), cur.listener.timeouts.keepalive_idle)
                    };
                    m.connections.inc();
                    m.active.inc();
                    let cx = Arc::new(ConnCtx {
                        route: r,
                        client: peer,
                        tracker,
                        hard_stop: hard_stop.clone(),
                        draining: AtomicBool::new(false),
                        saw_h2: AtomicBool::new(false),
                    });
                    let svc_cx = cx.clone();
                    let svc = service_fn(move |req| crate::proxy::http::serve(req, svc_cx.clone()));
                    // Activity is counted at the socket, so a connection streaming a long body
                    // is never "idle"; an idle one is closed gracefully (in-flight requests,
                    // if any, still finish).
                    let ticks = Arc::new(AtomicU64::new(0));
                    let io = Active {
                        io: stream,
                        ticks: ticks.clone(),
                    };
                    let conn = http.serve_connection_with_upgrades(TokioIo::new(io), svc);
                    tokio::pin!(conn);
                    let res = tokio::select! {
                        r = conn.as_mut() => Some(r),
                        _ = drain.cancelled() => None,
                        _ = idle_for(&ticks, idle) => None,
                    };
                    let mut res = res;
                    if res.is_none() && drain.is_cancelled() && !cx.saw_h2.load(Ordering::Relaxed) {
                        // Draining an HTTP/1 connection. hyper's graceful shutdown closes an
                        // idle one at once, even with a request already on its way (or not yet
                        // read: a connection accepted just before the drain): that request
                        // would fail, the reset-on-reload race. Instead answer whatever
                        // arrives with `Connection: close`, and close once the connection
                        // has been quiet for a moment.
                        cx.draining.store(true, Ordering::Relaxed);
                        res = tokio::select! {
                            r = conn.as_mut() => Some(r),
                            _ = idle_for(&ticks, idle.min(DRAIN_QUIET)) => None,
                            _ = hard_stop.cancelled() => Some(Ok(())),
                        };
                    }
                    let res = match res {
                        Some(r) => r,
                        None => {
                            // h1: closes when idle, else after the response in progress (with
                            // Connection: close); h2: GOAWAY, in-flight streams finish.
                            conn.as_mut().graceful_shutdown();
                            tokio::select! {
                                r = conn.as_mut() => r,
                                _ = hard_stop.cancelled() => Ok(()),
                            }
                        }
                    };
                    if let Err(e) = res {
                        tracing::debug!(client = %peer, error = %e, "http connection ended with an error");
                    }
                    m.active.dec();
                }
            }
        }
    }
}

/// The protocol of a route, for reload decisions.
pub fn protocol_of(route: &Route) -> Protocol {
    match route {
        Route::Http(_) => Protocol::Http,
        Route::Tcp(_) => Protocol::Tcp,
    }
}
