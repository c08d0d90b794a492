//! Strict rotation over the eligible servers of a tier; weights are ignored.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Member;

/// A rotating cursor. Rebuilding a tier restarts the rotation, which is harmless.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn build(_members: &[Member]) -> Self {
        RoundRobin::default()
    }

    #[inline]
    pub(crate) fn pick(&self, members: &[Member]) -> Option<usize> {
        if members.is_empty() {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::members;

    #[test]
    fn rotates_in_order() {
        let m = members(&[1, 1, 1]);
        let rr = RoundRobin::build(&m);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(&m).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn empty_is_none() {
        let rr = RoundRobin::build(&[]);
        assert_eq!(rr.pick(&[]), None);
    }
}
