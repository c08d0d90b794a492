//! DNS sources: a `HOST:PORT` server (each address of the host a server, named
//! `HOST#IP`) and a pool's SRV name (lowest priority the primary tier, the next one the
//! backup tier, SRV weight as weight, each target address a server named
//! `TARGET#IP:PORT`).
//!
//! Lookups go through `hickory-resolver` on the runtime, never a blocking `getaddrinfo`. A
//! name is looked up again when its answer's TTL runs out, clamped to the pool's
//! `dns = { min_ttl, max_ttl }` (the resolver's cache is clamped the same way, so a
//! re-resolution is a real query). A failed lookup, or an answer with no address, keeps the
//! last good set and is retried after `min_ttl`: a name that vanishes from DNS is far more
//! often a mistake than a wish to send every request a 503.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use super::task::{Episode, SourceCx};
use super::DiscoveredServer;
use crate::config::{DiscoverySettings, DnsServer, ResolverSettings, ServerOrigin, MAX_WEIGHT};

/// Why a lookup gave no servers.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver could not be set up (no usable `/etc/resolv.conf`, say).
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
    /// The lookup failed (no answer, NXDOMAIN, a server error).
    #[error("{0}")]
    Lookup(#[from] hickory_resolver::ResolveError),
    /// The answer held no usable record.
    #[error("{0} has no usable records")]
    Empty(String),
}

/// The resolver of one pool, its cache clamped to the pool's TTL bounds.
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// A resolver asking `r.servers` (or those of `/etc/resolv.conf`), with `d`'s TTL bounds.
    pub async fn new(r: &ResolverSettings, d: &DiscoverySettings) -> Result<Resolver, DnsError> {
        let (r, d) = (r.clone(), d.clone());
        // Reading /etc/resolv.conf and /etc/hosts is file I/O: off the runtime's workers.
        let built = tokio::task::spawn_blocking(move || build(&r, &d)).await;
        match built {
            Ok(res) => res.map(|inner| Resolver { inner }),
            Err(e) => Err(DnsError::Setup(e.to_string())),
        }
    }

    /// The addresses of `host` (IPv4 if it has any, else IPv6), sorted, with when to ask again.
    pub async fn addresses(
        &self,
        host: &str,
    ) -> Result<(Vec<std::net::IpAddr>, Instant), DnsError> {
        let ips = self.inner.lookup_ip(fqdn(host)).await?;
        let mut v: Vec<_> = ips.iter().collect();
        v.sort();
        v.dedup();
        if v.is_empty() {
            return Err(DnsError::Empty(host.to_string()));
        }
        Ok((v, ips.valid_until()))
    }

    /// The servers of a `HOST:PORT` entry, with when to ask again.
    pub async fn name(
        &self,
        d: &DnsServer,
        key: &Arc<str>,
    ) -> Result<(Vec<DiscoveredServer>, Instant), DnsError> {
        let (ips, until) = self.addresses(&d.host).await?;
        let servers = ips
            .into_iter()
            .map(|ip| DiscoveredServer {
                name: Arc::from(format!("{}#{ip}", d.name)),
                addr: SocketAddr::new(ip, d.port),
                weight: d.weight,
                backup: d.backup,
                max_conns: d.max_conns,
                origin: ServerOrigin::Dns,
                source: key.clone(),
            })
            .collect();
        Ok((servers, until))
    }

    /// The servers of an SRV name, with when to ask again (the earliest expiry of the SRV
    /// answer and its targets' addresses). Priorities past the second are not used; targets
    /// that do not resolve are left out (logged), unless none resolves.
    pub async fn srv(
        &self,
        name: &str,
        pool: &str,
        key: &Arc<str>,
        max_conns: Option<u32>,
    ) -> Result<(Vec<DiscoveredServer>, Instant), DnsError> {
        let answer = self.inner.srv_lookup(fqdn(name)).await?;
        let mut until = answer.as_lookup().valid_until();
        let mut records: Vec<_> = answer
            .iter()
            // RFC 2782: a target of "." means the service is decidedly not available there.
            .filter(|r| !r.target().is_root())
            .map(|r| (r.priority(), r.weight(), r.port(), r.target().to_utf8()))
            .collect();
        records.sort();
        let mut priorities: Vec<u16> = records.iter().map(|r| r.0).collect();
        priorities.dedup();
        if priorities.len() > 2 {
            tracing::debug!(pool, srv = name, priorities = ?priorities, "SRV priorities past the second are not used");
        }
        let mut servers = Vec::new();
        let mut last_err = None;
        for (prio, weight, port, target) in records {
            let backup = match priorities.iter().position(|p| *p == prio) {
                Some(0) => false,
                Some(1) => true,
                _ => continue,
            };
            let target = target.trim_end_matches('.').to_string();
            match self.addresses(&target).await {
                Ok((ips, t)) => {
                    until = until.min(t);
                    servers.extend(ips.into_iter().map(|ip| DiscoveredServer {
                        name: Arc::from(format!("{target}#{}", SocketAddr::new(ip, port))),
                        addr: SocketAddr::new(ip, port),
                        // RFC 2782 weight 0 means "rarely": the lowest weight we have.
                        weight: u32::from(weight).clamp(1, MAX_WEIGHT),
                        backup,
                        max_conns,
                        origin: ServerOrigin::Srv,
                        source: key.clone(),
                    }));
                }
                Err(e) => {
                    tracing::debug!(pool, srv = name, target = %target, error = %e, "SRV target does not resolve; left out");
                    last_err = Some(e);
                }
            }
        }
        match (servers.is_empty(), last_err) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(DnsError::Empty(name.to_string())),
            (false, _) => Ok((servers, until)),
        }
    }
}

fn build(r: &ResolverSettings, d: &DiscoverySettings) -> Result<TokioResolver, DnsError> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if r.servers.is_empty() {
        TokioResolver::builder(provider).map_err(|e| DnsError::Setup(e.to_string()))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for a in &r.servers {
            // UDP first; TCP for answers too long for a datagram.
            group.push(NameServerConfig::new(*a, Protocol::Udp));
            group.push(NameServerConfig::new(*a, Protocol::Tcp));
        }
        let mut b = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), group),
            provider,
        );
        // Explicit name servers are the whole truth: /etc/hosts does not override them.
        b.options_mut().use_hosts_file = ResolveHosts::Never;
        b
    };
    let o: &mut ResolverOpts = builder.options_mut();
    if let Some(t) = r.timeout {
        o.timeout = t;
    }
    o.positive_min_ttl = Some(d.min_ttl);
    o.positive_max_ttl = Some(d.max_ttl);
    // A failure is retried after min_ttl: a cached NXDOMAIN must not outlive that.
    o.negative_max_ttl = Some(d.min_ttl);
    Ok(builder.build())
}

/// `host` as a fully qualified name, so that search domains never rewrite it.
fn fqdn(host: &str) -> String {
    if host.ends_with('.') {
        host.to_string()
    } else {
        format!("{host}.")
    }
}

/// How long to wait before asking again: the answer's remaining TTL within the bounds.
pub fn next_lookup(until: Instant, d: &DiscoverySettings) -> Duration {
    until
        .saturating_duration_since(Instant::now())
        .clamp(d.min_ttl, d.max_ttl)
}

/// Runs a `HOST:PORT` source until cancelled.
pub async fn run_name(d: &DnsServer, cx: &SourceCx) {
    let what = format!("resolving {}", d.host);
    run(cx, &what, || async {
        cx.resolver
            .as_ref()
            .map_err(|e| DnsError::Setup(e.to_string()))?
            .name(d, &cx.key)
            .await
    })
    .await
}

/// Runs a pool's SRV source until cancelled.
pub async fn run_srv(name: &str, cx: &SourceCx) {
    let what = format!("SRV lookup of {name}");
    let max_conns = cx.settings.max_conns;
    run(cx, &what, || async {
        cx.resolver
            .as_ref()
            .map_err(|e| DnsError::Setup(e.to_string()))?
            .srv(name, &cx.pool, &cx.key, max_conns)
            .await
    })
    .await
}

/// The lookup loop both kinds share: report, then sleep for the TTL (or `min_ttl` after a
/// failure).
async fn run<F, Fut>(cx: &SourceCx, what: &str, lookup: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<DiscoveredServer>, Instant), DnsError>>,
{
    let mut episode = Episode::default();
    loop {
        let wait = match lookup().await {
            Ok((servers, until)) => {
                episode.ok(cx, what);
                cx.found(servers).await;
                next_lookup(until, &cx.settings)
            }
            Err(e) => {
                episode.failed(cx, what, &e);
                cx.failed().await;
                cx.settings.min_ttl
            }
        };
        tokio::time::sleep(wait).await;
    }
}
