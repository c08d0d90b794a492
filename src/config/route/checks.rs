//! Checks of single route values: paths, methods, header names and values, header edits,
//! `strip_prefix`. Each reports at the value's own position.

use std::ops::Range;

use http::{HeaderName, HeaderValue, Method};
use toml::Spanned;

use super::super::validate::Ctx;
use super::schema::{RawHeaderEdits, RawRoute};
use super::ConfigError;
use crate::route::{HeaderEdits, PathMatch, PathRegex};

pub(super) fn path_match(cx: &Ctx, r: &RawRoute) -> Result<PathMatch, ConfigError> {
    let mut given: Vec<(&str, &Spanned<String>)> = [
        ("path", &r.path),
        ("path_prefix", &r.path_prefix),
        ("path_regex", &r.path_regex),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    // The second in the file is the one reported.
    given.sort_by_key(|(_, v)| v.span().start);
    match given.as_slice() {
        [] => Ok(PathMatch::Any),
        [(key, v)] => {
            let s = v.get_ref();
            if *key == "path_regex" {
                return PathRegex::new(s).map(PathMatch::Regex).map_err(|e| {
                    let why = e.to_string();
                    let why = why.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                    cx.err(v.span(), format!("invalid path_regex {s:?}: {}", why.trim().trim_start_matches("error: ")))
                });
            }
            if !s.starts_with('/') || s.contains('?') || s.contains('#') || s.chars().any(char::is_whitespace) {
                return Err(cx.err(v.span(), format!("{key} {s:?} is invalid; expected a path starting with / (without ?query or #fragment: routes match the path only)")));
            }
            Ok(if *key == "path" {
                PathMatch::Exact(s.as_str().into())
            } else {
                PathMatch::Prefix(s.as_str().into())
            })
        }
        [(a, _), (b, v), ..] => Err(cx.err(v.span(), format!("a route takes one of path, path_prefix and path_regex; this one has both {a} and {b}"))),
    }
}

pub(super) fn method(cx: &Ctx, m: &Spanned<String>) -> Result<Method, ConfigError> {
    let s = m.get_ref();
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(cx.err(
            m.span(),
            format!(
                "methods are case-sensitive; did you mean {:?}?",
                s.to_ascii_uppercase()
            ),
        ));
    }
    Method::from_bytes(s.as_bytes())
        .map_err(|_| cx.err(m.span(), format!("invalid HTTP method {s:?}")))
}

pub(super) fn header_name(cx: &Ctx, n: &Spanned<String>) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(n.get_ref().as_bytes()).map_err(|_| {
        cx.err(
            n.span(),
            format!(
                "invalid header name {:?}; expected letters, digits and - such as \"x-canary\"",
                n.get_ref()
            ),
        )
    })
}

pub(super) fn header_value(
    cx: &Ctx,
    span: Range<usize>,
    v: &str,
) -> Result<HeaderValue, ConfigError> {
    HeaderValue::from_str(v).map_err(|_| {
        cx.err(
            span,
            format!("invalid header value {v:?}: control characters are not allowed"),
        )
    })
}

/// Headers that frame the message or the connection: editing them would break HTTP itself.
const FRAMING: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

pub(super) fn header_edits(
    cx: &Ctx,
    e: &RawHeaderEdits,
    request: bool,
    host_rewrite: bool,
) -> Result<HeaderEdits, ConfigError> {
    let check = |n: &Spanned<String>, removing: bool| -> Result<HeaderName, ConfigError> {
        let name = header_name(cx, n)?;
        if FRAMING.contains(&name.as_str()) {
            return Err(cx.err(n.span(), format!("{name} frames the message or connection and cannot be edited; the proxy manages it")));
        }
        if request && name == http::header::HOST {
            if removing {
                return Err(cx.err(
                    n.span(),
                    "a request needs a Host; set it instead, or use host_rewrite = true",
                ));
            }
            if host_rewrite {
                return Err(cx.err(n.span(), "host is set here and by host_rewrite; keep one"));
            }
        }
        Ok(name)
    };
    let mut out = HeaderEdits::default();
    for n in e.remove.iter().flatten() {
        out.remove.push(check(n, true)?);
    }
    for (n, v) in e.set.iter().flatten() {
        out.set
            .push((check(n, false)?, header_value(cx, v.span(), v.get_ref())?));
    }
    Ok(out)
}

pub(super) fn strip_prefix(
    cx: &Ctx,
    s: &Spanned<String>,
    path: &PathMatch,
) -> Result<Box<str>, ConfigError> {
    let p = s.get_ref();
    if !p.starts_with('/') || p == "/" || p.contains('?') || p.chars().any(char::is_whitespace) {
        return Err(cx.err(
            s.span(),
            format!("strip_prefix {p:?} is invalid; expected a path prefix such as \"/v1\""),
        ));
    }
    if let PathMatch::Exact(m) | PathMatch::Prefix(m) = path {
        if !m.starts_with(p.as_str()) {
            return Err(cx.err(s.span(), format!("strip_prefix {p:?} never applies: every path this route matches starts with {m:?}")));
        }
    }
    Ok(p.as_str().into())
}
