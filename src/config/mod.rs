//! Configuration: the TOML schema, its defaults, and validation into typed settings.
//!
//! `load` reads a file, `parse` a string; both return a [`Config`] whose every value has been
//! checked, or a [`ConfigError`] naming file, line, column and what was expected. Nothing here
//! opens sockets or starts tasks: the runtime turns a `Config` into running objects.

mod admission;
mod error;
mod route;
mod schema;
mod sni_routes;
mod tls;
mod tls_schema;
mod types;
mod validate;

pub(crate) use validate::{parse_hash_key, unescape};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use admission::{
    parse_rate_key, AdmissionSettings, RateKey, RateLimitSettings, DEFAULT_ACCEPT_PROXY_TIMEOUT,
    DEFAULT_MAX_KEYS,
};
pub use error::{ConfigError, ConfigWarning, Location};
pub use route::{ErrorPages, RouteAction, RouteSettings};
pub use sni_routes::{SniPattern, SniRoutes};
pub use tls::{
    CertificateFiles, ClientAuth, ClientAuthMode, ConfigSpot, ListenerTls, TlsVersion, UpstreamTls,
};
pub use types::{is_dns_name, parse_addr, parse_server_addr, parse_size, ServerAddr, MAX_WEIGHT};

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

impl ListenerSettings {
    /// Every pool this listener sends traffic to: its default pool, the pools its routes
    /// and splits name, and those its SNI routes name (each once, in that order).
    pub fn pools(&self) -> Vec<Arc<str>> {
        let mut v: Vec<Arc<str>> = Vec::new();
        let mut add = |p: &Arc<str>| {
            if !v.contains(p) {
                v.push(p.clone());
            }
        };
        if let Some(p) = &self.pool {
            add(p);
        }
        for r in &self.routes {
            match &r.action {
                RouteAction::Pool(p) => add(p),
                RouteAction::Split(ts) => ts.iter().for_each(|t| add(&t.pool)),
                _ => {}
            }
        }
        if let Some(sni) = &self.sni_routes {
            sni.routes.iter().for_each(|(_, p)| add(p));
            if let Some(p) = &sni.default_pool {
                add(p);
            }
        }
        v
    }

    /// Whether this listener sends traffic to pool `name`.
    pub fn uses_pool(&self, name: &str) -> bool {
        self.pools().iter().any(|p| **p == *name)
    }
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
    /// Client connections open at once, every listener together.
    pub max_connections: usize,
    /// Rolling back a reload that makes things worse; `None` when off.
    pub reload_guard: Option<ReloadGuard>,
    /// The resolver server discovery uses.
    pub dns: ResolverSettings,
}

/// `[runtime] reload_guard`: watch a reload for `window`, and put the previous configuration
/// back when the new one fails requests or leaves a serving pool without servers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReloadGuard {
    /// How long after a reload.
    pub window: Duration,
    /// Failed share of requests that triggers a rollback.
    pub max_error_ratio: f64,
    /// Requests needed before the ratio counts.
    pub min_requests: u64,
}

/// `[runtime] dns`: the DNS resolver of server discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Name servers; empty: those of `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// Per-query timeout; `None`: the system's.
    pub timeout: Option<Duration>,
}

/// Where a server of a pool came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ServerOrigin {
    /// Listed by address in the config file.
    #[default]
    File,
    /// An address a DNS name in the config file resolved to.
    Dns,
    /// An SRV record of the pool's `srv` name.
    Srv,
    /// A key under the pool's etcd prefix.
    Etcd,
}

impl ServerOrigin {
    /// Lower-case name, for `/status`, the preview and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerOrigin::File => "file",
            ServerOrigin::Dns => "dns",
            ServerOrigin::Srv => "srv",
            ServerOrigin::Etcd => "etcd",
        }
    }
}

/// A pool's dynamic server sources (`HOST:PORT` servers, `srv`, `[pool.discovery]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// Servers named by DNS host, in file order.
    pub dns: Vec<DnsServer>,
    /// SRV record name.
    pub srv: Option<String>,
    /// etcd registry.
    pub etcd: Option<EtcdSettings>,
    /// Re-resolve no sooner than this.
    pub min_ttl: Duration,
    /// Re-resolve no later than this.
    pub max_ttl: Duration,
    /// The pool's `max_conns`, for servers that do not set their own.
    pub max_conns: Option<u32>,
}

/// A `servers` entry with a DNS host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsServer {
    /// Host name, without a trailing dot.
    pub host: String,
    /// Port of every resolved address.
    pub port: u16,
    /// Prefix of the resolved servers' names (`NAME#IP`); default the host name.
    pub name: Arc<str>,
    /// Weight of each resolved server.
    pub weight: u32,
    /// Backup tier.
    pub backup: bool,
    /// In-flight limit of each resolved server.
    pub max_conns: Option<u32>,
}

/// `[pool.discovery] etcd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdSettings {
    /// Client URLs (`http://HOST:PORT`, no trailing slash), tried in turn.
    pub endpoints: Vec<String>,
    /// Key prefix; each key under it is one server.
    pub prefix: String,
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
    /// `/status` and `/metrics` need the token too.
    pub read_auth: bool,
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
    /// Lines each thread's buffer holds before new ones are dropped.
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
    /// A new connection that sends nothing.
    pub first_byte: Duration,
    /// No request-body progress.
    pub body_read: Duration,
    /// A client that stops reading its response.
    pub send_stall: Duration,
}

/// What one client may send on a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Request line + headers, bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Header fields per request (431 beyond).
    pub max_headers: usize,
    /// Request body, bytes (413 beyond).
    pub max_request_body: u64,
    /// Slowest request body accepted, bytes per second; 0 = no check.
    pub min_body_rate: u64,
    /// Connections at once from one client IP.
    pub max_connections_per_client: u32,
    /// Concurrent streams per h2 connection.
    pub h2_max_concurrent_streams: u32,
    /// h2 receive window per stream and per connection, bytes.
    pub h2_window: u32,
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
    /// The default pool: http, for requests no route matches (`None`, routed listeners only:
    /// 404); tcp, the pool (with `route_by_sni`, of a missing or unknown name; `None`: such
    /// connections are closed).
    pub pool: Option<Arc<str>>,
    /// http: routes in config order; the first match wins.
    pub routes: Vec<RouteSettings>,
    /// http: give each request an `X-Request-ID`.
    pub request_id: bool,
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
    /// TLS termination (`[listener.tls]`); `None`: plaintext.
    pub tls: Option<ListenerTls>,
    /// tcp only: pools chosen by the ClientHello's SNI (`route_by_sni`); when set, it decides
    /// and `pool` is only its default (or its first route's pool when it has no default).
    pub sni_routes: Option<SniRoutes>,
    /// Timeouts.
    pub timeouts: ListenerTimeouts,
    /// Bounds on what a client may send.
    pub limits: ListenerLimits,
    /// Upgrade protocols tunnelled (lower case), http only.
    pub upgrades: Arc<[Box<str>]>,
    /// Who the client is, who may come in, and how often.
    pub admission: AdmissionSettings,
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
    /// Where it came from.
    pub origin: ServerOrigin,
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
    /// No response-body bytes from a server mid-body.
    pub upstream_read_idle: Duration,
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
    /// TLS towards the servers; `None`: plaintext.
    pub tls: Option<UpstreamTls>,
    /// Dynamic server sources; `None` for a pool of fixed addresses only.
    pub discovery: Option<Arc<DiscoverySettings>>,
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
