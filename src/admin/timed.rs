//! Operator changes that take time: a weight that ramps to its new value in steps
//! (`POST .../weight?value=10&over=60s`), and a drain that closes what is left at a deadline
//! (`POST .../drain?deadline=120s`).
//!
//! Both live in the server's state, which the registry keeps across reloads, and each runs
//! one small task that publishes through the pool's slot (so into whichever generation is
//! current). A task ends early when the operator changes the server again: it only acts on
//! the ramp or deadline it was started for.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{now_ms, AdminState, BackendState, WeightRamp};
use crate::pool::PoolSlot;

/// Starts ramping `st` from its weight now to `to` over `over`.
pub fn ramp_weight(
    st: &Arc<BackendState>,
    slot: &Arc<PoolSlot>,
    configured: u32,
    to: u32,
    over: Duration,
) {
    let now = now_ms();
    let ramp = WeightRamp {
        from: st.operator_weight(now).unwrap_or(configured),
        to,
        start_ms: now,
        over_ms: over.as_millis().max(1) as u64,
    };
    st.set_weight_ramp(Some(ramp));
    slot.publish();
    let (st, slot) = (st.clone(), slot.clone());
    let step =
        Duration::from_millis(ramp.over_ms / WeightRamp::STEPS).max(Duration::from_millis(50));
    tokio::spawn(async move {
        loop {
            let left = ramp.end_ms().saturating_sub(now_ms());
            tokio::time::sleep(step.min(Duration::from_millis(left.max(1)))).await;
            if st.weight_ramp() != Some(ramp) {
                return; // replaced or cancelled by a newer change
            }
            if now_ms() >= ramp.end_ms() {
                if st.finish_weight_ramp(ramp) {
                    tracing::info!(pool = %st.pool, server = %st.name, weight = ramp.to, "weight ramp complete");
                }
                slot.publish();
                return;
            }
            slot.publish();
        }
    });
}

/// Closes what is left of `st`'s connections at `deadline` from now, if it is still
/// draining under this deadline then.
pub fn drain_deadline(st: &Arc<BackendState>, deadline: Duration) {
    let at = now_ms() + deadline.as_millis() as u64;
    st.set_drain_deadline(at);
    let st = st.clone();
    tokio::spawn(async move {
        tokio::time::sleep(deadline).await;
        if st.drain_deadline() != at || st.admin_state() != AdminState::Draining {
            return; // enabled again, or a newer deadline took over
        }
        let open = st.load.load(std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(pool = %st.pool, server = %st.name, open, "drain deadline reached; closing the connections left");
        st.sever_connections();
    });
}
