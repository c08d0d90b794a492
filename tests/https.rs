//! TLS through a running fulcrum: HTTPS termination with SNI and ALPN, refused handshakes,
//! client certificates, certificate reload, upstream TLS, SNI passthrough, and a flood of
//! failed handshakes. Certificates are made at test time.

mod common;
#[path = "common/tls.rs"]
mod tls_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, ServerConfig};
use tls_support::{
    client as tls_client, client_with_cert, insecure_client, mismatched, name, Ca, Leaf,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const LIMIT: Duration = Duration::from_secs(30);

/// What one HTTPS request saw.
struct Seen {
    status: u16,
    body: String,
    alpn: Option<Vec<u8>>,
    serial_der: Vec<u8>,
}

/// GET `path` over TLS to `addr` with `cfg`, asking for `sni`; HTTP/1.1 or h2 by ALPN.
async fn https_get(
    addr: SocketAddr,
    cfg: ClientConfig,
    sni: &str,
    path: &str,
) -> Result<Seen, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(cfg))
        .connect(name(sni), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let serial_der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let io = TokioIo::new(tls);
    let req = http::Request::get(format!("https://{sni}{path}"))
        .header("host", sni)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut tx, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        tx.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut tx, c) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        let (mut parts, body) = req.into_parts();
        parts.uri = path.parse().unwrap();
        tx.send_request(http::Request::from_parts(parts, body))
            .await
            .map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Seen {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        alpn,
        serial_der,
    })
}

/// A listener table with TLS over pool "app" (servers as given), plus extra TLS keys.
fn https_config(
    servers: &str,
    certs: &[(&Path, &Path)],
    tls_extra: &str,
    pool_extra: &str,
) -> String {
    let certs: Vec<String> = certs
        .iter()
        .map(|(c, k)| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.display(),
                k.display()
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
pool = "app"
[listener.tls]
certificates = [ {} ]
{tls_extra}

[[pool]]
name = "app"
servers = [ {servers} ]
{pool_extra}
[pool.health]
kind = "none"
"#,
        certs.join(", ")
    )
}

/// The certificates of the SNI story: a.test, b.test, *.w.test, and a default.
struct Certs {
    ca: Ca,
    dir: tempfile::TempDir,
    leaves: Vec<Leaf>,
    paths: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

fn certs(names: &[&[&str]]) -> Certs {
    let ca = Ca::new("fulcrum test CA");
    let dir = tempfile::tempdir().unwrap();
    let mut leaves = Vec::new();
    let mut paths = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let leaf = ca.leaf(n);
        paths.push(leaf.write(dir.path(), &format!("leaf{i}")));
        leaves.push(leaf);
    }
    Certs {
        ca,
        dir,
        leaves,
        paths,
    }
}

impl Certs {
    fn pairs(&self) -> Vec<(&Path, &Path)> {
        self.paths
            .iter()
            .map(|(c, k)| (c.as_path(), k.as_path()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_picks_the_certificate_by_sni_and_the_protocol_by_alpn() {
    let o = fleet(1).await;
    let c = certs(&[&["default.test"], &["a.test"], &["b.test"], &["*.w.test"]]);
    let p = Proxy::start(&https_config(&servers(&[&o[0]]), &c.pairs(), "", "")).await;
    let web = p.addr("web");
    for (sni, want) in [
        ("a.test", 1),
        ("b.test", 2),
        ("x.w.test", 3),
        ("other.test", 0),
    ] {
        let seen = https_get(web, insecure_client(&["http/1.1"]), sni, "/")
            .await
            .unwrap();
        assert_eq!(seen.status, 200, "{sni}");
        assert_eq!(
            seen.serial_der,
            c.leaves[want].der.as_ref(),
            "certificate for {sni}"
        );
    }
    // An IP address is never sent as SNI: the default certificate.
    let seen = https_get(web, insecure_client(&["http/1.1"]), "127.0.0.1", "/")
        .await
        .unwrap();
    assert_eq!(
        seen.serial_der,
        c.leaves[0].der.as_ref(),
        "no SNI: the default"
    );

    let h2 = https_get(
        web,
        tls_client(&c.ca, &["h2", "http/1.1"]),
        "a.test",
        "/headers",
    )
    .await
    .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert!(h2.body.contains("x-forwarded-proto: https"), "{}", h2.body);
    let h1 = https_get(web, tls_client(&c.ca, &["http/1.1"]), "a.test", "/headers")
        .await
        .unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert!(h1.body.contains("x-forwarded-proto: https"), "{}", h1.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_and_plain_http_are_refused_and_counted() {
    let o = fleet(1).await;
    let c = certs(&[&["a.test"]]);
    let p = Proxy::start(&https_config(&servers(&[&o[0]]), &c.pairs(), "", "")).await;
    let web = p.addr("web");
    // Plain HTTP to the TLS port: closed, counted.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut s, LIMIT).await.expect("closed");
    assert!(
        !String::from_utf8_lossy(&got).contains("200"),
        "no HTTP answer"
    );
    // A ClientHello offering only TLS 1.1.
    let mut s = TcpStream::connect(web).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let got = read_to_close(&mut s, LIMIT).await.expect("closed");
    assert_eq!(
        got.first(),
        Some(&21),
        "an alert record, not a ServerHello: {got:?}"
    );
    wait_until("both refusals counted", LIMIT, || async {
        p.metric_value(
            "fulcrum_tls_handshake_errors_total",
            &[("reason", "not_tls")],
        ) == 1.0
            && p.metric_value(
                "fulcrum_tls_handshake_errors_total",
                &[("reason", "protocol_version")],
            ) == 1.0
    })
    .await;
}

/// A minimal ClientHello record that offers TLS 1.1 only (no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0x00, 0x00, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, 0x00, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_require_admits_certified_clients_and_forwards_their_subject() {
    let o = fleet(1).await;
    let c = certs(&[&["a.test"]]);
    let clients_ca = Ca::new("clients CA");
    let ca_file = clients_ca.write(c.dir.path(), "clients-ca");
    let alice = clients_ca.leaf(&["alice.clients.test"]);
    let extra = format!(
        "[listener.tls.client_auth]\nca_file = \"{}\"\nmode = \"require\"\nforward_header = \"X-Client-Cert\"",
        ca_file.display()
    );
    let p = Proxy::start(&https_config(&servers(&[&o[0]]), &c.pairs(), &extra, "")).await;
    let web = p.addr("web");
    let refused = https_get(web, tls_client(&c.ca, &["http/1.1"]), "a.test", "/").await;
    assert!(refused.is_err(), "no client certificate, no service");
    let seen = https_get(
        web,
        client_with_cert(&c.ca, &alice, &["http/1.1"]),
        "a.test",
        "/headers",
    )
    .await
    .unwrap();
    assert_eq!(seen.status, 200);
    assert!(
        seen.body
            .contains("x-client-cert: Subject=\"CN=alice.clients.test\""),
        "{}",
        seen.body
    );
    // A client's own copy of the header is dropped.
    let tcp = TcpStream::connect(web).await.unwrap();
    let cfg = client_with_cert(&c.ca, &alice, &["http/1.1"]);
    let mut tls = TlsConnector::from(Arc::new(cfg))
        .connect(name("a.test"), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /headers HTTP/1.1\r\nHost: a.test\r\nX-Client-Cert: CN=mallory\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got).await;
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains("mallory"), "{got}");
    assert!(got.contains("CN=alice.clients.test"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_new_certificates_and_a_bad_key_keeps_the_old_ones() {
    let o = fleet(1).await;
    let ca = Ca::new("fulcrum test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf(&["a.test"]);
    let (cert, key) = first.write(dir.path(), "a");
    let cfg = https_config(&servers(&[&o[0]]), &[(&cert, &key)], "", "");
    let d = Daemon::spawn(&cfg);
    let web = d.addrs["web"];
    let seen = https_get(web, tls_client(&ca, &["http/1.1"]), "a.test", "/")
        .await
        .unwrap();
    assert_eq!(seen.serial_der, first.der.as_ref());

    // New files in place, then SIGHUP.
    let second = ca.leaf(&["a.test"]);
    second.write(dir.path(), "a");
    d.signal(SIGHUP);
    d.wait_log("reloaded", LIMIT, |v| {
        v["message"] == "configuration reloaded"
    });
    let seen = https_get(web, tls_client(&ca, &["http/1.1"]), "a.test", "/")
        .await
        .unwrap();
    assert_eq!(
        seen.serial_der,
        second.der.as_ref(),
        "the new certificate serves"
    );

    // A key that does not match: the reload fails and the second certificate keeps serving.
    let third = ca.leaf(&["a.test"]);
    mismatched(&third, &first, dir.path(), "a");
    d.signal(SIGHUP);
    let failed = d.wait_log("reload failure", LIMIT, |v| {
        v["message"] == "reload failed; the previous configuration stays in force"
    });
    assert!(
        failed["error"].as_str().unwrap_or("").contains("a.key"),
        "the failure names the file: {failed}"
    );
    let seen = https_get(web, tls_client(&ca, &["http/1.1"]), "a.test", "/")
        .await
        .unwrap();
    assert_eq!(
        seen.serial_der,
        second.der.as_ref(),
        "the old certificate keeps serving"
    );
    let m = scrape(d.admin.unwrap()).await;
    assert_eq!(
        metric(&m, "fulcrum_config_last_reload_successful", &[]),
        Some(0.0)
    );
    let expiry = metric(
        &m,
        "fulcrum_tls_certificate_expiry_timestamp_seconds",
        &[("listener", "web"), ("name", "a.test")],
    )
    .expect("the expiry of the certificate in force is exported");
    assert!(expiry > fulcrum::metrics::unix_now() + 80.0 * 86_400.0);
}

/// An HTTPS origin: terminates TLS with `cfg`, answers with its name, the ALPN it agreed and
/// the SNI it saw; records each SNI.
struct TlsOrigin {
    addr: SocketAddr,
    snis: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsOrigin {
    async fn start(name: &'static str, cfg: ServerConfig) -> TlsOrigin {
        let l = TcpListener::bind(ANY).await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let snis = Arc::new(Mutex::new(Vec::new()));
        let seen = snis.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let conn = tls.get_ref().1;
                    let sni = conn.server_name().unwrap_or("").to_string();
                    let alpn =
                        String::from_utf8_lossy(conn.alpn_protocol().unwrap_or(b"")).into_owned();
                    seen.lock().unwrap().push(sni.clone());
                    let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                        let text = format!("{name} alpn={alpn} sni={sni}\n");
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from(text)),
                            ))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsOrigin { addr, snis, task }
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn origin_config(leaf: &Leaf, alpn: &[&str]) -> ServerConfig {
    let mut c = ServerConfig::builder_with_provider(fulcrum::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone()], leaf.key_der())
        .unwrap();
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_the_server_and_speaks_h2_over_alpn() {
    let ca = Ca::new("servers CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "servers-ca");
    let leaf = ca.leaf(&["app.internal"]);
    let h1 = TlsOrigin::start("tls1", origin_config(&leaf, &["http/1.1"])).await;
    let h2 = TlsOrigin::start("tls2", origin_config(&leaf, &["h2"])).await;
    let cfg = |addr: SocketAddr, extra: &str| {
        http_config(
            &format!("{{ addr = \"{addr}\", name = \"s\" }}"),
            &format!(
                "retries = 0\ntls = {{ ca_file = \"{}\", sni = \"app.internal\" }}\n{extra}",
                ca_file.display()
            ),
            "kind = \"http\"\npath = \"/\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1",
        )
    };
    let p = Proxy::start(&cfg(h1.addr, "")).await;
    wait_until("the TLS health check passes", LIMIT, || async {
        p.eligible("s")
    })
    .await;
    let r = get(&client(), &p.url("web", "/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "tls1 alpn=http/1.1 sni=app.internal\n");

    let p2 = Proxy::start(&cfg(h2.addr, "upstream_protocol = \"h2\"")).await;
    wait_until("up", LIMIT, || async { p2.eligible("s") }).await;
    let r = get(&client(), &p2.url("web", "/")).await;
    assert_eq!(
        r.text(),
        "tls2 alpn=h2 sni=app.internal\n",
        "h2 agreed over ALPN"
    );

    // A CA that did not sign the server's certificate: 502, counted as a connect failure.
    let other = Ca::new("some other CA");
    let wrong = other.write(dir.path(), "wrong-ca");
    let bad = http_config(
        &format!("{{ addr = \"{}\", name = \"s\" }}", h1.addr),
        &format!(
            "retries = 0\ntls = {{ ca_file = \"{}\", sni = \"app.internal\" }}",
            wrong.display()
        ),
        NO_HEALTH,
    );
    let p3 = Proxy::start(&bad).await;
    let r = get(&client(), &p3.url("web", "/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        p3.metric_value(
            "fulcrum_server_errors_total",
            &[("server", "s"), ("kind", "connect")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_routes_two_names_to_two_pools_untouched() {
    let ca = Ca::new("origins CA");
    let a_leaf = ca.leaf(&["a.example"]);
    let b_leaf = ca.leaf(&["*.b.example"]);
    let a = TlsOrigin::start("origin-a", origin_config(&a_leaf, &["http/1.1"])).await;
    let b = TlsOrigin::start("origin-b", origin_config(&b_leaf, &["http/1.1"])).await;
    let cfg = format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[[listener]]
name = "edge"
bind = "127.0.0.1:0"
protocol = "tcp"
route_by_sni = {{ "a.example" = "pool_a", "*.b.example" = "pool_b" }}

[[pool]]
name = "pool_a"
servers = [ {{ addr = "{}" }} ]
[pool.health]
kind = "none"

[[pool]]
name = "pool_b"
servers = [ {{ addr = "{}" }} ]
[pool.health]
kind = "none"
"#,
        a.addr, b.addr
    );
    let p = Proxy::start(&cfg).await;
    let edge = p.addr("edge");
    let seen = https_get(edge, tls_client(&ca, &["http/1.1"]), "a.example", "/")
        .await
        .unwrap();
    assert_eq!(seen.body, "origin-a alpn=http/1.1 sni=a.example\n");
    let seen = https_get(edge, tls_client(&ca, &["http/1.1"]), "x.b.example", "/")
        .await
        .unwrap();
    assert_eq!(seen.body, "origin-b alpn=http/1.1 sni=x.b.example\n");
    assert_eq!(
        *a.snis.lock().unwrap(),
        ["a.example"],
        "the origin saw the client's own hello"
    );
    // No route and no default pool: closed.
    assert!(
        https_get(edge, tls_client(&ca, &["http/1.1"]), "c.example", "/")
            .await
            .is_err()
    );
    assert_eq!(
        p.metric_value(
            "fulcrum_proxy_errors_total",
            &[("listener", "edge"), ("reason", "no_route")]
        ),
        1.0
    );
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_failed_handshakes_neither_grow_memory_nor_flood_the_log() {
    let o = fleet(1).await;
    let c = certs(&[&["a.test"]]);
    let d = Daemon::spawn(&https_config(&servers(&[&o[0]]), &c.pairs(), "", ""));
    let web = d.addrs["web"];
    let garbage = async |n: usize| {
        for i in 0..n {
            let mut s = TcpStream::connect(web).await.unwrap();
            let junk: &[u8] = if i % 2 == 0 {
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
            } else {
                &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]
            };
            let _ = s.write_all(junk).await;
            let _ = read_to_close(&mut s, LIMIT).await;
        }
    };
    garbage(200).await; // warm up allocator pools and the counters
    let before = rss_kib(d.child.id());
    let _ = d.drain_log();
    garbage(1000).await;
    let after = rss_kib(d.child.id());
    let lines = d.drain_log().len();
    eprintln!("1000 failed handshakes: RSS {before} -> {after} KiB, {lines} log lines");
    assert!(
        lines < 10,
        "failed handshakes are not logged at info: {lines} lines"
    );
    assert!(
        after < before + 8 * 1024,
        "memory does not grow with failed handshakes: {before} -> {after} KiB"
    );
    let m = scrape(d.admin.unwrap()).await;
    let failed: f64 = m
        .lines()
        .filter(|l| l.starts_with("fulcrum_tls_handshake_errors_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(failed, 1200.0, "every failed handshake counted");
    let ok = https_get(web, tls_client(&c.ca, &["http/1.1"]), "a.test", "/")
        .await
        .unwrap();
    assert_eq!(ok.status, 200, "still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_of_expiry_refuses_a_missing_key_and_status_lists_certificates() {
    let ca = Ca::new("ca");
    let dir = tempfile::tempdir().unwrap();
    let soon = ca.issue(&tls_support::LeafSpec {
        names: &["soon.test"],
        not_after_days: 5,
        ..Default::default()
    });
    let (cert, key) = soon.write(dir.path(), "soon");
    let cfg = https_config("{ addr = \"127.0.0.1:9\" }", &[(&cert, &key)], "", "");
    let path = dir.path().join("f.toml");
    std::fs::write(&path, &cfg).unwrap();
    let check = |p: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["check", "--config"])
            .arg(p)
            .output()
            .unwrap()
    };
    let out = check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: listener \"web\": certificate soon.test")
            && err.contains("expires in"),
        "{err}"
    );

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, cfg.replace("soon.key", "missing.key")).unwrap();
    let out = check(&broken);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.key"), "names the file: {err}");

    let p = Proxy::start(&cfg).await;
    let st = status_json(p.admin().await).await;
    let certs = st["tls"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{st}");
    assert_eq!(certs[0]["listener"], "web");
    assert_eq!(certs[0]["name"], "soon.test");
    assert_eq!(certs[0]["serial"], soon.serial.as_str());
    let left = certs[0]["not_after_unix"].as_f64().unwrap() - fulcrum::metrics::unix_now();
    assert!(left > 3.0 * 86_400.0 && left <= 6.0 * 86_400.0, "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_https_keepalive_connection_parks_and_serves_again_on_the_same_session() {
    let o = fleet(1).await;
    let c = certs(&[&["a.test"]]);
    let cfg = https_config(&servers(&[&o[0]]), &c.pairs(), "", "").replacen(
        "pool = \"app\"\n",
        "pool = \"app\"\n[listener.timeouts]\nkeepalive_idle = \"60s\"\n",
        1,
    );
    let p = Proxy::start(&cfg).await;
    let parked = || {
        metric(
            &p.f.metrics().render(),
            "fulcrum_listener_connections_parked",
            &[("listener", "web")],
        )
        .unwrap_or(0.0)
    };
    let tcp = TcpStream::connect(p.addr("web")).await.unwrap();
    let tls = TlsConnector::from(Arc::new(tls_client(&c.ca, &["http/1.1"])))
        .connect(name("a.test"), tcp)
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for round in 0..3 {
        let req = http::Request::get(format!("/headers?round={round}"))
            .header("host", "a.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(LIMIT, tx.send_request(req))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(resp.status(), 200, "round {round}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("x-forwarded-proto: https"),
            "round {round}"
        );
        // Between requests the connection parks: TLS session kept, hyper let go.
        wait_until("the idle TLS connection is parked", LIMIT, || async {
            parked() == 1.0
        })
        .await;
    }
    // One TLS connection served all three.
    assert_eq!(
        metric(
            &p.f.metrics().render(),
            "fulcrum_listener_connections_total",
            &[("listener", "web")],
        ),
        Some(1.0)
    );
    drop(tx);
    let _ = tokio::time::timeout(LIMIT, conn).await;
    wait_until("the closed connection is gone", LIMIT, || async {
        parked() == 0.0
    })
    .await;
}

/// Over TLS hyper itself looks for a client that leaves while its request is at a server
/// (the watchdog's peek of the TCP socket cannot tell a TLS close from data): a request
/// the server would answer in ten minutes ends there once its client is gone, counted as
/// the client's abort, with no server blamed and its load released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_an_https_request_in_flight_is_noticed() {
    let o = fleet(1).await;
    let c = certs(&[&["a.test"]]);
    let p = Proxy::start(&https_config(&servers(&[&o[0]]), &c.pairs(), "", "")).await;
    let tcp = TcpStream::connect(p.addr("web")).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(tls_client(&c.ca, &["http/1.1"])))
        .connect(name("a.test"), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /sleep/600000 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    wait_until("the request reached the origin", LIMIT, || async {
        o[0].inflight() == 1
    })
    .await;
    drop(tls);
    wait_until("the abort counted", LIMIT, || async {
        p.metric_value("fulcrum_client_aborts_total", &[("phase", "response")]) == 1.0
    })
    .await;
    wait_until("the request ended at the origin", LIMIT, || async {
        o[0].inflight() == 0
    })
    .await;
    assert_eq!(server_errors(&p), 0.0, "no server blamed");
    assert_eq!(
        p.server("o0")
            .load
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "load released"
    );
}
