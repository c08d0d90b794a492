//! The status page at `/`: a snapshot of the `/status` document rendered on the server, so
//! it reads without JavaScript, and a script (`/ui/status.js`) that takes over, refreshes it
//! every 2 s from `/status` and offers drain, enable, disable, weight and reset through the
//! runtime API with the bearer token the operator types in.
//!
//! Everything is served from the binary (`include_str!`): no external assets, no inline
//! script or style, and a `Content-Security-Policy` that allows only the page's own origin.
//! This module only formats: it reads the JSON that [`super::status`] builds and never
//! touches live state itself.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use super::{text, AdminResponse};

mod format;

use format::{cell, describe, duration, esc, fill, latency, num, percent, str_of, table, time};

const HTML: &str = include_str!("page/status.html");
const SCRIPT: &str = include_str!("page/status.js");
const STYLE: &str = include_str!("page/status.css");
const ICON: &str = include_str!("page/favicon.svg");

/// Only this origin's own script, style, icon and `/status`; no framing, no `<base>`, no
/// form posts (changes go through `fetch` with the token).
const CSP: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Shown where there is no value yet (no samples, no previous poll).
const DASH: &str = "–";

/// The server table's columns; the script adds "Actions".
const SERVER_COLUMNS: [&str; 14] = [
    "Server",
    "Health",
    "Serving",
    "Admin state",
    "Weight",
    "In flight",
    "Requests",
    "Errors",
    "p50",
    "p99",
    "Availability",
    "MTBF",
    "MTTR",
    "Ejection",
];

/// `GET /`: the page, with the current state rendered in.
pub fn page(status: &Value) -> AdminResponse {
    let mut r = respond(render(status), "text/html; charset=utf-8");
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /ui/{file}`: the page's script, style and icon.
pub fn asset(file: &str) -> Option<AdminResponse> {
    let (body, kind) = match file {
        "status.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "status.css" => (STYLE, "text/css; charset=utf-8"),
        "favicon.svg" => (ICON, "image/svg+xml"),
        _ => return None,
    };
    let mut r = respond(body.to_string(), kind);
    // Revalidate each time, so an upgraded binary's page never runs an old script.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(r)
}

fn respond(body: String, kind: &'static str) -> AdminResponse {
    let mut r = text(StatusCode::OK, Bytes::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The page's HTML for a `/status` document.
pub fn render(s: &Value) -> String {
    let tls = tls(s);
    fill(HTML, |key| match key {
        "rendered_at" => esc(&time(Some(crate::metrics::unix_now()))),
        "version" => esc(s["version"].as_str().unwrap_or(DASH)),
        "config" => esc(s["config"].as_str().unwrap_or(DASH)),
        "generation" => num(&s["generation"]),
        "reload" => esc(&reload(&s["reload"])),
        "applied" => esc(&time(s["reload"]["applied_at_unix"].as_f64())),
        "listeners" => listeners(s),
        "routes" => routes(s),
        "pools" => pools(s),
        "tls_hidden" if tls.is_empty() => " hidden".into(),
        "tls" => tls.clone(),
        _ => String::new(),
    })
}

fn reload(r: &Value) -> String {
    let last = &r["last"];
    let Some(result) = last["result"].as_str() else {
        return "none since start".into();
    };
    let mut s = result.to_string();
    if let Some(t) = last["at_unix"].as_f64() {
        s = format!("{s} at {}", time(Some(t)));
    }
    if let Some(e) = last["error"].as_str() {
        s = format!("{s}: {e}");
    }
    s
}

fn listeners(s: &Value) -> String {
    let rows: String = s["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(str_of(l, "name")),
                esc(str_of(l, "protocol")),
                esc(l["bind"].as_str().unwrap_or(DASH)),
                esc(str_of(l, "pool"))
            )
        })
        .collect();
    table(
        "Listeners",
        &["Listener", "Protocol", "Address", "Pool"],
        &rows,
    )
}

/// ROUTES: one table per listener that has routes in `/status`; nothing while none has.
fn routes(s: &Value) -> String {
    let mut out = String::new();
    for l in s["listeners"].as_array().into_iter().flatten() {
        let Some(routes) = l["routes"].as_array().filter(|r| !r.is_empty()) else {
            continue;
        };
        let rows: String = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let action = if r["action"].is_null() {
                    &r["pool"]
                } else {
                    &r["action"]
                };
                let mut action = describe(action);
                if r["split"]["overridden"] == Value::Bool(true) {
                    action.push_str(&format!(
                        " (admin override: {})",
                        describe(&r["split"]["weights"])
                    ));
                }
                format!(
                    "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td></tr>",
                    i + 1,
                    esc(&describe(&r["match"])),
                    esc(&action)
                )
            })
            .collect();
        let caption = format!("Routes of listener {}", str_of(l, "name"));
        out.push_str(&table(&caption, &["#", "Match", "Action"], &rows));
    }
    out
}

fn pools(s: &Value) -> String {
    let mut out = String::new();
    for p in s["pools"].as_array().into_iter().flatten() {
        let name = str_of(p, "name");
        let servers = p["servers"].as_array().map_or(&[][..], |v| v);
        let serving = servers.iter().filter(|v| v["eligible"] == true).count();
        let rows: String = servers.iter().map(server_row).collect();
        let id = esc(&format!("pool-{name}"));
        out.push_str(&format!(
            "<section class=\"pool\" data-pool=\"{n}\" aria-labelledby=\"{id}\"><h3 id=\"{id}\">Pool {n}</h3><p class=\"meta\">{} · {} servers, {serving} serving · {} in flight</p><div class=\"scroll\" role=\"region\" tabindex=\"0\" aria-labelledby=\"{id}\">{}</div></section>",
            esc(str_of(p, "algorithm")),
            servers.len(),
            num(&p["inflight"]),
            table(&format!("Servers of pool {name}"), &SERVER_COLUMNS, &rows),
            n = esc(name),
        ));
    }
    out
}

fn server_row(v: &Value) -> String {
    let a = &v["availability"];
    let up = v["health"] == "up";
    let state = str_of(v, "admin_state");
    let weight = num(&v["weight"]);
    let weight_sub = match v["weight_override"].as_u64() {
        Some(_) => format!("override; configured {weight}"),
        None if v["effective_weight"] != v["weight"] => format!("configured {weight}"),
        None => String::new(),
    };
    let failures = a["failures"].as_u64().unwrap_or(0);
    let up_seconds = a["up_seconds"].as_f64().unwrap_or(0.0);
    let mtbf = a["mtbf_seconds"].as_f64().unwrap_or(0.0);
    let mtbf = match (failures, up_seconds > 0.0) {
        (0, false) => DASH.into(),
        (0, true) => format!("≥ {}", duration(mtbf)),
        _ => duration(mtbf),
    };
    let mttr = match failures {
        0 => DASH.into(),
        _ => duration(a["mttr_seconds"].as_f64().unwrap_or(0.0)),
    };
    let ejections = v["ejections"].as_u64().unwrap_or(0);
    let (eject, eject_sub, eject_class) = if v["ejected"] == true {
        let left = v["ejection_remaining_seconds"].as_f64().unwrap_or(0.0);
        ("ejected", format!("{} left", duration(left)), "bad")
    } else if v["flap_suppressed"] == true {
        ("held: flapping", String::new(), "warn")
    } else {
        ("no", String::new(), "")
    };
    let eject_sub = match ejections {
        0 => eject_sub,
        n if eject_sub.is_empty() => format!("{n} so far"),
        n => format!("{eject_sub}; {n} so far"),
    };
    let backup = if v["backup"] == true {
        " <span class=\"badge\">backup</span>"
    } else {
        ""
    };
    let cells = [
        cell(
            "health",
            str_of(v, "health"),
            "",
            if up { "ok" } else { "bad" },
        ),
        if v["eligible"] == true {
            cell("serving", "yes", "", "ok")
        } else {
            cell("serving", "no", "", "warn")
        },
        cell(
            "state",
            state,
            &other_overrides(&v["overrides"]),
            match state {
                "enabled" => "",
                "draining" => "warn",
                _ => "bad",
            },
        ),
        cell("weight", &num(&v["effective_weight"]), &weight_sub, ""),
        cell("inflight", &num(&v["inflight"]), "", ""),
        cell(
            "requests",
            DASH,
            &format!("{} total", num(&v["requests"])),
            "",
        ),
        cell("errors", DASH, &format!("{} total", num(&v["errors"])), ""),
        cell("p50", &latency(&v["latency"]["p50_seconds"]), "", ""),
        cell("p99", &latency(&v["latency"]["p99_seconds"]), "", ""),
        cell(
            "availability",
            &a["ratio"].as_f64().map_or_else(|| DASH.into(), percent),
            &match failures {
                0 => String::new(),
                1 => "1 failure".into(),
                n => format!("{n} failures"),
            },
            "",
        ),
        cell("mtbf", &mtbf, "", ""),
        cell("mttr", &mttr, "", ""),
        cell("ejection", eject, &eject_sub, eject_class),
    ];
    format!(
        "<tr data-server=\"{}\"><th scope=\"row\"><span class=\"main\">{}{backup}</span><span class=\"sub\">{}</span></th>{}</tr>",
        esc(str_of(v, "name")),
        esc(str_of(v, "name")),
        esc(str_of(v, "addr")),
        cells.concat()
    )
}

/// Runtime changes other than the admin state and the weight, which have their own
/// columns (a ramped weight change or a drain deadline, say), as `key=value`.
fn other_overrides(o: &Value) -> String {
    o.as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "admin_state" && *k != "weight")
        .map(|(k, v)| format!("{k}={}", describe(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// TLS: one row per certificate in `/status` `tls`, once TLS lands; empty while absent.
fn tls(s: &Value) -> String {
    let Some(certs) = s["tls"].as_array().filter(|c| !c.is_empty()) else {
        return String::new();
    };
    let now = crate::metrics::unix_now();
    let rows: String = certs
        .iter()
        .map(|c| {
            let at = c["not_after_unix"].as_f64();
            let days = at.map(|t| (t - now) / 86_400.0);
            let class = match days {
                Some(d) if d < 7.0 => "bad",
                Some(d) if d < 21.0 => "warn",
                _ => "",
            };
            format!(
                "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
                esc(str_of(c, "listener")),
                esc(str_of(c, "name")),
                esc(&time(at)),
                days.map_or_else(|| DASH.into(), |d| format!("{d:.0} days"))
            )
        })
        .collect();
    table(
        "Certificates",
        &["Listener", "Certificate", "Expires", "Left"],
        &rows,
    )
}

#[cfg(test)]
mod tests;
