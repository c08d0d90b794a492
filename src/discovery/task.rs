//! One pool's discovery task: runs the pool's sources, keeps each one's last good set, and
//! publishes their union whenever it changes.
//!
//! A change that both adds and removes servers (a DNS name moving to new addresses, say) is
//! published make-before-break: first the union of old and new, which starts the new
//! servers' health checks, then — once they have had their first probe, or its timeout has
//! passed — the new set alone. A pool whose name moves wholesale therefore never meets an
//! empty eligible table in between.
//!
//! Sources only report; they never publish. A source that fails reports `None` and its last
//! good set stays in the union.

use std::fmt::Display;
use std::sync::Arc;

use prometheus::IntCounter;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{dns, etcd, DiscoveredServer, Publish, Source};
use crate::config::{DiscoverySettings, ResolverSettings};
use crate::metrics::Metrics;

/// What a pool task starts with.
pub(super) struct PoolTaskArgs {
    pub pool: Arc<str>,
    pub settings: Arc<DiscoverySettings>,
    pub resolver: ResolverSettings,
    /// The set published before this task started (by a task a reload replaced).
    pub seed: Arc<[DiscoveredServer]>,
    pub publish: Publish,
    pub metrics: Arc<Metrics>,
    /// Set once every source has reported (success or failure) and that is published.
    pub ready: watch::Sender<bool>,
}

/// A source's report after one round.
struct Update {
    source: usize,
    /// `None`: the round failed; the last good set stands.
    servers: Option<Vec<DiscoveredServer>>,
}

/// What a source needs: where it reports, how it counts failures, the pool's settings.
pub struct SourceCx {
    /// Pool name, for logs.
    pub pool: Arc<str>,
    /// The source's key (each server it finds carries it).
    pub key: Arc<str>,
    /// The pool's discovery settings (TTL bounds, default `max_conns`).
    pub settings: Arc<DiscoverySettings>,
    /// The pool's resolver, or why it could not be built.
    pub resolver: Result<Arc<dns::Resolver>, Arc<str>>,
    errors: IntCounter,
    index: usize,
    out: mpsc::Sender<Update>,
}

impl SourceCx {
    /// Reports a good round.
    pub async fn found(&self, mut servers: Vec<DiscoveredServer>) {
        // A fixed order, so instances that see the same answers build the same pool.
        servers.sort_by_key(|s| (s.backup, s.addr));
        servers.dedup_by_key(|s| s.addr);
        let _ = self
            .out
            .send(Update {
                source: self.index,
                servers: Some(servers),
            })
            .await;
    }

    /// Reports a failed round: counted; the last good set stands.
    pub async fn failed(&self) {
        self.errors.inc();
        let _ = self
            .out
            .send(Update {
                source: self.index,
                servers: None,
            })
            .await;
    }

    /// Counts a failure that does not fail the round (one malformed etcd value, say).
    pub fn count_error(&self) {
        self.errors.inc();
    }
}

/// Failure episodes of one source, so that a source failing every few seconds logs when it
/// starts failing and when it recovers, not every attempt.
#[derive(Default)]
pub struct Episode {
    failing: bool,
    ever_ok: bool,
}

impl Episode {
    /// A failed attempt: logged if it begins an episode.
    pub fn failed(&mut self, cx: &SourceCx, what: &str, err: &dyn Display) {
        if !self.failing {
            if self.ever_ok {
                tracing::warn!(pool = %cx.pool, source = %cx.key, error = %err, "{what} failed; the last servers found keep serving");
            } else {
                tracing::warn!(pool = %cx.pool, source = %cx.key, error = %err, "{what} failed and has never succeeded: the pool has no servers from this source (requests get 503 if it has no others)");
            }
        }
        self.failing = true;
    }

    /// A good attempt: logged if it ends an episode.
    pub fn ok(&mut self, cx: &SourceCx, what: &str) {
        if self.failing {
            tracing::info!(pool = %cx.pool, source = %cx.key, "{what} works again");
        }
        self.failing = false;
        self.ever_ok = true;
    }
}

/// Starts the task; it ends when `cancel` fires.
pub(super) fn spawn(args: PoolTaskArgs, cancel: CancellationToken) {
    tokio::spawn(async move {
        let stop = cancel.clone();
        tokio::select! {
            // Biased: a task a reload replaced must not publish once it has been told to
            // stop, even if the lock it waited for is free at the same moment.
            biased;
            _ = stop.cancelled() => {}
            _ = run(args, cancel) => {}
        }
    });
}

async fn run(a: PoolTaskArgs, cancel: CancellationToken) {
    let sources = Source::all(&a.settings);
    let keys: Vec<Arc<str>> = sources.iter().map(Source::key).collect();
    let mut sets: Vec<Option<Vec<DiscoveredServer>>> = keys
        .iter()
        .map(|k| {
            let v: Vec<_> = a.seed.iter().filter(|s| &s.source == k).cloned().collect();
            (!v.is_empty()).then_some(v)
        })
        .collect();
    let mut heard = vec![false; sources.len()];
    let resolver = if sources.iter().any(|s| !matches!(s, Source::Etcd(_))) {
        dns::Resolver::new(&a.resolver, &a.settings)
            .await
            .map(Arc::new)
            .map_err(|e| Arc::from(e.to_string()))
    } else {
        Err(Arc::from("no DNS source"))
    };
    let (tx, mut rx) = mpsc::channel(4 * sources.len() + 4);
    for (i, src) in sources.into_iter().enumerate() {
        let cx = SourceCx {
            pool: a.pool.clone(),
            key: keys[i].clone(),
            settings: a.settings.clone(),
            resolver: resolver.clone(),
            errors: a
                .metrics
                .discovery_errors
                .with_label_values(&[&a.pool, src.kind().as_str()]),
            index: i,
            out: tx.clone(),
        };
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = run_source(src, cx) => {}
            }
        });
    }
    drop(tx);
    let mut published: Arc<[DiscoveredServer]> = union(&sets);
    while let Some(u) = rx.recv().await {
        let mut take = |u: Update| {
            heard[u.source] = true;
            if let Some(s) = u.servers {
                sets[u.source] = Some(s);
            }
        };
        take(u);
        // Coalesce what arrived meanwhile: one publish for a burst of updates.
        while let Ok(u) = rx.try_recv() {
            take(u);
        }
        let next = union(&sets);
        if next != published {
            publish(&a, &published, &next).await;
            published = next;
        }
        if heard.iter().all(|h| *h) {
            a.ready.send_if_modified(|r| !std::mem::replace(r, true));
        }
    }
}

async fn run_source(src: Source, cx: SourceCx) {
    match src {
        Source::Dns(d) => dns::run_name(&d, &cx).await,
        Source::Srv(name) => dns::run_srv(&name, &cx).await,
        Source::Etcd(e) => etcd::run(&e, &cx).await,
    }
}

/// Every source's last good set, in source order.
fn union(sets: &[Option<Vec<DiscoveredServer>>]) -> Arc<[DiscoveredServer]> {
    sets.iter().flatten().flatten().cloned().collect()
}

/// Publishes `next` in place of `prev`, make-before-break when servers both come and go.
async fn publish(a: &PoolTaskArgs, prev: &[DiscoveredServer], next: &Arc<[DiscoveredServer]>) {
    let has = |set: &[DiscoveredServer], s: &DiscoveredServer| set.iter().any(|o| o.addr == s.addr);
    let adds = next.iter().filter(|s| !has(prev, s)).count();
    let removes = prev.iter().filter(|s| !has(next, s)).count();
    tracing::info!(pool = %a.pool, added = adds, removed = removes, servers = next.len(), "discovery changed the pool's servers");
    if adds > 0 && removes > 0 {
        let both: Arc<[DiscoveredServer]> = next
            .iter()
            .chain(prev.iter().filter(|s| !has(next, s)))
            .cloned()
            .collect();
        (a.publish)(a.pool.clone(), both).await;
    }
    (a.publish)(a.pool.clone(), next.clone()).await;
}
