//! A listener's admission keys: who the client is (`trusted_proxies`, `accept_proxy`,
//! `client_ip_header`), who may connect (`allow`, `deny`) and how often (`[listener.rate_limit]`).
//! The raw TOML shape, the typed settings, and their validation, which compiles the CIDR
//! lists once so that nothing is parsed on the request path. Each bad CIDR is reported at
//! its own line and column; a key that would have no effect where it stands is refused.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::types::Dur;
use super::{ConfigError, Protocol};
use crate::admission::access::AccessRules;
use crate::admission::cidr::{Cidr, CidrSet};
use crate::admission::forwarded::ClientHeader;
use crate::admission::proxy_in::Accept;

/// A list of CIDRs as written, each with its position.
pub type RawCidrs = Spanned<Vec<Spanned<String>>>;

/// `[listener.rate_limit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests (http) or connections (tcp) per second per key; may be fractional (0.5).
    pub rate: Spanned<f64>,
    /// How many may come at once from rest; default: `rate` rounded up (at least 1).
    pub burst: Option<Spanned<i64>>,
    /// "client_ip" (default) or "header:NAME" (http only; the client IP when it is absent).
    pub key: Option<Spanned<String>>,
    /// Most keys tracked at once (the least recently limited are forgotten first); default 100000.
    pub max_keys: Option<Spanned<i64>>,
}

/// What a rate limit counts by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateKey {
    /// The client address as decided (after PROXY protocol and trusted forwarding headers).
    ClientIp,
    /// A request header's value (lower-case name); the client IP when the header is absent.
    Header(http::HeaderName),
}

/// `[listener.rate_limit]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimitSettings {
    /// Events per second per key, 0.001 to 1e9.
    pub rate: f64,
    /// Burst, at least 1.
    pub burst: u32,
    /// What is counted.
    pub key: RateKey,
    /// Keys tracked at most.
    pub max_keys: usize,
}

/// A listener's admission settings; the default admits everyone as their TCP peer.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionSettings {
    /// Senders whose PROXY header and forwarding headers are believed (empty: none).
    pub trusted_proxies: Arc<CidrSet>,
    /// The forwarding header the trusted proxies write (http).
    pub client_ip_header: ClientHeader,
    /// Read a PROXY protocol header first, of these versions.
    pub accept_proxy: Option<Accept>,
    /// How long a trusted peer has to send its whole PROXY header.
    pub accept_proxy_timeout: Duration,
    /// `allow` / `deny` on the client address; `None` when neither is set.
    pub access: Option<Arc<AccessRules>>,
    /// Per-key rate limit.
    pub rate_limit: Option<RateLimitSettings>,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            trusted_proxies: Arc::new(CidrSet::default()),
            client_ip_header: ClientHeader::XForwardedFor,
            accept_proxy: None,
            accept_proxy_timeout: DEFAULT_ACCEPT_PROXY_TIMEOUT,
            access: None,
            rate_limit: None,
        }
    }
}

/// Default `accept_proxy_timeout`.
pub const DEFAULT_ACCEPT_PROXY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `max_keys`.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The raw keys of one listener that this file validates.
pub(super) struct RawAdmission<'a> {
    pub trusted_proxies: &'a Option<RawCidrs>,
    pub accept_proxy: &'a Option<Spanned<String>>,
    pub accept_proxy_timeout: &'a Option<Spanned<Dur>>,
    pub client_ip_header: &'a Option<Spanned<String>>,
    pub allow: &'a Option<RawCidrs>,
    pub deny: &'a Option<RawCidrs>,
    pub rate_limit: &'a Option<RawRateLimit>,
}

/// Error helper: an error at a span of the file being validated.
pub(super) type Err<'a> = &'a dyn Fn(std::ops::Range<usize>, String) -> ConfigError;

/// Validates one listener's admission keys.
pub(super) fn validate(
    raw: &RawAdmission,
    protocol: Protocol,
    err: Err,
) -> Result<AdmissionSettings, ConfigError> {
    let mut s = AdmissionSettings::default();
    if let Some(t) = raw.trusted_proxies {
        s.trusted_proxies = Arc::new(cidrs(t, "trusted_proxies", err)?);
    }
    let trusted = !s.trusted_proxies.is_empty();

    if let Some(a) = raw.accept_proxy {
        s.accept_proxy = Some(match a.get_ref().as_str() {
            "v1" => Accept::V1,
            "v2" => Accept::V2,
            "any" => Accept::Any,
            other => {
                return Err(err(
                    a.span(),
                    format!("unknown accept_proxy {other:?}, expected one of `v1`, `v2`, `any`"),
                ))
            }
        });
        if !trusted {
            return Err(err(
                a.span(),
                "accept_proxy needs trusted_proxies: a PROXY header is believed only from the \
                 load balancers listed there (e.g. trusted_proxies = [\"10.0.0.0/8\"])"
                    .into(),
            ));
        }
    }
    if let Some(t) = raw.accept_proxy_timeout {
        if s.accept_proxy.is_none() {
            return Err(err(
                t.span(),
                "accept_proxy_timeout applies only with accept_proxy".into(),
            ));
        }
        if t.get_ref().0.is_zero() {
            return Err(err(
                t.span(),
                "accept_proxy_timeout must be greater than zero".into(),
            ));
        }
        s.accept_proxy_timeout = t.get_ref().0;
    }
    if let Some(h) = raw.client_ip_header {
        s.client_ip_header = match h.get_ref().as_str() {
            "x-forwarded-for" => ClientHeader::XForwardedFor,
            "forwarded" => ClientHeader::Forwarded,
            "x-real-ip" => ClientHeader::XRealIp,
            other => {
                return Err(err(
                    h.span(),
                    format!("unknown client_ip_header {other:?}, expected one of `x-forwarded-for`, `forwarded`, `x-real-ip`"),
                ))
            }
        };
        if protocol == Protocol::Tcp {
            return Err(err(
                h.span(),
                "client_ip_header applies only to protocol = \"http\" listeners".into(),
            ));
        }
        if !trusted {
            return Err(err(h.span(), "client_ip_header needs trusted_proxies: the header is believed only from the proxies listed there".into()));
        }
    }
    // On a tcp listener, trusted proxies matter only for reading a PROXY header.
    if let (Protocol::Tcp, Some(t), None) = (protocol, raw.trusted_proxies, s.accept_proxy) {
        return Err(err(
            t.span(),
            "trusted_proxies on a tcp listener has no effect without accept_proxy (tcp carries no forwarding headers)".into(),
        ));
    }

    let allow = raw
        .allow
        .as_ref()
        .map(|a| cidrs(a, "allow", err))
        .transpose()?;
    let deny = raw
        .deny
        .as_ref()
        .map(|d| cidrs(d, "deny", err))
        .transpose()?;
    if allow.is_some() || deny.is_some() {
        s.access = Some(Arc::new(AccessRules::new(
            allow.unwrap_or_default(),
            deny.unwrap_or_default(),
        )));
    }

    if let Some(r) = raw.rate_limit {
        s.rate_limit = Some(rate_limit(r, protocol, err)?);
    }
    Ok(s)
}

/// Parses a CIDR list; an empty list is refused (it would say nothing).
fn cidrs(list: &RawCidrs, key: &str, err: Err) -> Result<CidrSet, ConfigError> {
    if list.get_ref().is_empty() {
        return Err(err(
            list.span(),
            format!("{key} is empty; list CIDRs such as \"10.0.0.0/8\" or remove the key"),
        ));
    }
    let mut v = Vec::with_capacity(list.get_ref().len());
    for item in list.get_ref() {
        v.push(Cidr::parse(item.get_ref()).map_err(|e| err(item.span(), format!("{key}: {e}")))?);
    }
    Ok(CidrSet::new(v))
}

fn rate_limit(
    r: &RawRateLimit,
    protocol: Protocol,
    err: Err,
) -> Result<RateLimitSettings, ConfigError> {
    let rate = *r.rate.get_ref();
    if !(rate.is_finite() && (0.001..=1e9).contains(&rate)) {
        return Err(err(
            r.rate.span(),
            format!("rate must be between 0.001 and 1000000000 per second, got {rate}"),
        ));
    }
    let burst = match &r.burst {
        None => rate.ceil().max(1.0) as u32,
        Some(b) if (1..=i64::from(u32::MAX)).contains(b.get_ref()) => *b.get_ref() as u32,
        Some(b) => {
            return Err(err(
                b.span(),
                format!("burst must be at least 1, got {}", b.get_ref()),
            ))
        }
    };
    let key = match &r.key {
        None => RateKey::ClientIp,
        Some(k) => parse_rate_key(k.get_ref()).map_err(|m| err(k.span(), m))?,
    };
    if let (Protocol::Tcp, RateKey::Header(_), Some(k)) = (protocol, &key, &r.key) {
        return Err(err(
            k.span(),
            "rate_limit key \"header:NAME\" applies only to protocol = \"http\" listeners; tcp counts connections per client_ip".into(),
        ));
    }
    let max_keys = match &r.max_keys {
        None => DEFAULT_MAX_KEYS,
        Some(m) if (1..=100_000_000).contains(m.get_ref()) => *m.get_ref() as usize,
        Some(m) => {
            return Err(err(
                m.span(),
                format!(
                    "max_keys must be between 1 and 100000000, got {}",
                    m.get_ref()
                ),
            ))
        }
    };
    Ok(RateLimitSettings {
        rate,
        burst,
        key,
        max_keys,
    })
}

/// `client_ip` or `header:NAME`.
pub fn parse_rate_key(s: &str) -> Result<RateKey, String> {
    if s == "client_ip" {
        return Ok(RateKey::ClientIp);
    }
    if let Some(h) = s.strip_prefix("header:") {
        return http::HeaderName::from_bytes(h.trim().as_bytes())
            .map(RateKey::Header)
            .map_err(|_| {
                format!("invalid rate_limit key {s:?}: {h:?} is not a valid header name")
            });
    }
    Err(format!(
        "invalid rate_limit key {s:?}; expected \"client_ip\" or \"header:NAME\""
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{parse, Config};

    const POOL: &str = "\n[[pool]]\nname = \"p\"\nservers = [{ addr = \"127.0.0.1:9\" }]\n";

    fn with(protocol: &str, keys: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\npool = \"p\"\n{keys}\n{POOL}"
        );
        parse(&text, Path::new("t.toml"))
    }

    /// The error's "line:col: message" part.
    fn err(protocol: &str, keys: &str) -> String {
        let e = with(protocol, keys)
            .expect_err("config must be refused")
            .to_string();
        e.strip_prefix("t.toml:").unwrap_or(&e).to_string()
    }

    #[test]
    fn defaults_admit_everyone_as_their_peer() {
        let l = &with("http", "").unwrap().listeners[0];
        assert_eq!(l.admission, AdmissionSettings::default());
        assert_eq!(l.admission.accept_proxy_timeout, Duration::from_secs(5));
    }

    #[test]
    fn full_set_of_keys() {
        let c = with(
            "http",
            "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\naccept_proxy = \"any\"\naccept_proxy_timeout = \"2s\"\nclient_ip_header = \"forwarded\"\nallow = [\"0.0.0.0/0\"]\ndeny = [\"10.6.0.0/16\"]\n[listener.rate_limit]\nrate = 0.5\nkey = \"header:X-User\"",
        )
        .unwrap();
        let a = &c.listeners[0].admission;
        assert_eq!(a.trusted_proxies.len(), 2);
        assert_eq!(a.accept_proxy, Some(Accept::Any));
        assert_eq!(a.accept_proxy_timeout, Duration::from_secs(2));
        assert_eq!(a.client_ip_header, ClientHeader::Forwarded);
        assert!(a.access.is_some());
        let r = a.rate_limit.as_ref().unwrap();
        assert_eq!((r.rate, r.burst, r.max_keys), (0.5, 1, DEFAULT_MAX_KEYS));
        assert_eq!(
            r.key,
            RateKey::Header(http::HeaderName::from_static("x-user"))
        );
        let r = with("tcp", "[listener.rate_limit]\nrate = 100\nburst = 200").unwrap();
        let r = r.listeners[0].admission.rate_limit.clone().unwrap();
        assert_eq!((r.rate, r.burst, r.key), (100.0, 200, RateKey::ClientIp));
    }

    #[test]
    fn each_bad_cidr_is_reported_at_its_own_position() {
        let e = err("http", "deny = [\"10.0.0.0/8\",\n  \"10.0.0.1/8\"]");
        assert!(
            e.starts_with(
                "7:3: deny: \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"?"
            ),
            "{e}"
        );
        let e = err("http", "allow = [\"nope\"]");
        assert!(
            e.starts_with("6:10: allow: invalid address \"nope\""),
            "{e}"
        );
        let e = err("http", "trusted_proxies = []");
        assert!(e.contains("trusted_proxies is empty"), "{e}");
    }

    #[test]
    fn keys_without_effect_are_refused() {
        let cases = [
            (
                "http",
                "accept_proxy = \"v1\"",
                "accept_proxy needs trusted_proxies",
            ),
            (
                "tcp",
                "accept_proxy = \"v3\"",
                "unknown accept_proxy \"v3\"",
            ),
            (
                "http",
                "accept_proxy_timeout = \"1s\"",
                "applies only with accept_proxy",
            ),
            (
                "http",
                "client_ip_header = \"x-real-ip\"",
                "client_ip_header needs trusted_proxies",
            ),
            (
                "tcp",
                "trusted_proxies = [\"10.0.0.0/8\"]\nclient_ip_header = \"forwarded\"",
                "only to protocol = \"http\"",
            ),
            (
                "tcp",
                "trusted_proxies = [\"10.0.0.0/8\"]",
                "no effect without accept_proxy",
            ),
            (
                "tcp",
                "[listener.rate_limit]\nrate = 1\nkey = \"header:X\"",
                "only to protocol = \"http\"",
            ),
            (
                "http",
                "[listener.rate_limit]\nrate = 0",
                "rate must be between",
            ),
            (
                "http",
                "[listener.rate_limit]\nrate = 1\nburst = 0",
                "burst must be at least 1",
            ),
            (
                "http",
                "[listener.rate_limit]\nrate = 1\nkey = \"cookie:x\"",
                "expected \"client_ip\" or \"header:NAME\"",
            ),
            (
                "http",
                "[listener.rate_limit]\nrate = 1\nmax_keys = 0",
                "max_keys must be between",
            ),
            (
                "http",
                "[listener.rate_limit]\nburst = 1",
                "missing field `rate`",
            ),
        ];
        for (proto, keys, want) in cases {
            let e = err(proto, keys);
            assert!(e.contains(want), "{proto} {keys:?}: {e}");
        }
    }

    #[test]
    fn admin_read_auth_needs_a_token_file() {
        let text = format!("[admin]\nread_auth = true\n{POOL}");
        let e = parse(&text, Path::new("t.toml")).unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:2:13: admin.read_auth = true needs admin.token_file"),
            "{e}"
        );
        let text = format!("[admin]\nread_auth = true\ntoken_file = \"/t\"\n{POOL}");
        assert!(
            parse(&text, Path::new("t.toml"))
                .unwrap()
                .admin
                .unwrap()
                .read_auth
        );
    }
}
