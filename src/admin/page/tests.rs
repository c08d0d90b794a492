//! The server-side rendering of the status page: what a reader without JavaScript sees.

use serde_json::json;

use super::*;

fn doc() -> Value {
    json!({
        "version": "0.1.0",
        "config": "/etc/{{pools}}/f.toml",
        "generation": 3,
        "reload": {
            "last": { "result": "failure", "at_unix": 1_800_000_000.0, "error": "f.toml:3:1: bad" },
            "successes": 2, "failures": 1, "applied_at_unix": 1_799_999_000.0
        },
        "listeners": [ { "name": "web", "bind": "127.0.0.1:8080", "protocol": "http", "pool": "app" } ],
        "pools": [ {
            "name": "app", "algorithm": "round_robin", "inflight": 1,
            "servers": [
                {
                    "name": "<b>o0</b>", "addr": "127.0.0.1:9001", "backup": false,
                    "weight": 3, "effective_weight": 3, "eligible": true, "health": "up",
                    "admin_state": "enabled", "weight_override": null, "overrides": {},
                    "ejected": false, "ejection_remaining_seconds": null, "ejections": 0,
                    "flap_suppressed": false, "inflight": 1, "requests": 10, "errors": 2,
                    "latency": { "count": 10, "sum_seconds": 0.1, "p50_seconds": 0.0042, "p99_seconds": 0.25 },
                    "availability": { "up_seconds": 65.0, "down_seconds": 0.0, "failures": 0,
                                      "mtbf_seconds": 65.0, "mttr_seconds": 0.0, "ratio": 1.0 }
                },
                {
                    "name": "o1", "addr": "127.0.0.1:9002", "backup": true,
                    "weight": 1, "effective_weight": 5, "eligible": false, "health": "down",
                    "admin_state": "draining", "weight_override": 5,
                    "overrides": { "admin_state": "draining", "weight": 5, "drain_deadline_unix": 1.5e9 },
                    "ejected": true, "ejection_remaining_seconds": 12.0, "ejections": 2,
                    "flap_suppressed": false, "inflight": 0, "requests": 0, "errors": 0,
                    "latency": { "count": 0, "sum_seconds": 0.0, "p50_seconds": null, "p99_seconds": null },
                    "availability": { "up_seconds": 30.0, "down_seconds": 10.0, "failures": 2,
                                      "mtbf_seconds": 15.0, "mttr_seconds": 5.0, "ratio": 0.75 }
                }
            ]
        } ]
    })
}

#[test]
fn the_snapshot_shows_every_server_with_its_numbers() {
    let html = render(&doc());
    assert!(html.contains("<td data-col=\"p50\" class=\"\"><span class=\"main\">4.20 ms</span>"));
    assert!(
        html.contains("<span class=\"main\">250.0 ms</span>"),
        "p99 of o0"
    );
    assert!(
        html.contains("<span class=\"main\">≥ 1 m 5 s</span>"),
        "MTBF without failures"
    );
    assert!(html.contains("<span class=\"main\">75.000 %</span>"));
    assert!(html.contains("<span class=\"sub\">12 s left; 2 so far</span>"));
    assert!(html.contains("<span class=\"sub\">override; configured 1</span>"));
    assert!(
        html.contains("<span class=\"main\">draining</span><span class=\"sub\">drain_deadline_unix=1500000000.0</span>"),
        "overrides without a column of their own show under the admin state"
    );
    assert!(html.contains("<span class=\"sub\">10 total</span>"));
    assert!(html.contains("<span class=\"badge\">backup</span>"));
    assert!(html.contains("<th scope=\"col\">Availability</th>"));
    assert!(html.contains("Generation</dt><dd id=\"s-generation\">3</dd>"));
    assert!(html.contains("failure at 2027-01-15T08:00:00Z: f.toml:3:1: bad"));
    assert!(html.contains("round_robin · 2 servers, 1 serving · 1 in flight"));
}

#[test]
fn a_server_without_samples_shows_a_dash_for_its_quantiles() {
    let html = render(&doc());
    let o1 = &html[html.find("data-server=\"o1\"").unwrap()..];
    assert!(o1.contains("<td data-col=\"p50\" class=\"\"><span class=\"main\">–</span>"));
    assert!(o1.contains("<td data-col=\"p99\" class=\"\"><span class=\"main\">–</span>"));
}

#[test]
fn names_are_escaped_and_values_are_never_expanded_twice() {
    let html = render(&doc());
    assert!(html.contains("&lt;b&gt;o0&lt;/b&gt;"));
    assert!(!html.contains("<b>o0</b>"));
    assert!(
        html.contains("/etc/{{pools}}/f.toml"),
        "a placeholder inside a value stays as written"
    );
    assert_eq!(
        html.matches("{{").count(),
        1,
        "every placeholder of the template is filled; only the value's own braces remain"
    );
}

#[test]
fn routes_and_tls_appear_only_when_status_has_them() {
    let mut d = doc();
    let html = render(&d);
    assert!(html.contains("<div id=\"routes\"></div>"));
    assert!(html.contains("<section id=\"tls\" aria-labelledby=\"h-tls\" hidden>"));
    d["listeners"][0]["routes"] =
        json!([{ "match": { "host": "a.example", "path": "/api" }, "pool": "app" }]);
    d["tls"] = json!([{ "listener": "web", "name": "a.example", "not_after_unix": 1.0e12 }]);
    let html = render(&d);
    assert!(html.contains("Routes of listener web"));
    assert!(html.contains("<td>host=a.example, path=/api</td><td>app</td>"));
    assert!(html.contains("<section id=\"tls\" aria-labelledby=\"h-tls\">"));
    assert!(html.contains("<td>a.example</td>"));
}

#[test]
fn formats() {
    assert_eq!(duration(0.4), "0 s");
    assert_eq!(duration(3725.0), "1 h 2 m");
    assert_eq!(duration(200_000.0), "2 d 7 h");
    assert_eq!(latency(&json!(0.0005)), "500 µs");
    assert_eq!(latency(&json!(2.5)), "2.50 s");
    assert_eq!(percent(0.99995), "99.995 %");
    assert_eq!(fill("a{{x}}b{{", |k| k.to_uppercase()), "aXb{{");
}
