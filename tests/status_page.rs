//! The status page in a real browser: headless Chromium (Debian's `chromium`), driven over
//! the W3C WebDriver protocol by `chromedriver` (Debian's `chromium-driver`), against
//! fulcrum running in this process with three origins. The page must show the three
//! servers, drain one with the token typed into the page, and log no console error.
//!
//! Without Chromium the test is skipped on a developer's machine and fails in CI
//! (CI=true), where .ci/run installs it. `FULCRUM_SCREENSHOT=docs/status-page.png` saves
//! the page as the README shows it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Deadline of each wait; generous, as Chromium starts slowly on a busy machine.
const LIMIT: Duration = Duration::from_secs(60);
/// Longest a single WebDriver command may take (a new session starts Chromium).
const COMMAND: Duration = Duration::from_secs(120);
const TOKEN: &str = "page-test-token";
/// What the page's script stores the token under.
const TOKEN_KEY: &str = "fulcrum.adminToken";

/// Chromium's flags for a closed network, as root, with a fresh profile.
const CHROMIUM_ARGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
];

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Chromium and chromedriver, or `None` to skip (only outside CI, and only when Chromium
/// itself is missing).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let Some(chromium) = on_path("chromium") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "in CI: chromium is not installed (Debian packages `chromium chromium-driver`; .ci/run installs them)"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (Debian packages `chromium chromium-driver`)"
        );
        return None;
    };
    let driver = on_path("chromedriver")
        .expect("chromium is installed but chromedriver is not: apt-get install chromium-driver");
    Some((chromium, driver))
}

/// A chromedriver process with one browser session; both end when this is dropped.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(chromium: &Path, chromedriver: &Path) -> Browser {
        use std::os::unix::process::CommandExt;
        let mut driver = Command::new(chromedriver)
            .arg("--port=0")
            // Its own process group, with the Chromium it starts: dropping the Browser ends
            // them all, even when no session could be made to close Chromium politely.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let out = driver.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + LIMIT;
        let port = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    let _ = driver.kill();
                    panic!("chromedriver did not say which port it listens on")
                });
            // "ChromeDriver was started successfully on port 41234."
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().to_string();
            }
        };
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut b = Browser {
            driver,
            addr: format!("127.0.0.1:{port}"),
            session: String::new(),
            _profile: profile,
        };
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": { "binary": chromium, "args": args },
        }}});
        let v = b.call("POST", "/session", &caps);
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// One WebDriver command; panics with the driver's error.
    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let (status, text) = http(&self.addr, method, path, &body)
            .unwrap_or_else(|e| panic!("chromedriver {method} {path}: {e}"));
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(status, 200, "chromedriver {method} {path}: {text}");
        v["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), &body)
    }

    fn goto(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url }));
    }

    /// The elements matching a CSS selector.
    fn all(&self, css: &str) -> Vec<String> {
        let v = self.session(
            "POST",
            "/elements",
            json!({ "using": "css selector", "value": css }),
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e.as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
                    .expect("an element reference")
                    .to_string()
            })
            .collect()
    }

    /// The one element matching a CSS selector.
    fn one(&self, css: &str) -> String {
        let found = self.all(css);
        assert_eq!(found.len(), 1, "exactly one element matches {css}");
        found[0].clone()
    }

    fn text(&self, css: &str) -> String {
        let e = self.one(css);
        self.session("GET", &format!("/element/{e}/text"), Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn click(&self, css: &str) {
        let e = self.one(css);
        self.session("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.one(css);
        self.session(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    fn script(&self, js: &str) -> Value {
        self.session("POST", "/execute/sync", json!({ "script": js, "args": [] }))
    }

    /// Polls until `cond` holds, or panics with `what` after `LIMIT`.
    fn wait(&self, what: &str, cond: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self) -> Vec<u8> {
        let b64 = self.session("GET", "/screenshot", Value::Null);
        base64_decode(b64.as_str().expect("base64 PNG"))
    }

    /// Console entries at level SEVERE: script errors, CSP refusals, failed loads.
    fn console_errors(&self) -> Vec<Value> {
        let v = self.session("POST", "/se/log", json!({ "type": "browser" }));
        v.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .cloned()
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ends Chromium; then chromedriver can go.
            let path = format!("/session/{}", self.session);
            let _ = http(&self.addr, "DELETE", &path, b"");
        }
        // SAFETY: kill(2) on the process group this test made (chromedriver's PID is its id).
        unsafe { kill(-(self.driver.id() as i32), SIGKILL) };
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const SIGKILL: i32 = 9;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// One blocking HTTP/1.1 exchange with chromedriver, which keeps connections open: the
/// body is read by its Content-Length, not to the end of the stream.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(COMMAND))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)?;
    Ok((status, String::from_utf8_lossy(&buf).into_owned()))
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let n = data
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, c)| acc | (val(*c) << (18 - 6 * i)));
        out.extend(n.to_be_bytes()[1..data.len()].iter());
    }
    out
}

/// One http listener over pool "app" with these origins, and an admin token file.
fn config(dir: &Path, o: &[fulcrum::demo::Origin]) -> String {
    let token = dir.join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let base = http_config(&servers(&[&o[0], &o[1], &o[2]]), "", FAST_TCP_HEALTH);
    base.replace(
        "allow_unauthenticated_loopback = true",
        &format!("token_file = \"{}\"", token.display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_three_servers_and_drains_one_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let o = fleet(3).await;
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(&config(dir.path(), &o)).await;
    let admin = p.admin().await;
    wait_until("all three servers are up", LIMIT, || async {
        ["o0", "o1", "o2"].iter().all(|s| p.eligible(s))
    })
    .await;
    assert_eq!(gets_ok(&client(), &p.url("web", "/"), 30).await, 30);
    for name in ["o0", "o1", "o2"] {
        assert_eq!(
            p.server(name).metrics.response.get_sample_count(),
            10,
            "{name}'s response times are recorded by the proxy"
        );
    }

    // Without JavaScript: the server's own snapshot, under a policy that allows only itself.
    let page = admin_call(admin, "GET", "/", None, "").await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let html = page.text();
    assert_eq!(html.matches("<tr data-server=").count(), 3, "{html}");
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style"
    );
    for (path, kind) in [
        ("/ui/status.js", "text/javascript"),
        ("/ui/status.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ] {
        let r = admin_call(admin, "GET", path, None, "").await;
        assert_eq!(r.status, 200, "{path}");
        let ct = r.headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with(kind), "{path}: {ct}");
    }

    // Steady, paced traffic while the browser watches, so the page has rates to show;
    // bounded in count, and stopped when the browser is done.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (stop, url) = (stop.clone(), p.url("web", "/"));
        tokio::spawn(async move {
            let c = client();
            for _ in 0..12_000 {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = get(&c, &url) => {}
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let url = format!("http://{admin}/");
    let shot = tokio::task::block_in_place(|| {
        let b = Browser::start(&chromium, &chromedriver);
        b.call(
            "POST",
            &format!("/session/{}/window/rect", b.session),
            &json!({ "width": 1440, "height": 1000 }),
        );
        b.goto(&url);
        b.wait("the script has taken over", |b| {
            !b.all("html[data-live='true']").is_empty()
        });
        assert_eq!(
            b.all("#pools tbody tr[data-server]").len(),
            3,
            "three servers"
        );
        let p50 = b.text("tr[data-server='o0'] td[data-col='p50'] .main");
        assert!(
            p50.ends_with("ms") || p50.ends_with("µs"),
            "p50 of o0: {p50:?}"
        );

        // Accessible: every control has a name, every column header its scope.
        let unnamed = b.script(
            "return [...document.querySelectorAll('input')].filter(i => i.labels.length === 0).length \
             + [...document.querySelectorAll('button')].filter(x => !(x.getAttribute('aria-label') || x.textContent).trim()).length \
             + [...document.querySelectorAll('thead th')].filter(th => th.scope !== 'col').length",
        );
        assert_eq!(unnamed, json!(0), "unlabelled controls or unscoped headers");
        // A refresh updates rows in place: a focused control keeps the focus.
        b.script("document.querySelector(\"tr[data-server='o2'] button[data-action='disable']\").focus()");
        let before = b.text("#conn");
        b.wait("a refresh", |b| b.text("#conn") != before);
        assert_eq!(
            b.script("return document.activeElement.getAttribute('aria-label')"),
            json!("Disable o2 in pool app"),
            "focus survives a refresh"
        );

        b.type_into("#token", TOKEN);
        b.type_into("#weight-app-o2", "3");
        b.click("tr[data-server='o2'] form[data-action='weight'] button");
        b.wait("the next refresh shows o2's new weight", |b| {
            b.text("tr[data-server='o2'] td[data-col='weight'] .main") == "3"
        });
        b.click("tr[data-server='o1'] button[data-action='drain']");
        b.wait("the page confirms the drain", |b| {
            b.text("#notice").contains("done")
        });
        b.wait("the next refresh shows o1 draining", |b| {
            b.text("tr[data-server='o1'] td[data-col='state'] .main") == "draining"
        });
        b.wait(
            "the rates show traffic on o0 and none on the drained o1",
            |b| {
                let rate = |s: &str| {
                    b.text(&format!(
                        "tr[data-server='{s}'] td[data-col='requests'] .main"
                    ))
                };
                let (o0, o1) = (rate("o0"), rate("o1"));
                o0.ends_with("/s") && o0 != "0.00/s" && o1 == "0.00/s"
            },
        );
        assert_eq!(
            b.script(&format!("return sessionStorage.getItem('{TOKEN_KEY}')")),
            json!(TOKEN),
            "the token is kept in the tab's session storage"
        );
        assert_eq!(
            b.script("return localStorage.length"),
            json!(0),
            "and nowhere that outlives the tab"
        );
        let shot = b.screenshot();
        let errors = b.console_errors();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
        shot
    });
    stop.cancel();
    load.await.unwrap();
    assert!(
        shot.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is a PNG"
    );
    if let Some(path) = std::env::var_os("FULCRUM_SCREENSHOT") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::write(&path, &shot).unwrap();
        eprintln!("screenshot written to {}", path.display());
    }

    let st = status_json(admin).await;
    let o1 = status_server(&st, "app", "o1").unwrap();
    assert_eq!(
        o1["admin_state"], "draining",
        "/status after the page's drain"
    );
    assert_eq!(o1["overrides"]["admin_state"], "draining");
    for other in ["o0", "o2"] {
        assert_eq!(
            status_server(&st, "app", other).unwrap()["admin_state"],
            "enabled"
        );
    }
    assert_eq!(
        status_server(&st, "app", "o2").unwrap()["weight_override"],
        3,
        "/status after the page's weight change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_the_generation_the_last_reload_and_latency_quantiles() {
    let o = fleet(2).await;
    let good = http_config(&servers(&[&o[0], &o[1]]), "", NO_HEALTH);
    let p = Proxy::start(&good).await;
    let admin = p.admin().await;
    let st = status_json(admin).await;
    assert_eq!(st["generation"], 1);
    assert_eq!(st["reload"]["last"], Value::Null, "no reload yet");

    // No traffic here: only these samples are in o0's histogram.
    for _ in 0..10 {
        p.server("o0").metrics.response.observe(0.004);
    }
    let st = status_json(admin).await;
    let lat = &status_server(&st, "app", "o0").unwrap()["latency"];
    assert_eq!(lat["count"], 10);
    // All ten fall in the (2.5 ms, 5 ms] bucket: the median interpolates to its middle.
    let p50 = lat["p50_seconds"].as_f64().unwrap();
    assert!((p50 - 0.00375).abs() < 1e-9, "p50 {p50}");
    let p99 = lat["p99_seconds"].as_f64().unwrap();
    assert!(p99 > 0.0025 && p99 <= 0.005, "p99 {p99}");
    let none = &status_server(&st, "app", "o1").unwrap()["latency"];
    assert_eq!(none["p50_seconds"], Value::Null, "no samples, no quantile");
    let page = admin_call(admin, "GET", "/", None, "").await.text();
    assert!(page.contains("3.75 ms"), "the page shows o0's median");

    let broken = good.replace("protocol = \"http\"", "protocol = \"htp\"");
    assert!(p.reload_with(&broken).await.is_err());
    let st = status_json(admin).await;
    assert_eq!(st["generation"], 1, "a failed reload keeps the generation");
    assert_eq!(st["reload"]["last"]["result"], "failure");
    assert_eq!(st["reload"]["failures"], 1);
    let page = admin_call(admin, "GET", "/", None, "").await.text();
    assert!(
        page.contains("<dd id=\"s-reload\">failure"),
        "the page says so"
    );

    p.reload_with(&good).await.expect("the good config reloads");
    let st = status_json(admin).await;
    assert_eq!(st["generation"], 2);
    assert_eq!(st["reload"]["last"]["result"], "success");
    assert_eq!(st["reload"]["successes"], 1);
}
