//! Active probes: one exchange with a server per call, bounded by the probe timeout.
//!
//! - `tcp`: a connect succeeds within the timeout (the connection is closed at once).
//! - `http`: one request (method, path, Host) on an HTTP/1.1 connection kept between probes;
//!   the status must fall in an expected range and the body may have to contain a substring.
//!   Against a pool with `tls` the connection speaks TLS (HTTP/1.1 over ALPN).
//! - `heartbeat`: on a persistent TCP connection, send `send` and read until the reply is known
//!   to start with `expect` (or not). With an empty `send` the probe expects a greeting, so it
//!   opens a fresh connection each time.
//! - `none`: always passes.
//!
//! A kept connection that fails before answering (the server closed it while idle) is
//! replaced once by a fresh one within the same probe, so a server's keep-alive timeout is
//! never mistaken for a failure. Any failure drops the kept connection; the next probe
//! reconnects. Pure helpers (status ranges, body search, reply matching) are unit-tested here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::HealthError;
use crate::config::{HealthKind, HttpCheck};
use crate::tls::ClientTls;

/// Body bytes an HTTP probe keeps for `expect_body` (the rest is read and dropped).
const BODY_KEEP: usize = 64 * 1024;
/// Bytes of an unexpected heartbeat reply quoted in the error.
const REPLY_SHOWN: usize = 64;

/// The probe of one server, with whatever connection it keeps between calls.
pub enum Prober {
    /// Always passes.
    None,
    /// TCP connect.
    Tcp(SocketAddr),
    /// HTTP request.
    Http(HttpProbe),
    /// Send/expect.
    Heartbeat(HeartbeatProbe),
}

impl Prober {
    /// The probe of `kind` against `addr`; an http probe speaks TLS when `tls` is given, and
    /// h2 when the pool does (`h2`), as the proxy will.
    pub fn new(
        kind: &HealthKind,
        addr: SocketAddr,
        tls: Option<Arc<ClientTls>>,
        h2: bool,
    ) -> Prober {
        match kind {
            HealthKind::None => Prober::None,
            HealthKind::Tcp => Prober::Tcp(addr),
            HealthKind::Http(c) => Prober::Http(HttpProbe::new(c.clone(), addr, tls, h2)),
            HealthKind::Heartbeat { send, expect } => Prober::Heartbeat(HeartbeatProbe {
                addr,
                send: send.clone(),
                expect: expect.clone(),
                conn: None,
            }),
        }
    }

    /// One probe, within `timeout`. A timeout drops any kept connection.
    pub async fn check(&mut self, timeout: Duration) -> Result<(), HealthError> {
        let run = async {
            match self {
                Prober::None => Ok(()),
                Prober::Tcp(addr) => connect(*addr).await.map(drop),
                Prober::Http(p) => p.check().await,
                Prober::Heartbeat(p) => p.check().await,
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                // The exchange was cut mid-way: whatever it held is in an unknown state.
                self.forget();
                Err(HealthError::Timeout(timeout))
            }
        }
    }

    fn forget(&mut self) {
        match self {
            Prober::Http(p) => p.conn = None,
            Prober::Heartbeat(p) => p.conn = None,
            _ => {}
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, HealthError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(HealthError::Connect)?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// An HTTP probe and its kept connection.
pub struct HttpProbe {
    check: HttpCheck,
    addr: SocketAddr,
    host: HeaderValue,
    conn: Option<ProbeConn>,
    tls: Option<Arc<ClientTls>>,
    h2: bool,
}

/// A kept probe connection.
enum ProbeConn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl ProbeConn {
    async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self {
            ProbeConn::H1(tx) => tx.ready().await,
            ProbeConn::H2(tx) => tx.ready().await,
        }
    }

    async fn send(
        &mut self,
        req: Request<Empty<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            ProbeConn::H1(tx) => tx.send_request(req).await,
            ProbeConn::H2(tx) => tx.send_request(req).await,
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            ProbeConn::H1(tx) => tx.is_closed(),
            ProbeConn::H2(tx) => tx.is_closed(),
        }
    }
}

impl HttpProbe {
    fn new(check: HttpCheck, addr: SocketAddr, tls: Option<Arc<ClientTls>>, h2: bool) -> Self {
        let host = check
            .host
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok())
            .unwrap_or_else(|| {
                HeaderValue::from_str(&addr.to_string())
                    .expect("a socket address is a valid header value")
            });
        HttpProbe {
            check,
            addr,
            host,
            conn: None,
            tls,
            h2,
        }
    }

    async fn open(&self) -> Result<ProbeConn, HealthError> {
        let stream = connect(self.addr).await?;
        match &self.tls {
            None => self.handshake(TokioIo::new(stream)).await,
            Some(tls) => {
                // The probe's own timeout bounds the handshake; this one only backs it up.
                let s = crate::tls::connect(
                    stream,
                    tls.client_config(),
                    tls.server_name(self.addr),
                    Duration::from_secs(60),
                )
                .await
                .map_err(HealthError::Connect)?;
                self.handshake(TokioIo::new(s)).await
            }
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<ProbeConn, HealthError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        // Each connection task ends when its sender is dropped (probe failed, task stopped)
        // or the server closes.
        if self.h2 {
            let (tx, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::trace!(error = %e, "health check connection ended");
                }
            });
            Ok(ProbeConn::H2(tx))
        } else {
            let (tx, conn) = http1::handshake(io).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::trace!(error = %e, "health check connection ended");
                }
            });
            Ok(ProbeConn::H1(tx))
        }
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = self.check.method.clone();
        *req.uri_mut() = if self.h2 {
            // h2 carries the authority and scheme as pseudo-headers: an absolute URI.
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            format!(
                "{scheme}://{}{}",
                self.host.to_str().unwrap_or("localhost"),
                self.check.path
            )
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/"))
        } else {
            self.check
                .path
                .parse()
                .unwrap_or_else(|_| http::Uri::from_static("/"))
        };
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static("fulcrum-health-check"),
        );
        req
    }

    async fn check(&mut self) -> Result<(), HealthError> {
        let mut kept = self.conn.take();
        loop {
            let reused = kept.is_some();
            let mut tx = match kept.take() {
                Some(tx) => tx,
                None => self.open().await?,
            };
            let exchange = async {
                tx.ready().await?;
                let resp = tx.send(self.request()).await?;
                let status = resp.status().as_u16();
                let body = read_body(resp.into_body()).await?;
                Ok::<_, hyper::Error>((status, body))
            };
            match exchange.await {
                Ok((status, body)) => {
                    if !tx.is_closed() {
                        self.conn = Some(tx);
                    }
                    return verdict(&self.check, status, &body);
                }
                // The kept connection may simply have been closed by the server while idle.
                Err(_) if reused => continue,
                Err(e) => return Err(HealthError::Http(e)),
            }
        }
    }
}

/// Reads a body to its end, keeping its first [`BODY_KEEP`] bytes.
async fn read_body(mut body: hyper::body::Incoming) -> Result<Vec<u8>, hyper::Error> {
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = BODY_KEEP.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok(kept)
}

/// Whether an HTTP answer passes the check.
pub fn verdict(check: &HttpCheck, status: u16, body: &[u8]) -> Result<(), HealthError> {
    if !status_expected(&check.expect_status, status) {
        return Err(HealthError::Status(status));
    }
    match &check.expect_body {
        Some(want) if !contains(body, want.as_bytes()) => Err(HealthError::Body(want.clone())),
        _ => Ok(()),
    }
}

/// Whether `status` is in one of the inclusive `ranges`.
pub fn status_expected(ranges: &[(u16, u16)], status: u16) -> bool {
    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
}

/// Whether `needle` occurs in `hay` (an empty needle always does).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// A heartbeat probe and its kept connection.
pub struct HeartbeatProbe {
    addr: SocketAddr,
    send: Vec<u8>,
    expect: Vec<u8>,
    conn: Option<TcpStream>,
}

/// How much of the expected reply has been seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The reply starts with the expected bytes.
    Match,
    /// So far a prefix of the expected bytes: read more.
    Incomplete,
    /// It differs.
    Mismatch,
}

/// Compares what has been read so far with the expected start of the reply.
pub fn match_reply(got: &[u8], expect: &[u8]) -> Reply {
    if got.len() >= expect.len() {
        if got.starts_with(expect) {
            Reply::Match
        } else {
            Reply::Mismatch
        }
    } else if expect.starts_with(got) {
        Reply::Incomplete
    } else {
        Reply::Mismatch
    }
}

impl HeartbeatProbe {
    async fn check(&mut self) -> Result<(), HealthError> {
        // With nothing to send, the reply is a greeting, which only a new connection gets.
        let mut kept = if self.send.is_empty() {
            None
        } else {
            self.conn.take()
        };
        loop {
            let reused = kept.is_some();
            let mut stream = match kept.take() {
                Some(s) => s,
                None => connect(self.addr).await?,
            };
            match self.exchange(&mut stream, reused).await {
                Ok(()) => {
                    self.conn = Some(stream);
                    return Ok(());
                }
                // A kept connection the server closed while idle: retry once on a new one.
                Err(HealthError::Closed | HealthError::Io(_)) if reused => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn exchange(&self, s: &mut TcpStream, reused: bool) -> Result<(), HealthError> {
        if reused {
            // Late bytes of an earlier reply (a trailing "\r\n", say) must not be read as
            // this probe's answer.
            drain_ready(s)?;
        }
        if !self.send.is_empty() {
            s.write_all(&self.send).await.map_err(HealthError::Io)?;
        }
        let mut got = Vec::with_capacity(self.expect.len().max(64));
        let mut buf = [0u8; 512];
        loop {
            let n = s.read(&mut buf).await.map_err(HealthError::Io)?;
            if n == 0 {
                return Err(HealthError::Closed);
            }
            got.extend_from_slice(&buf[..n]);
            match match_reply(&got, &self.expect) {
                Reply::Match => return Ok(()),
                Reply::Mismatch => {
                    got.truncate(REPLY_SHOWN);
                    return Err(HealthError::Reply(
                        String::from_utf8_lossy(&got).into_owned(),
                    ));
                }
                Reply::Incomplete => {}
            }
        }
    }
}

/// Reads and drops whatever is already buffered on `s`, without waiting.
fn drain_ready(s: &TcpStream) -> Result<(), HealthError> {
    let mut buf = [0u8; 512];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return Err(HealthError::Closed),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(HealthError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ranges: &[(u16, u16)], body: Option<&str>) -> HttpCheck {
        HttpCheck {
            method: http::Method::GET,
            path: "/healthz".into(),
            host: None,
            expect_status: ranges.to_vec(),
            expect_body: body.map(String::from),
        }
    }

    #[test]
    fn status_ranges_are_inclusive() {
        let r = [(200, 299), (304, 304)];
        assert!(status_expected(&r, 200));
        assert!(status_expected(&r, 299));
        assert!(status_expected(&r, 304));
        assert!(!status_expected(&r, 301));
        assert!(!status_expected(&r, 503));
    }

    #[test]
    fn verdict_checks_status_then_body() {
        let c = check(&[(200, 399)], Some("ready"));
        assert!(verdict(&c, 200, b"all ready\n").is_ok());
        assert!(matches!(
            verdict(&c, 200, b"starting"),
            Err(HealthError::Body(_))
        ));
        assert!(matches!(
            verdict(&c, 500, b"ready"),
            Err(HealthError::Status(500))
        ));
        assert!(verdict(&check(&[(200, 399)], None), 302, b"").is_ok());
    }

    #[test]
    fn body_search() {
        assert!(contains(b"hello world", b"o w"));
        assert!(!contains(b"hello", b"hello!"));
        assert!(contains(b"", b""));
    }

    #[test]
    fn reply_matching() {
        assert_eq!(match_reply(b"+PONG\r\n", b"+PONG"), Reply::Match);
        assert_eq!(match_reply(b"+PO", b"+PONG"), Reply::Incomplete);
        assert_eq!(match_reply(b"", b"+PONG"), Reply::Incomplete);
        assert_eq!(match_reply(b"-ERR", b"+PONG"), Reply::Mismatch);
        assert_eq!(match_reply(b"+PANG", b"+PONG"), Reply::Mismatch);
    }

    fn heartbeat(addr: SocketAddr) -> Prober {
        Prober::new(
            &HealthKind::Heartbeat {
                send: b"PING\r\n".to_vec(),
                expect: b"+PONG".to_vec(),
            },
            addr,
            None,
            false,
        )
    }

    #[tokio::test]
    async fn heartbeat_keeps_one_connection_across_probes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                accepted += 1;
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        // Reply in two writes: the probe must wait for the whole prefix.
                        if n == 0 || s.write_all(b"+PO").await.is_err() {
                            break;
                        }
                        if s.write_all(b"NG\r\n").await.is_err() {
                            break;
                        }
                    }
                });
                if accepted > 1 {
                    return accepted;
                }
            }
        });
        let mut p = heartbeat(addr);
        for _ in 0..5 {
            p.check(Duration::from_secs(10)).await.expect("PONG");
        }
        assert!(!server.is_finished(), "one connection for five probes");
    }

    #[tokio::test]
    async fn heartbeat_against_a_silent_server_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut p = heartbeat(l.local_addr().unwrap());
        // The kernel completes the handshake; nobody ever answers.
        let r = p.check(Duration::from_millis(200)).await;
        assert!(matches!(r, Err(HealthError::Timeout(_))), "{r:?}");
    }
}
