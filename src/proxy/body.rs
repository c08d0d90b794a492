//! Body types of the L7 proxy: no boxing, no buffering, every one bounded in size and time.
//!
//! [`ReqBody`] is what goes upstream: the client's streaming body ([`ClientBody`], which
//! enforces `max_request_body`, `body_read` and `min_body_rate` and tells the request path
//! how the body ended), or nothing. [`RespBody`] is what goes to the client: the server's
//! streaming body, carrying the guards that must live exactly as long as the response
//! (in-flight counts, the upstream connection to give back to the pool, the client
//! connection's request count), or a short text the proxy wrote itself.
//!
//! Timers here are armed lazily: only when a body actually waits on the network (a poll
//! returns `Pending`), so a small body that arrives with its head costs no timer at all.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::h1::Upload;
use super::upstream::{Lease, UpBody, UpError};
use crate::backend::{FailureKind, LoadGuard};
use crate::health::passive::{self, Outcome};
use crate::pool::PoolLoad;

/// How a client's request body ended, as far as it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BodyEnd {
    /// Still being sent.
    Sending = 0,
    /// Sent whole.
    Done = 1,
    /// The client aborted it (reset, closed, malformed chunking).
    ClientAbort = 2,
    /// Over `max_request_body`.
    TooLarge = 3,
    /// Stalled for `body_read`, or slower than `min_body_rate`.
    TooSlow = 4,
}

impl BodyEnd {
    fn from_u8(v: u8) -> BodyEnd {
        match v {
            1 => BodyEnd::Done,
            2 => BodyEnd::ClientAbort,
            3 => BodyEnd::TooLarge,
            4 => BodyEnd::TooSlow,
            _ => BodyEnd::Sending,
        }
    }
}

/// Shared between a [`ClientBody`] (polled by the upstream connection's task) and the
/// request path: how the body ended, and a wake-up when it has been sent whole (the
/// `response_header` timer starts only then).
#[derive(Default)]
pub struct BodyState {
    end: AtomicU8,
    sent: Notify,
}

impl BodyState {
    /// How the body ended so far.
    pub fn end(&self) -> BodyEnd {
        BodyEnd::from_u8(self.end.load(Ordering::Acquire))
    }

    fn finish(&self, how: BodyEnd) {
        // The first ending wins: a body cut for size is not later "done".
        if self
            .end
            .compare_exchange(
                BodyEnd::Sending as u8,
                how as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.sent.notify_waiters();
        }
    }

    /// Resolves once the body has ended, however.
    pub async fn ended(&self) {
        loop {
            let notified = self.sent.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.end() != BodyEnd::Sending {
                return;
            }
            notified.await;
        }
    }
}

/// Bounds on a client's request body.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Bytes, at most.
    pub max: u64,
    /// Longest stretch without a byte.
    pub read_idle: Duration,
    /// Slowest average rate, bytes per second (0: no check).
    pub min_rate: u64,
}

/// Why a request body was cut off by the proxy (the error the upstream connection sees).
#[derive(Debug)]
pub enum ReqBodyError {
    /// The client's side failed.
    Client(hyper::Error),
    /// Over `max_request_body`.
    TooLarge,
    /// Stalled or too slow.
    TooSlow,
}

impl fmt::Display for ReqBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReqBodyError::Client(e) => write!(f, "client request body failed: {e}"),
            ReqBodyError::TooLarge => f.write_str("request body over max_request_body"),
            ReqBodyError::TooSlow => f.write_str("request body stalled or too slow"),
        }
    }
}

impl StdError for ReqBodyError {}

/// A lazily armed timer for a body that has had to wait: expires once no byte has come for
/// `idle`, or (with a minimum rate) once the average rate since the start falls below it.
/// Progress only records the time; the timer is reset only when it fires, so a steady
/// stream costs one clock read per frame and no timer operations.
struct IdleWatch {
    sleep: Pin<Box<Sleep>>,
    started: Instant,
    last: Instant,
}

impl IdleWatch {
    fn new(idle: Duration) -> Self {
        Self::since(Instant::now(), idle)
    }

    /// A watch whose last progress was at `last`.
    fn since(last: Instant, idle: Duration) -> Self {
        IdleWatch {
            sleep: Box::pin(tokio::time::sleep_until(last + idle)),
            started: last,
            last,
        }
    }

    fn progress(&mut self) {
        self.last = Instant::now();
    }

    /// `Ready` when expired. `rate` is (bytes so far, minimum bytes per second).
    fn poll_expired(&mut self, cx: &mut Context<'_>, idle: Duration, rate: (u64, u64)) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
            if now.duration_since(self.last) >= idle {
                return Poll::Ready(());
            }
            let (bytes, min_rate) = rate;
            let elapsed = now.duration_since(self.started);
            if min_rate > 0
                && elapsed >= idle
                && (bytes as f64) < min_rate as f64 * elapsed.as_secs_f64()
            {
                return Poll::Ready(());
            }
            // Progress since the timer was set: look again one idle period after the last
            // byte (later than now, or the stall check above would have returned).
            self.sleep.as_mut().reset(self.last + idle);
        }
    }
}

/// One item of a request body as `poll_frame` hands it out.
type BodyItem = Result<Frame<Bytes>, ReqBodyError>;

/// A client's request body on its way upstream, bounded in size and time.
pub struct ClientBody {
    inner: Incoming,
    state: Arc<BodyState>,
    limits: BodyLimits,
    received: u64,
    /// Armed the first time the body has to wait for the client.
    watch: Option<IdleWatch>,
    /// The client's socket, acknowledged at once the first time the body has to wait: a
    /// client that wrote the head and the body apart with Nagle's algorithm on is holding
    /// the body back until its head is acknowledged ([`crate::proxy::quick_ack`]).
    ack: Option<std::os::fd::RawFd>,
    /// The next frame, read ahead ([`ReqBody::poll_peek`]) and not yet taken: the next
    /// `poll_frame` returns it. Counted and checked against the limits when it was read.
    ahead: Option<BodyItem>,
    /// Frames read ahead after `ahead`, in order (a chunked body's next chunks, an h2
    /// stream's next DATA frames); empty, with nothing allocated, for a body that came in
    /// one frame (`None`). Empty whenever `ahead` is.
    more: Option<Vec<BodyItem>>,
    /// `inner` was seen to end after the frames read ahead.
    ended: bool,
}

/// A look at a request body's next frame that leaves it in the body ([`ReqBody::poll_peek`]).
pub enum Peek {
    /// Data: a handle to its bytes.
    Data(Bytes),
    /// The body ends before it.
    End,
    /// Trailers or an error: `poll_frame` returns it when its turn comes.
    Other,
}

impl ClientBody {
    /// Wraps `inner`; `state` learns how it ends; `ack` is the client's socket (HTTP/1).
    pub fn new(
        inner: Incoming,
        limits: BodyLimits,
        state: Arc<BodyState>,
        ack: Option<std::os::fd::RawFd>,
    ) -> Self {
        ClientBody {
            inner,
            state,
            limits,
            received: 0,
            watch: None,
            ack,
            ahead: None,
            more: None,
            ended: false,
        }
    }

    /// The next frame from the client, counted and checked against the limits. `arm`: on
    /// `Pending` the body is waiting on the client, so its idle watch is armed (and the
    /// client's socket acknowledged, the first time); without it, a `Pending` costs nothing
    /// (the caller looks again soon: the frame may be in hyper's buffer already).
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        arm: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        if let Some(frame) = self.ahead.take() {
            self.ahead = self.next_kept();
            return Poll::Ready(Some(frame));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        self.poll_inner(cx, arm)
    }

    /// The next frame from `inner` (past any kept), counted and checked; `arm` as in
    /// [`poll_next`](Self::poll_next).
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
        arm: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.received += d.len() as u64;
                    if self.received > self.limits.max {
                        self.state.finish(BodyEnd::TooLarge);
                        return Poll::Ready(Some(Err(ReqBodyError::TooLarge)));
                    }
                    if let Some(w) = &mut self.watch {
                        w.progress();
                    }
                }
                if self.inner.is_end_stream() {
                    self.state.finish(BodyEnd::Done);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.state.finish(BodyEnd::ClientAbort);
                Poll::Ready(Some(Err(ReqBodyError::Client(e))))
            }
            Poll::Ready(None) => {
                self.state.finish(BodyEnd::Done);
                Poll::Ready(None)
            }
            Poll::Pending if !arm => Poll::Pending,
            Poll::Pending => {
                let limits = self.limits;
                if self.watch.is_none() {
                    if let Some(fd) = self.ack {
                        crate::proxy::quick_ack(fd);
                    }
                }
                let w = self
                    .watch
                    .get_or_insert_with(|| IdleWatch::new(limits.read_idle));
                match w.poll_expired(cx, limits.read_idle, (self.received, limits.min_rate)) {
                    Poll::Ready(()) => {
                        self.state.finish(BodyEnd::TooSlow);
                        Poll::Ready(Some(Err(ReqBodyError::TooSlow)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// Frames read ahead and not yet taken.
    fn kept(&self) -> usize {
        usize::from(self.ahead.is_some()) + self.more.as_ref().map_or(0, |m| m.len())
    }

    /// The frame kept after `ahead`, taken out (there are seldom more than a few).
    fn next_kept(&mut self) -> Option<BodyItem> {
        let more = self.more.as_mut().filter(|m| !m.is_empty())?;
        Some(more.remove(0))
    }

    /// The `i`-th frame not yet taken, read from the client if it is the next one, and
    /// kept. Never arms the idle watch: a look ahead does not wait.
    fn poll_peek(&mut self, i: usize, cx: &mut Context<'_>) -> Poll<Peek> {
        let kept = self.kept();
        // A Content-Length body whose last bytes are kept has ended.
        self.ended |= i == kept && self.inner.is_end_stream();
        if i == kept && !self.ended {
            match ready!(self.poll_inner(cx, false)) {
                Some(frame) if self.ahead.is_none() => self.ahead = Some(frame),
                Some(frame) => self.more.get_or_insert_default().push(frame),
                None => self.ended = true,
            }
        }
        let item = if i == 0 {
            self.ahead.as_ref()
        } else {
            self.more.as_ref().and_then(|m| m.get(i - 1))
        };
        Poll::Ready(match item {
            Some(Ok(frame)) => frame
                .data_ref()
                .map_or(Peek::Other, |d| Peek::Data(d.clone())),
            Some(Err(_)) => Peek::Other,
            None if self.ended => Peek::End,
            None => Peek::Other,
        })
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ReqBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        self.get_mut().poll_next(cx, true)
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let ahead: u64 = (self
            .ahead
            .iter()
            .chain(self.more.iter().flat_map(|m| m.iter())))
        .map(|f| match f {
            Ok(frame) => frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => 0,
        })
        .sum();
        if ahead > 0 {
            // The upper bound first: `set_lower` panics on a lower bound above the upper.
            if let Some(u) = hint.upper() {
                hint.set_upper(u + ahead);
            }
            hint.set_lower(hint.lower() + ahead);
        }
        hint
    }
}

/// A request body sent upstream.
pub enum ReqBody {
    /// The client's body, streamed and bounded. Boxed: most requests have none, and the
    /// request is moved several times on its way to a server; inline, this would add 112
    /// bytes to each move.
    Client(Box<ClientBody>),
    /// No body.
    Empty,
}

impl ReqBody {
    /// A look at the `i`-th frame not yet taken, without taking it: it stays in the body
    /// (a handle to its bytes is returned), so a request whose first write fails still has
    /// it for the next server. A frame not read yet is read from the client; `Pending` when
    /// it is not here (nothing is armed: a look ahead does not wait).
    ///
    /// A request's head and the body frames that came with it then go to the server in one
    /// write: fewer system calls and segments, and the server reads them at once.
    pub fn poll_peek(&mut self, i: usize, cx: &mut Context<'_>) -> Poll<Peek> {
        match self {
            ReqBody::Client(b) => b.poll_peek(i, cx),
            ReqBody::Empty => Poll::Ready(Peek::End),
        }
    }

    /// Whether the first `looked` frames (looked at with [`poll_peek`](Self::poll_peek)) are
    /// all the body has left: none is kept after them, and the body's end was seen or its
    /// Content-Length is reached. A body whose first write failed keeps every frame read
    /// ahead, its end seen after the last, for its next attempt to look at again.
    pub fn peeked_to_end(&self, looked: usize) -> bool {
        match self {
            ReqBody::Client(b) => looked >= b.kept() && (b.ended || b.inner.is_end_stream()),
            ReqBody::Empty => true,
        }
    }

    /// Drops the first `n` frames looked at with [`poll_peek`](Self::poll_peek), once their
    /// bytes are on their way by other means; only data frames (a kept error or trailers
    /// stay for `poll_frame`).
    #[inline]
    pub fn drop_ahead(&mut self, n: usize) {
        if let ReqBody::Client(b) = self {
            for _ in 0..n {
                if !matches!(&b.ahead, Some(Ok(f)) if f.is_data()) {
                    break;
                }
                b.ahead = b.next_kept();
            }
        }
    }

    /// The next frame, if it is here; `Pending` without arming the body's idle watch: for a
    /// caller gathering what has come, which looks again soon or waits through
    /// `poll_frame`.
    pub fn poll_frame_now(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        match self {
            ReqBody::Client(b) => b.poll_next(cx, false),
            ReqBody::Empty => Poll::Ready(None),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = ReqBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReqBodyError>>> {
        match self.get_mut() {
            ReqBody::Client(b) => Pin::new(&mut **b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What must be released when a proxied response ends.
pub struct Finish {
    /// The upstream connection, returned to its pool if both directions end cleanly.
    pub lease: Option<Lease>,
    /// The server's in-flight count.
    pub load: LoadGuard,
    /// The pool's in-flight count (and the pool, to blame a server that stalls).
    pub pool: PoolLoad,
    /// The request body's state, when it had one: the connection may be reused only once
    /// the body was sent whole.
    pub request: Option<Arc<BodyState>>,
    /// `upstream_read_idle`: longest stretch without a response-body byte from the server.
    pub read_idle: Duration,
}

impl Finish {
    /// The response ended cleanly: the connection may carry another request, if the
    /// request's body went out whole too. `body` holds an HTTP/1.1 connection until then.
    pub fn release_connection(&mut self, body: &mut UpBody) {
        if let Some(mut lease) = self.lease.take() {
            if let Some(upload) = body.take_upload() {
                // The server answered before the request was sent whole (as nginx does on
                // a `return`, or a server refusing an upload it then reads and discards):
                // the rest goes on in a task of its own on this worker. Dropped here, the
                // client's body would be left unread and hyper would close the client's
                // connection on it, a reset that can cost the client the response. (Here
                // the response has no body; the server's load goes with the response.)
                send_rest(upload, self.read_idle, Some(lease), ());
                return;
            }
            if self
                .request
                .as_ref()
                .is_none_or(|s| s.end() == BodyEnd::Done)
            {
                if let Some(conn) = body.take_reusable() {
                    lease.restore(conn);
                }
                lease.release();
            }
        }
    }

    /// The server stopped sending mid-body: that is the server's failure.
    fn server_stalled(&mut self) {
        self.lease = None;
        let st = self.load.state();
        st.metrics.error(FailureKind::Timeout);
        tracing::debug!(pool = %st.pool, server = %st.name, "server stalled mid-body; cut off");
        if let Some(server) = self.pool.server_of(st) {
            passive::observe(
                self.pool.pool(),
                server,
                Outcome::Failure(FailureKind::Timeout),
            );
        }
    }
}

/// Releases `finish` after a clean end of the response. A request still going out to a
/// server that answered first keeps it (the connection, the server's load) until it is sent.
fn finish_clean(finish: &mut Option<Finish>, body: &mut UpBody) {
    let Some(mut f) = finish.take() else {
        return;
    };
    match body.take_upload() {
        Some(upload) => send_rest(upload, f.read_idle, f.lease.take(), f),
        None => f.release_connection(body),
    }
}

/// Sends the rest of a request whose server answered before it was sent whole, in a task of
/// its own on this worker, and gives the connection back through `lease` once it is sent;
/// `hold` (what the exchange still holds, such as the server's load) lives until then.
fn send_rest(upload: Upload, idle: Duration, lease: Option<Lease>, hold: impl Send + 'static) {
    tokio::spawn(async move {
        let conn = upload.finish(idle).await;
        if let (Some(conn), Some(mut lease)) = (conn, lease) {
            lease.restore(conn);
            lease.release();
        }
        drop(hold);
    });
}

/// The server stopped sending mid-body (`upstream_read_idle`).
#[derive(Debug)]
pub struct UpstreamStalled;

impl fmt::Display for UpstreamStalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("server stalled mid-body")
    }
}

impl StdError for UpstreamStalled {}

/// Why a response body stopped early.
#[derive(Debug)]
pub enum RespBodyError {
    /// The upstream connection failed.
    Upstream(UpError),
    /// The server stalled (`upstream_read_idle`).
    Stalled(UpstreamStalled),
}

impl fmt::Display for RespBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespBodyError::Upstream(e) => write!(f, "upstream response body failed: {e}"),
            RespBodyError::Stalled(e) => e.fmt(f),
        }
    }
}

impl StdError for RespBodyError {}

/// Told when a response ends (see `proxy::http::ConnCtx`).
pub trait ResponseEnd: Send + Sync {
    /// The response is over; `client_left` when the client went away (or was cut off for
    /// not reading) before its end, with the server's side fine.
    fn response_ended(&self, client_left: bool);
}

enum Kind {
    /// The server's body, streamed. Boxed: hyper moves the body half a dozen times on its
    /// way out, and these fields would more than triple what each move copies.
    Upstream(Box<Upstream>),
    /// A short body written by the proxy.
    Local(Option<Bytes>),
}

/// The server's body, and what is released at its end.
struct Upstream {
    inner: UpBody,
    finish: Option<Finish>,
    watch: Option<IdleWatch>,
}

/// Set on a server's response whose short body was awaited with its head and did not
/// move while awaited (see `forward::read_short_rest`): its idle wait began then, not when
/// the body is first polled.
#[derive(Clone, Copy, Debug)]
pub struct IdleSince(pub Instant);

/// A response body sent to the client.
pub struct RespBody {
    kind: Kind,
    /// Told when the response ends (the client connection's in-flight count).
    on_end: Option<Arc<dyn ResponseEnd>>,
    /// Ended: whole, or cut off on the server's side.
    ended: bool,
}

impl RespBody {
    /// A body of static text.
    pub fn text(s: &'static str) -> Self {
        Self::local(Some(Bytes::from_static(s.as_bytes())))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::local(None)
    }

    /// A body of these bytes (a route's fixed answer, an error page).
    pub fn bytes(b: Bytes) -> Self {
        Self::local((!b.is_empty()).then_some(b))
    }

    fn local(b: Option<Bytes>) -> Self {
        RespBody {
            kind: Kind::Local(b),
            on_end: None,
            ended: false,
        }
    }

    /// The server's body, with what must be released at its end.
    pub fn upstream(inner: UpBody, finish: Finish) -> Self {
        RespBody {
            kind: Kind::Upstream(Box::new(Upstream {
                inner,
                finish: Some(finish),
                watch: None,
            })),
            on_end: None,
            ended: false,
        }
    }

    /// Counts the server's body as idle since `since` (it has sent nothing since then).
    pub fn idle_since(&mut self, since: Instant) {
        if let Kind::Upstream(u) = &mut self.kind {
            if let Some(f) = &u.finish {
                u.watch = Some(IdleWatch::since(since, f.read_idle));
            }
        }
    }

    /// Tells `end` when this response is over.
    pub fn on_end(&mut self, end: Arc<dyn ResponseEnd>) {
        self.on_end = Some(end);
    }

    /// The guards of a proxied response (to name its server in the access log).
    pub fn finish(&self) -> Option<&Finish> {
        match &self.kind {
            Kind::Upstream(u) => u.finish.as_ref(),
            Kind::Local(_) => None,
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let Some(end) = self.on_end.take() {
            // Dropped before its end with the server's side fine: the client went away (or
            // was cut off for not reading).
            end.response_ended(!(self.ended || self.is_end_stream()));
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = RespBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RespBodyError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Upstream(u) => {
                let Upstream {
                    inner,
                    finish,
                    watch,
                } = &mut **u;
                match Pin::new(&mut *inner).poll_frame(cx) {
                    Poll::Ready(None) => {
                        finish_clean(finish, inner);
                        this.ended = true;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // Broken mid-body: never reuse that connection.
                        finish.take();
                        this.ended = true;
                        Poll::Ready(Some(Err(RespBodyError::Upstream(e))))
                    }
                    Poll::Ready(Some(Ok(frame))) => {
                        if inner.is_end_stream() {
                            finish_clean(finish, inner);
                            this.ended = true;
                        } else if let Some(w) = watch {
                            w.progress();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Pending => {
                        let Some(f) = finish.as_mut() else {
                            return Poll::Pending;
                        };
                        let idle = f.read_idle;
                        let w = watch.get_or_insert_with(|| IdleWatch::new(idle));
                        if w.poll_expired(cx, idle, (0, 0)).is_ready() {
                            f.server_stalled();
                            finish.take();
                            this.ended = true;
                            return Poll::Ready(Some(Err(RespBodyError::Stalled(UpstreamStalled))));
                        }
                        Poll::Pending
                    }
                }
            }
            Kind::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(u) => u.inner.is_end_stream(),
            Kind::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(u) => u.inner.size_hint(),
            Kind::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Local(None) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_watch_idle_since_one_period_ago_expires_without_waiting_another() {
        // What `RespBody::idle_since` relies on: a short body that did not move while it
        // was awaited with its head is cut off as soon as it is polled, not one more
        // `upstream_read_idle` later. (The clock is paused: it moves only to the next timer.)
        let idle = Duration::from_secs(60);
        let start = Instant::now();
        let mut stalled = IdleWatch::since(start - idle, idle);
        std::future::poll_fn(|cx| stalled.poll_expired(cx, idle, (0, 0))).await;
        assert!(start.elapsed() < idle, "waited {:?}", start.elapsed());
        let mut fresh = IdleWatch::new(idle);
        std::future::poll_fn(|cx| fresh.poll_expired(cx, idle, (0, 0))).await;
        assert!(start.elapsed() >= idle, "a fresh watch waits its period");
    }
}
