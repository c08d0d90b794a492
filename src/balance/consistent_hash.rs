//! PLACEHOLDER: the balancing issue replaces this with the real algorithm.

use std::sync::atomic::{AtomicUsize, Ordering};

#[allow(unused_imports)]
use super::{Member, PickKey};

#[derive(Debug, Default)]
pub(crate) struct ConsistentHash {
    next: AtomicUsize,
}

impl ConsistentHash {
    pub(crate) fn build(
        _members: &[Member],
        _vnodes_per_weight: u32,
        _balance_factor: Option<f64>,
    ) -> Self {
        ConsistentHash::default()
    }

    pub(crate) fn pick(&self, members: &[Member], _key: &PickKey) -> Option<usize> {
        if members.is_empty() {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % members.len())
    }
}
