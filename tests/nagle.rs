//! A peer that writes a message's head and body apart, with Nagle's algorithm on (as
//! Python's http.server does with its responses), sends the body only once its head is
//! acknowledged. On a keep-alive connection the kernel delays that ACK (up to 40 ms: the
//! connection's two ends take turns, so it waits for data to carry the ACK), and each such
//! message would take that long. The proxy acknowledges at once a response from a server,
//! or a request from an HTTP/1 client, that came in part; an L4 relay, which cannot tell
//! where a message ends, does so for a peer it has seen wait for an ACK.
//!
//! Measured by the kernel's own count of ACKs sent late (`TcpExt: DelayedACKs`), in a
//! network namespace of the test's own, so that nothing else on the machine adds to it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// Requests, one after another, on one client connection (so on one server connection).
const REQUESTS: u64 = 40;

/// A network namespace with its loopback up, deleted when it drops (also on panic).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let ns = Netns(format!("flnagle{}{tag}", std::process::id()));
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
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

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
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

/// How a peer writes a message: in these pieces, one write each; Nagle's algorithm is left
/// on when there are two.
type Pieces = &'static [&'static [u8]];

/// A response's head and body in two writes.
const HEAD_THEN_BODY: Pieces = &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello"];
/// A response in one write.
const WHOLE: Pieces = &[b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"];
/// A request without a body, in one write.
const GET: Pieces = &[b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"];
/// A request's head and body in two writes (the client's Nagle's algorithm is on).
const POST_THEN_BODY: Pieces = &[
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n",
    b"0123456789",
];

/// A server: answers every whole request (head and body) on each connection with `answer`.
fn serve(listener: TcpListener, answer: Pieces) {
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { return };
        c.set_nodelay(answer.len() == 1).unwrap();
        std::thread::spawn(move || {
            let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
            loop {
                while let Some(end) = request_end(&buf, 0) {
                    buf.drain(..end);
                    if answer.iter().any(|p| c.write_all(p).is_err()) {
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

/// Whether to skip: the probe runs once for all four tests (they run at the same time).
fn skip() -> bool {
    static WHY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    skip_unless_ci(WHY.get_or_init(|| netns_unavailable("nagle")).as_deref())
}

/// Runs fulcrum (an HTTP listener, or with `l4` a TCP one) in a namespace of its own in
/// front of a server answering in `answer`, sends it `REQUESTS + 1` requests one after
/// another on one connection, each written in `request`, and returns the delayed ACKs the
/// kernel sent during the last `REQUESTS` (the first opens the server connection, whose
/// first ACKs go out at once anyway: the kernel's quick-ACK start).
fn late_acks(tag: &str, l4: bool, answer: Pieces, request: Pieces) -> u64 {
    let ns = Netns::new(tag);
    let (tx, rx) = mpsc::channel();
    ns.spawn(move || {
        let l = TcpListener::bind(ANY).unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        serve(l, answer);
    });
    let origin: SocketAddr = rx.recv().unwrap();
    let mut config = http_config(&format!("{{ addr = \"{origin}\" }}"), "", NO_HEALTH);
    if l4 {
        config = config.replace("protocol = \"http\"", "protocol = \"tcp\"");
    }
    let d = Daemon::spawn_in_netns(&config, &ns.0);
    let proxy = d.addrs["web"];
    let name = ns.0.clone();
    let acks = ns
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use tokio::io::AsyncWriteExt;
                let mut c = tokio::net::TcpStream::connect(proxy).await.unwrap();
                let mut before = 0;
                for i in 0..=REQUESTS {
                    if i == 1 {
                        before = delayed_acks(&name);
                    }
                    for piece in request {
                        c.write_all(piece).await.unwrap();
                    }
                    let (head, body) =
                        tokio::time::timeout(Duration::from_secs(10), read_response(&mut c))
                            .await
                            .expect("a response within 10 s");
                    assert!(head.starts_with("http/1.1 200"), "{head}");
                    assert_eq!(body, b"hello");
                }
                delayed_acks(&name) - before
            })
        })
        .join()
        .unwrap();
    drop(d);
    eprintln!("{tag}: {acks} ACKs sent late in {REQUESTS} requests");
    acks
}

/// Checks that messages written in pieces through fulcrum are not held back: at most a
/// stray delayed ACK in `REQUESTS` (a thread descheduled for 40 ms on a busy machine), or,
/// through an L4 relay, the first messages it learns from (see [`late_acks`] for the rest).
fn not_held_back(tag: &str, l4: bool, answer: Pieces, request: Pieces) {
    if skip() {
        return;
    }
    let acks = late_acks(tag, l4, answer, request);
    assert!(acks < REQUESTS / 4, "{acks} late ACKs");
}

// Held back, each message's first piece would be acknowledged late: 41 delayed ACKs in 40
// requests through the HTTP listener with its quick ACK left out, 80 through an L4 relay
// (two a request).

#[test]
fn a_response_written_in_two_pieces_is_not_held_back_by_delayed_acks() {
    not_held_back("r", false, HEAD_THEN_BODY, GET);
}

#[test]
fn a_request_written_in_two_pieces_is_not_held_back_by_delayed_acks() {
    not_held_back("q", false, WHOLE, POST_THEN_BODY);
}

/// Through an L4 relay the first messages show the peer's wait (a relay cannot tell a
/// message that came in part from a whole one), so the first one or two are held back.
#[test]
fn an_l4_relay_learns_that_its_server_waits_for_acks() {
    not_held_back("t", true, HEAD_THEN_BODY, GET);
}

#[test]
fn an_l4_relay_learns_that_its_client_waits_for_acks() {
    not_held_back("c", true, WHOLE, POST_THEN_BODY);
}
