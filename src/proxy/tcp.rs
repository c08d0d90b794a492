//! L4: relay a client connection's bytes to a server of the pool and back.
//!
//! The server is chosen per connection; a connect failure moves on to another server (at
//! most `retries` more), so a dead server costs the client a little latency, not an error.
//! An optional PROXY protocol header tells the server who the client is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::proxy_protocol;
use super::tunnel::{self, Cut, RelayEnd};
use crate::access_log::{AccessLog, TcpLine};
use crate::backend::{FailureKind, LoadGuard, Selection};
use crate::balance::PickKey;
use crate::config::ListenerSettings;
use crate::health::passive::{self, Outcome};
use crate::metrics::TlsListenerMetrics;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::pool::{Pool, Server};
use crate::proxy::attempts::Attempts;
use crate::queue;
use crate::tls::{ServerTls, SniRouter};

use crate::admission::{Admission, ClientAddr};

/// How long a passthrough listener waits for a client's ClientHello (to read its SNI).
const SNI_WAIT: Duration = Duration::from_secs(10);

/// A passthrough listener's `route_by_sni`: the name table and the pools it names.
pub struct SniTable {
    router: SniRouter,
    pools: HashMap<Arc<str>, Arc<Pool>>,
}

impl SniTable {
    /// The table for `routes` over `pools` (every pool the routes name, by name).
    pub fn new(routes: &crate::config::SniRoutes, pools: HashMap<Arc<str>, Arc<Pool>>) -> Self {
        SniTable {
            router: SniRouter::new(routes),
            pools,
        }
    }
}

/// Everything a connection on one tcp listener needs, swapped whole on reload.
pub struct TcpRoute {
    /// The listener's settings.
    pub listener: ListenerSettings,
    /// Its pool (with SNI routing, the one for a missing or unknown name; `None`: such
    /// connections are closed).
    pub pool: Option<Arc<Pool>>,
    /// Listener metrics.
    pub metrics: ListenerMetrics,
    no_server: IntCounter,
    connect_failed: IntCounter,
    overloaded: IntCounter,
    no_route: IntCounter,
    retries_family: prometheus::IntCounterVec,
    /// Where connection lines go, when the access log is on.
    pub access_log: Option<Arc<AccessLog>>,
    /// TLS termination, when the listener has `[listener.tls]`.
    tls: Option<(Arc<ServerTls>, TlsListenerMetrics)>,
    /// SNI passthrough routing, when the listener has `route_by_sni`.
    sni: Option<SniTable>,
    /// Who the client is (inbound PROXY), who may connect, and how often.
    pub admission: Arc<Admission>,
}

impl TcpRoute {
    /// Builds the route of `listener` over `pool`.
    pub fn new(listener: ListenerSettings, pool: Option<Arc<Pool>>, metrics: &Metrics) -> Self {
        let name = &*listener.name;
        let listener_for_admission = listener.clone();
        TcpRoute {
            no_server: metrics.proxy_errors.with_label_values(&[name, "no_server"]),
            connect_failed: metrics.proxy_errors.with_label_values(&[name, "connect"]),
            overloaded: metrics
                .proxy_errors
                .with_label_values(&[name, "overloaded"]),
            no_route: metrics.proxy_errors.with_label_values(&[name, "no_route"]),
            retries_family: metrics.retries.clone(),
            metrics: ListenerMetrics::new(metrics, name),
            listener,
            pool,
            access_log: None,
            tls: None,
            sni: None,
            admission: Arc::new(Admission::new(&listener_for_admission, metrics, None)),
        }
    }

    /// Uses `admission` (a reload passes the listener's previous one on, so rate-limit
    /// buckets survive).
    pub fn with_admission(mut self, admission: Arc<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// Turns connection logging on (`Some`) or off.
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = log;
        self
    }

    /// Terminates TLS with `tls` before relaying (`None`: plain bytes).
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>, metrics: &Metrics) -> Self {
        self.tls = tls.map(|t| (t, TlsListenerMetrics::new(metrics, &self.listener.name)));
        self
    }

    /// Routes connections by the SNI of their ClientHello.
    pub fn with_sni(mut self, sni: Option<SniTable>) -> Self {
        self.sni = sni;
        self
    }

    /// Logs one finished connection, when the access log is on.
    fn log(
        &self,
        pool: Option<&Pool>,
        client: SocketAddr,
        server: Option<&Arc<str>>,
        (bytes_in, bytes_out): (u64, u64),
        started: Instant,
        outcome: &'static str,
    ) {
        if let Some(log) = &self.access_log {
            log.connection(&TcpLine {
                listener: &self.listener.name,
                client,
                pool: pool.map_or("-", |p| &p.settings.name),
                server: server.map(|s| &**s),
                bytes_in,
                bytes_out,
                duration: started.elapsed(),
                outcome,
            });
        }
    }
}

/// How the attempt to reach a server ended.
enum Reached<'p> {
    /// Connected to `server`, holding its slot.
    Server(TcpStream, &'p Server, LoadGuard),
    /// No server could be reached (or none had a slot); logged with this outcome.
    Nowhere(&'static str),
}

/// A client connection, as it is relayed: plain bytes, or TLS the listener terminated.
enum Client {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Serves one client connection to its end: terminate TLS or read the SNI if the listener
/// says so, reach a server (with retries), then relay until `ctl`'s hard stop at the latest.
pub(crate) async fn serve(
    client: TcpStream,
    who: ClientAddr,
    route: Arc<TcpRoute>,
    ctl: crate::listener::Control,
) {
    // The client as admission decided it (a trusted PROXY header's source, else the peer):
    // the balancing key, the access log's client and the PROXY header sent on.
    let peer = who.addr;
    let started = Instant::now();
    let mut pool = route.pool.as_ref();
    if let Some(sni) = &route.sni {
        let name = match crate::tls::peek_sni(&client, crate::tls::sni::MAX_CLIENT_HELLO, SNI_WAIT)
            .await
        {
            Ok(name) => name,
            Err(e) => {
                tracing::debug!(listener = %route.listener.name, client = %peer, error = %e, "no ClientHello to route by; closing");
                route.no_route.inc();
                route.log(
                    pool.map(|p| &**p),
                    peer,
                    None,
                    (0, 0),
                    started,
                    "no_client_hello",
                );
                return;
            }
        };
        match sni
            .router
            .route(name.as_deref())
            .and_then(|p| sni.pools.get(p))
        {
            Some(p) => pool = Some(p),
            None => {
                tracing::debug!(listener = %route.listener.name, client = %peer, sni = ?name, "no route and no default pool for this name; closing");
                route.no_route.inc();
                route.log(pool.map(|p| &**p), peer, None, (0, 0), started, "no_route");
                return;
            }
        }
    }
    let mut client = match &route.tls {
        None => Client::Plain(client),
        Some((tls, m)) => {
            match crate::tls::accept(client, tls.server_config(), tls.handshake_timeout()).await {
                Ok((s, _)) => Client::Tls(Box::new(s)),
                Err(e) => {
                    m.count(e.kind());
                    tracing::debug!(listener = %route.listener.name, client = %peer, reason = e.reason(), sni = ?e.sni(), "TLS handshake failed");
                    return;
                }
            }
        }
    };
    let Some(pool) = pool else {
        // A passthrough listener without a default pool, for a client without a route.
        route.no_route.inc();
        route.log(None, peer, None, (0, 0), started, "no_route");
        return;
    };
    let (mut upstream, server, load) = match reach(&route, pool, peer).await {
        Reached::Server(up, server, load) => (up, server, load),
        Reached::Nowhere(outcome) => {
            route.log(Some(pool), peer, None, (0, 0), started, outcome);
            return;
        }
    };
    let _pool_load = pool.enter();
    let _ = upstream.set_nodelay(true);
    if let Some(v) = route.listener.send_proxy {
        let local = match &client {
            Client::Plain(c) => c.local_addr(),
            Client::Tls(c) => c.get_ref().0.local_addr(),
        }
        .unwrap_or(route.listener.bind);
        let hdr = proxy_protocol::header(v, peer, local);
        if let Err(e) = upstream.write_all(&hdr).await {
            tracing::debug!(error = %e, "writing PROXY header failed");
            route.log(
                Some(pool),
                peer,
                Some(&server.state.name),
                (0, 0),
                started,
                "error",
            );
            return;
        }
    }
    let idle = route.listener.timeouts.tunnel_idle;
    // An operator's drain deadline closes the relay too (the server's sever token).
    let sever = server.state.sever_token();
    let stops = tunnel::Stops {
        shutdown: &ctl.hard_stop,
        drain: &sever,
    };
    let relayed = match &mut client {
        Client::Plain(c) => {
            let _ = c.set_nodelay(true);
            tunnel::relay_tcp(c, &mut upstream, idle, stops).await
        }
        Client::Tls(c) => tunnel::relay(&mut **c, &mut upstream, idle, stops).await,
    };
    let (moved, outcome) = match &relayed {
        Ok(m) => (*m, "closed"),
        Err(cut) => (cut.moved, cut.end.outcome()),
    };
    route.log(
        Some(pool),
        peer,
        Some(&server.state.name),
        moved,
        started,
        outcome,
    );
    let (up, down) = moved;
    match relayed {
        Ok(_) => tracing::trace!(client = %peer, up, down, "tcp relay done"),
        Err(Cut {
            end: RelayEnd::Idle,
            ..
        }) => tracing::debug!(client = %peer, up, down, "tcp relay idle; closed"),
        Err(Cut { end, .. }) => {
            tracing::debug!(client = %peer, up, down, error = ?end, "tcp relay ended")
        }
    }
    drop(load);
}

/// Picks a server and connects, moving on to another after a connect failure (at most
/// `retries` more, within the retry budget). A local resource error (EMFILE,
/// EADDRNOTAVAIL...) ends the attempt without blaming anyone.
async fn reach<'p>(route: &TcpRoute, pool: &'p Arc<Pool>, peer: SocketAddr) -> Reached<'p> {
    let key = if pool.settings.algorithm.needs_key() {
        PickKey {
            client_ip: Some(peer.ip()),
            key_hash: None,
            pool_load: pool.inflight.load(std::sync::atomic::Ordering::Relaxed),
        }
    } else {
        PickKey::default()
    };
    let Some((mut server, mut why)) = pool.pick(&key) else {
        route.no_server.inc();
        tracing::debug!(listener = %route.listener.name, client = %peer, "no server available; closing");
        return Reached::Nowhere("no_server");
    };
    pool.budget.note_request();
    let mut attempts = Attempts::new(pool.settings.retries);
    let connect_timeout = pool.settings.timeouts.connect;
    loop {
        // A slot on this server (or, if it is full, another one), else a bounded wait.
        let (admitted, load) = match queue::admit(pool, server, attempts.tried()).await {
            Ok(a) => a,
            Err(e) => {
                route.overloaded.inc();
                tracing::debug!(listener = %route.listener.name, client = %peer, error = %e, "no server slot; closing");
                return Reached::Nowhere("overloaded");
            }
        };
        if admitted.idx != server.idx {
            why = Selection::Queue;
        }
        server = admitted;
        attempts.record(server.idx);
        server.state.metrics.selected(why);
        let connected =
            tokio::time::timeout(connect_timeout, TcpStream::connect(server.settings.addr)).await;
        match connected {
            Ok(Ok(upstream)) => {
                passive::observe(pool, server, Outcome::Success);
                return Reached::Server(upstream, server, load);
            }
            Ok(Err(e)) if route.metrics.local_error(&e) => {
                tracing::debug!(listener = %route.listener.name, server = %server.state.name, error = %e, "connect failed for a local reason; closing");
                return Reached::Nowhere("local_error");
            }
            _ => {
                drop(load);
                server.state.metrics.error(FailureKind::Connect);
                passive::observe(pool, server, Outcome::Failure(FailureKind::Connect));
            }
        }
        if attempts.may_retry(pool).is_err() {
            break;
        }
        match pool.pick_other(&key, attempts.tried()) {
            Some(next) => {
                route.retries_family.with_label_values(&[pool.name()]).inc();
                server = next;
                why = Selection::Retry;
            }
            None => break,
        }
    }
    route.connect_failed.inc();
    tracing::debug!(listener = %route.listener.name, client = %peer, "no server could be reached; closing");
    Reached::Nowhere("connect_failed")
}
