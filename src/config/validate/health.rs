//! A pool's `[pool.health]` (active probes: kind, timing, thresholds, what an answer must
//! be, flap damping) and `[pool.passive]` (ejection on real traffic's failures).

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::super::schema::*;
use super::super::*;
use super::Ctx;

/// `[pool.health]`.
pub(super) fn health(cx: &Ctx, h: &RawHealth) -> Result<HealthSettings, ConfigError> {
    let kind_name = cx
        .choice(
            &h.kind,
            "health kind",
            &["tcp", "http", "heartbeat", "none"],
        )?
        .unwrap_or("tcp");
    let only = |key: &str, span: Option<Range<usize>>, want: &str| -> Result<(), ConfigError> {
        match span {
            Some(span) if kind_name != want => {
                Err(cx.err(span, format!("{key} applies only to kind = \"{want}\"")))
            }
            _ => Ok(()),
        }
    };
    only("path", h.path.as_ref().map(|s| s.span()), "http")?;
    only("method", h.method.as_ref().map(|s| s.span()), "http")?;
    only("host", h.host.as_ref().map(|s| s.span()), "http")?;
    only(
        "expect_status",
        h.expect_status.as_ref().map(|s| s.span()),
        "http",
    )?;
    only(
        "expect_body",
        h.expect_body.as_ref().map(|s| s.span()),
        "http",
    )?;
    only("send", h.send.as_ref().map(|s| s.span()), "heartbeat")?;
    only("expect", h.expect.as_ref().map(|s| s.span()), "heartbeat")?;

    let kind = match kind_name {
        "none" => HealthKind::None,
        "tcp" => HealthKind::Tcp,
        "http" => {
            let path = h
                .path
                .as_ref()
                .map_or("/".to_string(), |p| p.get_ref().clone());
            if let Some(p) = &h.path {
                if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
                    return Err(cx.err(
                        p.span(),
                        format!(
                            "health path {path:?} is invalid; expected a path such as \"/healthz\""
                        ),
                    ));
                }
            }
            let method = match &h.method {
                None => http::Method::GET,
                Some(m) => http::Method::from_bytes(m.get_ref().as_bytes()).map_err(|_| {
                    cx.err(m.span(), format!("invalid HTTP method {:?}", m.get_ref()))
                })?,
            };
            let expect_status = match &h.expect_status {
                None => vec![(200, 399)],
                Some(v) => status_ranges(v.get_ref()).map_err(|m| cx.err(v.span(), m))?,
            };
            HealthKind::Http(HttpCheck {
                method,
                path,
                host: h.host.as_ref().map(|s| s.get_ref().clone()),
                expect_status,
                expect_body: h.expect_body.as_ref().map(|s| s.get_ref().clone()),
            })
        }
        _ => {
            let send = h
                .send
                .as_ref()
                .map(|s| unescape(s.get_ref()))
                .unwrap_or_default();
            let expect = match &h.expect {
                Some(e) if !e.get_ref().is_empty() => unescape(e.get_ref()),
                Some(e) => return Err(cx.err(e.span(), "expect must not be empty")),
                None => {
                    let span = h.kind.as_ref().map_or(0..0, |k| k.span());
                    return Err(cx.err(span, "kind = \"heartbeat\" needs `expect` (and usually `send`), e.g. send = \"PING\\r\\n\", expect = \"+PONG\""));
                }
            };
            HealthKind::Heartbeat { send, expect }
        }
    };
    let interval = cx.dur(&h.interval, "interval", Duration::from_secs(2))?;
    let timeout = cx.dur(&h.timeout, "timeout", Duration::from_secs(1))?;
    let initial_up = cx.choice(&h.initial_state, "initial_state", &["down", "up"])? == Some("up");
    let flap_damping = match &h.flap_damping {
        Some(f) if f.enabled.as_ref().is_none_or(|e| *e.get_ref()) => {
            let num = |v: &Option<Spanned<f64>>, key: &str, d: f64| -> Result<f64, ConfigError> {
                match v {
                    None => Ok(d),
                    Some(s) if *s.get_ref() > 0.0 && s.get_ref().is_finite() => Ok(*s.get_ref()),
                    Some(s) => Err(cx.err(
                        s.span(),
                        format!("{key} must be a positive number, got {}", s.get_ref()),
                    )),
                }
            };
            let fd = FlapDamping {
                penalty: num(&f.penalty, "penalty", 1000.0)?,
                suppress: num(&f.suppress, "suppress", 2000.0)?,
                reuse: num(&f.reuse, "reuse", 750.0)?,
                half_life: cx.dur(&f.half_life, "half_life", Duration::from_secs(30))?,
            };
            if fd.reuse >= fd.suppress {
                let span = f
                    .reuse
                    .as_ref()
                    .or(f.suppress.as_ref())
                    .map_or(0..0, |s| s.span());
                return Err(cx.err(
                    span,
                    format!(
                        "flap_damping reuse ({}) must be below suppress ({})",
                        fd.reuse, fd.suppress
                    ),
                ));
            }
            Some(fd)
        }
        _ => None,
    };
    Ok(HealthSettings {
        kind,
        interval,
        fast_interval: cx.dur(
            &h.fast_interval,
            "fast_interval",
            (interval / 4).max(Duration::from_millis(100)).min(interval),
        )?,
        down_interval: cx.dur(&h.down_interval, "down_interval", interval)?,
        timeout,
        rise: h.rise.as_ref().map_or(2, |c| c.get_ref().0),
        fall: h.fall.as_ref().map_or(3, |c| c.get_ref().0),
        initial_up,
        flap_damping,
    })
}

/// "200-399", "200,204", 200, or [200, "300-399"].
fn status_ranges(v: &toml::Value) -> Result<Vec<(u16, u16)>, String> {
    fn one(s: &str) -> Result<(u16, u16), String> {
        let bad = || {
            format!(
                "invalid status {s:?}; expected a code such as 200 or a range such as \"200-399\""
            )
        };
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let a: u16 = a.parse().map_err(|_| bad())?;
        let b: u16 = b.parse().map_err(|_| bad())?;
        if !(100..=599).contains(&a) || !(100..=599).contains(&b) || a > b {
            return Err(bad());
        }
        Ok((a, b))
    }
    let mut out = Vec::new();
    match v {
        toml::Value::Integer(i) => out.push(one(&i.to_string())?),
        toml::Value::String(s) => {
            for part in s.split(',') {
                out.push(one(part)?);
            }
        }
        toml::Value::Array(items) => {
            for it in items {
                match it {
                    toml::Value::Integer(i) => out.push(one(&i.to_string())?),
                    toml::Value::String(s) => out.push(one(s)?),
                    _ => {
                        return Err(
                            "expect_status entries must be codes or \"LOW-HIGH\" strings".into(),
                        )
                    }
                }
            }
        }
        _ => {
            return Err(
                "expect_status must be a code, a string such as \"200-399\", or a list".into(),
            )
        }
    }
    if out.is_empty() {
        return Err("expect_status must not be empty".into());
    }
    Ok(out)
}

/// Understands \r \n \t \\ and \0 in heartbeat strings (TOML basic strings already do too).
pub(crate) fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.bytes();
    while let Some(b) = chars.next() {
        if b == b'\\' {
            match chars.next() {
                Some(b'r') => out.push(b'\r'),
                Some(b'n') => out.push(b'\n'),
                Some(b't') => out.push(b'\t'),
                Some(b'0') => out.push(0),
                Some(b'\\') => out.push(b'\\'),
                Some(o) => {
                    out.push(b'\\');
                    out.push(o);
                }
                None => out.push(b'\\'),
            }
        } else {
            out.push(b);
        }
    }
    out
}

/// `[pool.passive]`.
pub(super) fn passive(cx: &Ctx, p: &RawPassive) -> Result<PassiveSettings, ConfigError> {
    let (mut c, mut r, mut t, mut x) = (true, true, true, false);
    if let Some(list) = &p.count {
        (c, r, t, x) = (false, false, false, false);
        for item in list.get_ref() {
            match item.get_ref().as_str() {
                "connect" => c = true,
                "reset" => r = true,
                "timeout" => t = true,
                "5xx" => x = true,
                other => {
                    return Err(cx.err(
                        item.span(),
                        format!("unknown failure kind {other:?}, expected one of `connect`, `reset`, `timeout`, `5xx`"),
                    ))
                }
            }
        }
    }
    let base = cx.dur(&p.base_ejection, "base_ejection", Duration::from_secs(10))?;
    let max = cx.dur(&p.max_ejection, "max_ejection", Duration::from_secs(300))?;
    if max < base {
        return Err(match &p.max_ejection {
            Some(m) => cx.err(m.span(), "max_ejection must not be shorter than base_ejection"),
            // A defaulted max_ejection has no position: the base_ejection that passed it has
            // (the defaults alone are in order, so base_ejection was written).
            None => cx.err(
                p.base_ejection.as_ref().map_or(0..0, |b| b.span()),
                format!("base_ejection ({base:?}) must not be longer than max_ejection (default {max:?}); lower it or set max_ejection"),
            ),
        });
    }
    Ok(PassiveSettings {
        enabled: p.enabled.unwrap_or(true),
        consecutive_failures: p.consecutive_failures.as_ref().map_or(5, |c| c.get_ref().0),
        count_connect: c,
        count_reset: r,
        count_timeout: t,
        count_5xx: x,
        base_ejection: base,
        max_ejection: max,
        max_ejected_percent: cx.int(&p.max_ejected_percent, "max_ejected_percent", 0..=100, 50)?
            as u32,
    })
}
