//! The training run of a profile-guided build (`benches/pgo.sh`): drives a fulcrum binary
//! through the request paths the benchmarks measure, with nothing but this crate's own
//! dependencies, so that a machine without wrk, h2load, HAProxy or nginx (a container's build
//! stage) can make the profile.
//!
//! `pgo_train FULCRUM_BIN [--seconds S] [--profiles DIR]` starts three HTTP/1.1 keep-alive origins in this
//! process (`/bytes/16384` answers 16 KiB, anything else "ok\n" once it has read the request's
//! body, one write each) and replays the benchmarks' shape against them, S seconds a phase
//! (default 3):
//! - four fulcrum processes, one worker each, configured as `benches/compare.py`'s targets
//!   (plain, the access log on, 100 routes, a rate limit), each taking that script's
//!   scenarios: HTTP/1 small at 50 and 200 connections, 16 KiB at 50, h2 at 20 connections
//!   × 100 streams, L4 at 50; the plain one also its POSTs of 1 KiB and 16 KiB at 50, with
//!   a `Content-Length`, then chunked in 4 KiB chunks (`chunk1k`, `chunk16k`);
//! - one with two HTTPS listeners (ECDSA P-256 and RSA-2048 certificates made here by rcgen),
//!   taking `benches/tls-handshake.sh`'s: full handshakes with each certificate, resumed
//!   handshakes and HTTPS keep-alive.
//!
//! Each process is stopped with SIGTERM, so that an instrumented binary writes its counts as
//! it exits; with `--profiles DIR` it writes them to DIR, one file per process named after
//! its variant (`plain-`, `log-`, `routes-`, `ratelimit-`, `tls-`), for `pgo.sh` to weigh. Why the same shape: a profile weighs code by how often the training runs it, and
//! one that gives the benchmarks' paths their weight builds the binary they measure best.
//!
//! Every phase is bounded in time and in count, every socket is on 127.0.0.1, and the exit
//! status is 1 if any request failed, a phase served none or no TLS session was resumed: the
//! training doubles as an end-to-end check (`.ci/run` runs it briefly against the debug
//! build).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// Requests per phase at most, whatever its time.
const PHASE_CAP: u64 = 3_000_000;
/// A connection task gives up after this many errors (a dead proxy must not spin).
const ERRORS_PER_TASK: u64 = 20;
const BIG: usize = 16 * 1024;

fn usage() -> ! {
    eprintln!("usage: pgo_train FULCRUM_BIN [--seconds S] [--profiles DIR]");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = PathBuf::from(args.next().unwrap_or_else(|| usage()));
    let mut seconds = 3.0f64;
    let mut profiles = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--profiles" => profiles = Some(PathBuf::from(args.next().unwrap_or_else(|| usage()))),
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| *s > 0.0 && *s <= 600.0)
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let failed = rt.block_on(train(
        &bin,
        Duration::from_secs_f64(seconds),
        profiles.as_deref(),
    ));
    if failed {
        std::process::exit(1);
    }
}

/// What a training process is configured with, beside its plain HTTP and L4 listeners.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    AccessLog,
    Routes,
    RateLimit,
    /// Two HTTPS listeners instead, one with an ECDSA and one with an RSA certificate.
    Tls,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::AccessLog => "log",
            Variant::Routes => "routes",
            Variant::RateLimit => "ratelimit",
            Variant::Tls => "tls",
        }
    }
}

/// Runs a fulcrum process per variant through its phases; true if anything failed. With
/// `profiles`, an instrumented binary writes its counts there, one file per process named
/// after the variant (`tls-...profraw`), so that `benches/pgo.sh` can weigh them.
async fn train(bin: &Path, phase: Duration, profiles: Option<&Path>) -> bool {
    let dir = tempfile::tempdir().expect("temporary directory");
    let certs = Certs::write(dir.path());
    let mut origins = Vec::new();
    for _ in 0..3 {
        origins.push(origin().await);
    }
    let mut failed = false;
    for v in [
        Variant::Plain,
        Variant::AccessLog,
        Variant::Routes,
        Variant::RateLimit,
        Variant::Tls,
    ] {
        let ports = Ports::pick();
        let cfg = dir.path().join(format!("{}.toml", v.name()));
        let log_path = dir.path().join(format!("{}.log", v.name()));
        std::fs::write(&cfg, config(v, &ports, &origins, &certs, &log_path)).expect("write config");
        let profile = profiles.map(|d| d.join(format!("{}-%p-%m.profraw", v.name())));
        let mut proxy = Proxy::start(bin, &cfg, profile.as_deref(), &ports.serving(v)).await;
        println!("pgo_train: {}", v.name());
        failed |= phases(v, &ports, &certs, phase).await;
        let status = proxy.stop();
        if !status.success() {
            println!("pgo_train: fulcrum exited with {status}");
            failed = true;
        }
        if v == Variant::AccessLog && std::fs::metadata(&log_path).map_or(0, |m| m.len()) == 0 {
            println!("pgo_train: the access log stayed empty");
            failed = true;
        }
    }
    failed
}

/// One process's phases, in order: the scenarios of `benches/compare.py load`, or those of
/// `benches/tls-handshake.sh`; true if any failed.
async fn phases(v: Variant, p: &Ports, certs: &Certs, d: Duration) -> bool {
    let (small, big) = (Ask::get("/"), Ask::get("/bytes/16384"));
    let (post1k, post16k) = (Ask::post("/", 1024), Ask::post("/", BIG));
    let (chunk1k, chunk16k) = (Ask::chunked("/", 1024), Ask::chunked("/", BIG));
    let mut ok = if v == Variant::Tls {
        let full = certs.client(true, false);
        let resumed = certs.client(true, true);
        let https = certs.client(false, false);
        [
            h1("full-ecdsa-c4", p.https_ecdsa, full.clone(), small, 4, d).await,
            h1("full-rsa-c4", p.https_rsa, full, small, 4, d).await,
            h1("resumed-c4", p.https_ecdsa, resumed, small, 4, d).await,
            h1("https-keepalive-c50", p.https_ecdsa, https, small, 50, d).await,
        ]
        .into_iter()
        .all(|ok| ok)
    } else {
        let c = Client::Plain;
        let mut ok = [
            h1("http-small-c50", p.http, c.clone(), small, 50, d).await,
            h1("http-small-c200", p.http, c.clone(), small, 200, d).await,
            h1("http-16k-c50", p.http, c.clone(), big, 50, d).await,
            h2("h2-small-c20", p.http, 20, 100, d).await,
            h1("tcp-small-c50", p.tcp, c.clone(), small, 50, d).await,
        ]
        .into_iter()
        .all(|ok| ok);
        // The request-body path, once: the other variants change nothing on it.
        if v == Variant::Plain {
            ok &= h1("http-post1k-c50", p.http, c.clone(), post1k, 50, d).await;
            ok &= h1("http-post16k-c50", p.http, c.clone(), post16k, 50, d).await;
            ok &= h1("http-chunk1k-c50", p.http, c.clone(), chunk1k, 50, d).await;
            ok &= h1("http-chunk16k-c50", p.http, c, chunk16k, 50, d).await;
        }
        ok
    };
    ok &= metrics(p.admin).await;
    !ok
}

// ------------------------------------------------------------------------------ the origins

/// An HTTP/1.1 keep-alive origin on a port of its own, serving until the process ends.
async fn origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("origin bind");
    let addr = l.local_addr().expect("origin address");
    let answers = Arc::new(Answers::new(addr.port()));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s, answers.clone()));
        }
    });
    addr
}

/// The responses of `benches/compare.py`'s nginx origin, head for head: the profile should
/// weigh the header handling the benchmarks cause (a server's Date spares hyper adding its
/// own; `Connection: keep-alive` sends each field past the hop-by-hop check). Nothing reads
/// the Date's value.
struct Answers {
    small: Vec<u8>,
    big: Vec<u8>,
}

impl Answers {
    fn new(port: u16) -> Answers {
        let date = "Thu, 01 Jan 2026 00:00:00 GMT";
        let small = format!(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: {date}\r\nContent-Type: text/plain\r\n\
             Content-Length: 3\r\nConnection: keep-alive\r\nX-Origin: {port}\r\n\r\nok\n"
        );
        let mut big = format!(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: {date}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {BIG}\r\n\
             Last-Modified: {date}\r\nConnection: keep-alive\r\nX-Origin: {port}\r\n\
             Accept-Ranges: bytes\r\n\r\n"
        )
        .into_bytes();
        big.extend((0..BIG).map(|i| (i % 251) as u8));
        Answers {
            small: small.into_bytes(),
            big,
        }
    }
}

async fn serve(mut s: TcpStream, answers: Arc<Answers>) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    loop {
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            // Answered once the whole body is in, as nginx's origin does a POST's.
            let Some(whole) = request_end(&buf, end) else {
                break;
            };
            let wants_big = buf[..end].starts_with(b"GET /bytes/16384 ");
            let answer = if wants_big {
                &answers.big
            } else {
                &answers.small
            };
            if s.write_all(answer).await.is_err() {
                return;
            }
            buf.drain(..whole);
        }
        if buf.len() > 64 * 1024 {
            return;
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where the request whose head ends at `buf[end]` (its blank line) ends, once its body is
/// all in `buf`. A chunked body ends with its last chunk: the trainer's own bodies have no
/// trailers, and their bytes (`x`) cannot look like one.
fn request_end(buf: &[u8], end: usize) -> Option<usize> {
    let (head, body) = (&buf[..end], end + 4);
    let field = |want: &[u8]| {
        head.split(|&b| b == b'\n').find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(want)
                .then(|| value[1..].trim_ascii())
        })
    };
    if field(b"transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        // The body starts with a chunk-size line, so the last chunk follows a CRLF.
        let last = find(&buf[body - 2..], b"\r\n0\r\n\r\n")?;
        return Some(body - 2 + last + 7);
    }
    let length: usize = field(b"content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    (buf.len() >= body + length).then_some(body + length)
}

// ------------------------------------------------------------------------------ the proxy

struct Ports {
    admin: SocketAddr,
    http: SocketAddr,
    tcp: SocketAddr,
    https_ecdsa: SocketAddr,
    https_rsa: SocketAddr,
}

impl Ports {
    /// Free ports, held together while they are picked so that no two are the same.
    fn pick() -> Ports {
        let held: Vec<std::net::TcpListener> = (0..5)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
            .collect();
        let a: Vec<SocketAddr> = held.iter().map(|l| l.local_addr().unwrap()).collect();
        Ports {
            admin: a[0],
            http: a[1],
            tcp: a[2],
            https_ecdsa: a[3],
            https_rsa: a[4],
        }
    }

    /// The listeners a variant's config opens.
    fn serving(&self, v: Variant) -> Vec<SocketAddr> {
        match v {
            Variant::Tls => vec![self.https_ecdsa, self.https_rsa],
            _ => vec![self.http, self.tcp],
        }
    }
}

/// The config of `benches/compare.py`'s targets (`fulcrum`, `fulcrum+log`, `fulcrum+routes`,
/// `fulcrum+ratelimit`) and of `tls-handshake.sh`'s candidate, one worker each.
fn config(v: Variant, p: &Ports, origins: &[SocketAddr], c: &Certs, log: &Path) -> String {
    let servers: Vec<String> = origins
        .iter()
        .map(|o| format!("{{ addr = \"{o}\" }}"))
        .collect();
    let servers = servers.join(", ");
    let mut s = String::new();
    if v == Variant::AccessLog {
        s += &format!(
            "[access_log]\nenabled = true\npath = \"{}\"\n\n",
            log.display()
        );
    }
    s += &format!(
        "[runtime]\nworker_threads = 1\nshutdown_grace = \"2s\"\n\n[admin]\nbind = \"{}\"\n\n",
        p.admin
    );
    let listener = |name: &str, addr: SocketAddr, proto: &str| {
        format!("[[listener]]\nname = \"{name}\"\nbind = \"{addr}\"\nprotocol = \"{proto}\"\npool = \"origins\"\n\n")
    };
    let limit = "[listener.rate_limit]\nrate = 100000000\nburst = 100000000\n\n";
    if v == Variant::Tls {
        for (name, addr, cert, key) in [
            ("https_ecdsa", p.https_ecdsa, &c.ecdsa_cert, &c.ecdsa_key),
            ("https_rsa", p.https_rsa, &c.rsa_cert, &c.rsa_key),
        ] {
            s += &listener(name, addr, "http");
            s += &format!(
                "[listener.tls]\ncertificates = [ {{ cert = \"{}\", key = \"{}\" }} ]\n\n",
                cert.display(),
                key.display()
            );
        }
    } else {
        s += &listener("http", p.http, "http");
        if v == Variant::RateLimit {
            s += limit;
        }
        if v == Variant::Routes {
            // The benchmarks' 100 routes: hosts, prefixes and regexes, the last catching all.
            for i in 0..99 {
                let m = match i % 3 {
                    0 => format!("host = [\"site{i}.example.com\", \"*.site{i}.example.org\"]"),
                    1 => format!("path_prefix = \"/service-{i}/\""),
                    _ => format!("path_regex = \"^/user/{i}/[0-9]+$\""),
                };
                s += &format!("[[listener.route]]\nname = \"r{i}\"\n{m}\npool = \"origins\"\n\n");
            }
            s += "[[listener.route]]\nname = \"last\"\npath_prefix = \"/\"\npool = \"origins\"\n\n";
        }
        s += &listener("relay", p.tcp, "tcp");
        if v == Variant::RateLimit {
            s += limit;
        }
    }
    s += &format!(
        "[[pool]]\nname = \"origins\"\nservers = [ {servers} ]\n\n\
         [pool.health]\nkind = \"tcp\"\ninterval = \"2s\"\n"
    );
    s
}

/// A fulcrum child process, killed if this process ends without stopping it.
struct Proxy {
    child: Option<Child>,
}

impl Proxy {
    async fn start(
        bin: &Path,
        cfg: &Path,
        profile: Option<&Path>,
        listening: &[SocketAddr],
    ) -> Proxy {
        let mut cmd = Command::new(bin);
        if let Some(p) = profile {
            cmd.env("LLVM_PROFILE_FILE", p);
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(cfg)
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut proxy = Proxy { child: Some(child) };
        let until = Instant::now() + Duration::from_secs(30);
        for &addr in listening {
            while TcpStream::connect(addr).await.is_err() {
                let child = proxy.child.as_mut().expect("started");
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("fulcrum exited before it listened on {addr}: {status}");
                }
                assert!(
                    Instant::now() < until,
                    "fulcrum did not listen on {addr} in 30 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        proxy
    }

    /// SIGTERM, then the exit status (SIGKILL after 30 s).
    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("stopped once");
        // SAFETY: kill(2) on our own child's pid, which has not been waited for yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for fulcrum") {
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                return child.wait().expect("wait for fulcrum");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ------------------------------------------------------------------------------ TLS

struct Certs {
    ecdsa_cert: PathBuf,
    ecdsa_key: PathBuf,
    rsa_cert: PathBuf,
    rsa_key: PathBuf,
    roots: rustls::RootCertStore,
}

impl Certs {
    /// Self-signed certificates for "localhost", ECDSA P-256 and RSA-2048, as PEM files.
    fn write(dir: &Path) -> Certs {
        let mut roots = rustls::RootCertStore::empty();
        let mut make = |alg: &'static rcgen::SignatureAlgorithm, name: &str| {
            let key = rcgen::KeyPair::generate_for(alg).expect("key generation");
            let params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .expect("certificate parameters");
            let cert = params.self_signed(&key).expect("self-signed certificate");
            roots
                .add(CertificateDer::from(cert.der().to_vec()))
                .expect("trust the certificate");
            let (c, k) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem()).expect("write certificate");
            std::fs::write(&k, key.serialize_pem()).expect("write key");
            (c, k)
        };
        let (ecdsa_cert, ecdsa_key) = make(&rcgen::PKCS_ECDSA_P256_SHA256, "ecdsa");
        let (rsa_cert, rsa_key) = make(&rcgen::PKCS_RSA_SHA256, "rsa");
        Certs {
            ecdsa_cert,
            ecdsa_key,
            rsa_cert,
            rsa_key,
            roots,
        }
    }

    /// A client that trusts both certificates; with `resume`, it keeps TLS 1.3 tickets.
    fn client(&self, handshakes: bool, resume: bool) -> Client {
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        if !resume {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        Client::Tls {
            connector: TlsConnector::from(Arc::new(cfg)),
            handshakes,
            resume,
        }
    }
}

// ------------------------------------------------------------------------------ the clients

#[derive(Clone)]
enum Client {
    Plain,
    /// TLS; with `handshakes`, a new connection (a handshake) for every request; with
    /// `resume`, the client keeps TLS 1.3 tickets and the phase fails unless it resumed.
    Tls {
        connector: TlsConnector,
        handshakes: bool,
        resume: bool,
    },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Client {
    /// A connection, and whether its TLS handshake resumed a session.
    async fn connect(&self, addr: SocketAddr) -> io::Result<(Box<dyn Io>, bool)> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        match self {
            Client::Plain => Ok((Box::new(tcp), false)),
            Client::Tls { connector, .. } => {
                let name = ServerName::try_from("localhost").expect("a DNS name");
                let tls = connector.connect(name, tcp).await?;
                let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
                Ok((Box::new(tls), resumed))
            }
        }
    }

    fn one_request_each(&self) -> bool {
        matches!(
            self,
            Client::Tls {
                handshakes: true,
                ..
            }
        )
    }

    fn must_resume(&self) -> bool {
        matches!(self, Client::Tls { resume: true, .. })
    }
}

/// What a phase's tasks counted.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: AtomicU64,
    resumed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }

    /// Prints the phase's line; true if it served requests and none failed.
    fn report(&self, name: &str, started: Instant) -> bool {
        let ok = self.ok.load(Ordering::Relaxed);
        let errors = self.errors.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        print!(
            "  {name:<22} {ok:>9} requests {:>9.0}/s  {errors} errors",
            ok as f64 / secs
        );
        let resumed = self.resumed.load(Ordering::Relaxed);
        if resumed > 0 {
            print!(", {resumed} handshakes resumed");
        }
        if let Some(e) = self.first_error.lock().unwrap().as_ref() {
            print!(" (first: {e})");
        }
        println!();
        ok > 0 && errors == 0
    }

    fn going(&self, until: Instant) -> bool {
        Instant::now() < until && self.ok.load(Ordering::Relaxed) < PHASE_CAP
    }
}

/// What each request of a phase is: a GET of `path`, or a POST of `body` bytes to it (as
/// `compare.py`'s wrk script sends one), with a `Content-Length` or chunked in chunks of
/// `chunk` bytes (its `chunkNk`: 4 KiB).
#[derive(Clone, Copy)]
struct Ask {
    path: &'static str,
    body: usize,
    chunk: usize,
}

impl Ask {
    fn get(path: &'static str) -> Ask {
        Ask {
            path,
            body: 0,
            chunk: 0,
        }
    }

    fn post(path: &'static str, body: usize) -> Ask {
        Ask {
            path,
            body,
            chunk: 0,
        }
    }

    fn chunked(path: &'static str, body: usize) -> Ask {
        Ask {
            path,
            body,
            chunk: 4096,
        }
    }

    /// The request, head and body, for the proxy at `addr`; head and body go in one write.
    fn request(self, addr: SocketAddr) -> Vec<u8> {
        // As wrk and h2load ask: the address as the host, little else.
        let Ask { path, body, chunk } = self;
        if body == 0 {
            let get =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pgo_train\r\n\r\n");
            return get.into_bytes();
        }
        let framing = if chunk == 0 {
            format!("Content-Length: {body}")
        } else {
            "Transfer-Encoding: chunked".to_string()
        };
        let mut r = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: pgo_train\r\n\
             Content-Type: application/octet-stream\r\n{framing}\r\n\r\n"
        )
        .into_bytes();
        if chunk == 0 {
            r.resize(r.len() + body, b'x');
            return r;
        }
        let mut left = body;
        while left > 0 {
            let n = left.min(chunk);
            r.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            r.resize(r.len() + n, b'x');
            r.extend_from_slice(b"\r\n");
            left -= n;
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    }
}

/// HTTP/1.1 keep-alive requests over `conns` connections for `d`.
async fn h1(
    name: &str,
    addr: SocketAddr,
    client: Client,
    ask: Ask,
    conns: usize,
    d: Duration,
) -> bool {
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + d;
    let request: Arc<[u8]> = ask.request(addr).into();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (tally, client, request) = (tally.clone(), client.clone(), request.clone());
            tokio::spawn(async move {
                let mut conn: Option<Box<dyn Io>> = None;
                let mut buf = Vec::with_capacity(BIG + 1024);
                let mut errors = 0;
                while tally.going(until) && errors < ERRORS_PER_TASK {
                    let result = async {
                        if conn.is_none() {
                            let (c, resumed) = client.connect(addr).await?;
                            tally.resumed.fetch_add(resumed as u64, Ordering::Relaxed);
                            conn = Some(c);
                        }
                        exchange(conn.as_mut().unwrap(), &request, &mut buf).await
                    }
                    .await;
                    match result {
                        Ok(()) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            if client.one_request_each() {
                                conn = None;
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            tally.error(e);
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    if client.must_resume() && tally.resumed.load(Ordering::Relaxed) == 0 {
        tally.error("no handshake resumed a session");
    }
    tally.report(name, started)
}

/// One request and its whole response, which must be a 200 with a content-length.
async fn exchange(s: &mut Box<dyn Io>, request: &[u8], buf: &mut Vec<u8>) -> io::Result<()> {
    s.write_all(request).await?;
    buf.clear();
    loop {
        if s.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed mid-response",
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        if resp.code != Some(200) {
            let code = resp.code.unwrap_or(0);
            return Err(io::Error::other(format!("status {code}")));
        }
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
            .ok_or_else(|| io::Error::other("no content-length"))?;
        while buf.len() < head + len {
            if s.read_buf(buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed mid-body",
                ));
            }
        }
        return Ok(());
    }
}

/// h2 with prior knowledge: `conns` connections, `streams` requests in flight on each.
async fn h2(name: &str, addr: SocketAddr, conns: usize, streams: usize, d: Duration) -> bool {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let until = started + d;
    let uri = format!("http://{addr}/");
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let io = match TcpStream::connect(addr).await {
            Ok(s) => TokioIo::new(s),
            Err(e) => {
                tally.error(e);
                continue;
            }
        };
        let (send, conn) =
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await {
                Ok(pair) => pair,
                Err(e) => {
                    tally.error(e);
                    continue;
                }
            };
        tokio::spawn(conn);
        for _ in 0..streams {
            let (tally, mut send, uri) = (tally.clone(), send.clone(), uri.clone());
            tasks.push(tokio::spawn(async move {
                let mut errors = 0;
                while tally.going(until) && errors < ERRORS_PER_TASK {
                    let req = http::Request::get(&uri)
                        .body(Empty::<Bytes>::new())
                        .expect("a request");
                    let result = async {
                        let resp = send.send_request(req).await?;
                        let status = resp.status();
                        resp.into_body().collect().await?;
                        Ok::<_, hyper::Error>(status)
                    }
                    .await;
                    match result {
                        Ok(s) if s == http::StatusCode::OK => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(s) => {
                            errors += 1;
                            tally.error(format!("status {s}"));
                        }
                        Err(e) => {
                            errors += 1;
                            tally.error(e);
                        }
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    tally.report(name, started)
}

/// A scrape of the admin listener's /metrics (the path Prometheus takes).
async fn metrics(admin: SocketAddr) -> bool {
    let tally = Tally::default();
    let started = Instant::now();
    let request = b"GET /metrics HTTP/1.1\r\nhost: admin\r\n\r\n";
    let mut buf = Vec::new();
    for _ in 0..20 {
        let r = async {
            let mut s: Box<dyn Io> = Box::new(TcpStream::connect(admin).await?);
            exchange(&mut s, request, &mut buf).await
        }
        .await;
        match r {
            Ok(()) => _ = tally.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => tally.error(e),
        }
    }
    tally.report("metrics", started)
}
