//! fulcrum: a Layer-4/7 reverse-proxy load balancer.
//!
//! A tour, in the order a connection meets the parts:
//! - `listener` binds sockets and accepts; each connection goes to `proxy::http` (L7,
//!   hyper) or `proxy::tcp` (L4 relay). [`admission`] decides who the client is (PROXY
//!   header, trusted forwarding headers) and whether it may come in (allow/deny, rate limits).
//! - The proxy asks its [`pool::Pool`] for a server; the pool asks the pure [`balance`] core,
//!   which only ever sees the eligible servers of the current table.
//! - [`backend`] holds each server's live state in atomics that survive reloads (one file per
//!   concern: the clock, the state, its metrics, the availability record, the load a request
//!   holds, the registry); `health` (active probes, passive detection) changes it and
//!   republishes the pool's table; `queue` admits each request to a server slot
//!   (`max_conns`) or queues it, bounded.
//! - [`config`] parses and validates TOML (`config::validate` checks one section per
//!   function: process, pools, health, listeners, routes, TLS, discovery); [`runtime`]
//!   builds and swaps everything on start and reload; [`daemon`] handles signals and systemd;
//!   [`admin`] serves metrics, status (JSON, and a page for people at `/`) and the runtime
//!   API. The runtime depends on admin, never the reverse: it publishes the state the admin
//!   API reads (`admin::Shared`) and carries out the reloads asked for there
//!   (`admin::Control`). `access_log` writes request lines off the request path;
//!   [`preview`] tells what a reload would change before it happens; [`discovery`] keeps the
//!   servers of pools named by DNS, SRV or etcd up to date, through the same one-pool path a
//!   reload takes.
//! - The command line's own words live beside it: [`summary`] is what `fulcrum check`
//!   prints, [`run_demo`] is `fulcrum demo`, over the origins of [`demo`].
//! - [`workers`] are the threads that serve connections, one single-threaded runtime each;
//!   a connection stays on the worker that accepted it.
//! - [`tls`] loads certificates and builds rustls configurations, performs handshakes for
//!   the listener and the proxy, and reads SNI for passthrough routing.
//!
//! Items are crate-private unless the binary (`main.rs`), the integration tests, the benches,
//! the examples or the fuzz targets use them; each module re-exports its main types.

pub(crate) mod access_log;
pub mod admin;
pub mod admission;
pub mod backend;
pub mod balance;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod discovery;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod health;
pub(crate) mod listener;
pub mod metrics;
pub(crate) mod notify;
pub mod pool;
pub mod preview;
pub mod proxy;
pub(crate) mod queue;
pub mod route;
mod run_demo;
pub mod runtime;
mod summary;
pub mod tls;
pub mod workers;

pub use config::Config;
pub use run_demo::run_demo;
pub use runtime::Fulcrum;
pub use summary::{discovery_report, summary};
