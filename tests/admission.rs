//! Who the client is, through a running fulcrum: forwarding headers believed only from
//! trusted proxies, inbound PROXY protocol, allow/deny, rate limits (also across a reload).
//! A second client address is 127.0.0.2 (all of 127.0.0.0/8 is loopback on Linux).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fulcrum::config::ProxyProtocol;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

fn with_listener(cfg: String, extra: &str) -> String {
    cfg.replacen("pool = \"app\"\n", &format!("pool = \"app\"\n{extra}\n"), 1)
}

fn xff(body: &str) -> &str {
    body.lines()
        .find_map(|l| l.strip_prefix("x-forwarded-for: "))
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let o = fleet(1).await;
    let cfg = with_listener(
        http_config(&servers(&[&o[0]]), "", NO_HEALTH),
        "trusted_proxies = [\"127.0.0.2/32\"]",
    );
    let p = Proxy::start(&cfg).await;
    let web = p.addr("web");
    // From an untrusted address: the spoofed hop is dropped.
    let (_, body) = request_from("127.0.0.1", web, "X-Forwarded-For: 1.2.3.4\r\n").await;
    assert_eq!(xff(&body), "127.0.0.1", "{body}");
    // From the trusted proxy: its chain goes on, with the proxy appended.
    let (_, body) = request_from("127.0.0.2", web, "X-Forwarded-For: 1.2.3.4\r\n").await;
    assert_eq!(xff(&body), "1.2.3.4, 127.0.0.2", "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    // X-Real-IP and Forwarded from anyone are removed (this listener reads X-Forwarded-For).
    let (_, body) = request_from(
        "127.0.0.2",
        web,
        "X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n",
    )
    .await;
    assert!(!body.contains("6.6.6.6"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_chain_goes_on_in_forwarded_as_in_x_forwarded_for() {
    let o = fleet(1).await;
    let cfg = with_listener(
        http_config(&servers(&[&o[0]]), "", NO_HEALTH),
        "trusted_proxies = [\"127.0.0.2/32\"]\nforwarded = \"both\"",
    );
    let p = Proxy::start(&cfg).await;
    let web = p.addr("web");
    // From the trusted proxy: both forms carry its chain, then the proxy itself.
    let (_, body) = request_from("127.0.0.2", web, "X-Forwarded-For: 1.2.3.4\r\n").await;
    assert_eq!(xff(&body), "1.2.3.4, 127.0.0.2", "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(
        body.contains("forwarded: for=1.2.3.4, for=127.0.0.2;proto=http;host=\"t\"\n"),
        "{body}"
    );
    // From anyone else: only the sender, in both forms.
    let (_, body) = request_from("127.0.0.1", web, "X-Forwarded-For: 1.2.3.4\r\n").await;
    assert_eq!(xff(&body), "127.0.0.1", "{body}");
    assert!(
        body.contains("forwarded: for=127.0.0.1;proto=http;host=\"t\"\n"),
        "{body}"
    );
}

fn proxy_header(v: ProxyProtocol, src: &str, dst: SocketAddr) -> Vec<u8> {
    fulcrum::proxy::proxy_protocol::header(v, src.parse().unwrap(), dst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_header_sets_the_client_for_headers_hashing_and_the_log() {
    let o = fleet(4).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cfg = with_listener(
        http_config(
            &servers(&[&o[0], &o[1], &o[2], &o[3]]),
            "algorithm = \"ip_hash\"",
            NO_HEALTH,
        ),
        "trusted_proxies = [\"127.0.0.1/32\"]\naccept_proxy = \"any\"",
    );
    let cfg = format!(
        "[access_log]\nenabled = true\npath = \"{}\"\nformat = \"json\"\n{cfg}",
        log.display()
    );
    let p = Proxy::start(&cfg).await;
    let web = p.addr("web");
    let mut placed = Vec::new();
    for (i, v) in [ProxyProtocol::V1, ProxyProtocol::V2]
        .into_iter()
        .enumerate()
    {
        for round in 0..3 {
            let client = format!("198.51.100.{}:4000{round}", 10 + i);
            let mut s = TcpStream::connect(web).await.unwrap();
            s.write_all(&proxy_header(v, &client, web)).await.unwrap();
            s.write_all(b"GET /headers HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            let (head, body) = read_response(&mut s).await;
            let body = String::from_utf8_lossy(&body).into_owned();
            let origin = head
                .lines()
                .find_map(|l| l.strip_prefix("x-origin: "))
                .unwrap()
                .to_string();
            assert_eq!(
                xff(&body),
                &client[..client.find(':').unwrap()],
                "{v:?}: {body}"
            );
            placed.push((i, origin));
        }
    }
    // ip_hash keys on the proxied client: each client stays on one server.
    for i in 0..2 {
        let mine: Vec<_> = placed
            .iter()
            .filter(|(c, _)| *c == i)
            .map(|(_, o)| o)
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] == w[1]),
            "client {i} moved: {mine:?}"
        );
    }
    wait_until("access log lines written", LIMIT, || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 6
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("198.51.100.10"), "{text}");
    assert!(text.contains("198.51.100.11"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_from_an_untrusted_peer_gets_the_connection_closed() {
    let o = fleet(1).await;
    let cfg = with_listener(
        http_config(&servers(&[&o[0]]), "", NO_HEALTH),
        "trusted_proxies = [\"127.0.0.2/32\"]\naccept_proxy = \"v1\"",
    );
    let p = Proxy::start(&cfg).await;
    let web = p.addr("web");
    let mut s = connect_from("127.0.0.1", web).await;
    let _ = s
        .write_all(&proxy_header(ProxyProtocol::V1, "198.51.100.9:1", web))
        .await;
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let got = read_to_close(&mut s, LIMIT).await.expect("closed");
    assert!(
        got.is_empty(),
        "no answer: {}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        p.metric_value(
            "fulcrum_proxy_protocol_rejected_total",
            &[("reason", "untrusted")]
        ),
        1.0
    );
    assert_eq!(o[0].hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_answers_403_on_http_and_closes_on_tcp_and_allow_admits_only_its_range() {
    let o = fleet(1).await;
    let base = http_config(&servers(&[&o[0]]), "", NO_HEALTH);
    let cfg = format!(
        "{}\n[[listener]]\nname = \"relay\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"app\"\ndeny = [\"127.0.0.2/32\"]\n",
        with_listener(base.clone(), "deny = [\"127.0.0.2/32\"]")
    );
    let p = Proxy::start(&cfg).await;
    let (head, _) = request_from("127.0.0.2", p.addr("web"), "").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    let (head, _) = request_from("127.0.0.1", p.addr("web"), "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut s = connect_from("127.0.0.2", p.addr("relay")).await;
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let got = read_to_close(&mut s, LIMIT)
        .await
        .expect("closed at accept");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(
        p.metric_value("fulcrum_access_denied_total", &[("listener", "relay")]),
        1.0
    );

    let p2 = Proxy::start(&with_listener(base, "allow = [\"127.0.0.2/32\"]")).await;
    let (head, _) = request_from("127.0.0.2", p2.addr("web"), "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let (head, _) = request_from("127.0.0.1", p2.addr("web"), "").await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
}

/// Status codes of `n` requests from `from`, each on its own connection.
async fn statuses(from: &str, to: SocketAddr, n: usize, extra: &str) -> Vec<u16> {
    let mut v = Vec::new();
    for _ in 0..n {
        let (head, _) = request_from(from, to, extra).await;
        v.push(head[9..12].parse().unwrap());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_limit_gets_429_while_another_client_is_unaffected_and_a_reload_keeps_it()
{
    let o = fleet(1).await;
    let cfg = with_listener(
        http_config(&servers(&[&o[0]]), "", NO_HEALTH),
        "[listener.rate_limit]\nrate = 0.1\nburst = 3",
    );
    let p = Proxy::start(&cfg).await;
    let web = p.addr("web");
    let got = statuses("127.0.0.1", web, 5, "").await;
    assert_eq!(got, [200, 200, 200, 429, 429], "burst of 3, then limited");
    let mut s = connect_from("127.0.0.1", web).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!(
        (1..=10).contains(&retry),
        "retry after {retry}s (one token per 10 s)"
    );
    assert_eq!(
        statuses("127.0.0.2", web, 3, "").await,
        [200, 200, 200],
        "another client"
    );

    // A reload that keeps the listener keeps its buckets.
    p.reload_with(&cfg.replace("[pool.health]", "retries = 1\n\n[pool.health]"))
        .await
        .unwrap();
    assert_eq!(
        statuses("127.0.0.1", web, 1, "").await,
        [429],
        "still limited"
    );
    assert!(p.metric_value("fulcrum_rate_limited_total", &[("listener", "web")]) >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_limits_per_header_value() {
    let o = fleet(1).await;
    let cfg = with_listener(
        http_config(&servers(&[&o[0]]), "", NO_HEALTH),
        "[listener.rate_limit]\nrate = 0.1\nburst = 2\nkey = \"header:X-Api-Key\"",
    );
    let p = Proxy::start(&cfg).await;
    let web = p.addr("web");
    let a = statuses("127.0.0.1", web, 3, "X-Api-Key: alpha\r\n").await;
    let b = statuses("127.0.0.1", web, 2, "X-Api-Key: beta\r\n").await;
    assert_eq!(a, [200, 200, 429]);
    assert_eq!(b, [200, 200], "another key has its own bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_reads_proxy_v2_and_passes_the_client_on() {
    // The origin records what it receives: the PROXY v1 line fulcrum sends on carries the
    // client that the inbound v2 header named.
    let raw = RawOrigin::start(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let cfg = format!(
        r#"
[admin]
bind = "127.0.0.1:0"
[[listener]]
name = "relay"
bind = "127.0.0.1:0"
protocol = "tcp"
pool = "app"
trusted_proxies = ["127.0.0.1/32"]
accept_proxy = "v2"
send_proxy = "v1"
[[pool]]
name = "app"
servers = [ {{ addr = "{}" }} ]
[pool.health]
kind = "none"
"#,
        raw.addr
    );
    let p = Proxy::start(&cfg).await;
    let relay = p.addr("relay");
    let mut s = TcpStream::connect(relay).await.unwrap();
    s.write_all(&proxy_header(ProxyProtocol::V2, "203.0.113.7:5555", relay))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let _ = read_response(&mut s).await;
    let seen = raw.seen();
    assert!(seen.starts_with("PROXY TCP4 203.0.113.7 "), "{seen}");
    assert!(
        seen.contains("GET / HTTP/1.1"),
        "the payload follows untouched: {seen}"
    );
}
