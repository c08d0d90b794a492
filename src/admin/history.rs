//! The configuration's history as `/status` and the status page tell it: which generation
//! is in force, and how the last reload ended (with the error, when it failed).
//!
//! The runtime records into it once per reload; the admin listener only reads it. It keeps
//! one record, never a growing list, and is never touched on the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How one reload ended.
#[derive(Clone, Debug, PartialEq)]
pub struct ReloadOutcome {
    /// Whether the new configuration went into force.
    pub ok: bool,
    /// When it ended, Unix seconds.
    pub at_unix: f64,
    /// Why it failed (`file:line:col: message` for an invalid file), or why it was rolled
    /// back; `None` on success.
    pub error: Option<String>,
    /// The reload went into force, and the reload guard then put the previous configuration
    /// back.
    pub rolled_back: bool,
}

impl ReloadOutcome {
    /// `success`, `failure` or `rolled_back`, as `/status` says it.
    pub fn result(&self) -> &'static str {
        match (self.ok, self.rolled_back) {
            (_, true) => "rolled_back",
            (true, false) => "success",
            (false, false) => "failure",
        }
    }
}

/// The generation counter and the last reload's outcome.
#[derive(Debug)]
pub struct ConfigHistory {
    /// 1 for the configuration fulcrum started with, plus one per configuration put in
    /// force since (a successful reload, a rollback).
    generation: AtomicU64,
    /// A `std` mutex: written once per reload, read once per `/status`, held across no
    /// `.await` and never on the request path.
    last: Mutex<Option<ReloadOutcome>>,
}

impl Default for ConfigHistory {
    fn default() -> Self {
        ConfigHistory {
            generation: AtomicU64::new(1),
            last: Mutex::new(None),
        }
    }
}

impl ConfigHistory {
    /// The generation in force: 1 at start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// A reload put a new configuration in force; returns the new generation.
    pub fn reload_succeeded(&self) -> u64 {
        let g = self.applied();
        self.record(ReloadOutcome {
            ok: true,
            at_unix: crate::metrics::unix_now(),
            error: None,
            rolled_back: false,
        });
        g
    }

    /// The reload guard put the previous configuration back; returns the new generation.
    pub fn rolled_back(&self, reason: &str) -> u64 {
        let g = self.applied();
        self.record(ReloadOutcome {
            ok: false,
            at_unix: crate::metrics::unix_now(),
            error: Some(reason.to_string()),
            rolled_back: true,
        });
        g
    }

    /// A reload failed and the running configuration stays in force.
    pub fn reload_failed(&self, error: &dyn std::fmt::Display) {
        self.record(ReloadOutcome {
            ok: false,
            at_unix: crate::metrics::unix_now(),
            error: Some(error.to_string()),
            rolled_back: false,
        });
    }

    /// A configuration went into force other than by a reload (a rollback, say); returns
    /// the new generation.
    pub fn applied(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// How the last reload ended; `None` before the first.
    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, o: ReloadOutcome) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_count_configs_put_in_force() {
        let h = ConfigHistory::default();
        assert_eq!(h.generation(), 1);
        assert_eq!(h.last_reload(), None);
        h.reload_failed(&"f.toml:3:1: boom");
        assert_eq!(h.generation(), 1, "a failed reload keeps the generation");
        let last = h.last_reload().unwrap();
        assert!(!last.ok);
        assert_eq!(last.error.as_deref(), Some("f.toml:3:1: boom"));
        assert_eq!(h.reload_succeeded(), 2);
        assert_eq!(h.applied(), 3);
        assert_eq!(h.last_reload().unwrap().error, None);
    }
}
