//! A server's availability record: time up and down, failures and recoveries since it was
//! first configured, from which `/status` and the metrics derive MTBF, MTTR and
//! availability. Pure bookkeeping over the process clock; the state holds it in a mutex.

/// Up/down bookkeeping of one server since it was first configured.
#[derive(Clone, Debug, Default)]
pub struct Availability {
    /// Currently up (by the combined view: eligible for traffic).
    pub up: bool,
    /// When the current state began (ms, process clock).
    pub since_ms: u64,
    /// Completed time up, ms.
    pub up_ms: u64,
    /// Completed time down, ms.
    pub down_ms: u64,
    /// Up→down transitions.
    pub failures: u64,
    /// Down→up transitions.
    pub recoveries: u64,
    /// No verdict yet (a new server before its first check): that wait is not downtime.
    pub pending: bool,
}

impl Availability {
    /// Totals including the current, unfinished period: (up_ms, down_ms).
    pub fn totals(&self, now: u64) -> (u64, u64) {
        if self.pending {
            return (0, 0);
        }
        let cur = now.saturating_sub(self.since_ms);
        if self.up {
            (self.up_ms + cur, self.down_ms)
        } else {
            (self.up_ms, self.down_ms + cur)
        }
    }

    /// Mean time between failures and to repair, seconds, and availability in 0..=1.
    pub fn summary(&self, now: u64) -> (f64, f64, f64) {
        let (up, down) = self.totals(now);
        let mtbf = if self.failures > 0 {
            up as f64 / self.failures as f64
        } else {
            up as f64
        } / 1000.0;
        let mttr = if self.recoveries > 0 {
            down as f64 / self.recoveries as f64
        } else if self.failures > 0 {
            down as f64
        } else {
            0.0
        } / 1000.0;
        let avail = if up + down == 0 {
            if self.up {
                1.0
            } else {
                0.0
            }
        } else {
            up as f64 / (up + down) as f64
        };
        (mtbf, mttr, avail)
    }

    pub(super) fn record(&mut self, up: bool, now: u64) {
        if self.pending {
            if up {
                self.pending = false;
                self.up = true;
                self.since_ms = now;
            }
            return;
        }
        if up == self.up {
            return;
        }
        let cur = now.saturating_sub(self.since_ms);
        if self.up {
            self.up_ms += cur;
            self.failures += 1;
        } else {
            self.down_ms += cur;
            if self.since_ms > 0 {
                self.recoveries += 1;
            }
        }
        self.up = up;
        self.since_ms = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_record() {
        let mut a = Availability {
            up: true,
            since_ms: 1,
            ..Default::default()
        };
        a.record(false, 1001); // up 1 s
        a.record(true, 1501); // down 0.5 s
        let (mtbf, mttr, avail) = a.summary(1501);
        assert_eq!(a.failures, 1);
        assert_eq!(a.recoveries, 1);
        assert!((mtbf - 1.0).abs() < 1e-9);
        assert!((mttr - 0.5).abs() < 1e-9);
        assert!((avail - 1.0 / 1.5).abs() < 1e-9);
    }
}
