//! What `fulcrum check` learns from a config's dynamic sources before anything runs: each
//! DNS name and SRV name resolved once, each etcd prefix read once, with the servers they
//! give or why they give none. It uses the same lookups as the running sources, so what it
//! prints is what a start would find. Formatting is `summary`'s job.

use std::sync::Arc;

use super::dns::Resolver;
use super::etcd::server;
use super::gateway::Etcd;
use super::{DiscoveredServer, Source};
use crate::config::Config;

/// One source's outcome.
pub struct Finding {
    /// Pool name.
    pub pool: Arc<str>,
    /// The source as the config writes it (`app.internal:9000`, `srv _http._tcp...`).
    pub source: String,
    /// The servers it gives now, or why it gives none.
    pub servers: Result<Vec<DiscoveredServer>, String>,
    /// Problems that did not stop it (a malformed etcd value, with its key).
    pub warnings: Vec<String>,
}

/// Resolves and reads every dynamic source of `cfg`, once.
pub async fn check(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in &cfg.pools {
        let Some(d) = &p.discovery else { continue };
        let resolver = Resolver::new(&cfg.runtime.dns, d).await;
        for src in Source::all(d) {
            let key = src.key();
            let mut warnings = Vec::new();
            let (source, servers) = match &src {
                Source::Dns(n) => (
                    format!("{}:{}", n.host, n.port),
                    match &resolver {
                        Ok(r) => r
                            .name(n, &key)
                            .await
                            .map(|(s, _)| s)
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                ),
                Source::Srv(name) => (
                    format!("srv {name}"),
                    match &resolver {
                        Ok(r) => r
                            .srv(name, &p.name, &key, d.max_conns)
                            .await
                            .map(|(s, _)| s)
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                ),
                Source::Etcd(e) => {
                    let etcd = Etcd::default();
                    let mut result = Err(String::new());
                    let mut errors = Vec::new();
                    for ep in &e.endpoints {
                        match etcd.range(ep, &e.prefix).await {
                            Ok((kvs, _)) => {
                                let mut found = Vec::new();
                                for kv in &kvs {
                                    match server(&e.prefix, kv, &key, d.max_conns) {
                                        Ok(s) => found.push(s),
                                        Err(why) => warnings.push(format!("key {}: {why}", kv.key)),
                                    }
                                }
                                result = Ok(found);
                                break;
                            }
                            Err(err) => errors.push(err.to_string()),
                        }
                    }
                    if result.is_err() {
                        result = Err(errors.join("; "));
                    }
                    (
                        format!("etcd {} at {}", e.prefix, e.endpoints.join(", ")),
                        result,
                    )
                }
            };
            out.push(Finding {
                pool: p.name.clone(),
                source,
                servers,
                warnings,
            });
        }
    }
    out
}
