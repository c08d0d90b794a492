//! Reload preview: what applying a new config would change, computed from two validated
//! configs without touching a running process.
//!
//! It lists listeners added, removed or changed; each listener's routes added, removed,
//! changed or reordered, with split weights before and after; pools added, removed or
//! changed; servers added, removed, reweighted or moved between tiers; each server's expected share of new
//! traffic before and after; and, for hashing pools (consistent_hash, ip_hash), the share
//! of keys that would land on a different server. Hash shares and moves are measured by
//! building the same [`Tier`]s the proxy builds and sampling keys through them, so they are
//! exactly what the balancer would do with every server eligible.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::balance::{hash_bytes, Algorithm, BackendIdx, LoadGauge, Member, PickKey, Tier};
use crate::config::{Config, HashKey, ListenerSettings, PoolSettings, RouteAction, RouteSettings};

/// Keys sampled per hashing pool.
pub const SAMPLES: u32 = 100_000;

/// The preview of reloading from `old` to `new`, as text for a terminal.
pub fn preview(old: &Config, new: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "reload preview: {} -> {}",
        old.source.display(),
        new.source.display()
    );
    let mut changes = 0usize;
    changes += listeners(&mut out, old, new);
    changes += routes(&mut out, old, new);
    changes += process(&mut out, old, new);
    changes += pools(&mut out, old, new);
    if changes == 0 {
        let _ = writeln!(out, "no changes: a reload would keep everything as it is");
    }
    out
}

fn describe_listener(l: &ListenerSettings) -> String {
    let proto = format!("{:?}", l.protocol).to_lowercase();
    if l.routes.is_empty() {
        return format!("{proto} on {} -> {}", l.bind, default_pool(l));
    }
    format!(
        "{proto} on {} -> {} routes, then {}",
        l.bind,
        l.routes.len(),
        default_pool(l)
    )
}

fn default_pool(l: &ListenerSettings) -> String {
    l.pool
        .as_ref()
        .map_or("404".into(), |p| format!("pool {p}"))
}

fn listeners(out: &mut String, old: &Config, new: &Config) -> usize {
    let mut lines = Vec::new();
    for l in &new.listeners {
        match old.listeners.iter().find(|o| o.name == l.name) {
            None => lines.push(format!("  + {} ({})", l.name, describe_listener(l))),
            Some(o) if o == l => {}
            Some(o) => {
                let mut what = Vec::new();
                if o.bind != l.bind {
                    what.push(format!("bind {} -> {} (rebinds)", o.bind, l.bind));
                }
                if o.protocol != l.protocol {
                    what.push(format!(
                        "protocol {:?} -> {:?} (restarts the listener; open connections drain)",
                        o.protocol, l.protocol
                    ));
                }
                if o.pool != l.pool {
                    what.push(format!(
                        "unmatched requests: {} -> {}",
                        default_pool(o),
                        default_pool(l)
                    ));
                }
                if o.routes != l.routes {
                    what.push("routes changed (below)".into());
                }
                if o.split_key != l.split_key {
                    let key = |k: &Option<crate::route::SplitKey>| {
                        k.as_ref().map_or("random".into(), ToString::to_string)
                    };
                    what.push(format!(
                        "split_key {} -> {}",
                        key(&o.split_key),
                        key(&l.split_key)
                    ));
                }
                if o.error_pages != l.error_pages {
                    what.push("error pages changed".into());
                }
                if o.max_connections != l.max_connections {
                    what.push(format!(
                        "max_connections {} -> {}",
                        o.max_connections, l.max_connections
                    ));
                }
                if what.is_empty() {
                    what.push("settings changed (timeouts, headers)".into());
                }
                lines.push(format!("  ~ {}: {}", l.name, what.join("; ")));
            }
        }
    }
    for o in &old.listeners {
        if !new.listeners.iter().any(|l| l.name == o.name) {
            lines.push(format!(
                "  - {} ({}; stops accepting, open connections drain for up to {:?})",
                o.name,
                describe_listener(o),
                new.runtime.drain_timeout
            ));
        }
    }
    section(out, "listeners", &lines)
}

/// Per listener kept by the reload: routes added, removed, changed, reordered, and split
/// weights before and after. (A new listener's routes are in the summary of `check`.)
fn routes(out: &mut String, old: &Config, new: &Config) -> usize {
    let mut n = 0;
    for l in &new.listeners {
        let Some(o) = old.listeners.iter().find(|o| o.name == l.name) else {
            continue;
        };
        if o.routes == l.routes {
            continue;
        }
        let _ = writeln!(out, "routes of {} (first match wins):", l.name);
        let find = |list: &'_ [RouteSettings], name: &str| -> Option<usize> {
            list.iter().position(|r| r.name == name.into())
        };
        for r in &l.routes {
            match find(&o.routes, &r.name) {
                None => {
                    n += 1;
                    let _ = writeln!(out, "  + {}", r.describe());
                }
                Some(i) if o.routes[i] != *r => {
                    n += 1;
                    route_change(out, &o.routes[i], r);
                }
                Some(_) => {}
            }
        }
        for r in &o.routes {
            if find(&l.routes, &r.name).is_none() {
                n += 1;
                let _ = writeln!(out, "  - {}", r.describe());
            }
        }
        let kept = |a: &[RouteSettings], b: &[RouteSettings]| -> Vec<String> {
            a.iter()
                .filter(|r| find(b, &r.name).is_some())
                .map(|r| r.name.to_string())
                .collect()
        };
        let (before, after) = (kept(&o.routes, &l.routes), kept(&l.routes, &o.routes));
        if before != after {
            n += 1;
            let _ = writeln!(
                out,
                "  ~ order: {} -> {}",
                before.join(", "),
                after.join(", ")
            );
        }
    }
    n
}

fn route_change(out: &mut String, o: &RouteSettings, r: &RouteSettings) {
    let mut what = Vec::new();
    if (&o.hosts, &o.path, &o.methods, &o.headers) != (&r.hosts, &r.path, &r.methods, &r.headers) {
        what.push(format!(
            "matches {} -> {}",
            o.describe_match(),
            r.describe_match()
        ));
    }
    match (&o.action, &r.action) {
        (RouteAction::Split(a), RouteAction::Split(b)) if a != b => {
            what.push(format!("split {} -> {}", split_shares(a), split_shares(b)));
        }
        (a, b) if a != b => what.push(format!("{a} -> {b}")),
        _ => {}
    }
    if o.rewrites != r.rewrites {
        what.push("rewrites changed".into());
    }
    let _ = writeln!(out, "  ~ {}: {}", r.name, what.join("; "));
}

/// `api 95 (95.0%), api-next 5 (5.0%)`.
fn split_shares(t: &[crate::route::SplitTarget]) -> String {
    let total: u32 = t.iter().map(|t| t.weight).sum();
    t.iter()
        .map(|t| {
            format!(
                "{} {} ({:.1}%)",
                t.pool,
                t.weight,
                f64::from(t.weight) * 100.0 / f64::from(total.max(1))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn process(out: &mut String, old: &Config, new: &Config) -> usize {
    let mut lines = Vec::new();
    let bind = |c: &Config| c.admin.as_ref().map(|a| a.bind.to_string());
    if bind(old) != bind(new) {
        lines.push(format!(
            "  ~ admin: {} -> {}",
            bind(old).unwrap_or_else(|| "off".into()),
            bind(new).unwrap_or_else(|| "off".into())
        ));
    } else if old.admin != new.admin {
        lines.push("  ~ admin: token or access rules changed".into());
    }
    if old.access_log != new.access_log {
        lines.push(format!(
            "  ~ access_log: {} -> {}",
            if old.access_log.is_some() {
                "on"
            } else {
                "off"
            },
            if new.access_log.is_some() {
                "on"
            } else {
                "off"
            }
        ));
    }
    if old.runtime != new.runtime {
        lines.push("  ~ runtime: shutdown_grace, drain_timeout or worker_threads changed (worker_threads applies at the next start)".into());
    }
    section(out, "process", &lines)
}

fn section(out: &mut String, title: &str, lines: &[String]) -> usize {
    if !lines.is_empty() {
        let _ = writeln!(out, "{title}:");
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }
    lines.len()
}

fn pools(out: &mut String, old: &Config, new: &Config) -> usize {
    let mut n = 0;
    let mut text = String::new();
    for p in &new.pools {
        match old.pool(&p.name) {
            None => {
                n += 1;
                let _ = writeln!(
                    text,
                    "  + {} ({}, {} servers)",
                    p.name,
                    p.algorithm.name(),
                    p.servers.len()
                );
                servers_table(&mut text, None, p);
            }
            Some(o) if o == p => {}
            Some(o) => {
                n += 1;
                pool_change(&mut text, o, p);
            }
        }
    }
    for o in &old.pools {
        if new.pool(&o.name).is_none() {
            n += 1;
            let _ = writeln!(
                text,
                "  - {} ({}, {} servers; their state and metric series are dropped)",
                o.name,
                o.algorithm.name(),
                o.servers.len()
            );
        }
    }
    if n > 0 {
        let _ = writeln!(out, "pools:");
        out.push_str(&text);
    }
    n
}

fn pool_change(out: &mut String, o: &PoolSettings, p: &PoolSettings) {
    let mut what = Vec::new();
    if o.algorithm != p.algorithm {
        if o.algorithm.name() == p.algorithm.name() {
            what.push(format!("{} parameters changed", p.algorithm.name()));
        } else {
            what.push(format!(
                "algorithm {} -> {}",
                o.algorithm.name(),
                p.algorithm.name()
            ));
        }
    }
    if o.hash_key != p.hash_key {
        what.push(format!("hash_key {:?} -> {:?}", o.hash_key, p.hash_key));
    }
    if o.health != p.health {
        what.push("health checks changed (their probes restart)".into());
    }
    if o.discovery != p.discovery {
        what.push("discovery sources changed".into());
    }
    if o.servers != p.servers {
        let added = p
            .servers
            .iter()
            .filter(|s| !o.servers.iter().any(|x| x.addr == s.addr))
            .count();
        let removed = o
            .servers
            .iter()
            .filter(|s| !p.servers.iter().any(|x| x.addr == s.addr))
            .count();
        let changed = p
            .servers
            .iter()
            .filter(|s| o.servers.iter().any(|x| x.addr == s.addr && x != *s))
            .count();
        what.push(format!(
            "servers: {added} added, {removed} removed, {changed} changed"
        ));
    } else if what.is_empty() {
        what.push("settings changed (timeouts, retries, passive detection...)".into());
    }
    let _ = writeln!(
        out,
        "  ~ {}{}{}",
        p.name,
        if what.is_empty() { "" } else { ": " },
        what.join("; ")
    );
    servers_table(out, Some(o), p);
    if let Some(line) = moved_keys(o, p) {
        let _ = writeln!(out, "    {line}");
    }
}

/// Each server's line: what changed about it and its share of new traffic before/after.
fn servers_table(out: &mut String, old: Option<&PoolSettings>, new: &PoolSettings) {
    let before = old.map(shares).unwrap_or_default();
    let after = shares(new);
    let pct = |m: &HashMap<SocketAddr, f64>, a: &SocketAddr| {
        m.get(a)
            .map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0))
    };
    let _ = writeln!(
        out,
        "      {:<2}{:<28} {:>16}  share before -> after  from",
        "", "server", "weight"
    );
    for s in &new.servers {
        let prev = old.and_then(|o| o.servers.iter().find(|x| x.addr == s.addr));
        let (mark, weight) = match prev {
            None if old.is_some() => ("+", s.weight.to_string()),
            None => (" ", s.weight.to_string()),
            Some(x) if x.weight != s.weight => ("~", format!("{} -> {}", x.weight, s.weight)),
            Some(x) if x != s => ("~", s.weight.to_string()),
            Some(_) => (" ", s.weight.to_string()),
        };
        let mut label = format!("{} {}", s.name, s.addr);
        if s.backup {
            label.push_str(" backup");
        }
        if let Some(x) = prev {
            if x.name != s.name {
                let _ = write!(label, " (was {})", x.name);
            }
            if x.backup != s.backup {
                label.push_str(if s.backup {
                    " (now backup)"
                } else {
                    " (now primary)"
                });
            }
        }
        let _ = writeln!(
            out,
            "      {mark:<2}{label:<28} {weight:>16}  {:>6} -> {:<6}  {}",
            pct(&before, &s.addr),
            pct(&after, &s.addr),
            s.origin.as_str()
        );
    }
    if let Some(o) = old {
        for s in &o.servers {
            if !new.servers.iter().any(|x| x.addr == s.addr) {
                let label = format!("{} {}", s.name, s.addr);
                let _ = writeln!(
                    out,
                    "      {:<2}{label:<28} {:>16}  {:>6} -> -       {}",
                    "-",
                    s.weight,
                    pct(&before, &s.addr),
                    s.origin.as_str()
                );
            }
        }
    }
    sources(out, old, new);
}

/// The dynamic sources of a pool (their servers are listed above when known: a running
/// fulcrum's preview includes what they found).
fn sources(out: &mut String, old: Option<&PoolSettings>, new: &PoolSettings) {
    let list = |p: Option<&PoolSettings>| -> Vec<String> {
        let Some(d) = p.and_then(|p| p.discovery.as_ref()) else {
            return Vec::new();
        };
        let mut v: Vec<String> = d
            .dns
            .iter()
            .map(|n| format!("dns {}:{}", n.host, n.port))
            .collect();
        v.extend(d.srv.iter().map(|s| format!("srv {s}")));
        v.extend(
            d.etcd
                .iter()
                .map(|e| format!("etcd {} at {}", e.prefix, e.endpoints.join(", "))),
        );
        v
    };
    let (before, after) = (list(old), list(Some(new)));
    for s in &after {
        let mark = if old.is_some() && !before.contains(s) {
            "+"
        } else {
            " "
        };
        let _ = writeln!(out, "      {mark:<2}source {s} (servers found at run time)");
    }
    for s in before.iter().filter(|s| !after.contains(s)) {
        let _ = writeln!(out, "      {:<2}source {s} (its servers leave)", "-");
    }
}

/// Expected share of new requests per server with every server eligible: primaries share
/// the traffic (backups get none while a primary is up). Hashing pools are sampled through
/// the real balancer; the others follow from the algorithm (equal for round_robin, by
/// weight for the weighted ones, given equal load).
pub fn shares(p: &PoolSettings) -> HashMap<SocketAddr, f64> {
    let primaries: Vec<_> = p.servers.iter().filter(|s| !s.backup).collect();
    let mut m: HashMap<SocketAddr, f64> = p.servers.iter().map(|s| (s.addr, 0.0)).collect();
    if primaries.is_empty() {
        return m;
    }
    if p.algorithm.needs_key() {
        let tier = tier(p);
        let mut counts = vec![0u32; p.servers.len()];
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for _ in 0..SAMPLES {
            if let Some(i) = tier.pick(&sample_key(p, &mut rng)) {
                counts[i.get()] += 1;
            }
        }
        for (s, c) in p.servers.iter().zip(counts) {
            m.insert(s.addr, f64::from(c) / f64::from(SAMPLES));
        }
        return m;
    }
    let total: f64 = match p.algorithm {
        Algorithm::RoundRobin => primaries.len() as f64,
        _ => primaries.iter().map(|s| f64::from(s.weight)).sum(),
    };
    for s in primaries {
        let w = match p.algorithm {
            Algorithm::RoundRobin => 1.0,
            _ => f64::from(s.weight),
        };
        m.insert(s.addr, w / total);
    }
    m
}

/// The primary tier the proxy would build with every server eligible: the same member
/// indexes, weights and identity hashes as `Pool::publish`.
fn tier(p: &PoolSettings) -> Tier {
    let members = p
        .servers
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.backup)
        .map(|(i, s)| Member {
            idx: BackendIdx(i as u32),
            weight: s.weight,
            id_hash: hash_bytes(s.name.as_bytes()),
            load: Arc::new(LoadGauge::new(0)),
        })
        .collect();
    Tier::build(&p.algorithm, members)
}

/// A random request key of the kind this pool hashes on.
fn sample_key(p: &PoolSettings, rng: &mut fastrand::Rng) -> PickKey {
    let by_ip = matches!(p.algorithm, Algorithm::IpHash) || p.hash_key == HashKey::ClientIp;
    if by_ip {
        PickKey {
            client_ip: Some(IpAddr::V4(Ipv4Addr::from(rng.u32(..)))),
            key_hash: None,
            pool_load: 0,
        }
    } else {
        PickKey {
            client_ip: Some(IpAddr::V4(Ipv4Addr::from(rng.u32(..)))),
            key_hash: Some(hash_bytes(&rng.u64(..).to_le_bytes())),
            pool_load: 0,
        }
    }
}

/// For a pool that hashes before and after: the share of sampled keys whose server (by
/// address) changes.
fn moved_keys(o: &PoolSettings, p: &PoolSettings) -> Option<String> {
    if !p.algorithm.needs_key() {
        return None;
    }
    if !o.algorithm.needs_key() {
        return Some(format!(
            "keys: {} did not hash before; every key gets a new, stable server",
            o.algorithm.name()
        ));
    }
    let (before, after) = (tier(o), tier(p));
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut moved = 0u32;
    for _ in 0..SAMPLES {
        // One key through both tiers; a sample drawn for either pool's key kind works for
        // both when they hash the same thing, and the caveat below covers the rest.
        let key = sample_key(p, &mut rng);
        let a = before.pick(&key).map(|i| o.servers[i.get()].addr);
        let b = after.pick(&key).map(|i| p.servers[i.get()].addr);
        if a != b {
            moved += 1;
        }
    }
    let mut line = format!(
        "keys moving to another server: {:.1}% (of {} sampled {})",
        f64::from(moved) * 100.0 / f64::from(SAMPLES),
        SAMPLES,
        if matches!(p.algorithm, Algorithm::IpHash) || p.hash_key == HashKey::ClientIp {
            "client IPs"
        } else {
            "keys"
        }
    );
    if o.hash_key != p.hash_key {
        line.push_str("; the hash key itself changes, so in practice nearly every client moves");
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(pool: &str) -> Config {
        let text = format!(
            r#"
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
protocol = "http"
pool = "app"

[[pool]]
name = "app"
{pool}
"#
        );
        crate::config::parse(&text, Path::new("t.toml")).unwrap()
    }

    const THREE: &str = r#"servers = [ { addr = "127.0.0.1:1", name = "a" }, { addr = "127.0.0.1:2", name = "b" }, { addr = "127.0.0.1:3", name = "c", weight = 2 } ]"#;

    #[test]
    fn unchanged_config_has_no_changes() {
        let a = cfg(THREE);
        assert!(preview(&a, &a).contains("no changes"));
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let c = cfg(&format!("algorithm = \"weighted_round_robin\"\n{THREE}"));
        let s = shares(&c.pools[0]);
        let third: SocketAddr = "127.0.0.1:3".parse().unwrap();
        assert!((s[&third] - 0.5).abs() < 1e-9);
    }

    #[test]
    fn added_removed_and_reweighted_servers_are_listed() {
        let a = cfg(THREE);
        let b = cfg(
            r#"servers = [ { addr = "127.0.0.1:1", name = "a", weight = 3 }, { addr = "127.0.0.1:2", name = "b" }, { addr = "127.0.0.1:4", name = "d" } ]
algorithm = "weighted_round_robin""#,
        );
        let p = preview(&a, &b);
        assert!(
            p.contains("algorithm round_robin -> weighted_round_robin"),
            "{p}"
        );
        assert!(p.contains("+ d 127.0.0.1:4"), "{p}");
        assert!(p.contains("- c 127.0.0.1:3"), "{p}");
        assert!(p.contains("~ a 127.0.0.1:1") && p.contains("1 -> 3"), "{p}");
        // a: 1/3 of traffic before (round robin), 3/5 after (weights 3:1:1).
        assert!(p.contains("33.3% -> 60.0%"), "{p}");
    }

    #[test]
    fn hashing_pool_reports_moved_keys() {
        let a = cfg(&format!("algorithm = \"consistent_hash\"\n{THREE}"));
        let same = preview(
            &a,
            &cfg(&format!(
                "algorithm = \"consistent_hash\"\nretries = 1\n{THREE}"
            )),
        );
        assert!(
            same.contains("keys moving to another server: 0.0%"),
            "{same}"
        );
        let b = cfg(r#"algorithm = "consistent_hash"
servers = [ { addr = "127.0.0.1:1", name = "a" }, { addr = "127.0.0.1:2", name = "b" }, { addr = "127.0.0.1:3", name = "c", weight = 2 }, { addr = "127.0.0.1:4", name = "d" } ]"#);
        let p = preview(&a, &b);
        let pct: f64 = p
            .split("keys moving to another server: ")
            .nth(1)
            .and_then(|r| r.split('%').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a moved-keys line: {p}"));
        assert!(pct > 0.0 && pct <= 100.0, "{p}");
    }

    fn routed(routes: &str) -> Config {
        let text = format!(
            r#"
[[listener]]
name = "web"
bind = "127.0.0.1:8080"
protocol = "http"
pool = "app"
{routes}
[[pool]]
name = "app"
{THREE}

[[pool]]
name = "next"
{THREE}
"#
        );
        crate::config::parse(&text, Path::new("r.toml")).unwrap()
    }

    const API: &str = "[[listener.route]]\nname = \"api\"\npath_prefix = \"/api/\"\nsplit = [ { pool = \"app\", weight = 95 }, { pool = \"next\", weight = 5 } ]\n";
    const OLD: &str =
        "[[listener.route]]\nname = \"old\"\npath_prefix = \"/old/\"\nrespond = { status = 410 }\n";
    const DOCS: &str =
        "[[listener.route]]\nname = \"docs\"\nhost = [\"docs.example.com\"]\npool = \"app\"\n";

    #[test]
    fn routes_added_removed_and_reordered() {
        let a = routed(&format!("{API}{OLD}{DOCS}"));
        let b = routed(&format!(
            "{DOCS}\n{API}\n[[listener.route]]\nname = \"new\"\npath = \"/n\"\npool = \"next\"\n"
        ));
        let p = preview(&a, &b);
        assert!(p.contains("~ web: routes changed (below)"), "{p}");
        assert!(p.contains("routes of web (first match wins):"), "{p}");
        assert!(p.contains("  + new: path /n -> pool next"), "{p}");
        assert!(
            p.contains("  - old: path_prefix /old/ -> respond 410"),
            "{p}"
        );
        assert!(p.contains("  ~ order: api, docs -> docs, api"), "{p}");
        assert!(!p.contains("~ api"), "api itself did not change: {p}");
    }

    #[test]
    fn split_weights_before_and_after() {
        let a = routed(API);
        let b = routed(
            &API.replace("weight = 95", "weight = 90")
                .replace("weight = 5 ", "weight = 10 "),
        );
        let p = preview(&a, &b);
        assert!(
            p.contains(
                "  ~ api: split app 95 (95.0%), next 5 (5.0%) -> app 90 (90.0%), next 10 (10.0%)"
            ),
            "{p}"
        );
        let c = routed(&API.replace("/api/", "/v2/"));
        let p = preview(&a, &c);
        assert!(
            p.contains("  ~ api: matches path_prefix /api/ -> path_prefix /v2/"),
            "{p}"
        );
    }

    #[test]
    fn unmatched_requests_move_from_the_default_pool_to_404() {
        let a = routed(API);
        let text = format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\nprotocol = \"http\"\n{API}\n[[pool]]\nname = \"app\"\n{THREE}\n\n[[pool]]\nname = \"next\"\n{THREE}\n"
        );
        let b = crate::config::parse(&text, Path::new("r.toml")).unwrap();
        let p = preview(&a, &b);
        assert!(
            p.contains("~ web: unmatched requests: pool app -> 404"),
            "{p}"
        );
        assert!(
            !p.contains("routes of web"),
            "the routes did not change: {p}"
        );
    }

    #[test]
    fn listeners_added_and_removed() {
        let a = cfg(THREE);
        let text = format!(
            r#"
[[listener]]
name = "api"
bind = "127.0.0.1:8081"
protocol = "tcp"
pool = "app"

[[pool]]
name = "app"
{THREE}
"#
        );
        let b = crate::config::parse(&text, Path::new("n.toml")).unwrap();
        let p = preview(&a, &b);
        assert!(
            p.contains("+ api (tcp on 127.0.0.1:8081 -> pool app)"),
            "{p}"
        );
        assert!(
            p.contains("- web (http on 127.0.0.1:8080 -> pool app"),
            "{p}"
        );
    }
}
