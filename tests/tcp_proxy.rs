//! L4 relaying through a running fulcrum: byte-exact echo, half-close, PROXY headers, idle
//! close and drain deadlines with their access-log lines, many relays at once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Bound on every wait.
const LIMIT: Duration = Duration::from_secs(20);

/// An echo server: writes back what it reads, and closes its side after the client's EOF.
async fn echo_server() -> SocketAddr {
    let (addr, _) = serve_each(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await;
    addr
}

/// A server that reads a PROXY header (v1 or v2), reports what it parsed, then echoes.
async fn proxy_protocol_server() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr, _) = serve_each(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut first = [0u8; 12];
            s.read_exact(&mut first[..5]).await.unwrap();
            let parsed = if &first[..5] == b"PROXY" {
                let mut line = b"PROXY".to_vec();
                let mut b = [0u8; 1];
                while !line.ends_with(b"\r\n") {
                    s.read_exact(&mut b).await.unwrap();
                    line.push(b[0]);
                }
                String::from_utf8(line).unwrap().trim_end().to_string()
            } else {
                s.read_exact(&mut first[5..]).await.unwrap();
                assert_eq!(
                    first,
                    [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
                );
                let mut hdr = [0u8; 4];
                s.read_exact(&mut hdr).await.unwrap();
                let len = u16::from_be_bytes([hdr[2], hdr[3]]) as usize;
                let mut rest = vec![0u8; len];
                s.read_exact(&mut rest).await.unwrap();
                assert_eq!(hdr[0], 0x21, "v2 PROXY command");
                assert_eq!(hdr[1], 0x11, "TCP over IPv4");
                let ip = |b: &[u8]| format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]);
                let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
                format!(
                    "V2 {} {} {} {}",
                    ip(&rest[0..4]),
                    ip(&rest[4..8]),
                    port(&rest[8..10]),
                    port(&rest[10..12])
                )
            };
            tx.send(parsed).unwrap();
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    })
    .await;
    (addr, rx)
}

fn tcp_config(server: SocketAddr, listener_extra: &str) -> String {
    format!(
        r#"
[admin]
enabled = false

[[listener]]
name = "relay"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "p"
{listener_extra}

[[pool]]
name = "p"
servers = [ {{ addr = "{server}" }} ]

[pool.health]
kind = "none"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_one_mebibyte_each_way_byte_exact_with_half_close() {
    let echo = echo_server().await;
    let p = Proxy::start(&tcp_config(echo, "")).await;
    let s = TcpStream::connect(p.addr("relay")).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        // Half-close: we are done sending but still want the echo.
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), data.len(), "echoed length after half-close");
    assert!(got == data, "echo is byte-exact");
}

/// A server that speaks first (SMTP, MySQL, SSH) is heard through an L4 listener before
/// the client says anything. (Unlike an HTTP listener, an L4 listener does not ask the
/// kernel to hold a connection back until the client sends; with that hold, which lets a
/// silent connection through after about a second, this greeting comes late but still
/// comes, so the HTTP side's test is the one that tells the two apart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_speaks_first_is_heard_before_the_client_sends_a_byte() {
    let l = TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"220 ready\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let p = Proxy::start(&tcp_config(addr, "")).await;
    let mut s = TcpStream::connect(p.addr("relay")).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting))
        .await
        .expect("the server's greeting reaches a client that has sent nothing")
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_half_close_reaches_client_while_client_keeps_sending() {
    // The server sends a greeting and closes its write side at once, then keeps reading.
    let l = TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"bye-from-server").await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        tx.send(rest).unwrap();
    });
    let p = Proxy::start(&tcp_config(addr, "")).await;
    let mut s = TcpStream::connect(p.addr("relay")).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye-from-server", "server's data then EOF");
    s.write_all(b"client-still-talking").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(
        rx.recv().await.unwrap(),
        b"client-still-talking",
        "client's bytes after server EOF"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_header_arrives() {
    let (addr, mut seen) = proxy_protocol_server().await;
    let p = Proxy::start(&tcp_config(addr, "send_proxy = \"v1\"")).await;
    let mut s = TcpStream::connect(p.addr("relay")).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    let line = seen.recv().await.unwrap();
    let dst = p.addr("relay");
    assert_eq!(
        line,
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}",
            me.port(),
            dst.port()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_header_arrives() {
    let (addr, mut seen) = proxy_protocol_server().await;
    let p = Proxy::start(&tcp_config(addr, "send_proxy = \"v2\"")).await;
    let mut s = TcpStream::connect(p.addr("relay")).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"pong").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"pong");
    let line = seen.recv().await.unwrap();
    assert_eq!(
        line,
        format!(
            "V2 127.0.0.1 127.0.0.1 {} {}",
            me.port(),
            p.addr("relay").port()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_moves_to_the_next_server() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let echo = echo_server().await;
    let cfg = tcp_config(echo, "").replace(
        &format!("servers = [ {{ addr = \"{echo}\" }} ]"),
        &format!("servers = [ {{ addr = \"{dead}\" }}, {{ addr = \"{echo}\" }} ]\nretries = 2"),
    );
    let p = Proxy::start(&cfg).await;
    // Round robin sends every other connection to the dead server first; each must still work.
    for i in 0..6u8 {
        let mut s = TcpStream::connect(p.addr("relay")).await.unwrap();
        s.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], i, "connection {i} relayed despite a dead server");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_is_closed_after_tunnel_idle() {
    let echo = echo_server().await;
    let p = Proxy::start(&tcp_config(
        echo,
        "[listener.timeouts]\ntunnel_idle = \"300ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr("relay")).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"x", "the tunnel works while active");
    // Then nothing either way: the proxy closes it (bounded wait, far above the timeout).
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut b)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "idle tunnel closed by the proxy: {closed:?}"
    );
}

/// How a test ends a relay that has moved 5 bytes each way.
enum End {
    /// Nothing more either way: `tunnel_idle` (300 ms) runs out.
    Idle,
    /// An operator drains the server with a 300 ms deadline (`tunnel_idle` 60 s, and the
    /// admin API on loopback to drain with).
    DrainDeadline,
}

/// Relays 5 bytes each way, lets `end` close the relay, and checks its access-log line: the
/// `outcome` expected, and the 5 bytes each way it moved.
async fn relay_closed_by(end: End, outcome: &str) {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let idle = match end {
        End::Idle => "300ms",
        End::DrainDeadline => "60s",
    };
    let relay = tcp_config(
        echo,
        &format!("[listener.timeouts]\ntunnel_idle = \"{idle}\""),
    );
    let relay = match end {
        End::Idle => relay,
        End::DrainDeadline => relay.replace(
            "enabled = false",
            "bind = \"127.0.0.1:0\"\nallow_unauthenticated_loopback = true",
        ),
    };
    let cfg = format!(
        "[access_log]\nenabled = true\npath = \"{}\"\nformat = \"json\"\n{relay}",
        log_path.display(),
    );
    let p = Proxy::start(&cfg).await;
    let mut s = TcpStream::connect(p.addr("relay")).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hello");
    if let End::DrainDeadline = end {
        let path = format!("/servers/p/{echo}/drain?deadline=300ms");
        let r = admin_call(p.admin().await, "POST", &path, None, "").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The proxy closes it, then logs it.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LIMIT, s.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "relay closed: {closed:?}"
    );
    let line = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("\"tcp\""))
            .map(str::to_string)
    };
    wait_until("the tcp access log line", LIMIT, || async {
        line().is_some()
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line().unwrap()).unwrap();
    assert_eq!(v["outcome"], outcome, "{v}");
    assert_eq!(
        (v["bytes_in"].as_u64(), v["bytes_out"].as_u64()),
        (Some(5), Some(5)),
        "a relay that ended {outcome} logs what it moved: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_closed_relay_logs_the_bytes_it_moved() {
    relay_closed_by(End::Idle, "idle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_closed_at_a_drain_deadline_logs_drained_and_the_bytes_it_moved() {
    relay_closed_by(End::DrainDeadline, "drained").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_relays_each_move_their_own_bytes_intact() {
    let echo = echo_server().await;
    let p = Proxy::start(&tcp_config(echo, "")).await;
    let relay = p.addr("relay");
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        tasks.push(tokio::spawn(async move {
            // Each connection its own bytes and length (64 KiB to ~100 KiB), so any mix-up
            // between relays or any lost or repeated buffer shows.
            let len = 64 * 1024 + (i as usize * 173) % 40_000;
            let data: Vec<u8> = (0..len as u32)
                .map(|j| (j.wrapping_mul(2654435761) ^ i.wrapping_mul(40503)) as u8)
                .collect();
            let s = TcpStream::connect(relay).await.unwrap();
            let (mut r, mut w) = s.into_split();
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
                w
            });
            let mut got = Vec::with_capacity(len);
            r.read_to_end(&mut got).await.unwrap();
            let _w = writer.await.unwrap();
            got == data
        }));
    }
    let mut intact = 0;
    for t in tasks {
        if tokio::time::timeout(LIMIT, t)
            .await
            .expect("each relay completes")
            .unwrap()
        {
            intact += 1;
        }
    }
    assert_eq!(intact, 200, "relays whose echo came back byte-exact");
}

/// An echo server that reports, in order, each connection it accepts (`open n`) and each
/// client end of stream it reads (`eof n`).
async fn logging_echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let l = TcpListener::bind(ANY).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = l.accept().await {
            n += 1;
            let _ = tx.send(format!("open {n}"));
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tx.send(format!("eof {n}"));
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, rx)
}

/// Sends `msg` on `s` and reads it back, echoed through the proxy.
async fn echoed(mut s: TcpStream, msg: &'static [u8]) -> TcpStream {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, msg);
    s
}

/// A new client of `listener` whose `msg` comes back echoed, within the test's bound.
async fn relayed(p: &Proxy, listener: &str, msg: &'static [u8]) -> TcpStream {
    let s = TcpStream::connect(p.addr(listener)).await.unwrap();
    tokio::time::timeout(LIMIT, echoed(s, msg))
        .await
        .unwrap_or_else(|_| panic!("a client of {listener} is relayed"))
}

/// The logging server's next `n` events.
async fn next_events(events: &mut mpsc::UnboundedReceiver<String>, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        seen.push(
            tokio::time::timeout(LIMIT, events.recv())
                .await
                .expect("the server's events")
                .unwrap(),
        );
    }
    seen
}

/// Nothing more reaches the logging server for half a second: ample time for a proxy that
/// ignored a connection cap to get there.
async fn quiet(events: &mut mpsc::UnboundedReceiver<String>) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Ok(e) = events.try_recv() {
        panic!("a client over the cap reached the server: {e}");
    }
}

/// Ends the client's side of `s` (a FIN through the proxy to the server).
async fn end(s: TcpStream) {
    let (_, mut w) = s.into_split();
    w.shutdown().await.unwrap();
}

/// With `max_connections = 1`, a second client waits in the kernel's backlog while the
/// first is relayed, and is served once the first has ended: the server meets the second
/// connection only after the first's end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_at_max_connections_serves_the_next_client_when_one_ends() {
    let (server, mut events) = logging_echo_server().await;
    let p = Proxy::start(&tcp_config(server, "max_connections = 1")).await;
    let first = relayed(&p, "relay", b"one").await;
    // The second connects (the kernel completes the handshake) and sends; while the first
    // is open, the proxy does not take it.
    let second = TcpStream::connect(p.addr("relay")).await.unwrap();
    let second = tokio::spawn(echoed(second, b"two"));
    assert_eq!(next_events(&mut events, 1).await, ["open 1"]);
    quiet(&mut events).await;
    end(first).await;
    let _second = tokio::time::timeout(LIMIT, second)
        .await
        .expect("the second client is relayed once the first has ended")
        .unwrap();
    assert_eq!(next_events(&mut events, 2).await, ["eof 1", "open 2"]);
}

/// Two L4 listeners, "relay" and "other", in front of `server`, under a process-wide cap of
/// `max` connections.
fn two_listeners(server: SocketAddr, max: usize) -> String {
    format!(
        "[runtime]\nmax_connections = {max}\n{}\n[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"p\"\n",
        tcp_config(server, "")
    )
}

/// `runtime.max_connections` is one cap for every listener, and a reload resizes it in
/// place. At 1: a listener with no client waiting holds no slot, so the slot a client gives
/// back goes to the next client of another listener; and a client of a second listener
/// waits while a client of the first is relayed. Raised to 2, the waiting client is served
/// at once. Lowered to 1 again with both open, a new client waits until both have ended
/// (the first to end gives its slot back to the cap, not to the new client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_wide_cap_spans_listeners_and_a_reload_resizes_it() {
    let (server, mut events) = logging_echo_server().await;
    let config = |max: usize| two_listeners(server, max);
    let p = Proxy::start(&config(1)).await;
    let connect = |listener: &str| TcpStream::connect(p.addr(listener));
    // Connected (the kernel completes the handshake) and sending, left to wait.
    let waiting = |s: TcpStream, msg: &'static [u8]| tokio::spawn(echoed(s, msg));

    // The slot goes from client to client; the other listener, with nobody waiting, takes
    // no part.
    end(relayed(&p, "relay", b"one").await).await;
    assert_eq!(next_events(&mut events, 2).await, ["open 1", "eof 1"]);
    let second = relayed(&p, "relay", b"two").await;
    assert_eq!(next_events(&mut events, 1).await, ["open 2"]);
    let third = waiting(connect("other").await.unwrap(), b"three");
    quiet(&mut events).await;

    // Raised: the waiting client is served while the other is still open.
    p.reload_with(&config(2)).await.unwrap();
    let third = tokio::time::timeout(LIMIT, third)
        .await
        .expect("the waiting client is relayed once the cap is raised")
        .unwrap();
    assert_eq!(next_events(&mut events, 1).await, ["open 3"]);

    // Lowered with both open: the first to end only brings the count down to the new cap.
    p.reload_with(&config(1)).await.unwrap();
    let fourth = waiting(connect("relay").await.unwrap(), b"four");
    quiet(&mut events).await;
    end(second).await;
    assert_eq!(next_events(&mut events, 1).await, ["eof 2"]);
    quiet(&mut events).await;
    end(third).await;
    assert_eq!(next_events(&mut events, 2).await, ["eof 3", "open 4"]);
    tokio::time::timeout(LIMIT, fourth)
        .await
        .expect("the last client is relayed once both have ended")
        .unwrap();
}

/// At the process cap, listeners with clients waiting take turns: each slot given back goes
/// to the listener that has waited longest for one, so a listener with a backlog cannot keep
/// another's clients waiting until its own are all served. With cap 1, one client open and
/// two more waiting on each listener, the four are served one listener, then the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_with_clients_waiting_take_turns_at_the_process_cap() {
    let (server, mut events) = logging_echo_server().await;
    let p = Proxy::start(&two_listeners(server, 1)).await;
    let mut open = relayed(&p, "relay", b"one").await;
    assert_eq!(next_events(&mut events, 1).await, ["open 1"]);
    // Connected (the kernel completes the handshake) and sending, left to wait: the first
    // listener's two before the other's.
    let mut waiting = Vec::new();
    for listener in ["relay", "relay", "other", "other"] {
        let s = TcpStream::connect(p.addr(listener)).await.unwrap();
        waiting.push((listener, tokio::spawn(echoed(s, b"waiting"))));
    }
    quiet(&mut events).await;

    // One slot at a time: end the open client, and see which waiting one is served.
    let mut served = Vec::new();
    for n in 2..=5 {
        end(open).await;
        assert_eq!(
            next_events(&mut events, 2).await,
            [format!("eof {}", n - 1), format!("open {n}")]
        );
        let (done, i, _) = tokio::time::timeout(
            LIMIT,
            futures_util::future::select_all(waiting.iter_mut().map(|(_, task)| task)),
        )
        .await
        .expect("a waiting client is relayed once a slot is free");
        open = done.unwrap();
        served.push(waiting.remove(i).0);
    }
    // Which listener's loop stood in the queue first is a race; that they alternate is not.
    assert!(
        served.windows(2).all(|w| w[0] != w[1]),
        "served in the order {served:?}"
    );
    end(open).await;
    assert_eq!(next_events(&mut events, 1).await, ["eof 5"]);
}
