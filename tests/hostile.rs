//! Hostile and careless clients: every connection bounded, every fault blamed on the side
//! that caused it, every framing ambiguity refused or repaired. Raw sockets on loopback; the
//! raw origin records every byte it receives.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fulcrum::demo::Origin;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: a loaded 2-core machine may be slow; a passing test is never slowed by it.
const LIMIT: Duration = Duration::from_secs(30);

/// A config whose one pool is `origin` alone, named `raw`, with `extra` in the pool's table
/// and no health checks.
fn raw_config(origin: &RawOrigin, extra: &str) -> String {
    raw_config_at(origin.addr, extra)
}

/// [`raw_config`] for a server of the test's own at `addr`.
fn raw_config_at(addr: std::net::SocketAddr, extra: &str) -> String {
    http_config(
        &format!("{{ addr = \"{addr}\", name = \"raw\" }}"),
        extra,
        NO_HEALTH,
    )
}

/// Inserts listener tables (`[listener.limits]`, `[listener.timeouts]`, keys) into an
/// `http_config` right after the listener's `pool` line.
fn with_listener(cfg: String, extra: &str) -> String {
    cfg.replacen("pool = \"app\"\n", &format!("pool = \"app\"\n{extra}\n"), 1)
}

fn ejections(p: &Proxy) -> f64 {
    let text = p.f.metrics().render();
    text.lines()
        .filter(|l| l.starts_with("fulcrum_server_ejections_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Opens a POST to `/sink` declaring `len` body bytes and sends the first `sent`.
async fn partial_upload(addr: std::net::SocketAddr, len: usize, sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&vec![b'x'; sent]).await.unwrap();
    s
}

fn inflight(o: &[Origin]) -> u64 {
    o.iter().map(Origin::inflight).sum()
}

/// 50 uploads abort mid-body and 50 stall past `body_read`; returns when all are over.
async fn abort_storm(p: &Proxy, o: &[Origin]) {
    let addr = p.addr("web");
    let mut aborting = Vec::new();
    for _ in 0..50 {
        aborting.push(partial_upload(addr, 100_000, 1000).await);
    }
    // Every upload has reached a server, which is reading its body.
    wait_until("50 uploads in flight at the origins", LIMIT, || async {
        inflight(o) >= 50
    })
    .await;
    for s in &aborting {
        // RST rather than FIN: the rudest way to go.
        socket2::SockRef::from(s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    drop(aborting);
    wait_until("50 aborts counted", LIMIT, || async {
        p.metric_value("fulcrum_client_aborts_total", &[("phase", "request_body")]) >= 50.0
    })
    .await;

    let mut stalling = Vec::new();
    for _ in 0..50 {
        stalling.push(partial_upload(addr, 100_000, 1000).await);
    }
    for mut s in stalling {
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("http/1.1 408"), "stalled upload: {head}");
        assert!(head.contains("connection: close"), "{head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_storm_blames_no_server() {
    let o = fleet(3).await;
    let cfg = with_listener(
        http_config(&servers(&[&o[0], &o[1], &o[2]]), "", NO_HEALTH),
        "[listener.timeouts]\nbody_read = \"300ms\"",
    );
    let p = Proxy::start(&cfg).await;
    abort_storm(&p, &o).await;

    assert_eq!(server_errors(&p), 0.0, "no server error counted");
    assert_eq!(ejections(&p), 0.0, "no server ejected");
    for name in ["o0", "o1", "o2"] {
        assert!(p.eligible(name), "{name} still in rotation");
    }
    assert_eq!(
        p.metric_value(
            "fulcrum_requests_rejected_total",
            &[("reason", "body_timeout")]
        ),
        50.0
    );
    let c = client();
    assert_eq!(gets_ok(&c, &p.url("web", "/"), 30).await, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_kill_story_after_an_abort_storm_fails_no_request() {
    let o = fleet(3).await;
    let cfg = with_listener(
        http_config(
            &servers(&[&o[0], &o[1], &o[2]]),
            "",
            "kind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2",
        ),
        "[listener.timeouts]\nbody_read = \"300ms\"",
    );
    let p = Proxy::start(&cfg).await;
    abort_storm(&p, &o).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let (url, stop, ok, failed) =
                (p.url("web", "/"), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let req = http::Request::get(&url)
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    match send(&c, req).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    // The load runs a second, o1 dies, is out of rotation, comes back, the load runs on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    o[1].kill();
    wait_until("o1 out of rotation", LIMIT, || async { !p.eligible("o1") }).await;
    o[1].restart().await.unwrap();
    wait_until("o1 back", LIMIT, || async { p.eligible("o1") }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("backend kill after an abort storm: {ok} ok, {failed} failed");
    assert!(ok > 100, "the load ran: {ok}");
    assert_eq!(failed, 0, "failed requests ({ok} succeeded)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_slow_bodies_are_cut_while_a_normal_client_is_served() {
    let o = fleet(2).await;
    let cfg = with_listener(
        http_config(&servers(&[&o[0], &o[1]]), "", NO_HEALTH),
        "[listener.timeouts]\nheader_read = \"500ms\"\nbody_read = \"500ms\"",
    );
    let p = Proxy::start(&cfg).await;
    let addr = p.addr("web");
    let normal_stop = Arc::new(AtomicBool::new(false));
    let normal = {
        let (url, stop) = (p.url("web", "/"), normal_stop.clone());
        tokio::spawn(async move {
            let c = client();
            let (mut ok, mut bad) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                if get(&c, &url).await.status == 200 {
                    ok += 1;
                } else {
                    bad += 1;
                }
            }
            (ok, bad)
        })
    };
    // 200 connections dripping a request head, 200 dripping a body: one byte every 100 ms.
    let mut slow = Vec::new();
    for i in 0..400 {
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let body = i % 2 == 1;
            if body {
                s.write_all(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
                    .await
                    .unwrap();
            } else {
                s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Drip: ")
                    .await
                    .unwrap();
            }
            let (mut r, mut w) = s.into_split();
            let drip = tokio::spawn(async move {
                for _ in 0..600 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if w.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            });
            let mut got = Vec::new();
            let closed = tokio::time::timeout(LIMIT, r.read_to_end(&mut got)).await;
            drip.abort();
            (
                body,
                closed.is_ok(),
                String::from_utf8_lossy(&got).to_string(),
            )
        }));
    }
    for t in slow {
        let (body, closed, got) = t.await.unwrap();
        assert!(closed, "a slow connection was closed");
        if body {
            assert!(got.starts_with("HTTP/1.1 408"), "slow body gets 408: {got}");
        } else {
            assert!(got.is_empty(), "a slow head gets no answer: {got}");
        }
    }
    normal_stop.store(true, Ordering::Relaxed);
    let (ok, bad) = normal.await.unwrap();
    assert!(ok > 0, "the normal client was served");
    assert_eq!(bad, 0, "the normal client never failed ({ok} ok)");
    assert_eq!(
        p.metric_value(
            "fulcrum_requests_rejected_total",
            &[("reason", "header_timeout")]
        ),
        200.0
    );
    assert_eq!(
        p.metric_value(
            "fulcrum_requests_rejected_total",
            &[("reason", "body_timeout")]
        ),
        200.0
    );
    assert_eq!(server_errors(&p), 0.0, "no server blamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_body_limits_answer_431_and_413_without_troubling_the_server() {
    let origin = RawOrigin::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let cfg = with_listener(
        raw_config(&origin, ""),
        "[listener.limits]\nmax_header_bytes = 8192\nmax_headers = 20\nmax_request_body = \"1KiB\"",
    );
    let p = Proxy::start(&cfg).await;
    let addr = p.addr("web");

    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = "a".repeat(10_000);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 431"), "oversized head: {head}");

    let mut s = TcpStream::connect(addr).await.unwrap();
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 431"), "too many headers: {head}");

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(
        head.starts_with("http/1.1 413"),
        "declared too large: {head}"
    );
    assert_eq!(
        origin.connections.load(Ordering::SeqCst),
        0,
        "a declared oversize body is refused before any server is contacted"
    );
    assert!(origin.seen().is_empty());

    // A chunked body grows past the limit on its way: cut, 413, the server not blamed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        // The proxy may answer 413 and close before the last chunks are written.
        let _ = s
            .write_all(format!("400\r\n{}\r\n", "y".repeat(0x400)).as_bytes())
            .await;
    }
    let (head, _) = read_response(&mut s).await;
    assert!(
        head.starts_with("http/1.1 413"),
        "chunked too large: {head}"
    );

    assert_eq!(
        p.metric_value(
            "fulcrum_requests_rejected_total",
            &[("reason", "header_too_large")]
        ),
        2.0
    );
    assert_eq!(
        p.metric_value(
            "fulcrum_requests_rejected_total",
            &[("reason", "body_too_large")]
        ),
        2.0
    );
    assert_eq!(server_errors(&p), 0.0, "the server is not blamed");
    assert_eq!(ejections(&p), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_and_frees_its_server_slot() {
    let o = fleet(1).await;
    let cfg = with_listener(
        http_config(
            &servers(&[&o[0]]),
            "max_conns = 1\nqueue_timeout = \"200ms\"",
            NO_HEALTH,
        ),
        "[listener.timeouts]\nsend_stall = \"500ms\"",
    );
    let p = Proxy::start(&cfg).await;
    // Ask for 64 MiB and read none of it: the windows fill and every write blocks.
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let st = p.server("o0");
    wait_until("the response holds the server's slot", LIMIT, || async {
        st.load.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until("the stalled client cut off", LIMIT, || async {
        p.metric_value(
            "fulcrum_requests_rejected_total",
            &[("reason", "send_stall")],
        ) == 1.0
    })
    .await;
    wait_until("its max_conns slot freed", LIMIT, || async {
        st.load.load(Ordering::SeqCst) == 0
    })
    .await;
    let r = get(&client(), &p.url("web", "/")).await;
    assert_eq!(r.status, 200, "the freed slot serves the next request");
    assert_eq!(
        server_errors(&p),
        0.0,
        "a slow reader is not the server's fault"
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_framing_h2c_connect_duplicate_host_and_unlisted_upgrades() {
    let origin = RawOrigin::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let p = Proxy::start(&raw_config(&origin, "")).await;
    let addr = p.addr("web");

    let (_, head, body) = raw_request(addr, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n").await;
    assert!(
        head.starts_with("http/1.1 200"),
        "served as plain HTTP/1.1: {head}"
    );
    assert_eq!(body, b"ok");
    let seen = origin.seen().to_lowercase();
    assert!(seen.contains("get / http/1.1"), "{seen}");
    assert!(
        !seen.contains("h2c"),
        "Upgrade: h2c never reaches the origin: {seen}"
    );
    assert!(!seen.contains("http2-settings"), "{seen}");

    let (_, head, _) = raw_request(
        addr,
        b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "unlisted upgrade: {head}");
    assert!(!origin.seen().to_lowercase().contains("upgrade: foo"));

    let (_, head, _) = raw_request(
        addr,
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 405"), "CONNECT: {head}");

    let (_, head, _) = raw_request(
        addr,
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 400"), "duplicate Host: {head}");
    assert!(!origin.seen().contains("b.test"), "never forwarded");
    assert_eq!(
        p.metric_value(
            "fulcrum_requests_rejected_total",
            &[("reason", "method_not_allowed")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_coding_other_than_chunked_alone_is_refused_with_501() {
    // hyper takes a body whose last coding is chunked and decodes only that: a coding under
    // it (gzip) would reach the server as the body's bytes, under a head that no longer
    // said so. Such a request is refused, and `chunked` alone goes on as the client spelt it.
    let origin = RawOrigin::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let p = Proxy::start(&raw_config(&origin, "")).await;
    let refused: [&[u8]; 3] = [
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ];
    for te in refused {
        let mut req = b"POST /refused HTTP/1.1\r\nHost: t\r\n".to_vec();
        req.extend_from_slice(te);
        req.extend_from_slice(b"\r\n3\r\nabc\r\n0\r\n\r\n");
        let (_, head, _) = raw_request(p.addr("web"), &req).await;
        let te = String::from_utf8_lossy(te);
        assert!(head.starts_with("http/1.1 501"), "{te}: {head}");
        assert!(head.contains("connection: close"), "{te}: {head}");
    }
    assert!(!origin.seen().contains("/refused"), "never forwarded");
    assert_eq!(
        p.metric_value(
            "fulcrum_requests_rejected_total",
            &[("reason", "transfer_coding")]
        ),
        3.0
    );

    let (_, head, body) = raw_request(
        p.addr("web"),
        b"POST /ok HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:  Chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    let seen = origin.seen().to_lowercase();
    assert_eq!(seen.matches("transfer-encoding").count(), 1, "{seen}");
    assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen}");
    assert!(seen.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{seen}");

    // With a Content-Length as well, Transfer-Encoding frames the body: the length never
    // reaches the server, and the client's connection closes after the answer (RFC 9112
    // §6.3: such a request may be an attempt at smuggling).
    let (mut s, head, body) = raw_request(
        p.addr("web"),
        b"POST /both HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    assert!(
        read_to_close(&mut s, LIMIT).await.is_some(),
        "closed after it"
    );
    let seen = origin.seen().to_lowercase();
    let both = &seen[seen.find("post /both").expect("forwarded")..];
    assert!(!both.contains("content-length"), "{both}");
    assert!(both.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{both}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_authority_wins_over_host_and_websocket_still_upgrades() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET http://real.test/headers HTTP/1.1\r\nHost: fake.test\r\n\r\n")
        .await
        .unwrap();
    let (_, body) = read_response(&mut s).await;
    let seen = String::from_utf8_lossy(&body);
    assert!(seen.contains("host: real.test"), "{seen}");
    assert!(!seen.contains("fake.test"), "{seen}");

    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_both_te_and_cl_is_reframed_and_a_malformed_one_is_a_502() {
    let te_cl = RawOrigin::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    let p = Proxy::start(&raw_config(&te_cl, "")).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(
        !text.contains("content-length"),
        "Content-Length dropped: {text}"
    );
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("hello world"), "the whole body: {text}");
    let r = get(&client(), &p.url("web", "/")).await;
    assert_eq!(r.text(), "hello world");

    let bad = RawOrigin::start(b"HTTP/1.1 200 OK\r\nContent-Length: banana\r\n\r\nok").await;
    let p = Proxy::start(&raw_config(&bad, "retries = 0")).await;
    let r = get(&client(), &p.url("web", "/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        p.metric_value(
            "fulcrum_server_errors_total",
            &[("server", "raw"), ("kind", "protocol")]
        ),
        1.0
    );
    // The broken connection is never pooled: the next request opens a new one.
    let before = bad.connections.load(Ordering::SeqCst);
    let _ = get(&client(), &p.url("web", "/")).await;
    assert_eq!(bad.connections.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_framed_by_more_than_chunked_alone_is_a_502_blamed_on_its_server() {
    // Transfer-Encoding belongs to the server's connection: the client is given the body
    // with the chunks taken off and no field saying how else it was coded. Passed on, a
    // gzip coding would reach the client as plain body bytes, and a body chunked twice
    // would keep one layer of chunks.
    let forms: [&'static [u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nCODED\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nCODED\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\nCODED",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nCODED\r\n0\r\n\r\n",
    ];
    for form in forms {
        let origin = RawOrigin::start(form).await;
        let p = Proxy::start(&raw_config(&origin, "retries = 0")).await;
        let r = get(&client(), &p.url("web", "/")).await;
        let form = String::from_utf8_lossy(form);
        assert_eq!(r.status, 502, "{form}: {}", r.text());
        assert!(!r.text().contains("CODED"), "{form}: {}", r.text());
        assert_eq!(
            p.metric_value(
                "fulcrum_server_errors_total",
                &[("server", "raw"), ("kind", "protocol")]
            ),
            1.0,
            "{form}"
        );
    }
    // `chunked` alone, in any case and padded, is read and passed on.
    let origin = RawOrigin::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:  CHUNKED \r\n\r\n5\r\nplain\r\n0\r\n\r\n",
    )
    .await;
    let p = Proxy::start(&raw_config(&origin, "")).await;
    let r = get(&client(), &p.url("web", "/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_and_te_trailers_survive_a_round_trip_to_an_h2_upstream() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0]]),
        "upstream_protocol = \"h2\"",
        NO_HEALTH,
    ))
    .await;
    let c = h2_client();
    let req = http::Request::get(p.url("web", "/trailers"))
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-te-seen"],
        "trailers",
        "TE: trailers reached the origin"
    );
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "payload\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_get_body_is_forwarded_not_dropped() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(
        b"GET /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("\r\n3\r\nabc\r\n"),
        "the body came back: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_closes_despite_pings() {
    let o = fleet(1).await;
    let cfg = with_listener(
        http_config(&servers(&[&o[0]]), "", NO_HEALTH),
        "[listener.timeouts]\nkeepalive_idle = \"500ms\"",
    );
    let p = Proxy::start(&cfg).await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(p.addr("web")).await.unwrap());
    let (mut tx, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(100))
            .keep_alive_while_idle(true)
            .handshake::<_, Full<Bytes>>(io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", p.addr("web")))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = tx.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    // The client pings every 100 ms; the proxy still closes after 500 ms without a request.
    tokio::time::timeout(LIMIT, conn)
        .await
        .expect("the idle h2 connection was closed")
        .unwrap()
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_rapid_reset_flood_is_cut_and_a_normal_client_is_served() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let stream = TcpStream::connect(p.addr("web")).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(stream).await.unwrap();
    let conn = tokio::spawn(conn);
    let uri = format!("http://{}/sleep/1000", p.addr("web"));
    let mut sent = 0u32;
    let mut refused = false;
    for _ in 0..20_000 {
        let ready = tokio::time::timeout(LIMIT, h2.clone().ready()).await;
        h2 = match ready {
            Ok(Ok(h)) => h,
            _ => {
                refused = true;
                break;
            }
        };
        let req = http::Request::get(&uri).body(()).unwrap();
        match h2.send_request(req, false) {
            Ok((_resp, mut body)) => {
                body.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    let closed = tokio::time::timeout(LIMIT, conn).await.is_ok();
    eprintln!("rapid reset: {sent} streams opened and reset before the proxy refused more");
    assert!(
        refused || closed,
        "the flooding connection was cut (after {sent} reset streams)"
    );
    assert!(sent < 20_000, "the flood was bounded: {sent}");
    let r = get(&client(), &p.url("web", "/")).await;
    assert_eq!(r.status, 200, "a normal client is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_is_a_local_error_the_accept_loop_survives_and_no_server_is_blamed() {
    let o = fleet(1).await;
    let cfg = http_config(&servers(&[&o[0]]), "", NO_HEALTH);
    // 64 descriptors: enough to start, far too few for 200 clients.
    let d = Daemon::spawn_limited(&cfg, 64);
    let web = d.addrs["web"];
    let mut held = Vec::new();
    for _ in 0..200 {
        // The kernel completes the handshake from the backlog; fulcrum cannot accept them all.
        if let Ok(s) = TcpStream::connect(web).await {
            held.push(s);
        }
    }
    d.wait_log("an accept failure", LIMIT, |v| {
        v["message"] == "accept failed; backing off until it succeeds again"
    });
    // Out of descriptors a while longer: the accept loop retries, backing off, not spinning.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    let admin = d.admin.expect("admin listener");
    wait_until(
        "descriptors free again: the admin answers",
        LIMIT,
        || async {
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(admin))
                .await
                .is_ok_and(|c| c.is_ok())
        },
    )
    .await;
    let r = get(&client(), &format!("http://{web}/")).await;
    assert_eq!(r.status, 200, "serving again once descriptors are free");
    let m = scrape(admin).await;
    assert!(
        metric(&m, "fulcrum_local_errors_total", &[("kind", "emfile")]).unwrap_or(0.0) >= 1.0,
        "EMFILE counted as a local error"
    );
    let blamed: f64 = m
        .lines()
        .filter(|l| l.starts_with("fulcrum_server_errors_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(blamed, 0.0, "no server blamed for our own limits");
    // One warning opens each episode (the first was read above) and one line closes it: the
    // next accepted connection. Connections keep coming until every episode has closed
    // (its line may still be on its way through the log pipe).
    let (mut warnings, mut recoveries) = (1, 0);
    let deadline = std::time::Instant::now() + LIMIT;
    while recoveries < warnings {
        assert!(
            std::time::Instant::now() < deadline,
            "{warnings} episodes began, {recoveries} ended"
        );
        let _ = get(&client(), &format!("http://{web}/")).await;
        for l in d.drain_log() {
            // The web listener's lines only: the admin listener, out of descriptors too,
            // logs its own "admin accept failed; backing off".
            warnings += usize::from(
                l.contains("\"message\":\"accept failed; backing off until it succeeds again\""),
            );
            recoveries += usize::from(l.contains("accepting again"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(warnings, recoveries, "one warning per episode of failures");
    let failures = metric(&m, "fulcrum_local_errors_total", &[("kind", "emfile")]).unwrap();
    assert!(
        failures > warnings as f64,
        "more failed accepts ({failures}) than warnings ({warnings}): logged once per episode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_before_or_during_the_response_are_their_own_fault() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    // Gone before the response head.
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET /sleep/300 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    wait_until("the request reached the origin", LIMIT, || async {
        o[0].inflight() == 1
    })
    .await;
    drop(s);
    // Gone in the middle of a large body.
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET /bytes/33554432 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 4096];
    s.read_exact(&mut first).await.unwrap();
    drop(s);
    left_without_blame(&p, &o[0], 2.0).await;
    assert_eq!(gets_ok(&client(), &p.url("web", "/"), 5).await, 5);
}

/// After clients left mid-request: `aborts` counted in all (response phase), every request
/// ended at the origin `o` (server "o0"), no server blamed and its load released.
async fn left_without_blame(p: &Proxy, o: &Origin, aborts: f64) {
    wait_until("the aborts counted", LIMIT, || async {
        p.metric_value("fulcrum_client_aborts_total", &[("phase", "response")]) == aborts
    })
    .await;
    wait_until("the requests ended at the origin", LIMIT, || async {
        o.inflight() == 0
    })
    .await;
    assert_eq!(server_errors(p), 0.0, "no server blamed");
    assert_eq!(
        p.server("o0").load.load(Ordering::SeqCst),
        0,
        "load released"
    );
}

/// hyper does not read a plain HTTP/1 connection while a request is in flight; the
/// connection's watchdog notices a client that leaves then. Here on a kept-alive connection
/// (its second request, read from the socket rather than from the first read that told
/// HTTP/1 from h2), with a server that would take ten minutes: only noticing the client
/// leave ends the request at the server. Bytes that arrive instead, a pipelined request,
/// are no leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_kept_alive_connection_mid_request_is_noticed_a_pipelined_one_is_not() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let aborts = || p.metric_value("fulcrum_client_aborts_total", &[("phase", "response")]);

    // Two requests, the second in the same write as the first, which takes a while.
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(
        b"GET /sleep/200 HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_to_close(&mut s, LIMIT)
        .await
        .expect("both pipelined requests answered, then closed");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.contains("slept 200 ms"), "{text}");
    assert_eq!(aborts(), 0.0, "a pipelined request is not a client leaving");

    for rude in [false, true] {
        let before = aborts();
        let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        s.write_all(b"GET /sleep/600000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        wait_until("the request reached the origin", LIMIT, || async {
            o[0].inflight() == 1
        })
        .await;
        if rude {
            // A reset rather than an end of stream.
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(s);
        left_without_blame(&p, &o[0], before + 1.0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stalls_mid_body_is_cut_off_and_blamed() {
    let stalls = RawOrigin::start(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part").await;
    let p = Proxy::start(&raw_config(
        &stalls,
        "[pool.timeouts]\nupstream_read_idle = \"300ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s, LIMIT)
        .await
        .expect("the client connection is closed once the server stalls");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("only part"),
        "the body was cut short: {text}"
    );
    assert_eq!(
        p.metric_value(
            "fulcrum_server_errors_total",
            &[("server", "raw"), ("kind", "timeout")]
        ),
        1.0,
        "a stalling server is blamed"
    );
    assert_eq!(p.server("raw").load.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_body_that_comes_after_its_head_does_not_hold_the_head_back() {
    // The server writes the head of a 5-byte response and sends the body only once the
    // client has that head: a proxy that held the head back for the body would never hand
    // it on before `upstream_read_idle`, and the body after that would be cut off as idle.
    let got_head = Arc::new(tokio::sync::Notify::new());
    let signal = got_head.clone();
    let (addr, origin) = serve_each(move |mut s| {
        let signal = signal.clone();
        async move {
            let mut buf = Vec::new();
            if read_request(&mut s, &mut buf).await.is_none() {
                return;
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                .await;
            signal.notified().await;
            let _ = s.write_all(b"later").await;
            // Open until the proxy closes its side.
            buf.clear();
            let _ = read_request(&mut s, &mut buf).await;
        }
    })
    .await;
    let p = Proxy::start(&raw_config_at(
        addr,
        "[pool.timeouts]\nupstream_read_idle = \"10s\"",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Byte by byte: what follows the head stays unread.
    let head = tokio::time::timeout(LIMIT, read_head(&mut s))
        .await
        .expect("the head arrives before its body");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 5\r\n"), "{head}");
    got_head.notify_one();
    let body = read_to_close(&mut s, LIMIT)
        .await
        .expect("the body follows, then the connection closes");
    assert_eq!(body, b"later", "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        p.metric_value(
            "fulcrum_server_errors_total",
            &[("server", "raw"), ("kind", "timeout")]
        ),
        0.0,
        "a server that sends its body in time is not blamed"
    );
    origin.abort();
}

/// A metric of listener "web" (0 when absent).
fn web_metric(p: &Proxy, name: &str) -> f64 {
    metric(&p.f.metrics().render(), name, &[("listener", "web")]).unwrap_or(0.0)
}

/// The listener's gauge of parked connections (idle HTTP/1 connections holding no buffers).
fn parked(p: &Proxy) -> f64 {
    web_metric(p, "fulcrum_listener_connections_parked")
}

fn accepted(p: &Proxy) -> f64 {
    web_metric(p, "fulcrum_listener_connections_total")
}

/// A proxy in front of one origin with `keepalive_idle`.
async fn parking_proxy(keepalive_idle: &str) -> (Vec<Origin>, Proxy) {
    let o = fleet(1).await;
    let cfg = with_listener(
        http_config(&servers(&[&o[0]]), "", NO_HEALTH),
        &format!("[listener.timeouts]\nkeepalive_idle = \"{keepalive_idle}\""),
    );
    let p = Proxy::start(&cfg).await;
    (o, p)
}

/// GET `path` on `s` (answered 200), then wait until the connection is parked.
async fn get_then_park(p: &Proxy, s: &mut TcpStream, path: &str) {
    let (head, _) = raw_get(s, path).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    wait_until("the idle connection is parked", LIMIT, || async {
        parked(p) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_parks_and_serves_its_next_request_in_pieces() {
    let (_o, p) = parking_proxy("60s").await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    get_then_park(&p, &mut s, "/").await;
    // The next request arrives in two pieces: the first wakes the parked connection, the
    // rest follows while a fresh hyper connection reads the head.
    s.write_all(b"GET /again HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"st: t\r\n\r\n").await.unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // Two requests over one client connection.
    assert_eq!(accepted(&p), 1.0);
    // Parked again after the second request; a third one in a single write, and parked
    // once more.
    wait_until("parked again", LIMIT, || async { parked(&p) == 1.0 }).await;
    get_then_park(&p, &mut s, "/third").await;
    assert_eq!(accepted(&p), 1.0);
    // The client goes away while parked: the connection ends and the gauge falls.
    drop(s);
    wait_until("the closed connection is gone", LIMIT, || async {
        parked(&p) == 0.0 && web_metric(&p, "fulcrum_listener_connections_active") == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_meets_a_parked_connection_as_the_listener_drains_is_answered() {
    let (_o, p) = parking_proxy("60s").await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    get_then_park(&p, &mut s, "/").await;
    // The client sends its next request as the shutdown begins: whether the parked
    // connection sees the drain before the request or after, the request is answered (not
    // met by a closed socket), and the connection then closes.
    let client = async {
        tokio::task::yield_now().await;
        let (head, _) = raw_get(&mut s, "/late").await;
        (head, read_to_close(&mut s, LIMIT).await)
    };
    let (stopped, (head, rest)) = tokio::join!(
        tokio::time::timeout(LIMIT, p.f.shutdown(Duration::from_secs(3600))),
        client
    );
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let rest = rest.expect("the connection was closed after the answer");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    stopped.expect("shutdown finished without waiting out its grace");
    assert_eq!(accepted(&p), 1.0, "one client connection throughout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_upgrades_to_a_websocket_and_loses_no_byte_sent_with_the_request() {
    let (_o, p) = parking_proxy("60s").await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    get_then_park(&p, &mut s, "/").await;
    // The upgrade request and the tunnel's first bytes in one write: the parked connection
    // reads the start of it, a fresh hyper connection the rest of the head, and the bytes
    // after the head must reach the origin once the tunnel is up.
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nping",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping", "the bytes sent with the request came back");
    s.write_all(b"pong").await.unwrap();
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong");
    assert_eq!(accepted(&p), 1.0, "one client connection throughout");
    assert_eq!(parked(&p), 0.0, "a tunnel is not parked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_still_closes_at_keepalive_idle_and_at_shutdown() {
    let (_o, p) = parking_proxy("2500ms").await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    get_then_park(&p, &mut s, "/").await;
    // keepalive_idle still holds: the proxy closes the parked connection (EOF, no bytes).
    let rest = read_to_close(&mut s, LIMIT)
        .await
        .expect("the parked connection was closed at keepalive_idle");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    wait_until("the gauge falls", LIMIT, || async { parked(&p) == 0.0 }).await;

    // A parked connection does not hold up a shutdown.
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    get_then_park(&p, &mut s, "/").await;
    tokio::time::timeout(LIMIT, p.f.shutdown(Duration::from_secs(3600)))
        .await
        .expect("shutdown finished");
    let rest = read_to_close(&mut s, LIMIT)
        .await
        .expect("the parked connection was closed at shutdown");
    assert!(rest.is_empty());
}
