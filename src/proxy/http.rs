//! L7: serving clients with hyper (HTTP/1.1 and h2c on one port) and forwarding each request
//! to a server of the listener's pool.
//!
//! A request goes through a few named steps: read the route (one arc-swap load), compute the
//! balancing key if the algorithm needs one, choose a server (sticky cookie, else balancer),
//! rewrite headers, send it on a pooled connection, and stream the response back. Failures
//! before any response byte are retried on another server when that is safe; every failure
//! maps to one status in `ProxyError`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body::{Finish, ReqBody, RespBody};
use super::headers::{add_forwarded, canonical_ip, cookie, strip_hop_by_hop, wants_upgrade};
use super::tunnel;
use super::upstream::{Lease, ServerUpstream};
use super::ProxyError;
use crate::access_log::{AccessLog, RequestHead, Upstream};
use crate::backend::{FailureKind, LoadGuard, Selection};
use crate::balance::{hash_bytes, BackendIdx, PickKey};
use crate::config::{HashKey, ListenerSettings, UpstreamProtocol};
use crate::health::passive::{self, Outcome};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::pool::{Pool, Server};
use crate::queue;

/// Everything a request on one listener needs, swapped whole on reload.
pub struct HttpRoute {
    /// The listener's settings.
    pub listener: ListenerSettings,
    /// Its pool.
    pub pool: Arc<Pool>,
    /// Connections to each server of the pool, indexed like `pool.servers`.
    pub upstreams: Arc<[Arc<ServerUpstream>]>,
    /// Listener metrics.
    pub metrics: ListenerMetrics,
    errors: [IntCounter; 6],
    retries: IntCounter,
    budget_exhausted: IntCounter,
    sticky_set_cookie: Option<Vec<HeaderValue>>,
    /// Where request lines go, when the access log is on.
    pub access_log: Option<Arc<AccessLog>>,
}

impl HttpRoute {
    /// Builds the route of `listener` over `pool`.
    pub fn new(
        listener: ListenerSettings,
        pool: Arc<Pool>,
        upstreams: Arc<[Arc<ServerUpstream>]>,
        metrics: &Metrics,
    ) -> Self {
        let name = &*listener.name;
        let sticky_set_cookie = pool.settings.sticky_cookie.as_ref().map(|c| {
            pool.servers
                .iter()
                .map(|s| {
                    HeaderValue::try_from(format!(
                        "{c}={}; Path=/; HttpOnly; SameSite=Lax",
                        s.cookie_id
                    ))
                    .expect("cookie names are validated and ids are hex")
                })
                .collect()
        });
        HttpRoute {
            errors: ProxyError::ALL
                .map(|e| metrics.proxy_errors.with_label_values(&[name, e.as_str()])),
            retries: metrics.retries.with_label_values(&[pool.name()]),
            budget_exhausted: metrics
                .retries_budget_exhausted
                .with_label_values(&[pool.name()]),
            metrics: ListenerMetrics::new(metrics, name),
            sticky_set_cookie,
            listener,
            pool,
            upstreams,
            access_log: None,
        }
    }

    /// Turns request logging on (`Some`) or off.
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = log;
        self
    }
}

/// Per-connection context.
pub struct ConnCtx {
    /// The listener's current route.
    pub route: Arc<ArcSwap<HttpRoute>>,
    /// The client.
    pub client: SocketAddr,
    /// Tracks upgraded tunnels so shutdown waits for them.
    pub tracker: TaskTracker,
    /// Fires when the shutdown grace period is over.
    pub hard_stop: CancellationToken,
    /// Set when the listener drains (reload or shutdown): HTTP/1 responses then carry
    /// `Connection: close`, so the client moves on instead of meeting a closed connection.
    pub draining: AtomicBool,
    /// Whether an HTTP/2 request was seen here (h2 drains with GOAWAY at once instead).
    pub saw_h2: AtomicBool,
}

/// hyper's entry point: one request in, one response out, never an error.
pub async fn serve(
    req: Request<Incoming>,
    cx: Arc<ConnCtx>,
) -> Result<Response<RespBody>, Infallible> {
    let route = cx.route.load_full();
    let started = Instant::now();
    let h1 = req.version() < Version::HTTP_2;
    if !h1 && !cx.saw_h2.load(Ordering::Relaxed) {
        cx.saw_h2.store(true, Ordering::Relaxed);
    }
    let head = route
        .access_log
        .as_ref()
        .map(|_| RequestHead::capture(&req));
    let mut resp = match forward(req, &route, &cx).await {
        Ok(r) => r,
        Err(e) => {
            route.errors[e as usize].inc();
            tracing::debug!(listener = %route.listener.name, client = %cx.client, error = %e, "request failed");
            e.response()
        }
    };
    if h1 && cx.draining.load(Ordering::Relaxed) && resp.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    route.metrics.count_status(resp.status().as_u16());
    let took = started.elapsed();
    route.metrics.duration.observe(took.as_secs_f64());
    if let (Some(log), Some(head)) = (&route.access_log, head) {
        let server = match resp.body() {
            RespBody::Upstream {
                finish: Some(f), ..
            } => Some(f.load.state().name.clone()),
            _ => None,
        };
        let pool = &route.pool.settings.name;
        log.response(
            &route.listener.name,
            pool,
            cx.client,
            head,
            &resp,
            server,
            took,
        );
    }
    Ok(resp)
}

/// Whether a request may be sent again after it reached a server (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn pick_key(route: &HttpRoute, parts: &Parts, client: SocketAddr) -> PickKey {
    let pool = &route.pool;
    if !pool.settings.algorithm.needs_key() {
        return PickKey::default();
    }
    let key_hash = match &pool.settings.hash_key {
        HashKey::ClientIp => None,
        HashKey::Header(h) => parts.headers.get(h).map(|v| hash_bytes(v.as_bytes())),
        HashKey::Cookie(c) => cookie(&parts.headers, c).map(|v| hash_bytes(v.as_bytes())),
        HashKey::Path => Some(hash_bytes(parts.uri.path().as_bytes())),
        HashKey::Uri => Some(hash_bytes(
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        )),
    };
    PickKey {
        client_ip: Some(canonical_ip(client.ip())),
        key_hash,
        pool_load: pool.inflight.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Rewrites the request head for the server: origin-form URI, hop-by-hop headers out,
/// forwarding headers in, Host kept as the client sent it.
fn prepare(
    parts: &mut Parts,
    route: &HttpRoute,
    client: SocketAddr,
    upgrade: Option<&HeaderValue>,
) {
    let host = match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u.clone());
    }
    add_forwarded(
        &mut parts.headers,
        route.listener.forwarded,
        client,
        host.as_ref(),
    );
    if let Some(h) = host {
        if !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, h);
        }
    }
    let pq = parts.uri.path_and_query().cloned();
    match route.pool.settings.upstream_protocol {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                parts.uri = pq.map_or_else(|| Uri::from_static("/"), Uri::from);
            }
        }
        UpstreamProtocol::H2 => parts.version = Version::HTTP_2,
    }
}

/// The request URI for a server: h2 needs the absolute form, HTTP/1.1 the origin form.
fn uri_for(uri: &Uri, up: &ServerUpstream, protocol: UpstreamProtocol) -> Option<Uri> {
    match protocol {
        UpstreamProtocol::Http1 => None,
        UpstreamProtocol::H2 => {
            let pq = uri.path_and_query().map_or("/", |p| p.as_str());
            Uri::builder()
                .scheme("http")
                .authority(up.addr().to_string())
                .path_and_query(pq)
                .build()
                .ok()
        }
    }
}

fn copy_head(parts: &Parts) -> Parts {
    let (mut p, ()) = Request::new(()).into_parts();
    p.method = parts.method.clone();
    p.uri = parts.uri.clone();
    p.version = parts.version;
    p.headers = parts.headers.clone();
    p
}

async fn forward(
    mut req: Request<Incoming>,
    route: &HttpRoute,
    cx: &ConnCtx,
) -> Result<Response<RespBody>, ProxyError> {
    let pool = &route.pool;
    let upgrade = (req.version() == Version::HTTP_11 && wants_upgrade(req.headers()))
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten();
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    let key = pick_key(route, &parts, cx.client);
    let sticky = pool
        .settings
        .sticky_cookie
        .as_ref()
        .and_then(|name| cookie(&parts.headers, name))
        .and_then(|id| pool.sticky_target(id));
    let (mut server, mut why) = match sticky {
        Some(s) => (s, Selection::Sticky),
        None => pool.pick(&key).ok_or(ProxyError::NoServer)?,
    };

    prepare(&mut parts, route, cx.client, upgrade.as_ref());
    // Only a request without a body can be sent again after it reached a server, and only
    // if its method is idempotent; keep a copy of its head for that case.
    let replay = (idempotent(&parts.method) && body.is_end_stream() && upgrade.is_none())
        .then(|| copy_head(&parts));
    let mut pending = Some(Request::from_parts(parts, ReqBody::Client(body)));

    let budget_total = pool.settings.retries as usize;
    let mut tried: [BackendIdx; 11] = [BackendIdx(u32::MAX); 11];
    let mut attempts = 0usize;
    pool.budget.note_request();
    loop {
        // A slot on this server (or, if it is full, another one), else a bounded wait: 503.
        let load;
        (server, load) = queue::admit(pool, server, &tried[..attempts]).await?;
        tried[attempts] = server.idx;
        attempts += 1;
        server.state.metrics.selected(why);
        let pool_load = pool.enter();
        server.state.metrics.requests.inc();
        let up = &route.upstreams[server.idx.get()];

        let failure = match up.checkout().await {
            Err(e) => {
                // Refused and timed out both count as connect failures.
                tracing::debug!(pool = %pool.name(), server = %server.state.name, error = ?e, "connect failed");
                let kind = FailureKind::Connect;
                server.state.metrics.error(kind);
                passive::observe(pool, server, Outcome::Failure(kind));
                // The request was not consumed: any method may go to another server.
                ProxyError::Connect
            }
            Ok(lease) => {
                let mut req = pending
                    .take()
                    .expect("a request is pending at each attempt");
                if let Some(uri) = uri_for(req.uri(), up, pool.settings.upstream_protocol) {
                    *req.uri_mut() = uri;
                }
                match send(lease, req, up, route).await {
                    Ok((resp, lease)) => {
                        let status = resp.status();
                        let outcome = if status.is_server_error() {
                            server.state.metrics.error(FailureKind::Status5xx);
                            Outcome::Failure(FailureKind::Status5xx)
                        } else {
                            Outcome::Success
                        };
                        passive::observe(pool, server, outcome);
                        return Ok(respond(
                            resp,
                            lease,
                            load,
                            pool_load,
                            server,
                            why,
                            route,
                            cx,
                            client_upgrade,
                        ));
                    }
                    Err((err, back)) => {
                        server.state.metrics.error(err.kind);
                        passive::observe(pool, server, Outcome::Failure(err.kind));
                        match back {
                            // Never written: safe to send anywhere.
                            Some(r) => pending = Some(r),
                            None => {
                                if err.kind == FailureKind::Timeout {
                                    return Err(ProxyError::Timeout);
                                }
                                match &replay {
                                    Some(head) => {
                                        pending = Some(Request::from_parts(
                                            copy_head(head),
                                            ReqBody::Empty,
                                        ))
                                    }
                                    None => return Err(ProxyError::Reset),
                                }
                            }
                        }
                        err.error
                    }
                }
            }
        };
        drop(load);
        if attempts > budget_total {
            return Err(failure);
        }
        if !pool.budget.try_retry() {
            route.budget_exhausted.inc();
            return Err(failure);
        }
        match pool.pick_other(&key, &tried[..attempts]) {
            Some(next) => {
                route.retries.inc();
                server = next;
                why = Selection::Retry;
            }
            None => return Err(failure),
        }
    }
}

/// A failed send: its metric kind and the error to report if no retry succeeds.
struct SendFailure {
    kind: FailureKind,
    error: ProxyError,
}

/// Sends on `lease`; a pooled connection found closed before the request was written is
/// replaced once by a fresh one. On failure, the request comes back if it was never written.
async fn send(
    mut lease: Lease,
    req: Request<ReqBody>,
    up: &Arc<ServerUpstream>,
    route: &HttpRoute,
) -> Result<(Response<Incoming>, Lease), (SendFailure, Option<Request<ReqBody>>)> {
    let timeout = route.pool.settings.timeouts.response_header;
    let mut req = req;
    for _ in 0..2 {
        match tokio::time::timeout(timeout, lease.send(req)).await {
            Err(_) => {
                return Err((
                    SendFailure {
                        kind: FailureKind::Timeout,
                        error: ProxyError::Timeout,
                    },
                    None,
                ));
            }
            Ok(Ok(resp)) => return Ok((resp, lease)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) if lease.reused() => {
                    req = back;
                    lease = match up.connect().await {
                        Ok(l) => l,
                        Err(_) => {
                            return Err((
                                SendFailure {
                                    kind: FailureKind::Connect,
                                    error: ProxyError::Connect,
                                },
                                Some(req),
                            ));
                        }
                    };
                }
                back => {
                    return Err((
                        SendFailure {
                            kind: FailureKind::Reset,
                            error: ProxyError::Reset,
                        },
                        back,
                    ));
                }
            },
        }
    }
    Err((
        SendFailure {
            kind: FailureKind::Reset,
            error: ProxyError::Reset,
        },
        Some(req),
    ))
}

#[allow(clippy::too_many_arguments)]
fn respond(
    mut resp: Response<Incoming>,
    lease: Lease,
    load: LoadGuard,
    pool_load: crate::pool::PoolLoad,
    server: &Server,
    why: Selection,
    route: &HttpRoute,
    cx: &ConnCtx,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<RespBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_up) = client_upgrade {
            return tunnel_upgrade(resp, client_up, load, pool_load, route, cx);
        }
    }
    strip_hop_by_hop(resp.headers_mut());
    if let (Some(cookies), false) = (&route.sticky_set_cookie, why == Selection::Sticky) {
        resp.headers_mut()
            .append(header::SET_COOKIE, cookies[server.idx.get()].clone());
    }
    let (parts, inner) = resp.into_parts();
    let mut finish = Finish {
        lease: Some(lease),
        load,
        pool: pool_load,
    };
    if inner.is_end_stream() {
        // hyper will not poll an empty body, so give the connection back now.
        finish.release_connection();
    }
    Response::from_parts(
        parts,
        RespBody::Upstream {
            inner,
            finish: Some(finish),
        },
    )
}

/// Completes a WebSocket-style upgrade: the 101 goes to the client, and once both sides
/// have switched, a tunnel task relays bytes until either closes or the tunnel idles out.
fn tunnel_upgrade(
    mut resp: Response<Incoming>,
    client_up: hyper::upgrade::OnUpgrade,
    load: LoadGuard,
    pool_load: crate::pool::PoolLoad,
    route: &HttpRoute,
    cx: &ConnCtx,
) -> Response<RespBody> {
    let server_up = hyper::upgrade::on(&mut resp);
    if route.access_log.is_some() {
        // The 101's body carries no guards to name the server by; tell the access log here.
        resp.extensions_mut()
            .insert(Upstream(load.state().name.clone()));
    }
    let idle = route.listener.timeouts.tunnel_idle;
    let stop = cx.hard_stop.clone();
    cx.tracker.spawn(async move {
        let _hold = (load, pool_load);
        let (client, server) = match tokio::try_join!(client_up, server_up) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut server = hyper_util::rt::TokioIo::new(server);
        if let Err(e) = tunnel::relay(&mut client, &mut server, idle, &stop).await {
            tracing::debug!(error = ?e, "upgraded tunnel ended");
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, RespBody::empty())
}
