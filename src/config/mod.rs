//! Configuration: the TOML schema, its defaults, and validation into typed settings.
//!
//! `load` reads a file, `parse` a string; both return a [`Config`] whose every value has been
//! checked, or a [`ConfigError`] naming file, line, column and what was expected. Nothing here
//! opens sockets or starts tasks: the runtime turns a `Config` into running objects.

mod error;
mod route;
mod schema;
mod types;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::{ConfigError, ConfigWarning, Location};
pub use route::{ErrorPages, RouteAction, RouteSettings};
pub use types::parse_addr;

use crate::balance::Algorithm;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub source: PathBuf,
    /// Process-wide settings.
    pub runtime: RuntimeSettings,
    /// The admin listener; `None` when disabled.
    pub admin: Option<AdminSettings>,
    /// The access log; `None` when off.
    pub access_log: Option<AccessLogSettings>,
    /// Listeners, in file order.
    pub listeners: Vec<ListenerSettings>,
    /// Pools, in file order.
    pub pools: Vec<Arc<PoolSettings>>,
    /// Things that are valid but probably not meant, in file order.
    pub warnings: Vec<ConfigWarning>,
}

impl Config {
    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&Arc<PoolSettings>> {
        self.pools.iter().find(|p| &*p.name == name)
    }
}

/// `[runtime]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeSettings {
    /// Worker threads; `None`: the CPUs this process may run on.
    pub worker_threads: Option<usize>,
    /// Grace period for in-flight work at shutdown.
    pub shutdown_grace: Duration,
    /// Grace period for connections of a listener removed by a reload.
    pub drain_timeout: Duration,
}

/// `[admin]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdminSettings {
    /// Where it listens.
    pub bind: SocketAddr,
    /// Bearer token file for state-changing calls.
    pub token_file: Option<PathBuf>,
    /// Allow state-changing calls without a token on a loopback bind.
    pub allow_unauthenticated_loopback: bool,
}

/// Where access-log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard error.
    Stderr,
    /// Appended to a file.
    File(PathBuf),
}

/// Access-log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// Like the combined log format.
    Combined,
    /// One JSON object per line.
    Json,
}

/// `[access_log]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogSettings {
    /// Destination.
    pub target: AccessLogTarget,
    /// Format.
    pub format: AccessLogFormat,
    /// Bounded channel size.
    pub buffer: usize,
}

/// A listener's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// L7 HTTP/1.1 + h2c.
    Http,
    /// L4 byte relay.
    Tcp,
}

/// Which forwarding headers an http listener adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarded {
    /// X-Forwarded-For / -Proto / -Host.
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded`.
    pub rfc7239: bool,
}

/// PROXY protocol version sent to backends by a tcp listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// Client-side timeouts of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerTimeouts {
    /// Complete request head.
    pub header_read: Duration,
    /// Idle keep-alive connection.
    pub keepalive_idle: Duration,
    /// No bytes either way on a tunnel.
    pub tunnel_idle: Duration,
}

/// `[[listener]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerSettings {
    /// Unique name.
    pub name: Arc<str>,
    /// Bind address.
    pub bind: SocketAddr,
    /// http or tcp.
    pub protocol: Protocol,
    /// The pool the request path serves today: `default_pool`, or for a routed listener
    /// without one, the first pool its routes name. Transitional: once routing is wired in,
    /// the proxy uses `default_pool` and `routes`, and this field goes.
    pub pool: Arc<str>,
    /// http: the pool for requests no route matches; `None` (routed listeners only): 404.
    pub default_pool: Option<Arc<str>>,
    /// http: routes in config order; the first match wins.
    pub routes: Vec<RouteSettings>,
    /// http: what keeps a client on one side of a split; `None`: random.
    pub split_key: Option<crate::route::SplitKey>,
    /// http: custom bodies for the proxy's own 502, 503 and 504 answers.
    pub error_pages: ErrorPages,
    /// Most connections at once.
    pub max_connections: usize,
    /// Forwarding headers (http).
    pub forwarded: Forwarded,
    /// PROXY protocol towards backends (tcp).
    pub send_proxy: Option<ProxyProtocol>,
    /// Timeouts.
    pub timeouts: ListenerTimeouts,
}

/// Where a consistent-hash key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The client IP.
    ClientIp,
    /// A request header (lower-case name).
    Header(http::HeaderName),
    /// A cookie.
    Cookie(String),
    /// The path without the query.
    Path,
    /// Path and query.
    Uri,
}

/// Upstream HTTP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// h2 with prior knowledge.
    H2,
}

/// One server of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// Name (default: the address).
    pub name: Arc<str>,
    /// Address.
    pub addr: SocketAddr,
    /// Weight, 1..=256.
    pub weight: u32,
    /// Backup tier.
    pub backup: bool,
    /// In-flight limit.
    pub max_conns: Option<u32>,
}

/// Upstream timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Response head after request sent.
    pub response_header: Duration,
    /// Idle pooled upstream connection.
    pub upstream_idle: Duration,
}

/// What an active probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthKind {
    /// No probes: always up (passive detection still applies).
    None,
    /// A TCP connect.
    Tcp,
    /// An HTTP request.
    Http(HttpCheck),
    /// Send/expect on a persistent connection.
    Heartbeat {
        /// Sent each interval.
        send: Vec<u8>,
        /// The reply must start with this.
        expect: Vec<u8>,
    },
}

/// Parameters of an HTTP probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub path: String,
    /// Host header (default: the server address).
    pub host: Option<String>,
    /// Accepted status ranges, inclusive.
    pub expect_status: Vec<(u16, u16)>,
    /// Required body substring.
    pub expect_body: Option<String>,
}

/// Flap damping parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlapDamping {
    /// Penalty per up→down transition.
    pub penalty: f64,
    /// Held out above this.
    pub suppress: f64,
    /// Back in below this.
    pub reuse: f64,
    /// Penalty half-life.
    pub half_life: Duration,
}

/// `[pool.health]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthSettings {
    /// Probe kind.
    pub kind: HealthKind,
    /// Stable-state interval.
    pub interval: Duration,
    /// While changing state.
    pub fast_interval: Duration,
    /// While down.
    pub down_interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Successes to go up.
    pub rise: u32,
    /// Failures to go down.
    pub fall: u32,
    /// Whether a new server starts eligible.
    pub initial_up: bool,
    /// Flap damping, when on.
    pub flap_damping: Option<FlapDamping>,
}

/// `[pool.passive]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PassiveSettings {
    /// On or off.
    pub enabled: bool,
    /// Consecutive failures that eject.
    pub consecutive_failures: u32,
    /// Connect failures count.
    pub count_connect: bool,
    /// Resets before a response count.
    pub count_reset: bool,
    /// Upstream timeouts count.
    pub count_timeout: bool,
    /// 5xx responses count.
    pub count_5xx: bool,
    /// First ejection.
    pub base_ejection: Duration,
    /// Ejection cap.
    pub max_ejection: Duration,
    /// Ejected share cap, percent.
    pub max_ejected_percent: u32,
}

/// `[[pool]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    /// Unique name.
    pub name: Arc<str>,
    /// Balancing algorithm with its parameters.
    pub algorithm: Algorithm,
    /// Consistent-hash key.
    pub hash_key: HashKey,
    /// Servers, in file order.
    pub servers: Vec<ServerSettings>,
    /// Sticky cookie name.
    pub sticky_cookie: Option<String>,
    /// Retries.
    pub retries: u32,
    /// Retry budget ratio.
    pub retry_budget: f64,
    /// Upstream protocol.
    pub upstream_protocol: UpstreamProtocol,
    /// Slow start ramp.
    pub slow_start: Option<Duration>,
    /// Queue length cap.
    pub max_queue: usize,
    /// Queue wait cap.
    pub queue_timeout: Duration,
    /// Upstream timeouts.
    pub timeouts: PoolTimeouts,
    /// Active checks.
    pub health: HealthSettings,
    /// Passive detection.
    pub passive: PassiveSettings,
}

/// Reads and validates the config file at `path`, and logs its warnings (once per load).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg = parse(&text, path)?;
    for w in &cfg.warnings {
        tracing::warn!(
            config = %w.path.display(),
            line = w.location.line,
            column = w.location.column,
            warning = %w.message,
            "config warning"
        );
    }
    Ok(cfg)
}

/// Validates config text; `path` is used in error messages and as the config's source, and
/// its directory is where relative body files (`respond.file`, `error_pages`) are read.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let raw: schema::RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ConfigError::at(path, text, span, e.message().trim_end().to_string())
    })?;
    validate::validate(raw, text, path)
}
