//! In-process origin servers: the backends of `fulcrum demo`, and the real origins the
//! integration tests run behind the proxy.
//!
//! An [`Origin`] is a small HTTP/1.1 + h2c server on loopback that says its own name and
//! offers a few test routes (echo, sized bodies, sleeps, status codes, header dumps,
//! upgrades). It can be killed (every connection dropped at once, like a crashed process)
//! and restarted on the same address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// A running origin server.
pub struct Origin {
    /// Its name (in every response body and the `X-Origin` header).
    pub name: Arc<str>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests served since start.
    pub hits: Arc<AtomicU64>,
    stop: Mutex<CancellationToken>,
}

impl Origin {
    /// Starts an origin named `name` on `addr` (port 0 picks one).
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Origin> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = Arc::from(name);
        let hits = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        serve(listener, name.clone(), hits.clone(), stop.clone());
        Ok(Origin {
            name,
            addr,
            hits,
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
        serve(listener, self.name.clone(), self.hits.clone(), stop.clone());
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = stop;
        Ok(())
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
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

fn serve(listener: TcpListener, name: Arc<str>, hits: Arc<AtomicU64>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            let name = name.clone();
            let hits = hits.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let svc = service_fn(move |req| route(req, name.clone(), hits.clone()));
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
    name: Arc<str>,
    hits: Arc<AtomicU64>,
) -> Result<Response<Body>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
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
        let mut r = reply(StatusCode::SWITCHING_PROTOCOLS, &name, Bytes::new());
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        r.headers_mut().insert(header::UPGRADE, proto);
        return Ok(r);
    }
    let r = match segs.as_slice() {
        ["healthz"] => reply(StatusCode::OK, &name, "ok\n"),
        ["echo"] => {
            let mut r = Response::new(req.into_body().boxed());
            r.headers_mut().insert(
                "x-origin",
                HeaderValue::from_str(&name).unwrap_or(HeaderValue::from_static("origin")),
            );
            r
        }
        ["bytes", n] => {
            let n: usize = n.parse().unwrap_or(0).min(256 << 20);
            let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            reply(StatusCode::OK, &name, body)
        }
        ["sleep", ms] => {
            let ms: u64 = ms.parse().unwrap_or(0).min(600_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(StatusCode::OK, &name, format!("{name} slept {ms} ms\n"))
        }
        ["status", code] => {
            let code = code
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            reply(code, &name, format!("{name} says {code}\n"))
        }
        ["headers"] => {
            let mut s = String::new();
            for (k, v) in req.headers() {
                s.push_str(k.as_str());
                s.push_str(": ");
                s.push_str(v.to_str().unwrap_or("?"));
                s.push('\n');
            }
            reply(StatusCode::OK, &name, s)
        }
        _ => reply(StatusCode::OK, &name, format!("hello from {name}\n")),
    };
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
