//! What a route does (`pool`, `split`, `redirect`, `respond`: exactly one), and the
//! listener-level keys that go with actions: `split_key` and `error_pages`.

use std::ops::Range;

use http::{HeaderName, HeaderValue, StatusCode};
use toml::Spanned;

use super::super::validate::Ctx;
use super::schema::{RawErrorPages, RawRedirect, RawRoute, RawSplit};
use super::{body, known_pool, ConfigError, ErrorPages, RouteAction};
use crate::route::{
    HostPattern, PathMatch, Redirect, RedirectPath, SplitKey, SplitTarget, MAX_SPLIT_WEIGHT,
};

pub(super) fn action(
    cx: &Ctx,
    r: &RawRoute,
    who: &str,
    path: &PathMatch,
    pools: &[&Spanned<String>],
) -> Result<RouteAction, ConfigError> {
    let mut given: Vec<(&str, Range<usize>)> = [
        ("pool", r.pool.as_ref().map(Spanned::span)),
        ("split", r.split.as_ref().map(Spanned::span)),
        ("redirect", r.redirect.as_ref().map(Spanned::span)),
        ("respond", r.respond.as_ref().map(Spanned::span)),
    ]
    .into_iter()
    .filter_map(|(k, s)| s.map(|s| (k, s)))
    .collect();
    given.sort_by_key(|(_, span)| span.start);
    if let [(a, _), (b, span), ..] = given.as_slice() {
        return Err(cx.err(
            span.clone(),
            format!("{who} has both `{a}` and `{b}`; a route does one thing"),
        ));
    }
    if let Some(p) = &r.pool {
        return Ok(RouteAction::Pool(known_pool(cx, p, who, pools)?));
    }
    if let Some(split) = &r.split {
        return split_targets(cx, split, who, pools).map(RouteAction::Split);
    }
    if let Some(rd) = &r.redirect {
        return redirect(cx, rd, path).map(RouteAction::Redirect);
    }
    if let Some(rs) = &r.respond {
        return body::respond(cx, rs.get_ref()).map(RouteAction::Respond);
    }
    Err(cx.err(
        r.name.span(),
        format!("{who} has no action; expected one of pool, split, redirect or respond"),
    ))
}

fn split_targets(
    cx: &Ctx,
    split: &Spanned<Vec<RawSplit>>,
    who: &str,
    pools: &[&Spanned<String>],
) -> Result<Vec<SplitTarget>, ConfigError> {
    if split.get_ref().len() < 2 {
        return Err(cx.err(
            split.span(),
            "a split needs at least two pools; for one, write pool = \"...\"",
        ));
    }
    let mut out: Vec<SplitTarget> = Vec::new();
    for t in split.get_ref() {
        let pool = known_pool(cx, &t.pool, who, pools)?;
        if out.iter().any(|o| o.pool == pool) {
            return Err(cx.err(
                t.pool.span(),
                format!("pool {:?} appears twice in the split", &*pool),
            ));
        }
        let weight = cx.int(
            &Some(t.weight.clone()),
            "split weight",
            1..=i64::from(MAX_SPLIT_WEIGHT),
            1,
        )? as u32;
        out.push(SplitTarget { pool, weight });
    }
    Ok(out)
}

fn redirect(
    cx: &Ctx,
    rd: &Spanned<RawRedirect>,
    path: &PathMatch,
) -> Result<Redirect, ConfigError> {
    let r = rd.get_ref();
    let status = match &r.status {
        None => StatusCode::FOUND,
        Some(s) if [301, 302, 303, 307, 308].contains(s.get_ref()) => {
            StatusCode::from_u16(*s.get_ref() as u16).expect("listed codes are valid")
        }
        Some(s) => {
            return Err(cx.err(
                s.span(),
                format!(
                    "redirect status must be 301, 302, 303, 307 or 308, got {}",
                    s.get_ref()
                ),
            ))
        }
    };
    let scheme = cx
        .choice(&r.scheme, "redirect scheme", &["http", "https"])?
        .map(Box::from);
    let host = match &r.host {
        None => None,
        Some(h) => match HostPattern::parse(h.get_ref()).map_err(|m| cx.err(h.span(), m))? {
            HostPattern::Exact(name) => Some(name),
            HostPattern::Wildcard(_) => {
                return Err(cx.err(
                    h.span(),
                    "a redirect goes to one host; a wildcard is not one",
                ))
            }
        },
    };
    let port = match &r.port {
        None => None,
        Some(_) => Some(cx.int(&r.port, "redirect port", 1..=65535, 1)? as u16),
    };
    let target = match (&r.path, &r.prefix) {
        (Some(_), Some(p)) => {
            return Err(cx.err(p.span(), "a redirect takes path or prefix, not both"))
        }
        (Some(p), None) => {
            let s = p.get_ref();
            if !s.starts_with('/') || HeaderValue::from_str(s).is_err() || s.contains(' ') {
                return Err(cx.err(
                    p.span(),
                    format!("redirect path {s:?} is invalid; expected a path such as \"/new\""),
                ));
            }
            RedirectPath::Replace(s.as_str().into())
        }
        (None, Some(p)) => {
            let PathMatch::Prefix(from) = path else {
                return Err(cx.err(
                    p.span(),
                    "redirect prefix replaces the route's path_prefix; this route has none",
                ));
            };
            let s = p.get_ref();
            if !s.starts_with('/') || HeaderValue::from_str(s).is_err() || s.contains(' ') {
                return Err(cx.err(
                    p.span(),
                    format!("redirect prefix {s:?} is invalid; expected a path such as \"/new/\""),
                ));
            }
            RedirectPath::ReplacePrefix {
                from: from.clone(),
                to: s.as_str().into(),
            }
        }
        (None, None) => RedirectPath::Keep,
    };
    if scheme.is_none() && host.is_none() && port.is_none() && target == RedirectPath::Keep {
        return Err(cx.err(rd.span(), "this redirect sends clients back to the same URL; give scheme, host, port, path or prefix"));
    }
    Ok(Redirect {
        status,
        scheme,
        host,
        port,
        path: target,
        drop_query: r.drop_query.unwrap_or(false),
    })
}

pub(super) fn split_key(cx: &Ctx, k: &Spanned<String>) -> Result<SplitKey, ConfigError> {
    let s = k.get_ref().as_str();
    let bad = |why: &str| {
        cx.err(k.span(), format!("invalid split_key {s:?}: {why}; expected \"client_ip\", \"header:NAME\" or \"cookie:NAME\""))
    };
    if s == "client_ip" {
        return Ok(SplitKey::ClientIp);
    }
    if let Some(h) = s.strip_prefix("header:") {
        return HeaderName::from_bytes(h.trim().as_bytes())
            .map(SplitKey::Header)
            .map_err(|_| bad("not a valid header name"));
    }
    if let Some(c) = s.strip_prefix("cookie:") {
        let c = c.trim();
        if c.is_empty()
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(bad("expected a cookie name of letters, digits, - _ ."));
        }
        return Ok(SplitKey::Cookie(c.into()));
    }
    Err(bad("unknown key"))
}

pub(super) fn error_pages(cx: &Ctx, p: &RawErrorPages) -> Result<ErrorPages, ConfigError> {
    let mut pages = Vec::new();
    for (status, page) in [
        (StatusCode::BAD_GATEWAY, &p.bad_gateway),
        (StatusCode::SERVICE_UNAVAILABLE, &p.service_unavailable),
        (StatusCode::GATEWAY_TIMEOUT, &p.gateway_timeout),
    ] {
        if let Some(page) = page {
            pages.push(body::error_page(cx, status, page)?);
        }
    }
    Ok(ErrorPages(pages))
}
