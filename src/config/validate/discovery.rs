//! Validation of the discovery keys: servers named by DNS host, `srv`, `[pool] dns` bounds,
//! `[pool.discovery] etcd`, and `[runtime] dns`. Like the rest of `validate`, it only reads
//! the raw schema and reports the first problem at its own line and column; it never
//! resolves a name or contacts a registry (that is `fulcrum check`'s job, and the runtime's).

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::super::schema::{RawPool, RawResolver, RawServer};
use super::super::{is_dns_name, DiscoverySettings, DnsServer, EtcdSettings, ResolverSettings};
use super::Ctx;
use crate::config::{ConfigError, PoolSettings};

/// Default `min_ttl`: a record with a shorter TTL is not asked for more often than this.
const MIN_TTL: Duration = Duration::from_secs(5);
/// Default `max_ttl`: a record with a longer TTL is still asked for again this often.
const MAX_TTL: Duration = Duration::from_secs(300);

/// `[runtime] dns`.
pub(super) fn resolver(
    cx: &Ctx,
    raw: &Option<Spanned<RawResolver>>,
) -> Result<ResolverSettings, ConfigError> {
    let Some(r) = raw else {
        return Ok(ResolverSettings::default());
    };
    let r = r.get_ref();
    let servers = match &r.servers {
        None => Vec::new(),
        Some(list) if list.get_ref().is_empty() => {
            return Err(cx.err(
                list.span(),
                "dns servers must not be empty; leave the key out to use /etc/resolv.conf",
            ))
        }
        Some(list) => list.get_ref().iter().map(|a| a.get_ref().0).collect(),
    };
    let timeout = match &r.timeout {
        None => None,
        Some(_) => Some(cx.dur(&r.timeout, "timeout", Duration::ZERO)?),
    };
    Ok(ResolverSettings { servers, timeout })
}

/// `[runtime] dns` without a pool that resolves names would do nothing: refused.
pub(super) fn refuse_unused_resolver(
    cx: &Ctx,
    raw: &Option<Spanned<RawResolver>>,
    pools: &[Arc<PoolSettings>],
) -> Result<(), ConfigError> {
    let uses_dns = pools
        .iter()
        .filter_map(|p| p.discovery.as_ref())
        .any(|d| !d.dns.is_empty() || d.srv.is_some());
    match raw {
        Some(r) if !uses_dns => Err(cx.err(
            r.span(),
            "runtime.dns applies only when a pool names servers by DNS (\"HOST:PORT\" servers or `srv`)",
        )),
        _ => Ok(()),
    }
}

/// A `servers` entry whose address is a DNS name.
pub(super) fn dns_server(
    cx: &Ctx,
    s: &RawServer,
    host: &str,
    port: u16,
    earlier: &[DnsServer],
    default_max_conns: Option<u32>,
) -> Result<DnsServer, ConfigError> {
    if earlier.iter().any(|d| d.host == host && d.port == port) {
        return Err(cx.err(
            s.addr.span(),
            format!("server {host}:{port} appears twice in this pool"),
        ));
    }
    let name = match &s.name {
        Some(n) => cx.name(n, "server")?,
        None => Arc::from(host),
    };
    if earlier.iter().any(|d| d.name == name) {
        let span = s.name.as_ref().map_or(s.addr.span(), |n| n.span());
        return Err(cx.err(
            span,
            format!("server name {:?} appears twice in this pool", &*name),
        ));
    }
    let max_conns = match &s.max_conns {
        None => default_max_conns,
        Some(_) => Some(cx.int(&s.max_conns, "max_conns", 1..=10_000_000, 1)? as u32),
    };
    Ok(DnsServer {
        host: host.to_string(),
        port,
        name,
        weight: s.weight(),
        backup: s.backup,
        max_conns,
    })
}

/// The pool's dynamic sources, or `None` when it has fixed addresses only.
pub(super) fn pool_discovery(
    cx: &Ctx,
    p: &RawPool,
    dns: Vec<DnsServer>,
    max_conns: Option<u32>,
) -> Result<Option<Arc<DiscoverySettings>>, ConfigError> {
    let srv = match &p.srv {
        None => None,
        Some(s) => {
            let n = s.get_ref().trim().trim_end_matches('.');
            if !is_dns_name(n) {
                return Err(cx.err(
                    s.span(),
                    format!("srv {:?} is not a DNS name; expected a name such as \"_http._tcp.app.internal\"", s.get_ref()),
                ));
            }
            Some(n.to_string())
        }
    };
    let resolves = !dns.is_empty() || srv.is_some();
    let (mut min_ttl, mut max_ttl) = (MIN_TTL, MAX_TTL);
    if let Some(t) = &p.dns {
        if !resolves {
            return Err(cx.err(
                t.span(),
                "dns applies only to a pool with \"HOST:PORT\" servers or `srv`",
            ));
        }
        let t = t.get_ref();
        min_ttl = cx.dur(&t.min_ttl, "min_ttl", MIN_TTL)?;
        max_ttl = cx.dur(&t.max_ttl, "max_ttl", MAX_TTL.max(min_ttl))?;
        if max_ttl < min_ttl {
            let span = t.max_ttl.as_ref().map_or(0..0, |s| s.span());
            return Err(cx.err(
                span,
                format!("max_ttl ({max_ttl:?}) must not be shorter than min_ttl ({min_ttl:?})"),
            ));
        }
    }
    let etcd = match p.discovery.as_ref().map(|d| d.get_ref()) {
        None => None,
        Some(d) => match &d.etcd {
            None => {
                let span = p.discovery.as_ref().map_or(0..0, |d| d.span());
                return Err(cx.err(
                    span,
                    "[pool.discovery] names no source; expected etcd = { endpoints = [\"http://127.0.0.1:2379\"], prefix = \"/services/app/\" }",
                ));
            }
            Some(e) => Some(etcd(cx, e)?),
        },
    };
    if !resolves && etcd.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(DiscoverySettings {
        dns,
        srv,
        etcd,
        min_ttl,
        max_ttl,
        max_conns,
    })))
}

fn etcd(cx: &Ctx, e: &Spanned<super::super::schema::RawEtcd>) -> Result<EtcdSettings, ConfigError> {
    let r = e.get_ref();
    if r.endpoints.get_ref().is_empty() {
        return Err(cx.err(
            r.endpoints.span(),
            "etcd endpoints must not be empty; expected [\"http://127.0.0.1:2379\"]",
        ));
    }
    let mut endpoints = Vec::new();
    for ep in r.endpoints.get_ref() {
        endpoints.push(endpoint(ep.get_ref()).map_err(|m| cx.err(ep.span(), m))?);
    }
    let prefix = r.prefix.get_ref();
    if prefix.is_empty() {
        return Err(cx.err(
            r.prefix.span(),
            "etcd prefix must not be empty (it would take every key of the cluster); expected a prefix such as \"/services/app/\"",
        ));
    }
    Ok(EtcdSettings {
        endpoints,
        prefix: prefix.clone(),
    })
}

/// `http://HOST:PORT`, normalised without a trailing slash.
fn endpoint(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "etcd endpoint {s:?} {why}; expected a client URL such as \"http://127.0.0.1:2379\""
        )
    };
    let uri: http::Uri = s.parse().map_err(|_| bad("is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("uses https, which is not supported yet")),
        _ => return Err(bad("is not an http:// URL")),
    }
    let Some(auth) = uri.authority() else {
        return Err(bad("has no host"));
    };
    if auth.port_u16().is_none() {
        return Err(bad("has no port"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("has a path"));
    }
    Ok(format!("http://{auth}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse, ServerOrigin};

    fn pool(extra: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"app\"\n\n[[pool]]\nname = \"app\"\n{extra}\n"
        );
        parse(&text, Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn names_become_dns_sources_and_addresses_stay_static() {
        let c = pool(r#"servers = [ { addr = "app.internal:9000", weight = 2 }, { addr = "10.0.0.9:9000", backup = true } ]"#).unwrap();
        let p = &c.pools[0];
        assert_eq!(p.servers.len(), 1, "the IP address is a static server");
        assert_eq!(p.servers[0].origin, ServerOrigin::File);
        let d = p.discovery.as_ref().expect("a dynamic pool");
        assert_eq!(d.dns[0].host, "app.internal");
        assert_eq!((d.dns[0].port, d.dns[0].weight), (9000, 2));
        assert_eq!(d.min_ttl, super::MIN_TTL);
        assert_eq!(d.max_ttl, super::MAX_TTL);
    }

    #[test]
    fn srv_and_etcd_pools_need_no_servers_key() {
        let c = pool(
            "srv = \"_http._tcp.app.internal\"\ndns = { min_ttl = \"1s\", max_ttl = \"10s\" }",
        )
        .unwrap();
        let d = c.pools[0].discovery.clone().unwrap();
        assert_eq!(d.srv.as_deref(), Some("_http._tcp.app.internal"));
        assert_eq!(d.min_ttl, std::time::Duration::from_secs(1));
        let c = pool("[pool.discovery]\netcd = { endpoints = [\"http://127.0.0.1:2379/\"], prefix = \"/services/app/\" }").unwrap();
        let e = c.pools[0].discovery.clone().unwrap().etcd.clone().unwrap();
        assert_eq!(e.endpoints, ["http://127.0.0.1:2379"]);
    }

    #[test]
    fn mistakes_are_refused_where_they_stand() {
        let cases = [
            ("servers = []", "has no servers"),
            (
                "servers = [ { addr = \"127.0.0.1:1\" } ]\ndns = { min_ttl = \"1s\" }",
                "dns applies only",
            ),
            (
                "srv = \"_http._tcp.app.internal\"\ndns = { min_ttl = \"10s\", max_ttl = \"1s\" }",
                "must not be shorter",
            ),
            ("srv = \"not a name\"", "is not a DNS name"),
            (
                "[pool.discovery]\netcd = { endpoints = [\"https://e:2379\"], prefix = \"/a/\" }",
                "https",
            ),
            (
                "[pool.discovery]\netcd = { endpoints = [], prefix = \"/a/\" }",
                "must not be empty",
            ),
            (
                "[pool.discovery]\netcd = { endpoints = [\"http://e:2379\"], prefix = \"\" }",
                "prefix must not be empty",
            ),
            (
                "servers = [ { addr = \"a.b:1\" }, { addr = \"a.b:1\" } ]",
                "appears twice",
            ),
        ];
        for (extra, want) in cases {
            let e = pool(extra).expect_err(extra);
            assert!(e.contains(want) && e.contains("t.toml:"), "{extra}: {e}");
        }
        let text = "[runtime]\ndns = { servers = [\"127.0.0.1:53\"] }\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nservers = [ { addr = \"127.0.0.1:1\" } ]\n";
        let e = parse(text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("runtime.dns applies only"), "{e}");
    }
}
