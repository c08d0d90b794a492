//! `[[listener]]`: the bind, protocol and pool (or routes), TLS termination, forwarding
//! headers, the PROXY protocol, admission, timeouts, limits and upgrades. Names and bind
//! addresses are unique (the admin listener's included); a pool a listener names must exist.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::super::schema::*;
use super::super::types::Size;
use super::super::*;
use super::{no_effect, Ctx};

/// Every `[[listener]]`, in order, checked against the pools and the admin listener.
pub(super) fn listeners(
    cx: &Ctx,
    raw: &RawConfig,
    admin: Option<&AdminSettings>,
    served: crate::tls::Served,
) -> Result<Vec<ListenerSettings>, ConfigError> {
    let mut listeners = Vec::with_capacity(raw.listener.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut binds: HashMap<SocketAddr, String> = HashMap::new();
    if let Some(a) = admin {
        if a.bind.port() != 0 {
            binds.insert(a.bind, "the admin listener".into());
        }
    }
    for l in &raw.listener {
        let name = cx.name(&l.name, "listener")?;
        if let Some(first) = names.get(l.name.get_ref()) {
            let line = Location::of_offset(cx.text, *first).line;
            return Err(cx.err(
                l.name.span(),
                format!(
                    "duplicate listener name {:?} (first defined at line {line})",
                    &*name
                ),
            ));
        }
        names.insert(l.name.get_ref().clone(), l.name.span().start);
        let bind = l.bind.get_ref().0;
        if bind.port() != 0 {
            if let Some(other) = binds.get(&bind) {
                return Err(cx.err(
                    l.bind.span(),
                    format!("bind address {bind} is already used by {other}"),
                ));
            }
            binds.insert(bind, format!("listener {:?}", &*name));
        }
        listeners.push(listener(cx, l, name, bind, &raw.pool, served)?);
    }
    Ok(listeners)
}

/// One listener, once its name and bind are known to be unique.
fn listener(
    cx: &Ctx,
    l: &RawListener,
    name: Arc<str>,
    bind: SocketAddr,
    raw_pools: &[RawPool],
    served: crate::tls::Served,
) -> Result<ListenerSettings, ConfigError> {
    let pool_exists = |p: &Spanned<String>| {
        if raw_pools.iter().any(|q| q.name.get_ref() == p.get_ref()) {
            return Ok(());
        }
        let known: Vec<_> = raw_pools
            .iter()
            .map(|p| format!("{:?}", p.name.get_ref()))
            .collect();
        Err(cx.err(
            p.span(),
            format!(
                "listener {:?} names pool {:?}, which is not defined; defined pools: {}",
                &*name,
                p.get_ref(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ))
    };
    let protocol = match l.protocol {
        RawProtocol::Http => Protocol::Http,
        RawProtocol::Tcp => Protocol::Tcp,
    };
    let defined: Vec<&Spanned<String>> = raw_pools.iter().map(|p| &p.name).collect();
    if protocol == Protocol::Http {
        if let Some(r) = &l.route_by_sni {
            return Err(cx.err(r.span(), "route_by_sni applies only to protocol = \"tcp\" listeners (an http listener routes after TLS termination, with [[listener.route]])"));
        }
        if let Some(d) = &l.default_pool {
            return Err(cx.err(d.span(), "default_pool applies only with route_by_sni; an http listener's default pool is `pool`"));
        }
    }
    let routing = super::super::route::routing(cx, l, &name, protocol, &defined)?;
    // tcp: `pool`, or `route_by_sni` with its default; http: routes and a default pool.
    let (pool, sni_routes) = match protocol {
        Protocol::Tcp => {
            let (p, sni) = sni_routes::listener_pools(
                cx,
                protocol,
                l.pool.as_ref(),
                l.default_pool.as_ref(),
                l.route_by_sni.as_ref(),
                l.tls.as_ref().map(|t| t.span()),
                l.name.span(),
                &pool_exists,
            )?;
            let default = match &sni {
                Some(r) => r.default_pool.clone(),
                None => Some(p),
            };
            (default, sni)
        }
        Protocol::Http => (routing.default_pool.clone(), None),
    };
    let tls = match &l.tls {
        None => None,
        Some(t) => {
            let settings = tls::listener_tls(cx, t, protocol)?;
            if !served.listener_tls {
                return Err(cx.err(
                    t.span(),
                    "listener.tls: TLS termination is not supported yet",
                ));
            }
            Some(settings)
        }
    };
    if let (Some(r), false) = (&l.route_by_sni, served.sni_routing) {
        return Err(cx.err(r.span(), "route_by_sni: SNI routing is not supported yet"));
    }
    let forwarded = match cx.choice(
        &l.forwarded,
        "forwarded mode",
        &["x-forwarded", "rfc7239", "both", "none"],
    )? {
        None | Some("x-forwarded") => Forwarded {
            x_forwarded: true,
            rfc7239: false,
        },
        Some("rfc7239") => Forwarded {
            x_forwarded: false,
            rfc7239: true,
        },
        Some("both") => Forwarded {
            x_forwarded: true,
            rfc7239: true,
        },
        _ => Forwarded {
            x_forwarded: false,
            rfc7239: false,
        },
    };
    if let (Protocol::Tcp, Some(f)) = (protocol, &l.forwarded) {
        return Err(cx.err(
            f.span(),
            "forwarded applies only to protocol = \"http\" listeners",
        ));
    }
    let send_proxy = match cx.choice(&l.send_proxy, "send_proxy version", &["v1", "v2"])? {
        Some("v1") => Some(ProxyProtocol::V1),
        Some(_) => Some(ProxyProtocol::V2),
        None => None,
    };
    if let (Protocol::Http, Some(s)) = (protocol, &l.send_proxy) {
        return Err(cx.err(
            s.span(),
            "send_proxy applies only to protocol = \"tcp\" listeners",
        ));
    }
    no_effect::listener(cx, l, protocol)?;
    let admission = super::super::admission::validate(
        &super::super::admission::RawAdmission {
            trusted_proxies: &l.trusted_proxies,
            accept_proxy: &l.accept_proxy,
            accept_proxy_timeout: &l.accept_proxy_timeout,
            client_ip_header: &l.client_ip_header,
            allow: &l.allow,
            deny: &l.deny,
            rate_limit: &l.rate_limit,
        },
        protocol,
        &|span, msg| cx.err(span, msg),
    )?;
    let t = &l.timeouts;
    Ok(ListenerSettings {
        name,
        bind,
        protocol,
        pool,
        request_id: l.request_id.as_ref().is_none_or(|b| *b.get_ref()),
        routes: routing.routes,
        split_key: routing.split_key,
        error_pages: routing.error_pages,
        max_connections: cx.int(
            &l.max_connections,
            "max_connections",
            1..=10_000_000,
            10_000,
        )? as usize,
        forwarded,
        send_proxy,
        tls,
        sni_routes,
        timeouts: ListenerTimeouts {
            header_read: cx.dur(&t.header_read, "header_read", Duration::from_secs(10))?,
            keepalive_idle: cx.dur(&t.keepalive_idle, "keepalive_idle", Duration::from_secs(60))?,
            tunnel_idle: cx.dur(&t.tunnel_idle, "tunnel_idle", Duration::from_secs(600))?,
            first_byte: cx.dur(&t.first_byte, "first_byte", Duration::from_secs(10))?,
            body_read: cx.dur(&t.body_read, "body_read", Duration::from_secs(30))?,
            send_stall: cx.dur(&t.send_stall, "send_stall", Duration::from_secs(60))?,
        },
        limits: limits(cx, &l.limits)?,
        upgrades: upgrades(cx, &l.upgrades)?,
        admission,
    })
}

/// A size within `range` bytes, or its default.
fn size(
    cx: &Ctx,
    v: &Option<Spanned<Size>>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if !range.contains(&s.get_ref().0) => Err(cx.err(
            s.span(),
            format!(
                "{key} must be between {} and {} bytes, got {}",
                range.start(),
                range.end(),
                s.get_ref().0
            ),
        )),
        Some(s) => Ok(s.get_ref().0),
    }
}

fn limits(cx: &Ctx, l: &RawListenerLimits) -> Result<ListenerLimits, ConfigError> {
    Ok(ListenerLimits {
        // hyper needs room for at least a request line and a few headers.
        max_header_bytes: size(
            cx,
            &l.max_header_bytes,
            "max_header_bytes",
            1024..=1 << 20,
            65536,
        )? as usize,
        max_headers: cx.int(&l.max_headers, "max_headers", 1..=10_000, 100)? as usize,
        max_request_body: size(
            cx,
            &l.max_request_body,
            "max_request_body",
            0..=u64::MAX,
            100 << 20,
        )?,
        min_body_rate: size(cx, &l.min_body_rate, "min_body_rate", 0..=1 << 30, 500)?,
        max_connections_per_client: cx.int(
            &l.max_connections_per_client,
            "max_connections_per_client",
            1..=10_000_000,
            1000,
        )? as u32,
        h2_max_concurrent_streams: cx.int(
            &l.h2_max_concurrent_streams,
            "h2_max_concurrent_streams",
            1..=10_000,
            100,
        )? as u32,
        // RFC 9113 §6.9.2: windows run from the default 65535 up to 2^31-1.
        h2_window: size(
            cx,
            &l.h2_window,
            "h2_window",
            65_535..=(1 << 31) - 1,
            256 << 10,
        )? as u32,
    })
}

fn upgrades(
    cx: &Ctx,
    v: &Option<Spanned<Vec<Spanned<String>>>>,
) -> Result<Arc<[Box<str>]>, ConfigError> {
    let Some(list) = v else {
        return Ok(Arc::from([Box::from("websocket")]));
    };
    let mut out = Vec::new();
    for item in list.get_ref() {
        let t = item.get_ref().trim().to_ascii_lowercase();
        if t == "h2c" {
            return Err(cx.err(
                item.span(),
                "upgrades: h2c is never tunnelled (clients get h2 with prior knowledge instead)",
            ));
        }
        // RFC 9110 §7.8: a protocol name is a token.
        if t.is_empty()
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b))
        {
            return Err(cx.err(
                item.span(),
                format!(
                    "upgrades: {:?} is not a protocol name such as \"websocket\"",
                    item.get_ref()
                ),
            ));
        }
        out.push(t.into_boxed_str());
    }
    Ok(Arc::from(out))
}
