//! The sections of the process itself: `[runtime]` (threads, timeouts, the connection cap,
//! the reload guard, the resolver), `[admin]` and `[access_log]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::super::schema::*;
use super::super::*;
use super::{discovery, no_effect, Ctx};

/// `[runtime]`.
pub(super) fn runtime(cx: &Ctx, r: &RawRuntime) -> Result<RuntimeSettings, ConfigError> {
    Ok(RuntimeSettings {
        worker_threads: match &r.worker_threads {
            None => None,
            Some(_) => Some(cx.int(&r.worker_threads, "worker_threads", 1..=1024, 1)? as usize),
        },
        shutdown_grace: cx.dur(&r.shutdown_grace, "shutdown_grace", Duration::from_secs(30))?,
        drain_timeout: cx.dur(&r.drain_timeout, "drain_timeout", Duration::from_secs(30))?,
        max_connections: cx.int(
            &r.max_connections,
            "max_connections",
            1..=10_000_000,
            100_000,
        )? as usize,
        reload_guard: reload_guard(cx, r.reload_guard.as_ref())?,
        dns: discovery::resolver(cx, &r.dns)?,
    })
}

fn reload_guard(
    cx: &Ctx,
    g: Option<&Spanned<RawReloadGuard>>,
) -> Result<Option<ReloadGuard>, ConfigError> {
    let Some(g) = g else { return Ok(None) };
    let r = g.get_ref();
    if r.enabled == Some(false) {
        no_effect::reload_guard(cx, r)?;
        return Ok(None);
    }
    let max_error_ratio = match &r.max_error_ratio {
        None => 0.2,
        Some(v) if *v.get_ref() > 0.0 && *v.get_ref() < 1.0 => *v.get_ref(),
        Some(v) => {
            return Err(cx.err(
                v.span(),
                format!(
                    "max_error_ratio must be between 0 and 1 (exclusive), got {}",
                    v.get_ref()
                ),
            ))
        }
    };
    Ok(Some(ReloadGuard {
        window: cx.dur(&r.window, "window", Duration::from_secs(30))?,
        max_error_ratio,
        min_requests: cx.int(&r.min_requests, "min_requests", 1..=1_000_000_000, 50)? as u64,
    }))
}

/// `[admin]`: `None` when it is switched off.
pub(super) fn admin(cx: &Ctx, a: &RawAdmin) -> Result<Option<AdminSettings>, ConfigError> {
    no_effect::admin(cx, a)?;
    Ok(if a.enabled == Some(false) {
        None
    } else {
        Some(AdminSettings {
            bind: a
                .bind
                .as_ref()
                .map_or(SocketAddr::from(([127, 0, 0, 1], 9901)), |b| b.get_ref().0),
            token_file: a
                .token_file
                .as_ref()
                .map(|t| PathBuf::from(t.get_ref())),
            allow_unauthenticated_loopback: a
                .allow_unauthenticated_loopback
                .as_ref()
                .is_some_and(|a| *a.get_ref()),
            read_auth: match &a.read_auth {
                Some(r) if *r.get_ref() && a.token_file.is_none() => {
                    return Err(cx.err(
                        r.span(),
                        "admin.read_auth = true needs admin.token_file: reads would check a token that does not exist",
                    ))
                }
                Some(r) => *r.get_ref(),
                None => false,
            },
        })
    })
}

/// `[access_log]`: `None` unless it is switched on.
pub(super) fn access_log(
    cx: &Ctx,
    a: &RawAccessLog,
) -> Result<Option<AccessLogSettings>, ConfigError> {
    no_effect::access_log(cx, a)?;
    Ok(if a.enabled == Some(true) {
        let format = match cx.choice(&a.format, "access_log format", &["combined", "json"])? {
            Some("json") => AccessLogFormat::Json,
            _ => AccessLogFormat::Combined,
        };
        Some(AccessLogSettings {
            target: match a.path.as_ref().map(|p| p.get_ref().as_str()) {
                None | Some("stderr") => AccessLogTarget::Stderr,
                Some(p) => AccessLogTarget::File(PathBuf::from(p)),
            },
            format,
            buffer: cx.int(&a.buffer, "buffer", 1..=1 << 20, 4096)? as usize,
        })
    } else {
        None
    })
}
