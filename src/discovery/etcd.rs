//! The etcd source: every key under a prefix is one server, its value JSON
//! `{ "addr": "10.0.0.7:9000", "weight": 2, "backup": false }`, named after the key with the
//! prefix taken off. It reads the prefix, then watches it (through [`super::gateway`]).
//!
//! When etcd cannot be reached, or the watch ends, the last known set keeps serving; the
//! source reconnects with a growing delay (100 ms doubling to 5 s, with jitter), trying the
//! endpoints in turn, and takes a fresh snapshot before watching again. A malformed value is
//! skipped, counted and logged with its key: one bad registration never takes a pool down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::gateway::{Change, Etcd, EtcdError, Kv};
use super::task::{Episode, SourceCx};
use super::DiscoveredServer;
use crate::config::{parse_addr, EtcdSettings, ServerOrigin, MAX_WEIGHT};

/// First and largest reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What a registration looks like, for error messages.
const EXPECTED: &str = r#"{"addr": "IP:PORT", "weight": 1, "backup": false}"#;

/// A registration's JSON.
#[derive(Deserialize)]
struct Registration {
    addr: String,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    backup: bool,
}

/// The server a key registers, or why its value is malformed.
pub fn server(
    prefix: &str,
    kv: &Kv,
    key_id: &Arc<str>,
    max_conns: Option<u32>,
) -> Result<DiscoveredServer, String> {
    let r: Registration = serde_json::from_slice(&kv.value)
        .map_err(|e| format!("not the expected JSON {EXPECTED}: {e}"))?;
    let addr = parse_addr(&r.addr)?;
    let weight = match r.weight {
        None => 1,
        Some(w) if (1..=i64::from(MAX_WEIGHT)).contains(&w) => w as u32,
        Some(w) => {
            return Err(format!(
                "weight must be between 1 and {MAX_WEIGHT}, got {w}"
            ))
        }
    };
    let name = kv.key.strip_prefix(prefix).unwrap_or(&kv.key);
    Ok(DiscoveredServer {
        name: Arc::from(if name.is_empty() {
            addr.to_string()
        } else {
            name.to_string()
        }),
        addr,
        weight,
        backup: r.backup,
        max_conns,
        origin: ServerOrigin::Etcd,
        source: key_id.clone(),
    })
}

/// Runs the source until cancelled.
pub async fn run(e: &EtcdSettings, cx: &SourceCx) {
    let etcd = Etcd::default();
    let mut episode = Episode::default();
    let mut delay = BACKOFF_MIN;
    for attempt in 0usize.. {
        let ep = &e.endpoints[attempt % e.endpoints.len()];
        let err = session(&etcd, ep, e, cx, &mut episode, &mut delay).await;
        episode.failed(cx, "etcd", &err);
        cx.failed().await;
        tokio::time::sleep(delay.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: a snapshot, then the watch, until something fails.
async fn session(
    etcd: &Etcd,
    ep: &str,
    e: &EtcdSettings,
    cx: &SourceCx,
    episode: &mut Episode,
    delay: &mut Duration,
) -> EtcdError {
    let (kvs, revision) = match etcd.range(ep, &e.prefix).await {
        Ok(r) => r,
        Err(err) => return err,
    };
    let mut servers: BTreeMap<String, DiscoveredServer> = BTreeMap::new();
    for kv in &kvs {
        put(&mut servers, kv, e, cx);
    }
    episode.ok(cx, "etcd");
    *delay = BACKOFF_MIN;
    cx.found(servers.values().cloned().collect()).await;
    let mut watch = match etcd.watch(ep, &e.prefix, revision).await {
        Ok(w) => w,
        Err(err) => return err,
    };
    loop {
        match watch.next().await {
            Err(err) => return err,
            Ok(changes) => {
                for c in changes {
                    match c {
                        Change::Put(kv) => put(&mut servers, &kv, e, cx),
                        Change::Delete(key) => {
                            servers.remove(&key);
                        }
                    }
                }
                cx.found(servers.values().cloned().collect()).await;
            }
        }
    }
}

/// Adds or replaces the server of `kv`; a malformed value removes the key's server (its
/// registration no longer says where it is), and is counted and logged with its key.
fn put(servers: &mut BTreeMap<String, DiscoveredServer>, kv: &Kv, e: &EtcdSettings, cx: &SourceCx) {
    match server(&e.prefix, kv, &cx.key, cx.settings.max_conns) {
        Ok(s) => {
            servers.insert(kv.key.clone(), s);
        }
        Err(why) => {
            servers.remove(&kv.key);
            cx.count_error();
            tracing::warn!(pool = %cx.pool, key = %kv.key, value = %String::from_utf8_lossy(&kv.value), error = %why, "etcd: malformed registration skipped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations() {
        let id: Arc<str> = Arc::from("etcd:/s/");
        let kv = |k: &str, v: &str| Kv {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        };
        let good = r#"{"addr":"10.0.0.7:9000","weight":2,"backup":true,"zone":"a"}"#;
        let s = server("/s/", &kv("/s/n1", good), &id, None).unwrap();
        assert_eq!((&*s.name, s.weight, s.backup), ("n1", 2, true));
        assert_eq!(s.addr.to_string(), "10.0.0.7:9000");
        for bad in [
            r#"{"addr":"app:9000"}"#,
            r#"{"addr":"10.0.0.7:9000","weight":0}"#,
            "not json",
            r#"{"weight":1}"#,
        ] {
            assert!(server("/s/", &kv("/s/x", bad), &id, None).is_err(), "{bad}");
        }
    }
}
