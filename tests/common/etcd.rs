//! etcd for the discovery tests: Debian's `etcd` binary started on free loopback ports with
//! a temporary data directory, killed when dropped; and a small client of its JSON gateway
//! to register and deregister servers.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// A running etcd.
pub struct Etcd {
    /// Client URL, "http://127.0.0.1:PORT".
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A port that was free a moment ago (etcd binds it itself).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Whether the etcd binary is installed (Debian: etcd-server).
    pub fn available() -> bool {
        Command::new("etcd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts etcd and waits until it answers.
    pub async fn start() -> Etcd {
        let mut e = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            url: String::new(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        e.url = format!("http://127.0.0.1:{}", e.client_port);
        e.spawn().await;
        e
    }

    async fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name=t")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.url))
            .arg(format!("--advertise-client-urls={}", self.url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (Debian package etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.range_count("/").await.is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not start on {}",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills etcd at once (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let c = super::client();
        let req = http::Request::post(format!("{}{path}", self.url))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let r = c.request(req).await.map_err(|e| e.to_string())?;
        let status = r.status();
        let b = r
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&b)));
        }
        serde_json::from_slice(&b).map_err(|e| e.to_string())
    }

    /// Writes `value` at `key`.
    pub async fn put(&self, key: &str, value: &str) {
        self.post(
            "/v3/kv/put",
            serde_json::json!({ "key": B64.encode(key), "value": B64.encode(value) }),
        )
        .await
        .expect("etcd put");
    }

    /// Registers a server at `key`.
    pub async fn register(&self, key: &str, addr: std::net::SocketAddr, weight: u32) {
        self.put(
            key,
            &format!(r#"{{"addr":"{addr}","weight":{weight},"backup":false}}"#),
        )
        .await;
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) {
        self.post(
            "/v3/kv/deleterange",
            serde_json::json!({ "key": B64.encode(key) }),
        )
        .await
        .expect("etcd delete");
    }

    async fn range_count(&self, key: &str) -> Result<(), String> {
        self.post(
            "/v3/kv/range",
            serde_json::json!({ "key": B64.encode(key) }),
        )
        .await
        .map(|_| ())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
