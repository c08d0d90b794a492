//! fulcrum: a Layer-4/7 reverse-proxy load balancer.
//!
//! A tour, in the order a connection meets the parts:
//! - [`listener`] binds sockets and accepts; each connection goes to [`proxy::http`] (L7,
//!   hyper) or [`proxy::tcp`] (L4 relay).
//! - The proxy asks its [`pool::Pool`] for a server; the pool asks the pure [`balance`] core,
//!   which only ever sees the eligible servers of the current table.
//! - [`backend`] holds each server's live state in atomics that survive reloads; [`health`]
//!   (active probes, passive detection) changes it and republishes the pool's table;
//!   [`queue`] admits each request to a server slot (`max_conns`) or queues it, bounded.
//! - [`config`] parses and validates TOML; [`runtime`] builds and swaps everything on start
//!   and reload; [`daemon`] handles signals and systemd; [`admin`] serves metrics, status and
//!   the runtime API; [`access_log`] writes request lines off the request path; [`preview`]
//!   tells what a reload would change before it happens.

pub mod access_log;
pub mod admin;
pub mod backend;
pub mod balance;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod preview;
pub mod proxy;
pub mod queue;
pub mod route;
pub mod runtime;

use std::fmt::Write as _;
use std::net::SocketAddr;

pub use config::Config;
pub use runtime::Fulcrum;

/// The short summary `fulcrum check` prints.
pub fn summary(cfg: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: configuration is valid", cfg.source.display());
    if let Some(a) = &cfg.admin {
        let _ = writeln!(s, "admin: {}", a.bind);
    }
    let _ = writeln!(s, "listeners: {}", cfg.listeners.len());
    for l in &cfg.listeners {
        if l.routes.is_empty() {
            let _ = writeln!(
                s,
                "  {} {:?} on {} -> pool {}",
                l.name, l.protocol, l.bind, l.pool
            );
            continue;
        }
        let _ = writeln!(
            s,
            "  {} {:?} on {} -> {} routes, then {}",
            l.name,
            l.protocol,
            l.bind,
            l.routes.len(),
            l.default_pool
                .as_ref()
                .map_or("404".to_string(), |p| format!("pool {p}"))
        );
        for r in &l.routes {
            let _ = writeln!(s, "    {}", r.describe());
        }
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
            match &p.health.kind {
                config::HealthKind::None => "none",
                config::HealthKind::Tcp => "tcp",
                config::HealthKind::Http(_) => "http",
                config::HealthKind::Heartbeat { .. } => "heartbeat",
            }
        );
        for sv in &p.servers {
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
    s
}

/// `fulcrum demo`: three origins, the proxy in front, a printout of what to try.
pub async fn run_demo(port: u16, admin_port: u16) -> anyhow::Result<()> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let a = demo::Origin::start("alpha", any).await?;
    let b = demo::Origin::start("bravo", any).await?;
    let c = demo::Origin::start("charlie", any).await?;
    let text = demo::demo_config(port, admin_port, &[&a, &b, &c]);
    let dir = std::env::temp_dir().join(format!("fulcrum-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("demo.toml");
    std::fs::write(&path, &text)?;
    let cfg = config::load(&path)?;
    let f = Fulcrum::start(cfg).await?;
    let web = f
        .listener_addr("web")
        .map_or_else(String::new, |a| a.to_string());
    let relay = f
        .listener_addr("relay")
        .map_or_else(String::new, |a| a.to_string());
    let admin = f
        .admin_addr()
        .await
        .map_or_else(String::new, |a| a.to_string());
    println!(
        r#"
fulcrum demo: three origins (alpha {}, bravo {}, charlie {}) behind
  http listener  http://{web}   (round robin, HTTP/1.1 and h2c)
  tcp listener   {relay}        (L4 relay to the same origins)
  admin          http://{admin}
config: {}   (edit it and `kill -HUP {}` to reload)

Try:
  for i in 1 2 3 4 5 6; do curl -s http://{web}/; done      # rotates alpha, bravo, charlie
  curl -s --http2-prior-knowledge http://{web}/             # h2c to an HTTP/1.1 origin
  curl -s http://{web}/headers                              # what the origin saw (X-Forwarded-*)
  curl -s http://{relay}/                                   # the same through the L4 relay
  curl -s http://{admin}/status                             # servers, health, availability
  curl -s http://{admin}/metrics | grep fulcrum_server_requests_total
  curl -s -X POST http://{admin}/servers/demo/alpha/drain   # take alpha out (then .../enable)
Press Ctrl-C to stop.
"#,
        a.addr,
        b.addr,
        c.addr,
        path.display(),
        std::process::id()
    );
    let code = daemon::run(f).await?;
    let _ = std::fs::remove_dir_all(&dir);
    drop((a, b, c));
    if code != 0 {
        anyhow::bail!("stopped by a second signal");
    }
    Ok(())
}
