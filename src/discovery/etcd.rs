//! The etcd source: every key under a prefix is one server, its value JSON
//! `{ "addr": "10.0.0.7:9000", "weight": 2, "backup": false }`, named after the key with the
//! prefix taken off.
//!
//! It speaks etcd's v3 JSON gateway over plain HTTP/1.1 (`/v3/kv/range` for a snapshot and
//! its revision, then a streaming `/v3/watch` from the next revision): the same API as gRPC,
//! without a protobuf toolchain at build time. Keys and values travel in base64.
//!
//! When etcd cannot be reached, or the watch ends, the last known set keeps serving; the
//! source reconnects with a growing delay (100 ms doubling to 5 s, with jitter), trying the
//! endpoints in turn, and takes a fresh snapshot before watching again. A malformed value is
//! skipped, counted and logged with its key: one bad registration never takes a pool down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};

use super::task::{Episode, SourceCx};
use super::DiscoveredServer;
use crate::config::{parse_addr, EtcdSettings, ServerOrigin, MAX_WEIGHT};

/// How long a snapshot request may take.
const RANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP connect to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// First and largest reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why talking to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The HTTP exchange failed (refused, reset, timed out).
    #[error("{endpoint}: {message}")]
    Http {
        /// Which endpoint.
        endpoint: String,
        /// What happened.
        message: String,
    },
    /// etcd answered with an error or something that is not its JSON.
    #[error("{endpoint}: unexpected answer: {message}")]
    Protocol {
        /// Which endpoint.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
    /// The watch stream ended (etcd restarted, or compacted past our revision).
    #[error("{0}: the watch ended")]
    WatchEnded(String),
}

/// A client of etcd's JSON gateway.
pub struct Etcd {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Etcd {
    fn default() -> Self {
        let mut c = HttpConnector::new();
        c.set_connect_timeout(Some(CONNECT_TIMEOUT));
        c.set_nodelay(true);
        // A watch is silent while nothing changes: keepalives find a peer that vanished.
        c.set_keepalive(Some(Duration::from_secs(10)));
        c.set_keepalive_interval(Some(Duration::from_secs(5)));
        c.set_keepalive_retries(Some(3));
        Etcd {
            http: Client::builder(TokioExecutor::new()).build(c),
        }
    }
}

/// One key-value pair.
pub struct Kv {
    /// The key, as text (lossy).
    pub key: String,
    /// The raw value.
    pub value: Vec<u8>,
}

impl Etcd {
    async fn post(
        &self,
        ep: &str,
        path: &str,
        body: Value,
    ) -> Result<hyper::Response<hyper::body::Incoming>, EtcdError> {
        let http_err = |m: String| EtcdError::Http {
            endpoint: ep.to_string(),
            message: m,
        };
        let req = http::Request::post(format!("{ep}{path}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| http_err(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| http_err(error_chain(&e)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(EtcdError::Protocol {
                endpoint: ep.to_string(),
                message: format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
            });
        }
        Ok(resp)
    }

    /// Every key under `prefix`, and the revision of that snapshot.
    pub async fn range(&self, ep: &str, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        let body = json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix.as_bytes())) });
        let fetch = async {
            let resp = self.post(ep, "/v3/kv/range", body).await?;
            resp.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| EtcdError::Http {
                    endpoint: ep.to_string(),
                    message: e.to_string(),
                })
        };
        let bytes = tokio::time::timeout(RANGE_TIMEOUT, fetch)
            .await
            .map_err(|_| EtcdError::Http {
                endpoint: ep.to_string(),
                message: format!("no answer within {RANGE_TIMEOUT:?}"),
            })??;
        let proto = |m: String| EtcdError::Protocol {
            endpoint: ep.to_string(),
            message: m,
        };
        let r: RangeResponse = serde_json::from_slice(&bytes).map_err(|e| proto(e.to_string()))?;
        let revision = int(&r.header.revision).ok_or_else(|| proto("no revision".into()))?;
        let kvs = r
            .kvs
            .iter()
            .map(|kv| kv.decode())
            .collect::<Result<_, _>>()
            .map_err(proto)?;
        Ok((kvs, revision))
    }
}

#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    revision: Value,
}

#[derive(Deserialize)]
struct RangeResponse {
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: String,
}

impl RawKv {
    fn decode(&self) -> Result<Kv, String> {
        let key = B64
            .decode(&self.key)
            .map_err(|e| format!("key not base64: {e}"))?;
        let value = B64
            .decode(&self.value)
            .map_err(|e| format!("value not base64: {e}"))?;
        Ok(Kv {
            key: String::from_utf8_lossy(&key).into_owned(),
            value,
        })
    }
}

#[derive(Deserialize)]
struct WatchMessage {
    result: Option<WatchResult>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    /// Absent for PUT (the enum's zero value is left out of the JSON).
    #[serde(default, rename = "type")]
    kind: Option<String>,
    kv: RawKv,
}

/// An int64 of etcd's JSON (written as a string).
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// The smallest key greater than every key with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: "\0" asks for every key from `prefix` on.
    vec![0]
}

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
    let r: Registration = serde_json::from_slice(&kv.value).map_err(|e| format!("not the expected JSON {{\"addr\": \"IP:PORT\", \"weight\": 1, \"backup\": false}}: {e}"))?;
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
    let body = json!({ "create_request": {
        "key": B64.encode(&e.prefix),
        "range_end": B64.encode(prefix_end(e.prefix.as_bytes())),
        "start_revision": (revision + 1).to_string(),
    }});
    let mut stream = match etcd.post(ep, "/v3/watch", body).await {
        Ok(r) => r.into_body(),
        Err(err) => return err,
    };
    let mut buf = BytesMut::new();
    let proto = |m: String| EtcdError::Protocol {
        endpoint: ep.to_string(),
        message: m,
    };
    loop {
        let data = match stream.frame().await {
            None => return EtcdError::WatchEnded(ep.to_string()),
            Some(Err(err)) => {
                return EtcdError::Http {
                    endpoint: ep.to_string(),
                    message: err.to_string(),
                }
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        buf.extend_from_slice(&data);
        let mut changed = false;
        let mut used = 0;
        let mut msgs = serde_json::Deserializer::from_slice(&buf).into_iter::<WatchMessage>();
        loop {
            match msgs.next() {
                None => break,
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(err)) => return proto(err.to_string()),
                Some(Ok(m)) => {
                    used = msgs.byte_offset();
                    if let Some(err) = m.error {
                        return proto(err.to_string());
                    }
                    let Some(r) = m.result else { continue };
                    for ev in &r.events {
                        let kv = match ev.kv.decode() {
                            Ok(kv) => kv,
                            Err(m) => return proto(m),
                        };
                        changed = true;
                        if ev.kind.as_deref() == Some("DELETE") {
                            servers.remove(&kv.key);
                        } else {
                            put(&mut servers, &kv, e, cx);
                        }
                    }
                    if r.canceled {
                        // Compacted past our revision, or etcd is shutting down: resync.
                        return EtcdError::WatchEnded(ep.to_string());
                    }
                }
            }
        }
        buf.advance(used);
        if changed {
            cx.found(servers.values().cloned().collect()).await;
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

/// An error with its causes, for logs ("client error (Connect): connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn registrations() {
        let id: Arc<str> = Arc::from("etcd:/s/");
        let kv = |k: &str, v: &str| Kv {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        };
        let s = server(
            "/s/",
            &kv(
                "/s/n1",
                r#"{"addr":"10.0.0.7:9000","weight":2,"backup":true,"zone":"a"}"#,
            ),
            &id,
            None,
        )
        .unwrap();
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
