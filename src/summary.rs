//! The summary `fulcrum check` prints for a valid config: listeners, pools and servers, in
//! the words the config file uses (`http`, `tcp`, `round_robin`), never Rust debug names.
//!
//! Pure formatting: it reads a validated [`Config`] and touches nothing else.

use std::fmt::Write as _;

use crate::config::{self, Config, Protocol};
use crate::discovery::check::Finding;

/// The short summary `fulcrum check` prints.
pub fn summary(cfg: &Config) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(s, "{}: configuration is valid", cfg.source.display());
    if let Some(a) = &cfg.admin {
        let _ = writeln!(s, "admin: {}", a.bind);
    }
    let _ = writeln!(s, "listeners: {}", cfg.listeners.len());
    for l in &cfg.listeners {
        let target = match (&l.pool, l.routes.len(), &l.sni_routes) {
            (_, 0, Some(r)) => format!(
                "{} SNI routes, then {}",
                r.routes.len(),
                l.pool
                    .as_ref()
                    .map_or("close".to_string(), |p| format!("pool {p}"))
            ),
            (Some(p), 0, None) => format!("pool {p}"),
            (p, n, _) => format!(
                "{n} routes, then {}",
                p.as_ref()
                    .map_or("404".to_string(), |p| format!("pool {p}"))
            ),
        };
        let _ = writeln!(
            s,
            "  {} {} on {} -> {target}",
            l.name,
            protocol(l.protocol),
            l.bind
        );
        for r in &l.routes {
            let _ = writeln!(s, "    {}", r.describe());
        }
    }
    let _ = writeln!(s, "pools: {}", cfg.pools.len());
    for p in &cfg.pools {
        let backups = p.servers.iter().filter(|s| s.backup).count();
        let dynamic = if p.discovery.is_some() {
            " + discovered"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  {} ({}): {} servers{dynamic} ({} backup), health {}",
            p.name,
            p.algorithm.name(),
            p.servers.len(),
            backups,
            health(&p.health.kind)
        );
        for sv in &p.servers {
            // A server without a name is named after its address: say the address once.
            let addr = sv.addr.to_string();
            let name = if *sv.name == *addr {
                String::new()
            } else {
                format!("{} ", sv.name)
            };
            let _ = writeln!(
                s,
                "    {name}{addr} weight {}{}",
                sv.weight,
                if sv.backup { " backup" } else { "" }
            );
        }
        if let Some(d) = &p.discovery {
            for n in &d.dns {
                let _ = writeln!(
                    s,
                    "    {}:{} weight {}{} (dns: each address a server, resolved again by TTL, every {} to {})",
                    n.host,
                    n.port,
                    n.weight,
                    if n.backup { " backup" } else { "" },
                    humantime::format_duration(d.min_ttl),
                    humantime::format_duration(d.max_ttl)
                );
            }
            if let Some(srv) = &d.srv {
                let _ = writeln!(s, "    srv {srv} (lowest priority primary, next backup)");
            }
            if let Some(e) = &d.etcd {
                let _ = writeln!(s, "    etcd {} at {}", e.prefix, e.endpoints.join(", "));
            }
        }
    }
    s
}

/// What `fulcrum check` found resolving a config's dynamic sources: the lines to print, and
/// the warnings (sources that give no server, malformed registrations).
pub fn discovery_report(findings: &[Finding]) -> (String, Vec<String>) {
    let mut s = String::new();
    let mut warnings = Vec::new();
    if findings.is_empty() {
        return (s, warnings);
    }
    let _ = writeln!(
        s,
        "discovery (resolved now; it changes while fulcrum runs):"
    );
    for f in findings {
        match &f.servers {
            Ok(list) if list.is_empty() => {
                let _ = writeln!(s, "  pool {}: {} -> no servers", f.pool, f.source);
                warnings.push(format!("pool {}: {} gives no servers", f.pool, f.source));
            }
            Ok(list) => {
                let _ = writeln!(s, "  pool {}: {} ->", f.pool, f.source);
                for sv in list {
                    let _ = writeln!(
                        s,
                        "    {} {} weight {}{}",
                        sv.name,
                        sv.addr,
                        sv.weight,
                        if sv.backup { " backup" } else { "" }
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(s, "  pool {}: {} -> failed", f.pool, f.source);
                warnings.push(format!("pool {}: {}: {e}", f.pool, f.source));
            }
        }
        for w in &f.warnings {
            warnings.push(format!("pool {}: {}: {w}", f.pool, f.source));
        }
    }
    (s, warnings)
}

/// A protocol as the config spells it.
fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Tcp => "tcp",
    }
}

/// A health-check kind as the config spells it.
fn health(k: &config::HealthKind) -> &'static str {
    match k {
        config::HealthKind::None => "none",
        config::HealthKind::Tcp => "tcp",
        config::HealthKind::Http(_) => "http",
        config::HealthKind::Heartbeat { .. } => "heartbeat",
    }
}
