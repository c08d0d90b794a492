//! `fulcrum check`: valid configs pass with a summary; each broken one exits 2 with
//! `PATH:LINE:COL: message` pointing at the offending line.

#[path = "support/check.rs"]
mod check_cmd;

use std::process::Command;

use check_cmd::check;

const BASE: &str = r#"[[listener]]
name = "web"
bind = "127.0.0.1:8080"
protocol = "http"
pool = "app"

[[pool]]
name = "app"
servers = [
  { addr = "127.0.0.1:9001", weight = 1 },
  { addr = "127.0.0.1:9002", weight = 3 },
]
"#;

#[test]
fn valid_config_passes_with_a_summary() {
    let (code, out, err) = check(BASE);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listeners: 1"), "{out}");
    assert!(
        out.contains("  web http on 127.0.0.1:8080 -> pool app\n"),
        "protocols in the config's own words: {out}"
    );
    assert!(out.contains("app (round_robin): 2 servers"), "{out}");
    assert!(
        out.contains("\n    127.0.0.1:9001 weight 1\n"),
        "an unnamed server is shown by its address once: {out}"
    );
}

#[test]
fn summary_names_a_named_server_before_its_address() {
    let text = format!(
        "{}\n[[listener]]\nname = \"relay\"\nbind = \"127.0.0.1:8081\"\nprotocol = \"tcp\"\npool = \"app\"\n",
        BASE.replace(
            "{ addr = \"127.0.0.1:9002\", weight = 3 }",
            "{ addr = \"127.0.0.1:9002\", weight = 3, name = \"web2\", backup = true }"
        )
    );
    let (code, out, err) = check(&text);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("  relay tcp on 127.0.0.1:8081 -> pool app\n"),
        "{out}"
    );
    assert!(
        out.contains("\n    web2 127.0.0.1:9002 weight 3 backup\n"),
        "{out}"
    );
    assert!(!out.contains("Http") && !out.contains("Tcp"), "{out}");
}

#[test]
fn shipped_example_configs_are_valid() {
    for f in ["config/fulcrum.toml", "config/minimal.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_bench_harness_config_is_accepted_as_is() {
    let text = r#"
[[listener]]
name = "bench_http"
bind = "127.0.0.1:18221"
protocol = "http"          # L7: HTTP/1.1, keep-alive both sides
pool = "origins"

[[listener]]
name = "bench_tcp"
bind = "127.0.0.1:18222"
protocol = "tcp"
pool = "origins"

[[pool]]
name = "origins"
algorithm = "round_robin"
servers = [
  { addr = "127.0.0.1:18101", weight = 1 },
  { addr = "127.0.0.1:18102", weight = 1 },
  { addr = "127.0.0.1:18103", weight = 1 },
]

[pool.health]
kind = "none"              # the anchors run no health checks either
"#;
    let (code, _, err) = check(text);
    assert_eq!(code, 0, "{err}");
}

/// (name, config, expected line, a fragment of the message)
fn broken() -> Vec<(&'static str, String, usize, &'static str)> {
    vec![
        ("unknown key", BASE.replace("protocol = \"http\"", "protocol = \"http\"\ntimeout = 3"), 5, "unknown field `timeout`"),
        ("wrong type", BASE.replace("weight = 3", "weight = \"3\""), 11, "invalid type"),
        ("duplicate listener", format!("{BASE}\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8081\"\nprotocol = \"http\"\npool = \"app\"\n"), 15, "duplicate listener name \"web\" (first defined at line 2)"),
        ("duplicate pool", format!("{BASE}\n[[pool]]\nname = \"app\"\nservers = [ {{ addr = \"127.0.0.1:1\" }} ]\n"), 15, "duplicate pool name \"app\""),
        ("duplicate bind", format!("{BASE}\n[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"tcp\"\npool = \"app\"\n"), 16, "bind address 127.0.0.1:8080 is already used by listener \"web\""),
        ("missing pool", BASE.replace("pool = \"app\"", "pool = \"nope\""), 5, "names pool \"nope\", which is not defined"),
        ("bad address", BASE.replace("127.0.0.1:9002", "127.0.0.1:99999"), 11, "invalid address \"127.0.0.1:99999\""),
        ("bad duration", format!("{BASE}\n[pool.health]\ninterval = \"2 parsecs\"\n"), 15, "invalid duration \"2 parsecs\""),
        ("weight zero", BASE.replace("weight = 3", "weight = 0"), 11, "weight must be between 1 and 256, got 0"),
        ("weight too big", BASE.replace("weight = 3", "weight = 257"), 11, "weight must be between 1 and 256, got 257"),
        ("no servers", BASE.replace("servers = [\n  { addr = \"127.0.0.1:9001\", weight = 1 },\n  { addr = \"127.0.0.1:9002\", weight = 3 },\n]", "servers = []"), 9, "pool \"app\" has no servers"),
        ("rise zero", format!("{BASE}\n[pool.health]\nrise = 0\n"), 15, "must be at least 1, got 0"),
        ("fall zero", format!("{BASE}\n[pool.health]\nfall = 0\n"), 15, "must be at least 1, got 0"),
        ("timeout zero", format!("{BASE}\n[pool.health]\ntimeout = \"0s\"\n"), 15, "timeout must be greater than zero"),
        ("unknown algorithm", BASE.replace("name = \"app\"\n", "name = \"app\"\nalgorithm = \"fastest\"\n"), 9, "unknown variant `fastest`"),
        ("tls empty", BASE.replace("pool = \"app\"\n\n", "pool = \"app\"\n[listener.tls]\ncertificates = []\n\n"), 7, "certificates must list at least one"),
        ("tls bad mode", BASE.replace("pool = \"app\"\n\n", "pool = \"app\"\n[listener.tls]\ncertificates = [ { cert = \"a.pem\", key = \"a.key\" } ]\n[listener.tls.client_auth]\nca_file = \"c.pem\"\nmode = \"maybe\"\n\n"), 10, "unknown client_auth mode \"maybe\""),
        ("toml syntax", BASE.replace("name = \"web\"", "name = \"web"), 2, "invalid basic string"),
        ("http-only key on tcp", BASE.replace("protocol = \"http\"", "protocol = \"tcp\"").replace("pool = \"app\"\n\n", "pool = \"app\"\n[listener.timeouts]\nfirst_byte = \"1s\"\n\n"), 7, "first_byte applies only to protocol = \"http\" listeners"),
        ("h2c upgrade", BASE.replace("pool = \"app\"\n\n", "pool = \"app\"\nupgrades = [\"websocket\", \"h2c\"]\n\n"), 6, "h2c is never tunnelled"),
        ("bad size", BASE.replace("pool = \"app\"\n\n", "pool = \"app\"\n[listener.limits]\nmax_request_body = \"10 parsecs\"\n\n"), 7, "invalid size \"10 parsecs\""),
        ("header limit too small", BASE.replace("pool = \"app\"\n\n", "pool = \"app\"\n[listener.limits]\nmax_header_bytes = 100\n\n"), 7, "max_header_bytes must be between 1024"),
        ("too many retries", BASE.replace("name = \"app\"\n", "name = \"app\"\nretries = 11\n"), 9, "retries must be between 0 and 10"),
    ]
}

#[test]
fn each_broken_config_names_its_line_and_exits_2() {
    for (name, text, line, msg) in broken() {
        let (code, _, err) = check(&text);
        assert_eq!(code, 2, "{name}: exit code; stderr: {err}");
        let first = err.lines().next().unwrap_or_default();
        let prefix = format!("F:{line}:");
        assert!(
            first.starts_with(&prefix),
            "{name}: expected {prefix}COL: ..., got {first:?}"
        );
        assert!(first.contains(msg), "{name}: expected {msg:?} in {first:?}");
    }
}

#[test]
fn run_refuses_an_invalid_config_with_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(&path, BASE.replace("weight = 3", "weight = 0")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fulcrum"))
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":11:") && err.contains("weight must be between 1 and 256"),
        "{err}"
    );
}
