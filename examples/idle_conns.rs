//! The two helper roles of `benches/idle-conns.sh`: a small origin, and a client that opens
//! many connections of one kind through fulcrum and then holds them idle.
//!
//! `idle_conns origin` serves the demo origin on a loopback port, prints its address and runs
//! until its standard input closes. `idle_conns hold KIND ADDR N` opens N connections to ADDR
//! (at most 200 being set up at once), makes each do its small exchange, prints `holding N`,
//! and holds them until its standard input closes. It never sends anything after that, so
//! every connection stays idle. Loopback only; every loop is bounded by N.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Connections being set up at once.
const SETUP_CONCURRENCY: usize = 200;
/// A connection that cannot be set up within this long fails the run.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection does before it sits idle.
#[derive(Clone, Copy)]
enum Kind {
    /// HTTP/1.1 keep-alive: one request, then idle.
    H1,
    /// h2c with prior knowledge: one request, then idle.
    H2,
    /// Raw TCP through a tcp listener: one HTTP/1.1 exchange relayed, then idle.
    L4,
    /// Connect and send nothing.
    Raw,
}

/// Whatever must stay alive for a connection to stay open (held, never read).
#[allow(dead_code)]
enum Held {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    Raw(TcpStream),
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    let res = rt.block_on(async {
        match args.get(1).map(String::as_str) {
            Some("origin") => origin().await,
            Some("hold") if args.len() == 5 => {
                let kind = match args[2].as_str() {
                    "h1" => Kind::H1,
                    "h2" => Kind::H2,
                    "l4" => Kind::L4,
                    "raw" => Kind::Raw,
                    k => return Err(format!("unknown kind {k:?}: use h1, h2, l4 or raw")),
                };
                let addr: SocketAddr = args[3]
                    .parse()
                    .map_err(|e| format!("address {:?}: {e}", args[3]))?;
                let n: usize = args[4]
                    .parse()
                    .map_err(|e| format!("count {:?}: {e}", args[4]))?;
                hold(kind, addr, n).await
            }
            _ => Err("usage: idle_conns origin | idle_conns hold h1|h2|l4|raw ADDR N".into()),
        }
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_conns: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs until standard input reaches EOF (the script closes it, or dies).
async fn until_stdin_closes() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
}

async fn origin() -> Result<(), String> {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("a literal address");
    let o = fulcrum::demo::Origin::start("origin", any)
        .await
        .map_err(|e| format!("origin: {e}"))?;
    println!("{}", o.addr);
    until_stdin_closes().await;
    Ok(())
}

async fn hold(kind: Kind, addr: SocketAddr, n: usize) -> Result<(), String> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(SETUP_TIMEOUT, open(kind, addr)).await;
            drop(permit);
            match r {
                Ok(r) => r,
                Err(_) => Err("setting up a connection timed out".to_string()),
            }
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.push(t.await.map_err(|e| e.to_string())??);
    }
    println!(
        "holding {} ({:.1}s)",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    until_stdin_closes().await;
    drop(held);
    Ok(())
}

async fn open(kind: Kind, addr: SocketAddr) -> Result<Held, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let req = || {
        http::Request::get(format!("http://{addr}/"))
            .body(Empty::<Bytes>::new())
            .expect("a static request is valid")
    };
    match kind {
        Kind::Raw => Ok(Held::Raw(s)),
        Kind::H1 | Kind::L4 => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(conn);
            let resp = send
                .send_request(req())
                .await
                .map_err(|e| format!("h1 request: {e}"))?;
            check(resp).await?;
            Ok(Held::H1(send))
        }
        Kind::H2 => {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            let resp = send
                .send_request(req())
                .await
                .map_err(|e| format!("h2 request: {e}"))?;
            check(resp).await?;
            Ok(Held::H2(send))
        }
    }
}

async fn check(resp: http::Response<hyper::body::Incoming>) -> Result<(), String> {
    let status = resp.status();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    if status != 200 {
        return Err(format!("origin answered {status}"));
    }
    Ok(())
}
