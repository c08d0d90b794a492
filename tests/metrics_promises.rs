//! Metrics keep their promises: every metric name that the Grafana dashboard, the alert
//! rules and their unit tests, README.md and docs/*.md use is in a live scrape of a fulcrum
//! that has carried traffic; and the alert rules pass promtool's checks and unit tests.

mod common;
#[path = "common/tls.rs"]
mod tls_support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

/// Names the examples or docs use that the in-process scrape below cannot show, with why
/// (and where they are checked instead). Each must be missing from that scrape: once it
/// shows there, this test fails until the name is taken off the list.
const ALLOWED_MISSING: &[(&str, &str)] = &[(
    "fulcrum_worker_connections",
    "exported only by `fulcrum run`'s worker threads, which an in-process proxy has none of; \
     tests/ops.rs scrapes it from a running daemon",
)];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files whose metric names are promises, relative to the repository root.
fn promise_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "examples/grafana-dashboard.json",
        "examples/alerts.yml",
        "examples/alerts.test.yml",
        "README.md",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Every `fulcrum_...` word in `text`, plus the first-column names of a Markdown table
/// headed `| family |`, which docs/operations.md writes without the `fulcrum_` prefix.
fn names_in(text: &str) -> Vec<String> {
    let word = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("fulcrum_") {
        let before = rest[..i].chars().next_back();
        let tail = &rest[i + "fulcrum_".len()..];
        let len = tail.find(|c: char| !word(c)).unwrap_or(tail.len());
        if !before.is_some_and(|c| word(c) || c.is_ascii_uppercase()) && len > 0 {
            names.push(format!("fulcrum_{}", &tail[..len]));
        }
        rest = &tail[len..];
    }
    let mut in_table = false;
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if !line.trim_start().starts_with('|') {
            in_table = false;
            continue;
        }
        if cells[0].trim() == "family" {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        for quoted in cells[0].split('`').skip(1).step_by(2) {
            let name = quoted.split('{').next().unwrap_or_default();
            if !name.is_empty() && name.chars().all(word) {
                names.push(if name.starts_with("fulcrum_") {
                    name.to_string()
                } else {
                    format!("fulcrum_{name}")
                });
            }
        }
    }
    names
}

/// Whether the scrape has a sample of `name`, or of histogram `name` (its `_bucket`).
fn has_series(scrape: &str, name: &str) -> bool {
    let bucket = format!("{name}_bucket");
    scrape.lines().filter(|l| !l.starts_with('#')).any(|l| {
        let series = l.split(['{', ' ']).next().unwrap_or_default();
        series == name || series == bucket
    })
}

/// A fulcrum with an http, an https and a tcp listener, after traffic of every kind the
/// metrics count.
async fn live_scrape() -> String {
    let o = fleet(2).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_support::Ca::new("ca")
        .leaf(&["a.test"])
        .write(dir.path(), "a");
    let cfg = format!(
        "{}\n[[listener]]\nname = \"relay\"\nbind = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"app\"\n\n[[listener]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"app\"\n[listener.tls]\ncertificates = [ {{ cert = \"{}\", key = \"{}\" }} ]\n",
        http_config(&servers(&[&o[0], &o[1]]), "", FAST_TCP_HEALTH),
        cert.display(),
        key.display()
    );
    let p = Proxy::start(&cfg).await;
    let admin = p.admin().await;
    let c = client();
    for path in [
        "/",
        "/",
        "/status/503",
        "/status/404",
        "/bytes/100",
        "/sleep/5",
    ] {
        get(&c, &p.url("web", path)).await;
    }
    // Plain HTTP to the TLS listener: a failed handshake.
    let mut plain = TcpStream::connect(p.addr("secure")).await.unwrap();
    let _ = raw_get_or_close(&mut plain).await;
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
    scrape(admin).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_rules_and_docs_name_is_in_a_live_scrape() {
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in promise_files() {
        let text = std::fs::read_to_string(root().join(&file))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for name in names_in(&text) {
            let files = used.entry(name).or_default();
            let f = file.display().to_string();
            if !files.contains(&f) {
                files.push(f);
            }
        }
    }
    let dashboard = used
        .values()
        .filter(|f| f.iter().any(|f| f.ends_with(".json")))
        .count();
    assert!(
        dashboard >= 30,
        "the dashboard's names were found: {dashboard}"
    );
    assert!(
        used.contains_key("fulcrum_server_response_seconds"),
        "the docs table is read"
    );

    let scrape = live_scrape().await;
    let allowed = |n: &str| ALLOWED_MISSING.iter().any(|(m, _)| *m == n);
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !has_series(&scrape, name) && !allowed(name))
        .map(|(name, files)| format!("{name} (used in {})", files.join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "named but not in a live scrape:\n  {}\n--- scrape ---\n{scrape}",
        missing.join("\n  ")
    );
    for (name, why) in ALLOWED_MISSING {
        assert!(
            !has_series(&scrape, name),
            "{name} shows in the in-process scrape although it was listed as missing ({why}): take it off ALLOWED_MISSING"
        );
        assert!(
            used.contains_key(*name),
            "{name} is on ALLOWED_MISSING but nothing uses it any more"
        );
    }
}

#[test]
fn names_are_read_from_text_and_from_the_docs_table() {
    let text = "see `fulcrum_a_total` and fulcrum_b{x=\"1\"}; not my_fulcrum_c or FULCRUM_D\n\
                | family | labels |\n|---|---|\n| `e_total`, `f{version}` | pool |\n\n| `g` | h |\n";
    assert_eq!(
        names_in(text),
        [
            "fulcrum_a_total",
            "fulcrum_b",
            "fulcrum_e_total",
            "fulcrum_f"
        ]
    );
    let scrape = "# TYPE fulcrum_h histogram\nfulcrum_h_bucket{le=\"1\"} 0\nfulcrum_i 1\n";
    assert!(has_series(scrape, "fulcrum_h") && has_series(scrape, "fulcrum_i"));
    assert!(!has_series(scrape, "fulcrum_j"));
}

#[test]
fn the_dashboard_is_grafana_json_with_a_query_in_every_panel() {
    let text = std::fs::read_to_string(root().join("examples/grafana-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = d["panels"].as_array().expect("panels");
    let mut queries = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap_or_else(|| {
            panic!("panel {} has targets", p["title"]);
        });
        assert!(!targets.is_empty(), "panel {} has a query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(expr.contains("fulcrum_"), "{}: {expr}", p["title"]);
            queries += 1;
        }
    }
    assert!(queries >= 30, "{queries} queries");
}

/// Runs promtool with `args` in the repository root; `None` when it is not installed
/// outside CI (in CI, .ci/run installs it and its absence fails the test).
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(o) => Some(o),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "in CI: promtool is not installed (Debian package `prometheus`)"
            );
            eprintln!("SKIPPED: promtool is not installed (Debian package `prometheus`)");
            None
        }
        Err(e) => panic!("promtool: {e}"),
    }
}

#[test]
fn the_alert_rules_pass_promtool_checks_and_their_unit_tests() {
    for args in [
        ["check", "rules", "examples/alerts.yml"],
        ["test", "rules", "examples/alerts.test.yml"],
        ["check", "config", "examples/prometheus.yml"],
    ] {
        let Some(out) = promtool(&args) else { return };
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(root().join("examples/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(root().join("examples/alerts.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "alerts.test.yml expects {alert} to fire somewhere"
        );
    }
}

fn selections(p: &Proxy, pool: &str, server: &str, reason: &str) -> f64 {
    p.metric_value(
        "fulcrum_selections_total",
        &[("pool", pool), ("server", server), ("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_reasons_and_response_histograms_are_recorded_by_the_server_that_answered() {
    let o = fleet(3).await;
    let cfg = format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "rr"
bind = "127.0.0.1:0"
protocol = "http"
pool = "rr"

[[listener]]
name = "hashed"
bind = "127.0.0.1:0"
protocol = "http"
pool = "hashed"

[[listener]]
name = "sticky"
bind = "127.0.0.1:0"
protocol = "http"
pool = "sticky"

[[listener]]
name = "limited"
bind = "127.0.0.1:0"
protocol = "http"
pool = "limited"

[[pool]]
name = "rr"
servers = [ {s0}, {s1}, {{ addr = "{dead}", name = "dead" }}, {{ addr = "{b}", name = "b", backup = true }} ]
[pool.health]
kind = "none"
[pool.passive]
enabled = false

[[pool]]
name = "hashed"
algorithm = "consistent_hash"
hash_key = "header:x-user"
servers = [ {s0}, {s1} ]
[pool.health]
kind = "none"

[[pool]]
name = "sticky"
sticky = {{ cookie = "srv" }}
servers = [ {s0}, {s1} ]
[pool.health]
kind = "none"

[[pool]]
name = "limited"
servers = [ {{ addr = "{a0}", name = "o0", max_conns = 1 }}, {s1} ]
[pool.health]
kind = "none"
"#,
        s0 = format!("{{ addr = \"{}\", name = \"o0\" }}", o[0].addr),
        s1 = format!("{{ addr = \"{}\", name = \"o1\" }}", o[1].addr),
        a0 = o[0].addr,
        b = o[2].addr,
        dead = {
            let l = tokio::net::TcpListener::bind(ANY).await.unwrap();
            l.local_addr().unwrap()
        },
    );
    let p = Proxy::start(&cfg).await;
    let c = client();

    // Round robin over o0, o1 and a dead server: the dead one's requests are retried.
    assert_eq!(gets_ok(&c, &p.url("rr", "/"), 9).await, 9);
    let balanced: f64 = ["o0", "o1", "dead"]
        .iter()
        .map(|s| selections(&p, "rr", s, "balance"))
        .sum();
    assert_eq!(balanced, 9.0, "each request's first pick is the balancer's");
    let on_dead = selections(&p, "rr", "dead", "balance");
    assert!(on_dead >= 1.0, "the rotation reached the dead server");
    assert_eq!(
        selections(&p, "rr", "o0", "retry") + selections(&p, "rr", "o1", "retry"),
        on_dead,
        "every pick of the dead server was retried elsewhere, counted as a retry"
    );
    // No primary left: the backup tier serves.
    let admin = p.admin().await;
    for s in ["o0", "o1", "dead"] {
        let r = admin_call(admin, "POST", &format!("/servers/rr/{s}/disable"), None, "").await;
        assert_eq!(r.status, 403, "no token, no change");
        p.f.pool("rr")
            .unwrap()
            .servers
            .iter()
            .find(|x| &*x.settings.name == s)
            .unwrap()
            .state
            .set_admin_state(fulcrum::backend::AdminState::Disabled);
    }
    p.f.pool("rr").unwrap().publish_latest();
    assert_eq!(gets_ok(&c, &p.url("rr", "/"), 2).await, 2);
    assert_eq!(selections(&p, "rr", "b", "backup"), 2.0);

    // A hashing pool picks by hash.
    for user in ["ann", "bob", "cy", "dee"] {
        let req = http::Request::get(p.url("hashed", "/"))
            .header("x-user", user)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        assert_eq!(send(&c, req).await.unwrap().status, 200);
    }
    assert_eq!(
        selections(&p, "hashed", "o0", "hash") + selections(&p, "hashed", "o1", "hash"),
        4.0
    );

    // The sticky cookie names the server the second time.
    let first = get(&c, &p.url("sticky", "/")).await;
    let cookie = first.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let req = http::Request::get(p.url("sticky", "/"))
        .header("cookie", cookie)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let again = send(&c, req).await.unwrap();
    assert_eq!(again.origin(), first.origin());
    assert_eq!(selections(&p, "sticky", &first.origin(), "sticky"), 1.0);

    // o0 has one slot, held by a slow request: the next request picked for o0 moves to o1.
    let slow = tokio::spawn({
        let url = p.url("limited", "/sleep/1000");
        async move { get(&client(), &url).await.status }
    });
    wait_until("o0's only slot is taken", LIMIT, || async {
        o[0].inflight() == 1
    })
    .await;
    // Round robin picks o1, then o0 (full: moved to o1).
    assert_eq!(gets_ok(&c, &p.url("limited", "/"), 2).await, 2);
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(
        selections(&p, "limited", "o1", "queue"),
        1.0,
        "moved by the queue"
    );

    // Every server that answered recorded its response times; the dead one none.
    let count = |pool: &str, server: &str| {
        p.metric_value(
            "fulcrum_server_response_seconds_count",
            &[("pool", pool), ("server", server)],
        )
    };
    assert!(count("rr", "o0") >= 3.0 && count("rr", "o1") >= 3.0);
    assert_eq!(count("rr", "b"), 2.0);
    assert_eq!(count("rr", "dead"), 0.0, "never answered");
    assert_eq!(count("limited", "o0"), 1.0);
    assert!(
        p.metric_value(
            "fulcrum_server_response_seconds_sum",
            &[("pool", "limited"), ("server", "o0")]
        ) >= 1.0,
        "the slow response took its second"
    );
}

/// Sends a GET and reads whatever comes back until the peer closes.
async fn raw_get_or_close(s: &mut TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .ok()?;
    read_to_close(s, LIMIT).await
}
