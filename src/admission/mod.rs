//! Admission: who the client is, and whether it may come in.
//!
//! A connection meets admission twice. At accept ([`Admission::accept`]): a PROXY protocol
//! header is read if the listener asks for one (only from a trusted peer: anyone else is
//! refused before a byte is read), and on tcp listeners the access rules and the rate limit
//! apply to the connection. Per request on http listeners ([`Admission::request`]): trusted
//! forwarding headers refine the client, then the access rules and the rate limit apply to
//! the request. Both stages decide the client in one place, [`decide`], and carry it as one
//! [`ClientAddr`] to everything downstream (balancing keys, logs, forwarding headers,
//! `send_proxy`).
//!
//! The pure parts live in their own files: [`cidr`] (prefix sets), `proxy_in` (inbound
//! PROXY protocol), [`forwarded`] (forwarding headers), `access` (allow/deny) and [`rate`]
//! (the limiter). This module counts each refusal once, in the listener's metrics; it never
//! answers or closes anything itself: the caller maps a [`Refused`] to 403, 429 or a close.

pub(crate) mod access;
pub mod cidr;
pub mod forwarded;
pub(crate) mod proxy_in;
pub mod rate;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use http::HeaderMap;
use prometheus::IntCounter;
use tokio::net::TcpStream;

use crate::config::{AdmissionSettings, ListenerSettings, Protocol};
use crate::metrics::Metrics;

pub use access::{AccessRules, DenyRule};
pub use cidr::{Cidr, CidrError, CidrSet, RuleIdx};
pub use forwarded::{ClientHeader, ForwardChain};
pub use proxy_in::{read_proxy_header, Accept, ProxyInError};
pub use rate::{RateLimiter, RetryAfter};

/// How the client address was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientSource {
    /// The TCP peer itself.
    Peer,
    /// A PROXY protocol header from a trusted peer.
    ProxyProtocol,
    /// A forwarding header from a trusted sender.
    Forwarded(ClientHeader),
}

impl ClientSource {
    /// A short name for logs: "peer", "proxy_protocol", "x-forwarded-for", ...
    pub fn as_str(self) -> &'static str {
        match self {
            ClientSource::Peer => "peer",
            ClientSource::ProxyProtocol => "proxy_protocol",
            ClientSource::Forwarded(h) => h.name().as_str(),
        }
    }
}

/// The client of a connection or request, as decided by [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client: IP (IPv4-mapped IPv6 shown as IPv4) and port (0 when a header gave none).
    pub addr: SocketAddr,
    /// The TCP peer of the connection.
    pub peer: SocketAddr,
    /// The source a trusted peer's PROXY header gave, if one did.
    pub proxied: Option<SocketAddr>,
    /// How `addr` was learned.
    pub source: ClientSource,
}

impl ClientAddr {
    /// A client that is its own TCP peer (no PROXY header, no forwarding header).
    pub fn from_peer(peer: SocketAddr) -> ClientAddr {
        ClientAddr {
            addr: SocketAddr::new(cidr::canonical(peer.ip()), peer.port()),
            peer,
            proxied: None,
            source: ClientSource::Peer,
        }
    }

    /// The client IP: the key for `ip_hash`, access rules, rate limits and logs.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// Who sent the request to fulcrum: the PROXY header's source, else the TCP peer. It is
    /// the address the proxy appends to the forwarding chain.
    pub fn sender(&self) -> SocketAddr {
        let s = self.proxied.unwrap_or(self.peer);
        SocketAddr::new(cidr::canonical(s.ip()), s.port())
    }
}

/// The one place the client is decided, in this order:
/// 1. The TCP `peer`. If it is a trusted proxy and sent a PROXY header with an address
///    (`proxied`), that address is the sender; a `proxied` from an untrusted peer is ignored.
/// 2. If `headers` are given (http) and the sender is a trusted proxy, the listener's
///    `client_ip_header` is read and the client is its right-most untrusted hop
///    ([`forwarded::choose`]); the chain to forward is returned with it.
/// 3. Otherwise the sender is the client and the chain is empty.
///
/// Allocates nothing.
pub fn decide(
    peer: SocketAddr,
    proxied: Option<SocketAddr>,
    headers: Option<&HeaderMap>,
    s: &AdmissionSettings,
) -> (ClientAddr, ForwardChain) {
    let trusted = &s.trusted_proxies;
    let mut c = ClientAddr::from_peer(peer);
    if let Some(p) = proxied {
        if trusted.matches(peer.ip()) {
            c.proxied = Some(p);
            c.addr = c.sender();
            c.source = ClientSource::ProxyProtocol;
        }
    }
    if let Some(h) = headers {
        if !trusted.is_empty() && trusted.matches(c.sender().ip()) {
            if let Some(f) = forwarded::from_headers(h, s.client_ip_header, trusted) {
                c.addr = f.client;
                c.source = ClientSource::Forwarded(s.client_ip_header);
                return (c, f.chain);
            }
        }
    }
    (c, ForwardChain::default())
}

/// Why admission refused a connection or request.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// `accept_proxy` is on and the peer is not in `trusted_proxies`: close.
    #[error("peer is not a trusted proxy, and this listener expects a PROXY header")]
    Untrusted,
    /// The PROXY header could not be read: close.
    #[error("{0}")]
    ProxyHeader(ProxyInError),
    /// `allow` / `deny`: 403 (http) or close (tcp).
    #[error("refused by access rule")]
    Denied(DenyRule),
    /// Over the rate limit: 429 with `Retry-After: secs` (http) or close (tcp).
    #[error("rate limited; retry after {}s", .0.secs())]
    RateLimited(RetryAfter),
}

/// `fulcrum_proxy_protocol_rejected_total{reason}` values, pre-resolved in this order.
const PROXY_REASONS: [&str; 8] = [
    "untrusted",
    "timeout",
    "closed",
    "io",
    "missing",
    "version",
    "too_long",
    "malformed",
];

/// One listener's admission counters, resolved once.
#[derive(Clone)]
pub struct AdmissionMetrics {
    rate_limited: IntCounter,
    denied: Vec<IntCounter>,
    proxy_rejected: Vec<IntCounter>,
}

impl AdmissionMetrics {
    /// Handles for listener `name` with these settings (series exist from the start at 0).
    pub fn new(m: &Metrics, name: &str, s: &AdmissionSettings) -> AdmissionMetrics {
        let denied = s.access.as_ref().map_or_else(Vec::new, |a| {
            a.labels()
                .iter()
                .map(|l| m.access_denied.with_label_values(&[name, l]))
                .collect()
        });
        let proxy_rejected = if s.accept_proxy.is_some() {
            PROXY_REASONS
                .iter()
                .map(|r| m.proxy_protocol_rejected.with_label_values(&[name, r]))
                .collect()
        } else {
            Vec::new()
        };
        AdmissionMetrics {
            rate_limited: m.rate_limited.with_label_values(&[name]),
            denied,
            proxy_rejected,
        }
    }

    fn proxy(&self, reason: &str) {
        if let Some(i) = PROXY_REASONS.iter().position(|r| *r == reason) {
            if let Some(c) = self.proxy_rejected.get(i) {
                c.inc();
            }
        }
    }
}

/// A listener's admission at run time: settings, the rate limiter and the counters.
pub struct Admission {
    settings: AdmissionSettings,
    protocol: Protocol,
    limiter: Option<Arc<RateLimiter>>,
    metrics: AdmissionMetrics,
}

impl Admission {
    /// Builds the admission of `l`. Pass the admission this listener had before a reload as
    /// `previous`: its rate limiter (and so every key's state) is kept when the key kind is
    /// unchanged, with new `rate`, `burst` and `max_keys` applied in place.
    pub fn new(l: &ListenerSettings, m: &Metrics, previous: Option<&Admission>) -> Admission {
        let s = &l.admission;
        let limiter = s
            .rate_limit
            .as_ref()
            .map(|r| RateLimiter::reuse_or_new(previous.and_then(|p| p.limiter.as_ref()), r));
        Admission {
            settings: s.clone(),
            protocol: l.protocol,
            limiter,
            metrics: AdmissionMetrics::new(m, &l.name, s),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &AdmissionSettings {
        &self.settings
    }

    /// The rate limiter, when `[listener.rate_limit]` is set.
    pub fn limiter(&self) -> Option<&Arc<RateLimiter>> {
        self.limiter.as_ref()
    }

    /// The accept stage, before any other byte is read (and before TLS): reads the PROXY
    /// header when `accept_proxy` is set, then on tcp listeners applies the access rules and
    /// the rate limit. Counts each refusal. Run it in the connection's task, not the accept
    /// loop: it may wait up to `accept_proxy_timeout`.
    pub async fn accept(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<ClientAddr, Refused> {
        let mut proxied = None;
        if let Some(accept) = self.settings.accept_proxy {
            if !self.settings.trusted_proxies.matches(peer.ip()) {
                self.metrics.proxy("untrusted");
                return Err(Refused::Untrusted);
            }
            match read_proxy_header(stream, accept, self.settings.accept_proxy_timeout).await {
                Ok(p) => proxied = p,
                Err(e) => {
                    self.metrics.proxy(e.reason());
                    return Err(Refused::ProxyHeader(e));
                }
            }
        }
        self.accept_with(peer, proxied)
    }

    /// Whether [`Admission::accept`] reads from the connection (a PROXY header is expected);
    /// if not, [`Admission::accept_direct`] decides the same without a future.
    pub fn reads_proxy_header(&self) -> bool {
        self.settings.accept_proxy.is_some()
    }

    /// [`Admission::accept`] for a listener that expects no PROXY header.
    pub fn accept_direct(&self, peer: SocketAddr) -> Result<ClientAddr, Refused> {
        debug_assert!(!self.reads_proxy_header());
        self.accept_with(peer, None)
    }

    fn accept_with(
        &self,
        peer: SocketAddr,
        proxied: Option<SocketAddr>,
    ) -> Result<ClientAddr, Refused> {
        let (client, _) = decide(peer, proxied, None, &self.settings);
        if self.protocol == Protocol::Tcp {
            self.admit(&client, None, None, crate::backend::monotonic_ns())?;
        }
        Ok(client)
    }

    /// The request stage (http): decides the client from the connection's [`ClientAddr`] and
    /// the request headers, then applies the access rules and the rate limit, counting the
    /// request at `at` (a [`crate::backend::monotonic_ns`] reading: the time the request's
    /// handler read as it started). On success, returns the client and the chain the proxy
    /// forwards (before the sender's address). `conn_key` keeps the connection's client's
    /// rate-limit key between its requests.
    pub fn request(
        &self,
        conn: &ClientAddr,
        conn_key: &OnceLock<u64>,
        headers: &HeaderMap,
        at: u64,
    ) -> Result<(ClientAddr, ForwardChain), Refused> {
        // With nobody trusted, `decide` can only answer the TCP peer, and a connection whose
        // client is its peer is that answer already (per request, remaking it cost about 150
        // instructions). A reload that trusts someone takes the full path at once.
        let (client, chain, key) =
            if self.settings.trusted_proxies.is_empty() && conn.source == ClientSource::Peer {
                (*conn, ForwardChain::default(), Some(conn_key))
            } else {
                let (c, chain) = decide(conn.peer, conn.proxied, Some(headers), &self.settings);
                (c, chain, None)
            };
        self.admit(&client, key, Some(headers), at)?;
        Ok((client, chain))
    }

    /// Access rules, then the rate limit (a refused request never spends a token).
    fn admit(
        &self,
        client: &ClientAddr,
        client_key: Option<&OnceLock<u64>>,
        headers: Option<&HeaderMap>,
        at: u64,
    ) -> Result<(), Refused> {
        if let Some(a) = &self.settings.access {
            if let Err(rule) = a.check(client.ip()) {
                if let Some(c) = self.metrics.denied.get(a.label_index(rule)) {
                    c.inc();
                }
                return Err(Refused::Denied(rule));
            }
        }
        if let Some(l) = &self.limiter {
            if let Err(r) = l.check_request(client.ip(), client_key, headers, at) {
                self.metrics.rate_limited.inc();
                return Err(Refused::RateLimited(r));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
