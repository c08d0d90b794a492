//! The proxies: L7 ([`http`]) and L4 ([`tcp`]), and what they share: the error type that maps
//! each failure to exactly one status, one metric and one side to blame ([`error`]), and the
//! tunnel relay.

pub mod attempts;
pub mod body;
pub mod cancel;
pub mod error;
pub mod headers;
pub mod http;
pub mod proxy_protocol;
pub mod tcp;
pub mod tunnel;
pub mod upstream;

pub use error::{local_error_kind, Blame, ProxyError, Rejection};
