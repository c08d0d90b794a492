//! Turns the raw schema into typed settings, applying defaults and checking everything that
//! one value cannot check alone: unique names and binds, pool references, key combinations.
//! The first problem found is reported, at its own line and column.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::schema::*;
use super::types::{Dur, Size};
use super::*;
use crate::balance::Algorithm;

mod discovery;
mod no_effect;
mod pool_users;

/// What every check needs: the text for positions, the path for messages, and the
/// warnings found so far.
pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    warnings: RefCell<Vec<ConfigWarning>>,
}

impl Ctx<'_> {
    /// A warning at byte span `span`.
    pub(super) fn warn(&self, span: Range<usize>, msg: impl Into<String>) {
        self.warnings.borrow_mut().push(ConfigWarning {
            path: self.path.to_path_buf(),
            location: Location::of_offset(self.text, span.start),
            message: msg.into(),
        });
    }

    pub(super) fn err(&self, span: Range<usize>, msg: impl Into<String>) -> ConfigError {
        ConfigError::at(self.path, self.text, span, msg)
    }

    /// A duration that must not be zero, or its default.
    pub(super) fn dur(
        &self,
        v: &Option<Spanned<Dur>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if s.get_ref().0.is_zero() => {
                Err(self.err(s.span(), format!("{key} must be greater than zero")))
            }
            Some(s) => Ok(s.get_ref().0),
        }
    }

    /// An integer within `range`, or its default.
    pub(super) fn int(
        &self,
        v: &Option<Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) if !range.contains(s.get_ref()) => Err(self.err(
                s.span(),
                format!(
                    "{key} must be between {} and {}, got {}",
                    range.start(),
                    range.end(),
                    s.get_ref()
                ),
            )),
            Some(s) => Ok(*s.get_ref()),
        }
    }

    /// A string that must be one of `choices`.
    pub(super) fn choice<'s>(
        &self,
        v: &'s Option<Spanned<String>>,
        key: &str,
        choices: &[&str],
    ) -> Result<Option<&'s str>, ConfigError> {
        match v {
            None => Ok(None),
            Some(s) if choices.contains(&s.get_ref().as_str()) => Ok(Some(s.get_ref().as_str())),
            Some(s) => Err(self.err(
                s.span(),
                format!(
                    "unknown {key} {:?}, expected one of {}",
                    s.get_ref(),
                    choices
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    pub(super) fn name(&self, v: &Spanned<String>, what: &str) -> Result<Arc<str>, ConfigError> {
        let n = v.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if ok {
            Ok(Arc::from(n.as_str()))
        } else {
            Err(self.err(
                v.span(),
                format!("{what} name {n:?} is invalid; expected 1 to 64 characters of A-Z a-z 0-9 - _ . :"),
            ))
        }
    }
}

pub(super) fn validate(raw: RawConfig, text: &str, path: &Path) -> Result<Config, ConfigError> {
    validate_with(raw, text, path, crate::tls::SERVED)
}

/// `served`: the TLS features this build's listeners and proxies serve; a config that sets
/// one that is validated but not served yet is refused, never accepted and ignored.
pub(super) fn validate_with(
    raw: RawConfig,
    text: &str,
    path: &Path,
    served: crate::tls::Served,
) -> Result<Config, ConfigError> {
    let cx = Ctx {
        text,
        path,
        warnings: RefCell::new(Vec::new()),
    };

    let runtime = RuntimeSettings {
        worker_threads: match &raw.runtime.worker_threads {
            None => None,
            Some(_) => {
                Some(cx.int(&raw.runtime.worker_threads, "worker_threads", 1..=1024, 1)? as usize)
            }
        },
        shutdown_grace: cx.dur(
            &raw.runtime.shutdown_grace,
            "shutdown_grace",
            Duration::from_secs(30),
        )?,
        drain_timeout: cx.dur(
            &raw.runtime.drain_timeout,
            "drain_timeout",
            Duration::from_secs(30),
        )?,
        max_connections: cx.int(
            &raw.runtime.max_connections,
            "max_connections",
            1..=10_000_000,
            100_000,
        )? as usize,
        reload_guard: reload_guard(&cx, raw.runtime.reload_guard.as_ref())?,
        dns: discovery::resolver(&cx, &raw.runtime.dns)?,
    };

    no_effect::admin(&cx, &raw.admin)?;
    let admin = if raw.admin.enabled == Some(false) {
        None
    } else {
        Some(AdminSettings {
            bind: raw
                .admin
                .bind
                .as_ref()
                .map_or(SocketAddr::from(([127, 0, 0, 1], 9901)), |b| b.get_ref().0),
            token_file: raw
                .admin
                .token_file
                .as_ref()
                .map(|t| PathBuf::from(t.get_ref())),
            allow_unauthenticated_loopback: raw
                .admin
                .allow_unauthenticated_loopback
                .as_ref()
                .is_some_and(|a| *a.get_ref()),
            read_auth: match &raw.admin.read_auth {
                Some(r) if *r.get_ref() && raw.admin.token_file.is_none() => {
                    return Err(cx.err(
                        r.span(),
                        "admin.read_auth = true needs admin.token_file: reads would check a token that does not exist",
                    ))
                }
                Some(r) => *r.get_ref(),
                None => false,
            },
        })
    };

    no_effect::access_log(&cx, &raw.access_log)?;
    let access_log = if raw.access_log.enabled == Some(true) {
        let format = match cx.choice(
            &raw.access_log.format,
            "access_log format",
            &["combined", "json"],
        )? {
            Some("json") => AccessLogFormat::Json,
            _ => AccessLogFormat::Combined,
        };
        Some(AccessLogSettings {
            target: match raw.access_log.path.as_ref().map(|p| p.get_ref().as_str()) {
                None | Some("stderr") => AccessLogTarget::Stderr,
                Some(p) => AccessLogTarget::File(PathBuf::from(p)),
            },
            format,
            buffer: cx.int(&raw.access_log.buffer, "buffer", 1..=1 << 20, 4096)? as usize,
        })
    } else {
        None
    };

    // Pools first, so listeners can be checked against them.
    let mut pools = Vec::with_capacity(raw.pool.len());
    let mut pool_names: HashMap<String, Range<usize>> = HashMap::new();
    for p in &raw.pool {
        if let Some(first) = pool_names.get(p.name.get_ref()) {
            let line = Location::of_offset(text, first.start).line;
            return Err(cx.err(
                p.name.span(),
                format!(
                    "duplicate pool name {:?} (first defined at line {line})",
                    p.name.get_ref()
                ),
            ));
        }
        pool_names.insert(p.name.get_ref().clone(), p.name.span());
        let settings = pool(&cx, p)?;
        no_effect::pool(&cx, p, &settings)?;
        if let (Some(t), false) = (&p.tls, served.upstream_tls) {
            return Err(cx.err(
                t.span(),
                "pool tls: TLS towards servers is not supported yet",
            ));
        }
        pools.push(Arc::new(settings));
    }

    let mut listeners = Vec::with_capacity(raw.listener.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut binds: HashMap<SocketAddr, String> = HashMap::new();
    if let Some(a) = &admin {
        if a.bind.port() != 0 {
            binds.insert(a.bind, "the admin listener".into());
        }
    }
    for l in &raw.listener {
        let name = cx.name(&l.name, "listener")?;
        if let Some(first) = names.get(l.name.get_ref()) {
            let line = Location::of_offset(text, *first).line;
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
        let pool_exists = |p: &Spanned<String>| {
            if pool_names.contains_key(p.get_ref()) {
                return Ok(());
            }
            let known: Vec<_> = raw
                .pool
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
        let defined: Vec<&Spanned<String>> = raw.pool.iter().map(|p| &p.name).collect();
        if protocol == Protocol::Http {
            if let Some(r) = &l.route_by_sni {
                return Err(cx.err(r.span(), "route_by_sni applies only to protocol = \"tcp\" listeners (an http listener routes after TLS termination, with [[listener.route]])"));
            }
            if let Some(d) = &l.default_pool {
                return Err(cx.err(d.span(), "default_pool applies only with route_by_sni; an http listener's default pool is `pool`"));
            }
        }
        let routing = super::route::routing(&cx, l, &name, protocol, &defined)?;
        // tcp: `pool`, or `route_by_sni` with its default; http: routes and a default pool.
        let (pool, sni_routes) = match protocol {
            Protocol::Tcp => {
                let (p, sni) = sni_routes::listener_pools(
                    &cx,
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
                let settings = tls::listener_tls(&cx, t, protocol)?;
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
        no_effect::listener(&cx, l, protocol)?;
        let admission = super::admission::validate(
            &super::admission::RawAdmission {
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
        listeners.push(ListenerSettings {
            name,
            bind,
            protocol,
            pool,
            request_id: l.request_id.as_ref().map_or(true, |b| *b.get_ref()),
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
                keepalive_idle: cx.dur(
                    &t.keepalive_idle,
                    "keepalive_idle",
                    Duration::from_secs(60),
                )?,
                tunnel_idle: cx.dur(&t.tunnel_idle, "tunnel_idle", Duration::from_secs(600))?,
                first_byte: cx.dur(&t.first_byte, "first_byte", Duration::from_secs(10))?,
                body_read: cx.dur(&t.body_read, "body_read", Duration::from_secs(30))?,
                send_stall: cx.dur(&t.send_stall, "send_stall", Duration::from_secs(60))?,
            },
            limits: limits(&cx, &l.limits)?,
            upgrades: upgrades(&cx, &l.upgrades)?,
            admission,
        });
    }
    pool_users::check(&cx, &raw.pool, &listeners)?;

    discovery::refuse_unused_resolver(&cx, &raw.runtime.dns, &pools)?;
    Ok(Config {
        source: path.to_path_buf(),
        runtime,
        admin,
        access_log,
        listeners,
        pools,
        warnings: {
            let mut w = cx.warnings.into_inner();
            w.sort_by_key(|w| (w.location.line, w.location.column));
            w
        },
    })
}

fn reload_guard(
    cx: &Ctx,
    g: Option<&Spanned<RawReloadGuard>>,
) -> Result<Option<ReloadGuard>, ConfigError> {
    let Some(g) = g else { return Ok(None) };
    let r = g.get_ref();
    if r.enabled == Some(false) {
        no_effect::reload_guard(cx, r)?;
        return Ok(None);
    }
    let max_error_ratio = match &r.max_error_ratio {
        None => 0.2,
        Some(v) if *v.get_ref() > 0.0 && *v.get_ref() < 1.0 => *v.get_ref(),
        Some(v) => {
            return Err(cx.err(
                v.span(),
                format!(
                    "max_error_ratio must be between 0 and 1 (exclusive), got {}",
                    v.get_ref()
                ),
            ))
        }
    };
    Ok(Some(ReloadGuard {
        window: cx.dur(&r.window, "window", Duration::from_secs(30))?,
        max_error_ratio,
        min_requests: cx.int(&r.min_requests, "min_requests", 1..=1_000_000_000, 50)? as u64,
    }))
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

fn pool(cx: &Ctx, p: &RawPool) -> Result<PoolSettings, ConfigError> {
    let name = cx.name(&p.name, "pool")?;
    let raw_servers = p
        .servers
        .as_ref()
        .map_or(&[][..], |s| s.get_ref().as_slice());
    if raw_servers.is_empty() && p.srv.is_none() && p.discovery.is_none() {
        let span = p.servers.as_ref().map_or(p.name.span(), |s| s.span());
        return Err(cx.err(
            span,
            format!(
                "pool {:?} has no servers; expected at least one {{ addr = \"IP:PORT\" }} (or \"HOST:PORT\"), `srv` or `[pool.discovery]`",
                &*name
            ),
        ));
    }
    let default_max_conns = match &p.max_conns {
        None => None,
        Some(_) => Some(cx.int(&p.max_conns, "max_conns", 1..=10_000_000, 1)? as u32),
    };
    let mut servers: Vec<ServerSettings> = Vec::with_capacity(raw_servers.len());
    let mut dns_servers: Vec<DnsServer> = Vec::new();
    for s in raw_servers {
        let addr = match s.addr.get_ref() {
            ServerAddr::Ip(a) => *a,
            ServerAddr::Name(host, port) => {
                dns_servers.push(discovery::dns_server(
                    cx,
                    s,
                    host,
                    *port,
                    &dns_servers,
                    default_max_conns,
                )?);
                continue;
            }
        };
        let sname = match &s.name {
            Some(n) => cx.name(n, "server")?,
            None => Arc::from(addr.to_string()),
        };
        if servers.iter().any(|o| o.addr == addr) {
            return Err(cx.err(
                s.addr.span(),
                format!("server {addr} appears twice in pool {:?}", &*name),
            ));
        }
        if servers.iter().any(|o| o.name == sname) {
            let span = s.name.as_ref().map_or(s.addr.span(), |n| n.span());
            return Err(cx.err(
                span,
                format!(
                    "server name {:?} appears twice in pool {:?}",
                    &*sname, &*name
                ),
            ));
        }
        let max_conns = match &s.max_conns {
            None => default_max_conns,
            Some(_) => Some(cx.int(&s.max_conns, "max_conns", 1..=10_000_000, 1)? as u32),
        };
        servers.push(ServerSettings {
            name: sname,
            addr,
            weight: s.weight(),
            backup: s.backup,
            max_conns,
            origin: ServerOrigin::File,
        });
    }
    let discovery = discovery::pool_discovery(cx, p, dns_servers, default_max_conns)?;

    let raw_alg = p.algorithm.unwrap_or(RawAlgorithm::RoundRobin);
    let algorithm = match raw_alg {
        RawAlgorithm::RoundRobin => Algorithm::RoundRobin,
        RawAlgorithm::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        RawAlgorithm::LeastConn => Algorithm::LeastConn,
        RawAlgorithm::IpHash => Algorithm::IpHash,
        RawAlgorithm::Random => Algorithm::Random,
        RawAlgorithm::P2c => Algorithm::P2c,
        RawAlgorithm::ConsistentHash => Algorithm::ConsistentHash {
            vnodes_per_weight: cx.int(&p.virtual_nodes, "virtual_nodes", 1..=1000, 100)? as u32,
            balance_factor: match &p.hash_balance_factor {
                None => None,
                Some(f) if *f.get_ref() > 1.0 && f.get_ref().is_finite() => Some(*f.get_ref()),
                Some(f) => {
                    return Err(cx.err(
                        f.span(),
                        format!(
                            "hash_balance_factor must be greater than 1.0 (e.g. 1.25), got {}",
                            f.get_ref()
                        ),
                    ))
                }
            },
        },
    };
    if raw_alg != RawAlgorithm::ConsistentHash {
        for (key, span) in [
            ("hash_key", p.hash_key.as_ref().map(|s| s.span())),
            ("virtual_nodes", p.virtual_nodes.as_ref().map(|s| s.span())),
            (
                "hash_balance_factor",
                p.hash_balance_factor.as_ref().map(|s| s.span()),
            ),
        ] {
            if let Some(span) = span {
                return Err(cx.err(
                    span,
                    format!("{key} applies only to algorithm = \"consistent_hash\""),
                ));
            }
        }
    }
    let hash_key = match &p.hash_key {
        None => HashKey::ClientIp,
        Some(k) => hash_key(cx, k)?,
    };

    let sticky_cookie = match &p.sticky {
        None => None,
        Some(s) => {
            let c = s.cookie.get_ref();
            if c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(cx.err(
                    s.cookie.span(),
                    format!("sticky cookie name {c:?} is invalid; expected letters, digits, - _ ."),
                ));
            }
            Some(c.clone())
        }
    };

    let upstream_protocol =
        match cx.choice(&p.upstream_protocol, "upstream_protocol", &["http1", "h2"])? {
            Some("h2") => UpstreamProtocol::H2,
            _ => UpstreamProtocol::Http1,
        };
    let retry_budget = match &p.retry_budget {
        None => 0.2,
        Some(b) if (0.0..=1.0).contains(b.get_ref()) => *b.get_ref(),
        Some(b) => {
            return Err(cx.err(
                b.span(),
                format!(
                    "retry_budget must be between 0.0 and 1.0, got {}",
                    b.get_ref()
                ),
            ))
        }
    };
    let slow_start = match &p.slow_start {
        None => None,
        Some(_) => Some(cx.dur(&p.slow_start, "slow_start", Duration::ZERO)?),
    };
    let t = &p.timeouts;
    Ok(PoolSettings {
        algorithm,
        hash_key,
        sticky_cookie,
        retries: cx.int(
            &p.retries,
            "retries",
            0..=i64::from(crate::proxy::attempts::MAX_RETRIES),
            2,
        )? as u32,
        retry_budget,
        upstream_protocol,
        slow_start,
        max_queue: cx.int(&p.max_queue, "max_queue", 0..=1_000_000, 1024)? as usize,
        queue_timeout: cx.dur(&p.queue_timeout, "queue_timeout", Duration::from_secs(5))?,
        timeouts: PoolTimeouts {
            connect: cx.dur(&t.connect, "connect", Duration::from_secs(3))?,
            response_header: cx.dur(
                &t.response_header,
                "response_header",
                Duration::from_secs(60),
            )?,
            upstream_idle: cx.dur(&t.upstream_idle, "upstream_idle", Duration::from_secs(4))?,
            upstream_read_idle: cx.dur(
                &t.upstream_read_idle,
                "upstream_read_idle",
                Duration::from_secs(60),
            )?,
        },
        health: health(cx, &p.health)?,
        passive: passive(cx, &p.passive)?,
        tls: p
            .tls
            .as_ref()
            .map(|t| tls::upstream_tls(cx, t))
            .transpose()?,
        name,
        servers,
        discovery,
    })
}

fn hash_key(cx: &Ctx, k: &Spanned<String>) -> Result<HashKey, ConfigError> {
    parse_hash_key(k.get_ref()).map_err(|m| cx.err(k.span(), m))
}

/// `client_ip`, `header:NAME`, `cookie:NAME`, `path` or `uri`.
pub(crate) fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    let bad = |what: &str| {
        format!("invalid hash_key {s:?}: {what}; expected \"client_ip\", \"header:NAME\", \"cookie:NAME\", \"path\" or \"uri\"")
    };
    Ok(match s {
        "client_ip" => HashKey::ClientIp,
        "path" => HashKey::Path,
        "uri" => HashKey::Uri,
        _ => {
            if let Some(h) = s.strip_prefix("header:") {
                HashKey::Header(
                    http::HeaderName::from_bytes(h.trim().as_bytes())
                        .map_err(|_| bad("not a valid header name"))?,
                )
            } else if let Some(c) = s.strip_prefix("cookie:") {
                if c.trim().is_empty() {
                    return Err(bad("empty cookie name"));
                }
                HashKey::Cookie(c.trim().to_string())
            } else {
                return Err(bad("unknown key"));
            }
        }
    })
}

fn health(cx: &Ctx, h: &RawHealth) -> Result<HealthSettings, ConfigError> {
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
        Some(f) if f.enabled.as_ref().map_or(true, |e| *e.get_ref()) => {
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

fn passive(cx: &Ctx, p: &RawPassive) -> Result<PassiveSettings, ConfigError> {
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
