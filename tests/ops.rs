//! Operating fulcrum: the admin API and its token, metrics that promtool accepts, the
//! systemd unit and notifications, SIGTERM draining, graceful connection draining, the
//! access log, the reload preview and the container health probe.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "s3cret-admin-token";

/// `http_config` with extra top-level TOML prepended (tables such as `[access_log]`), and
/// the `[admin]` table replaced by `admin`.
fn config_with(admin: &str, top: &str, servers_: &str, health: &str) -> String {
    let base = http_config(servers_, "", health);
    let rest = base
        .split_once("[[listener]]")
        .map(|(_, r)| r)
        .expect("http_config has a listener");
    format!("{top}\n[admin]\n{admin}\n\n[[listener]]{rest}")
}

/// A tcp listener "relay" over pool "app", appended to a config.
const RELAY: &str = "\n[[listener]]\nname = \"relay\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"app\"\n";

/// A missing external tool skips a test on a developer's machine, but fails it in CI
/// (CI=true), where .ci/run installs the tool.
fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "in CI: {why}");
    eprintln!("SKIPPED: {why}");
}

fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("admin.token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mutations_without_with_wrong_and_with_the_right_token() {
    let o = fleet(2).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_toml = format!(
        // On loopback too: a token, when set, is needed (allow_unauthenticated_loopback = true
        // beside it is refused as having no effect: tests/config_honesty.rs).
        "bind = \"127.0.0.1:0\"\ntoken_file = \"{}\"",
        token_file(dir.path()).display()
    );
    let p = Proxy::start(&config_with(
        &admin_toml,
        "",
        &servers(&[&o[0], &o[1]]),
        NO_HEALTH,
    ))
    .await;
    let admin = p.admin().await;
    let drain = "/servers/app/o0/drain";

    let none = admin_call(admin, "POST", drain, None, "").await;
    let wrong = admin_call(admin, "POST", drain, Some("not-the-token"), "").await;
    let right = admin_call(admin, "POST", drain, Some(TOKEN), "").await;
    assert_eq!(
        [none.status, wrong.status, right.status],
        [403, 403, 200],
        "without / wrong / right token: {} | {} | {}",
        none.text(),
        wrong.text(),
        right.text()
    );
    let st = status_json(admin).await;
    let s0 = status_server(&st, "app", "o0").unwrap();
    assert_eq!(s0["admin_state"], "draining");
    assert_eq!(s0["overrides"]["admin_state"], "draining");
    let counts = spread(&client(), &p.url("web", "/"), 10).await;
    assert_eq!(
        counts.get("o1"),
        Some(&10),
        "a drained server gets no new requests"
    );

    // Weight from the body or the query; out of range is a 400.
    let r = admin_call(admin, "POST", "/servers/app/o1/weight", Some(TOKEN), "5").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["weight_override"], 5);
    let r = admin_call(
        admin,
        "POST",
        "/servers/app/o1/weight?value=9",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin_call(admin, "POST", "/servers/app/o1/weight", Some(TOKEN), "0").await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = admin_call(admin, "POST", "/servers/app/nope/drain", Some(TOKEN), "").await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = admin_call(admin, "GET", drain, Some(TOKEN), "").await;
    assert_eq!(r.status, 405, "{}", r.text());

    for s in ["o0", "o1"] {
        let r = admin_call(
            admin,
            "POST",
            &format!("/servers/app/{s}/reset"),
            Some(TOKEN),
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let st = status_json(admin).await;
    assert_eq!(
        status_server(&st, "app", "o0").unwrap()["overrides"],
        serde_json::json!({})
    );

    let r = admin_call(admin, "POST", "/reload", None, "").await;
    assert_eq!(r.status, 403, "reload needs the token too");
    let r = admin_call(admin, "POST", "/reload", Some(TOKEN), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_needs_the_token_and_read_auth_guards_status_and_metrics() {
    let o = fleet(1).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_toml = format!(
        "bind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\nread_auth = true",
        token_file(dir.path()).display()
    );
    let text = config_with(&admin_toml, "", &servers(&[&o[0]]), NO_HEALTH);
    let p = Proxy::start(&text).await;
    let admin = p.admin().await;

    let none = admin_call(admin, "POST", "/preview", None, &text).await;
    let right = admin_call(admin, "POST", "/preview", Some(TOKEN), &text).await;
    assert_eq!(
        [none.status, right.status],
        [403, 200],
        "/preview without / with the token: {} | {}",
        none.text(),
        right.text()
    );
    for path in ["/metrics", "/status"] {
        let none = admin_call(admin, "GET", path, None, "").await;
        let wrong = admin_call(admin, "GET", path, Some("nope"), "").await;
        let right = admin_call(admin, "GET", path, Some(TOKEN), "").await;
        assert_eq!(
            [none.status, wrong.status, right.status],
            [403, 403, 200],
            "{path} with read_auth, without / wrong / right token"
        );
    }
    let health = admin_call(admin, "GET", "/healthz", None, "").await;
    assert_eq!(health.status, 200, "/healthz stays open for probes");

    // Without read_auth the same reads are open.
    let open = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let r = admin_call(open.admin().await, "GET", "/metrics", None, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_file_mutations_are_refused_unless_loopback_is_allowed() {
    let o = fleet(1).await;
    let closed = config_with(
        "bind = \"127.0.0.1:0\"\nallow_unauthenticated_loopback = false",
        "",
        &servers(&[&o[0]]),
        NO_HEALTH,
    );
    let p = Proxy::start(&closed).await;
    let r = admin_call(
        p.admin().await,
        "POST",
        "/servers/app/o0/drain",
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("token_file"),
        "says what to set: {}",
        r.text()
    );

    let open = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let r = admin_call(
        open.admin().await,
        "POST",
        "/servers/app/o0/drain",
        None,
        "",
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "loopback with allow_unauthenticated_loopback: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_passes_on_a_live_scrape() {
    let o = fleet(2).await;
    let cfg = format!(
        "{}{RELAY}",
        http_config(&servers(&[&o[0], &o[1]]), "", FAST_TCP_HEALTH)
    );
    let p = Proxy::start(&cfg).await;
    let admin = p.admin().await;
    let c = client();
    for path in ["/", "/", "/status/503", "/status/404", "/bytes/100"] {
        get(&c, &p.url("web", path)).await;
    }
    let mut relay = TcpStream::connect(p.addr("relay")).await.unwrap();
    raw_get(&mut relay, "/").await;
    drop(relay);
    admin_call(admin, "POST", "/servers/app/o1/drain", None, "").await;
    wait_until("health probes have run", LIMIT, || async {
        metric(
            &scrape(admin).await,
            "fulcrum_health_checks_total",
            &[("pool", "app"), ("server", "o0"), ("result", "success")],
        )
        .is_some()
    })
    .await;
    let text = scrape(admin).await;
    for family in [
        "fulcrum_listener_connections_total",
        "fulcrum_listener_connections_active",
        "fulcrum_listener_requests_total",
        "fulcrum_listener_request_duration_seconds_bucket",
        "fulcrum_server_requests_total",
        "fulcrum_server_errors_total",
        "fulcrum_server_response_seconds_bucket",
        "fulcrum_server_inflight",
        "fulcrum_server_up",
        "fulcrum_server_weight",
        "fulcrum_server_admin_state",
        "fulcrum_server_availability_ratio",
        "fulcrum_health_check_duration_seconds_bucket",
        "fulcrum_selections_total",
        "fulcrum_config_reloads_total",
        "fulcrum_config_last_reload_successful",
        "fulcrum_build_info",
    ] {
        assert!(text.contains(family), "scrape has {family}");
    }
    assert_eq!(
        metric(
            &text,
            "fulcrum_server_admin_state",
            &[("pool", "app"), ("server", "o1"), ("state", "draining")]
        ),
        Some(1.0)
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scrape.prom");
    std::fs::write(&file, &text).unwrap();
    let out = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return skip(
                "promtool is not installed (Debian package `prometheus`; .ci/run installs it)",
            );
        }
        Err(e) => panic!("promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_analyze_verify_passes_on_the_unit() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fulcrum.service"),
    )
    .unwrap();
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let unit = unit.replace("/usr/local/bin/fulcrum", env!("CARGO_BIN_EXE_fulcrum"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fulcrum.service");
    std::fs::write(&path, unit).unwrap();
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return skip("systemd-analyze is not installed (Debian package `systemd`)");
        }
        Err(e) => panic!("systemd-analyze: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("fulcrum.service"),
        "no warnings about the unit: {stderr}"
    );
}

/// Collects datagrams from a NOTIFY_SOCKET until `pred` holds for one; returns them all.
fn notifications_until(
    sock: &UnixDatagram,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + LIMIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: got {got:?}"
        );
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => panic!("recv: {e}"),
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = pred(&msg);
        got.push(msg);
        if done {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_receives_ready_reloading_watchdog_and_stopping() {
    let o = fleet(1).await;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cfg = http_config(&servers(&[&o[0]]), "", NO_HEALTH);
    let notify = sock_path.to_str().unwrap();
    tokio::task::block_in_place(|| {
        // WATCHDOG_PID must name the daemon itself, as systemd sets it.
        let mut d = Daemon::spawn_with_own_pid(
            &cfg,
            &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "400000")],
            "WATCHDOG_PID",
        );
        let ready = notifications_until(&sock, "READY=1", |m| m.lines().any(|l| l == "READY=1"));
        assert!(ready.iter().any(|m| m.contains("STATUS=")), "{ready:?}");

        d.signal(SIGHUP);
        let reload = notifications_until(&sock, "RELOADING=1", |m| m.contains("RELOADING=1"));
        let reloading = reload.last().unwrap();
        assert!(
            reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
            "RELOADING=1 comes with MONOTONIC_USEC: {reloading:?}"
        );
        notifications_until(&sock, "READY=1 after the reload", |m| {
            m.lines().any(|l| l == "READY=1")
        });
        notifications_until(&sock, "WATCHDOG=1", |m| m.contains("WATCHDOG=1"));

        d.signal(SIGTERM);
        notifications_until(&sock, "STOPPING=1", |m| m.contains("STOPPING=1"));
        assert_eq!(d.wait_exit(LIMIT), Some(0), "exits 0 after draining");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_inflight_slow_request_before_exit() {
    let o = fleet(1).await;
    let cfg = http_config(&servers(&[&o[0]]), "", NO_HEALTH);
    let mut d = tokio::task::block_in_place(|| Daemon::spawn(&cfg));
    let web = d.addrs["web"];
    let admin = d.admin.expect("admin listener");
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(web).await.unwrap();
        raw_get(&mut s, "/sleep/2000").await
    });
    wait_until("the slow request is in flight", LIMIT, || async {
        let st = status_json(admin).await;
        status_server(&st, "app", "o0").unwrap()["inflight"] == 1
    })
    .await;

    d.signal(SIGTERM);
    tokio::task::block_in_place(|| {
        d.wait_log("SIGTERM: draining", LIMIT, |v| {
            v["message"] == "SIGTERM: draining"
        })
    });
    wait_until("the listener stops accepting", LIMIT, || async {
        TcpStream::connect(web).await.is_err()
    })
    .await;
    let (head, body) = slow.await.unwrap();
    assert!(
        head.starts_with("http/1.1 200"),
        "the in-flight request completes: {head}"
    );
    assert!(
        head.contains("connection: close"),
        "and is told the connection closes: {head}"
    );
    assert_eq!(String::from_utf8_lossy(&body), "o0 slept 2000 ms\n");
    let code = tokio::task::block_in_place(|| d.wait_exit(LIMIT));
    assert_eq!(code, Some(0), "exit 0 after a clean drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_exits_at_once() {
    let o = fleet(1).await;
    let cfg = http_config(&servers(&[&o[0]]), "", NO_HEALTH);
    let mut d = tokio::task::block_in_place(|| Daemon::spawn(&cfg));
    let web = d.addrs["web"];
    let admin = d.admin.expect("admin listener");
    // A request that would hold the drain for a minute.
    let _slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(web).await.unwrap();
        let _ = s
            .write_all(b"GET /sleep/60000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    wait_until("the slow request is in flight", LIMIT, || async {
        let st = status_json(admin).await;
        status_server(&st, "app", "o0").unwrap()["inflight"] == 1
    })
    .await;
    d.signal(SIGTERM);
    tokio::task::block_in_place(|| {
        d.wait_log("draining", LIMIT, |v| v["message"] == "SIGTERM: draining");
        d.signal(SIGINT);
        d.wait_log("exiting now", LIMIT, |v| {
            v["message"] == "second stop signal: exiting now"
        });
        let code = d.wait_exit(LIMIT);
        assert_eq!(
            code,
            Some(1),
            "exits at once, without waiting for the drain"
        );
    });
}

/// fulcrum as a process with two workers in front of `o`: the daemon, its "web" listener
/// and its admin listener.
fn two_workers(o: &fulcrum::demo::Origin) -> (Daemon, std::net::SocketAddr, std::net::SocketAddr) {
    let cfg = format!(
        "[runtime]\nworker_threads = 2\n{}",
        http_config(&servers(&[o]), "", NO_HEALTH)
    );
    let d = tokio::task::block_in_place(|| Daemon::spawn(&cfg));
    let (web, admin) = (d.addrs["web"], d.admin.expect("admin listener"));
    (d, web, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_evenly_over_the_worker_threads() {
    let o = fleet(1).await;
    let (_daemon, web, admin) = two_workers(&o[0]);
    let per_worker = |text: &str| {
        ["0", "1"].map(|w| {
            metric(text, "fulcrum_worker_connections", &[("worker", w)])
                .expect("a gauge per worker")
        })
    };
    // One after another, each served before the next is made: both workers wait on the
    // same accept queue, and without balancing the kernel's wake-up order decides.
    let mut open = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(web).await.unwrap();
        let (head, _) = raw_get(&mut s, "/").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        open.push(s);
    }
    let [a, b] = per_worker(&scrape(admin).await);
    assert_eq!(a + b, 20.0, "every open connection counted once");
    assert!(
        (a - b).abs() <= 2.0,
        "within two of each other: {a} and {b}"
    );
    // Every connection is still served where it was handed.
    for s in &mut open {
        let (head, _) = raw_get(s, "/").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    drop(open);
    wait_until(
        "closed connections leave their workers' counts",
        LIMIT,
        || async { per_worker(&scrape(admin).await) == [0.0, 0.0] },
    )
    .await;
}

/// The request-duration and response-time histograms are kept per worker and summed when
/// scraped: with connections on both workers, the counts are every request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_histograms_count_the_requests_of_every_worker() {
    let o = fleet(1).await;
    let (_daemon, web, admin) = two_workers(&o[0]);
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(web).await.unwrap();
        for _ in 0..3 {
            let (head, _) = raw_get(&mut s, "/").await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
        }
        open.push(s);
    }
    let text = scrape(admin).await;
    let on = |w: &str| metric(&text, "fulcrum_worker_connections", &[("worker", w)]).unwrap();
    assert!(
        on("0") >= 1.0 && on("1") >= 1.0,
        "both workers served: {} and {}",
        on("0"),
        on("1")
    );
    assert_eq!(
        metric(
            &text,
            "fulcrum_listener_request_duration_seconds_count",
            &[("listener", "web")]
        ),
        Some(30.0)
    );
    assert_eq!(
        metric(
            &text,
            "fulcrum_server_response_seconds_count",
            &[("pool", "app"), ("server", &o[0].name)]
        ),
        Some(30.0)
    );
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_connections_get_connection_close_or_goaway_and_finish() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let web = p.addr("web");

    // An idle keep-alive HTTP/1.1 connection.
    let mut idle = TcpStream::connect(web).await.unwrap();
    let (head, _) = raw_get(&mut idle, "/").await;
    assert!(head.starts_with("http/1.1 200"));
    // An HTTP/1.1 request in flight.
    let mut h1 = TcpStream::connect(web).await.unwrap();
    h1.write_all(b"GET /sleep/1000 HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // An h2 request in flight.
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(web).await.unwrap());
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let h2_conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{web}/sleep/1000"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let h2_resp = tokio::spawn(tx.send_request(req));
    let pool = p.f.pool("app").unwrap();
    wait_until("both slow requests in flight", LIMIT, || async {
        pool.servers[0]
            .state
            .load
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await;

    let f = p.f.clone();
    let stopping = tokio::spawn(async move { f.shutdown(Duration::from_secs(10)).await });

    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(LIMIT, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        n, 0,
        "an idle keep-alive connection is closed cleanly, not reset"
    );
    let (head, _) = read_response(&mut h1).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("connection: close"),
        "HTTP/1.1 gets Connection: close: {head}"
    );
    let n = tokio::time::timeout(LIMIT, h1.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "then the server closes");
    let resp = h2_resp.await.unwrap().expect("the h2 request completes");
    assert_eq!(resp.status(), 200);
    let closed = tokio::time::timeout(LIMIT, h2_conn)
        .await
        .expect("h2 connection ends");
    assert!(
        closed.unwrap().is_ok(),
        "h2 ends with GOAWAY and a clean close, not an error"
    );
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_line_per_request_and_per_connection() {
    let o = fleet(1).await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let top = |format: &str| {
        format!(
            "[access_log]\nenabled = true\npath = \"{}\"\nformat = \"{format}\"\n",
            log_path.display()
        )
    };
    let cfg = |format: &str| {
        format!(
            "{}{RELAY}",
            config_with(
                "bind = \"127.0.0.1:0\"\nallow_unauthenticated_loopback = true",
                &top(format),
                &servers(&[&o[0]]),
                NO_HEALTH
            )
        )
    };
    let p = Proxy::start(&cfg("json")).await;
    let c = client();
    for path in ["/", "/status/404", "/bytes/10"] {
        get(&c, &p.url("web", path)).await;
    }
    let mut relay = TcpStream::connect(p.addr("relay")).await.unwrap();
    raw_get(&mut relay, "/").await;
    relay.shutdown().await.unwrap();
    let mut rest = Vec::new();
    relay.read_to_end(&mut rest).await.unwrap();
    drop(relay);

    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    wait_until("four access log lines", LIMIT, || async {
        lines().len() >= 4
    })
    .await;
    let parsed: Vec<serde_json::Value> = lines()
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    // In-process, on the test's work-stealing runtime, a connection may move between
    // threads and its lines come out of order (see access_log.rs): find each request's line
    // by its URI.
    let mut http: Vec<_> = parsed.iter().filter(|v| v["type"] == "http").collect();
    http.sort_by_key(|v| {
        ["/", "/status/404", "/bytes/10"]
            .iter()
            .position(|u| v["uri"] == *u)
    });
    let tcp: Vec<_> = parsed.iter().filter(|v| v["type"] == "tcp").collect();
    assert_eq!(http.len(), 3, "{parsed:?}");
    let uris: Vec<_> = http.iter().map(|v| v["uri"].as_str().unwrap()).collect();
    assert_eq!(uris, ["/", "/status/404", "/bytes/10"], "{parsed:?}");
    let statuses: Vec<_> = http.iter().map(|v| v["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 404, 200]);
    assert_eq!(http[2]["bytes"], 10);
    assert_eq!(http[0]["server"], "o0");
    assert_eq!(http[0]["listener"], "web");
    assert_eq!(tcp.len(), 1, "{parsed:?}");
    assert_eq!(tcp[0]["outcome"], "closed");
    assert_eq!(tcp[0]["server"], "o0");
    assert!(tcp[0]["bytes_in"].as_u64().unwrap() > 0 && tcp[0]["bytes_out"].as_u64().unwrap() > 0);

    // A reload switches the format; lines keep going to the same file.
    p.reload_with(&cfg("combined"))
        .await
        .expect("reload succeeds");
    get(&c, &p.url("web", "/")).await;
    wait_until("a combined line", LIMIT, || async { lines().len() >= 5 }).await;
    let last = lines().pop().unwrap();
    assert!(last.starts_with("127.0.0.1 - - ["), "{last}");
    assert!(last.contains("\"GET / HTTP/1.1\" 200"), "{last}");
    assert!(last.contains("upstream=app/o0"), "{last}");
    let m = scrape(p.admin().await).await;
    assert_eq!(
        metric(&m, "fulcrum_access_log_dropped_total", &[]),
        Some(0.0)
    );
}

fn fulcrum(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_against_previews_a_reload_from_a_file_and_from_a_live_daemon() {
    let o = fleet(4).await;
    let old = http_config(&servers(&[&o[0], &o[1], &o[2]]), "", NO_HEALTH);
    let new = http_config(
        &format!(
            "{{ addr = \"{}\", name = \"o0\", weight = 3 }}, {}",
            o[0].addr,
            servers(&[&o[1], &o[3]])
        ),
        "algorithm = \"weighted_round_robin\"",
        NO_HEALTH,
    );
    let dir = tempfile::tempdir().unwrap();
    let (old_path, new_path) = (dir.path().join("old.toml"), dir.path().join("new.toml"));
    std::fs::write(&old_path, &old).unwrap();
    std::fs::write(&new_path, &new).unwrap();
    let expect = |out: &str| {
        assert!(
            out.contains("algorithm round_robin -> weighted_round_robin"),
            "{out}"
        );
        assert!(out.contains("+ o3"), "{out}");
        assert!(out.contains("- o2"), "{out}");
        assert!(out.contains("~ o0") && out.contains("1 -> 3"), "{out}");
        // o0: a third of the traffic before, 3 of 5 weight units after.
        assert!(out.contains("33.3% -> 60.0%"), "{out}");
    };
    let (code, out, err) = fulcrum(&[
        "check",
        "--config",
        new_path.to_str().unwrap(),
        "--against",
        old_path.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    expect(&out);

    let p = Proxy::start(&old).await;
    let admin = format!("http://{}", p.admin().await);
    let args = [
        "check".to_string(),
        "--config".into(),
        new_path.display().to_string(),
        "--against".into(),
        admin,
    ];
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        fulcrum(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    expect(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_logs_file_line_col_and_keeps_serving() {
    let o = fleet(1).await;
    let good = http_config(&servers(&[&o[0]]), "", NO_HEALTH);
    let d = tokio::task::block_in_place(|| Daemon::spawn(&good));
    let admin = d.admin.expect("admin listener");
    let url = format!("http://{}/", d.addrs["web"]);

    let broken = good.replace("protocol = \"http\"", "protocol = \"htp\"");
    let line = broken.lines().position(|l| l.contains("htp")).unwrap() + 1;
    std::fs::write(&d.path, &broken).unwrap();
    d.signal(SIGHUP);
    let want = format!("{}:{line}:", d.path.display());
    let logged = tokio::task::block_in_place(|| {
        d.wait_log("reload failed", LIMIT, |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("reload failed"))
        })
    });
    let error = logged["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(&want), "logged as file:line:col: {error}");
    assert_eq!(
        get(&client(), &url).await.status,
        200,
        "the old config serves"
    );

    // POST /reload reports the same error to its caller.
    let r = admin_call(admin, "POST", "/reload", None, "").await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains(&format!(":{line}:")), "{}", r.text());
    let m = scrape(admin).await;
    assert_eq!(
        metric(&m, "fulcrum_config_last_reload_successful", &[]),
        Some(0.0)
    );

    std::fs::write(&d.path, &good).unwrap();
    let r = admin_call(admin, "POST", "/reload", None, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
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
async fn probe_exits_zero_when_healthy() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", NO_HEALTH)).await;
    let admin = p.admin().await.to_string();
    let (ok, missing) = tokio::task::spawn_blocking(move || {
        (
            fulcrum(&["probe", "--admin", &admin]),
            fulcrum(&["probe", "--admin", &admin, "--path", "/nope"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(ok.0, 0, "{}", ok.2);
    assert_eq!(missing.0, 1, "a non-2xx answer is unhealthy");
    assert!(missing.2.contains("404"), "{}", missing.2);
}

/// Kills and reaps a child process when dropped, so a failing test leaves no daemon behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_written_to_a_file_carry_no_colour_codes() {
    let o = fleet(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fulcrum.toml");
    std::fs::write(&cfg, http_config(&servers(&[&o[0]]), "", NO_HEALTH)).unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["--log-level", "info", "run", "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("fulcrum binary runs");
    let _child = Reaped(child);
    let read = || std::fs::read(&log).unwrap_or_default();
    wait_until("fulcrum logs that it is ready", LIMIT, || async {
        String::from_utf8_lossy(&read()).contains("fulcrum ready")
    })
    .await;
    let bytes = read();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains(" INFO ") && !text.trim_start().starts_with('{'),
        "the text format, not JSON: {text}"
    );
    assert!(
        !bytes.contains(&0x1b),
        "no ANSI escape (ESC) bytes when stderr is a file: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_logs_each_connections_requests_in_their_order() {
    // The README's promise: `fulcrum run` serves a connection on one worker thread, so the
    // per-thread log buffers keep a connection's lines in order, whatever the other
    // connections' lines do around them.
    let o = fleet(1).await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let top = format!(
        "[runtime]\nworker_threads = 2\n\n[access_log]\nenabled = true\npath = \"{}\"\nformat = \"json\"\n",
        log_path.display()
    );
    let cfg = config_with(
        "bind = \"127.0.0.1:0\"\nallow_unauthenticated_loopback = true",
        &top,
        &servers(&[&o[0]]),
        NO_HEALTH,
    );
    let d = tokio::task::block_in_place(|| Daemon::spawn(&cfg));
    let web = d.addrs["web"];
    const CONNS: usize = 4;
    const EACH: usize = 25;
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(web).await.unwrap();
                for i in 0..EACH {
                    let (head, _) = raw_get(&mut s, &format!("/?c={c}&i={i}")).await;
                    assert!(head.starts_with("http/1.1 200"), "{head}");
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON lines"))
            .collect()
    };
    wait_until("every request logged", LIMIT, || async {
        lines().len() >= CONNS * EACH
    })
    .await;
    for c in 0..CONNS {
        let mine: Vec<usize> = lines()
            .iter()
            .filter_map(|v| v["uri"].as_str()?.strip_prefix(&format!("/?c={c}&i=")))
            .map(|i| i.parse().unwrap())
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "connection {c}");
    }
}
