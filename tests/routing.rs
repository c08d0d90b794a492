//! L7 routing through a running fulcrum, with real origins and h1 and h2 clients: routes by
//! host, path, method and header, the default pool and 404, rewrites seen by the origin and
//! the client, redirects and direct answers, custom error pages, weighted and sticky splits
//! with admin overrides that survive a reload, request ids, and a reload that reorders
//! routes under traffic.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fulcrum::demo::Origin;
use http_body_util::Full;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(20);

/// A config with listener "web" (default pool `default`, unless `default` is empty) with
/// `listener_extra` lines and `routes`, over pools `default` (o0), `api` (o1), `next` (o2).
fn routed(o: &[Origin], default: &str, listener_extra: &str, routes: &str) -> String {
    let pool_line = if default.is_empty() {
        String::new()
    } else {
        format!("pool = \"{default}\"")
    };
    let pools: String = ["default", "api", "next"]
        .iter()
        .zip(o)
        .map(|(name, origin)| {
            format!(
                "[[pool]]\nname = \"{name}\"\nservers = [ {} ]\n[pool.health]\n{NO_HEALTH}\n\n",
                servers(&[origin])
            )
        })
        .collect();
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"
allow_unauthenticated_loopback = true

[[listener]]
name = "web"
bind = "127.0.0.1:0"
protocol = "http"
{pool_line}
{listener_extra}

{routes}

{pools}
"#
    )
}

/// One request on a fresh connection to `addr` naming `authority` the way each protocol
/// does: HTTP/1.1 in the Host header, h2 in `:authority`.
async fn at(
    h2: bool,
    addr: SocketAddr,
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let mut b = http::Request::builder().method(method);
    b = if h2 {
        b.uri(format!("http://{authority}{path}"))
    } else {
        b.uri(path).header("host", authority)
    };
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).unwrap();
    let r = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        tx.send_request(req).await.unwrap()
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        tx.send_request(req).await.unwrap()
    };
    let (parts, body) = r.into_parts();
    use http_body_util::BodyExt;
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A request with a method, a Host header and extra headers, through client `c`.
async fn req(
    c: &HttpClient,
    method: &str,
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut b = http::Request::builder().method(method).uri(url);
    if !host.is_empty() {
        b = b.header("host", host);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(Bytes::new())).unwrap())
        .await
        .expect("request completes")
}

/// (method, path, host, headers, the origin that must answer)
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

const MATCH_ROUTES: &str = r#"
[[listener.route]]
name = "api-host"
host = ["api.test"]
pool = "api"

[[listener.route]]
name = "wild"
host = ["*.wild.test"]
pool = "next"

[[listener.route]]
name = "exact"
path = "/exact"
pool = "api"

[[listener.route]]
name = "images"
path_prefix = "/static/img/"
pool = "next"

[[listener.route]]
name = "static"
path_prefix = "/static/"
pool = "api"

[[listener.route]]
name = "user"
path_regex = "^/u/[0-9]+$"
pool = "next"

[[listener.route]]
name = "form-post"
path_prefix = "/form"
methods = ["POST"]
pool = "api"

[[listener.route]]
name = "canary"
headers = { "x-canary" = "1" }
pool = "next"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_host_path_method_and_header_the_same_for_h1_and_h2() {
    let o = fleet(3).await;
    let p = Proxy::start(&routed(&o, "default", "", MATCH_ROUTES)).await;
    // (method, path, host, headers) -> origin
    let cases: &[Case] = &[
        ("GET", "/anything", "api.test", &[], "o1"),
        ("GET", "/anything", "API.TEST:8080", &[], "o1"),
        ("GET", "/anything", "api.test.", &[], "o1"),
        ("GET", "/x", "a.wild.test", &[], "o2"),
        ("GET", "/x", "deep.a.wild.test", &[], "o2"),
        ("GET", "/x", "wild.test", &[], "o0"),
        ("GET", "/exact", "", &[], "o1"),
        ("GET", "/exact/more", "", &[], "o0"),
        ("GET", "/static/img/a.png", "", &[], "o2"),
        ("GET", "/static/app.js", "", &[], "o1"),
        ("GET", "/u/42", "", &[], "o2"),
        ("GET", "/u/42x", "", &[], "o0"),
        ("POST", "/form", "", &[], "o1"),
        ("GET", "/form", "", &[], "o0"),
        ("GET", "/plain", "", &[("x-canary", "1")], "o2"),
        ("GET", "/plain", "", &[("x-canary", "2")], "o0"),
        ("GET", "/plain", "", &[], "o0"),
    ];
    let web = p.addr("web");
    for (label, h2) in [("h1", false), ("h2", true)] {
        for (method, path, host, headers, want) in cases {
            let authority = if host.is_empty() { "t" } else { host };
            let r = at(h2, web, method, authority, path, headers).await;
            assert_eq!(
                r.status,
                200,
                "{label} {method} {path} host={host}: {}",
                r.text()
            );
            assert_eq!(
                r.origin(),
                *want,
                "{label} {method} {path} host={host} headers={headers:?}"
            );
        }
    }
    // Each route counts what it served; the default pool's share is `(default)`.
    let scrape = scrape(p.admin().await).await;
    let served = |route: &str| {
        metric(
            &scrape,
            "fulcrum_route_requests_total",
            &[("listener", "web"), ("route", route)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(served("api-host"), 6.0, "{scrape}");
    assert_eq!(served("user"), 2.0);
    // /status lists the routes in order.
    let st = status_json(p.admin().await).await;
    let names: Vec<&str> = st["listeners"][0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "api-host",
            "wild",
            "exact",
            "images",
            "static",
            "user",
            "form-post",
            "canary"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_pool_an_unmatched_request_gets_404() {
    let o = fleet(3).await;
    let p = Proxy::start(&routed(&o, "", "", MATCH_ROUTES)).await;
    let c = client();
    let r = get(&c, &p.url("web", "/nowhere")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(o[0].hits() + o[1].hits() + o[2].hits(), 0);
    let r = get(&c, &p.url("web", "/exact")).await;
    assert_eq!((r.status, r.origin().as_str()), (200, "o1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_are_seen_by_the_origin_and_the_client() {
    let o = fleet(3).await;
    let routes = r#"
[[listener.route]]
name = "v1"
path_prefix = "/v1/"
pool = "api"
strip_prefix = "/v1"
request_headers = { set = { "x-env" = "prod" }, remove = ["x-debug"] }
response_headers = { set = { "strict-transport-security" = "max-age=31536000" }, remove = ["x-path"] }
"#;
    let p = Proxy::start(&routed(&o, "default", "", routes)).await;
    for (label, c) in [("h1", client()), ("h2", h2_client())] {
        let r = req(
            &c,
            "GET",
            &p.url("web", "/v1/headers?q=1"),
            "",
            &[("x-debug", "1"), ("x-env", "dev"), ("x-keep", "yes")],
        )
        .await;
        assert_eq!(r.origin(), "o1", "{label}");
        let seen = r.text();
        // The origin saw the stripped path (its body lists the headers it received).
        assert!(seen.contains("x-env: prod\n"), "{label}: {seen}");
        assert!(!seen.contains("x-env: dev"), "{label}: {seen}");
        assert!(!seen.contains("x-debug"), "{label}: {seen}");
        assert!(seen.contains("x-keep: yes\n"), "{label}: {seen}");
        assert_eq!(
            r.headers["strict-transport-security"], "max-age=31536000",
            "{label}"
        );
        assert!(!r.headers.contains_key("x-path"), "{label}: removed");
    }
    // Path rewrite: the origin's `x-path` is kept on the default pool, so ask there what a
    // stripped path looks like through a route without response edits.
    let routes = r#"
[[listener.route]]
name = "v1"
path_prefix = "/v1/"
pool = "api"
strip_prefix = "/v1"
"#;
    p.reload_with(&routed(&o, "default", "", routes))
        .await
        .unwrap();
    let r = get(&client(), &p.url("web", "/v1/a/b?x=1")).await;
    assert_eq!(
        (r.origin().as_str(), r.headers["x-path"].to_str().unwrap()),
        ("o1", "/a/b?x=1")
    );
    let r = get(&client(), &p.url("web", "/v2/a")).await;
    assert_eq!(
        (r.origin().as_str(), r.headers["x-path"].to_str().unwrap()),
        ("o0", "/v2/a")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_keep_path_and_query_respond_answers_and_error_pages_replace_503() {
    let o = fleet(3).await;
    let (_held, dead_addr) = refusing_port();
    let routes = r#"
[[listener.route]]
name = "to-https"
host = ["plain.test"]
redirect = { scheme = "https", status = 308 }

[[listener.route]]
name = "moved"
path_prefix = "/old-docs/"
redirect = { prefix = "/docs/", status = 301 }

[[listener.route]]
name = "maintenance"
path_prefix = "/old/"
respond = { status = 410, body = "gone\n", content_type = "text/plain" }

[[listener.route]]
name = "broken"
path_prefix = "/broken/"
pool = "down"
"#;
    let mut cfg = routed(
        &o,
        "default",
        "error_pages = { 503 = { body = \"we are down, sorry\\n\" } }",
        routes,
    );
    cfg.push_str(&format!(
        "[[pool]]\nname = \"down\"\nservers = [ {{ addr = \"{dead_addr}\" }} ]\n[pool.health]\n{FAST_TCP_HEALTH}\n"
    ));
    let p = Proxy::start(&cfg).await;
    for (label, c) in [("h1", client()), ("h2", h2_client())] {
        let r = at(
            label == "h2",
            p.addr("web"),
            "GET",
            "plain.test",
            "/a/b?x=1&y=2",
            &[],
        )
        .await;
        assert_eq!(r.status, 308, "{label}");
        assert_eq!(
            r.headers["location"], "https://plain.test/a/b?x=1&y=2",
            "{label}"
        );
        let r = req(&c, "GET", &p.url("web", "/old-docs/intro?v=2"), "", &[]).await;
        assert_eq!(r.status, 301, "{label}");
        let loc = r.headers["location"].to_str().unwrap();
        assert!(loc.ends_with("/docs/intro?v=2"), "{label}: {loc}");
        let r = req(&c, "GET", &p.url("web", "/old/page"), "", &[]).await;
        assert_eq!((r.status, r.text().as_str()), (410, "gone\n"), "{label}");
        assert_eq!(r.headers["content-type"], "text/plain", "{label}");
    }
    assert_eq!(
        o[0].hits() + o[1].hits() + o[2].hits(),
        0,
        "no pool touched"
    );
    // Once the only server of `down` is found down, its requests get the custom 503 body.
    let c = client();
    let url = p.url("web", "/broken/x");
    wait_until("custom 503", LIMIT, || {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = get(&c, &url).await;
            r.status == 503 && r.text() == "we are down, sorry\n"
        }
    })
    .await;
}

/// Share of `n` GETs that reached origin `name`, in percent.
async fn share(c: &HttpClient, url: &str, n: usize, name: &str) -> f64 {
    let counts = spread(c, url, n).await;
    *counts.get(name).unwrap_or(&0) as f64 * 100.0 / n as f64
}

const SPLIT: &str = r#"
[[listener.route]]
name = "canary"
path_prefix = "/"
split = [ { pool = "api", weight = 95 }, { pool = "next", weight = 5 } ]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_95_5_split_lands_within_2_points_and_admin_overrides_survive_a_reload() {
    let o = fleet(3).await;
    let cfg = routed(&o, "default", "", SPLIT);
    let p = Proxy::start(&cfg).await;
    let c = client();
    let url = p.url("web", "/");
    let next = share(&c, &url, 2000, "o2").await;
    assert!((3.0..=7.0).contains(&next), "5% side got {next}%");
    assert_eq!(o[0].hits(), 0);

    // Operator override: all to the canary, via the admin API; it survives a reload.
    let admin = p.admin().await;
    let r = admin_call(
        admin,
        "POST",
        "/routes/web/canary/split?weights=0,100",
        None,
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(share(&c, &url, 200, "o2").await, 100.0);
    p.reload_with(&cfg).await.unwrap();
    assert_eq!(
        share(&c, &url, 200, "o2").await,
        100.0,
        "kept by the reload"
    );
    let st = status_json(admin).await;
    let split = &st["listeners"][0]["routes"][0]["split"];
    assert_eq!(split["overridden"], true, "{split}");
    assert_eq!(split["weights"], serde_json::json!([0, 100]));
    assert_eq!(split["configured_weights"], serde_json::json!([95, 5]));
    // Bad input is refused with a reason; an unknown route is 404.
    let r = admin_call(admin, "POST", "/routes/web/canary/split", None, "1,2,3").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("2 pools"), "{}", r.text());
    let r = admin_call(admin, "POST", "/routes/web/nope/split", None, "1,1").await;
    assert_eq!(r.status, 404);
    // Reset: back to 95/5.
    let r = admin_call(admin, "POST", "/routes/web/canary/reset", None, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let next = share(&c, &url, 400, "o2").await;
    assert!(next < 20.0, "after reset the canary got {next}%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_admin_calls_need_the_token() {
    let o = fleet(3).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let cfg = routed(&o, "default", "", SPLIT).replace(
        "allow_unauthenticated_loopback = true",
        &format!("token_file = \"{}\"", token.display()),
    );
    let p = Proxy::start(&cfg).await;
    let admin = p.admin().await;
    let r = admin_call(admin, "POST", "/routes/web/canary/split", None, "50,50").await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = admin_call(
        admin,
        "POST",
        "/routes/web/canary/split",
        Some("s3cret"),
        "50,50",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_split_keeps_each_client_on_one_side() {
    let o = fleet(3).await;
    let routes = SPLIT
        .replace("weight = 95", "weight = 50")
        .replace("weight = 5", "weight = 50");
    let p = Proxy::start(&routed(
        &o,
        "default",
        "split_key = \"header:x-user\"",
        &routes,
    ))
    .await;
    let c = client();
    let url = p.url("web", "/");
    let mut sides = std::collections::HashSet::new();
    for user in 0..40 {
        let u = format!("user-{user}");
        let first = req(&c, "GET", &url, "", &[("x-user", &u)]).await.origin();
        for _ in 0..10 {
            let again = req(&c, "GET", &url, "", &[("x-user", &u)]).await.origin();
            assert_eq!(again, first, "{u} moved");
        }
        sides.insert(first);
    }
    assert_eq!(sides.len(), 2, "40 users all on one side: {sides:?}");
}

fn header_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_generated_echoed_logged_and_kept_from_trusted_senders() {
    let o = fleet(3).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let cfg = routed(&o, "default", "trusted_proxies = [\"127.0.0.2/32\"]", "").replace(
        "[[listener]]",
        &format!(
            "[access_log]\nenabled = true\npath = \"{}\"\nformat = \"json\"\n\n[[listener]]",
            log.display()
        ),
    );
    let p = Proxy::start(&cfg).await;
    let web = p.addr("web");
    // None sent: one is made, the origin gets it and the client sees it.
    let (head, body) = request_from("127.0.0.1", web, "").await;
    let id = header_of(&head, "x-request-id")
        .expect("echoed")
        .to_string();
    assert!(!id.is_empty());
    assert_eq!(
        header_of(&body, "x-request-id"),
        Some(id.as_str()),
        "{body}"
    );
    // From an untrusted client, its own id is replaced, on the way in and out; the server
    // sees one id, the one the client is told.
    let (head, body) = request_from("127.0.0.1", web, "X-Request-ID: spoofed-1\r\n").await;
    let made = header_of(&head, "x-request-id").expect("echoed");
    assert_ne!(made, "spoofed-1");
    assert_eq!(header_of(&body, "x-request-id"), Some(made), "{body}");
    assert_eq!(body.matches("x-request-id:").count(), 1, "{body}");
    assert!(!body.contains("spoofed-1"), "{body}");
    // From a trusted proxy it is passed through.
    let (head, body) = request_from("127.0.0.2", web, "X-Request-ID: edge-77\r\n").await;
    assert_eq!(header_of(&head, "x-request-id"), Some("edge-77"));
    assert_eq!(header_of(&body, "x-request-id"), Some("edge-77"));
    // Over h2 too, on one connection: each response carries its own id (sent as an HPACK
    // literal that is never indexed), the one its server saw.
    let c = h2_client();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = get(&c, &p.url("web", "/headers")).await;
        assert_eq!(r.status, 200);
        let id = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(header_of(&r.text(), "x-request-id"), Some(id.as_str()));
        assert!(!seen.contains(&id), "ids repeat: {seen:?}");
        seen.push(id);
    }
    // Both are in the access log.
    let log = log.clone();
    let want = id.clone();
    wait_until("ids logged", LIMIT, move || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let ok = text.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["request_id"] == want.as_str()
        }) && text.contains("\"edge-77\"");
        async move { ok }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_reorders_routes_takes_effect_without_a_failed_request() {
    let o = fleet(3).await;
    let a_first = r#"
[[listener.route]]
name = "a"
path_prefix = "/a/"
pool = "api"

[[listener.route]]
name = "rest"
path_prefix = "/"
pool = "next"
"#;
    let rest_first = r#"
[[listener.route]]
name = "rest"
path_prefix = "/"
pool = "next"

[[listener.route]]
name = "a"
path_prefix = "/a/"
pool = "api"
"#;
    let configs = [
        routed(&o, "default", "", a_first),
        routed(&o, "default", "", rest_first),
    ];
    let p = Proxy::start(&configs[0]).await;
    let url = p.url("web", "/a/x");
    assert_eq!(get(&client(), &url).await.origin(), "o1");
    // Traffic from two clients (h1 and h2) while the order flips ten times.
    let load = |c: HttpClient| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..400 {
                match send(
                    &c,
                    http::Request::get(&url)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                {
                    Ok(r) if r.status == 200 => {}
                    _ => failed += 1,
                }
            }
            failed
        })
    };
    let (l1, l2) = (load(client()), load(h2_client()));
    for i in 1..=10 {
        p.reload_with(&configs[i % 2]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((l1.await.unwrap(), l2.await.unwrap()), (0, 0));
    // Ended on `a_first`: ten flips from it; flip once more to see the new order served.
    p.reload_with(&configs[1]).await.unwrap();
    assert_eq!(get(&client(), &url).await.origin(), "o2");
}
