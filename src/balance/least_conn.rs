//! PLACEHOLDER: the balancing issue replaces this with the real algorithm.

use std::sync::atomic::{AtomicUsize, Ordering};

#[allow(unused_imports)]
use super::{Member, PickKey};

#[derive(Debug, Default)]
pub(crate) struct LeastConn {
    next: AtomicUsize,
}

impl LeastConn {
    pub(crate) fn build(_members: &[Member]) -> Self {
        LeastConn::default()
    }

    pub(crate) fn pick(&self, members: &[Member]) -> Option<usize> {
        if members.is_empty() {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % members.len())
    }
}
