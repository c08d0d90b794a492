//! systemd notifications (READY, RELOADING with MONOTONIC_USEC, STOPPING, WATCHDOG, STATUS).
//! A leaf module: the runtime announces its reloads here and the daemon its life, without
//! either importing the other. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.

use sd_notify::NotifyState;

/// Tells systemd a reload has begun (RELOADING=1 with MONOTONIC_USEC, as Type=notify-reload wants).
pub fn notify_reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    notify(&states);
}

/// Tells systemd the service is ready (again), with a status line.
pub fn notify_ready(status: String) {
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

pub fn notify(states: &[NotifyState]) {
    // Not under systemd (no NOTIFY_SOCKET): nothing to do, and nothing worth logging.
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "systemd notification failed");
    }
}
