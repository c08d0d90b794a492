//! Server discovery: DNS names, SRV records and etcd registrations that publish server sets
//! into pools while fulcrum runs, through the same path a reload of one pool takes.
//!
//! Each pool with dynamic sources gets one task (`task`) that runs its [`Source`]s
//! (`dns`, `etcd`), keeps each source's last good set, and publishes their union through
//! the one function the runtime gives it ([`Publish`]: `Fulcrum::publish_discovered`). The
//! runtime merges that union with the pool's static servers ([`merge`]) and swaps the pool as a
//! reload would: servers that stay keep their state in the backend registry (health,
//! counters, connections); new ones are probed before they take traffic.
//!
//! What it must never do: block a runtime worker (lookups are asynchronous, through
//! `hickory-resolver`), take a pool down because a source failed (the last good set stays),
//! or touch a pool directly: pools change only through `Publish`.

pub mod check;
pub(crate) mod dns;
pub(crate) mod etcd;
pub(crate) mod gateway;
mod task;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{
    Config, DiscoverySettings, DnsServer, EtcdSettings, PoolSettings, ResolverSettings,
    ServerOrigin, ServerSettings,
};
use crate::metrics::Metrics;

/// One server a source found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredServer {
    /// Name in metrics, logs and the admin API (`app.internal#10.0.0.7`, an etcd key...).
    pub name: Arc<str>,
    /// Address.
    pub addr: SocketAddr,
    /// Weight, 1..=256.
    pub weight: u32,
    /// Backup tier.
    pub backup: bool,
    /// In-flight limit.
    pub max_conns: Option<u32>,
    /// Kind of source.
    pub origin: ServerOrigin,
    /// The source that found it ([`Source::key`]).
    pub source: Arc<str>,
}

impl DiscoveredServer {
    /// As a pool's server.
    pub fn settings(&self) -> ServerSettings {
        ServerSettings {
            name: self.name.clone(),
            addr: self.addr,
            weight: self.weight,
            backup: self.backup,
            max_conns: self.max_conns,
            origin: self.origin,
        }
    }
}

/// The runtime's one entry point for discovery: installs the set as the dynamic servers of
/// the named pool, exactly as a reload of that one pool would, and completes once the
/// servers it added have had their first health probe (bounded by the probe timeout).
pub type Publish =
    Arc<dyn Fn(Arc<str>, Arc<[DiscoveredServer]>) -> BoxFuture<'static, ()> + Send + Sync>;

/// One dynamic source of servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A `HOST:PORT` server: each address the host resolves to.
    Dns(DnsServer),
    /// The pool's SRV name.
    Srv(String),
    /// The pool's etcd prefix.
    Etcd(EtcdSettings),
}

impl Source {
    /// The sources of a pool, in a fixed order (names in file order, SRV, etcd), so that
    /// every instance builds the same server list from the same answers.
    pub fn all(d: &DiscoverySettings) -> Vec<Source> {
        let mut v: Vec<Source> = d.dns.iter().cloned().map(Source::Dns).collect();
        v.extend(d.srv.iter().cloned().map(Source::Srv));
        v.extend(d.etcd.iter().cloned().map(Source::Etcd));
        v
    }

    /// What identifies it across reloads (a restarted task takes back its last good set).
    pub fn key(&self) -> Arc<str> {
        Arc::from(match self {
            Source::Dns(d) => format!("dns:{}:{}", d.host, d.port),
            Source::Srv(n) => format!("srv:{n}"),
            Source::Etcd(e) => format!("etcd:{}@{}", e.prefix, e.endpoints.join(",")),
        })
    }

    /// The `source` label of `fulcrum_discovery_errors_total`.
    pub fn kind(&self) -> ServerOrigin {
        match self {
            Source::Dns(_) => ServerOrigin::Dns,
            Source::Srv(_) => ServerOrigin::Srv,
            Source::Etcd(_) => ServerOrigin::Etcd,
        }
    }
}

/// `ps` with `found` added to its static servers: an address already listed is skipped (the
/// file wins, then the earlier source), and a name already taken gets `#ADDR` appended.
pub fn merge(ps: &PoolSettings, found: &[DiscoveredServer]) -> PoolSettings {
    let mut servers: Vec<ServerSettings> = ps
        .servers
        .iter()
        .filter(|s| s.origin == ServerOrigin::File)
        .cloned()
        .collect();
    for f in found {
        if servers.iter().any(|s| s.addr == f.addr) {
            continue;
        }
        let mut s = f.settings();
        if servers.iter().any(|o| o.name == s.name) {
            s.name = Arc::from(format!("{}#{}", s.name, s.addr));
        }
        servers.push(s);
    }
    PoolSettings {
        servers,
        ..ps.clone()
    }
}

/// What a pool's task was started with; a reload that changes it restarts the task.
#[derive(Clone, PartialEq, Eq)]
struct TaskKey {
    settings: Arc<DiscoverySettings>,
    resolver: ResolverSettings,
}

struct PoolTask {
    key: TaskKey,
    cancel: CancellationToken,
    ready: watch::Receiver<bool>,
}

/// The discovery tasks of a running fulcrum and the sets they last published.
#[derive(Default)]
pub struct Discovery {
    /// Last published set per pool: what a reload merges into the pool. A `std` mutex:
    /// held for a map operation, never across an `.await`.
    found: Mutex<HashMap<Arc<str>, Arc<[DiscoveredServer]>>>,
    /// Running tasks per pool (same kind of mutex, same reason).
    tasks: Mutex<HashMap<Arc<str>, PoolTask>>,
}

impl Discovery {
    /// The set last published for `pool`.
    pub fn found(&self, pool: &str) -> Option<Arc<[DiscoveredServer]>> {
        lock(&self.found).get(pool).cloned()
    }

    /// Records the set being published for `pool` (called by the runtime's publish, under
    /// its lock, so a reload sees either the old set or the new one, never half).
    pub fn set_found(&self, pool: &Arc<str>, found: Arc<[DiscoveredServer]>) {
        lock(&self.found).insert(pool.clone(), found);
    }

    /// `cfg`'s pools with each dynamic pool's last published servers merged in: what a
    /// reload builds, so that discovered servers survive it.
    pub fn effective(&self, cfg: &Config) -> Config {
        let found = lock(&self.found);
        let pools = cfg
            .pools
            .iter()
            .map(|p| match (&p.discovery, found.get(&p.name)) {
                (Some(d), Some(f)) => Arc::new(merge(p, &still_configured(d, f))),
                _ => p.clone(),
            })
            .collect();
        Config {
            pools,
            ..cfg.clone()
        }
    }

    /// Starts, keeps, restarts or stops pool tasks to match `cfg`; `publish` is how they
    /// reach the runtime.
    pub fn sync(&self, cfg: &Config, publish: &Publish, metrics: &Arc<Metrics>) {
        let mut tasks = lock(&self.tasks);
        let mut found = lock(&self.found);
        let mut next = HashMap::new();
        for p in &cfg.pools {
            let Some(d) = &p.discovery else { continue };
            let key = TaskKey {
                settings: d.clone(),
                resolver: cfg.runtime.dns.clone(),
            };
            match tasks.remove(&p.name) {
                Some(t) if t.key == key => {
                    next.insert(p.name.clone(), t);
                    continue;
                }
                Some(t) => t.cancel.cancel(),
                None => {}
            }
            let seed = found.get(&p.name).cloned().unwrap_or_else(|| Arc::from([]));
            let cancel = CancellationToken::new();
            let (ready_tx, ready) = watch::channel(false);
            task::spawn(
                task::PoolTaskArgs {
                    pool: p.name.clone(),
                    settings: d.clone(),
                    resolver: cfg.runtime.dns.clone(),
                    seed,
                    publish: publish.clone(),
                    metrics: metrics.clone(),
                    ready: ready_tx,
                },
                cancel.clone(),
            );
            next.insert(p.name.clone(), PoolTask { key, cancel, ready });
        }
        for (_, t) in tasks.drain() {
            t.cancel.cancel();
        }
        found.retain(|pool, _| next.contains_key(pool));
        *tasks = next;
    }

    /// Waits, up to `limit`, until every task has heard from each of its sources once (and
    /// the servers found have had their first probe), so that a fresh start does not meet
    /// traffic with an empty pool.
    pub async fn ready(&self, limit: Duration) {
        let waits: Vec<_> = lock(&self.tasks)
            .values()
            .map(|t| t.ready.clone())
            .collect();
        let all = futures_util::future::join_all(waits.into_iter().map(|mut r| async move {
            let _ = r.wait_for(|v| *v).await;
        }));
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// Stops every task (shutdown).
    pub fn stop(&self) {
        for (_, t) in lock(&self.tasks).drain() {
            t.cancel.cancel();
        }
    }
}

/// The servers of `found` whose source `d` still has: after a reload that drops a name or a
/// registry, its servers leave with it.
fn still_configured(d: &DiscoverySettings, found: &[DiscoveredServer]) -> Vec<DiscoveredServer> {
    let keys: Vec<_> = Source::all(d).iter().map(Source::key).collect();
    found
        .iter()
        .filter(|f| keys.contains(&f.source))
        .cloned()
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(name: &str, addr: &str, origin: ServerOrigin) -> DiscoveredServer {
        DiscoveredServer {
            name: Arc::from(name),
            addr: addr.parse().unwrap(),
            weight: 1,
            backup: false,
            max_conns: None,
            origin,
            source: Arc::from("t"),
        }
    }

    #[test]
    fn merge_keeps_the_file_first_and_names_unique() {
        let text = "[[listener]]\nname = \"w\"\nbind = \"127.0.0.1:0\"\nprotocol = \"http\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nservers = [ { addr = \"127.0.0.1:1\", name = \"a\" }, { addr = \"app.internal:2\" } ]\n";
        let cfg = crate::config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let ps = &cfg.pools[0];
        let merged = merge(
            ps,
            &[
                found("app.internal#127.0.0.2", "127.0.0.2:2", ServerOrigin::Dns),
                found("dup", "127.0.0.1:1", ServerOrigin::Etcd),
                found("a", "127.0.0.3:2", ServerOrigin::Etcd),
            ],
        );
        let names: Vec<_> = merged.servers.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["a", "app.internal#127.0.0.2", "a#127.0.0.3:2"]);
        assert_eq!(merged.servers[1].origin, ServerOrigin::Dns);
        // Merging again over a merged pool keeps only the file's servers as the base.
        assert_eq!(merge(&merged, &[]).servers.len(), 1);
    }
}
