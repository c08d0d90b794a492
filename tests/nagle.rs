//! A peer that writes a message's head and body apart, with Nagle's algorithm on (as
//! Python's http.server does with its responses), sends the body only once its head is
//! acknowledged. On a keep-alive connection the kernel delays that ACK (up to 40 ms: the
//! connection's two ends take turns, so it waits for data to carry the ACK), and each such
//! message would take that long. The proxy acknowledges at once a response from a server,
//! or a request from an HTTP/1 client, that came in part.
//!
//! Measured by the kernel's own count of ACKs sent late (`TcpExt: DelayedACKs`), in a
//! network namespace of the test's own, so that nothing else on the machine adds to it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// Requests, one after another, on one client connection (so on one server connection).
const REQUESTS: u64 = 40;

/// Why this machine cannot make a network namespace, if it cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    let probe = format!("flnagle{}-probe", std::process::id());
    let ok = ip(&["netns", "add", &probe]);
    ip(&["netns", "del", &probe]);
    (!ok).then(|| "`ip netns` is unavailable (iproute2 missing, or no permission)".into())
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace with its loopback up, deleted when it drops (also on panic).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let ns = Netns(format!("flnagle{}{tag}", std::process::id()));
        assert!(ip(&["netns", "add", &ns.0]), "ip netns add");
        assert!(ip(&["-n", &ns.0, "link", "set", "lo", "up"]), "lo up");
        ns
    }

    /// Runs `f` on a thread inside the namespace (threads it starts are inside too).
    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).expect("namespace file");
            // SAFETY: setns(2) with a namespace file we opened; it moves this thread only.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            f()
        })
    }
}

/// The count of ACKs that the delayed-ACK timer sent in the namespace `ns`.
fn delayed_acks(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/netstat"])
        .output()
        .expect("ip netns exec runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "DelayedACKs")
        .expect("TcpExt has DelayedACKs");
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.0]);
    }
}

/// Reads one HTTP/1.1 message (a head, and a body by Content-Length) off `c`, `buf` holding
/// what was read past the previous one; returns its head and body, or None at the peer's
/// close.
fn read_message(c: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Some((head, body));
            }
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A server: answers every request on each connection (after reading its body) with
/// `answer`, until the peer closes.
fn serve(listener: TcpListener, answer: fn(&mut TcpStream) -> std::io::Result<()>) {
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { return };
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while read_message(&mut c, &mut buf).is_some() {
                if answer(&mut c).is_err() {
                    return;
                }
            }
        });
    }
}

/// A response's head and body in two writes, Nagle's algorithm left on.
fn head_then_body(c: &mut TcpStream) -> std::io::Result<()> {
    c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")?;
    c.write_all(b"hello")
}

/// A response in one write, Nagle's algorithm off.
fn whole(c: &mut TcpStream) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
}

/// Skips (with the reason printed) where namespaces cannot be made, except under CI, which
/// must run these. The probe runs once for both tests (they run at the same time, and
/// probe with one name).
fn skip() -> bool {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    match WHY.get_or_init(cannot_run).clone() {
        None => false,
        Some(why) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: {why}");
            true
        }
        Some(why) => panic!("CI must run this test, but {why}"),
    }
}

/// Runs fulcrum in a namespace of its own in front of a server answering with `answer`,
/// sends it `REQUESTS + 1` requests one after another on one connection, each written by
/// `request` (Nagle's algorithm left on), and returns the delayed ACKs the kernel sent
/// during the last `REQUESTS` (the first opens the server connection, whose first ACKs go
/// out at once anyway: the kernel's quick-ACK start).
fn late_acks(
    tag: &str,
    answer: fn(&mut TcpStream) -> std::io::Result<()>,
    request: fn(&mut TcpStream) -> std::io::Result<()>,
) -> u64 {
    let ns = Netns::new(tag);
    let (tx, rx) = mpsc::channel();
    ns.spawn(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        serve(l, answer);
    });
    let origin: SocketAddr = rx.recv().unwrap();
    let d = Daemon::spawn_in_netns(
        &format!(
            r#"
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"

[[pool]]
name = "app"
servers = [ {{ addr = "{origin}" }} ]

[pool.health]
{NO_HEALTH}
"#
        ),
        &ns.0,
    );
    let proxy = d.addrs["web"];
    let name = ns.0.clone();
    let count = move || delayed_acks(&name);
    let acks = ns
        .spawn(move || {
            let mut c = TcpStream::connect(proxy).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = Vec::new();
            let mut before = 0;
            for i in 0..=REQUESTS {
                if i == 1 {
                    before = count();
                }
                request(&mut c).unwrap();
                let (head, body) = read_message(&mut c, &mut buf).expect("a response");
                assert!(head.starts_with("http/1.1 200"), "{head}");
                assert_eq!(body, b"hello");
            }
            count() - before
        })
        .join()
        .unwrap();
    drop(d);
    eprintln!("{tag}: {acks} ACKs sent late in {REQUESTS} requests");
    acks
}

#[test]
fn a_response_written_in_two_pieces_is_not_held_back_by_delayed_acks() {
    if skip() {
        return;
    }
    let acks = late_acks("r", head_then_body, |c| {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    });
    // Held back, each response's head would be acknowledged late: one delayed ACK per
    // request at least (41 in 40 with the proxy's quick ACK left out). Acknowledged at
    // once, none but a stray (a thread descheduled for 40 ms on a busy machine).
    assert!(acks < REQUESTS / 4, "{acks} late ACKs");
}

#[test]
fn a_request_written_in_two_pieces_is_not_held_back_by_delayed_acks() {
    if skip() {
        return;
    }
    let acks = late_acks("q", whole, |c| {
        c.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n")?;
        c.write_all(b"0123456789")
    });
    assert!(acks < REQUESTS / 4, "{acks} late ACKs");
}
