//! Servers as the proxy sees them: [`BackendState`] (live atomics that outlive reloads), the
//! [`Registry`] that keeps those states across config generations, and the process clock.
//!
//! Writers (health checker, passive detector, admin API) change a state's atomics and then
//! ask the pool to publish a new eligible table; readers on the request path only read
//! atomics. Nothing here does I/O.
//!
//! By concern: [`clock`](now_ms), the server [`state`](BackendState) and what counts its
//! traffic ([`BackendMetrics`]), the [`availability`](Availability) record, the
//! [`load`](LoadGuard) a request holds, and the [`Registry`].

mod availability;
mod clock;
mod load;
mod metrics;
mod registry;
mod state;

pub use availability::Availability;
pub use clock::{monotonic_ns, now_ms, poll_instant, poll_ns, poll_since, PerPoll};
pub use load::{LoadGuard, Waiters};
pub use metrics::{
    BackendMetrics, FailureKind, Selection, DISAGREE_CHECK_FAILING, DISAGREE_TRAFFIC_FAILING,
};
pub use registry::Registry;
pub use state::{AdminState, BackendState, WeightRamp};
