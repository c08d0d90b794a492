//! The daemon's life: signals (SIGHUP reloads; SIGTERM/SIGINT drain and stop, a second one
//! stops at once), the watchdog, and the READY/STOPPING notifications of `crate::notify`.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

use crate::notify::notify;
use crate::runtime::Fulcrum;

/// Runs until a stop signal (or an admin shutdown) and returns the exit code.
pub async fn run(f: Fulcrum) -> std::io::Result<i32> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut watchdog_usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
        .then(|| Duration::from_micros(watchdog_usec / 2));
    let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = f.shutdown_requested();

    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    tracing::info!(pid = std::process::id(), "fulcrum ready");

    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                // Failures are logged and counted by reload itself; the old config stays.
                let _ = f.reload().await;
            }
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
            _ = stop.cancelled() => { tracing::info!("shutdown requested"); break; }
            _ = tick.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
        }
    }

    notify(&[NotifyState::Stopping]);
    let grace = f.config().runtime.shutdown_grace;
    tokio::select! {
        _ = f.shutdown(grace) => Ok(0),
        _ = term.recv() => { tracing::warn!("second stop signal: exiting now"); Ok(1) }
        _ = int.recv() => { tracing::warn!("second stop signal: exiting now"); Ok(1) }
    }
}
