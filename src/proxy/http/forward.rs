//! Forwarding one request: pick a server, admit the request to a slot, send it, and retry
//! on another server what may be retried.
//!
//! Fault attribution happens here (DESIGN.md rule 1): a failure is charged to the server
//! only when the request body is not to blame (the client aborted, stalled or overran it)
//! and the cause is not local (EMFILE, EADDRNOTAVAIL...). The `response_header` timer starts
//! once the request has been sent whole, so a slow upload is never a slow server.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, Uri};
use hyper::body::{Body, Incoming};

use super::check::{prepare, upgrade_of, BodyShape};
use super::respond::respond;
use super::{ConnCtx, HttpRoute, ResponseWait, Target};
use crate::admission::{ClientAddr, ForwardChain};
use crate::backend::{FailureKind, Selection};
use crate::balance::{hash_bytes, PickKey};
use crate::config::{HashKey, UpstreamProtocol};
use crate::health::passive::{self, Outcome};
use crate::pool::{Pool, Server};
use crate::proxy::attempts::Attempts;
use crate::proxy::body::{
    BodyEnd, BodyLimits, BodyState, ClientBody, IdleSince, ReqBody, RespBody,
};
use crate::proxy::h1::Outgoing;
use crate::proxy::headers::{cookie, Forwarding, HeadScan};
use crate::proxy::upstream::{ConnectError, Lease, ServerUpstream, UpBody, UpError};
use crate::proxy::ProxyError;
use crate::queue;
use crate::route::Rewrites;

/// Whether a request may be sent again after it reached a server (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn pick_key(pool: &Pool, parts: &Parts, client: &ClientAddr) -> PickKey {
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
        client_ip: Some(client.ip()),
        key_hash,
        pool_load: pool.inflight.load(std::sync::atomic::Ordering::Relaxed),
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

/// The client's own failure, if its body is why the send failed.
fn client_fault(body: Option<&BodyState>) -> Option<ProxyError> {
    match body?.end() {
        BodyEnd::ClientAbort => Some(ProxyError::ClientAbort),
        BodyEnd::TooLarge => Some(ProxyError::BodyTooLarge),
        BodyEnd::TooSlow => Some(ProxyError::BodyTimeout),
        BodyEnd::Sending | BodyEnd::Done => None,
    }
}

/// Sends the request in `slot` to a server of the route's pool, retrying on others where
/// safe. `request_id` is an X-Request-ID the proxy made for it. `body_slot` learns the
/// request body's state as soon as the body is wrapped.
// Not an `async fn`: see the comment on its block.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
pub(super) fn forward<'a>(
    slot: &'a mut Option<Request<Incoming>>,
    who: &'a (ClientAddr, ForwardChain),
    target: &'a Target,
    rewrites: Option<&'a Rewrites>,
    route: &'a HttpRoute,
    cx: &'a ConnCtx,
    request_id: Option<&'a HeaderValue>,
    body_slot: &'a mut Option<Arc<BodyState>>,
) -> impl std::future::Future<Output = Result<Response<RespBody>, ProxyError>> + 'a {
    // A block rather than an `async fn`, which would copy each argument from the future's
    // start state into its body's own.
    async move {
        let pool = &target.pool;
        let host_rewrite = rewrites.is_some_and(|rw| rw.host_rewrite);
        // The head is taken apart, checked and rewritten in this block, which ends before the
        // first await. A local that is borrowed stays in the future's state for as long as
        // it is in scope, even once moved out: in scope across the awaits, the request and its
        // parts would take 490 bytes more there, written by every request. What the block
        // finds is assigned to locals declared outside it, in place.
        let (key, mut server, mut why, forwarding, state, client_upgrade, replay, mut pending);
        {
            let mut req = slot
                .take()
                .expect("the request is in its slot until it is forwarded");
            // Connection, Upgrade and TE are all hop-by-hop: one scan of the names (which reads
            // what Connection lists) tells whether any of the lookups for them can find
            // something.
            let scan = HeadScan::of(req.headers());
            let upgrade = upgrade_of(&req, &scan, &route.listener.upgrades);
            client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
            let (mut parts, body) = req.into_parts();

            key = pick_key(pool, &parts, &who.0);
            let sticky = pool
                .settings
                .sticky_cookie
                .as_ref()
                .and_then(|name| cookie(&parts.headers, name))
                .and_then(|id| pool.sticky_target(id));
            (server, why) = match sticky {
                Some(s) => (s, Selection::Sticky),
                None => pool.pick(&key).ok_or(ProxyError::NoServer)?,
            };

            forwarding = prepare(
                &mut parts,
                route,
                pool,
                cx,
                who,
                upgrade.as_ref(),
                BodyShape::of(&body),
                scan,
                request_id,
            );
            state = (!body.is_end_stream()).then(|| Arc::new(BodyState::default()));
            let body = match &state {
                Some(st) => {
                    *body_slot = Some(st.clone());
                    let t = &route.listener;
                    ReqBody::Client(Box::new(ClientBody::new(
                        body,
                        BodyLimits {
                            max: t.limits.max_request_body,
                            read_idle: t.timeouts.body_read,
                            min_rate: t.limits.min_body_rate,
                        },
                        st.clone(),
                        cx.client_fd,
                    )))
                }
                None => ReqBody::Empty,
            };
            // Only a request without a body can be sent again after it reached a server, and
            // only if its method is idempotent; its head is kept for that case, unless the
            // pool could never retry it elsewhere (no retries, or no other server). An
            // HTTP/1.1 exchange leaves the head it wrote where it was; an h2 one takes the
            // request whole, so for h2 a copy is made beforehand.
            let may_replay = pool.settings.retries > 0
                && pool.servers.len() > 1
                && idempotent(&parts.method)
                && state.is_none()
                && upgrade.is_none();
            // Boxed: an `Option<Parts>` is 224 bytes, and even `None` is written whole (copied
            // in from a constant), into state a busy core's cache seldom still holds.
            replay = (may_replay && pool.settings.upstream_protocol == UpstreamProtocol::H2)
                .then(|| Box::new(copy_head(&parts)));
            pending = Outgoing::new(Request::from_parts(parts, body), may_replay);
        }

        let mut attempts = Attempts::new(pool.settings.retries);
        pool.budget.note_request();
        loop {
            // A slot on this server (or, if it is full, another one), else a bounded wait: 503.
            // Each wait is a future only when the thing waited for is not there already:
            // built, a future is written into this one's state (a few hundred bytes each).
            let (admitted, load) = match queue::admit_now(pool, server, attempts.tried()) {
                Some(got) => got,
                None => queue::queue(pool, attempts.tried()).await?,
            };
            if admitted.idx != server.idx {
                // The queue moved the request to a server with a free slot.
                why = Selection::Queue;
            }
            server = admitted;
            attempts.record(server.idx);
            server.state.metrics.selected(why);
            let pool_load = pool.enter();
            let up = &target.upstreams[server.idx.get()];

            let checked_out = match up.checkout_idle() {
                Some(lease) => Ok(lease),
                None => up.checkout_waiting().await,
            };
            let failure = match checked_out {
                Err(ConnectError::Local(e)) => {
                    route.metrics.local_error(&e);
                    tracing::debug!(pool = %pool.name(), server = %server.state.name, error = %e, "connect failed for a local reason");
                    return Err(ProxyError::Local);
                }
                Err(e) => {
                    // Refused and timed out both count as connect failures.
                    tracing::debug!(pool = %pool.name(), server = %server.state.name, error = %e, "connect failed");
                    fail(pool, server, FailureKind::Connect);
                    // The request was not consumed: any method may go to another server.
                    ProxyError::Connect
                }
                Ok(lease) => {
                    let req = pending
                        .req
                        .as_mut()
                        .expect("a request is pending at each attempt");
                    if let Some(uri) = uri_for(req.uri(), up, pool.settings.upstream_protocol) {
                        *req.uri_mut() = uri;
                    }
                    if host_rewrite {
                        // The route sends the chosen server's own name as Host.
                        req.headers_mut()
                            .insert(http::header::HOST, target.host_of(server.idx));
                    }
                    match send(
                        lease,
                        &mut pending,
                        &forwarding,
                        up,
                        (route, cx),
                        pool,
                        server,
                        state.as_deref(),
                    )
                    .await
                    {
                        Ok((resp, lease)) => {
                            let outcome = if resp.status().is_server_error() {
                                server.state.metrics.error(FailureKind::Status5xx);
                                Outcome::Failure(FailureKind::Status5xx)
                            } else {
                                Outcome::Success
                            };
                            passive::observe(pool, server, outcome);
                            return Ok(respond(
                                resp,
                                lease,
                                (load, pool_load),
                                server,
                                why,
                                (route, target),
                                cx,
                                client_upgrade,
                                state,
                            ));
                        }
                        Err(f) => {
                            if let Some(e) = client_fault(state.as_deref()) {
                                return Err(e);
                            }
                            if matches!(f.error, ProxyError::Local | ProxyError::Drained) {
                                return Err(f.error);
                            }
                            fail(pool, server, f.kind);
                            // A request never written is safe to send anywhere; one that
                            // reached a server only if its head was kept for that.
                            if !pending.unsent() {
                                if f.error == ProxyError::Timeout {
                                    return Err(ProxyError::Timeout);
                                }
                                if !pending.rewind() {
                                    let Some(head) = &replay else {
                                        return Err(f.error);
                                    };
                                    pending = Outgoing::new(
                                        Request::from_parts(copy_head(head), ReqBody::Empty),
                                        false,
                                    );
                                }
                            }
                            f.error
                        }
                    }
                }
            };
            drop(load);
            match attempts.may_retry(pool) {
                Ok(()) => {}
                Err(budget) => {
                    if budget {
                        target.budget_exhausted.inc();
                    }
                    return Err(failure);
                }
            }
            match pool.pick_other(&key, attempts.tried()) {
                Some(next) => {
                    target.retries.inc();
                    server = next;
                    why = Selection::Retry;
                }
                None => return Err(failure),
            }
        }
    }
}

/// A server's failure: counted in its series and seen by passive detection.
fn fail(pool: &Arc<crate::pool::Pool>, server: &Server, kind: FailureKind) {
    server.state.metrics.error(kind);
    passive::observe(pool, server, Outcome::Failure(kind));
}

/// A failed send: its metric kind, and the error to report if no retry succeeds. The
/// request is still pending if it was never written.
struct SendFailure {
    kind: FailureKind,
    error: ProxyError,
}

impl SendFailure {
    fn new(kind: FailureKind, error: ProxyError) -> Self {
        SendFailure { kind, error }
    }
}

/// What a failed exchange says about the server.
fn classify(e: &UpError) -> (FailureKind, ProxyError) {
    if e.is_protocol() {
        (FailureKind::Protocol, ProxyError::Protocol)
    } else {
        (FailureKind::Reset, ProxyError::Reset)
    }
}

/// A server's body at most this long (by Content-Length) that has not come with its head is
/// awaited (for `SHORT_WAIT` at most) before the response is handed on. Many servers write a
/// response's head and body apart; passing the head on alone costs a write to the client for
/// each (a system call), a second flush in hyper and an idle timer for the body: 1.1k
/// instructions per request. The client gets the head a moment later, with the body
/// (microseconds from a server that wrote them back to back).
const SHORT_BODY: u64 = 16 * 1024;

/// How long a short body is awaited with its head. A server that writes them back to back
/// is far inside it; so is one that must take a lock between the two writes: behind a
/// threaded Python server (`http.server`, ten clients on loopback) 2 ms let 2-9 % of
/// heads go on alone, 20 ms none. A server that pauses longer (or waits on its client)
/// gets its head handed on after this, and the body streams as any other would.
const SHORT_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads the rest of `b`'s short body, waiting `SHORT_WAIT` (or `upstream_read_idle`, when
/// shorter) at most, on `timer` (the request's response timer, restarted). When nothing at
/// all came in that time, returns when the wait began, for the body's idle watch to count
/// from: a stalled server is cut off one `upstream_read_idle` after its last byte, as it
/// would be mid-stream.
async fn read_short_rest(
    b: &mut crate::proxy::h1::RespIn,
    idle: std::time::Duration,
    timer: &mut ResponseWait,
) -> Option<tokio::time::Instant> {
    let had = b.buffered();
    let wait = idle.min(SHORT_WAIT);
    timer.restart(wait);
    // The wait began when the timer was set, `wait` before its deadline: one clock read.
    let since = timer.deadline - wait;
    let whole = tokio::select! {
        biased;
        () = std::future::poll_fn(|c| b.poll_short_rest(c)) => true,
        () = &mut *timer => false,
    };
    (!whole && b.buffered() == had).then_some(since)
}

/// Sends the request in `req` on `lease`; a pooled connection that fails before the request
/// was written is replaced once by a fresh one. The request stays in `req` until a byte of
/// it is written (and its head after that, when it may be retried). The `response_header`
/// timer starts when the request has been sent whole; the head's latency is recorded for
/// the server.
#[allow(clippy::too_many_arguments)]
async fn send(
    mut lease: Lease,
    req: &mut Outgoing,
    forwarding: &Forwarding<'_>,
    up: &Arc<ServerUpstream>,
    (route, cx): (&HttpRoute, &ConnCtx),
    pool: &Pool,
    server: &Server,
    body: Option<&BodyState>,
) -> Result<(Response<UpBody>, Lease), SendFailure> {
    let timeout = pool.settings.timeouts.response_header;
    let epoch = server.state.sever_epoch();
    for _ in 0..2 {
        let started = crate::backend::poll_ns();
        let mut timer = cx.response_timer.take(timeout);
        let in_exchange = lease.sends_body_in_exchange();
        let sent_then_timeout = async {
            // The wait for the head starts once the request has gone out whole (at once for
            // a body that came with its head: it has ended by the first poll of this).
            if let Some(b) = body.filter(|b| b.end() == BodyEnd::Sending) {
                if in_exchange {
                    // The body ends only inside a poll of the exchange, which comes right
                    // before each poll of this: a look at its state is enough, no wake-up
                    // (enlisting on the body's `Notify` costs about 450 instructions).
                    std::future::poll_fn(|_| match b.end() {
                        BodyEnd::Sending => Poll::Pending,
                        _ => Poll::Ready(()),
                    })
                    .await;
                } else {
                    b.ended().await;
                }
                timer.restart(timeout);
            }
            (&mut timer).await;
        };
        // Two pinned futures polled in turn rather than a `select!`, which builds the pair
        // aside and copies it in whole (over 400 bytes, mostly space for states not yet
        // entered) into state a busy core's cache seldom still holds.
        let mut r = {
            let mut exchange = std::pin::pin!(lease.send(req, forwarding));
            let mut deadline = std::pin::pin!(sent_then_timeout);
            std::future::poll_fn(|c| {
                if let Poll::Ready(r) = exchange.as_mut().poll(c) {
                    return Poll::Ready(Some(r));
                }
                deadline.as_mut().poll(c).map(|()| None)
            })
            .await
        };
        if let Some(Ok(resp)) = &mut r {
            server
                .state
                .metrics
                .response
                .observe(crate::backend::poll_since(started).as_secs_f64());
            if let UpBody::H1(b) = resp.body_mut() {
                if b.short_rest_pending(SHORT_BODY) {
                    let idle = pool.settings.timeouts.upstream_read_idle;
                    if let Some(since) = read_short_rest(b, idle, &mut timer).await {
                        resp.extensions_mut().insert(IdleSince(since));
                    }
                }
            }
        }
        cx.response_timer.give_back(timer);
        let Some(r) = r else {
            return Err(SendFailure::new(FailureKind::Timeout, ProxyError::Timeout));
        };
        match r {
            Ok(resp) => return Ok((resp, lease)),
            Err(_) if req.unsent() && lease.reused() => {
                lease = match up.connect().await {
                    Ok(l) => l,
                    Err(ConnectError::Local(err)) => {
                        route.metrics.local_error(&err);
                        return Err(SendFailure::new(FailureKind::Connect, ProxyError::Local));
                    }
                    Err(_) => {
                        return Err(SendFailure::new(FailureKind::Connect, ProxyError::Connect));
                    }
                };
            }
            Err(_) if server.state.sever_epoch() != epoch => {
                // An operator's drain deadline closed the connection: not the server's
                // failure.
                return Err(SendFailure::new(FailureKind::Reset, ProxyError::Drained));
            }
            Err(e) => {
                let (kind, error) = classify(&e);
                tracing::debug!(pool = %pool.name(), server = %server.state.name, error = %e, "request to server failed");
                return Err(SendFailure::new(kind, error));
            }
        }
    }
    Err(SendFailure::new(FailureKind::Reset, ProxyError::Reset))
}
