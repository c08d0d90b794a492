//! Connections to servers for the L7 proxy: one small pool of idle HTTP/1.1 connections per
//! server (a lock-free queue), or one shared h2 connection per server.
//!
//! Connecting is a separate step from sending, so a connect failure never consumes the
//! request: the caller can try another server with the same request. A pooled connection
//! that turns out to be closed hands the request back (`try_send_request`) and the caller
//! sends it on a fresh one.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::ReqBody;
use crate::backend::{now_ms, BackendState};
use crate::config::{PoolTimeouts, UpstreamProtocol};
use crate::tls::ClientTls;

/// Idle HTTP/1.1 connections kept per server, at most.
const IDLE_PER_SERVER: usize = 256;

/// How a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Refused, unreachable, reset during the handshake: the server's side.
    Io(io::Error),
    /// No answer within the connect timeout.
    Timeout,
    /// A local resource ran out (EMFILE, EADDRNOTAVAIL, ...): not the server's fault.
    Local(io::Error),
    /// The TLS handshake failed (certificate not trusted, no shared protocol, ...).
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
    tx: http1::SendRequest<ReqBody>,
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
    idle: ArrayQueue<Idle>,
    h2: ArcSwapOption<http2::SendRequest<ReqBody>>,
    /// TLS towards the server, when the pool has `tls`; replaced by reloads.
    tls: ArcSwapOption<ClientTls>,
}

enum Sender {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
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
        Arc::new(ServerUpstream {
            addr: state.addr,
            state,
            protocol,
            connect_ms: AtomicU64::new(timeouts.connect.as_millis() as u64),
            idle_ms: AtomicU64::new(timeouts.upstream_idle.as_millis() as u64),
            idle: ArrayQueue::new(IDLE_PER_SERVER),
            h2: ArcSwapOption::empty(),
            tls: ArcSwapOption::new(tls),
        })
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

    /// A connection ready to send: an idle one if any, else a new one.
    pub async fn checkout(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        match self.protocol {
            UpstreamProtocol::Http1 => {
                let now = now_ms();
                let max_idle = self.idle_ms.load(Ordering::Relaxed);
                while let Some(mut idle) = self.idle.pop() {
                    if idle.tx.is_closed() || now.saturating_sub(idle.since_ms) > max_idle {
                        continue;
                    }
                    // A connection released at end of body may still be finishing that
                    // response for a moment; ready() waits for that or reports it closed,
                    // within the connect timeout at most.
                    let ready = tokio::time::timeout(self.connect_timeout(), idle.tx.ready());
                    if matches!(ready.await, Ok(Ok(()))) {
                        return Ok(Lease {
                            sender: Sender::H1(idle.tx),
                            home: self.clone(),
                            reused: true,
                        });
                    }
                }
                self.connect().await
            }
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
    pub async fn connect(self: &Arc<Self>) -> Result<Lease, ConnectError> {
        let limit = self.connect_timeout();
        let stream = match tokio::time::timeout(limit, TcpStream::connect(self.addr)).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => return Err(ConnectError::from_io(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let tls = self.tls.load_full();
        let hs = async {
            match tls {
                None => self.handshake(TokioIo::new(stream)).await,
                Some(tls) => {
                    let name = tls.server_name(self.addr);
                    let s = crate::tls::connect(stream, tls.client_config(), name, limit)
                        .await
                        .map_err(ConnectError::Tls)?;
                    if self.protocol == UpstreamProtocol::H2
                        && s.get_ref().1.alpn_protocol() != Some(b"h2")
                    {
                        return Err(ConnectError::Tls(io::Error::other(
                            "the server did not agree to h2 over ALPN",
                        )));
                    }
                    self.handshake(TokioIo::new(s)).await
                }
            }
        };
        match tokio::time::timeout(limit, hs).await {
            Err(_) => Err(ConnectError::Timeout),
            Ok(r) => r.map(|sender| Lease {
                sender,
                home: self.clone(),
                reused: false,
            }),
        }
    }

    /// The HTTP handshake on a connected stream (plain or TLS); its connection task ends when
    /// the server closes, the last sender is dropped, or the server's connections are severed.
    async fn handshake<T>(self: &Arc<Self>, io: T) -> Result<Sender, ConnectError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let sever = self.state.sever_token();
        match self.protocol {
            UpstreamProtocol::Http1 => {
                let (tx, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|e| ConnectError::Io(io::Error::other(e)))?;
                tokio::spawn(async move {
                    tokio::select! {
                        r = conn.with_upgrades() => if let Err(e) = r {
                            tracing::trace!(error = %e, "upstream connection ended");
                        },
                        _ = crate::proxy::cancel::cancelled(&sever) => {}
                    }
                });
                Ok(Sender::H1(tx))
            }
            UpstreamProtocol::H2 => {
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
        }
    }

    /// Closes idle connections (after a reload removed the server, say).
    pub fn clear_idle(&self) {
        while self.idle.pop().is_some() {}
        self.h2.store(None);
    }
}

impl Lease {
    /// Whether this connection had carried requests before.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Sends a request; if it could not be written at all, the error hands it back.
    pub async fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ReqBody>>> {
        match &mut self.sender {
            Sender::H1(tx) => tx.try_send_request(req).await,
            Sender::H2(tx) => tx.try_send_request(req).await,
        }
    }

    /// Gives the connection back for reuse, if it can carry another request.
    pub fn release(self) {
        if let Sender::H1(tx) = self.sender {
            if !tx.is_closed() {
                // A full queue drops the connection, which closes it: the cap on idle ones.
                let _ = self.home.idle.push(Idle {
                    tx,
                    since_ms: now_ms(),
                });
            }
        }
    }
}
