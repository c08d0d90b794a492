//! Balancing through the running proxy: weights, hashing, stickiness, the backup tier.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// One HTTP/1.1 request from source address `from`; returns (status, head, body).
async fn raw_get(from: IpAddr, to: SocketAddr, path: &str) -> (u16, String, String) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

fn origin_of(body: &str) -> String {
    body.trim().trim_start_matches("hello from ").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_gives_exact_shares() {
    let o = fleet(2).await;
    let s = format!(
        "{{ addr = \"{}\", name = \"o0\", weight = 3 }}, {{ addr = \"{}\", name = \"o1\", weight = 1 }}",
        o[0].addr, o[1].addr
    );
    let p = Proxy::start(&http_config(
        &s,
        "algorithm = \"weighted_round_robin\"",
        NO_HEALTH,
    ))
    .await;
    let counts = spread(&client(), &p.url("web", "/"), 400).await;
    assert_eq!(
        counts.get("o0"),
        Some(&300),
        "weight 3 of 4 over 400 requests: {counts:?}"
    );
    assert_eq!(
        counts.get("o1"),
        Some(&100),
        "weight 1 of 4 over 400 requests: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_each_client_on_one_server() {
    let o = fleet(3).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1], &o[2]]),
        "algorithm = \"ip_hash\"",
        NO_HEALTH,
    ))
    .await;
    let to = p.addr("web");
    let mut owner: HashMap<IpAddr, String> = HashMap::new();
    for round in 0..3 {
        for last in 2..=21u8 {
            let ip: IpAddr = format!("127.0.0.{last}").parse().unwrap();
            let (status, _, body) = raw_get(ip, to, "/").await;
            assert_eq!(status, 200);
            let got = origin_of(&body);
            let first = owner.entry(ip).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "client {ip} moved in round {round}");
        }
    }
    let used: std::collections::HashSet<_> = owner.values().collect();
    assert!(
        used.len() >= 2,
        "20 clients spread over more than one server: {owner:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_keeps_each_key_on_one_server() {
    let o = fleet(3).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1], &o[2]]),
        "algorithm = \"consistent_hash\"\nhash_key = \"header:X-User\"",
        NO_HEALTH,
    ))
    .await;
    let c = client();
    let mut owner: HashMap<String, String> = HashMap::new();
    for _ in 0..3 {
        for u in 0..31 {
            let user = format!("user-{u}");
            let req = http::Request::get(p.url("web", "/"))
                .header("x-user", &user)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let r = send(&c, req).await.unwrap();
            let first = owner.entry(user.clone()).or_insert_with(|| r.origin());
            assert_eq!(*first, r.origin(), "key {user} moved");
        }
    }
    let used: std::collections::HashSet<_> = owner.values().collect();
    assert!(
        used.len() >= 2,
        "31 keys spread over more than one server: {owner:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_sticks_and_moves_when_its_server_goes_down() {
    let o = fleet(3).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1], &o[2]]),
        "sticky = { cookie = \"srv\" }",
        FAST_TCP_HEALTH,
    ))
    .await;
    let c = client();
    let first = get(&c, &p.url("web", "/")).await;
    let set = first
        .headers
        .get("set-cookie")
        .expect("first response sets the cookie")
        .to_str()
        .unwrap()
        .to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(
        !cookie.contains("127.0.0.1"),
        "the cookie never names an address: {cookie}"
    );
    let with_cookie = |cookie: String| {
        let url = p.url("web", "/");
        let c = c.clone();
        async move {
            let req = http::Request::get(url)
                .header("cookie", cookie)
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&c, req).await.unwrap()
        }
    };
    for _ in 0..10 {
        let r = with_cookie(cookie.clone()).await;
        assert_eq!(
            r.origin(),
            first.origin(),
            "sticky requests stay on their server"
        );
        assert!(
            r.headers.get("set-cookie").is_none(),
            "a valid cookie is not rewritten"
        );
    }
    let home = o.iter().find(|x| *x.name == first.origin()).unwrap();
    home.kill();
    let pool = p.f.pool("app").unwrap();
    wait_until(
        "the sticky server is marked down",
        Duration::from_secs(10),
        || {
            let pool = pool.clone();
            async move { pool.eligible().primary.members().len() == 2 }
        },
    )
    .await;
    let moved = with_cookie(cookie.clone()).await;
    assert_eq!(moved.status, 200);
    assert_ne!(
        moved.origin(),
        first.origin(),
        "re-balanced away from the dead server"
    );
    let new_cookie = moved
        .headers
        .get("set-cookie")
        .expect("cookie rewritten")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(new_cookie, cookie);
    let again = with_cookie(new_cookie).await;
    assert_eq!(again.origin(), moved.origin(), "sticks to the new server");
}

// The backup tier's story (idle while primaries serve, takes over, hands traffic back) is
// told once, in tests/failover.rs.
