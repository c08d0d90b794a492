//! L7 proxying through a running fulcrum to real origins.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn sha(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 256) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_300_gets_evenly() {
    let o = fleet(3).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1], &o[2]]),
        "",
        NO_HEALTH,
    ))
    .await;
    let c = client();
    let counts = spread(&c, &p.url("web", "/"), 300).await;
    let mut v: Vec<usize> = ["o0", "o1", "o2"]
        .iter()
        .map(|n| counts.get(*n).copied().unwrap_or(0))
        .collect();
    v.sort();
    assert_eq!(
        v,
        [100, 100, 100],
        "round robin over 300 requests: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_arrive_intact() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let c = client();
    for size in [0usize, 1024, 8 << 20] {
        let body = pattern(size);
        let req = http::Request::post(p.url("web", "/echo"))
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let r = send(&c, req).await.unwrap();
        assert_eq!(r.status, 200, "echo of {size} bytes");
        assert_eq!(r.body.len(), size, "echoed length for {size} bytes");
        assert_eq!(sha(&r.body), sha(&body), "checksum of {size} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_arrives_intact() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    // A streamed body of unknown length goes out with Transfer-Encoding: chunked.
    let chunks: Vec<Bytes> = (0..64).map(|i| Bytes::from(pattern(10_000 + i))).collect();
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let stream = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(hyper::body::Frame::data(c))),
    );
    let body = StreamBody::new(stream);
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(p.url("web", "/echo"))
        .body(body)
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), all.len(), "chunked upload length");
    assert_eq!(sha(&got), sha(&all), "chunked upload checksum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_streams_intact() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let n = 16 << 20;
    let r = get(&client(), &p.url("web", &format!("/bytes/{n}"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n, "16 MiB response length");
    let expect: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    assert_eq!(sha(&r.body), sha(&expect), "16 MiB response checksum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_echoes_both_ways() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(
        head.starts_with("http/1.1 101"),
        "switching protocols: {head}"
    );
    assert!(
        head.contains("upgrade: websocket"),
        "upgrade header passed back: {head}"
    );
    for msg in [&b"hello"[..], &[0u8, 1, 2, 255][..], &pattern(100_000)[..]] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg, "echo through the upgraded tunnel");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_prior_knowledge_client_reaches_http1_origin() {
    let o = fleet(2).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0], &o[1]]), "", NO_HEALTH)).await;
    let c = h2_client();
    let counts = spread(&c, &p.url("web", "/"), 10).await;
    assert_eq!(counts.values().sum::<usize>(), 10);
    assert_eq!(
        counts.len(),
        2,
        "both origins served h2 clients: {counts:?}"
    );
    let r = get(&c, &p.url("web", "/headers")).await;
    let seen = r.text();
    assert!(
        seen.contains(&format!("host: {}", p.addr("web"))),
        "Host from :authority: {seen}"
    );
    assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
}

/// Connects to `addr` and writes `pieces`, pausing between them so that each arrives on
/// its own.
async fn send_in_pieces(addr: std::net::SocketAddr, pieces: &[&[u8]]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        s.write_all(piece).await.unwrap();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_or_an_h2_preface_that_arrives_in_pieces_is_told_apart_and_served() {
    // The listener reads a connection's first bytes to tell h2's preface from HTTP/1 and
    // hands them to the codec: nothing may be lost or read twice, however they arrive.
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;

    // HTTP/1 whose first piece is a prefix of the preface ("P"), then the rest.
    let pieces: [&[u8]; 3] = [
        b"P",
        b"OST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhel",
        b"lo",
    ];
    let mut s = send_in_pieces(p.addr("web"), &pieces).await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "served: {head}");

    // HTTP/1 in two pieces, the first not a prefix of the preface.
    let pieces: [&[u8]; 2] = [b"GE", b"T / HTTP/1.1\r\nHost: test\r\n\r\n"];
    let mut s = send_in_pieces(p.addr("web"), &pieces).await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "first request: {head}");

    // h2's preface split inside, then SETTINGS: the server answers with h2's SETTINGS.
    let pieces: [&[u8]; 2] = [b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"];
    let mut s = send_in_pieces(p.addr("web"), &pieces).await;
    let mut frame = [0u8; 9];
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut frame))
        .await
        .expect("the server's first frame")
        .unwrap();
    assert_eq!(frame[3], 4, "an h2 SETTINGS frame: {frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_hop_by_hop_removal() {
    let o = fleet(1).await;
    let cfg = http_config(&servers(&[&o[0]]), "", NO_HEALTH)
        .replace("pool = \"app\"\n", "pool = \"app\"\nforwarded = \"both\"\n");
    let p = Proxy::start(&cfg).await;
    let req = http::Request::get(p.url("web", "/headers"))
        .header("x-forwarded-for", "10.9.8.7")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("host", "shop.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let seen = send(&client(), req).await.unwrap().text();
    // No sender is trusted: a client's own X-Forwarded-For is dropped, never extended.
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(
        !seen.contains("10.9.8.7"),
        "spoofed address removed: {seen}"
    );
    assert!(seen.contains("x-forwarded-host: shop.test"), "{seen}");
    assert!(
        seen.contains("forwarded: for=127.0.0.1;proto=http;host=\"shop.test\""),
        "{seen}"
    );
    assert!(seen.contains("host: shop.test"), "Host preserved: {seen}");
    assert!(
        !seen.contains("x-private"),
        "header named in Connection removed: {seen}"
    );
}

/// What browsers send with every HTTP/1.1 request: `Connection: keep-alive` (read in the
/// proxy's first scan of the head and removed without a second reading), and the same
/// connection then carries the next request, whose Connection field lists a name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browsers_keep_alive_field_is_removed_and_a_listed_name_on_the_same_connection_too() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    for (connection, extra) in [
        ("keep-alive", "Keep-Alive: timeout=5\r\nTE: trailers\r\n"),
        ("Keep-Alive, X-Private", "X-Private: secret\r\n"),
        ("keep-alive", ""),
    ] {
        let req = format!(
            "GET /headers HTTP/1.1\r\nHost: shop.test\r\nConnection: {connection}\r\n\
             {extra}Accept-Language: en-GB\r\nUser-Agent: Mozilla/5.0\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("http/1.1 200"), "{connection}: {head}");
        let seen = String::from_utf8_lossy(&body);
        for kept in [
            "host: shop.test",
            "accept-language: en-GB",
            "user-agent: Mozilla/5.0",
        ] {
            assert!(
                seen.contains(kept),
                "{connection}: {kept} missing from {seen}"
            );
        }
        for gone in ["\nconnection:", "\nkeep-alive:", "x-private", "deflate"] {
            assert!(
                !seen.to_lowercase().contains(gone),
                "{connection}: {gone} in {seen}"
            );
        }
        // TE is hop-by-hop too; a client that takes trailers is said to upstream afresh.
        assert_eq!(
            seen.contains("\nte: trailers"),
            extra.contains("TE"),
            "{seen}"
        );
    }
}

/// Connections the `web` listener has taken from the kernel so far.
fn web_connections_accepted(p: &Proxy) -> f64 {
    p.metric_value("fulcrum_listener_connections_total", &[("listener", "web")])
}

/// HTTP clients speak first, so an HTTP listener has the kernel hand a connection on only
/// once its first bytes are in (`TCP_DEFER_ACCEPT`): one that has said nothing is not yet
/// fulcrum's, and the first read of one that has finds its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_listener_takes_a_connection_once_the_client_has_spoken() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let accepted = || web_connections_accepted(&p);
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    // Time for a listener that does not defer to accept it; the kernel holds a silent
    // connection back for longer (until its first SYN-ACK resend, after a second).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        accepted(),
        0.0,
        "a connection that has sent nothing is still the kernel's"
    );
    let (head, body) = raw_get(&mut s, "/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!body.is_empty());
    assert_eq!(accepted(), 1.0);
}

/// A connection that stays silent past the kernel's hold is handed on with nothing to read:
/// its first read finds nothing and waits, and the request that comes later is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_its_client_spoke_is_served_when_it_does() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let accepted = || web_connections_accepted(&p);
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    wait_until(
        "the kernel hands the silent connection on",
        std::time::Duration::from_secs(10),
        || async { accepted() == 1.0 },
    )
    .await;
    let (head, body) = raw_get(&mut s, "/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_gives_502() {
    // A port that was bound and released: nothing listens there now.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = http_config(
        &format!("{{ addr = \"{dead}\" }}"),
        "retries = 1",
        NO_HEALTH,
    );
    let p = Proxy::start(&cfg).await;
    let r = get(&client(), &p.url("web", "/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let m = reqwest_metrics(&p).await;
    assert!(
        m.contains("fulcrum_proxy_errors_total{listener=\"web\",reason=\"connect\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_gives_503_with_retry_after() {
    let o = fleet(2).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0], &o[1]]), "", FAST_TCP_HEALTH)).await;
    let c = client();
    assert_eq!(get(&c, &p.url("web", "/")).await.status, 200);
    o[0].kill();
    o[1].kill();
    let url = p.url("web", "/");
    wait_until(
        "both servers marked down",
        std::time::Duration::from_secs(10),
        || async { p.f.pool("app").unwrap().eligible().primary.is_empty() },
    )
    .await;
    let r = get(&c, &url).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
}

/// A config in front of the first of `o`, which gets 300 ms to send a response head.
fn response_header_300ms(o: &[fulcrum::demo::Origin]) -> String {
    http_config(
        &servers(&[&o[0]]),
        "[pool.timeouts]\nresponse_header = \"300ms\"",
        NO_HEALTH,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_origin_gives_504() {
    let o = fleet(1).await;
    let p = Proxy::start(&response_header_300ms(&o)).await;
    let r = get(&client(), &p.url("web", "/sleep/3000")).await;
    assert_eq!(r.status, 504, "{}", r.text());
    let fast = get(&client(), &p.url("web", "/sleep/1")).await;
    assert_eq!(
        fast.status, 200,
        "a fast request on the same pool still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_comes_after_its_head_starts_the_response_wait_when_it_ends() {
    // The body comes 100 ms after its head, so the request's wait for the response head
    // begins with the body still on its way, and must start its 300 ms once the body ends
    // (the origin would answer after 3 s).
    let o = fleet(1).await;
    let p = Proxy::start(&response_header_300ms(&o)).await;
    let heads: [(&[u8], &[u8], &[u8]); 2] = [
        (b"Content-Length: 10\r\n", b"", b"0123456789"),
        (
            b"Transfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n",
            b"0\r\n\r\n",
        ),
    ];
    for (framing, first, rest) in heads {
        let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
        let mut req = b"POST /sleep/3000 HTTP/1.1\r\nHost: t\r\n".to_vec();
        req.extend_from_slice(framing);
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(first);
        s.write_all(&req).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        s.write_all(rest).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(
            head.starts_with("http/1.1 504"),
            "{}: {head}",
            String::from_utf8_lossy(framing)
        );
    }
}

/// A client connection keeps one `response_header` timer across its requests and moves its
/// deadline for each: it must neither fire early on a later request nor stay spent after it
/// fired once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_connection_times_out_each_request_on_its_own_deadline() {
    let o = fleet(1).await;
    let p = Proxy::start(&response_header_300ms(&o)).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    for _ in 0..3 {
        let (head, _) = raw_get(&mut s, "/sleep/1").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    let (head, _) = raw_get(&mut s, "/sleep/3000").await;
    assert!(head.starts_with("http/1.1 504"), "slow: {head}");
    // The timer fired; the next requests on the same connection get a fresh deadline.
    for path in ["/sleep/1", "/sleep/100"] {
        let (head, _) = raw_get(&mut s, path).await;
        assert!(
            head.starts_with("http/1.1 200"),
            "{path} after a timeout: {head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_gets_400_not_a_panic() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(
        head.starts_with("HTTP/1.1 400"),
        "conflicting Content-Length rejected: {head}"
    );
    // The proxy is still serving.
    assert_eq!(get(&client(), &p.url("web", "/")).await.status, 200);
}

async fn reqwest_metrics(p: &Proxy) -> String {
    get(&client(), &format!("http://{}/metrics", p.admin().await))
        .await
        .text()
}

/// Reads until EOF or `limit`; returns whether the peer closed.
async fn closed_within(s: &mut TcpStream, limit: std::time::Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connection_is_closed() {
    let o = fleet(1).await;
    let cfg = http_config(&servers(&[&o[0]]), "", NO_HEALTH).replace(
        "pool = \"app\"\n",
        "pool = \"app\"\n[listener.timeouts]\nkeepalive_idle = \"300ms\"\nheader_read = \"60s\"\n",
    );
    let p = Proxy::start(&cfg).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut s, std::time::Duration::from_secs(10)).await,
        "idle keep-alive connection closed by the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_is_cut_off() {
    let o = fleet(1).await;
    let cfg = http_config(&servers(&[&o[0]]), "", NO_HEALTH).replace(
        "pool = \"app\"\n",
        "pool = \"app\"\n[listener.timeouts]\nheader_read = \"300ms\"\n",
    );
    let p = Proxy::start(&cfg).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, std::time::Duration::from_secs(10)).await,
        "incomplete head closed after header_read"
    );
    assert_eq!(o[0].hits(), 0, "nothing reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_pool_option() {
    let o = fleet(2).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1]]),
        "upstream_protocol = \"h2\"",
        NO_HEALTH,
    ))
    .await;
    let c = client();
    let counts = spread(&c, &p.url("web", "/"), 20).await;
    assert_eq!(counts.len(), 2, "both h2 origins used: {counts:?}");
    let body = pattern(300_000);
    let req = http::Request::post(p.url("web", "/echo"))
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let r = send(&c, req).await.unwrap();
    assert_eq!(sha(&r.body), sha(&body), "body through an h2 upstream");
}

/// An origin that writes each response's head, then its body in two pieces, each after a
/// pause (as many application servers do): answers `GET /N` with N bytes of `pattern`.
/// Counts the connections it accepts.
async fn head_then_body_origin() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let conns = std::sync::Arc::new(AtomicU64::new(0));
    let counted = conns.clone();
    let (addr, _) = serve_each(move |mut s| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 4);
                let n: usize = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.trim_start_matches('/').parse().ok())
                    .unwrap_or(0);
                let body = pattern(n);
                let pause = || tokio::time::sleep(std::time::Duration::from_millis(30));
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                pause().await;
                let (a, b) = body.split_at(n / 2);
                if s.write_all(a).await.is_err() {
                    return;
                }
                pause().await;
                if s.write_all(b).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_written_apart_from_their_heads_arrive_whole_on_one_server_connection() {
    let (origin, conns) = head_then_body_origin().await;
    let p = Proxy::start(&http_config(
        &format!("{{ addr = \"{origin}\", name = \"apart\" }}"),
        "",
        NO_HEALTH,
    ))
    .await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    // The body comes 30 ms after its head, in two writes: a short one is awaited with its
    // head for a moment (20 ms), then streams as a long one does. The head first, without
    // waiting for its body, is tests/hostile.rs's
    // `a_short_body_that_comes_after_its_head_does_not_hold_the_head_back`.
    for n in [1, 10, 5000, 16 * 1024, 100_000, 7] {
        let (head, body) = raw_get(&mut s, &format!("/{n}")).await;
        assert!(head.starts_with("http/1.1 200"), "{n}: {head}");
        assert!(
            head.contains(&format!("content-length: {n}\r\n")),
            "{n}: {head}"
        );
        assert_eq!(body.len(), n, "/{n}");
        assert!(body == pattern(n), "/{n}: the body came through changed");
    }
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "every response ended cleanly, so one server connection carried them all"
    );
}

/// Data segments the socket has received so far (the kernel's `tcpi_data_segs_in`).
fn data_segments_in(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable tcp_info of `len` bytes; the fd is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_data_segs_in
}

/// A server that reads each request whole (head and Content-Length body) and answers with
/// the number of TCP data segments the request took to arrive.
async fn segment_counting_origin() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    serve_each(|mut s| async move {
        let mut buf = Vec::new();
        let mut before = 0;
        while let Some(end) = read_request(&mut s, &mut buf).await {
            buf.drain(..end);
            let now = data_segments_in(&s);
            let body = (now - before).to_string();
            before = now;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_came_with_its_head_goes_to_the_server_in_the_same_segment() {
    let (origin, task) = segment_counting_origin().await;
    let p = Proxy::start(&http_config(
        &format!("{{ addr = \"{origin}\", name = \"seg\" }}"),
        "",
        NO_HEALTH,
    ))
    .await;
    // Each request, head and body in one write, reaches the proxy in one read; the first
    // of a connection too, though the listener's look for an h2 preface reads only its
    // first 1 KiB (the rest is read on at once).
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    for (i, size) in [4000usize, 10, 1024, 4000, 1].into_iter().enumerate() {
        post_in_one_segment(&mut s, i, size).await;
    }
    // Chunked, the chunks that came together go together, with the last chunk: one chunk
    // of 1 KiB, then four of 4 KiB (more than hyper's first read of the connection).
    chunked_post_in_one_segment(&mut s, 10, 1024, 1024).await;
    chunked_post_in_one_segment(&mut s, 11, 16 * 1024, 4096).await;
    chunked_post_in_one_segment(&mut s, 12, 3000, 100).await;
    // A second connection, whose first request is the 7 KiB that fits hyper's first read.
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    post_in_one_segment(&mut s, 5, 7000).await;
    // Parked while idle, a connection reads only a request's first 32 bytes when its client
    // speaks again; hyper's read of the rest of the head takes the body with it.
    let parked = || {
        p.metric_value(
            "fulcrum_listener_connections_parked",
            &[("listener", "web")],
        )
    };
    wait_until(
        "both connections parked",
        std::time::Duration::from_secs(20),
        || async { parked() == 2.0 },
    )
    .await;
    post_in_one_segment(&mut s, 6, 4000).await;
    // An h2 client's DATA frames that came together go out together too: with a
    // content-length (the server gets that framing) and without (chunked to the server).
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    h2_post_in_one_segment(&mut s, 1, 3000, 300, true).await;
    h2_post_in_one_segment(&mut s, 3, 1000, 100, false).await;
    task.abort();
}

/// One h2 frame: its 9-byte header, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// On an h2 connection (the preface and SETTINGS sent with its first request), posts `size`
/// bytes on `stream` in DATA frames of `frame` bytes, HEADERS and every DATA frame in one
/// write, and asserts that the server behind the proxy received the request in one segment.
/// The frames are written by hand (hpack's static table, literal fields) so that the write
/// is one: a client library flushes a large DATA frame on its own.
async fn h2_post_in_one_segment(
    s: &mut TcpStream,
    stream: u32,
    size: usize,
    frame: usize,
    with_length: bool,
) {
    let mut out = Vec::new();
    if stream == 1 {
        out.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        out.extend(h2_frame(4, 0, 0, &[]));
    }
    // :method POST, :scheme http (indexed); :path /up, :authority t (literal, indexed name).
    let mut block = vec![0x83, 0x86, 0x04, 3, b'/', b'u', b'p', 0x01, 1, b't'];
    if with_length {
        // content-length (static index 28), literal without indexing.
        let n = size.to_string();
        block.extend_from_slice(&[0x0f, 28 - 15, n.len() as u8]);
        block.extend_from_slice(n.as_bytes());
    }
    out.extend(h2_frame(1, 0x4, stream, &block));
    let body = pattern(size);
    let pieces: Vec<&[u8]> = body.chunks(frame).collect();
    for (k, piece) in pieces.iter().enumerate() {
        let end = if k + 1 == pieces.len() { 0x1 } else { 0 };
        out.extend(h2_frame(0, end, stream, piece));
    }
    s.write_all(&out).await.unwrap();
    // The response: HEADERS (`:status 200` is the static table's 8), then DATA to the end
    // of the stream; the server's SETTINGS are acknowledged, other frames skipped.
    let (mut status, mut data) = (None, Vec::new());
    let answer = async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let on = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.unwrap();
            match kind {
                4 if flags & 0x1 == 0 => s.write_all(&h2_frame(4, 0x1, 0, &[])).await.unwrap(),
                1 if on == stream => status = payload.first().copied(),
                0 if on == stream => data.extend_from_slice(&payload),
                7 => panic!("stream {stream}: the proxy sent GOAWAY: {payload:?}"),
                _ => {}
            }
            if on == stream && matches!(kind, 0 | 1) && flags & 0x1 != 0 {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), answer)
        .await
        .unwrap_or_else(|_| panic!("stream {stream}: no whole response"));
    assert_eq!(status, Some(0x88), "stream {stream}: a 200 (hpack index 8)");
    assert_eq!(
        String::from_utf8_lossy(&data),
        "1",
        "h2 stream {stream} ({size} bytes in {frame}-byte DATA frames) reached the server in \
         one segment"
    );
}

/// Posts `size` bytes, head and body in one write, and asserts that the server behind the
/// proxy received the request in one segment.
async fn post_in_one_segment(s: &mut TcpStream, i: usize, size: usize) {
    let mut req =
        format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n").into_bytes();
    req.extend_from_slice(&pattern(size));
    send_in_one_segment(s, i, size, &req).await;
}

/// Posts `size` bytes chunked, `chunk` bytes to a chunk, the head, every chunk and the last
/// one in one write, and asserts that the server behind the proxy received it in one segment.
async fn chunked_post_in_one_segment(s: &mut TcpStream, i: usize, size: usize, chunk: usize) {
    let mut req = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in pattern(size).chunks(chunk) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    send_in_one_segment(s, i, size, &req).await;
}

async fn send_in_one_segment(s: &mut TcpStream, i: usize, size: usize, req: &[u8]) {
    s.write_all(req).await.unwrap();
    let (head, body) = read_response(s).await;
    assert!(head.starts_with("http/1.1 200"), "request {i}: {head}");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "1",
        "request {i} ({size} bytes of body) reached the server in one segment, head and \
         body written together"
    );
}

/// An origin that answers each request as soon as its head is in ("ok"), then, once `go`
/// says so, reads the request's body to its end and keeps the connection for the next
/// request, as nginx does on a `return`. Its sockets' receive buffers are small, so that
/// a large body cannot all be on its way before it reads. Counts its connections and the
/// body bytes it read.
async fn answers_before_the_body_origin(
    go: std::sync::Arc<tokio::sync::Notify>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(ANY.parse().unwrap()).unwrap();
    let l = sock.listen(64).unwrap();
    let addr = l.local_addr().unwrap();
    let (conns, body) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c, b) = (conns.clone(), body.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (b, go) = (b.clone(), go.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let mut left: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    buf.drain(..end);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                    go.notified().await;
                    loop {
                        let k = left.min(buf.len());
                        buf.drain(..k);
                        left -= k;
                        b.fetch_add(k as u64, Ordering::SeqCst);
                        if left == 0 {
                            break;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                }
            });
        }
    });
    (addr, conns, body, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_answers_before_the_upload_ends_still_gets_all_of_it() {
    use std::sync::atomic::Ordering;
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let (origin, conns, received, task) = answers_before_the_body_origin(go.clone()).await;
    let p = Proxy::start(&http_config(
        &format!("{{ addr = \"{origin}\", name = \"early\" }}"),
        "",
        NO_HEALTH,
    ))
    .await;
    let s = TcpStream::connect(p.addr("web")).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // 1 MiB, and a server that reads none of it until the client has its answer (through
    // a small receive buffer): the answer reaches the proxy with most of the body unsent.
    const SIZE: usize = 1 << 20;
    for i in 0..3 {
        let upload = tokio::spawn(async move {
            let head = format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n");
            wr.write_all(head.as_bytes()).await.unwrap();
            wr.write_all(&pattern(SIZE)).await.unwrap();
            wr
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "request {i}: the connection closed after {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "request {i}: {}",
            String::from_utf8_lossy(&got)
        );
        // The client's whole upload is taken, and the connection stays for the next request.
        go.notify_one();
        wr = upload.await.unwrap();
        // The rest of the body goes out after the response: the server gets all of it.
        let whole = (i + 1) as u64 * SIZE as u64;
        wait_until(
            "the server read the whole body",
            std::time::Duration::from_secs(20),
            || {
                let r = received.load(Ordering::SeqCst);
                async move { r == whole }
            },
        )
        .await;
    }
    // Each server connection goes back to the pool once its request is sent whole. The
    // next request on the client's connection comes right behind a body, often before the
    // previous connection is back (a task sends the rest), so it may take a new one; by
    // the third request the first is back: two connections at most, not one per request.
    let used = conns.load(Ordering::SeqCst);
    assert!(used <= 2, "{used} server connections for 3 requests");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_for_100_continue_gets_it_and_its_body_goes_through() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    // `/sink` reads the whole body before it answers, so no final response can come before
    // the body: the first head the client hears must be the proxy's 100 Continue.
    s.write_all(
        b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // The body is held back until the proxy asks for it.
    let interim = tokio::time::timeout(std::time::Duration::from_secs(10), read_head(&mut s))
        .await
        .expect("no 100 Continue");
    assert!(interim.starts_with("http/1.1 100"), "{interim}");
    s.write_all(b"hello").await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(String::from_utf8_lossy(&body), "o0 received 5 bytes\n");
}
