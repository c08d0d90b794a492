//! The runtime API: operator changes to servers and split weights, reloads, and reload
//! previews.
//!
//! A server change is written to the server's live state (which the registry keeps across
//! reloads, so an operator's drain survives a reload for a server that stays) and then
//! published like a health change: the pool's eligible table is rebuilt at once, and new
//! requests see it on their next pick. Every change is logged with who asked.

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use super::{json, status, text, timed, AdminError, AdminResponse, Control, Shared};
use crate::backend::AdminState;

/// Largest weight an override may set (the same bound as a configured weight).
const MAX_WEIGHT: u32 = 256;

/// What `POST /servers/{pool}/{server}/{action}` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Drain; with a deadline, close what is left then.
    Drain(Option<Duration>),
    Enable,
    Disable,
    /// Set the weight; with a length, ramp to it in steps.
    Weight(u32, Option<Duration>),
    Reset,
}

/// The value of `key=` in a query string.
fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// A duration query parameter (`over=60s`, `deadline=2m`), if present.
fn duration_param(query: Option<&str>, key: &str) -> Result<Option<Duration>, AdminError> {
    match query_param(query, key) {
        None => Ok(None),
        Some(v) => match humantime::parse_duration(v) {
            Ok(d) if !d.is_zero() && d <= Duration::from_secs(7 * 24 * 3600) => Ok(Some(d)),
            _ => Err(AdminError::BadRequest(format!(
                "{key} must be a duration such as \"60s\" or \"2m\" (at most a week), got {v:?}"
            ))),
        },
    }
}

fn parse_action(action: &str, query: Option<&str>, body: &[u8]) -> Result<Action, AdminError> {
    Ok(match action {
        "drain" => Action::Drain(duration_param(query, "deadline")?),
        "enable" => Action::Enable,
        "disable" => Action::Disable,
        "reset" => Action::Reset,
        "weight" => Action::Weight(weight_value(query, body)?, duration_param(query, "over")?),
        other => {
            return Err(AdminError::NotFound(format!(
                "unknown server action {other:?}; expected drain, enable, disable, weight or reset"
            )))
        }
    })
}

/// The new weight, from `?value=N`, or a body of `N`, `value=N` or `{"weight": N}`.
fn weight_value(query: Option<&str>, body: &[u8]) -> Result<u32, AdminError> {
    let from_query = query.and_then(|q| {
        q.split('&').find_map(|kv| {
            kv.strip_prefix("value=")
                .or_else(|| kv.strip_prefix("weight="))
        })
    });
    let body = std::str::from_utf8(body).unwrap_or("").trim();
    let raw: String = match from_query {
        Some(v) => v.to_string(),
        None if body.starts_with('{') => match serde_json::from_str::<serde_json::Value>(body) {
            Ok(v) => v
                .get("weight")
                .or_else(|| v.get("value"))
                .map(|w| w.to_string())
                .unwrap_or_default(),
            Err(_) => String::new(),
        },
        None => body
            .strip_prefix("value=")
            .or_else(|| body.strip_prefix("weight="))
            .unwrap_or(body)
            .to_string(),
    };
    match raw.trim().parse::<u32>() {
        Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w),
        _ => Err(AdminError::BadRequest(format!(
            "weight must be an integer between 1 and {MAX_WEIGHT} (as ?value=N or a body of N), got {raw:?}"
        ))),
    }
}

/// `POST /servers/{pool}/{server}/{action}`.
pub fn server_action(
    shared: &Shared,
    pool_name: &str,
    server_name: &str,
    action: &str,
    query: Option<&str>,
    body: &Bytes,
    peer: SocketAddr,
) -> Result<AdminResponse, AdminError> {
    let action = parse_action(action, query, body)?;
    let pools = shared.pools.load();
    let slot = pools.get(pool_name).ok_or_else(|| {
        let mut known: Vec<_> = pools.keys().map(|k| k.to_string()).collect();
        known.sort();
        AdminError::NotFound(format!(
            "no pool {pool_name:?}; pools: {}",
            known.join(", ")
        ))
    })?;
    let pool = slot.load();
    let server = pool
        .servers
        .iter()
        .find(|s| &*s.settings.name == server_name)
        .ok_or_else(|| {
            let known: Vec<_> = pool.servers.iter().map(|s| &*s.settings.name).collect();
            AdminError::NotFound(format!(
                "no server {server_name:?} in pool {pool_name:?}; servers: {}",
                known.join(", ")
            ))
        })?;
    let st = &server.state;
    let (before_state, before_weight) = (st.admin_state(), st.weight_override());
    // Any change replaces a drain deadline or weight ramp in progress.
    match action {
        Action::Drain(_) | Action::Enable | Action::Disable | Action::Reset => {
            st.set_drain_deadline(0)
        }
        Action::Weight(..) => st.set_weight_ramp(None),
    }
    match action {
        Action::Drain(deadline) => {
            st.set_admin_state(AdminState::Draining);
            if let Some(d) = deadline {
                timed::drain_deadline(st, d);
            }
        }
        Action::Enable => st.set_admin_state(AdminState::Enabled),
        Action::Disable => st.set_admin_state(AdminState::Disabled),
        Action::Weight(w, None) => st.set_weight_override(Some(w)),
        Action::Weight(w, Some(over)) => {
            timed::ramp_weight(st, slot, server.settings.weight, w, over)
        }
        Action::Reset => {
            st.set_admin_state(AdminState::Enabled);
            st.set_weight_override(None);
            st.set_weight_ramp(None);
        }
    }
    // Publish into whichever generation is current now (a reload may have raced us).
    slot.publish();
    tracing::warn!(
        pool = pool_name,
        server = server_name,
        action = ?action,
        from_state = before_state.as_str(),
        to_state = st.admin_state().as_str(),
        from_weight = ?before_weight,
        to_weight = ?st.weight_override(),
        client = %peer,
        "admin: server changed at run time"
    );
    let mut v = status::server_json(server, pool.settings.slow_start);
    v["pool"] = pool_name.into();
    v["eligible"] = slot.load().eligible().contains(server.idx).into();
    Ok(json(StatusCode::OK, &v))
}

/// The weights of a split override: `?weights=95,5`, or a body of `95,5`, `weights=95,5`
/// or `{"weights": [95, 5]}`.
fn split_weights(query: Option<&str>, body: &[u8]) -> Result<Vec<u32>, AdminError> {
    let body = std::str::from_utf8(body).unwrap_or("").trim();
    let raw: String = match query_param(query, "weights") {
        Some(v) => v.replace("%2C", ",").replace("%2c", ","),
        None if body.starts_with('{') => serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("weights").and_then(|w| w.as_array()).cloned())
            .map(|a| {
                a.iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        None => body.strip_prefix("weights=").unwrap_or(body).to_string(),
    };
    let parsed: Result<Vec<u32>, _> = raw.split(',').map(|w| w.trim().parse::<u32>()).collect();
    match parsed {
        Ok(v) if !raw.trim().is_empty() => Ok(v),
        _ => Err(AdminError::BadRequest(format!(
            "weights must be integers, one per pool of the split in its order (as ?weights=95,5 or a body of 95,5), got {raw:?}"
        ))),
    }
}

/// `POST /routes/{listener}/{route}/(split|reset)`: overrides a split route's weights (0
/// takes a pool out), or goes back to the configured ones. The override lives in the split
/// registry, so it holds across reloads that keep the route splitting between the same
/// pools; a reload that changes them drops it, with a warning.
pub fn split_action(
    shared: &Shared,
    listener: &str,
    route: &str,
    action: &str,
    query: Option<&str>,
    body: &Bytes,
    peer: SocketAddr,
) -> Result<AdminResponse, AdminError> {
    let state = shared.splits.get(listener, route).ok_or_else(|| {
        AdminError::NotFound(format!(
            "no split route {route:?} on listener {listener:?} (only routes with `split` take weights)"
        ))
    })?;
    let before = state.override_weights();
    match action {
        "split" => {
            let weights = split_weights(query, body)?;
            state
                .set(&weights)
                .map_err(|e| AdminError::BadRequest(e.to_string()))?;
        }
        "reset" => state.reset(),
        other => {
            return Err(AdminError::NotFound(format!(
                "unknown route action {other:?}; expected split or reset"
            )))
        }
    }
    let after = state.override_weights();
    tracing::warn!(
        listener,
        route,
        action,
        from_weights = ?before,
        to_weights = ?after,
        client = %peer,
        "admin: split weights changed at run time"
    );
    Ok(json(
        StatusCode::OK,
        &status::split_json(shared, listener, route),
    ))
}

/// `POST /reload`: re-reads the config file and applies it, like SIGHUP.
pub async fn reload(
    shared: &Shared,
    control: &dyn Control,
    peer: SocketAddr,
) -> Result<AdminResponse, AdminError> {
    tracing::info!(client = %peer, "admin: reload requested");
    // Run the reload in its own task: if the client hangs up, the reload still completes
    // rather than being dropped half-way.
    let result = tokio::spawn(control.reload())
        .await
        .map_err(|e| AdminError::ReloadFailed(format!("reload task failed: {e}")))?;
    match result {
        Ok(()) => Ok(json(
            StatusCode::OK,
            &json!({ "result": "success", "config": shared.config.load().source.display().to_string() }),
        )),
        Err(e) => Err(AdminError::ReloadFailed(e)),
    }
}

/// `POST /preview` with a config as the body: what reloading to it would change, as text.
/// The `X-Config-Path` header names the file, for error messages.
pub fn preview(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Result<AdminResponse, AdminError> {
    let text_in = std::str::from_utf8(body)
        .map_err(|_| AdminError::BadRequest("the posted config is not UTF-8".into()))?;
    let path = parts
        .headers
        .get("x-config-path")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| PathBuf::from("posted config"), PathBuf::from);
    let new =
        crate::config::parse(text_in, &path).map_err(|e| AdminError::BadRequest(e.to_string()))?;
    // Both sides with the servers discovery found: they stay across a reload.
    let old = shared.discovery.effective(&shared.config.load());
    let new = shared.discovery.effective(&new);
    Ok(text(StatusCode::OK, crate::preview::preview(&old, &new)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_forms() {
        assert_eq!(weight_value(Some("value=7"), b"").unwrap(), 7);
        assert_eq!(weight_value(None, b"12\n").unwrap(), 12);
        assert_eq!(weight_value(None, b"value=3").unwrap(), 3);
        assert_eq!(weight_value(None, br#"{"weight": 5}"#).unwrap(), 5);
        assert!(weight_value(None, b"0").is_err());
        assert!(weight_value(None, b"257").is_err());
        assert!(weight_value(None, b"").is_err());
        assert!(weight_value(Some("value=x"), b"4").is_err());
    }

    #[test]
    fn actions() {
        assert_eq!(
            parse_action("drain", None, b"").unwrap(),
            Action::Drain(None)
        );
        assert_eq!(
            parse_action("drain", Some("deadline=2m"), b"").unwrap(),
            Action::Drain(Some(Duration::from_secs(120)))
        );
        assert_eq!(
            parse_action("weight", Some("value=2"), b"").unwrap(),
            Action::Weight(2, None)
        );
        assert_eq!(
            parse_action("weight", Some("value=10&over=60s"), b"").unwrap(),
            Action::Weight(10, Some(Duration::from_secs(60)))
        );
        assert!(matches!(
            parse_action("weight", Some("value=10&over=soon"), b""),
            Err(AdminError::BadRequest(_))
        ));
        assert!(matches!(
            parse_action("explode", None, b""),
            Err(AdminError::NotFound(_))
        ));
    }
}
