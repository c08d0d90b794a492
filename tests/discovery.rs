//! Server discovery against real servers on loopback: a DNS server the test runs (A and SRV
//! records it changes at will) and Debian's etcd. Origins on 127.0.0.2..9 play distinct
//! hosts. Every story runs under load and counts failed requests.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dns::DnsServer;
use common::etcd::Etcd;
use common::*;
use fulcrum::demo::Origin;
use hickory_resolver::proto::rr::RecordType;

const LIMIT: Duration = Duration::from_secs(20);

/// Origins named h2, h3, ... on 127.0.0.2, 127.0.0.3, ... all on one port (a DNS name gives
/// addresses; the port comes from the config).
async fn hosts(n: u8) -> (Vec<Origin>, u16) {
    'again: for _ in 0..20 {
        let first = Origin::start("h2", "127.0.0.2:0".parse().unwrap())
            .await
            .expect("origin on 127.0.0.2");
        let port = first.addr.port();
        let mut v = vec![first];
        for i in 3..2 + n {
            let addr: SocketAddr = format!("127.0.0.{i}:{port}").parse().unwrap();
            match Origin::start(&format!("h{i}"), addr).await {
                Ok(o) => v.push(o),
                Err(_) => continue 'again,
            }
        }
        return (v, port);
    }
    panic!("no port free on 127.0.0.2..{}", 1 + n);
}

/// A config with pool "app" (`pool` lines) behind http listener "web", asking `dns`.
fn dns_config(dns: SocketAddr, pool: &str) -> String {
    format!(
        r#"
[runtime]
dns = {{ servers = ["{dns}"], timeout = "500ms" }}

[admin]
bind = "127.0.0.1:0"
allow_unauthenticated_loopback = true

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"

[[pool]]
name = "app"
{pool}

[pool.health]
{FAST_TCP_HEALTH}
"#
    )
}

/// Names of pool "app"'s servers, sorted.
fn names(p: &Proxy) -> Vec<String> {
    let mut v: Vec<String> = p
        .app()
        .servers
        .iter()
        .map(|s| s.settings.name.to_string())
        .collect();
    v.sort();
    v
}

/// Bounded background load on one URL: counts successes, keeps every failure's text.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (url, stop, ok, failures) =
                    (url.clone(), stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    let c = client();
                    let deadline = Instant::now() + Duration::from_secs(90);
                    for _ in 0..200_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let req = http::Request::get(&url).body(Default::default()).unwrap();
                        match send(&c, req).await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failures.lock().unwrap().push(format!(
                                "{}: {}",
                                r.status,
                                r.text().trim()
                            )),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Waits for `n` more successes (so a change meets traffic).
    async fn more(&self, n: u64) {
        let seen = self.ok.load(Ordering::Relaxed);
        wait_until("requests flow", LIMIT, || async {
            self.ok.load(Ordering::Relaxed) >= seen + n
        })
        .await;
    }

    /// Stops and returns (successes, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.more(20).await;
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let f = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), f)
    }
}

/// Waits until origin `o` has served a request; returns how long that took from `since`.
async fn served(o: &Origin, since: Instant) -> Duration {
    let before = o.hits();
    wait_until(&format!("{} serves traffic", o.name), LIMIT, || async {
        o.hits() > before
    })
    .await;
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_records_added_changed_and_removed_under_load_fail_no_request() {
    let dns = DnsServer::start().await;
    let (h, port) = hosts(3).await;
    dns.set_a("app.test", &["127.0.0.2"], 1);
    let pool = format!(
        "servers = [ {{ addr = \"app.test:{port}\" }} ]\ndns = {{ min_ttl = \"100ms\", max_ttl = \"1s\" }}"
    );
    let p = Proxy::start(&dns_config(dns.addr, &pool)).await;
    assert_eq!(
        names(&p),
        ["app.test#127.0.0.2"],
        "resolved at start, each address a server"
    );
    let load = Load::start(p.url("web", "/"), 4);
    load.more(50).await;

    // Added: a second address joins and takes traffic.
    let t = Instant::now();
    dns.set_a("app.test", &["127.0.0.2", "127.0.0.3"], 1);
    let took = served(&h[1], t).await;
    eprintln!(
        "dns: a new address served its first request {took:?} after the record changed (TTL 1s)"
    );
    let kept = p.server("app.test#127.0.0.3");
    let served_before = kept.metrics.requests();

    // Changed: .2 leaves as .4 arrives; .3 stays, with its state.
    dns.set_a("app.test", &["127.0.0.3", "127.0.0.4"], 1);
    served(&h[2], Instant::now()).await;
    wait_until("127.0.0.2 leaves", LIMIT, || async {
        names(&p) == ["app.test#127.0.0.3", "app.test#127.0.0.4"]
    })
    .await;
    let same = p.server("app.test#127.0.0.3");
    assert!(
        Arc::ptr_eq(&kept, &same),
        "a server whose address survives keeps its state"
    );
    assert!(
        same.metrics.requests() >= served_before,
        "its counters carry on"
    );

    // Removed.
    dns.set_a("app.test", &["127.0.0.4"], 1);
    wait_until("127.0.0.3 leaves", LIMIT, || async {
        names(&p) == ["app.test#127.0.0.4"]
    })
    .await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Where each server came from shows in /status.
    let status = status_json(p.admin().await).await;
    let servers = &status["pools"][0]["servers"];
    assert_eq!(servers[0]["origin"], "dns", "{servers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_discovered_servers_and_their_state() {
    let dns = DnsServer::start().await;
    let (_h, port) = hosts(2).await;
    let fixed = Origin::start("fixed", ANY.parse().unwrap()).await.unwrap();
    dns.set_a("app.test", &["127.0.0.2", "127.0.0.3"], 30);
    let pool = |extra: &str| {
        format!(
            "servers = [ {{ addr = \"app.test:{port}\" }}, {{ addr = \"{}\", name = \"fixed\" }} ]\n{extra}",
            fixed.addr
        )
    };
    let p = Proxy::start(&dns_config(dns.addr, &pool(""))).await;
    let before = p.server("app.test#127.0.0.2");
    let load = Load::start(p.url("web", "/"), 2);
    load.more(20).await;

    // The live preview lists the discovered servers as staying, and says where each came from.
    let r = admin_call(
        p.admin().await,
        "POST",
        "/preview",
        None,
        &dns_config(dns.addr, &pool("retries = 1")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let preview = r.text();
    assert!(
        !preview.contains("servers: 0 added, 2 removed"),
        "{preview}"
    );
    let line = preview
        .lines()
        .find(|l| l.contains("app.test#127.0.0.2"))
        .unwrap_or_else(|| panic!("{preview}"));
    assert!(line.trim_end().ends_with("dns"), "{preview}");
    let line = preview
        .lines()
        .find(|l| l.contains("fixed "))
        .unwrap_or_else(|| panic!("{preview}"));
    assert!(line.trim_end().ends_with("file"), "{preview}");

    p.reload_with(&dns_config(dns.addr, &pool("retries = 1")))
        .await
        .unwrap();
    assert_eq!(
        names(&p),
        ["app.test#127.0.0.2", "app.test#127.0.0.3", "fixed"],
        "discovered servers survive a reload"
    );
    assert!(
        Arc::ptr_eq(&before, &p.server("app.test#127.0.0.2")),
        "with their state"
    );
    // A reload that drops the name drops its servers.
    let only_fixed = format!("{{ addr = \"{}\", name = \"fixed\" }}", fixed.addr);
    p.reload_with(&http_config(&only_fixed, "", FAST_TCP_HEALTH))
        .await
        .unwrap();
    assert_eq!(names(&p), ["fixed"]);
    let (_, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "requests failed: {:?}",
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_decides_when_names_are_asked_again_within_the_bounds() {
    let dns = DnsServer::start().await;
    let o = Origin::start("o", ANY.parse().unwrap()).await.unwrap();
    let port = o.addr.port();
    dns.set_a("ttl.test", &["127.0.0.1"], 2);
    dns.set_a("long.test", &["127.0.0.1"], 3600);
    dns.set_a("zero.test", &["127.0.0.1"], 0);
    let extra = format!(
        r#"
[[pool]]
name = "long"
servers = [ {{ addr = "long.test:{port}" }} ]
dns = {{ max_ttl = "300ms", min_ttl = "100ms" }}

[[pool]]
name = "zero"
servers = [ {{ addr = "zero.test:{port}" }} ]
dns = {{ min_ttl = "700ms" }}
"#
    );
    let pool = format!("servers = [ {{ addr = \"ttl.test:{port}\" }} ]\ndns = {{ min_ttl = \"100ms\", max_ttl = \"1m\" }}");
    let _p = Proxy::start(&(dns_config(dns.addr, &pool) + &extra)).await;
    // Distinct lookups (a query retried over TCP at the same moment counts once).
    let lookups = |name: &str| {
        let mut v = dns.queries(name, RecordType::A);
        v.dedup_by(|b, a| b.duration_since(*a) < Duration::from_millis(50));
        v
    };
    wait_until("ttl.test asked three times", LIMIT, || async {
        lookups("ttl.test").len() >= 3
    })
    .await;
    wait_until("long.test asked again within max_ttl", LIMIT, || async {
        lookups("long.test").len() >= 3
    })
    .await;
    wait_until("zero.test asked again", LIMIT, || async {
        lookups("zero.test").len() >= 3
    })
    .await;
    for (name, at_least) in [
        ("ttl.test", Duration::from_millis(1900)),
        ("zero.test", Duration::from_millis(690)),
    ] {
        let q = lookups(name);
        for w in q.windows(2) {
            let gap = w[1].duration_since(w[0]);
            assert!(
                gap >= at_least,
                "{name} asked again after {gap:?}, before its TTL (clamped) of {at_least:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_server_down_keeps_the_last_good_set() {
    let dns = DnsServer::start().await;
    let (h, port) = hosts(2).await;
    dns.set_a("app.test", &["127.0.0.2", "127.0.0.3"], 1);
    let pool = format!("servers = [ {{ addr = \"app.test:{port}\" }} ]\ndns = {{ min_ttl = \"100ms\", max_ttl = \"1s\" }}");
    let p = Proxy::start(&dns_config(dns.addr, &pool)).await;
    let load = Load::start(p.url("web", "/"), 2);
    dns.stop();
    let errors = || {
        p.metric_value(
            "fulcrum_discovery_errors_total",
            &[("pool", "app"), ("source", "dns")],
        )
    };
    wait_until("failed lookups are counted", LIMIT, || async {
        errors() >= 2.0
    })
    .await;
    assert_eq!(
        names(&p),
        ["app.test#127.0.0.2", "app.test#127.0.0.3"],
        "the last good set stays"
    );
    for o in &h {
        served(o, Instant::now()).await;
    }
    // Back up, with a change: discovery recovers by itself.
    dns.set_a("app.test", &["127.0.0.3"], 1);
    dns.restart().await;
    wait_until("the change after the outage applies", LIMIT, || async {
        names(&p) == ["app.test#127.0.0.3"]
    })
    .await;
    let (_, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "requests failed: {:?}",
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_never_resolved_leaves_the_pool_empty_with_503_until_it_does() {
    let dns = DnsServer::start().await;
    let o = Origin::start("late", ANY.parse().unwrap()).await.unwrap();
    let pool = format!(
        "servers = [ {{ addr = \"late.test:{}\" }} ]\ndns = {{ min_ttl = \"100ms\" }}",
        o.addr.port()
    );
    let p = Proxy::start(&dns_config(dns.addr, &pool)).await;
    assert!(names(&p).is_empty());
    let c = client();
    let r = get(&c, &p.url("web", "/")).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        p.metric_value(
            "fulcrum_discovery_errors_total",
            &[("pool", "app"), ("source", "dns")]
        ) >= 1.0
    );
    dns.set_a("late.test", &["127.0.0.1"], 1);
    wait_until("the name resolves and serves", LIMIT, || async {
        get(&c, &p.url("web", "/")).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_priorities_make_the_primary_and_backup_tiers() {
    let dns = DnsServer::start().await;
    let o = fleet(3).await;
    for i in 0..3 {
        dns.set_a(&format!("t{i}.app.test"), &["127.0.0.1"], 30);
    }
    let (p0, p1, p2) = (o[0].addr.port(), o[1].addr.port(), o[2].addr.port());
    dns.set_srv(
        "_http._tcp.app.test",
        &[
            (10, 3, p0, "t0.app.test"),
            (10, 1, p1, "t1.app.test"),
            (20, 0, p2, "t2.app.test"),
        ],
        30,
    );
    let pool = "algorithm = \"weighted_round_robin\"\nsrv = \"_http._tcp.app.test\"";
    let p = Proxy::start(&dns_config(dns.addr, pool)).await;
    let pool = p.app();
    let mut tiers: Vec<_> = pool
        .servers
        .iter()
        .map(|s| {
            (
                s.settings.name.to_string(),
                s.settings.weight,
                s.settings.backup,
            )
        })
        .collect();
    tiers.sort();
    assert_eq!(
        tiers,
        [
            (format!("t0.app.test#127.0.0.1:{p0}"), 3, false),
            (format!("t1.app.test#127.0.0.1:{p1}"), 1, false),
            (format!("t2.app.test#127.0.0.1:{p2}"), 1, true),
        ],
        "lowest priority primary, next backup; SRV weight as weight (0 becomes 1)"
    );
    let c = client();
    let counts = spread(&c, &p.url("web", "/"), 40).await;
    assert_eq!(
        (counts.get("o0"), counts.get("o1"), counts.get("o2")),
        (Some(&30), Some(&10), None),
        "{counts:?}"
    );
    o[0].kill();
    o[1].kill();
    wait_until("the backup tier serves", LIMIT, || async {
        get(&c, &p.url("web", "/")).await.origin() == "o2"
    })
    .await;
    let status = status_json(p.admin().await).await;
    assert_eq!(status["pools"][0]["servers"][0]["origin"], "srv");
}

#[test]
fn fulcrum_check_resolves_names_and_warns_for_those_that_fail() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(DnsServer::start());
    dns.set_a("app.test", &["127.0.0.7"], 30);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    let run = |pool: &str, strict: bool| {
        std::fs::write(&path, dns_config(dns.addr, pool)).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"));
        cmd.args(["check", "--config"]).arg(&path);
        if strict {
            cmd.arg("--strict");
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(
        "servers = [ { addr = \"app.test:9000\" }, { addr = \"127.0.0.1:1\" } ]",
        false,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("app.test:9000") && out.contains("app.test#127.0.0.7 127.0.0.7:9000"),
        "{out}"
    );
    let missing = "servers = [ { addr = \"missing.test:9000\" } ]";
    let (code, out, err) = run(missing, false);
    assert_eq!(code, Some(0), "a name that fails is a warning: {out}{err}");
    assert!(
        err.contains("warning: pool app: missing.test:9000"),
        "{err}"
    );
    let (code, _, err) = run(missing, true);
    assert_eq!(code, Some(1), "--strict: an error: {err}");
    assert!(err.contains("error: pool app: missing.test:9000"), "{err}");
}

// ---- etcd ---------------------------------------------------------------------------

/// etcd is needed; without it (and outside CI) the etcd stories are skipped, said aloud.
fn etcd_here() -> bool {
    if Etcd::available() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI: etcd (Debian etcd-server) must be installed"
    );
    eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
    false
}

fn etcd_config(etcd: &Etcd) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"
allow_unauthenticated_loopback = true

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
pool = "app"

[[pool]]
name = "app"

[pool.discovery]
etcd = {{ endpoints = ["{}"], prefix = "/services/app/" }}

[pool.health]
{FAST_TCP_HEALTH}
"#,
        etcd.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_registrations_join_and_leave_under_load_without_failures() {
    if !etcd_here() {
        return;
    }
    let etcd = Etcd::start().await;
    let o = fleet(3).await;
    etcd.register("/services/app/o0", o[0].addr, 1).await;
    let p = Proxy::start(&etcd_config(&etcd)).await;
    assert_eq!(names(&p), ["o0"], "named after the key");
    let load = Load::start(p.url("web", "/"), 4);
    load.more(50).await;
    let t = Instant::now();
    etcd.register("/services/app/o1", o[1].addr, 2).await;
    let took = served(&o[1], t).await;
    eprintln!("etcd: a registration served its first request {took:?} after the write");
    etcd.delete("/services/app/o0").await;
    wait_until("o0 leaves", LIMIT, || async { names(&p) == ["o1"] }).await;
    // Requests that chose o0 before it left finish; after them, none goes there.
    load.more(50).await;
    let gone = o[0].hits();
    load.more(50).await;
    assert_eq!(
        o[0].hits(),
        gone,
        "a deregistered server gets no new requests"
    );
    etcd.register("/services/app/o2", o[2].addr, 1).await;
    served(&o[2], Instant::now()).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} failed: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );
    let status = status_json(p.admin().await).await;
    assert_eq!(status["pools"][0]["servers"][0]["origin"], "etcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_while_serving_throughout() {
    if !etcd_here() {
        return;
    }
    let mut etcd = Etcd::start().await;
    let o = fleet(3).await;
    etcd.register("/services/app/o0", o[0].addr, 1).await;
    etcd.register("/services/app/o1", o[1].addr, 1).await;
    let p = Proxy::start(&etcd_config(&etcd)).await;
    let load = Load::start(p.url("web", "/"), 4);
    etcd.kill();
    let errors = || {
        p.metric_value(
            "fulcrum_discovery_errors_total",
            &[("pool", "app"), ("source", "etcd")],
        )
    };
    wait_until("the outage is counted", LIMIT, || async { errors() >= 2.0 }).await;
    assert_eq!(names(&p), ["o0", "o1"], "the last known set keeps serving");
    served(&o[0], Instant::now()).await;
    served(&o[1], Instant::now()).await;
    etcd.restart().await;
    etcd.register("/services/app/o2", o[2].addr, 1).await;
    served(&o[2], Instant::now()).await;
    let (_, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "requests failed: {:?}",
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_etcd_values_are_skipped_counted_and_logged() {
    if !etcd_here() {
        return;
    }
    let etcd = Etcd::start().await;
    let o = fleet(2).await;
    etcd.put("/services/app/bad", "not json").await;
    etcd.put(
        "/services/app/zero",
        &format!(r#"{{"addr":"{}","weight":0}}"#, o[1].addr),
    )
    .await;
    etcd.register("/services/app/o0", o[0].addr, 1).await;
    let p = Proxy::start(&etcd_config(&etcd)).await;
    assert_eq!(names(&p), ["o0"], "malformed values are skipped");
    let errors = || {
        p.metric_value(
            "fulcrum_discovery_errors_total",
            &[("pool", "app"), ("source", "etcd")],
        )
    };
    assert_eq!(errors(), 2.0, "each malformed value counted");
    // A registration that turns malformed while running leaves; the pool carries on.
    etcd.register("/services/app/o1", o[1].addr, 1).await;
    wait_until("o1 joins", LIMIT, || async { names(&p) == ["o0", "o1"] }).await;
    etcd.put("/services/app/o1", "{\"addr\": \"somewhere\"}")
        .await;
    wait_until("o1 leaves", LIMIT, || async { names(&p) == ["o0"] }).await;
    assert_eq!(errors(), 3.0);
    let c = client();
    assert_eq!(get(&c, &p.url("web", "/")).await.origin(), "o0");
}
