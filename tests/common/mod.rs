//! Shared test helpers: a fleet of real origins on loopback, fulcrum started in-process or
//! as a real process from a TOML string, an HTTP client, and `wait_until`.
#![allow(dead_code)]

pub mod dns;
pub mod etcd;

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

/// A loopback port that refuses connections for as long as the returned socket lives. The
/// socket is bound but never listens: the port cannot be handed to another test's listener,
/// nor picked as the source port of a connect to itself (a TCP self-connect would succeed).
pub fn refusing_port() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(ANY.parse().unwrap()).expect("bind");
    let addr = s.local_addr().expect("local addr");
    (s, addr)
}

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
        cmd.args(Self::ARGS).arg(&path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::run(cmd, dir, path)
    }

    const ARGS: [&'static str; 6] = [
        "--log-format",
        "json",
        "--log-level",
        "info",
        "run",
        "--config",
    ];

    /// Runs fulcrum inside the network namespace `ns` (`ip netns exec`, which becomes
    /// fulcrum: the child is the daemon itself).
    pub fn spawn_in_netns(toml: &str, ns: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, toml).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(env!("CARGO_BIN_EXE_fulcrum"))
            .args(Self::ARGS)
            .arg(&path);
        Self::run(cmd, dir, path)
    }

    /// Runs fulcrum with its open-files limit (RLIMIT_NOFILE) set to `nofile`, through
    /// util-linux's `prlimit`.
    pub fn spawn_limited(toml: &str, nofile: u32) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, toml).unwrap();
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg(env!("CARGO_BIN_EXE_fulcrum"))
            .args(Self::ARGS)
            .arg(&path);
        Self::run(cmd, dir, path)
    }

    /// Like `spawn_with_env`, and also sets `pid_var` to the daemon's own PID (as systemd
    /// sets WATCHDOG_PID): a shell exports its PID and then becomes fulcrum with `exec`.
    pub fn spawn_with_own_pid(toml: &str, env: &[(&str, &str)], pid_var: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fulcrum.toml");
        std::fs::write(&path, toml).unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "{pid_var}=$$; export {pid_var}; exec \"$0\" \"$@\""
            ))
            .arg(env!("CARGO_BIN_EXE_fulcrum"))
            .args(Self::ARGS)
            .arg(&path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::run(cmd, dir, path)
    }

    fn run(mut cmd: Command, dir: tempfile::TempDir, path: PathBuf) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
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

// ---- health and failover helpers -------------------------------------------------------

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl Proxy {
    /// The current generation of pool "app".
    pub fn app(&self) -> Arc<fulcrum::pool::Pool> {
        self.f.pool("app").expect("pool app exists")
    }

    /// The live state of server `name` of pool "app".
    pub fn server(&self, name: &str) -> Arc<fulcrum::backend::BackendState> {
        let pool = self.app();
        let s = pool
            .servers
            .iter()
            .find(|s| &*s.settings.name == name)
            .unwrap_or_else(|| panic!("server {name} in pool app"));
        s.state.clone()
    }

    /// Whether server `name` is in pool "app"'s current eligible table.
    pub fn eligible(&self, name: &str) -> bool {
        let pool = self.app();
        let s = pool
            .servers
            .iter()
            .find(|s| &*s.settings.name == name)
            .unwrap_or_else(|| panic!("server {name} in pool app"));
        pool.eligible().contains(s.idx)
    }

    /// The value of metric `family` whose labels include all of `labels` (0 if absent).
    pub fn metric_value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.f.metrics().render();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (head, value) = match line.rsplit_once(' ') {
                Some(p) => p,
                None => continue,
            };
            let (name, lbls) = match head.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (head, ""),
            };
            if name != family {
                continue;
            }
            if labels
                .iter()
                .all(|(k, v)| lbls.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            {
                return value.parse().unwrap_or(0.0);
            }
        }
        0.0
    }

    /// `fulcrum_health_checks_total` of server `name` with `result` ("success"/"failure").
    pub fn checks(&self, name: &str, result: &str) -> u64 {
        self.metric_value(
            "fulcrum_health_checks_total",
            &[("server", name), ("result", result)],
        ) as u64
    }

    /// `fulcrum_server_state_transitions_total` of server `name` to `to` ("up"/"down").
    pub fn transitions(&self, name: &str, to: &str) -> u64 {
        self.metric_value(
            "fulcrum_server_state_transitions_total",
            &[("server", name), ("to", to)],
        ) as u64
    }
}

/// A config line `servers = [...]` entry with extra keys, e.g. `backup = true`.
pub fn server_with(o: &Origin, extra: &str) -> String {
    format!(
        "{{ addr = \"{}\", name = \"{}\", {extra} }}",
        o.addr, o.name
    )
}

/// Listens on a loopback port of its own and runs `conn` on each connection it accepts,
/// each in a task of its own, until the returned task is aborted (the servers below abort
/// it when dropped). `conn` itself runs at the accept: what it does before the future it
/// returns (counting the connection) is done before anything is read.
pub async fn serve_each<F, Fut>(conn: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(conn(s));
        }
    });
    (addr, task)
}

/// A small TCP server for heartbeat checks: answers each "PING\r\n" with "+PONG\r\n", and
/// closes a connection after `replies_per_conn` answers (0: never).
pub struct PingServer {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicU64>,
    pub pings: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl PingServer {
    pub async fn start(replies_per_conn: u64) -> PingServer {
        let connections = Arc::new(AtomicU64::new(0));
        let pings = Arc::new(AtomicU64::new(0));
        let (c, p) = (connections.clone(), pings.clone());
        let (addr, task) = serve_each(move |mut s| {
            c.fetch_add(1, Ordering::Relaxed);
            let p = p.clone();
            async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 256];
                let mut replies = 0;
                loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                        let line: Vec<u8> = buf.drain(..end + 2).collect();
                        if line.as_slice() != b"PING\r\n" {
                            let _ = s.write_all(b"-ERR unknown\r\n").await;
                            continue;
                        }
                        p.fetch_add(1, Ordering::Relaxed);
                        if s.write_all(b"+PONG\r\n").await.is_err() {
                            return;
                        }
                        replies += 1;
                        if replies_per_conn > 0 && replies >= replies_per_conn {
                            return;
                        }
                    }
                }
            }
        })
        .await;
        PingServer {
            addr,
            connections,
            pings,
            task,
        }
    }
}

impl Drop for PingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server that accepts connections, reads what comes, and never answers.
pub struct SilentServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    pub async fn start() -> SilentServer {
        let (addr, task) = serve_each(|mut s| async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        })
        .await;
        SilentServer { addr, task }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP server that reads each request whole (head and Content-Length body) and then
/// resets the connection without answering: the request reached it, no response came back.
pub struct ResetServer {
    pub addr: SocketAddr,
    /// Requests received.
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ResetServer {
    pub async fn start() -> ResetServer {
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let (addr, task) = serve_each(move |mut s| {
            let h = h.clone();
            async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                h.fetch_add(1, Ordering::Relaxed);
                // SO_LINGER 0: close with a RST, like a crashed server.
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            }
        })
        .await;
        ResetServer { addr, hits, task }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for ResetServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `n` GETs to `url`, one at a time, returning how many came back 200.
pub async fn gets_ok(c: &HttpClient, url: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if get(c, url).await.status == 200 {
            ok += 1;
        }
    }
    ok
}

impl Daemon {
    /// Waits up to `limit` for a JSON log line for which `pred` holds; returns it.
    pub fn wait_log(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("timed out waiting for log line: {what}"),
            }
        }
    }
}

/// An admin API call: `method path` with an optional bearer token and body.
pub async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Resp {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(
        &client(),
        b.body(Full::new(Bytes::from(body.to_string()))).unwrap(),
    )
    .await
    .expect("admin call completes")
}

/// GET /status as JSON.
pub async fn status_json(admin: SocketAddr) -> serde_json::Value {
    let r = admin_call(admin, "GET", "/status", None, "").await;
    assert_eq!(r.status, 200, "/status: {}", r.text());
    serde_json::from_slice(&r.body).expect("/status is JSON")
}

/// The JSON of server `name` in pool `pool` from a `/status` document.
pub fn status_server<'a>(
    status: &'a serde_json::Value,
    pool: &str,
    name: &str,
) -> Option<&'a serde_json::Value> {
    status["pools"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == pool)?["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// The value of the sample `name{labels}` in a Prometheus text scrape, labels in any order.
pub fn metric(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let have: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(',').collect()
        };
        let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        if have.len() != want.len() || !want.iter().all(|w| have.contains(&w.as_str())) {
            return None;
        }
        value.parse().ok()
    })
}

/// GET /metrics.
pub async fn scrape(admin: SocketAddr) -> String {
    let r = admin_call(admin, "GET", "/metrics", None, "").await;
    assert_eq!(r.status, 200);
    r.text()
}

/// Reads one HTTP/1.1 response (head and a Content-Length body) from a raw connection.
/// Returns the head (status line and headers, lower-cased names) and the body.
pub async fn read_response(s: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.expect("read response head");
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.expect("read response body");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    (head, body)
}

/// Reads a response head (status line and headers, lower-cased) from a raw connection a
/// byte at a time, so that nothing after it is consumed: for a 101, whose tunnel's bytes
/// follow the head.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.expect("read response head"),
            1,
            "connection open while reading a response head: {head:?}"
        );
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

/// Sends a GET on a raw connection and reads the response.
pub async fn raw_get(s: &mut tokio::net::TcpStream, path: &str) -> (String, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    read_response(s).await
}

/// Opens a connection to `addr`, writes `request` byte for byte, and reads the response;
/// the connection comes back for whatever the test does with it next.
pub async fn raw_request(
    addr: SocketAddr,
    request: &[u8],
) -> (tokio::net::TcpStream, String, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write request");
    let (head, body) = read_response(&mut s).await;
    (s, head, body)
}

// ---- raw origins for framing tests -----------------------------------------------------

/// A raw TCP origin that records every byte it receives and answers each complete request
/// (head plus a Content-Length or chunked body) with fixed bytes.
pub struct RawOrigin {
    pub addr: SocketAddr,
    pub received: Arc<std::sync::Mutex<Vec<u8>>>,
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Whether `buf` starting at `from` holds a complete request; returns where it ends.
pub fn request_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = &buf[from..];
    let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&rest[..head_end]).to_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let body = &rest[head_end..];
        let end = body.windows(5).position(|w| w == b"0\r\n\r\n")? + 5;
        return Some(from + head_end + end);
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (rest.len() >= head_end + len).then_some(from + head_end + len)
}

/// Reads from `s` into `buf` until `buf` holds a complete request ([`request_end`] from its
/// start); returns where that request ends, or `None` once the peer closes or fails first.
pub async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = request_end(buf, 0) {
            return Some(end);
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

impl RawOrigin {
    pub async fn start(reply: &'static [u8]) -> RawOrigin {
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let (rec, conns) = (received.clone(), connections.clone());
        let (addr, task) = serve_each(move |mut s| {
            conns.fetch_add(1, Ordering::SeqCst);
            let rec = rec.clone();
            async move {
                let mut buf = Vec::new();
                let mut done = 0;
                let mut chunk = [0u8; 16384];
                loop {
                    let n = match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    rec.lock().unwrap().extend_from_slice(&chunk[..n]);
                    while let Some(end) = request_end(&buf, done) {
                        done = end;
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .await;
        RawOrigin {
            addr,
            received,
            connections,
            task,
        }
    }

    /// Everything received so far, as text.
    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the peer closes `s` (EOF or reset), reading and discarding what it sends;
/// returns everything read.
pub async fn read_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 16384];
    let read_all = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(all)
}

/// A connection to `to` from source address `from` (any of 127.0.0.0/8 is loopback, so
/// 127.0.0.2 is a second client).
pub async fn connect_from(from: &str, to: SocketAddr) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// One raw HTTP/1.1 `GET /headers` from `from` with `extra_headers`; the answer's head
/// (lower-case) and body (the demo origin lists the headers it received).
pub async fn request_from(from: &str, to: SocketAddr, extra_headers: &str) -> (String, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = connect_from(from, to).await;
    s.write_all(format!("GET /headers HTTP/1.1\r\nHost: t\r\n{extra_headers}\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    (head, String::from_utf8_lossy(&body).into_owned())
}

// ---- network namespaces --------------------------------------------------------------

/// Why this machine cannot make network namespaces, if it cannot: they need root and
/// iproute2's `ip netns`. The probe namespace is named after the process and `tag`.
pub fn netns_unavailable(tag: &str) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    let probe = format!("fl{tag}{}-probe", std::process::id());
    let ip = |verb: &str| {
        Command::new("ip")
            .args(["netns", verb, &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = ip("add");
    ip("del");
    (!ok).then(|| "`ip netns` is unavailable (iproute2 missing, or no permission)".into())
}

/// Whether to skip a test this machine cannot run (`why`), printing why; under CI, which
/// must run it, panics instead.
pub fn skip_unless_ci(why: Option<&str>) -> bool {
    match why {
        None => false,
        Some(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {why}");
            true
        }
        Some(why) => panic!("CI must run this test, but {why}"),
    }
}

/// Sum of `fulcrum_server_errors_total` over every server and kind: failures charged to
/// servers.
pub fn server_errors(p: &Proxy) -> f64 {
    let text = p.f.metrics().render();
    text.lines()
        .filter(|l| l.starts_with("fulcrum_server_errors_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
