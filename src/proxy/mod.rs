//! The proxies: L7 (`http`) and L4 (`tcp`), and what they share: the error type that maps
//! each failure to exactly one status, one metric and one side to blame (`error`), and the
//! tunnel relay.

pub(crate) mod attempts;
pub(crate) mod body;
pub(crate) mod cancel;
pub(crate) mod error;
pub(crate) mod h1;
pub(crate) mod headers;
pub(crate) mod http;
pub mod proxy_protocol;
pub(crate) mod tcp;
pub mod tunnel;
pub(crate) mod upstream;

pub use error::{local_error_kind, Blame, ProxyError, Rejection};
