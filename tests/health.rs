//! Health checking against real sockets: http, heartbeat and tcp probes, rise/fall, the
//! initial state, flap damping, passive ejection with its cap and probation, disagreement
//! between checks and traffic, and the availability record.

mod common;

use std::time::Duration;

use common::*;

/// Generous: a loaded 2-core machine may be slow, a passing test is never slowed by it.
const LIMIT: Duration = Duration::from_secs(20);

/// Fast http checks of /healthz with `rise` and `fall`, plus `extra` lines.
fn http_health(rise: u32, fall: u32, extra: &str) -> String {
    format!(
        "kind = \"http\"\npath = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"500ms\"\nrise = {rise}\nfall = {fall}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_honours_expected_status_ranges() {
    let o = fleet(2).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1]]),
        "",
        &http_health(2, 2, "expect_status = \"200-299\""),
    ))
    .await;
    assert!(p.eligible("o0") && p.eligible("o1"), "both pass at start");

    o[1].set_health(204, "");
    let ok_before = p.checks("o1", "success");
    wait_until("two more checks of o1 pass", LIMIT, || async {
        p.checks("o1", "success") >= ok_before + 2
    })
    .await;
    assert!(p.eligible("o1"), "204 is within 200-299");

    o[1].set_health(302, "moved");
    wait_until("o1 goes down on 302", LIMIT, || async { !p.eligible("o1") }).await;
    let c = client();
    let counts = spread(&c, &p.url("web", "/"), 20).await;
    assert_eq!(counts.get("o0"), Some(&20), "all traffic to o0: {counts:?}");

    o[1].set_health(200, "ok");
    wait_until("o1 back on 200", LIMIT, || async { p.eligible("o1") }).await;
    assert_eq!(p.transitions("o1", "down"), 1);
    assert_eq!(
        p.transitions("o1", "up"),
        2,
        "its first check brought it up, then one return"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_requires_the_body_substring() {
    let o = fleet(2).await;
    for x in &o {
        x.set_health(200, "status: ready\n");
    }
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1]]),
        "",
        &http_health(2, 2, "expect_body = \"ready\""),
    ))
    .await;
    assert!(p.eligible("o1"));

    o[1].set_health(200, "status: starting\n");
    wait_until("o1 down: 200 without \"ready\"", LIMIT, || async {
        !p.eligible("o1")
    })
    .await;

    o[1].set_health(200, "status: ready\n");
    wait_until("o1 back with \"ready\"", LIMIT, || async {
        p.eligible("o1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_reuses_its_connection() {
    let o = fleet(1).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", &http_health(2, 2, ""))).await;
    wait_until("ten checks passed", LIMIT, || async {
        p.checks("o0", "success") >= 10
    })
    .await;
    assert_eq!(o[0].connections(), 1, "ten probes over one connection");
}

/// Fast PING/PONG heartbeats with rise = 1 and `fall`, plus `extra` lines.
fn heartbeat_health(fall: u32, extra: &str) -> String {
    format!(
        "kind = \"heartbeat\"\nsend = \"PING\\r\\n\"\nexpect = \"+PONG\"\ninterval = \"50ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = {fall}\n{extra}"
    )
}

fn raw_server(addr: std::net::SocketAddr, name: &str) -> String {
    format!("{{ addr = \"{addr}\", name = \"{name}\" }}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pings_over_one_persistent_connection() {
    let ping = PingServer::start(0).await;
    let p = Proxy::start(&http_config(
        &raw_server(ping.addr, "redis"),
        "",
        &heartbeat_health(1, ""),
    ))
    .await;
    wait_until("ten heartbeats answered", LIMIT, || async {
        p.checks("redis", "success") >= 10
    })
    .await;
    assert!(p.eligible("redis"));
    assert_eq!(p.checks("redis", "failure"), 0);
    assert_eq!(
        ping.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one connection for every ping"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_reconnects_when_the_server_drops_the_connection() {
    // The server hangs up after every third PONG; with fall = 1 a single failed probe would
    // take the server down, so staying up shows the probe reconnects on its own.
    let ping = PingServer::start(3).await;
    let p = Proxy::start(&http_config(
        &raw_server(ping.addr, "redis"),
        "",
        &heartbeat_health(1, ""),
    ))
    .await;
    wait_until("fifteen heartbeats answered", LIMIT, || async {
        p.checks("redis", "success") >= 15
    })
    .await;
    assert!(
        ping.connections.load(std::sync::atomic::Ordering::Relaxed) >= 4,
        "reconnected after each drop"
    );
    assert_eq!(p.checks("redis", "failure"), 0, "a drop is not a failure");
    assert_eq!(p.transitions("redis", "down"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_against_a_server_that_never_answers_goes_down() {
    let silent = SilentServer::start().await;
    let p = Proxy::start(&http_config(
        &raw_server(silent.addr, "mute"),
        "",
        &heartbeat_health(2, "initial_state = \"up\""),
    ))
    .await;
    wait_until("mute goes down after two timeouts", LIMIT, || async {
        !p.server("mute").health_up()
    })
    .await;
    assert!(p.checks("mute", "failure") >= 2);
    assert_eq!(p.checks("mute", "success"), 0);
    assert_eq!(p.transitions("mute", "down"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_server_changes_state_no_faster_than_rise_and_fall_allow() {
    let o = fleet(1).await;
    // Two passes, two failures, repeating: never three in a row.
    o[0].set_health_pattern(&[true, true, false, false]);
    let p = Proxy::start(&http_config(&servers(&[&o[0]]), "", &http_health(3, 3, ""))).await;
    wait_until("forty checks", LIMIT, || async {
        p.checks("o0", "success") + p.checks("o0", "failure") >= 40
    })
    .await;
    assert_eq!(
        p.transitions("o0", "down"),
        0,
        "never three failures in a row"
    );
    assert!(p.eligible("o0"));

    // Three failures, three passes: each change needs exactly three checks.
    let t0 = p.transitions("o0", "down") + p.transitions("o0", "up");
    let c0 = p.checks("o0", "success") + p.checks("o0", "failure");
    o[0].set_health_pattern(&[false, false, false, true, true, true]);
    wait_until("four changes", LIMIT, || async {
        p.transitions("o0", "down") + p.transitions("o0", "up") >= t0 + 4
    })
    .await;
    let t = p.transitions("o0", "down") + p.transitions("o0", "up") - t0;
    let c = p.checks("o0", "success") + p.checks("o0", "failure") - c0;
    // The first change may use up to two failures seen before the switch.
    assert!(
        3 * t <= c + 2,
        "{t} changes over {c} checks: faster than rise/fall = 3 allow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flap_damping_holds_a_flapping_server_out_until_it_is_stable() {
    let o = fleet(2).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1]]),
        "",
        &http_health(
            1,
            1,
            "[pool.health.flap_damping]\npenalty = 1000\nsuppress = 2000\nreuse = 750\nhalf_life = \"1s\"",
        ),
    ))
    .await;
    assert!(p.eligible("o1"));

    // o1 passes and fails on alternate checks: up, down, up, down...
    o[1].set_health_pattern(&[true, false]);
    wait_until("o1 held out by flap damping", LIMIT, || async {
        p.server("o1").suppressed()
    })
    .await;
    let flaps = p.transitions("o1", "down");
    let c = client();
    let counts = spread(&c, &p.url("web", "/"), 30).await;
    assert_eq!(
        counts.get("o0"),
        Some(&30),
        "a held-out server gets nothing even when its checks pass: {counts:?}"
    );
    wait_until("o1 keeps flapping while held", LIMIT, || async {
        p.transitions("o1", "down") >= flaps + 3
    })
    .await;
    assert!(!p.eligible("o1"), "still held while flapping");

    // Stable again: the penalty decays below `reuse` and o1 returns by itself.
    o[1].set_health(200, "ok");
    wait_until("o1 back once stable", Duration::from_secs(40), || async {
        p.eligible("o1")
    })
    .await;
    let counts = spread(&c, &p.url("web", "/"), 20).await;
    assert!(counts.get("o1").copied().unwrap_or(0) > 0, "{counts:?}");
    assert_eq!(
        p.metric_value(
            "fulcrum_server_flap_suppressions_total",
            &[("server", "o1")]
        ),
        1.0,
        "one hold for the whole flapping episode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_takes_no_traffic_before_its_first_successful_check() {
    let o = fleet(2).await;
    o[1].set_health(503, "starting");
    // rise = 3 and slow checks: coming up on the first success is the initial-state rule,
    // not three passes in a row.
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1]]),
        "",
        "kind = \"http\"\npath = \"/healthz\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 3\nfall = 3",
    ))
    .await;
    assert!(!p.eligible("o1"));
    let c = client();
    let counts = spread(&c, &p.url("web", "/"), 20).await;
    assert_eq!(counts.get("o0"), Some(&20), "{counts:?}");

    o[1].set_health(200, "ok");
    wait_until("o1 up after its first passing check", LIMIT, || async {
        p.eligible("o1")
    })
    .await;
    assert!(
        p.checks("o1", "success") < 3,
        "came up before `rise` passes in a row"
    );
    assert_eq!(p.transitions("o1", "up"), 1);
    let a = p.server("o1").availability();
    assert_eq!(a.failures, 0, "waiting for a first check is not a failure");
}

fn passive(extra: &str) -> String {
    format!("[pool.passive]\ncount = [\"5xx\"]\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_never_takes_more_than_half_the_pool() {
    let o = fleet(4).await;
    for x in &o[1..] {
        x.set_failing(Some(500));
    }
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1], &o[2], &o[3]]),
        &passive("consecutive_failures = 2\nbase_ejection = \"1m\""),
        NO_HEALTH,
    ))
    .await;
    let c = client();
    let url = p.url("web", "/");
    wait_until("two failing servers ejected", LIMIT, || async {
        get(&c, &url).await;
        ["o1", "o2", "o3"].iter().filter(|n| !p.eligible(n)).count() >= 2
    })
    .await;
    // Keep failing traffic flowing: the third failing server reaches the threshold too.
    for _ in 0..40 {
        get(&c, &url).await;
    }
    let ejected: Vec<_> = ["o0", "o1", "o2", "o3"]
        .into_iter()
        .filter(|n| !p.eligible(n))
        .collect();
    assert_eq!(ejected.len(), 2, "3 of 4 failing, cap 50%: {ejected:?}");
    assert!(p.eligible("o0"), "the healthy server is never ejected");
    let counted: f64 = ["o0", "o1", "o2", "o3"]
        .iter()
        .map(|n| p.metric_value("fulcrum_server_ejections_total", &[("server", n)]))
        .sum();
    assert_eq!(counted, 2.0, "two ejections counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejected_server_returns_on_probation_and_one_failure_ejects_it_again() {
    let o = fleet(2).await;
    o[1].set_failing(Some(500));
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1]]),
        &passive("consecutive_failures = 3\nbase_ejection = \"300ms\"\nmax_ejection = \"1m\""),
        NO_HEALTH,
    ))
    .await;
    let c = client();
    let url = p.url("web", "/");
    let ejections = || p.metric_value("fulcrum_server_ejections_total", &[("server", "o1")]);
    wait_until("o1 ejected after three 500s", LIMIT, || async {
        get(&c, &url).await;
        ejections() == 1.0
    })
    .await;
    wait_until("o1 back after its ejection time", LIMIT, || async {
        p.eligible("o1")
    })
    .await;

    // Exactly one request reaches o1, and fails.
    let mut to_o1 = 0;
    while to_o1 == 0 {
        let r = get(&c, &url).await;
        if r.origin() == "o1" {
            assert_eq!(r.status, 500);
            to_o1 += 1;
        }
    }
    assert_eq!(ejections(), 2.0, "one failure on probation ejects again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_passing_while_traffic_fails_is_one_disagreement_episode() {
    let o = fleet(2).await;
    let p = Proxy::start(&http_config(
        &servers(&[&o[0], &o[1]]),
        &passive("consecutive_failures = 5\nbase_ejection = \"1m\""),
        &http_health(2, 2, ""),
    ))
    .await;
    // /healthz stays fine; everything else on o1 fails: a health endpoint that tests nothing.
    o[1].set_failing(Some(500));
    let c = client();
    let url = p.url("web", "/");
    let episodes = || {
        p.metric_value(
            "fulcrum_server_check_disagreements_total",
            &[("server", "o1"), ("kind", "traffic_failing")],
        )
    };
    wait_until("disagreement reported", LIMIT, || async {
        get(&c, &url).await;
        episodes() == 1.0
    })
    .await;
    let checks = p.checks("o1", "success");
    wait_until("ten more passing checks", LIMIT, || async {
        p.checks("o1", "success") >= checks + 10
    })
    .await;
    assert_eq!(episodes(), 1.0, "reported once per episode, not per check");
    assert_eq!(
        p.metric_value(
            "fulcrum_server_check_disagreements_total",
            &[("server", "o0")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_record_counts_a_failure_and_a_recovery() {
    let o = fleet(2).await;
    let p = Proxy::start(&http_config(&servers(&[&o[0], &o[1]]), "", FAST_TCP_HEALTH)).await;
    o[1].kill();
    wait_until("o1 down", LIMIT, || async { !p.eligible("o1") }).await;
    o[1].restart().await.unwrap();
    wait_until("o1 back", LIMIT, || async { p.eligible("o1") }).await;

    let a = p.server("o1").availability();
    assert_eq!((a.failures, a.recoveries), (1, 1));
    let now = fulcrum::backend::now_ms();
    let (up, down) = a.totals(now);
    assert!(up > 0 && down > 0, "up {up} ms, down {down} ms");
    let (mtbf, mttr, ratio) = a.summary(now);
    assert!(mtbf > 0.0 && mttr > 0.0);
    assert!(ratio > 0.0 && ratio < 1.0, "availability {ratio}");
    assert_eq!(
        p.metric_value(
            "fulcrum_server_availability_failures_total",
            &[("server", "o1")]
        ),
        1.0
    );
    assert_eq!(p.server("o0").availability().failures, 0, "o0 never failed");
}
