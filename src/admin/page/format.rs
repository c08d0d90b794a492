//! Formatting for the status page: HTML escaping, the one-pass template fill, and the
//! way numbers read (latencies, durations, percentages, times). Pure functions of their
//! arguments; `status.js` prints the same forms on the client.

use serde_json::Value;

use super::DASH;

/// Replaces each `{{key}}` of `template` in one pass, so a value that itself holds braces
/// (a path, a server name) is never expanded again.
pub(super) fn fill(template: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find("}}") {
            Some(j) => {
                out.push_str(&value(&after[..j]));
                rest = &after[j + 2..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for an HTML element or a quoted attribute.
pub(super) fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

pub(super) fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| DASH.into(), |n| n.to_string())
}

pub(super) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// A Unix time as UTC, to the second (the script prints the same form).
pub(super) fn time(unix: Option<f64>) -> String {
    use std::fmt::Write as _;
    // RFC 3339 stops at year 9999; a later time (a far-off certificate expiry) is shown
    // as seconds rather than refused.
    const MAX_RFC3339: f64 = 253_402_300_799.0;
    match unix.filter(|t| *t > 0.0) {
        Some(t) if t <= MAX_RFC3339 => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t);
            let mut s = String::new();
            match write!(s, "{}", humantime::format_rfc3339_seconds(at)) {
                Ok(()) => s,
                Err(_) => format!("{t:.0} s after 1970"),
            }
        }
        Some(t) => format!("{t:.0} s after 1970"),
        None => DASH.into(),
    }
}

/// Seconds as a latency: µs, ms or s.
pub(super) fn latency(v: &Value) -> String {
    match v.as_f64() {
        None => DASH.into(),
        Some(s) if s < 0.001 => format!("{:.0} µs", s * 1e6),
        Some(s) if s < 0.01 => format!("{:.2} ms", s * 1e3),
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

/// Seconds as a coarse duration: "42 s", "3 m 5 s", "7 h 2 m", "3 d 4 h".
pub(super) fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (m, h) = (s / 60, s / 3600);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{m} m {} s", s % 60),
        3600..=172_799 => format!("{h} h {} m", m % 60),
        _ => format!("{} d {} h", h / 24, h % 24),
    }
}

pub(super) fn percent(ratio: f64) -> String {
    if ratio >= 1.0 {
        "100 %".into()
    } else {
        format!("{:.3} %", ratio * 100.0)
    }
}

/// A table with a caption, column headers and ready-made rows.
pub(super) fn table(caption: &str, columns: &[&str], rows: &str) -> String {
    let head: String = columns
        .iter()
        .map(|c| format!("<th scope=\"col\">{}</th>", esc(c)))
        .collect();
    format!(
        "<table><caption>{}</caption><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>",
        esc(caption)
    )
}

/// A route's match or action as text, whatever shape `/status` gives it.
pub(super) fn describe(v: &Value) -> String {
    match v {
        Value::Null => DASH.into(),
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", describe(v)))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Array(a) => a.iter().map(describe).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// One cell: main text, an optional second line, an optional class.
pub(super) fn cell(col: &str, main: &str, sub: &str, class: &str) -> String {
    let sub = if sub.is_empty() {
        String::new()
    } else {
        format!("<span class=\"sub\">{}</span>", esc(sub))
    };
    format!(
        "<td data-col=\"{col}\" class=\"{class}\"><span class=\"main\">{}</span>{sub}</td>",
        esc(main)
    )
}
