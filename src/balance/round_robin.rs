//! Strict rotation over the eligible servers of a tier; weights are ignored.

use std::sync::atomic::Ordering;

use super::{Cursor, Member};

/// A rotating cursor, shared with the tiers this one replaces: a rebuild (a server going
/// down, a reload) continues the rotation where it was instead of restarting it at 0.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin {
    next: Cursor,
}

impl RoundRobin {
    pub(crate) fn build(_members: &[Member], cursor: Cursor) -> Self {
        RoundRobin { next: cursor }
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
        let rr = RoundRobin::build(&m, Cursor::default());
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(&m).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn empty_is_none() {
        let rr = RoundRobin::build(&[], Cursor::default());
        assert_eq!(rr.pick(&[]), None);
    }
}
