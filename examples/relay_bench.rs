//! Compares ways to relay TCP↔TCP on loopback: throughput of a bounded bulk transfer and the
//! relay's CPU per round trip of small messages.
//!
//! `relay_bench [VARIANT...]` (default: all) runs, per variant, a child process that is only
//! the relay (`relay_bench relay VARIANT UPSTREAM`), and from this process an echo server
//! behind it and the clients in front of it. The relay's CPU time is read from
//! /proc/PID/stat before and after each test. Variants:
//! - `copy`: tokio's copy_bidirectional with 2 × 32 KiB buffers held for the whole
//!   connection (the relay before lazy buffers);
//! - `lazy`: `tunnel::relay_tcp`, readiness first, a buffer only while bytes are in flight;
//! - `generic`: `tunnel::relay`, the fallback for non-TCP streams, over the same sockets;
//! - `splice`: splice(2) through a pipe per direction (zero copy, four descriptors more
//!   per connection).
//!
//! Sizes: `BULK_MIB` (default 1024) each way on one connection; `SMALL_CONNS` (default 50)
//! connections × `SMALL_TRIPS` (default 2000) round trips of 64 bytes. Every loop is bounded;
//! the child is killed when its variant is done.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fulcrum::proxy::tunnel::{self, idle_for, Active};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const VARIANTS: [&str; 4] = ["copy", "lazy", "generic", "splice"];
const IDLE: Duration = Duration::from_secs(600);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    if args.get(1).map(String::as_str) == Some("relay") {
        let (Some(variant), Some(up)) = (args.get(2), args.get(3)) else {
            return Err("usage: relay_bench relay VARIANT UPSTREAM".into());
        };
        let up: SocketAddr = up.parse().map_err(|e| format!("{up}: {e}"))?;
        return rt.block_on(serve_relay(variant.clone(), up));
    }
    let chosen: Vec<String> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        VARIANTS.iter().map(|s| s.to_string()).collect()
    };
    for v in &chosen {
        if !VARIANTS.contains(&v.as_str()) {
            return Err(format!("unknown variant {v:?}: one of {VARIANTS:?}"));
        }
    }
    rt.block_on(drive(&chosen, &args[0]))
}

/// The relay role: accept, connect to `up`, relay with `variant`.
async fn serve_relay(variant: String, up: SocketAddr) -> Result<(), String> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    println!("{}", l.local_addr().map_err(|e| e.to_string())?);
    let stop = CancellationToken::new();
    loop {
        let (c, _) = l.accept().await.map_err(|e| e.to_string())?;
        let variant = variant.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(s) = TcpStream::connect(up).await else {
                return;
            };
            let _ = c.set_nodelay(true);
            let _ = s.set_nodelay(true);
            // Only the bench's own token ends a relay; the hard stop never fires here.
            let never = tunnel::Signal::default();
            let stops = tunnel::Stops {
                shutdown: &never,
                drain: &stop,
            };
            let r = match variant.as_str() {
                "copy" => copy_fixed(c, s, &stop).await,
                "lazy" => {
                    let (mut c, mut s) = (c, s);
                    tunnel::relay_tcp(&mut c, &mut s, IDLE, stops)
                        .await
                        .map_err(|c| c.end)
                }
                "generic" => {
                    let (mut c, mut s) = (c, s);
                    tunnel::relay(&mut c, &mut s, IDLE, stops)
                        .await
                        .map_err(|c| c.end)
                }
                _ => splice_relay(&c, &s, &stop).await,
            };
            if let Err(e) = r {
                eprintln!("relay ended: {e:?}");
            }
        });
    }
}

/// The relay as it was before lazy buffers.
async fn copy_fixed(
    mut c: TcpStream,
    mut s: TcpStream,
    stop: &CancellationToken,
) -> Result<tunnel::Moved, tunnel::RelayEnd> {
    let ticks = AtomicU64::new(0);
    let mut a = Active {
        io: &mut c,
        ticks: &ticks,
    };
    let mut b = Active {
        io: &mut s,
        ticks: &ticks,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 32 << 10, 32 << 10);
    tokio::select! {
        r = copy => r.map_err(tunnel::RelayEnd::Io),
        _ = idle_for(&ticks, IDLE) => Err(tunnel::RelayEnd::Idle),
        _ = stop.cancelled() => Err(tunnel::RelayEnd::Cancelled),
    }
}

/// A non-blocking pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice with null offsets on descriptors we hold open for the call.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Pipe capacity (Linux default); bytes are spliced in only while the pipe is empty, so an
/// EAGAIN on the way in always means the socket has nothing.
const PIPE: usize = 64 << 10;

async fn splice_flow(from: &TcpStream, to: &TcpStream, ticks: &AtomicU64) -> io::Result<u64> {
    let (r, w) = pipe()?;
    let mut moved = 0u64;
    loop {
        let n = loop {
            from.readable().await?;
            // A short read drained the socket: report WouldBlock to clear tokio's readiness
            // (as its own poll_read does), which saves the EAGAIN splice that would follow.
            let mut got = None;
            match from.try_io(Interest::READABLE, || {
                let n = splice(from.as_raw_fd(), w.as_raw_fd(), PIPE)?;
                got = Some(n);
                if n > 0 && n < PIPE {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match got {
                    Some(n) => break n,
                    None => continue,
                },
                r => break r?,
            }
        };
        ticks.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
            return Ok(moved);
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(r.as_raw_fd(), to.as_raw_fd(), left)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
                Ok(k) => {
                    left -= k;
                    moved += k as u64;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

async fn splice_relay(
    c: &TcpStream,
    s: &TcpStream,
    stop: &CancellationToken,
) -> Result<tunnel::Moved, tunnel::RelayEnd> {
    let ticks = AtomicU64::new(0);
    let both = async { tokio::try_join!(splice_flow(c, s, &ticks), splice_flow(s, c, &ticks)) };
    tokio::select! {
        r = both => r.map_err(tunnel::RelayEnd::Io),
        _ = idle_for(&ticks, IDLE) => Err(tunnel::RelayEnd::Idle),
        _ = stop.cancelled() => Err(tunnel::RelayEnd::Cancelled),
    }
}

/// An echo server: writes back what it reads, closes its side after the client's EOF.
async fn echo() -> io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                // A large buffer, so the echo is not what limits the bulk test.
                let mut buf = vec![0u8; 256 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// User + system CPU time of a process so far.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" that ends the command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 1000 / hz)
}

async fn drive(variants: &[String], me: &str) -> Result<(), String> {
    let bulk = env_or("BULK_MIB", 1024) << 20;
    let conns = env_or("SMALL_CONNS", 50);
    let trips = env_or("SMALL_TRIPS", 2000);
    let up = echo().await.map_err(|e| e.to_string())?;
    for v in variants {
        let mut child = Command::new(me)
            .args(["relay", v, &up.to_string()])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the relay: {e}"))?;
        let pid = child.id();
        let mut line = String::new();
        let out = child.stdout.take().ok_or("relay stdout")?;
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let relay: SocketAddr = line
            .trim()
            .parse()
            .map_err(|e| format!("relay address {line:?}: {e}"))?;
        let result = async {
            let c0 = cpu(pid);
            let t0 = Instant::now();
            bulk_each_way(relay, bulk).await?;
            let (wall, c1) = (t0.elapsed(), cpu(pid));
            let mib = (bulk >> 20) as f64;
            println!(
                "{v:8} bulk:  {mib} MiB each way in {:.2}s = {:.0} MiB/s each way; relay CPU {:.2}s ({:.2} s/GiB moved)",
                wall.as_secs_f64(),
                mib / wall.as_secs_f64(),
                (c1 - c0).as_secs_f64(),
                (c1 - c0).as_secs_f64() / (2.0 * mib / 1024.0),
            );
            let t0 = Instant::now();
            small_messages(relay, conns, trips).await?;
            let (wall, c2) = (t0.elapsed(), cpu(pid));
            let n = (conns * trips) as f64;
            println!(
                "{v:8} small: {} round trips of 64 B in {:.2}s = {:.0}/s; relay CPU {:.2}s = {:.2} us per round trip",
                conns * trips,
                wall.as_secs_f64(),
                n / wall.as_secs_f64(),
                (c2 - c1).as_secs_f64(),
                (c2 - c1).as_secs_f64() * 1e6 / n,
            );
            Ok::<(), String>(())
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        result?;
    }
    Ok(())
}

/// Sends `len` bytes through the relay to the echo server and reads them all back.
async fn bulk_each_way(relay: SocketAddr, len: usize) -> Result<(), String> {
    let s = TcpStream::connect(relay).await.map_err(|e| e.to_string())?;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5au8; 256 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).await?;
            left -= n;
        }
        w.shutdown().await?;
        Ok::<_, io::Error>(w)
    });
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    writer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if got != len {
        return Err(format!("bulk: {got} of {len} bytes came back"));
    }
    Ok(())
}

/// `conns` connections, each `trips` round trips of 64 bytes, all at once.
async fn small_messages(relay: SocketAddr, conns: usize, trips: usize) -> Result<(), String> {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(relay).await?;
            s.set_nodelay(true)?;
            let msg = [7u8; 64];
            let mut back = [0u8; 64];
            for _ in 0..trips {
                s.write_all(&msg).await?;
                s.read_exact(&mut back).await?;
            }
            Ok::<_, io::Error>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
