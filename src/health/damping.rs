//! Flap damping (BGP route-flap damping, RFC 2439, applied to servers): pure, the clock is
//! passed in.
//!
//! Each up→down transition of active checks adds `penalty`; the penalty halves every
//! `half_life`. Once it passes `suppress` the server is held out even while its checks pass,
//! and it comes back only when the penalty has decayed below `reuse`. So a sick server that
//! fails and recovers every few seconds cannot pull traffic in and out; once it is stable it
//! returns by itself.
//!
//! The penalty is capped at `max(16 × reuse, suppress + penalty)`: a server that stops
//! flapping is held out for at most about four half-lives (BGP's max-suppress ceiling), however
//! long it flapped before.

use std::time::Duration;

use crate::config::FlapDamping;

/// A change of the hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The penalty passed `suppress`: hold the server out.
    Suppress,
    /// The penalty decayed below `reuse`: let it back.
    Reuse,
}

/// The damping state of one server.
#[derive(Clone, Debug)]
pub struct Damping {
    cfg: FlapDamping,
    penalty: f64,
    at_ms: u64,
    suppressed: bool,
}

impl Damping {
    /// Fresh state. `suppressed` carries a hold over from a previous checker (restarted by a
    /// reload): it restarts at the `suppress` level and decays from there.
    pub fn new(cfg: FlapDamping, suppressed: bool, now_ms: u64) -> Self {
        Damping {
            penalty: if suppressed { cfg.suppress } else { 0.0 },
            at_ms: now_ms,
            suppressed,
            cfg,
        }
    }

    /// The penalty decayed to `now_ms`.
    pub fn penalty(&self, now_ms: u64) -> f64 {
        decay(
            self.penalty,
            now_ms.saturating_sub(self.at_ms),
            self.cfg.half_life,
        )
    }

    /// Whether the server is held out.
    #[cfg(test)]
    pub fn suppressed(&self) -> bool {
        self.suppressed
    }

    fn ceiling(&self) -> f64 {
        (self.cfg.reuse * 16.0).max(self.cfg.suppress + self.cfg.penalty)
    }

    /// Charges one flap (an up→down transition).
    pub fn flap(&mut self, now_ms: u64) -> Option<Hold> {
        self.penalty = (self.penalty(now_ms) + self.cfg.penalty).min(self.ceiling());
        self.at_ms = now_ms;
        if !self.suppressed && self.penalty > self.cfg.suppress {
            self.suppressed = true;
            return Some(Hold::Suppress);
        }
        None
    }

    /// Lets decay act; returns `Reuse` when a held server may come back.
    pub fn tick(&mut self, now_ms: u64) -> Option<Hold> {
        if self.suppressed && self.penalty(now_ms) < self.cfg.reuse {
            self.suppressed = false;
            return Some(Hold::Reuse);
        }
        None
    }
}

/// `p` after `elapsed_ms` of exponential decay with `half_life`.
pub fn decay(p: f64, elapsed_ms: u64, half_life: Duration) -> f64 {
    let h = half_life.as_millis().max(1) as f64;
    p * (-(elapsed_ms as f64) / h).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FlapDamping {
        FlapDamping {
            penalty: 1000.0,
            suppress: 2000.0,
            reuse: 750.0,
            half_life: Duration::from_secs(10),
        }
    }

    #[test]
    fn penalty_halves_every_half_life() {
        let h = Duration::from_secs(10);
        assert!((decay(1000.0, 10_000, h) - 500.0).abs() < 1e-9);
        assert!((decay(1000.0, 20_000, h) - 250.0).abs() < 1e-9);
        assert!((decay(1000.0, 0, h) - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn third_quick_flap_suppresses() {
        let mut d = Damping::new(cfg(), false, 0);
        assert_eq!(d.flap(0), None); // 1000
        assert_eq!(d.flap(100), None); // ~1993
        assert_eq!(d.flap(200), Some(Hold::Suppress)); // ~2979
        assert!(d.suppressed());
    }

    #[test]
    fn slow_flaps_never_suppress() {
        // One flap per two half-lives: the penalty peaks around 1333, below 2000.
        let mut d = Damping::new(cfg(), false, 0);
        for i in 0..50 {
            assert_eq!(d.flap(i * 20_000), None);
        }
    }

    #[test]
    fn reuse_after_decay_below_reuse() {
        let mut d = Damping::new(cfg(), false, 0);
        for t in [0, 10, 20] {
            d.flap(t);
        }
        // ~2999 needs two half-lives (20 s) to fall below 750.
        assert_eq!(d.tick(15_000), None);
        assert_eq!(d.tick(20_100), Some(Hold::Reuse));
        assert_eq!(d.tick(30_000), None, "reported once");
        assert!(!d.suppressed());
    }

    #[test]
    fn penalty_is_capped_so_hold_ends_within_about_four_half_lives() {
        let mut d = Damping::new(cfg(), false, 0);
        for t in 0..10_000 {
            d.flap(t);
        }
        assert!(d.penalty(10_000) <= 16.0 * 750.0 + 1e-6);
        assert_eq!(d.tick(10_000 + 39_000), None);
        assert_eq!(d.tick(10_000 + 41_000), Some(Hold::Reuse));
    }

    #[test]
    fn carried_over_hold_decays_from_suppress_level() {
        let mut d = Damping::new(cfg(), true, 0);
        assert!(d.suppressed());
        // 2000 → below 750 after log2(2000/750) ≈ 1.415 half-lives.
        assert_eq!(d.tick(14_000), None);
        assert_eq!(d.tick(14_300), Some(Hold::Reuse));
    }
}
