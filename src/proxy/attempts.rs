//! The retry skeleton both proxies share: which servers a request (L7) or connection (L4)
//! has tried, and whether it may try another.
//!
//! A retry goes only to a server not tried yet, at most `retries` times, and only while the
//! pool's retry budget allows (so a failing pool does not multiply the load it gets).

use crate::balance::BackendIdx;
use crate::pool::Pool;

/// The most retries a pool may ask for (`retries`), so that `Attempts` needs no allocation.
pub const MAX_RETRIES: u32 = 10;

/// Servers tried so far for one request or connection.
pub struct Attempts {
    tried: [BackendIdx; MAX_RETRIES as usize + 1],
    n: usize,
    retries: usize,
}

impl Attempts {
    /// No attempt yet; `retries` is the pool's setting (validated to be at most
    /// [`MAX_RETRIES`], and clamped here so a bad value can never index out of bounds).
    pub fn new(retries: u32) -> Self {
        Attempts {
            tried: [BackendIdx(u32::MAX); MAX_RETRIES as usize + 1],
            n: 0,
            retries: retries.min(MAX_RETRIES) as usize,
        }
    }

    /// The servers tried so far.
    pub fn tried(&self) -> &[BackendIdx] {
        &self.tried[..self.n]
    }

    /// Records an attempt on `idx`.
    pub fn record(&mut self, idx: BackendIdx) {
        if self.n < self.tried.len() {
            self.tried[self.n] = idx;
            self.n += 1;
        }
    }

    /// Whether another attempt may be made: retries left, and the pool's budget allows it
    /// (which counts it). Returns `Err(true)` when the budget refused.
    pub fn may_retry(&self, pool: &Pool) -> Result<(), bool> {
        if self.n > self.retries {
            return Err(false);
        }
        if !pool.budget.try_retry() {
            return Err(true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_up_to_the_cap_and_never_overflows() {
        let mut a = Attempts::new(u32::MAX);
        for i in 0..100 {
            a.record(BackendIdx(i));
        }
        assert_eq!(a.tried().len(), MAX_RETRIES as usize + 1);
    }
}
