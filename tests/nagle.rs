//! A server that writes a response's head and body apart, with Nagle's algorithm on (as
//! Python's http.server does), sends the body only once its head is acknowledged. On a
//! keep-alive connection the kernel delays that ACK (up to 40 ms: the connection's two ends
//! take turns, so it waits for data to carry the ACK), and each such response would take
//! that long. The proxy acknowledges a response that came in part at once.
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

/// The namespace, deleted when it drops (also on panic).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.0]);
    }
}

/// Moves the calling thread (and the threads it starts later) into the namespace.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("namespace file");
    // SAFETY: setns(2) with a namespace file we opened; it moves this thread only.
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
}

/// The namespace's count of ACKs that the delayed-ACK timer sent.
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

/// Answers every request on a connection with its head and its body in two writes, Nagle's
/// algorithm left on.
fn two_write_origin(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { return };
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
                    if c.write_all(head).is_err() || c.write_all(b"hello").is_err() {
                        return;
                    }
                }
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
}

/// Reads one response with a Content-Length body; returns the body.
fn read_response(c: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .expect("content-length")
                .trim()
                .parse()
                .unwrap();
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return body;
            }
        }
        let n = c
            .read(&mut chunk)
            .expect("response within the read timeout");
        assert!(n > 0, "the proxy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_response_written_in_two_pieces_is_not_held_back_by_delayed_acks() {
    if let Some(why) = cannot_run() {
        if std::env::var_os("CI").is_some() {
            panic!("CI must run this test, but {why}");
        }
        eprintln!("skipped: {why}");
        return;
    }
    let ns = Netns(format!("flnagle{}", std::process::id()));
    assert!(ip(&["netns", "add", &ns.0]), "ip netns add");
    assert!(ip(&["-n", &ns.0, "link", "set", "lo", "up"]), "lo up");

    // The origin and the client run in threads inside the namespace; fulcrum runs there
    // as a process of its own.
    let (origin_tx, origin_rx) = mpsc::channel();
    let name = ns.0.clone();
    std::thread::spawn(move || {
        enter(&name);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        origin_tx.send(l.local_addr().unwrap()).unwrap();
        two_write_origin(l);
    });
    let origin: SocketAddr = origin_rx.recv().unwrap();
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
    let (bodies, acks) = std::thread::spawn(move || {
        enter(&name);
        let mut c = TcpStream::connect(proxy).unwrap();
        c.set_nodelay(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        // The first request opens the server connection, whose first ACKs go out at once
        // anyway (the kernel's quick-ACK start): count from the second.
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut bodies = vec![read_response(&mut c, &mut buf)];
        let before = delayed_acks(&name);
        for _ in 0..REQUESTS {
            c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            bodies.push(read_response(&mut c, &mut buf));
        }
        (bodies, delayed_acks(&name) - before)
    })
    .join()
    .unwrap();

    assert!(bodies.iter().all(|b| b == b"hello"), "{bodies:?}");
    eprintln!("{acks} ACKs sent late in {REQUESTS} requests");
    // Held back, each response's head would be acknowledged late: one delayed ACK per
    // request at least. Acknowledged at once, none but a stray (the client's last ACK,
    // a thread descheduled for 40 ms on a busy machine).
    assert!(
        acks < REQUESTS / 4,
        "{acks} ACKs sent late by the delayed-ACK timer in {REQUESTS} requests"
    );
    drop(d);
}
