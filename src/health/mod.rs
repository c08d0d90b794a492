//! Health: active probes, passive failure detection, flap damping, and the state changes
//! they drive. Everything here changes a server's [`BackendState`](crate::backend::BackendState)
//! atomics and then republishes the pool's eligible table; the request path only ever reads.
//!
//! A server is eligible for new traffic when all of these hold (see `BackendState::eligible`):
//! - **active checks** say up ([`checker`], one task per server, with rise/fall from
//!   [`rise_fall`] over the probes of [`probe`]);
//! - **passive detection** has not ejected it ([`passive`], fed by real traffic);
//! - **flap damping** does not hold it out ([`damping`]);
//! - the operator has not drained or disabled it.
//!
//! Initial state: a new server takes **no traffic until its first successful check**; that
//! first success brings it up at once, and from then on `rise` successes / `fall` failures in
//! a row are needed to change state. `initial_state = "up"` starts it up instead (it then goes
//! down only after `fall` failures). With `kind = "none"` servers start up and stay up as far as
//! active checks go; passive detection still applies.
//!
//! Every transition is reported by the function that makes it ([`checker`] for up/down and
//! damping, [`passive`] for ejections): logged once with pool, server, old → new and reason,
//! counted, and published at once. [`disagree`] watches for active checks and real traffic
//! telling different stories. [`ramp`] keeps republishing while a returning server's
//! slow-start weight rises.

pub mod checker;
pub mod damping;
pub mod disagree;
pub mod passive;
pub mod probe;
pub mod ramp;
pub mod rise_fall;

use std::time::Duration;

/// Why an active probe failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The TCP connection could not be made.
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// No complete answer within the probe timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The HTTP exchange failed (closed, malformed response...).
    #[error("http exchange failed: {0}")]
    Http(#[from] hyper::Error),
    /// The HTTP status was not among the expected ones.
    #[error("unexpected status {0}")]
    Status(u16),
    /// The HTTP body lacked the expected substring.
    #[error("response body does not contain {0:?}")]
    Body(String),
    /// Reading or writing the heartbeat connection failed.
    #[error("heartbeat i/o failed: {0}")]
    Io(std::io::Error),
    /// The server closed the heartbeat connection before a full reply.
    #[error("connection closed before a reply")]
    Closed,
    /// The heartbeat reply did not start with the expected bytes.
    #[error("unexpected reply {0:?}")]
    Reply(String),
}
