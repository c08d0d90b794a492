//! Overload protection: per-server `max_conns` slots and a bounded, timed wait queue per pool.
//!
//! [`admit`] is the one step the proxies call before talking to a server. A server without
//! `max_conns` gets a plain load guard (one relaxed add, nothing else). A limited server's
//! in-flight gauge doubles as its slot count: a slot is taken with one compare-and-swap below
//! the limit, never a lock. When the chosen server is full, the other eligible servers of the
//! same tier are tried; only when all are full does the request wait, and then at most
//! `max_queue` requests wait, each for at most `queue_timeout`, before the caller answers 503.
//! A request never waits unbounded.
//!
//! Waiting uses one `tokio::sync::Notify` per pool generation ([`Waiters`]): every release of
//! a limited slot wakes one waiter while any wait. The queue is not strictly FIFO: a request
//! that arrives just as a slot frees may take it first; the timeout bounds every wait.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use crate::backend::{LoadGuard, Waiters};
use crate::balance::BackendIdx;
use crate::config::PoolSettings;
use crate::metrics::Metrics;
use crate::pool::{Pool, Server};

/// Why a request got no server slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Every slot was taken and `max_queue` requests were already waiting.
    #[error("every server slot is taken and the queue is full")]
    Full,
    /// Every slot stayed taken for `queue_timeout`.
    #[error("no server slot became free within {0:?}")]
    TimedOut(Duration),
}

/// The wait queue of one pool generation.
pub struct Queue {
    waiters: Arc<Waiters>,
    max: usize,
    timeout: Duration,
    rejections: IntCounter,
}

impl Queue {
    /// The queue of pool `settings`; `waiters` is shared with the pool's other generations,
    /// so a request queued before a reload is woken by slots freed after it.
    pub fn new(settings: &PoolSettings, metrics: &Metrics, waiters: Arc<Waiters>) -> Queue {
        Queue {
            waiters,
            max: settings.max_queue,
            timeout: settings.queue_timeout,
            rejections: metrics
                .queue_rejections
                .with_label_values(&[&settings.name]),
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiters.waiting.load(Ordering::Relaxed)
    }
}

/// Takes a slot on `chosen`, else on another eligible server not in `tried`, else waits in
/// the pool's queue. Returns the server that got the slot (not always `chosen`) and the
/// guard that holds it until the request (L7) or connection (L4) ends.
pub async fn admit<'p>(
    pool: &'p Pool,
    chosen: &'p Server,
    tried: &[BackendIdx],
) -> Result<(&'p Server, LoadGuard), QueueError> {
    match admit_now(pool, chosen, tried) {
        Some(found) => Ok(found),
        None => queue(pool, tried).await,
    }
}

/// [`admit`] without the wait: a slot on `chosen` or another eligible server not in
/// `tried`, if one is free now. The request path tries this first and builds the waiting
/// future only when it returns `None`, so the common case writes none of that future's
/// state.
pub fn admit_now<'p>(
    pool: &'p Pool,
    chosen: &'p Server,
    tried: &[BackendIdx],
) -> Option<(&'p Server, LoadGuard)> {
    let Some(max) = chosen.settings.max_conns else {
        return Some((chosen, LoadGuard::new(chosen.state.clone())));
    };
    if let Some(g) = LoadGuard::try_limited(&chosen.state, max, &pool.queue.waiters) {
        return Some((chosen, g));
    }
    any_free(pool, tried)
}

/// [`admit`]'s wait, once [`admit_now`] found no free slot: in the pool's queue until a
/// slot frees, the queue is full or the wait times out (both refusals are counted).
pub async fn queue<'p>(
    pool: &'p Pool,
    tried: &[BackendIdx],
) -> Result<(&'p Server, LoadGuard), QueueError> {
    wait(pool, tried).await.inspect_err(|e| {
        pool.queue.rejections.inc();
        tracing::debug!(pool = %pool.name(), error = %e, "request refused: no server slot");
    })
}

/// One slot on any eligible server not in `tried`, scanning the tier in use.
fn any_free<'p>(pool: &'p Pool, tried: &[BackendIdx]) -> Option<(&'p Server, LoadGuard)> {
    let table = pool.eligible();
    let tier = if table.primary.is_empty() {
        &table.backup
    } else {
        &table.primary
    };
    tier.members()
        .iter()
        .filter(|m| !tried.contains(&m.idx))
        .find_map(|m| {
            let s = &pool.servers[m.idx.get()];
            let g = match s.settings.max_conns {
                None => LoadGuard::new(s.state.clone()),
                Some(max) => LoadGuard::try_limited(&s.state, max, &pool.queue.waiters)?,
            };
            Some((s, g))
        })
}

/// Leaves the queue count when a waiter is done, however it ends (served, timed out, or the
/// client went away and the future was dropped).
struct InQueue<'a>(&'a Waiters);

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn wait<'p>(
    pool: &'p Pool,
    tried: &[BackendIdx],
) -> Result<(&'p Server, LoadGuard), QueueError> {
    let q = &pool.queue;
    let w = &*q.waiters;
    if w.waiting.fetch_add(1, Ordering::SeqCst) >= q.max {
        w.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(QueueError::Full);
    }
    let _in_queue = InQueue(w);
    let deadline = tokio::time::Instant::now() + q.timeout;
    loop {
        // Register for a wake-up before looking, so a slot freed between the look and the
        // wait is not missed.
        let notified = w.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(found) = any_free(pool, tried) {
            return Ok(found);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(QueueError::TimedOut(q.timeout));
        }
    }
}
