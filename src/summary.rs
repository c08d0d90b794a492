//! The summary `fulcrum check` prints for a valid config: listeners, pools and servers, in
//! the words the config file uses (`http`, `tcp`, `round_robin`), never Rust debug names.
//!
//! Pure formatting: it reads a validated [`Config`] and touches nothing else.

use std::fmt::Write as _;

use crate::config::{self, Config, Protocol};

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
        let _ = writeln!(
            s,
            "  {} {} on {} -> pool {}",
            l.name,
            protocol(l.protocol),
            l.bind,
            l.pool
        );
    }
    let _ = writeln!(s, "pools: {}", cfg.pools.len());
    for p in &cfg.pools {
        let backups = p.servers.iter().filter(|s| s.backup).count();
        let _ = writeln!(
            s,
            "  {} ({}): {} servers ({} backup), health {}",
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
    }
    s
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
