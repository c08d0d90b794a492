//! `fulcrum demo`: three built-in origins on loopback, fulcrum in front of them with an http
//! and a tcp listener and the admin API, and a printout of what to try.
//!
//! For people trying fulcrum out, never for production: it writes its config to a
//! temporary directory and removes it on exit.

use std::net::SocketAddr;

use crate::runtime::Fulcrum;
use crate::{config, daemon, demo};

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
  admin          http://{admin}   (status page at /, JSON at /status)
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
