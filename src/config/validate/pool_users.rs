//! Pool keys that only an http listener reads, judged by the listeners that use the pool.
//!
//! A tcp listener relays bytes: it sets no cookie, hashes only the client address, speaks no
//! HTTP upstream, times no response and sees no status. Such a key on a pool that only tcp
//! listeners use would have no effect: refused at the key. On a pool that http and tcp
//! listeners share it does work for the http ones, so refusing would break a reasonable
//! config: it is warned about once instead, naming the tcp listeners that ignore it. A pool
//! no listener uses is left alone here.

use std::ops::Range;

use super::super::schema::RawPool;
use super::no_effect::{at, first};
use super::Ctx;
use crate::config::{parse_hash_key, ConfigError, HashKey, ListenerSettings, Protocol};

/// One http-only key as written: its name, where, and what a tcp listener does instead.
struct HttpOnly {
    key: String,
    span: Range<usize>,
    why: &'static str,
}

/// Checks every pool of `raw` against the protocols of the `listeners` that use it.
pub(super) fn check(
    cx: &Ctx,
    raw: &[RawPool],
    listeners: &[ListenerSettings],
) -> Result<(), ConfigError> {
    for p in raw {
        let name = p.name.get_ref();
        let users = listeners.iter().filter(|l| l.uses_pool(name));
        let http = users.clone().any(|l| l.protocol == Protocol::Http);
        let tcp: Vec<String> = users
            .filter(|l| l.protocol == Protocol::Tcp)
            .map(|l| format!("{:?}", &*l.name))
            .collect();
        if tcp.is_empty() {
            continue;
        }
        let (tcp, uses, ignores) = match tcp.as_slice() {
            [one] => (format!("tcp listener {one}"), "uses", "ignores"),
            many => (
                format!("tcp listeners {}", many.join(", ")),
                "use",
                "ignore",
            ),
        };
        let keys = http_only(p);
        if !http {
            if let Some((k, span)) = first(keys.iter().map(|k| (k, Some(k.span.clone())))) {
                return Err(cx.err(
                    span,
                    format!(
                        "pool {name:?}: {} applies only to http listeners, and only {tcp} {uses} this pool: {}",
                        k.key, k.why
                    ),
                ));
            }
            continue;
        }
        for k in keys {
            cx.warn(
                k.span,
                format!(
                    "pool {name:?}: {} applies only to http listeners; {tcp} also {uses} this pool and {ignores} it: {}",
                    k.key, k.why
                ),
            );
        }
    }
    Ok(())
}

/// The keys of `p` that only an http listener reads, as written.
fn http_only(p: &RawPool) -> Vec<HttpOnly> {
    const RELAY: &str = "a tcp listener relays bytes as they are";
    let mut out = Vec::new();
    let mut add = |key: &str, span: Option<Range<usize>>, why: &'static str| {
        if let Some(span) = span {
            out.push(HttpOnly {
                key: key.to_string(),
                span,
                why,
            });
        }
    };
    add(
        "sticky",
        p.sticky.as_ref().map(|s| s.cookie.span()),
        "a tcp listener sets and reads no cookie",
    );
    // Validated already; anything but the client address is read from a request.
    if let Some(k) = p
        .hash_key
        .as_ref()
        .filter(|k| parse_hash_key(k.get_ref()).is_ok_and(|h| h != HashKey::ClientIp))
    {
        add(
            &format!("hash_key {:?}", k.get_ref()),
            Some(k.span()),
            "a tcp listener hashes the client address (hash_key = \"client_ip\")",
        );
    }
    // http health probes speak the pool's upstream protocol, whoever uses the pool.
    let http_probes = p
        .health
        .kind
        .as_ref()
        .is_some_and(|k| k.get_ref() == "http");
    if !http_probes {
        add(
            "upstream_protocol",
            at(&p.upstream_protocol),
            "a tcp listener relays bytes as they are, and health probes are not kind = \"http\"",
        );
    }
    let t = &p.timeouts;
    add("timeouts.response_header", at(&t.response_header), RELAY);
    add("timeouts.upstream_idle", at(&t.upstream_idle), RELAY);
    add(
        "timeouts.upstream_read_idle",
        at(&t.upstream_read_idle),
        "a tcp listener's idle limit is its own tunnel_idle",
    );
    if let Some(list) = &p.passive.count {
        let http_kinds: Vec<_> = list
            .get_ref()
            .iter()
            .filter(|c| c.get_ref() != "connect")
            .collect();
        if let Some(c) = http_kinds.first() {
            let names: Vec<String> = http_kinds
                .iter()
                .map(|c| format!("{:?}", c.get_ref()))
                .collect();
            add(
                &format!("passive.count {}", names.join(", ")),
                Some(c.span()),
                "a tcp listener reports only connect failures",
            );
        }
    }
    add(
        "tls",
        at(&p.tls),
        "a tcp listener relays the client's bytes as they are; terminate TLS with [listener.tls], or pass it through",
    );
    out
}
