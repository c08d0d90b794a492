//! Changes that undo themselves: the reload guard puts the previous configuration back when
//! a reload makes things worse; a weight change ramps in steps; a drain with a deadline
//! closes what is left at the deadline. All of it survives reloads.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(30);

const GUARD: &str =
    "[runtime]\nreload_guard = { window = \"10s\", max_error_ratio = 0.2, min_requests = 20 }\n";

fn rollbacks(st: &Value) -> u64 {
    st["reload"]["rollbacks"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_kills_a_serving_pool_is_rolled_back() {
    let o = fleet(2).await;
    let good = format!(
        "{GUARD}{}",
        http_config(&servers(&[&o[0], &o[1]]), "", FAST_TCP_HEALTH)
    );
    let p = Proxy::start(&good).await;
    let admin = p.admin().await;
    assert_eq!(gets_ok(&client(), &p.url("web", "/"), 4).await, 4);

    let (_held, dead) = refusing_port();
    let bad = good.replace(
        &servers(&[&o[0], &o[1]]),
        &format!("{{ addr = \"{dead}\", name = \"gone\" }}"),
    );
    p.reload_with(&bad).await.expect("the new file is valid");
    wait_until("the reload rolled back", LIMIT, || async {
        rollbacks(&status_json(admin).await) == 1
    })
    .await;
    let st = status_json(admin).await;
    assert_eq!(st["reload"]["last"]["result"], "rolled_back", "{st}");
    assert!(
        st["reload"]["last"]["error"]
            .as_str()
            .unwrap()
            .contains("no eligible server"),
        "{st}"
    );
    assert_eq!(st["generation"], 3, "start, reload, rollback");
    assert_eq!(p.metric_value("fulcrum_config_rollbacks_total", &[]), 1.0);
    let names: Vec<&str> = st["pools"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["o0", "o1"], "the previous servers are back");
    wait_until("serving again", LIMIT, || async { p.eligible("o0") }).await;
    assert_eq!(gets_ok(&client(), &p.url("web", "/"), 4).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_requests_is_rolled_back() {
    let o = fleet(2).await;
    let good = format!("{GUARD}{}", http_config(&servers(&[&o[0]]), "", NO_HEALTH));
    let p = Proxy::start(&good).await;
    let admin = p.admin().await;
    o[1].set_failing(Some(500));
    p.reload_with(&good.replace(&servers(&[&o[0]]), &servers(&[&o[1]])))
        .await
        .unwrap();
    // Traffic meets the failing server until the guard has seen enough.
    let c = client();
    let mut saw_500 = 0;
    let deadline = std::time::Instant::now() + LIMIT;
    while rollbacks(&status_json(admin).await) == 0 {
        assert!(std::time::Instant::now() < deadline, "no rollback");
        if get(&c, &p.url("web", "/")).await.status == 500 {
            saw_500 += 1;
        }
    }
    assert!(
        saw_500 >= 20,
        "the guard waited for min_requests: {saw_500}"
    );
    let r = get(&c, &p.url("web", "/")).await;
    assert_eq!(
        (r.status, r.origin().as_str()),
        (200, "o0"),
        "o0 serves again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_reload_is_not_rolled_back() {
    let o = fleet(2).await;
    let good = format!(
        "{}{}",
        GUARD.replace("10s", "1s"),
        http_config(&servers(&[&o[0], &o[1]]), "", FAST_TCP_HEALTH)
    );
    let p = Proxy::start(&good).await;
    let admin = p.admin().await;
    p.reload_with(&good.replace("[pool.health]", "retries = 1\n\n[pool.health]"))
        .await
        .unwrap();
    let c = client();
    // Traffic through the whole 1 s window and past it.
    for _ in 0..20 {
        assert_eq!(gets_ok(&c, &p.url("web", "/"), 5).await, 5);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = status_json(admin).await;
    assert_eq!(rollbacks(&st), 0, "{st}");
    assert_eq!(st["reload"]["last"]["result"], "success");
    assert_eq!(st["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_ramps_in_steps_and_survives_a_reload() {
    let o = fleet(2).await;
    let cfg = http_config(
        &servers(&[&o[0], &o[1]]),
        "algorithm = \"weighted_round_robin\"",
        NO_HEALTH,
    );
    let p = Proxy::start(&cfg).await;
    let admin = p.admin().await;
    let r = admin_call(
        admin,
        "POST",
        "/servers/app/o0/weight?value=11&over=2s",
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A reload in the middle of the ramp does not end it.
    p.reload_with(&cfg.replace("[pool.health]", "retries = 1\n\n[pool.health]"))
        .await
        .unwrap();
    let mut seen: Vec<u64> = Vec::new();
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let st = status_json(admin).await;
        let s = status_server(&st, "app", "o0").unwrap();
        let w = s["effective_weight"].as_u64().unwrap();
        if seen.last() != Some(&w) {
            seen.push(w);
        }
        if w == 11 && s["overrides"].get("weight_ramp").is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ramp never ended: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the weight only rises: {seen:?}"
    );
    assert!(
        seen.iter().filter(|w| **w > 1 && **w < 11).count() >= 3,
        "the weight moved in steps, not a jump: {seen:?}"
    );
    let st = status_json(admin).await;
    assert_eq!(
        status_server(&st, "app", "o0").unwrap()["weight_override"],
        11
    );
    // The share follows: 11 of every 12 requests.
    let counts = spread(&client(), &p.url("web", "/"), 24).await;
    assert_eq!(counts.get("o0"), Some(&22), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_closes_long_lived_connections_even_across_a_reload() {
    let o = fleet(1).await;
    let cfg = http_config(&servers(&[&o[0]]), "", NO_HEALTH);
    let p = Proxy::start(&cfg).await;
    let admin = p.admin().await;
    // A WebSocket tunnel and a slow response are open when the drain starts.
    let mut ws = TcpStream::connect(p.addr("web")).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut ws).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut slow = TcpStream::connect(p.addr("web")).await.unwrap();
    slow.write_all(b"GET /sleep/60000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    wait_until("the slow request reached the origin", LIMIT, || async {
        o[0].inflight() == 1
    })
    .await;

    let r = admin_call(
        admin,
        "POST",
        "/servers/app/o0/drain?deadline=1500ms",
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let st = status_json(admin).await;
    let left = status_server(&st, "app", "o0").unwrap()["overrides"]["drain_deadline_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        left > 0.0 && left <= 1.5,
        "the deadline shows in /status: {left}"
    );
    p.reload_with(&cfg.replace("[pool.health]", "retries = 1\n\n[pool.health]"))
        .await
        .unwrap();
    // Before the deadline the tunnel still works.
    ws.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    ws.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");

    let closed = read_to_close(&mut ws, LIMIT).await;
    assert!(closed.is_some(), "the tunnel was closed at the deadline");
    let (head, body) = read_response(&mut slow).await;
    assert!(
        head.starts_with("http/1.1 503"),
        "the slow request was cut: {head}"
    );
    assert!(
        String::from_utf8_lossy(&body).contains("taken out of service"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        p.metric_value(
            "fulcrum_server_errors_total",
            &[("server", "o0"), ("kind", "reset")]
        ),
        0.0,
        "the operator's cut is not the server's failure"
    );
    let st = status_json(admin).await;
    assert_eq!(
        status_server(&st, "app", "o0").unwrap()["admin_state"],
        "draining",
        "still drained after the deadline"
    );
}
