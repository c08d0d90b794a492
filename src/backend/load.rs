//! Holding a server's load: [`LoadGuard`] takes one unit of its load gauge for a request
//! or connection (bounded by `max_conns` when the server has one), and [`Waiters`] wakes a
//! request queued for a slot when a unit is released.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::BackendState;

/// An RAII hold on one unit of a server's load gauge (an in-flight request or a connection).
///
/// For a server with `max_conns`, the same gauge is its slot count: [`LoadGuard::try_limited`]
/// takes a unit only below the limit, and dropping it wakes a request queued for a slot.
pub struct LoadGuard {
    state: Arc<BackendState>,
    waiters: Option<Arc<Waiters>>,
}

impl LoadGuard {
    /// Takes one unit.
    #[inline]
    pub fn new(state: Arc<BackendState>) -> Self {
        state.load.fetch_add(1);
        LoadGuard {
            state,
            waiters: None,
        }
    }

    /// Takes one unit if fewer than `max` are taken; its release wakes one of `waiters`.
    #[inline]
    pub fn try_limited(
        state: &Arc<BackendState>,
        max: u32,
        waiters: &Arc<Waiters>,
    ) -> Option<Self> {
        // SeqCst pairs with the waiter's SeqCst increment of its queue count (Dekker style):
        // either the waiter sees this free slot, or this release sees the waiter.
        let mut cur = state.load.load(Ordering::SeqCst);
        loop {
            if cur >= max {
                return None;
            }
            // The gauge's changes are SeqCst.
            match state.load.compare_exchange_weak(cur, cur + 1) {
                Ok(_) => {
                    return Some(LoadGuard {
                        state: state.clone(),
                        waiters: Some(waiters.clone()),
                    })
                }
                Err(v) => cur = v,
            }
        }
    }

    /// The server.
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        // SeqCst (every change of the gauge is), which the waiters' Dekker pairing needs.
        self.state.load.fetch_sub(1);
        if let Some(w) = &self.waiters {
            w.slot_freed();
        }
    }
}

/// Requests waiting for a server slot in one pool (see `crate::queue`): a count, so that a
/// release with nobody waiting costs one load, and a `Notify` to wake one waiter.
#[derive(Default)]
pub struct Waiters {
    /// Requests waiting now.
    pub(crate) waiting: std::sync::atomic::AtomicUsize,
    /// Woken once per freed slot while someone waits.
    pub(crate) notify: tokio::sync::Notify,
}

impl Waiters {
    /// A slot of some server of the pool was just freed.
    #[inline]
    fn slot_freed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }
}
