//! L7: serving clients with hyper (HTTP/1.1 and h2) and forwarding each request to a server
//! of the listener's pool.
//!
//! A request goes through a few named steps: [`check`] refuses what cannot be proxied and
//! settles its authority; [`forward`] picks a server, admits the request to a slot, rewrites
//! its head, sends it and retries what may be retried; [`respond`] repairs the server's
//! response and hands the body back with the guards that must live as long as it. Every
//! failure maps to one status and one counter in [`ProxyError`], blamed on the right side.

mod check;
mod forward;
mod respond;
mod routing;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioTimer;
use prometheus::IntCounter;

use super::body::{BodyEnd, BodyState, RespBody, ResponseEnd};
use super::upstream::ServerUpstream;
use super::{Blame, ProxyError};
use crate::access_log::{AccessLog, HttpLine, RequestHead};
use crate::admission::{Admission, ClientAddr, ForwardChain, Refused};
use crate::config::ListenerSettings;
use crate::listener::watch::ConnWatch;
use crate::metrics::RouteMetrics;
use crate::metrics::{AbortPhase, ListenerMetrics, Metrics, TlsListenerMetrics};
use crate::pool::Pool;
use crate::route::{Compiled, DroppedOverride, RequestId, RouteTable, SplitRegistry, X_REQUEST_ID};
use crate::tls::ServerTls;

/// How often hyper pings an idle h2 client, to find dead peers (not activity: idle time
/// is counted by requests in flight).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

/// A pool a listener's routes send requests to, with what the request path needs of it.
pub struct Target {
    /// The pool (the generation current when the route was built).
    pub pool: Arc<Pool>,
    /// Connections to each server of the pool, indexed like `pool.servers`.
    pub upstreams: Arc<[Arc<ServerUpstream>]>,
    retries: IntCounter,
    budget_exhausted: IntCounter,
    sticky_set_cookie: Option<Vec<HeaderValue>>,
    /// Each server's name as a Host value, for routes with `host_rewrite`.
    hosts: Box<[HeaderValue]>,
}

impl Target {
    /// The target for `pool` and its connections.
    pub fn new(pool: Arc<Pool>, upstreams: Arc<[Arc<ServerUpstream>]>, metrics: &Metrics) -> Self {
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
        let hosts = pool
            .servers
            .iter()
            .map(|s| {
                crate::route::host_value(&s.settings.name)
                    .unwrap_or_else(|| HeaderValue::from_static("localhost"))
            })
            .collect();
        Target {
            hosts,
            retries: metrics.retries.with_label_values(&[pool.name()]),
            budget_exhausted: metrics
                .retries_budget_exhausted
                .with_label_values(&[pool.name()]),
            sticky_set_cookie,
            pool,
            upstreams,
        }
    }
}

impl Target {
    /// The Host a `host_rewrite` route sends to server `idx`.
    pub fn host_of(&self, idx: crate::balance::BackendIdx) -> HeaderValue {
        self.hosts[idx.get()].clone()
    }
}

/// Everything a request on one listener needs, swapped whole on reload.
pub struct HttpRoute {
    /// The listener's settings.
    pub listener: ListenerSettings,
    /// Its routes, compiled for this generation.
    pub table: RouteTable,
    /// The pools the table names, indexed by `PoolId`.
    pub targets: Box<[Target]>,
    /// Requests per route.
    pub routes: RouteMetrics,
    /// Listener metrics.
    pub metrics: ListenerMetrics,
    /// Server-side errors, indexed by `ProxyError::server_index`.
    errors: [IntCounter; ProxyError::SERVER_SIDE.len()],
    /// Where request lines go, when the access log is on.
    pub access_log: Option<Arc<AccessLog>>,
    /// HTTP/1.1 serving settings (limits from `[listener.limits]`), with hyper looking for a
    /// client that leaves while a request is in flight (a read of the socket then).
    pub h1: http1::Builder,
    /// The same without that read (`half_close`), for connections whose watchdog looks
    /// instead (`listener::watch::CloseWatch`): the connection picks by whether it has one.
    pub h1_watched: http1::Builder,
    /// h2 serving settings.
    pub h2: http2::Builder<StreamExec>,
    /// TLS termination, when the listener has `[listener.tls]`, and its handshake counters.
    pub tls: Option<(Arc<ServerTls>, TlsListenerMetrics)>,
    /// Who the client is, who may come in, and how often.
    pub admission: Arc<Admission>,
}

impl HttpRoute {
    /// Builds the route of `listener`: its route table (split states and overrides from
    /// `splits`) over the pools `pool_of` finds by name. Returns the split overrides the
    /// rebuild dropped (to log). Call only where a reload can no longer fail: it updates
    /// `splits`.
    pub fn new(
        listener: ListenerSettings,
        pool_of: &dyn Fn(&str) -> Option<Target>,
        splits: &SplitRegistry,
        metrics: &Metrics,
    ) -> (Self, Vec<DroppedOverride>) {
        let name = &*listener.name;
        let Compiled { table, dropped } =
            RouteTable::compile_shared(name, &listener.routes, listener.pool.as_ref(), splits);
        let targets = table
            .pools()
            .iter()
            .map(|p| {
                pool_of(p).expect("validation checked that every pool a listener names exists")
            })
            .collect();
        let route = HttpRoute {
            errors: ProxyError::SERVER_SIDE
                .map(|e| metrics.proxy_errors.with_label_values(&[name, e.as_str()])),
            metrics: ListenerMetrics::new(metrics, name),
            routes: RouteMetrics::new(metrics, name, &table),
            h1: h1_builder(&listener),
            h1_watched: {
                let mut b = h1_builder(&listener);
                b.half_close(true);
                b
            },
            h2: h2_builder(&listener),
            admission: Arc::new(Admission::new(&listener, metrics, None)),
            table,
            targets,
            listener,
            access_log: None,
            tls: None,
        };
        (route, dropped)
    }

    /// Uses `admission` (a reload passes the listener's previous one on, so rate-limit
    /// buckets survive).
    pub fn with_admission(mut self, admission: Arc<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// Terminates TLS with `tls` (`None`: plain HTTP).
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>, metrics: &Metrics) -> Self {
        self.tls = tls.map(|t| (t, TlsListenerMetrics::new(metrics, &self.listener.name)));
        self
    }

    /// The header that carries a verified client certificate upstream, if the listener
    /// names one (`[listener.tls.client_auth] forward_header`).
    pub fn client_cert_header(&self) -> Option<&http::HeaderName> {
        self.tls.as_ref().and_then(|(t, _)| t.forward_header())
    }

    /// Turns request logging on (`Some`) or off.
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = log;
        self
    }

    /// Counts a failure once, under the series of the side that caused it.
    fn count(&self, e: ProxyError) {
        match e.blame() {
            Blame::Server | Blame::Local => {
                if let Some(i) = e.server_index() {
                    self.errors[i].inc();
                }
            }
            Blame::Client => match (e, e.rejection()) {
                // Counted by admission, or by the route metrics as (none).
                (ProxyError::Forbidden | ProxyError::RateLimited(_) | ProxyError::NoRoute, _) => {}
                (_, Some(r)) => self.metrics.rejected(r),
                (_, None) => self.metrics.aborted(AbortPhase::RequestBody),
            },
        }
    }
}

fn h1_builder(l: &ListenerSettings) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .keep_alive(true)
        // Head timing is the connection watchdog's (listener::watch): hyper's own timer
        // would also run while a keep-alive connection waits for its next request.
        .header_read_timeout(None)
        .max_header_size(l.limits.max_header_bytes)
        .max_buf_size(l.limits.max_header_bytes.max(64 * 1024));
    if l.limits.max_headers != 100 {
        // hyper's default is 100 on the stack; another value costs a heap allocation per
        // request, so set it only when asked.
        b.max_headers(l.limits.max_headers);
    }
    b
}

/// Spawns the task of each stream of an h2 client connection on the current runtime, each
/// poll of it with one reading of the fine clock, as an HTTP/1 connection's task has
/// (see `backend::poll_ns`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExec;

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(crate::backend::PerPoll::new(fut));
    }
}

fn h2_builder(l: &ListenerSettings) -> http2::Builder<StreamExec> {
    let lim = &l.limits;
    let mut b = http2::Builder::new(StreamExec);
    b.timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .max_concurrent_streams(lim.h2_max_concurrent_streams)
        .initial_stream_window_size(lim.h2_window)
        .initial_connection_window_size(lim.h2_window)
        .max_header_list_size(lim.max_header_bytes as u32)
        // Rapid reset (CVE-2023-44487): streams a client opens and resets before they are
        // served count against this; past it the connection is closed with GOAWAY.
        .max_pending_accept_reset_streams(Some(50))
        // Streams this side had to reset for the client's errors, at most, per connection.
        .max_local_error_reset_streams(Some(256));
    b
}

/// The scheme clients used to reach a listener (for X-Forwarded-Proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Per-connection context.
pub struct ConnCtx {
    /// The listener's current route.
    pub route: Arc<ArcSwap<HttpRoute>>,
    /// The client as the connection tells it (its peer, or a trusted PROXY header's source);
    /// each request may refine it from trusted forwarding headers.
    pub client: ClientAddr,
    /// `client`'s rate-limit key, hashed at the connection's first limited request.
    pub client_key: std::sync::OnceLock<u64>,
    /// The connection's sender, and the scheme it used to reach us, as forwarding headers
    /// name them (formatted once).
    pub sender: crate::proxy::headers::Sender,
    /// Whether the connection speaks h2.
    pub h2: bool,
    /// The listener's signals: its tracker (an upgraded tunnel is a task of its own, which
    /// stopping waits for) and its hard stop, which ends such a tunnel after the grace
    /// period.
    pub(crate) ctl: crate::listener::Control,
    /// Set when the listener drains (reload or shutdown): HTTP/1 responses then carry
    /// `Connection: close`, so the client moves on instead of meeting a closed connection.
    pub draining: AtomicBool,
    /// Requests in flight and the connection's deadlines.
    pub watch: Arc<ConnWatch>,
    /// The client certificate verified during the TLS handshake (subject and SANs), as the
    /// value of the listener's `forward_header`.
    pub client_cert: Option<HeaderValue>,
    /// The `response_header` timer, kept between the connection's requests.
    pub response_timer: ResponseTimer,
    /// The client's TCP socket, to acknowledge a request body's first piece at once when
    /// the rest must be waited for ([`crate::proxy::quick_ack`]). HTTP/1 only: there the
    /// request's future lives and dies in the task that owns the socket, so the descriptor
    /// is open whenever the body is polled (an h2 stream's task may outlive its connection).
    pub client_fd: Option<std::os::fd::RawFd>,
}

/// A timer a connection reuses for the `response_header` wait of each of its requests.
///
/// A new timer per request is armed in the runtime's timer wheel on its first poll and
/// taken out again when dropped, each under the wheel's lock: a few hundred instructions
/// per request. A kept timer is not even moved for each request: it stays at an earlier
/// request's deadline, and only if it fires before the current request's own deadline is it
/// moved there (see [`ResponseWait`]); a busy connection's timer moves about once per
/// `response_header` period instead of once per request. Requests take the timer and give
/// it back, so concurrent h2 streams each get one, and only one is kept.
#[derive(Default)]
pub struct ResponseTimer(std::sync::Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

impl ResponseTimer {
    /// A wait that ends `after` from now.
    pub fn take(&self, after: std::time::Duration) -> ResponseWait {
        // The connection task's poll's time (see `backend::poll_ns`), read when the request
        // began or was sent, in this same poll.
        let deadline = crate::backend::poll_instant() + after;
        let kept = self.slot().take();
        let mut w = ResponseWait {
            sleep: kept.unwrap_or_else(|| Box::pin(tokio::time::sleep_until(deadline))),
            deadline,
        };
        // A kept timer is at an earlier request's deadline, or later only after a reload
        // shortened `response_header`.
        w.end_at(deadline);
        w
    }

    /// Keeps `w`'s timer for the next request.
    pub fn give_back(&self, w: ResponseWait) {
        *self.slot() = Some(w.sleep);
    }

    /// Drops the kept timer (a connection that parks keeps nothing it does not need).
    pub fn clear(&self) {
        self.slot().take();
    }

    /// The kept timer's slot. The lock is never contended: an HTTP/1 connection has one
    /// request at a time, and an h2 connection's streams run on its one worker thread.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Pin<Box<tokio::time::Sleep>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request's `response_header` wait: a timer set no later than the request's deadline,
/// and the deadline. A timer that fires before the deadline is moved to it and waited on
/// again, so the wait ends at the deadline, never before.
pub struct ResponseWait {
    sleep: Pin<Box<tokio::time::Sleep>>,
    deadline: tokio::time::Instant,
}

impl ResponseWait {
    /// Starts the wait over: it ends `after` from now.
    pub fn restart(&mut self, after: std::time::Duration) {
        self.end_at(crate::backend::poll_instant() + after);
    }

    /// Makes `deadline` the wait's end: the timer is moved only if it is set later (one set
    /// sooner is moved on when it fires).
    fn end_at(&mut self, deadline: tokio::time::Instant) {
        self.deadline = deadline;
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
    }
}

impl Future for ResponseWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            if self.sleep.deadline() >= self.deadline {
                return Poll::Ready(());
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }
}

impl ResponseEnd for ConnCtx {
    fn response_ended(&self, client_left: bool) {
        self.watch.request_ended();
        if client_left {
            self.route.load().metrics.aborted(AbortPhase::Response);
        }
    }
}

/// A request being served: if hyper drops it before a response is handed over, the client
/// went away (or the connection was cut), and the request is over.
struct Serving {
    cx: Option<Arc<ConnCtx>>,
    /// The request body, once forwarding has wrapped it: tells in which phase a client
    /// that goes away left.
    body: Option<Arc<BodyState>>,
}

impl Serving {
    fn begin(cx: Arc<ConnCtx>) -> Self {
        cx.watch.request_started();
        Serving {
            cx: Some(cx),
            body: None,
        }
    }

    /// The response exists: from now on its body tells when the request is over.
    fn hand_over(mut self, resp: &mut Response<RespBody>) {
        if let Some(cx) = self.cx.take() {
            resp.body_mut().on_end(cx);
        }
    }

    /// The request is over, and its abort already counted.
    fn end_counted(mut self) {
        if let Some(cx) = self.cx.take() {
            cx.watch.request_ended();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(cx) = self.cx.take() {
            let uploading = self
                .body
                .as_ref()
                .is_some_and(|b| b.end() == BodyEnd::Sending);
            if uploading {
                cx.watch.request_ended();
                cx.route.load().metrics.aborted(AbortPhase::RequestBody);
            } else {
                cx.response_ended(true);
            }
        }
    }
}

/// hyper's entry point: one request in, one response out, never an error.
// Not an `async fn`: see the comment on its block.
#[allow(clippy::manual_async_fn)]
pub fn serve(
    req: Request<Incoming>,
    cx: Arc<ConnCtx>,
) -> impl Future<Output = Result<Response<RespBody>, Infallible>> {
    // The request stays in this slot until forwarding takes it, so that the forwarding
    // future holds a pointer to it rather than a second copy (264 bytes, written and read
    // again by every request, in memory of the connection's own that a busy core's cache
    // holds for few of many connections).
    let mut slot = Some(req);
    // A block rather than an `async fn`, which would copy the request from the future's
    // start state into its body's own.
    async move {
        let Some(req) = slot.as_mut() else {
            unreachable!("the request is in its slot until forwarding takes it")
        };
        let mut serving = Serving::begin(cx.clone());
        let route = cx.route.load_full();
        // Read once per poll of the connection's task (see `backend::poll_ns`): the
        // forwarding below reads the same time when it sends at once.
        let started = crate::backend::poll_ns();
        let admitted = route
            .admission
            .request(&cx.client, &cx.client_key, req.headers(), started);
        let client = match &admitted {
            Ok((c, _)) => *c,
            Err(_) => cx.client,
        };
        let request_id = request_id(req, &route, &cx);
        let head = route.access_log.as_ref().map(|_| RequestHead::capture(req));
        let mut label = "(none)";
        let mut pool = None;
        // Admit, check and route in place; only forwarding is a future of its own (one layer
        // fewer than a future for all of it: each layer moves the request in and the response
        // out, a few hundred bytes each time).
        let result = match decide(req, &admitted, &route, &mut label) {
            Err(e) => Err(e),
            Ok((routing::Routed::Answer(r), _)) => Ok(*r),
            Ok((routing::Routed::Forward(target, rewrites), who)) => {
                pool = Some(&target.pool.settings.name);
                let made = request_id.as_ref().filter(|id| id.made).map(|id| &id.value);
                let mut r = forward::forward(
                    &mut slot,
                    who,
                    target,
                    rewrites,
                    &route,
                    &cx,
                    made,
                    &mut serving.body,
                )
                .await;
                if let (Ok(resp), Some(rw)) = (&mut r, rewrites) {
                    rw.edit_response(resp.headers_mut());
                }
                r
            }
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(ProxyError::ClientAbort) => {
                // Counted once, here; nobody is left to read an answer.
                route.count(ProxyError::ClientAbort);
                serving.end_counted();
                return Ok(ProxyError::ClientAbort.response());
            }
            Err(e) => {
                route.count(e);
                tracing::debug!(listener = %route.listener.name, client = %client.addr, error = %e, "request failed");
                routing::error_page(&route, e).unwrap_or_else(|| e.response())
            }
        };
        if !cx.h2
            && cx.draining.load(Ordering::Relaxed)
            && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(id) = &request_id {
            // Never indexed by HPACK: each id is unique, so adding it to an h2 connection's
            // header table would only evict entries that repeat. (HTTP/1 ignores the flag.)
            let mut v = id.value.clone();
            v.set_sensitive(true);
            resp.headers_mut().insert(X_REQUEST_ID, v);
        }
        route.metrics.count_status(resp.status().as_u16());
        let took = crate::backend::poll_since(started);
        route.metrics.duration.observe(took.as_secs_f64());
        // Matched apart: a tuple of the two would copy `head` (200 bytes) with the log off too.
        if let Some(log) = &route.access_log {
            if let Some(head) = &head {
                let server = resp.body().finish().map(|f| &*f.load.state().name);
                let line = HttpLine {
                    listener: &route.listener.name,
                    client: client.addr,
                    head,
                    pool: pool.map(|p| &**p),
                    route: label,
                    server,
                    request_id: request_id.as_ref().map(|id| id.value.as_bytes()),
                    duration: took,
                };
                log.response(&line, &resp);
            }
        }
        serving.hand_over(&mut resp);
        Ok(resp)
    }
}

/// A request's `X-Request-ID`.
struct ReqId {
    value: HeaderValue,
    /// Made by the proxy: it goes to the server in place of any the request carries.
    made: bool,
}

/// The request's `X-Request-ID`: the one it carries when its sender is a trusted proxy,
/// else a new one; `None` when the listener does not use them. A new one is added to the
/// request as its head is written for the server (`forward`), with the forwarding headers.
fn request_id(req: &Request<Incoming>, route: &HttpRoute, cx: &ConnCtx) -> Option<ReqId> {
    if !route.listener.request_id {
        return None;
    }
    let trusted = route
        .admission
        .settings()
        .trusted_proxies
        .matches(cx.client.sender().ip());
    // Looked up only when it may be kept.
    let kept = trusted
        .then(|| req.headers().get(&X_REQUEST_ID))
        .flatten()
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned();
    Some(match kept {
        Some(value) => ReqId { value, made: false },
        None => ReqId {
            value: RequestId::next().to_header_value(),
            made: true,
        },
    })
}

/// The request path before forwarding: admit, check, route; with the route, who the
/// request is from. `label` learns the route.
fn decide<'r, 'a>(
    req: &mut Request<Incoming>,
    admitted: &'a Result<(ClientAddr, ForwardChain), Refused>,
    route: &'r HttpRoute,
    label: &mut &'r str,
) -> Result<(routing::Routed<'r>, &'a (ClientAddr, ForwardChain)), ProxyError> {
    let who = match admitted {
        Ok(who) => who,
        // Counted by admission already.
        Err(Refused::RateLimited(r)) => return Err(ProxyError::RateLimited(r.secs())),
        Err(_) => return Err(ProxyError::Forbidden),
    };
    check::check(req, &route.listener.limits)?;
    Ok((routing::route(req, who.0.ip(), route, label)?, who))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// How long `w` takes to end, in the runtime's (paused, so exact) time.
    async fn wait(w: &mut ResponseWait) -> Duration {
        let begin = Instant::now();
        w.await;
        Instant::now() - begin
    }

    fn near(got: Duration, want: Duration) -> bool {
        // The timer wheel counts whole milliseconds.
        got >= want && got <= want + Duration::from_millis(2)
    }

    /// One request's whole wait on `timer`: how long it took, the timer given back after.
    async fn whole_wait(timer: &ResponseTimer, after: Duration) -> Duration {
        let mut w = timer.take(after);
        let took = wait(&mut w).await;
        timer.give_back(w);
        took
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_response_timer_ends_each_wait_at_its_own_deadline() {
        let timer = ResponseTimer::default();
        let ten = Duration::from_secs(10);
        // A fresh timer.
        let took = whole_wait(&timer, ten).await;
        assert!(near(took, ten), "{took:?}");
        // The kept timer has fired: the next wait is a whole one all the same.
        let took = whole_wait(&timer, ten).await;
        assert!(near(took, ten), "after a fired one: {took:?}");
        // A request answered at once leaves the timer at its deadline. Four seconds later
        // the next request's deadline is ten seconds off, not six.
        let w = timer.take(ten);
        timer.give_back(w);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let took = whole_wait(&timer, ten).await;
        assert!(near(took, ten), "kept timer fired early: {took:?}");
        // A shorter timeout (a reload) is kept to.
        let w = timer.take(ten);
        timer.give_back(w);
        let took = whole_wait(&timer, Duration::from_secs(1)).await;
        assert!(near(took, Duration::from_secs(1)), "shorter: {took:?}");
        // A restart moves the end later, or earlier.
        let mut w = timer.take(ten);
        tokio::time::sleep(Duration::from_secs(3)).await;
        w.restart(ten);
        let took = wait(&mut w).await;
        assert!(near(took, ten), "restarted later: {took:?}");
        let mut w = timer.take(ten);
        w.restart(Duration::from_secs(2));
        let took = wait(&mut w).await;
        assert!(
            near(took, Duration::from_secs(2)),
            "restarted sooner: {took:?}"
        );
    }
}
