//! The reload guard: a reload that makes things worse undoes itself.
//!
//! For `window` after a successful reload, the new configuration is watched twice a second.
//! If more than `max_error_ratio` of the requests it served failed (5xx answers, L4
//! connections that reached no server), once `min_requests` were seen, or if a pool that was
//! serving before the reload has no eligible server (two looks in a row, so a health check
//! still settling is not mistaken for an outage), the previous configuration is applied
//! again, exactly like a reload: logged, counted (`fulcrum_config_rollbacks_total`), shown in
//! `/status`, and told to systemd. A newer reload, or shutdown, ends the watch.

use std::sync::Arc;
use std::time::Duration;

use super::{Fulcrum, Inner};
use crate::admin::Shared;
use crate::config::{Config, Protocol, ReloadGuard};

/// How often the guard looks.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Requests and failures served so far by the listeners of a configuration.
#[derive(Clone, Copy, Debug, Default)]
struct Traffic {
    requests: u64,
    failures: u64,
}

fn traffic(shared: &Shared, cfg: &Config) -> Traffic {
    let m = &shared.metrics;
    let mut t = Traffic::default();
    for l in &cfg.listeners {
        let name = &*l.name;
        match l.protocol {
            Protocol::Http => {
                for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                    let n = m.listener_requests.with_label_values(&[name, class]).get();
                    t.requests += n;
                    if class == "5xx" {
                        t.failures += n;
                    }
                }
            }
            Protocol::Tcp => {
                t.requests += m.listener_connections.with_label_values(&[name]).get();
                for reason in ["no_server", "connect", "overloaded"] {
                    t.failures += m.proxy_errors.with_label_values(&[name, reason]).get();
                }
            }
        }
    }
    t
}

/// The pools that have at least one eligible server now.
fn serving_pools(shared: &Shared) -> Vec<Arc<str>> {
    shared
        .pools
        .load()
        .iter()
        .filter(|(_, slot)| {
            let table = slot.load().eligible();
            !(table.primary.is_empty() && table.backup.is_empty())
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// What the guard compares against, taken just before a reload is applied.
pub(super) struct Before {
    config: Arc<Config>,
    serving: Vec<Arc<str>>,
}

impl Before {
    /// The configuration and serving pools in force now.
    pub(super) fn take(shared: &Shared) -> Before {
        Before {
            config: shared.config.load_full(),
            serving: serving_pools(shared),
        }
    }
}

/// Starts watching the configuration just applied, replacing any watch in progress.
pub(super) fn start(f: &Fulcrum, before: Before, guard: ReloadGuard) {
    let cancel = f.inner.shutdown.child_token();
    if let Some(old) = f
        .inner
        .guard
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(cancel.clone())
    {
        old.cancel();
    }
    let f = f.clone();
    tokio::spawn(async move {
        let reason = tokio::select! {
            r = watch(f.shared(), &before, guard) => r,
            _ = cancel.cancelled() => None,
        };
        if let Some(reason) = reason {
            if !cancel.is_cancelled() {
                f.roll_back(before.config, &reason).await;
            }
        }
    });
}

/// Watches for `guard.window`; returns why the reload must be undone, if it must.
async fn watch(shared: &Shared, before: &Before, guard: ReloadGuard) -> Option<String> {
    let cfg = shared.config.load_full();
    let base = traffic(shared, &cfg);
    let deadline = tokio::time::Instant::now() + guard.window;
    let mut empty_looks = 0u32;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(LOOK_EVERY).await;
        let now = traffic(shared, &cfg);
        let requests = now.requests.saturating_sub(base.requests);
        let failures = now.failures.saturating_sub(base.failures);
        if requests >= guard.min_requests {
            let ratio = failures as f64 / requests as f64;
            if ratio > guard.max_error_ratio {
                return Some(format!(
                    "{failures} of {requests} requests failed since the reload ({:.0}% > {:.0}%)",
                    ratio * 100.0,
                    guard.max_error_ratio * 100.0
                ));
            }
        }
        let pools = shared.pools.load();
        let lost: Vec<&Arc<str>> = before
            .serving
            .iter()
            .filter(|name| {
                pools.get(*name).is_some_and(|slot| {
                    let t = slot.load().eligible();
                    t.primary.is_empty() && t.backup.is_empty()
                })
            })
            .collect();
        empty_looks = if lost.is_empty() { 0 } else { empty_looks + 1 };
        if empty_looks >= 2 {
            let names: Vec<&str> = lost.iter().map(|n| &***n).collect();
            return Some(format!(
                "pool {} was serving before the reload and has no eligible server now",
                names.join(", ")
            ));
        }
    }
    None
}

impl Fulcrum {
    /// Puts `previous` back in force after a reload the guard judged harmful.
    async fn roll_back(&self, previous: Arc<Config>, reason: &str) {
        tracing::error!(reason, config = %previous.source.display(), "reload guard: the new configuration made things worse; putting the previous one back");
        crate::notify::notify_reloading();
        let result = self.apply((*previous).clone()).await;
        let shared = self.shared();
        match &result {
            Ok(()) => {
                shared.metrics.rollbacks.inc();
                shared.history.rolled_back(reason);
                shared
                    .metrics
                    .last_reload_success_time
                    .set(crate::metrics::unix_now());
                tracing::warn!(reason, "reload rolled back; the previous configuration is in force (the file on disk still holds the new one)");
            }
            Err(e) => {
                tracing::error!(error = %e, "reload guard: the previous configuration could not be put back; the new one stays");
            }
        }
        crate::notify::notify_ready(match &result {
            Ok(()) => format!("serving; last reload rolled back: {reason}"),
            Err(e) => format!("serving; rollback failed: {e}"),
        });
    }
}

/// Stops any watch in progress (a newer reload, or shutdown).
pub(super) fn stop(inner: &Inner) {
    if let Some(c) = inner.guard.lock().unwrap_or_else(|e| e.into_inner()).take() {
        c.cancel();
    }
}
