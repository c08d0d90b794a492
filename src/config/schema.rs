//! The TOML schema as written by operators: serde structs with `deny_unknown_fields`, so that
//! a misspelt key is an error, never silently ignored. Values that carry their own check
//! (durations, addresses, weights) fail at their own position; cross-field checks happen in
//! `validate`, using the spans kept here.
//!
//! Every key's default and unit is documented here and in `config/fulcrum.toml`.

use serde::Deserialize;
use toml::Spanned;

use super::admission::{RawCidrs, RawRateLimit};
use super::tls_schema::{RawListenerTls, RawSniRoutes, RawUpstreamTls};
use super::types::{Addr, Count, Dur, ServerAddr, Size, Weight};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Process-wide settings.
    #[serde(default)]
    pub runtime: RawRuntime,
    /// The admin listener (`/metrics`, `/healthz`, `/status`, runtime API).
    #[serde(default)]
    pub admin: RawAdmin,
    /// The access log (off unless this table is present with `enabled = true`).
    #[serde(default)]
    pub access_log: RawAccessLog,
    /// Listeners (`[[listener]]`).
    #[serde(default)]
    pub listener: Vec<RawListener>,
    /// Pools (`[[pool]]`).
    #[serde(default)]
    pub pool: Vec<RawPool>,
}

/// `[runtime]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// Tokio worker threads; default: the CPUs this process may run on (affinity-aware).
    pub worker_threads: Option<Spanned<i64>>,
    /// How long SIGTERM waits for in-flight requests and tunnels; default 30s.
    pub shutdown_grace: Option<Spanned<Dur>>,
    /// How long a listener removed by a reload lets its connections finish; default 30s.
    pub drain_timeout: Option<Spanned<Dur>>,
    /// Client connections open at once over the whole process, every listener together;
    /// more wait in the kernel backlog. Default 100000.
    pub max_connections: Option<Spanned<i64>>,
    /// Undo a reload that makes things worse: off unless this table is present.
    pub reload_guard: Option<Spanned<RawReloadGuard>>,
    /// The DNS resolver that server discovery uses: `dns = { servers = ["IP:PORT"] }`;
    /// default: the system's (`/etc/resolv.conf`).
    pub dns: Option<Spanned<RawResolver>>,
}

/// `[runtime] reload_guard = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReloadGuard {
    /// Default true when the table is present.
    pub enabled: Option<bool>,
    /// How long after a reload the new configuration is watched; default 30s.
    pub window: Option<Spanned<Dur>>,
    /// Roll back when more than this share of requests fail (5xx, failed L4 connects)
    /// within the window; default 0.2.
    pub max_error_ratio: Option<Spanned<f64>>,
    /// ...counted only once this many requests were seen; default 50.
    pub min_requests: Option<Spanned<i64>>,
}

/// `[runtime] dns = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResolver {
    /// Name servers to ask, "IP:PORT" (UDP, and TCP for long answers); default: those of
    /// `/etc/resolv.conf`.
    pub servers: Option<Spanned<Vec<Spanned<Addr>>>>,
    /// How long one query may take; default: `/etc/resolv.conf`'s (5s unless it says).
    pub timeout: Option<Spanned<Dur>>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address of the admin listener; default "127.0.0.1:9901".
    pub bind: Option<Spanned<Addr>>,
    /// Set to false to run without an admin listener; default true.
    pub enabled: Option<bool>,
    /// File holding the bearer token for state-changing admin calls.
    pub token_file: Option<Spanned<String>>,
    /// Allow state-changing calls without a token when bound to loopback; default false.
    /// Refused with `token_file` (the token applies even on loopback) or a non-loopback bind.
    pub allow_unauthenticated_loopback: Option<Spanned<bool>>,
    /// Require the token for `/status` and `/metrics` too (`/healthz` stays open); default false.
    pub read_auth: Option<Spanned<bool>>,
}

/// `[access_log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// Write one line per request (L7) or connection (L4); default false.
    pub enabled: Option<bool>,
    /// "stderr" (default) or a file path.
    pub path: Option<Spanned<String>>,
    /// "combined" (default) or "json".
    pub format: Option<Spanned<String>>,
    /// Lines each worker thread holds before new ones are dropped (and counted); default
    /// 4096.
    pub buffer: Option<Spanned<i64>>,
}

/// `protocol = ...` of a listener.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    /// L7: HTTP/1.1 and h2c.
    Http,
    /// L4: a byte relay.
    Tcp,
}

/// `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Unique name, used in metrics and logs.
    pub name: Spanned<String>,
    /// Address to listen on, "IP:PORT".
    pub bind: Spanned<Addr>,
    /// "http" or "tcp".
    pub protocol: RawProtocol,
    /// The pool that serves this listener. Required on a tcp listener (except with
    /// `route_by_sni`, where it is the pool of a missing or unknown SNI, same as
    /// `default_pool`); on an http listener with routes, the default for requests no route
    /// matches (optional there: without it they get 404).
    pub pool: Option<Spanned<String>>,
    /// tcp with `route_by_sni` only: the pool of a missing or unknown SNI; default none (such
    /// connections are closed). Same meaning as `pool`: set one of them.
    pub default_pool: Option<Spanned<String>>,
    /// tcp only: choose the pool from the ClientHello's SNI without terminating TLS:
    /// `{ "a.example" = "pool_a", "*.b.example" = "pool_b" }` (exact names before wildcards).
    pub route_by_sni: Option<RawSniRoutes>,
    /// Most client connections open at once; further ones wait in the kernel backlog. Default 10000.
    pub max_connections: Option<Spanned<i64>>,
    /// http only: which forwarding headers to add: "x-forwarded" (default), "rfc7239", "both", "none".
    pub forwarded: Option<Spanned<String>>,
    /// tcp only: send a PROXY protocol header to the backend: "v1" or "v2".
    pub send_proxy: Option<Spanned<String>>,
    /// http only: the upgrade protocols tunnelled (`Upgrade:` tokens, case-insensitive);
    /// default ["websocket"]. Others are stripped and the request is forwarded as a plain one;
    /// `h2c` is never tunnelled.
    pub upgrades: Option<Spanned<Vec<Spanned<String>>>>,
    /// Bounds on what one client may send.
    #[serde(default)]
    pub limits: RawListenerLimits,
    /// Client-side timeouts.
    #[serde(default)]
    pub timeouts: RawListenerTimeouts,
    /// TLS termination (`[listener.tls]`).
    pub tls: Option<Spanned<RawListenerTls>>,
    /// http only: routes (`[[listener.route]]`), tried in order; the first match wins.
    #[serde(default)]
    pub route: Vec<super::route::RawRoute>,
    /// http only: give each request an `X-Request-ID` (kept when a trusted proxy sent one),
    /// echoed in the response and written in the access log; default true.
    pub request_id: Option<Spanned<bool>>,
    /// http only: what keeps a client on one side of a split: "client_ip", "header:NAME"
    /// or "cookie:NAME". Default: none (each request placed at random).
    pub split_key: Option<Spanned<String>>,
    /// http only: custom bodies for the proxy's own 502, 503 and 504 answers.
    pub error_pages: Option<Spanned<super::route::RawErrorPages>>,
    /// Per-key rate limit (`[listener.rate_limit]`).
    pub rate_limit: Option<RawRateLimit>,
    /// Peers whose PROXY header and forwarding headers are believed: CIDRs; default none.
    pub trusted_proxies: Option<RawCidrs>,
    /// Read an inbound PROXY protocol header: "v1", "v2" or "any"; needs trusted_proxies.
    pub accept_proxy: Option<Spanned<String>>,
    /// How long a trusted peer has to send its PROXY header; default 5s.
    pub accept_proxy_timeout: Option<Spanned<Dur>>,
    /// http: the forwarding header trusted proxies write: "x-forwarded-for" (default),
    /// "forwarded" (RFC 7239) or "x-real-ip".
    pub client_ip_header: Option<Spanned<String>>,
    /// Only these client CIDRs may connect (http: others get 403; tcp: closed); default all.
    pub allow: Option<RawCidrs>,
    /// These client CIDRs may not connect (wins over allow); default none.
    pub deny: Option<RawCidrs>,
}

/// `[listener.limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerLimits {
    /// http: request line + headers, at most; larger heads get 431. Default 65536.
    pub max_header_bytes: Option<Spanned<Size>>,
    /// http: header fields in a request head, at most; more get 431. Default 100.
    pub max_headers: Option<Spanned<i64>>,
    /// http: request body, at most; larger get 413 (before any server is contacted when the
    /// length is declared). Default "100MiB".
    pub max_request_body: Option<Spanned<Size>>,
    /// http: a request body slower than this many bytes per second (averaged since it
    /// began, checked every `body_read`) is cut with 408; 0 turns the check off. Default 500.
    pub min_body_rate: Option<Spanned<Size>>,
    /// Connections open at once from one client IP address; more are closed at accept.
    /// Default 1000.
    pub max_connections_per_client: Option<Spanned<i64>>,
    /// http: concurrent streams per h2 connection. Default 100.
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
    /// http: h2 flow-control window a client may fill per stream and per connection.
    /// Default "256KiB".
    pub h2_window: Option<Spanned<Size>>,
}

/// `[listener.timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTimeouts {
    /// http: time for a client to send a complete request head; default 10s.
    pub header_read: Option<Spanned<Dur>>,
    /// http: how long a client connection with no request in flight is kept; default 60s.
    pub keepalive_idle: Option<Spanned<Dur>>,
    /// http: a new connection that sends nothing for this long is closed; default 10s.
    pub first_byte: Option<Spanned<Dur>>,
    /// http: no request-body progress for this long gets 408 and the connection closed;
    /// default 30s.
    pub body_read: Option<Spanned<Dur>>,
    /// http: a client that reads none of its response for this long is disconnected;
    /// default 60s.
    pub send_stall: Option<Spanned<Dur>>,
    /// tcp and upgraded (WebSocket) connections: close after this long with no bytes either way; default 10m.
    pub tunnel_idle: Option<Spanned<Dur>>,
}

/// `algorithm = ...` of a pool.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawAlgorithm {
    /// Strict rotation.
    RoundRobin,
    /// Smooth weighted round-robin.
    WeightedRoundRobin,
    /// Fewest in-flight relative to weight.
    LeastConn,
    /// By client IP.
    IpHash,
    /// Hash ring with bounded loads.
    ConsistentHash,
    /// Weighted random.
    Random,
    /// Power of two choices.
    P2c,
}

/// `[[pool]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Unique name.
    pub name: Spanned<String>,
    /// Balancing algorithm; default "round_robin".
    pub algorithm: Option<RawAlgorithm>,
    /// The servers: addresses, and DNS names resolved at run time; may be left out when
    /// `srv` or `[pool.discovery]` provides the servers.
    pub servers: Option<Spanned<Vec<RawServer>>>,
    /// Servers from SRV records of this name (`"_http._tcp.app.internal"`): the lowest
    /// priority is the primary tier, the next one the backup tier; SRV weight is weight.
    pub srv: Option<Spanned<String>>,
    /// Re-resolution bounds for DNS names and `srv`: `dns = { min_ttl = "5s", max_ttl = "5m" }`.
    pub dns: Option<Spanned<RawDnsTtl>>,
    /// Servers from a registry (`[pool.discovery] etcd = { ... }`).
    pub discovery: Option<Spanned<RawDiscovery>>,
    /// consistent_hash: "client_ip" (default), "header:NAME", "cookie:NAME", "path", "uri".
    pub hash_key: Option<Spanned<String>>,
    /// consistent_hash: ring points per unit of weight; default 100.
    pub virtual_nodes: Option<Spanned<i64>>,
    /// consistent_hash: cap each server at this factor × the average load (> 1.0); default none.
    pub hash_balance_factor: Option<Spanned<f64>>,
    /// Sticky sessions by cookie: `sticky = { cookie = "NAME" }`.
    pub sticky: Option<RawSticky>,
    /// Retries on another server for requests that failed before any response; default 2.
    pub retries: Option<Spanned<i64>>,
    /// Retries may add at most this share of requests (over 10 s); default 0.2.
    pub retry_budget: Option<Spanned<f64>>,
    /// Upstream HTTP version: "http1" (default) or "h2" (prior knowledge).
    pub upstream_protocol: Option<Spanned<String>>,
    /// Ramp a recovered or added server's weight from ~10% to full over this long; default off.
    pub slow_start: Option<Spanned<Dur>>,
    /// Default per-server limit of in-flight requests (L7) or connections (L4); default none.
    pub max_conns: Option<Spanned<i64>>,
    /// Requests waiting for a server slot, at most; default 1024.
    pub max_queue: Option<Spanned<i64>>,
    /// How long a request may wait for a server slot before a 503; default 5s.
    pub queue_timeout: Option<Spanned<Dur>>,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: RawPoolTimeouts,
    /// Active health checking.
    #[serde(default)]
    pub health: RawHealth,
    /// Passive failure detection.
    #[serde(default)]
    pub passive: RawPassive,
    /// TLS towards the servers: `tls = { ca_file, sni, verify, cert, key }`; default plaintext.
    pub tls: Option<Spanned<RawUpstreamTls>>,
}

/// One entry of `servers = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address "IP:PORT", or "HOST:PORT" with a DNS name (each resolved address a server).
    pub addr: Spanned<ServerAddr>,
    /// Name in metrics, logs and the admin API; default: the address.
    pub name: Option<Spanned<String>>,
    /// Weight 1..=256; default 1. Ignored by round_robin (a warning).
    pub weight: Option<Spanned<Weight>>,
    /// Only used when no primary server is eligible; default false.
    #[serde(default)]
    pub backup: bool,
    /// Per-server limit overriding the pool's `max_conns`.
    pub max_conns: Option<Spanned<i64>>,
}

impl RawServer {
    /// The weight as written, else the default.
    pub fn weight(&self) -> u32 {
        self.weight
            .as_ref()
            .map_or(Weight::default(), |w| *w.get_ref())
            .0
    }
}

/// `sticky = { cookie = "NAME" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    /// Cookie name.
    pub cookie: Spanned<String>,
}

/// `[pool.timeouts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTimeouts {
    /// TCP connect to a server; default 3s.
    pub connect: Option<Spanned<Dur>>,
    /// From request sent to response head received; default 60s.
    pub response_header: Option<Spanned<Dur>>,
    /// Idle pooled upstream connections are closed after this long; default 4s (below common
    /// server keep-alive timeouts, so a request never races the server closing it).
    pub upstream_idle: Option<Spanned<Dur>>,
    /// A server that sends no response-body bytes for this long mid-body is cut off (and
    /// blamed); default 60s.
    pub upstream_read_idle: Option<Spanned<Dur>>,
}

/// `[pool.health]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// "tcp" (default), "http", "heartbeat" or "none".
    pub kind: Option<Spanned<String>>,
    /// Between probes while a server is stable; default 2s.
    pub interval: Option<Spanned<Dur>>,
    /// Between probes while a server is changing state; default: interval / 4 (at least 100ms).
    pub fast_interval: Option<Spanned<Dur>>,
    /// Between probes while a server is down; default: interval.
    pub down_interval: Option<Spanned<Dur>>,
    /// Probe timeout; default 1s.
    pub timeout: Option<Spanned<Dur>>,
    /// Consecutive successes to mark a server up; default 2.
    pub rise: Option<Spanned<Count>>,
    /// Consecutive failures to mark a server down; default 3.
    pub fall: Option<Spanned<Count>>,
    /// "down" (default: no traffic before a first successful probe) or "up".
    pub initial_state: Option<Spanned<String>>,
    /// http: request path; default "/".
    pub path: Option<Spanned<String>>,
    /// http: method; default "GET".
    pub method: Option<Spanned<String>>,
    /// http: Host header; default the server address.
    pub host: Option<Spanned<String>>,
    /// http: accepted statuses, "200-399" (default) or a list `[200, 204]` or "200,204".
    pub expect_status: Option<Spanned<toml::Value>>,
    /// http: a substring the response body must contain.
    pub expect_body: Option<Spanned<String>>,
    /// heartbeat: bytes to send each interval (escapes \r \n \t \\ are understood).
    pub send: Option<Spanned<String>>,
    /// heartbeat: bytes the reply must start with (same escapes).
    pub expect: Option<Spanned<String>>,
    /// Flap damping.
    pub flap_damping: Option<RawFlapDamping>,
}

/// `[pool.health.flap_damping]`: BGP-style route-flap damping of servers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlapDamping {
    /// Default true when the table is present.
    pub enabled: Option<Spanned<bool>>,
    /// Penalty added per up→down transition; default 1000.
    pub penalty: Option<Spanned<f64>>,
    /// A server above this penalty is held out; default 2000.
    pub suppress: Option<Spanned<f64>>,
    /// A held-out server returns once its penalty decays below this; default 750.
    pub reuse: Option<Spanned<f64>>,
    /// The penalty halves every this long; default 30s.
    pub half_life: Option<Spanned<Dur>>,
}

/// `[pool.passive]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    /// Default true.
    pub enabled: Option<bool>,
    /// Consecutive failures that eject a server; default 5.
    pub consecutive_failures: Option<Spanned<Count>>,
    /// What counts as a failure: any of "connect", "reset", "timeout", "5xx"; default the first three.
    pub count: Option<Spanned<Vec<Spanned<String>>>>,
    /// First ejection time; it doubles with each repeated ejection; default 10s.
    pub base_ejection: Option<Spanned<Dur>>,
    /// Cap on the ejection time; default 5m.
    pub max_ejection: Option<Spanned<Dur>>,
    /// At most this percentage of a pool's servers ejected at once; default 50.
    pub max_ejected_percent: Option<Spanned<i64>>,
}

/// `[pool] dns = { ... }`: how often DNS names are resolved again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDnsTtl {
    /// Never re-resolve sooner than this, whatever the record's TTL; default 5s.
    pub min_ttl: Option<Spanned<Dur>>,
    /// Never keep an answer longer than this, whatever the record's TTL; default 5m.
    pub max_ttl: Option<Spanned<Dur>>,
}

/// `[pool.discovery]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// Servers registered in etcd under a key prefix.
    pub etcd: Option<Spanned<RawEtcd>>,
}

/// `etcd = { endpoints = [...], prefix = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    /// etcd client URLs, "http://HOST:PORT"; tried in turn.
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    /// Each key under this prefix is one server, its value JSON
    /// `{ "addr": "IP:PORT", "weight": 1, "backup": false }`.
    pub prefix: Spanned<String>,
}
