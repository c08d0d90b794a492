//! Disagreement between active checks and real traffic: pure, fed by the checker after each
//! probe with the server's cumulative traffic counters.
//!
//! Two stories mean the health check does not test what matters:
//! - checks pass while real traffic keeps failing (or passive detection ejected the server);
//! - checks fail while real traffic keeps succeeding.
//!
//! Traffic is judged over windows of at least [`MIN_SAMPLES`] attempts: all failed, or none
//! failed; a mixed window says nothing. Each disagreement is an episode: reported once when it
//! begins and once when the two views agree again, never once per probe.

/// Attempts a traffic window needs before it is judged.
pub const MIN_SAMPLES: u64 = 5;

/// Which way the views disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disagreement {
    /// Active checks pass while real traffic fails.
    TrafficFailing,
    /// Active checks fail while real traffic succeeds.
    CheckFailing,
}

impl Disagreement {
    /// Metric label (`kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Disagreement::TrafficFailing => crate::backend::DISAGREE_TRAFFIC_FAILING,
            Disagreement::CheckFailing => crate::backend::DISAGREE_CHECK_FAILING,
        }
    }
}

/// Start or end of an episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Episode {
    /// The views began to disagree.
    Began(Disagreement),
    /// They agree again.
    Ended(Disagreement),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    Failing,
    Healthy,
}

/// What active checks say at one probe.
#[derive(Clone, Copy, Debug)]
pub struct Checks {
    /// The rise/fall verdict.
    pub up: bool,
    /// The last probe's result.
    pub probe_ok: bool,
}

/// What real traffic shows at one probe.
#[derive(Clone, Copy, Debug)]
pub struct TrafficCounters {
    /// Attempts sent to the server so far.
    pub attempts: u64,
    /// Of which failed (of the kinds passive detection counts).
    pub failures: u64,
    /// Passive detection has the server ejected now.
    pub ejected: bool,
}

/// The disagreement watch of one server.
#[derive(Clone, Debug)]
pub struct Watch {
    attempts: u64,
    failures: u64,
    open: Option<Disagreement>,
}

impl Watch {
    /// Starts a window at the current counters.
    pub fn new(attempts: u64, failures: u64) -> Self {
        Watch {
            attempts,
            failures,
            open: None,
        }
    }

    fn judge(&mut self, t: TrafficCounters) -> Option<Traffic> {
        if t.ejected {
            return Some(Traffic::Failing);
        }
        let n = t.attempts.saturating_sub(self.attempts);
        if n < MIN_SAMPLES {
            return None;
        }
        let failed = t.failures.saturating_sub(self.failures);
        self.attempts = t.attempts;
        self.failures = t.failures;
        if failed >= n {
            Some(Traffic::Failing)
        } else if failed == 0 {
            Some(Traffic::Healthy)
        } else {
            None
        }
    }

    /// Compares the views after a probe; returns an episode's start or end.
    pub fn observe(&mut self, checks: Checks, t: TrafficCounters) -> Option<Episode> {
        let traffic = self.judge(t);
        if let Some(open) = self.open {
            let over = match open {
                Disagreement::TrafficFailing => !checks.up || traffic == Some(Traffic::Healthy),
                Disagreement::CheckFailing => checks.probe_ok || traffic == Some(Traffic::Failing),
            };
            if over {
                self.open = None;
                return Some(Episode::Ended(open));
            }
            return None;
        }
        let began = match traffic {
            Some(Traffic::Failing) if checks.up && checks.probe_ok => Disagreement::TrafficFailing,
            Some(Traffic::Healthy) if !checks.probe_ok => Disagreement::CheckFailing,
            _ => return None,
        };
        self.open = Some(began);
        Some(Episode::Began(began))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: Checks = Checks {
        up: true,
        probe_ok: true,
    };
    const FAILING_PROBE: Checks = Checks {
        up: true,
        probe_ok: false,
    };
    const DOWN: Checks = Checks {
        up: false,
        probe_ok: false,
    };

    fn t(attempts: u64, failures: u64) -> TrafficCounters {
        TrafficCounters {
            attempts,
            failures,
            ejected: false,
        }
    }

    #[test]
    fn failing_traffic_under_passing_checks_is_one_episode() {
        let mut w = Watch::new(0, 0);
        assert_eq!(w.observe(PASS, t(3, 3)), None, "too few samples");
        assert_eq!(
            w.observe(PASS, t(5, 5)),
            Some(Episode::Began(Disagreement::TrafficFailing))
        );
        assert_eq!(w.observe(PASS, t(10, 10)), None, "same episode");
        assert_eq!(w.observe(PASS, t(20, 20)), None, "same episode");
        assert_eq!(
            w.observe(PASS, t(25, 20)),
            Some(Episode::Ended(Disagreement::TrafficFailing))
        );
    }

    #[test]
    fn ejection_counts_as_failing_traffic_and_checks_going_down_end_it() {
        let mut w = Watch::new(0, 0);
        let ejected = TrafficCounters {
            attempts: 0,
            failures: 0,
            ejected: true,
        };
        assert_eq!(
            w.observe(PASS, ejected),
            Some(Episode::Began(Disagreement::TrafficFailing))
        );
        assert_eq!(
            w.observe(DOWN, ejected),
            Some(Episode::Ended(Disagreement::TrafficFailing))
        );
        assert_eq!(w.observe(DOWN, ejected), None, "agreeing views");
    }

    #[test]
    fn failing_checks_under_healthy_traffic() {
        let mut w = Watch::new(100, 1);
        assert_eq!(
            w.observe(FAILING_PROBE, t(110, 1)),
            Some(Episode::Began(Disagreement::CheckFailing))
        );
        assert_eq!(w.observe(DOWN, t(110, 1)), None, "no traffic: still open");
        assert_eq!(
            w.observe(PASS, t(110, 1)),
            Some(Episode::Ended(Disagreement::CheckFailing))
        );
    }

    #[test]
    fn mixed_or_agreeing_windows_say_nothing() {
        let mut w = Watch::new(0, 0);
        assert_eq!(w.observe(PASS, t(10, 3)), None, "mixed");
        assert_eq!(w.observe(PASS, t(20, 3)), None, "healthy and passing");
        assert_eq!(w.observe(DOWN, t(30, 13)), None, "failing and down");
    }
}
