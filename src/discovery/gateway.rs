//! A client of etcd's v3 JSON gateway over plain HTTP/1.1: `/v3/kv/range` for a snapshot of
//! a prefix and its revision, and a streaming `/v3/watch` of the changes after it. The same
//! API as gRPC, without a protobuf toolchain at build time; keys and values travel in base64
//! and 64-bit integers as strings.
//!
//! It only talks: what the keys mean is the etcd source's business (`etcd.rs`).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};

/// How long a snapshot request may take.
const RANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP connect to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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

    /// Watches `prefix` for changes after `revision`.
    pub async fn watch(&self, ep: &str, prefix: &str, revision: i64) -> Result<Watch, EtcdError> {
        let body = json!({ "create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix.as_bytes())),
            "start_revision": (revision + 1).to_string(),
        }});
        let resp = self.post(ep, "/v3/watch", body).await?;
        Ok(Watch {
            endpoint: ep.to_string(),
            body: resp.into_body(),
            buf: BytesMut::new(),
        })
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

/// One change seen by a watch.
pub enum Change {
    /// A key was written.
    Put(Kv),
    /// A key was deleted.
    Delete(String),
}

/// A watch of a prefix: the changes after a snapshot's revision, as they happen.
pub struct Watch {
    endpoint: String,
    body: Incoming,
    buf: BytesMut,
}

impl Watch {
    /// The next batch of changes; an error when the stream fails or ends (etcd went away,
    /// or compacted past the revision asked for: take a new snapshot).
    pub async fn next(&mut self) -> Result<Vec<Change>, EtcdError> {
        let proto = |m: String| EtcdError::Protocol {
            endpoint: self.endpoint.clone(),
            message: m,
        };
        loop {
            let data = match self.body.frame().await {
                None => return Err(EtcdError::WatchEnded(self.endpoint.clone())),
                Some(Err(err)) => {
                    return Err(EtcdError::Http {
                        endpoint: self.endpoint.clone(),
                        message: err.to_string(),
                    })
                }
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => d,
                    Err(_) => continue,
                },
            };
            self.buf.extend_from_slice(&data);
            // The gateway streams one JSON object per message; a frame may hold part of one,
            // or several.
            let mut changes = Vec::new();
            let mut used = 0;
            let mut ended = false;
            let mut msgs =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<WatchMessage>();
            loop {
                match msgs.next() {
                    None => break,
                    Some(Err(err)) if err.is_eof() => break,
                    Some(Err(err)) => return Err(proto(err.to_string())),
                    Some(Ok(m)) => {
                        used = msgs.byte_offset();
                        if let Some(err) = m.error {
                            return Err(proto(err.to_string()));
                        }
                        let Some(r) = m.result else { continue };
                        for ev in &r.events {
                            let kv = ev.kv.decode().map_err(proto)?;
                            changes.push(if ev.kind.as_deref() == Some("DELETE") {
                                Change::Delete(kv.key)
                            } else {
                                Change::Put(kv)
                            });
                        }
                        // Compacted past our revision, or etcd is shutting down: resync.
                        ended |= r.canceled;
                    }
                }
            }
            self.buf.advance(used);
            if ended && changes.is_empty() {
                return Err(EtcdError::WatchEnded(self.endpoint.clone()));
            }
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }
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
}
