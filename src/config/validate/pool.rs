//! `[[pool]]`: servers, the balancing algorithm and its keys, stickiness, timeouts and
//! limits (health checks are in `health`). Pool names are unique; the first duplicate is
//! reported with the line of the first definition.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::super::schema::*;
use super::super::*;
use super::{discovery, health, no_effect, Ctx};
use crate::balance::Algorithm;

/// Every `[[pool]]`, in order.
pub(super) fn pools(
    cx: &Ctx,
    raw_pools: &[RawPool],
    served: crate::tls::Served,
) -> Result<Vec<Arc<PoolSettings>>, ConfigError> {
    let mut pools = Vec::with_capacity(raw_pools.len());
    let mut pool_names: HashMap<String, Range<usize>> = HashMap::new();
    for p in raw_pools {
        if let Some(first) = pool_names.get(p.name.get_ref()) {
            let line = Location::of_offset(cx.text, first.start).line;
            return Err(cx.err(
                p.name.span(),
                format!(
                    "duplicate pool name {:?} (first defined at line {line})",
                    p.name.get_ref()
                ),
            ));
        }
        pool_names.insert(p.name.get_ref().clone(), p.name.span());
        let settings = pool(cx, p)?;
        no_effect::pool(cx, p, &settings)?;
        if let (Some(t), false) = (&p.tls, served.upstream_tls) {
            return Err(cx.err(
                t.span(),
                "pool tls: TLS towards servers is not supported yet",
            ));
        }
        pools.push(Arc::new(settings));
    }
    Ok(pools)
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
        health: health::health(cx, &p.health)?,
        passive: health::passive(cx, &p.passive)?,
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
