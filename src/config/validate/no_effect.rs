//! Keys that would have no effect where they stand (DESIGN rule 4). Each is refused at its
//! own line and column with the reason, never accepted and ignored; the few whose refusal
//! would break a reasonable config are warned about once instead.
//!
//! A key is judged by what surrounds it: the switch of its table (`enabled = false`), its
//! listener's protocol, its pool's algorithm, health kind and server limits. Which listeners
//! use a pool is judged later, in `pool_users`, once every listener is known.
//!
//! Nothing here builds a setting: the checks read the raw schema (for positions) and, where
//! a value was defaulted, the settings `validate` already built from it.

use std::ops::Range;

use toml::Spanned;

use super::super::schema::{
    RawAccessLog, RawAdmin, RawHealth, RawListener, RawPassive, RawPool, RawReloadGuard,
};
use super::Ctx;
use crate::balance::Algorithm;
use crate::config::{ConfigError, HealthKind, PoolSettings, Protocol};

/// Where a key was written, if it was.
pub(super) fn at<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
    v.as_ref().map(Spanned::span)
}

/// The earliest written of `keys` (so the error names the first line to fix).
pub(super) fn first<K>(
    keys: impl IntoIterator<Item = (K, Option<Range<usize>>)>,
) -> Option<(K, Range<usize>)> {
    keys.into_iter()
        .filter_map(|(k, s)| s.map(|s| (k, s)))
        .min_by_key(|(_, s)| s.start)
}

/// Refuses the earliest written of `keys` with `why(key)`.
fn refuse<'k>(
    cx: &Ctx,
    keys: impl IntoIterator<Item = (&'k str, Option<Range<usize>>)>,
    why: impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    match first(keys) {
        Some((key, span)) => Err(cx.err(span, why(key))),
        None => Ok(()),
    }
}

/// `[access_log]`: where and how lines are written means nothing while none are.
pub(super) fn access_log(cx: &Ctx, a: &RawAccessLog) -> Result<(), ConfigError> {
    if a.enabled == Some(true) {
        return Ok(());
    }
    let off = if a.enabled == Some(false) {
        "enabled = false"
    } else {
        "enabled defaults to false"
    };
    refuse(
        cx,
        [
            ("path", at(&a.path)),
            ("format", at(&a.format)),
            ("buffer", at(&a.buffer)),
        ],
        |k| {
            format!("access_log.{k} has no effect: the access log is off ({off}); set enabled = true, or remove {k}")
        },
    )
}

/// `[admin]`: keys of a disabled listener, and a loopback exception that cannot apply.
pub(super) fn admin(cx: &Ctx, a: &RawAdmin) -> Result<(), ConfigError> {
    if a.enabled == Some(false) {
        return refuse(
            cx,
            [
                ("bind", at(&a.bind)),
                ("token_file", at(&a.token_file)),
                (
                    "allow_unauthenticated_loopback",
                    at(&a.allow_unauthenticated_loopback),
                ),
                ("read_auth", at(&a.read_auth)),
            ],
            |k| format!("admin.{k} has no effect: the admin listener is off (enabled = false)"),
        );
    }
    let Some(open) = a
        .allow_unauthenticated_loopback
        .as_ref()
        .filter(|o| *o.get_ref())
    else {
        return Ok(());
    };
    if a.token_file.is_some() {
        // auth.rs: a configured token applies on loopback too (other local users exist).
        return Err(cx.err(
            open.span(),
            "admin.allow_unauthenticated_loopback has no effect with admin.token_file: the token is needed on loopback too; remove one of them",
        ));
    }
    if let Some(b) = a
        .bind
        .as_ref()
        .filter(|b| !b.get_ref().0.ip().is_loopback())
    {
        return Err(cx.err(
            open.span(),
            format!(
                "admin.allow_unauthenticated_loopback has no effect: admin.bind {} (line {}) is not a loopback address",
                b.get_ref().0,
                cx.line(b.span().start)
            ),
        ));
    }
    Ok(())
}

/// `[runtime] reload_guard` with `enabled = false`: its bounds guard nothing.
pub(super) fn reload_guard(cx: &Ctx, g: &RawReloadGuard) -> Result<(), ConfigError> {
    refuse(
        cx,
        [
            ("window", at(&g.window)),
            ("max_error_ratio", at(&g.max_error_ratio)),
            ("min_requests", at(&g.min_requests)),
        ],
        |k| format!("reload_guard.{k} has no effect: reload_guard has enabled = false"),
    )
}

/// Listener keys that the other protocol reads.
pub(super) fn listener(cx: &Ctx, l: &RawListener, protocol: Protocol) -> Result<(), ConfigError> {
    let (lim, t) = (&l.limits, &l.timeouts);
    match protocol {
        Protocol::Tcp => refuse(
            cx,
            [
                ("upgrades", at(&l.upgrades)),
                ("request_id", at(&l.request_id)),
                ("max_header_bytes", at(&lim.max_header_bytes)),
                ("max_headers", at(&lim.max_headers)),
                ("max_request_body", at(&lim.max_request_body)),
                ("min_body_rate", at(&lim.min_body_rate)),
                (
                    "h2_max_concurrent_streams",
                    at(&lim.h2_max_concurrent_streams),
                ),
                ("h2_window", at(&lim.h2_window)),
                ("first_byte", at(&t.first_byte)),
                ("header_read", at(&t.header_read)),
                ("keepalive_idle", at(&t.keepalive_idle)),
                ("body_read", at(&t.body_read)),
                ("send_stall", at(&t.send_stall)),
            ],
            |k| format!("{k} applies only to protocol = \"http\" listeners"),
        ),
        // An http listener tunnels only upgraded connections; with none allowed, there are
        // no tunnels to time out.
        Protocol::Http => match (&l.upgrades, &t.tunnel_idle) {
            (Some(u), Some(idle)) if u.get_ref().is_empty() => Err(cx.err(
                idle.span(),
                format!(
                    "tunnel_idle has no effect: upgrades = [] (line {}) tunnels no connection on this http listener",
                    cx.line(u.span().start)
                ),
            )),
            _ => Ok(()),
        },
    }
}

/// The keys of one pool that its own other keys make pointless. `s` is what `p` validated
/// into (for values that were defaulted).
pub(super) fn pool(cx: &Ctx, p: &RawPool, s: &PoolSettings) -> Result<(), ConfigError> {
    weights(cx, p, s)?;
    queue(cx, p, s)?;
    if let (0, Some(b)) = (s.retries, &p.retry_budget) {
        return Err(cx.err(
            b.span(),
            "retry_budget has no effect with retries = 0: no request is retried",
        ));
    }
    health(cx, &p.health, &s.health.kind)?;
    passive(cx, &p.passive, &s.health.kind)
}

/// Slow start ramps a server's weight; round_robin reads no weight.
fn weights(cx: &Ctx, p: &RawPool, s: &PoolSettings) -> Result<(), ConfigError> {
    let servers = p
        .servers
        .as_ref()
        .map_or(&[][..], |v| v.get_ref().as_slice());
    if s.algorithm == Algorithm::RoundRobin {
        if let Some(ss) = &p.slow_start {
            return Err(cx.err(
                ss.span(),
                "slow_start has no effect under algorithm = \"round_robin\", which ignores weights (slow start ramps a server's weight); choose an algorithm that weighs servers, such as weighted_round_robin",
            ));
        }
        // Warned, not refused: weighted servers under the default algorithm are common (the
        // README's first example), and changing the algorithm later makes them count.
        if let Some(w) = servers
            .iter()
            .filter_map(|v| v.weight.as_ref())
            .find(|w| w.get_ref().0 != 1)
        {
            cx.warn(
                w.span(),
                format!(
                    "weights have no effect in pool {:?}: algorithm = \"round_robin\" rotates strictly; use weighted_round_robin to share by weight",
                    &*s.name
                ),
            );
        }
        return Ok(());
    }
    // A ramp scales weights and never goes below 1, so weight-1 servers do not ramp. Warned,
    // not refused: the admin API can raise weights at run time, and then they do.
    let dynamic_weights = p.srv.is_some() || p.discovery.is_some();
    if let Some(ss) = &p.slow_start {
        if !dynamic_weights && servers.iter().all(|v| v.weight() == 1) {
            cx.warn(
                ss.span(),
                format!(
                    "slow_start has no effect while every server of pool {:?} has weight 1: a ramp scales weights and never goes below 1 (weights of 10 or more ramp in steps)",
                    &*s.name
                ),
            );
        }
    }
    Ok(())
}

/// Requests wait for a slot only on servers with a limit, and only when the queue has room.
fn queue(cx: &Ctx, p: &RawPool, s: &PoolSettings) -> Result<(), ConfigError> {
    let servers = p
        .servers
        .as_ref()
        .map_or(&[][..], |v| v.get_ref().as_slice());
    // Discovered servers take the pool's max_conns, so the pool's and the listed ones'
    // limits are all there are.
    let limited = p.max_conns.is_some() || servers.iter().any(|v| v.max_conns.is_some());
    if !limited {
        return refuse(
            cx,
            [
                ("max_queue", at(&p.max_queue)),
                ("queue_timeout", at(&p.queue_timeout)),
            ],
            |k| {
                format!("{k} has no effect: no server of pool {:?} has a limit (max_conns), so no request ever waits for a slot", &*s.name)
            },
        );
    }
    match (s.max_queue, &p.queue_timeout) {
        (0, Some(t)) => Err(cx.err(
            t.span(),
            "queue_timeout has no effect with max_queue = 0: no request waits",
        )),
        _ => Ok(()),
    }
}

/// `[pool.health]`: timing keys without probes, and a fast interval no probe ever uses.
fn health(cx: &Ctx, h: &RawHealth, kind: &HealthKind) -> Result<(), ConfigError> {
    let fd = h.flap_damping.as_ref();
    let damping_keys = [
        ("flap_damping.enabled", fd.and_then(|f| at(&f.enabled))),
        ("flap_damping.penalty", fd.and_then(|f| at(&f.penalty))),
        ("flap_damping.suppress", fd.and_then(|f| at(&f.suppress))),
        ("flap_damping.reuse", fd.and_then(|f| at(&f.reuse))),
        ("flap_damping.half_life", fd.and_then(|f| at(&f.half_life))),
    ];
    if *kind == HealthKind::None {
        let why = |k: &str| {
            format!("health {k} has no effect with kind = \"none\": no probes run (servers are up unless passive detection ejects them)")
        };
        refuse(
            cx,
            [
                ("interval", at(&h.interval)),
                ("fast_interval", at(&h.fast_interval)),
                ("down_interval", at(&h.down_interval)),
                ("timeout", at(&h.timeout)),
                ("rise", at(&h.rise)),
                ("fall", at(&h.fall)),
                ("initial_state", at(&h.initial_state)),
            ]
            .into_iter()
            .chain(damping_keys),
            why,
        )?;
        // An empty [pool.health.flap_damping] turns damping on, yet has no key to point at:
        // point at kind = "none", which is always written (the default kind is tcp).
        if fd.is_some() {
            let span = at(&h.kind).unwrap_or(0..0);
            return Err(cx.err(span, why("flap_damping")));
        }
        return Ok(());
    }
    if let (Some(r), Some(f), Some(fast)) = (&h.rise, &h.fall, &h.fast_interval) {
        if r.get_ref().0 == 1 && f.get_ref().0 == 1 {
            return Err(cx.err(
                fast.span(),
                "fast_interval has no effect with rise = 1 and fall = 1: one probe changes a server's state, so no probe is ever taken while it is changing",
            ));
        }
    }
    if fd
        .and_then(|f| f.enabled.as_ref())
        .is_some_and(|e| !*e.get_ref())
    {
        refuse(cx, damping_keys.into_iter().skip(1), |k| {
            format!("{k} has no effect: flap_damping has enabled = false")
        })?;
    }
    Ok(())
}

/// `[pool.passive]` with `enabled = false`. Its `count` still says which traffic failures
/// the checker compares with its probes, so it stands while probes run.
fn passive(cx: &Ctx, p: &RawPassive, kind: &HealthKind) -> Result<(), ConfigError> {
    if p.enabled != Some(false) {
        return Ok(());
    }
    refuse(
        cx,
        [
            ("consecutive_failures", at(&p.consecutive_failures)),
            ("base_ejection", at(&p.base_ejection)),
            ("max_ejection", at(&p.max_ejection)),
            ("max_ejected_percent", at(&p.max_ejected_percent)),
        ],
        |k| format!("passive.{k} has no effect: passive detection is off (enabled = false)"),
    )?;
    match (&p.count, kind) {
        (Some(c), HealthKind::None) => Err(cx.err(
            c.span(),
            "passive.count has no effect: passive detection is off (enabled = false), and with health kind = \"none\" no probes are compared with traffic",
        )),
        _ => Ok(()),
    }
}
