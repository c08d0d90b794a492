//! Config honesty: a key that would have no effect where it stands is refused by
//! `fulcrum check` (exit 2, `PATH:LINE:COL:` at the key), or, where refusing would break a
//! reasonable config (a pool that http and tcp listeners share), warned about once (exit 0).
//!
//! Each case marks the expected position in its config with `|` in a needle: the needle,
//! without the mark, occurs once in the config, and the mark stands where the error points.

#[path = "support/check.rs"]
mod check_cmd;

/// (exit code, stderr with the file's path replaced by `F`).
fn check(text: &str) -> (i32, String) {
    let (code, _, err) = check_cmd::check(text);
    (code, err)
}

/// `F:LINE:COL:` of the `|` in `needle`, which (without the mark) must occur once in `text`.
fn position(name: &str, text: &str, needle: &str) -> String {
    let plain = needle.replace('|', "");
    assert_eq!(
        text.matches(&plain).count(),
        1,
        "{name}: needle {plain:?} must occur once in:\n{text}"
    );
    let at = text.find(&plain).unwrap() + needle.find('|').expect("needle has a | mark");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("F:{line}:{col}:")
}

const HTTP: &str = "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\npool = \"app\"\n";
const TCP: &str =
    "[[listener]]\nname = \"db\"\nbind = \"127.0.0.1:8081\"\nprotocol = \"tcp\"\npool = \"app\"\n";

/// Pool "app" of two servers, with `extra` (pool keys, then its sub-tables).
fn pool(extra: &str) -> String {
    format!("\n[[pool]]\nname = \"app\"\nservers = [ {{ addr = \"127.0.0.1:9001\" }}, {{ addr = \"127.0.0.1:9002\" }} ]\n{extra}\n")
}

/// An http listener over pool "app" with `extra`; `top` goes first (top-level tables).
fn http(top: &str, extra: &str) -> String {
    format!("{top}\n{HTTP}{}", pool(extra))
}

/// A tcp listener only over pool "app" with `extra`.
fn tcp(extra: &str) -> String {
    format!("{TCP}{}", pool(extra))
}

/// http and tcp listeners sharing pool "app" with `extra`.
fn shared(extra: &str) -> String {
    format!("{HTTP}\n{TCP}{}", pool(extra))
}

/// (case, config, needle marking the error, a fragment of the message)
fn refused() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        // [access_log]: nothing is written while it is off.
        ("access_log.format, enabled left out", http("[access_log]\nformat = \"json\"", ""), "format = |\"json\"", "access_log.format has no effect: the access log is off (enabled defaults to false); set enabled = true"),
        ("access_log.path, enabled = false", http("[access_log]\nenabled = false\npath = \"/tmp/a.log\"", ""), "|\"/tmp/a.log\"", "access_log.path has no effect: the access log is off (enabled = false)"),
        ("access_log.buffer, enabled = false", http("[access_log]\nenabled = false\nbuffer = 512", ""), "buffer = |512", "access_log.buffer has no effect"),
        // [admin]
        ("admin key, admin off", http("[admin]\nenabled = false\ntoken_file = \"admin.token\"", ""), "|\"admin.token\"", "admin.token_file has no effect: the admin listener is off (enabled = false)"),
        ("admin read_auth, admin off", http("[admin]\nenabled = false\nread_auth = false", ""), "read_auth = |false", "admin.read_auth has no effect: the admin listener is off"),
        ("loopback exception beside a token", http("[admin]\ntoken_file = \"admin.token\"\nallow_unauthenticated_loopback = true", ""), "allow_unauthenticated_loopback = |true", "admin.allow_unauthenticated_loopback has no effect with admin.token_file"),
        ("loopback exception off loopback", http("[admin]\nbind = \"0.0.0.0:9901\"\nallow_unauthenticated_loopback = true", ""), "allow_unauthenticated_loopback = |true", "admin.bind 0.0.0.0:9901 (line 2) is not a loopback address"),
        // [runtime]
        ("reload_guard off", http("[runtime]\nreload_guard = { enabled = false, window = \"10s\" }", ""), "window = |\"10s\"", "reload_guard.window has no effect: reload_guard has enabled = false"),
        // Listener keys of the other protocol.
        ("header_read on tcp", format!("{}[listener.timeouts]\nheader_read = \"5s\"\n{}", TCP, pool("")), "|\"5s\"", "header_read applies only to protocol = \"http\" listeners"),
        ("keepalive_idle on tcp", format!("{}[listener.timeouts]\nkeepalive_idle = \"5s\"\n{}", TCP, pool("")), "|\"5s\"", "keepalive_idle applies only to protocol = \"http\" listeners"),
        ("send_stall on tcp", format!("{}[listener.timeouts]\nsend_stall = \"5s\"\n{}", TCP, pool("")), "|\"5s\"", "send_stall applies only to protocol = \"http\" listeners"),
        ("tunnel_idle without upgrades", format!("{}upgrades = []\n[listener.timeouts]\ntunnel_idle = \"1m\"\n{}", HTTP, pool("")), "|\"1m\"", "tunnel_idle has no effect: upgrades = [] (line 6) tunnels no connection"),
        // Pool keys that other pool keys make pointless.
        ("slow_start under round_robin", http("", "slow_start = \"30s\""), "|\"30s\"", "slow_start has no effect under algorithm = \"round_robin\", which ignores weights"),
        ("max_queue without max_conns", http("", "max_queue = 10"), "max_queue = |10", "max_queue has no effect: no server of pool \"app\" has a limit (max_conns)"),
        ("queue_timeout without max_conns", http("", "queue_timeout = \"2s\""), "|\"2s\"", "queue_timeout has no effect: no server of pool \"app\" has a limit"),
        ("queue_timeout with max_queue = 0", http("", "max_conns = 5\nmax_queue = 0\nqueue_timeout = \"2s\""), "|\"2s\"", "queue_timeout has no effect with max_queue = 0"),
        ("retry_budget with retries = 0", http("", "retries = 0\nretry_budget = 0.5"), "retry_budget = |0.5", "retry_budget has no effect with retries = 0"),
        // [pool.health]
        ("interval without probes", http("", "[pool.health]\nkind = \"none\"\ninterval = \"5s\""), "|\"5s\"", "health interval has no effect with kind = \"none\": no probes run"),
        ("rise without probes", http("", "[pool.health]\nkind = \"none\"\nrise = 2"), "rise = |2", "health rise has no effect with kind = \"none\""),
        ("initial_state without probes", http("", "[pool.health]\nkind = \"none\"\ninitial_state = \"up\""), "|\"up\"", "health initial_state has no effect with kind = \"none\""),
        ("flap damping key without probes", http("", "[pool.health]\nkind = \"none\"\n[pool.health.flap_damping]\npenalty = 500.0"), "penalty = |500.0", "health flap_damping.penalty has no effect with kind = \"none\""),
        ("empty flap damping table without probes", http("", "[pool.health]\nkind = \"none\"\n[pool.health.flap_damping]"), "|\"none\"", "health flap_damping has no effect with kind = \"none\""),
        ("http probe key on a tcp probe", http("", "[pool.health]\nkind = \"tcp\"\npath = \"/healthz\""), "|\"/healthz\"", "path applies only to kind = \"http\""),
        ("heartbeat key on an http probe", http("", "[pool.health]\nkind = \"http\"\nsend = \"PING\""), "|\"PING\"", "send applies only to kind = \"heartbeat\""),
        ("fast_interval with rise = fall = 1", http("", "[pool.health]\nrise = 1\nfall = 1\nfast_interval = \"100ms\""), "|\"100ms\"", "fast_interval has no effect with rise = 1 and fall = 1"),
        ("flap damping off", http("", "[pool.health.flap_damping]\nenabled = false\nhalf_life = \"1m\""), "|\"1m\"", "flap_damping.half_life has no effect: flap_damping has enabled = false"),
        // [pool.passive]
        ("passive off", http("", "[pool.passive]\nenabled = false\nconsecutive_failures = 3"), "consecutive_failures = |3", "passive.consecutive_failures has no effect: passive detection is off (enabled = false)"),
        ("passive count, passive off and no probes", http("", "[pool.health]\nkind = \"none\"\n[pool.passive]\nenabled = false\ncount = [\"connect\"]"), "count = |[", "passive.count has no effect: passive detection is off (enabled = false), and with health kind = \"none\""),
        // A defaulted key's error points at the written key it conflicts with.
        ("base_ejection past the default max_ejection", http("", "[pool.passive]\nbase_ejection = \"10m\""), "|\"10m\"", "base_ejection (600s) must not be longer than max_ejection (default 300s)"),
        // Pool keys only http listeners read, on a pool only tcp listeners use.
        ("sticky, tcp only", tcp("sticky = { cookie = \"srv\" }"), "|\"srv\"", "pool \"app\": sticky applies only to http listeners, and only tcp listener \"db\" uses this pool: a tcp listener sets and reads no cookie"),
        ("http hash_key, tcp only", tcp("algorithm = \"consistent_hash\"\nhash_key = \"header:X-User\""), "|\"header:X-User\"", "pool \"app\": hash_key \"header:X-User\" applies only to http listeners"),
        ("upstream_protocol, tcp only", tcp("upstream_protocol = \"h2\""), "|\"h2\"", "pool \"app\": upstream_protocol applies only to http listeners, and only tcp listener \"db\" uses this pool: a tcp listener relays bytes as they are, and health probes are not kind = \"http\""),
        ("response_header, tcp only", tcp("[pool.timeouts]\nresponse_header = \"5s\""), "|\"5s\"", "pool \"app\": timeouts.response_header applies only to http listeners"),
        ("upstream_idle, tcp only", tcp("[pool.timeouts]\nupstream_idle = \"5s\""), "|\"5s\"", "pool \"app\": timeouts.upstream_idle applies only to http listeners"),
        ("upstream_read_idle, tcp only", tcp("[pool.timeouts]\nupstream_read_idle = \"5s\""), "|\"5s\"", "pool \"app\": timeouts.upstream_read_idle applies only to http listeners"),
        ("http failure kinds, tcp only", tcp("[pool.passive]\ncount = [\"connect\", \"5xx\", \"reset\"]"), "|\"5xx\"", "pool \"app\": passive.count \"5xx\", \"reset\" applies only to http listeners"),
        ("upstream tls, tcp only", tcp("tls = { sni = \"app.internal\" }"), "tls = |{", "pool \"app\": tls applies only to http listeners"),
        ("sticky, used through route_by_sni", format!("[[listener]]\nname = \"edge\"\nbind = \"127.0.0.1:8443\"\nprotocol = \"tcp\"\nroute_by_sni = {{ \"a.example\" = \"app\" }}\n{}", pool("sticky = { cookie = \"srv\" }")), "|\"srv\"", "only tcp listener \"edge\" uses this pool"),
    ]
}

#[test]
fn each_key_without_effect_is_refused_at_its_line() {
    for (name, text, needle, msg) in refused() {
        let (code, err) = check(&text);
        assert_eq!(code, 2, "{name}: exit code; stderr: {err}");
        let first = err.lines().next().unwrap_or_default();
        let at = position(name, &text, needle);
        assert!(
            first.starts_with(&at),
            "{name}: expected {at} ..., got {first:?}"
        );
        assert!(first.contains(msg), "{name}: expected {msg:?} in {first:?}");
    }
}

/// (case, config, needle marking the warning, a fragment of the message)
fn warned() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        ("sticky, shared", shared("sticky = { cookie = \"srv\" }"), "|\"srv\"", "pool \"app\": sticky applies only to http listeners; tcp listener \"db\" also uses this pool and ignores it"),
        ("http hash_key, shared", shared("algorithm = \"consistent_hash\"\nhash_key = \"cookie:sid\""), "|\"cookie:sid\"", "pool \"app\": hash_key \"cookie:sid\" applies only to http listeners; tcp listener \"db\" also uses this pool"),
        ("response_header, shared", shared("[pool.timeouts]\nresponse_header = \"5s\""), "|\"5s\"", "timeouts.response_header applies only to http listeners; tcp listener \"db\" also uses"),
        ("http failure kinds, shared", shared("[pool.passive]\ncount = [\"connect\", \"5xx\"]"), "|\"5xx\"", "passive.count \"5xx\" applies only to http listeners"),
        ("upstream tls, shared", shared("tls = { sni = \"app.internal\" }"), "tls = |{", "pool \"app\": tls applies only to http listeners; tcp listener \"db\" also uses this pool"),
        ("weights under round_robin", format!("{HTTP}\n[[pool]]\nname = \"app\"\nservers = [ {{ addr = \"127.0.0.1:9001\", weight = 3 }}, {{ addr = \"127.0.0.1:9002\" }} ]\n"), "weight = |3", "weights have no effect in pool \"app\": algorithm = \"round_robin\" rotates strictly"),
        ("slow_start over weight-1 servers", http("", "algorithm = \"least_conn\"\nslow_start = \"30s\""), "|\"30s\"", "slow_start has no effect while every server of pool \"app\" has weight 1"),
    ]
}

#[test]
fn keys_a_shared_pool_or_the_admin_api_can_use_are_warned_once() {
    for (name, text, needle, msg) in warned() {
        let (code, err) = check(&text);
        assert_eq!(code, 0, "{name}: a warning does not fail the check: {err}");
        let warnings: Vec<&str> = err.lines().filter(|l| l.contains(": warning: ")).collect();
        assert_eq!(warnings.len(), 1, "{name}: warned once: {err}");
        let at = position(name, &text, needle);
        assert!(
            warnings[0].starts_with(&format!("{at} warning: ")),
            "{name}: expected {at} warning: ..., got {:?}",
            warnings[0]
        );
        assert!(
            warnings[0].contains(msg),
            "{name}: expected {msg:?} in {:?}",
            warnings[0]
        );
    }
}

#[test]
fn keys_that_take_effect_where_they_stand_pass_silently() {
    let cases = [
        ("access log on", http("[access_log]\nenabled = true\nformat = \"json\"\nbuffer = 512", "")),
        ("loopback exception on loopback", http("[admin]\nbind = \"127.0.0.1:9901\"\nallow_unauthenticated_loopback = true", "")),
        ("reload_guard on", http("[runtime]\nreload_guard = { window = \"10s\" }", "")),
        ("tunnel_idle with upgrades", format!("{HTTP}[listener.timeouts]\ntunnel_idle = \"1m\"\n{}", pool(""))),
        ("tunnel_idle on tcp", format!("{TCP}[listener.timeouts]\ntunnel_idle = \"1m\"\n{}", pool(""))),
        ("queue with a server limit", format!("{HTTP}\n[[pool]]\nname = \"app\"\nservers = [ {{ addr = \"127.0.0.1:9001\", max_conns = 5 }} ]\nmax_queue = 10\nqueue_timeout = \"2s\"\n")),
        ("slow start over weighted servers", format!("{HTTP}\n[[pool]]\nname = \"app\"\nalgorithm = \"weighted_round_robin\"\nslow_start = \"30s\"\nservers = [ {{ addr = \"127.0.0.1:9001\", weight = 20 }}, {{ addr = \"127.0.0.1:9002\", weight = 10 }} ]\n")),
        ("retry_budget with retries", http("", "retries = 1\nretry_budget = 0.5")),
        ("passive count read by the probes' comparison", http("", "[pool.passive]\nenabled = false\ncount = [\"connect\", \"5xx\"]")),
        ("client_ip hash on tcp", tcp("algorithm = \"consistent_hash\"\nhash_key = \"client_ip\"")),
        ("h2 probes of a tcp pool", tcp("upstream_protocol = \"h2\"\n[pool.health]\nkind = \"http\"")),
        ("tcp-only pool with tcp keys", tcp("retries = 1\nmax_conns = 10\nmax_queue = 5\n[pool.timeouts]\nconnect = \"1s\"\n[pool.passive]\ncount = [\"connect\"]")),
        ("shared pool with shared keys", shared("algorithm = \"least_conn\"\n[pool.health]\nkind = \"http\"\npath = \"/healthz\"")),
        ("probes without passive detection", http("", "[pool.health]\ninterval = \"1s\"\n[pool.passive]\nenabled = false")),
    ];
    for (name, text) in cases {
        let (code, err) = check(&text);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(
            !err.contains("warning"),
            "{name}: no warning expected: {err}"
        );
    }
}

#[tokio::test]
async fn shipped_configs_and_the_demo_config_pass_without_a_warning() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut configs: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    assert!(configs.len() >= 3, "config/*.toml: {configs:?}");
    let any = "127.0.0.1:0".parse().unwrap();
    let mut origins = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        origins.push(fulcrum::demo::Origin::start(name, any).await.unwrap());
    }
    let refs: Vec<&fulcrum::demo::Origin> = origins.iter().collect();
    configs.push((
        "fulcrum demo".into(),
        fulcrum::demo::demo_config(8080, 9901, &refs),
    ));
    for (name, text) in configs {
        let (code, err) = check(&text);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(!err.contains("warning"), "{name}: {err}");
    }
}
