//! The rise/fall state machine of active checks: pure, no clock, no I/O.
//!
//! It turns a stream of probe results into up/down verdicts: `rise` successes in a row bring
//! a down server up, `fall` failures in a row take an up server down. A server that has never
//! been up (pending) comes up on its first success. It also says which interval to wait next
//! (HAProxy's inter / fastinter / downinter).

use std::time::Duration;

use crate::config::HealthSettings;

/// The verdict of active checks about one server and the streaks that lead to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RiseFall {
    up: bool,
    pending: bool,
    ok: u32,
    fail: u32,
    rise: u32,
    fall: u32,
}

impl RiseFall {
    /// Starts at `up`; `pending` (only meaningful when down) means never up so far.
    pub fn new(up: bool, pending: bool, rise: u32, fall: u32) -> Self {
        RiseFall {
            up,
            pending: pending && !up,
            ok: 0,
            fail: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// The current verdict.
    pub fn up(&self) -> bool {
        self.up
    }

    /// Whether no check has ever succeeded.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Feeds one probe result; returns the new verdict when it changes.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.fail = 0;
            self.ok = self.ok.saturating_add(1);
            if !self.up && (self.pending || self.ok >= self.rise) {
                self.up = true;
                self.pending = false;
                self.ok = 0;
                return Some(true);
            }
        } else {
            self.ok = 0;
            self.fail = self.fail.saturating_add(1);
            if self.up && self.fail >= self.fall {
                self.up = false;
                self.fail = 0;
                return Some(false);
            }
        }
        None
    }

    /// Whether the last results point away from the current verdict (a change may be near).
    pub fn changing(&self) -> bool {
        (self.up && self.fail > 0) || (!self.up && self.ok > 0)
    }

    /// How long to wait before the next probe (before jitter).
    pub fn next_interval(&self, s: &HealthSettings) -> Duration {
        if self.changing() {
            s.fast_interval
        } else if self.up {
            s.interval
        } else {
            s.down_interval
        }
    }
}

/// ±10% so that the probes of many servers do not align.
pub fn jitter(d: Duration, unit: f64) -> Duration {
    d.mul_f64(0.9 + unit.clamp(0.0, 1.0) * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rf: &mut RiseFall, results: &str) -> Vec<Option<bool>> {
        results.chars().map(|c| rf.observe(c == '+')).collect()
    }

    #[test]
    fn pending_server_comes_up_on_first_success() {
        let mut rf = RiseFall::new(false, true, 3, 2);
        assert_eq!(run(&mut rf, "--+"), [None, None, Some(true)]);
        assert!(!rf.pending());
    }

    #[test]
    fn down_server_needs_rise_successes_in_a_row() {
        let mut rf = RiseFall::new(false, false, 3, 2);
        assert_eq!(
            run(&mut rf, "++-+++"),
            [None, None, None, None, None, Some(true)]
        );
    }

    #[test]
    fn up_server_needs_fall_failures_in_a_row() {
        let mut rf = RiseFall::new(true, false, 2, 3);
        assert_eq!(
            run(&mut rf, "--+---"),
            [None, None, None, None, None, Some(false)]
        );
    }

    #[test]
    fn alternating_results_never_change_state_when_rise_and_fall_exceed_one() {
        let mut rf = RiseFall::new(true, false, 2, 2);
        let pattern = "+-".repeat(50);
        assert!(run(&mut rf, &pattern).iter().all(Option::is_none));
        assert!(rf.up());
    }

    #[test]
    fn transitions_are_at_least_min_rise_fall_checks_apart() {
        // Any sequence: between two transitions there are at least min(rise, fall) probes.
        let mut rf = RiseFall::new(true, false, 2, 3);
        let seq = "---++--+---+++-+--+++---+-+-+---++";
        let mut last = None;
        for (i, c) in seq.chars().enumerate() {
            if rf.observe(c == '+').is_some() {
                if let Some(prev) = last {
                    assert!(i - prev >= 2, "transitions at {prev} and {i}");
                }
                last = Some(i);
            }
        }
        assert!(last.is_some());
    }

    #[test]
    fn intervals_follow_the_state() {
        let s = HealthSettings {
            kind: crate::config::HealthKind::Tcp,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(500),
            down_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            initial_up: false,
            flap_damping: None,
        };
        let mut rf = RiseFall::new(true, false, 2, 2);
        assert_eq!(rf.next_interval(&s), s.interval);
        rf.observe(false);
        assert_eq!(rf.next_interval(&s), s.fast_interval);
        rf.observe(false);
        assert_eq!(rf.next_interval(&s), s.down_interval);
        rf.observe(true);
        assert_eq!(rf.next_interval(&s), s.fast_interval);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let d = Duration::from_millis(1000);
        assert_eq!(jitter(d, 0.0), Duration::from_millis(900));
        assert_eq!(jitter(d, 1.0), Duration::from_millis(1100));
        assert_eq!(jitter(d, 0.5), d);
    }
}
