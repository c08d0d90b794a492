//! In-process origin servers: the backends of `fulcrum demo`, and the real origins the
//! integration tests run behind the proxy.
//!
//! An [`Origin`] is a small HTTP/1.1 + h2c server on loopback that says its own name and
//! offers a few test routes (echo, a body sink, sized bodies, sleeps, status codes, header dumps,
//! trailers, upgrades). It can be killed (every connection dropped at once, like a crashed process)
//! and restarted on the same address. For health-check tests its `/healthz` answer can be
//! switched (status, body, or a repeating pass/fail pattern), its other routes can be made to
//! fail, and it counts connections and in-flight requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, hyper::Error>;

/// What `/healthz` answers.
#[derive(Clone, Debug)]
enum HealthReply {
    /// This status and body.
    Fixed(StatusCode, String),
    /// 200 "ok" or 503 "failing", following a repeating pattern, one entry per probe.
    Pattern(Vec<bool>, usize),
}

/// State shared by an origin's connections, surviving kill and restart.
struct Shared {
    name: Arc<str>,
    hits: Arc<AtomicU64>,
    connections: AtomicU64,
    inflight: AtomicU64,
    peak_inflight: AtomicU64,
    /// 0, or the status every route but `/healthz` answers.
    failing: AtomicU16,
    /// A `std` mutex: a test origin, locked briefly per `/healthz` request, never across an await.
    health: Mutex<HealthReply>,
}

/// A running origin server.
pub struct Origin {
    /// Its name (in every response body and the `X-Origin` header).
    pub name: Arc<str>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests served since start.
    pub hits: Arc<AtomicU64>,
    shared: Arc<Shared>,
    stop: Mutex<CancellationToken>,
}

impl Origin {
    /// Starts an origin named `name` on `addr` (port 0 picks one).
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Origin> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = Arc::from(name);
        let hits = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            name: name.clone(),
            hits: hits.clone(),
            connections: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            peak_inflight: AtomicU64::new(0),
            failing: AtomicU16::new(0),
            health: Mutex::new(HealthReply::Fixed(StatusCode::OK, "ok\n".into())),
        });
        let stop = CancellationToken::new();
        serve(listener, shared.clone(), stop.clone());
        Ok(Origin {
            name,
            addr,
            hits,
            shared,
            stop: Mutex::new(stop),
        })
    }

    /// Drops the listening socket and every open connection at once, like a crash.
    pub fn kill(&self) {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).cancel();
    }

    /// Listens again on the same address after [`Origin::kill`].
    pub async fn restart(&self) -> std::io::Result<()> {
        let listener = bind(self.addr)?;
        let stop = CancellationToken::new();
        serve(listener, self.shared.clone(), stop.clone());
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = stop;
        Ok(())
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Requests being served now.
    pub fn inflight(&self) -> u64 {
        self.shared.inflight.load(Ordering::Relaxed)
    }

    /// The most requests ever served at once.
    pub fn peak_inflight(&self) -> u64 {
        self.shared.peak_inflight.load(Ordering::Relaxed)
    }

    /// Makes `/healthz` answer `status` with `body` (default: 200 "ok\n").
    pub fn set_health(&self, status: u16, body: &str) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        *self.shared.health.lock().unwrap_or_else(|e| e.into_inner()) =
            HealthReply::Fixed(status, body.to_string());
    }

    /// Makes `/healthz` follow `pattern` (true: 200, false: 503), one entry per request,
    /// repeating.
    pub fn set_health_pattern(&self, pattern: &[bool]) {
        let reply = if pattern.is_empty() {
            HealthReply::Fixed(StatusCode::OK, "ok\n".into())
        } else {
            HealthReply::Pattern(pattern.to_vec(), 0)
        };
        *self.shared.health.lock().unwrap_or_else(|e| e.into_inner()) = reply;
    }

    /// Makes every route but `/healthz` answer `status` (None: serve normally again).
    pub fn set_failing(&self, status: Option<u16>) {
        self.shared
            .failing
            .store(status.unwrap_or(0), Ordering::Relaxed);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = crate::listener::bind(addr)?;
    TcpListener::from_std(sock)
}

fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            shared.connections.fetch_add(1, Ordering::Relaxed);
            let shared = shared.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let svc = service_fn(move |req| route(req, shared.clone()));
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    });
}

/// Counts a request in flight for as long as it is served.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(s: Arc<Shared>) -> Self {
        let now = s.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        s.peak_inflight.fetch_max(now, Ordering::SeqCst);
        InFlight(s)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn health_reply(s: &Shared) -> Response<Body> {
    let mut h = s.health.lock().unwrap_or_else(|e| e.into_inner());
    match &mut *h {
        HealthReply::Fixed(status, body) => reply(*status, &s.name, body.clone()),
        HealthReply::Pattern(p, i) => {
            let ok = p[*i % p.len()];
            *i += 1;
            if ok {
                reply(StatusCode::OK, &s.name, "ok\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, &s.name, "failing\n")
            }
        }
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn reply(status: StatusCode, name: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(name) {
        r.headers_mut().insert("x-origin", v);
    }
    r
}

async fn route(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    shared.hits.fetch_add(1, Ordering::Relaxed);
    let _inflight = InFlight::new(shared.clone());
    let name = &shared.name;
    let path = req.uri().path().to_string();
    // What the origin saw, for tests of path rewrites: `x-path` on every answer.
    let seen = req
        .uri()
        .path_and_query()
        .and_then(|p| HeaderValue::from_str(p.as_str()).ok());
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.as_slice() == ["healthz"] {
        return Ok(health_reply(&shared));
    }
    let failing = shared.failing.load(Ordering::Relaxed);
    if failing != 0 {
        let status = StatusCode::from_u16(failing).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(reply(status, name, format!("{name} is failing\n")));
    }
    if req.headers().contains_key(header::UPGRADE) {
        let proto = req.headers()[header::UPGRADE].clone();
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, name, Bytes::new());
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        r.headers_mut().insert(header::UPGRADE, proto);
        return Ok(r);
    }
    let r = match segs.as_slice() {
        ["echo"] => {
            let mut r = Response::new(req.into_body().boxed());
            r.headers_mut().insert(
                "x-origin",
                HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("origin")),
            );
            r
        }
        ["bytes", n] => {
            let n: usize = n.parse().unwrap_or(0).min(256 << 20);
            let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            reply(StatusCode::OK, name, body)
        }
        ["sleep", ms] => {
            let ms: u64 = ms.parse().unwrap_or(0).min(600_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(StatusCode::OK, name, format!("{name} slept {ms} ms\n"))
        }
        ["status", code] => {
            let code = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            reply(code, name, format!("{name} says {code}\n"))
        }
        ["sink"] => {
            // Reads the whole request body before answering, as most upload handlers do.
            match req.into_body().collect().await {
                Ok(b) => reply(
                    StatusCode::OK,
                    name,
                    format!("{name} received {} bytes\n", b.to_bytes().len()),
                ),
                Err(_) => reply(StatusCode::BAD_REQUEST, name, "body failed\n"),
            }
        }
        ["trailers"] => {
            // Body then trailers (as gRPC answers), and whether `TE: trailers` arrived.
            let te = req
                .headers()
                .get(header::TE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let body = Full::new(Bytes::from_static(b"payload\n"))
                .map_err(|never| match never {})
                .with_trailers(async move { Some(Ok(trailers)) })
                .boxed();
            let mut r = Response::new(body);
            if let Ok(v) = HeaderValue::from_str(&te) {
                r.headers_mut().insert("x-te-seen", v);
            }
            r.headers_mut()
                .insert(header::TRAILER, HeaderValue::from_static("grpc-status"));
            r
        }
        ["headers"] => {
            let mut s = String::new();
            for (k, v) in req.headers() {
                s.push_str(k.as_str());
                s.push_str(": ");
                s.push_str(v.to_str().unwrap_or("?"));
                s.push('\n');
            }
            reply(StatusCode::OK, name, s)
        }
        _ => reply(StatusCode::OK, name, format!("hello from {name}\n")),
    };
    let mut r = r;
    if let Some(v) = seen {
        r.headers_mut().insert("x-path", v);
    }
    Ok(r)
}

/// The demo's config: three origins behind an http listener and a tcp listener.
pub fn demo_config(port: u16, admin_port: u16, origins: &[&Origin]) -> String {
    let servers: Vec<String> = origins
        .iter()
        .map(|o| format!("  {{ addr = \"{}\", name = \"{}\" }},", o.addr, o.name))
        .collect();
    format!(
        r#"# Generated by `fulcrum demo`.
[admin]
bind = "127.0.0.1:{admin_port}"
allow_unauthenticated_loopback = true

[[listener]]
name = "web"
bind = "127.0.0.1:{port}"
protocol = "http"
pool = "demo"

[[listener]]
name = "relay"
bind = "127.0.0.1:{tcp}"
protocol = "tcp"
pool = "demo"

[[pool]]
name = "demo"
algorithm = "round_robin"
servers = [
{servers}
]

[pool.health]
kind = "http"
path = "/healthz"
interval = "1s"
timeout = "500ms"
rise = 2
fall = 2
"#,
        tcp = port.wrapping_add(1),
        servers = servers.join("\n")
    )
}
