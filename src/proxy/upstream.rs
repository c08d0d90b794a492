//! Connections to servers for the L7 proxy: one small pool of idle HTTP/1.1 connections per
//! server, or one shared h2 connection per server.
//!
//! The idle pool is a stack: the connection released last is reused first. Under steady
//! load the same few stay warm and the rest age out, so fewer connections stay open, and a
//! reused one is rarely old enough for the server to be closing it as it is picked (the
//! race a queue, which reuses the oldest, invites). Expired ones leave from the bottom, on
//! release and on a timer, so the pool shrinks back when load falls.
//!
//! Connecting is a separate step from sending, so a connect failure never consumes the
//! request: the caller can try another server with the same request. A send that failed
//! before writing a byte hands the request back, and the caller sends it on a fresh
//! connection.
//!
//! HTTP/1.1 is spoken by the request's own task ([`super::h1`]): an idle connection is a
//! socket in the pool and nothing more. h2 connections are hyper's, each driven by a task.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::VecDeque;
use std::sync::{Mutex, Weak};
use tokio::net::TcpStream;

use super::body::ReqBody;
use super::h1;
use crate::backend::{now_ms, BackendState};
use crate::config::{PoolTimeouts, UpstreamProtocol};
use crate::proxy::headers::Forwarding;
use crate::tls::ClientTls;
use crate::workers::Padded;

/// Idle HTTP/1.1 connections kept per server on each worker, at most: a guard, not a
/// setting.
///
/// What bounds the pool is `upstream_idle`: a connection unused that long is closed (when
/// it is next looked at, or by the reaper), so the pool holds what the load needed in that
/// time and no more. A small cap cut it short instead. At 256, a worker with more requests
/// than that in flight to one server closed every connection released past the 256th, and
/// opened a new one for the next request: at 1,000 client connections over three servers,
/// 0.005 `connect` per request at full speed, and each close left a TIME_WAIT socket on
/// the proxy's side (its ephemeral ports are what that spends).
const IDLE_PER_SERVER: usize = 4096;

/// How a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Refused, unreachable, reset during the handshake: the server's side.
    #[error("{0}")]
    Io(io::Error),
    /// No answer within the connect timeout.
    #[error("no answer within the connect timeout")]
    Timeout,
    /// A local resource ran out (EMFILE, EADDRNOTAVAIL, ...): not the server's fault.
    #[error("{0}")]
    Local(io::Error),
    /// The TLS handshake failed (certificate not trusted, no shared protocol, ...).
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
}

impl ConnectError {
    fn from_io(e: io::Error) -> Self {
        if crate::proxy::local_error_kind(&e).is_some() {
            ConnectError::Local(e)
        } else {
            ConnectError::Io(e)
        }
    }
}

struct Idle {
    conn: Box<h1::Conn>,
    since_ms: u64,
}

/// The connections to one server.
pub struct ServerUpstream {
    addr: SocketAddr,
    /// The server's live state: its sever token ends every connection at a drain deadline.
    state: Arc<BackendState>,
    protocol: UpstreamProtocol,
    /// Connect (and ready) timeout and idle lifetime, ms: atomics, so a reload that keeps
    /// the server keeps its pooled connections and only retimes them.
    connect_ms: AtomicU64,
    idle_ms: AtomicU64,
    /// Idle connections, one stack per worker thread (a connection's task runs on the
    /// worker that opened it, so reusing it there keeps the request on one thread), oldest
    /// at the front. A lock is held for a push or a pop only, and is only ever contended
    /// by the control thread's reaper; connections are dropped (which wakes their tasks)
    /// after it is released. Each stack on cache lines of its own: a lock is written on
    /// every request, and two workers' locks on one line would bounce it between cores.
    idle: Box<[Padded<Mutex<VecDeque<Idle>>>]>,
    h2: ArcSwapOption<http2::SendRequest<ReqBody>>,
    /// TLS towards the server, when the pool has `tls`; replaced by reloads.
    tls: ArcSwapOption<ClientTls>,
}

enum Sender {
    /// The connection; out while a request is on it, back once its response ended cleanly.
    H1(Option<Box<h1::Conn>>),
    H2(http2::SendRequest<ReqBody>),
}

/// Why a request to a server failed.
#[derive(Debug)]
pub enum UpError {
    /// On an HTTP/1.1 connection.
    H1(h1::Error),
    /// On an h2 connection.
    H2(hyper::Error),
}

impl UpError {
    /// Whether the server broke the protocol (an unparsable response), as opposed to the
    /// connection failing.
    pub fn is_protocol(&self) -> bool {
        match self {
            UpError::H1(e) => matches!(e, h1::Error::Protocol(_)),
            UpError::H2(e) => e.is_parse() || e.is_parse_status(),
        }
    }
}

impl std::fmt::Display for UpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpError::H1(e) => e.fmt(f),
            UpError::H2(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for UpError {}

/// A server's response body, from either protocol.
pub enum UpBody {
    /// Read by the request's task from its HTTP/1.1 connection.
    H1(h1::RespIn),
    /// From hyper's h2 client.
    H2(Incoming),
}

impl UpBody {
    /// The HTTP/1.1 connection, once the body ended cleanly and it may carry another request.
    pub fn take_reusable(&mut self) -> Option<Box<h1::Conn>> {
        match self {
            UpBody::H1(b) => b.take_reusable(),
            UpBody::H2(_) => None,
        }
    }

    /// The rest of an HTTP/1.1 request still going out after its response ended
    /// ([`h1::RespIn::take_upload`]).
    pub fn take_upload(&mut self) -> Option<h1::Upload> {
        match self {
            UpBody::H1(b) => b.take_upload(),
            UpBody::H2(_) => None,
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = UpError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, UpError>>> {
        match self.get_mut() {
            UpBody::H1(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(UpError::H1))),
            UpBody::H2(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(UpError::H2))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::H1(b) => b.is_end_stream(),
            UpBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::H1(b) => b.size_hint(),
            UpBody::H2(b) => b.size_hint(),
        }
    }
}

/// A connection taken for one request; give it back with [`Lease::release`].
pub struct Lease {
    sender: Sender,
    home: Arc<ServerUpstream>,
    reused: bool,
}

impl ServerUpstream {
    /// A pool of connections to `addr`.
    pub fn new(
        state: Arc<BackendState>,
        protocol: UpstreamProtocol,
        timeouts: PoolTimeouts,
        tls: Option<Arc<ClientTls>>,
    ) -> Arc<Self> {
        let up = Arc::new(ServerUpstream {
            addr: state.addr,
            state,
            protocol,
            connect_ms: AtomicU64::new(timeouts.connect.as_millis() as u64),
            idle_ms: AtomicU64::new(timeouts.upstream_idle.as_millis() as u64),
            idle: (0..crate::workers::count().max(1))
                .map(|_| Padded(Mutex::new(VecDeque::new())))
                .collect(),
            h2: ArcSwapOption::empty(),
            tls: ArcSwapOption::new(tls),
        });
        if protocol == UpstreamProtocol::Http1 {
            // One reaper per worker, on that worker, reaping that worker's stack: a
            // connection's buffers are then freed by the thread that allocated them. Freed
            // from another thread, they wait in the allocator for their owner to collect
            // them, and an idle worker never does: after a burst of load the pages they
            // share with the client connections' freed buffers stayed resident (10,000 idle
            // keep-alive clients cost 23.5 KiB each instead of 3.6).
            let workers = crate::workers::handles();
            if workers.is_empty() {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(reaper(Arc::downgrade(&up), None));
                }
            } else {
                for (i, rt) in workers.iter().enumerate() {
                    rt.spawn(reaper(Arc::downgrade(&up), Some(i)));
                }
            }
        }
        up
    }

    /// This worker's idle stack.
    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        let i = crate::workers::current().unwrap_or(0) % self.idle.len();
        lock(&self.idle[i])
    }

    fn expired(&self, i: &Idle, now: u64) -> bool {
        now.saturating_sub(i.since_ms) > self.idle_ms.load(Ordering::Relaxed)
    }

    /// The newest idle connection that is still open and young enough. Finding an expired
    /// one empties the pool: everything under it is older still.
    fn take_idle(&self) -> Option<Idle> {
        let now = now_ms();
        let mut q = self.idle();
        while let Some(mut i) = q.pop_back() {
            if self.expired(&i, now) {
                let old = std::mem::take(&mut *q);
                drop(q);
                drop((i, old));
                return None;
            }
            if i.conn.is_usable() {
                return Some(i);
            }
        }
        None
    }

    /// Closes idle connections that expired or that the server closed, from the bottom of
    /// the stack up to the first live one, in worker `only`'s stack or in all of them;
    /// returns how many are left there.
    fn reap_idle(&self, only: Option<usize>) -> usize {
        let now = now_ms();
        let mut left = 0;
        for (i, stack) in self.idle.iter().enumerate() {
            if only.is_some_and(|w| w % self.idle.len() != i) {
                continue;
            }
            let mut gone = Vec::new();
            let mut q = lock(stack);
            while q
                .front_mut()
                .is_some_and(|i| self.expired(i, now) || !i.conn.is_usable())
            {
                gone.extend(q.pop_front());
            }
            left += q.len();
            drop(q);
            drop(gone);
        }
        left
    }

    /// The server address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's live state.
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }

    /// The upstream protocol its connections speak.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// Whether its connections speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.load().is_some()
    }

    /// Uses `tls` for new connections (a reload re-read the CA and certificate files).
    pub fn set_tls(&self, tls: Option<Arc<ClientTls>>) {
        self.tls.store(tls);
    }

    /// Applies new timeouts (a reload that keeps this server and its protocol).
    pub fn retime(&self, t: PoolTimeouts) {
        self.connect_ms
            .store(t.connect.as_millis() as u64, Ordering::Relaxed);
        self.idle_ms
            .store(t.upstream_idle.as_millis() as u64, Ordering::Relaxed);
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_ms.load(Ordering::Relaxed))
    }

    /// An idle HTTP/1.1 connection, if the pool holds one: [`checkout`](Self::checkout)
    /// without a future, for the request path to try first. (An h2 connection may have to
    /// wait for a stream, so it goes through `checkout`.)
    pub fn checkout_idle(self: &Arc<Self>) -> Option<Lease> {
        if self.protocol != UpstreamProtocol::Http1 {
            return None;
        }
        self.take_idle().map(|idle| Lease {
            sender: Sender::H1(Some(idle.conn)),
            home: self.clone(),
            reused: true,
        })
    }

    /// A connection ready to send: an idle one if any, else a new one. (The request path
    /// makes the two steps itself, so that the wait is a future only when it is needed.)
    #[cfg(test)]
    pub async fn checkout(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        match self.checkout_idle() {
            Some(lease) => Ok(lease),
            None => self.checkout_waiting().await,
        }
    }

    /// [`checkout`](Self::checkout) once [`checkout_idle`](Self::checkout_idle) found
    /// nothing: the h2 connection when it can take another stream, else a new connection.
    pub async fn checkout_waiting(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        match self.protocol {
            UpstreamProtocol::Http1 => self.connect().await,
            UpstreamProtocol::H2 => {
                if let Some(tx) = self.h2.load_full() {
                    if !tx.is_closed() {
                        let mut tx = (*tx).clone();
                        let ready = tokio::time::timeout(self.connect_timeout(), tx.ready());
                        if matches!(ready.await, Ok(Ok(()))) {
                            return Ok(Lease {
                                sender: Sender::H2(tx),
                                home: self.clone(),
                                reused: true,
                            });
                        }
                    }
                }
                self.connect().await
            }
        }
    }

    /// A new connection, never a pooled one.
    ///
    /// The TCP connect is awaited in place; the TLS and h2 handshakes that may follow are
    /// boxed. Their futures come to about 7.8 KB, which inline would make every request's
    /// future that large (hyper holds one per HTTP/1 client connection and spawns one as the
    /// task of every h2 stream), though pooled connections serve nearly every request and a
    /// plain HTTP/1.1 server needs neither handshake. Boxing the whole connect instead would
    /// put a box beside each of the connects a burst of new clients starts at once.
    pub async fn connect(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        let limit = self.connect_timeout();
        let stream = match tokio::time::timeout(limit, TcpStream::connect(self.addr)).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => return Err(ConnectError::from_io(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let sender = match self.tls.load_full() {
            None if self.protocol == UpstreamProtocol::Http1 => {
                let sever = self.state.sever_token().child_token();
                Sender::H1(Some(h1::Conn::new(h1::Io::Tcp(stream), self.addr, sever)))
            }
            tls => {
                let hs = Box::pin(self.handshakes(stream, tls, limit));
                match tokio::time::timeout(limit, hs).await {
                    Err(_) => return Err(ConnectError::Timeout),
                    Ok(r) => r?,
                }
            }
        };
        Ok(Lease {
            sender,
            home: self.clone(),
            reused: false,
        })
    }

    /// TLS (when the pool speaks it to its servers), then the h2 handshake (when it speaks
    /// h2), on a connected stream.
    async fn handshakes(
        self: &Arc<Self>,
        stream: TcpStream,
        tls: Option<Arc<ClientTls>>,
        limit: Duration,
    ) -> Result<Sender, ConnectError> {
        let Some(tls) = tls else {
            return self.handshake(TokioIo::new(stream)).await;
        };
        let name = tls.server_name(self.addr);
        let s = crate::tls::connect(stream, tls.client_config(), name, limit)
            .await
            .map_err(ConnectError::Tls)?;
        if self.protocol == UpstreamProtocol::H2 && s.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError::Tls(io::Error::other(
                "the server did not agree to h2 over ALPN",
            )));
        }
        if self.protocol == UpstreamProtocol::Http1 {
            let sever = self.state.sever_token().child_token();
            return Ok(Sender::H1(Some(h1::Conn::new(
                h1::Io::Tls(Box::new(s)),
                self.addr,
                sever,
            ))));
        }
        self.handshake(TokioIo::new(s)).await
    }

    /// The h2 handshake on a connected stream (plain or TLS); its connection task ends when
    /// the server closes, the last sender is dropped, or the server's connections are severed.
    async fn handshake<T>(self: &Arc<Self>, io: T) -> Result<Sender, ConnectError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let sever = self.state.sever_token();
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .handshake(io)
            .await
            .map_err(|e| ConnectError::Io(io::Error::other(e)))?;
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::trace!(error = %e, "upstream h2 connection ended");
                },
                _ = crate::proxy::cancel::cancelled(&sever) => {}
            }
        });
        self.h2.store(Some(Arc::new(tx.clone())));
        Ok(Sender::H2(tx))
    }

    /// Closes idle connections (after a reload removed the server, say).
    pub fn clear_idle(&self) {
        for stack in &self.idle {
            let old = std::mem::take(&mut *lock(stack));
            drop(old);
        }
        self.h2.store(None);
    }

    /// Idle HTTP/1.1 connections held now.
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|s| lock(s).len()).sum()
    }
}

fn lock(m: &Mutex<VecDeque<Idle>>) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Closes a server's expired idle connections now and then (those of worker `only`, or all),
/// until the server's upstream is dropped (a reload removed the server).
async fn reaper(up: Weak<ServerUpstream>, only: Option<usize>) {
    loop {
        let every = match up.upgrade() {
            Some(u) => {
                let ms = u.idle_ms.load(Ordering::Relaxed);
                Duration::from_millis(ms / 4)
                    .clamp(Duration::from_millis(250), Duration::from_secs(5))
            }
            None => return,
        };
        tokio::time::sleep(every).await;
        match up.upgrade() {
            Some(u) => {
                u.reap_idle(only);
            }
            None => return,
        }
    }
}

impl Lease {
    /// Whether this connection had carried requests before.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Whether the request's body goes out from the exchange's own future (HTTP/1.1: it is
    /// written by whoever polls [`send`](Self::send)); an h2 request's body is sent by the
    /// h2 connection's task.
    pub fn sends_body_in_exchange(&self) -> bool {
        matches!(self.sender, Sender::H1(_))
    }

    /// Sends the request in `out`; if not a byte of it could be written, it is left there,
    /// unwritten. On HTTP/1.1 its head is left there after it was written too, if `out.keep`
    /// asks for it; an h2 exchange keeps nothing of a request it sent.
    pub async fn send(
        &mut self,
        out: &mut h1::Outgoing,
        forwarding: &Forwarding<'_>,
    ) -> Result<Response<UpBody>, UpError> {
        match &mut self.sender {
            Sender::H1(conn) => {
                let Some(c) = conn.take() else {
                    return Err(UpError::H1(h1::Error::Closed));
                };
                match h1::send(c, out, forwarding).await {
                    Ok(resp) => Ok(resp.map(UpBody::H1)),
                    Err(e) => Err(UpError::H1(e)),
                }
            }
            Sender::H2(tx) => {
                // Taken whole: a request the client does not give back was sent, and is gone
                // (`out.unsent()` is false then).
                let Some(r) = out.take_unsent() else {
                    return Err(UpError::H1(h1::Error::Closed));
                };
                // Boxed: an h2 exchange's future is larger than the HTTP/1.1 one, and inline it
                // would size every request's state (the h2 client allocates per request anyway).
                match Box::pin(tx.try_send_request(r)).await {
                    Ok(resp) => Ok(resp.map(UpBody::H2)),
                    Err(mut e) => {
                        out.req = e.take_message();
                        Err(UpError::H2(e.into_error()))
                    }
                }
            }
        }
    }

    /// Puts back the HTTP/1.1 connection a response body gave up at its clean end.
    pub fn restore(&mut self, conn: Box<h1::Conn>) {
        if let Sender::H1(slot) = &mut self.sender {
            *slot = Some(conn);
        }
    }

    /// Gives the connection back for reuse, if it can carry another request.
    pub fn release(self) {
        if let Sender::H1(Some(conn)) = self.sender {
            let home = &self.home;
            let now = now_ms();
            let idle = Idle {
                conn,
                since_ms: now,
            };
            let mut q = home.idle();
            // The bottom one leaves if it expired: the pool sheds what load no longer needs
            // as it goes, not only when the reaper passes.
            let stale = match q.front() {
                Some(i) if home.expired(i, now) => q.pop_front(),
                _ => None,
            };
            // A full pool drops the connection, which closes it: the cap on idle ones.
            let over = if q.len() < IDLE_PER_SERVER {
                q.push_back(idle);
                None
            } else {
                Some(idle)
            };
            drop(q);
            drop((stale, over));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ServerOrigin, ServerSettings};
    use http::Request;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An origin that answers every request on its n-th connection with the body "n".
    async fn numbered_origin() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut n = 0u32;
            while let Ok((mut s, _)) = l.accept().await {
                n += 1;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => have.extend_from_slice(&buf[..k]),
                        }
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            let body = n.to_string();
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn upstream(addr: SocketAddr, idle: Duration) -> Arc<ServerUpstream> {
        let settings = ServerSettings {
            name: Arc::from("s"),
            addr,
            weight: 1,
            backup: false,
            max_conns: None,
            origin: ServerOrigin::File,
        };
        let metrics = crate::metrics::Metrics::new();
        let state = BackendState::detached("p", &settings, &metrics);
        let t = PoolTimeouts {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(5),
            upstream_idle: idle,
            upstream_read_idle: Duration::from_secs(5),
        };
        ServerUpstream::new(state, UpstreamProtocol::Http1, t, None)
    }

    /// Sends a GET on `lease` and returns the body (the origin's connection number).
    async fn get(lease: &mut Lease) -> String {
        let req = Request::get("/").body(ReqBody::Empty).unwrap();
        let resp = lease
            .send(&mut h1::Outgoing::new(req, false), &Forwarding::default())
            .await
            .expect("sent");
        let mut body = resp.into_body();
        let bytes = (&mut body).collect().await.unwrap().to_bytes();
        if let Some(c) = body.take_reusable() {
            lease.restore(c);
        }
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Raises this process's soft open-files limit to `want` (or to its hard limit).
    fn allow_open_files(want: u64) {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `r` is a valid rlimit for the kernel to fill and read back.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
            if r.rlim_cur < want {
                r.rlim_cur = want.min(r.rlim_max);
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
            }
        }
    }

    #[tokio::test]
    async fn a_crowd_of_connections_is_kept_whole_for_the_next_crowd() {
        // 300 at once to one server, more than the 256 the pool once kept: all of them go
        // back to the pool, and the next 300 requests reuse them instead of opening more.
        const CROWD: usize = 300;
        allow_open_files(4 * CROWD as u64 + 256);
        let up = upstream(numbered_origin().await, Duration::from_secs(60));
        let mut leases = Vec::new();
        for _ in 0..CROWD {
            leases.push(up.connect().await.unwrap());
        }
        for l in &mut leases {
            get(l).await;
        }
        for l in leases.drain(..) {
            l.release();
        }
        assert_eq!(up.idle_count(), CROWD, "every connection kept");
        for _ in 0..CROWD {
            let l = up.checkout().await.unwrap();
            assert!(l.reused(), "taken from the pool, not opened");
            leases.push(l);
        }
        let mut numbers = Vec::new();
        for l in &mut leases {
            numbers.push(get(l).await.parse::<usize>().unwrap());
        }
        assert!(
            numbers.iter().all(|&n| n <= CROWD),
            "no connection past the first crowd's"
        );
        for l in leases.drain(..) {
            l.release();
        }
        assert_eq!(up.idle_count(), CROWD);
    }

    #[tokio::test]
    async fn the_connection_released_last_is_reused_first_and_expired_ones_are_reaped() {
        let up = upstream(numbered_origin().await, Duration::from_secs(60));
        let mut a = up.connect().await.unwrap();
        let mut b = up.connect().await.unwrap();
        assert_eq!(get(&mut a).await, "1");
        assert_eq!(get(&mut b).await, "2");
        a.release();
        b.release();
        assert_eq!(up.idle_count(), 2);
        let mut again = up.checkout().await.unwrap();
        assert!(again.reused());
        assert_eq!(get(&mut again).await, "2", "the newest idle connection");
        again.release();
        let mut next = up.checkout().await.unwrap();
        assert_eq!(get(&mut next).await, "2", "still the warm one");
        next.release();
        // Once they expire, the reaper closes them from the bottom up.
        up.retime(PoolTimeouts {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(5),
            upstream_idle: Duration::ZERO,
            upstream_read_idle: Duration::from_secs(5),
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(up.reap_idle(None), 0, "expired connections closed");
        let mut fresh = up.checkout().await.unwrap();
        assert!(!fresh.reused(), "nothing left to reuse");
        assert_eq!(get(&mut fresh).await, "3");
    }
}
