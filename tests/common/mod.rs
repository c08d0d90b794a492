//! Shared test helpers: a fleet of real origins on loopback, fulcrum started in-process or
//! as a real process from a TOML string, an HTTP client, and `wait_until`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fulcrum::demo::Origin;
use fulcrum::Fulcrum;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const ANY: &str = "127.0.0.1:0";

/// Starts `n` origins named o0, o1, ...
pub async fn fleet(n: usize) -> Vec<Origin> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            Origin::start(&format!("o{i}"), ANY.parse().unwrap())
                .await
                .expect("origin starts"),
        );
    }
    v
}

/// `servers = [...]` entries for these origins.
pub fn servers(origins: &[&Origin]) -> String {
    origins
        .iter()
        .map(|o| format!("{{ addr = \"{}\", name = \"{}\" }}", o.addr, o.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A config with one http listener "web" over pool "app" with the given servers, plus `extra`
/// lines appended to the pool table (e.g. `algorithm = "..."`), and health as given.
pub fn http_config(servers: &str, pool_extra: &str, health: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"
allow_unauthenticated_loopback = true

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"

[[pool]]
name = "app"
servers = [ {servers} ]
{pool_extra}

[pool.health]
{health}
"#
    )
}

/// Fast health checks for tests.
pub const FAST_TCP_HEALTH: &str =
    "kind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1";
/// No active checks.
pub const NO_HEALTH: &str = "kind = \"none\"";

/// fulcrum running in this process.
pub struct Proxy {
    pub f: Fulcrum,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Proxy {
    pub async fn start(toml: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, toml).unwrap();
        let cfg =
            fulcrum::config::load(&path).unwrap_or_else(|e| panic!("test config is valid: {e}"));
        let f = Fulcrum::start(cfg).await.expect("fulcrum starts");
        Proxy { f, dir, path }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.f.listener_addr(listener).expect("listener exists")
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{}", self.addr(listener), path)
    }

    pub async fn admin(&self) -> SocketAddr {
        self.f.admin_addr().await.expect("admin listener")
    }

    /// Rewrites the config file and reloads.
    pub async fn reload_with(&self, toml: &str) -> Result<(), fulcrum::runtime::RuntimeError> {
        std::fs::write(&self.path, toml).unwrap();
        self.f.reload().await
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let f = self.f.clone();
        // Stop accepting at once; connections end with the test runtime.
        tokio::spawn(async move { f.shutdown(Duration::from_millis(100)).await });
    }
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response read whole.
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn origin(&self) -> String {
        self.headers
            .get("x-origin")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

pub async fn send(c: &HttpClient, req: http::Request<Full<Bytes>>) -> Result<Resp, String> {
    let r = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body,
    })
}

pub async fn get(c: &HttpClient, url: &str) -> Resp {
    send(
        c,
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .expect("request completes")
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; panics with `what` if not.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Counts responses per origin name over `n` GETs.
pub async fn spread(c: &HttpClient, url: &str, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let r = get(c, url).await;
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        *m.entry(r.origin()).or_insert(0) += 1;
    }
    m
}

/// fulcrum as a real process (for signals): started with JSON logs on stderr, which are
/// read to learn the bound addresses.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub addrs: HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub log: std::sync::mpsc::Receiver<String>,
}

impl Daemon {
    pub fn spawn(toml: &str) -> Daemon {
        Self::spawn_with_env(toml, &[])
    }

    pub fn spawn_with_env(toml: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, toml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fulcrum"));
        cmd.args([
            "--log-format",
            "json",
            "--log-level",
            "info",
            "run",
            "--config",
        ])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("fulcrum binary runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addrs = HashMap::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    let _ = child.kill();
                    panic!("fulcrum did not become ready")
                });
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            match v["message"].as_str() {
                Some("listening") => {
                    addrs.insert(
                        v["listener"].as_str().unwrap().to_string(),
                        v["addr"].as_str().unwrap().parse().unwrap(),
                    );
                }
                Some("admin listening") => admin = v["addr"].as_str().and_then(|a| a.parse().ok()),
                Some("fulcrum ready") => break,
                _ => {}
            }
        }
        Daemon {
            child,
            dir,
            path,
            addrs,
            admin,
            log: rx,
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a child PID we own.
        let rc = unsafe { libc_kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Log lines received so far (drains the channel).
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
