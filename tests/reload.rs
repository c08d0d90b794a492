//! Hitless reloads: under load, with long-lived connections open, with invalid files, and
//! with pools whose servers and algorithm change. Real sockets throughout.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fulcrum::demo::Origin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

/// A bounded background load: its tasks count what succeeded and what failed, and stop
/// when asked (each is also bounded in count by itself).
#[derive(Default)]
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.errors.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests have finished, so a reload meets traffic.
    async fn wait_for_more(&self, n: u64) {
        let seen = self.done();
        wait_until("requests flow between reloads", LIMIT, || async {
            self.done() >= seen + n
        })
        .await;
    }

    /// Lets 20 more requests succeed after the last reload, stops the load and returns
    /// (succeeded, failed).
    async fn finish(self) -> (u64, u64) {
        let seen = self.ok.load(Ordering::Relaxed);
        wait_until("requests flow after the last reload", LIMIT, || async {
            self.ok.load(Ordering::Relaxed) >= seen + 20
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// One http listener "web" and one tcp listener "relay" over pool "app".
fn two_listeners(servers: &str, pool_extra: &str) -> String {
    http_config(servers, pool_extra, NO_HEALTH)
        + "\n[[listener]]\nname = \"relay\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"app\"\n"
}

/// `{ addr, name, weight }` entries.
fn weighted(origins: &[(&Origin, u32)]) -> String {
    origins
        .iter()
        .map(|(o, w)| {
            format!(
                "{{ addr = \"{}\", name = \"{}\", weight = {w} }}",
                o.addr, o.name
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_fail_no_request() {
    let o = fleet(4).await;
    // Each generation changes something that rebuilds the pool: servers, weights, the
    // algorithm, health settings (restarting probes).
    let generations = [
        http_config(&servers(&[&o[0], &o[1], &o[2]]), "", FAST_TCP_HEALTH),
        http_config(
            &weighted(&[(&o[0], 3), (&o[1], 1), (&o[3], 2)]),
            "algorithm = \"weighted_round_robin\"",
            FAST_TCP_HEALTH,
        ),
        http_config(
            &servers(&[&o[1], &o[2], &o[3]]),
            "algorithm = \"least_conn\"",
            NO_HEALTH,
        ),
        http_config(
            &servers(&[&o[0], &o[2]]),
            "algorithm = \"random\"\nretries = 1",
            FAST_TCP_HEALTH,
        ),
    ];
    let p = Proxy::start(&generations[0]).await;
    let url = p.url("web", "/");
    let mut load = Load::default();
    // Two clients reuse keep-alive connections, one opens a new connection per request.
    for fresh in [false, false, true] {
        let (stop, ok, errors, url) = (
            load.stop.clone(),
            load.ok.clone(),
            load.errors.clone(),
            url.clone(),
        );
        load.tasks.push(tokio::spawn(async move {
            let c = if fresh {
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_max_idle_per_host(0)
                    .build_http()
            } else {
                client()
            };
            // Bounded: at most 20 000 requests per client, whatever happens.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = http::Request::get(&url)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                match send(&c, req).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        eprintln!("status {} during reloads: {}", r.status, r.text());
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("error during reloads: {e}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for i in 1..=20 {
        // Let some requests through between reloads, so every reload meets traffic.
        load.wait_for_more(20).await;
        p.reload_with(&generations[i % generations.len()])
            .await
            .unwrap_or_else(|e| panic!("reload {i} succeeds: {e}"));
    }
    let (ok, errors) = load.finish().await;
    eprintln!("20 reloads under load: {ok} requests succeeded, {errors} failed");
    assert_eq!(
        errors, 0,
        "failed requests during 20 reloads ({ok} succeeded)"
    );
    let m = scrape(p.admin().await).await;
    assert_eq!(
        metric(&m, "fulcrum_config_reloads_total", &[("result", "success")]),
        Some(20.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_connection_and_websocket_opened_before_a_reload_keep_working() {
    let o = fleet(3).await;
    let p = Proxy::start(&two_listeners(&servers(&[&o[0], &o[1]]), "")).await;

    // An L4 connection carrying keep-alive HTTP to an origin.
    let mut relay = TcpStream::connect(p.addr("relay")).await.unwrap();
    let (head, body) = raw_get(&mut relay, "/").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let first_origin = String::from_utf8_lossy(&body).into_owned();

    // A WebSocket-style upgrade through the http listener, echoing.
    let mut ws = TcpStream::connect(p.addr("web")).await.unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, _) = read_response(&mut ws).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echo(&mut ws, b"before reload").await;

    // A reload that rebuilds the pool: a server added, another removed, new algorithm.
    p.reload_with(&two_listeners(
        &servers(&[&o[0], &o[2]]),
        "algorithm = \"least_conn\"",
    ))
    .await
    .expect("reload succeeds");
    let st = status_json(p.admin().await).await;
    assert_eq!(
        st["pools"][0]["algorithm"], "least_conn",
        "reload took effect"
    );

    let (head, body) = raw_get(&mut relay, "/").await;
    assert!(
        head.starts_with("http/1.1 200"),
        "L4 connection after reload: {head}"
    );
    assert_eq!(
        String::from_utf8_lossy(&body),
        first_origin,
        "the same relayed connection, to the same origin"
    );
    echo(&mut ws, b"after reload").await;
}

async fn echo(ws: &mut TcpStream, msg: &[u8]) {
    ws.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    ws.read_exact(&mut got).await.expect("echo comes back");
    assert_eq!(got, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_old_config_serving_and_reports_failure() {
    let o = fleet(2).await;
    let good = http_config(&servers(&[&o[0], &o[1]]), "", NO_HEALTH);
    let p = Proxy::start(&good).await;
    let admin = p.admin().await;
    let c = client();

    // weight = 0 on line 15 of the generated file.
    let broken = http_config(
        &format!("{{ addr = \"{}\", weight = 0 }}", o[0].addr),
        "",
        NO_HEALTH,
    );
    let line = broken
        .lines()
        .position(|l| l.contains("weight = 0"))
        .unwrap()
        + 1;
    let err = p
        .reload_with(&broken)
        .await
        .expect_err("invalid config is refused");
    let msg = err.to_string();
    let want = format!("{}:{line}:", p.path.display());
    assert!(msg.starts_with(&want), "error says file:line:col: {msg}");
    assert!(msg.contains("weight must be between 1 and 256"), "{msg}");

    let counts = spread(&c, &p.url("web", "/"), 10).await;
    assert_eq!(
        counts.len(),
        2,
        "the old pool of two still serves: {counts:?}"
    );
    let m = scrape(admin).await;
    assert_eq!(
        metric(&m, "fulcrum_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "fulcrum_config_reloads_total", &[("result", "failure")]),
        Some(1.0)
    );

    // A reload that cannot bind a new listener changes nothing either (not even the pool).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let half = format!(
        "{}\n[[listener]]\nname = \"extra\"\nbind = \"{}\"\nprotocol = \"http\"\npool = \"app\"\n",
        http_config(&servers(&[&o[0]]), "algorithm = \"least_conn\"", NO_HEALTH),
        taken.local_addr().unwrap()
    );
    let err = p
        .reload_with(&half)
        .await
        .expect_err("bind conflict is refused");
    assert!(
        err.to_string().contains("cannot bind listener \"extra\""),
        "{err}"
    );
    let st = status_json(admin).await;
    assert_eq!(
        st["pools"][0]["algorithm"], "round_robin",
        "nothing half-applied"
    );
    assert_eq!(st["pools"][0]["servers"].as_array().unwrap().len(), 2);
    assert!(p.f.listener_addr("extra").is_none());

    p.reload_with(&good).await.expect("a valid reload succeeds");
    let m = scrape(admin).await;
    assert_eq!(
        metric(&m, "fulcrum_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "fulcrum_config_reloads_total", &[("result", "failure")]),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adding_removing_and_changing_algorithm_keeps_unchanged_servers_counters() {
    let o = fleet(4).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1], &o[2]]),
        "",
        NO_HEALTH,
    ))
    .await;
    let admin = p.admin().await;
    let c = client();
    let url = p.url("web", "/");
    let counts = spread(&c, &url, 30).await;
    assert_eq!(
        counts["o0"], 10,
        "round robin before the reload: {counts:?}"
    );
    let m = scrape(admin).await;
    let o0 = [("pool", "app"), ("server", "o0")];
    assert_eq!(metric(&m, "fulcrum_server_requests_total", &o0), Some(10.0));

    // o2 out, o3 in, o1 reweighted, algorithm changed.
    p.reload_with(&http_config(
        &weighted(&[(&o[0], 1), (&o[1], 2), (&o[3], 1)]),
        "algorithm = \"weighted_round_robin\"",
        NO_HEALTH,
    ))
    .await
    .expect("reload succeeds");
    let st = status_json(admin).await;
    assert_eq!(st["pools"][0]["algorithm"], "weighted_round_robin");
    let names: Vec<_> = st["pools"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["o0", "o1", "o3"]);

    let o2_before = o[2].hits();
    let counts = spread(&c, &url, 40).await;
    assert!(
        counts.get("o3").copied().unwrap_or(0) > 0,
        "the new server serves: {counts:?}"
    );
    assert_eq!(o[2].hits(), o2_before, "the removed server gets nothing");
    let m = scrape(admin).await;
    let o0_now = metric(&m, "fulcrum_server_requests_total", &o0).unwrap();
    assert_eq!(
        o0_now,
        10.0 + counts.get("o0").copied().unwrap_or(0) as f64,
        "o0's counter went on from 10"
    );
    assert_eq!(o0_now, o[0].hits() as f64, "and matches what o0 served");
    assert_eq!(
        metric(
            &m,
            "fulcrum_server_requests_total",
            &[("pool", "app"), ("server", "o2")]
        ),
        None,
        "the removed server's series are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_overrides_survive_reloads_until_reset() {
    let o = fleet(3).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0], &o[1]]), "", NO_HEALTH)).await;
    let admin = p.admin().await;
    let c = client();
    let url = p.url("web", "/");

    let r = admin_call(admin, "POST", "/servers/app/o0/drain", None, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin_call(admin, "POST", "/servers/app/o1/weight?value=7", None, "").await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A reload that keeps o0 and o1 and adds o2.
    p.reload_with(&http_config(
        &servers(&[&o[0], &o[1], &o[2]]),
        "",
        NO_HEALTH,
    ))
    .await
    .expect("reload succeeds");
    let st = status_json(admin).await;
    let s0 = status_server(&st, "app", "o0").unwrap();
    assert_eq!(s0["overrides"]["admin_state"], "draining", "{s0}");
    assert_eq!(s0["eligible"], false);
    let s1 = status_server(&st, "app", "o1").unwrap();
    assert_eq!(s1["overrides"]["weight"], 7, "{s1}");
    let counts = spread(&c, &url, 20).await;
    assert_eq!(
        counts.get("o0"),
        None,
        "a drained server stays drained: {counts:?}"
    );

    let r = admin_call(admin, "POST", "/servers/app/o0/reset", None, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let st = status_json(admin).await;
    let s0 = status_server(&st, "app", "o0").unwrap();
    assert_eq!(s0["overrides"], serde_json::json!({}), "{s0}");
    let counts = spread(&c, &url, 30).await;
    assert_eq!(counts.get("o0"), Some(&10), "back in rotation: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_changing_protocol_keeps_its_port() {
    let o = fleet(1).await;
    let cfg = |protocol: &str| {
        format!(
            r#"
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "edge"
bind = "127.0.0.1:0"
protocol = "{protocol}"
pool = "app"

[[pool]]
name = "app"
servers = [ {} ]
[pool.health]
kind = "none"
"#,
            servers(&[&o[0]])
        )
    };
    let p = Proxy::start(&cfg("http")).await;
    let before = p.addr("edge");
    let mut s = TcpStream::connect(before).await.unwrap();
    let (_, body) = raw_get(&mut s, "/headers").await;
    assert!(
        String::from_utf8_lossy(&body).contains("x-forwarded-for"),
        "the http listener adds forwarding headers"
    );

    p.reload_with(&cfg("tcp")).await.expect("reload succeeds");
    assert_eq!(p.addr("edge"), before, "the same socket, taken over");
    let mut s = TcpStream::connect(before).await.unwrap();
    let (_, body) = raw_get(&mut s, "/headers").await;
    assert!(
        !String::from_utf8_lossy(&body).contains("x-forwarded-for"),
        "now a byte relay: the origin sees the request as sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sighup_reloads_of_the_real_daemon_under_http_and_tcp_load() {
    let o = fleet(3).await;
    let generations = [
        two_listeners(&servers(&[&o[0], &o[1]]), ""),
        two_listeners(
            &weighted(&[(&o[0], 2), (&o[1], 1), (&o[2], 1)]),
            "algorithm = \"weighted_round_robin\"",
        ),
        two_listeners(&servers(&[&o[1], &o[2]]), "algorithm = \"least_conn\""),
    ];
    let d = tokio::task::block_in_place(|| Daemon::spawn(&generations[0]));
    let (web, relay) = (d.addrs["web"], d.addrs["relay"]);
    let mut load = Load::default();
    for l4 in [false, true] {
        let (stop, ok, errors) = (load.stop.clone(), load.ok.clone(), load.errors.clone());
        load.tasks.push(tokio::spawn(async move {
            let c = client();
            let url = format!("http://{web}/");
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let good = if l4 {
                    // A new relayed connection per request.
                    match TcpStream::connect(relay).await {
                        Ok(mut s) => raw_get(&mut s, "/").await.0.starts_with("http/1.1 200"),
                        Err(_) => false,
                    }
                } else {
                    let req = http::Request::get(&url)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    matches!(send(&c, req).await, Ok(r) if r.status == 200)
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for i in 1..=20 {
        load.wait_for_more(20).await;
        std::fs::write(&d.path, &generations[i % generations.len()]).unwrap();
        d.signal(SIGHUP);
        tokio::task::block_in_place(|| {
            d.wait_log("configuration reloaded", LIMIT, |v| {
                v["message"] == "configuration reloaded"
            })
        });
    }
    let (ok, errors) = load.finish().await;
    eprintln!("20 SIGHUP reloads of the daemon under HTTP + TCP load: {ok} requests succeeded, {errors} failed");
    assert_eq!(
        errors, 0,
        "failed requests during 20 SIGHUP reloads ({ok} succeeded)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_edit_keeps_pooled_connections_and_the_rotation() {
    let o = fleet(3).await;
    let cfg = http_config(&servers(&[&o[0], &o[1], &o[2]]), "", NO_HEALTH);
    let p = Proxy::start(&cfg).await;
    let c = client();
    // Each origin gets requests over one kept-alive upstream connection.
    for _ in 0..3 {
        assert_eq!(gets_ok(&c, &p.url("web", "/"), 3).await, 3);
    }
    let before: Vec<u64> = o.iter().map(Origin::connections).collect();
    let last = get(&c, &p.url("web", "/")).await.origin();
    assert_eq!(last, "o0", "10 requests over 3 servers end on o0");

    // Another setting of the pool changes; its servers stay.
    p.reload_with(&cfg.replace("[pool.health]", "retries = 1\n\n[pool.health]"))
        .await
        .unwrap();
    let next = get(&c, &p.url("web", "/")).await.origin();
    assert_eq!(next, "o1", "the rotation continues where it was, not at o0");
    for _ in 0..3 {
        assert_eq!(gets_ok(&c, &p.url("web", "/"), 3).await, 3);
    }
    let after: Vec<u64> = o.iter().map(Origin::connections).collect();
    assert_eq!(
        after, before,
        "the reload opened no new upstream connection (no reconnect burst)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_after_a_reload_gets_the_slot_freed_by_one_admitted_before() {
    let o = fleet(1).await;
    let cfg = http_config(
        &servers(&[&o[0]]),
        "max_conns = 1\nqueue_timeout = \"10s\"",
        NO_HEALTH,
    );
    let p = Proxy::start(&cfg).await;
    let slow = tokio::spawn({
        let url = p.url("web", "/sleep/1500");
        async move { get(&client(), &url).await.status }
    });
    wait_until("the slow request holds the only slot", LIMIT, || async {
        p.server("o0").load.load(Ordering::SeqCst) == 1
    })
    .await;
    p.reload_with(&cfg.replace("[pool.health]", "retries = 1\n\n[pool.health]"))
        .await
        .unwrap();
    let queued = tokio::spawn({
        let url = p.url("web", "/");
        async move { get(&client(), &url).await.status }
    });
    wait_until(
        "a request waits in the new generation's queue",
        LIMIT,
        || async { p.app().queue.waiting() == 1 },
    )
    .await;
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(
        queued.await.unwrap(),
        200,
        "woken by the slot freed across the reload, not a 503 at queue_timeout"
    );
}
