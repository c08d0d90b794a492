//! What the admin API sees of a running fulcrum, and the one thing it may ask of it.
//!
//! [`Shared`] is published by the supervisor (`runtime`), which builds and swaps every
//! field on start and reload; the admin API reads it (and writes runtime overrides into the
//! servers' atomics it reaches through it). [`Control`] is how the admin API asks for a
//! reload without naming the supervisor: `runtime::Fulcrum` implements it, so the
//! dependency runs one way, from `runtime` to `admin`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Auth, ConfigHistory};
use crate::backend::Registry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::PoolSlot;

/// Shared by the supervisor and the admin API.
pub struct Shared {
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Server states across generations.
    pub registry: Arc<Registry>,
    /// The config in force.
    pub config: ArcSwap<Config>,
    /// Pools by name (current generations), for the admin API.
    pub pools: ArcSwap<HashMap<Arc<str>, Arc<PoolSlot>>>,
    /// Listener addresses by name.
    pub listener_addrs: ArcSwap<HashMap<Arc<str>, SocketAddr>>,
    /// Who may change state through the admin API.
    pub admin_auth: ArcSwap<Auth>,
    /// Split states and their run-time weight overrides, by (listener, route): they outlive
    /// reloads that keep a split's pools.
    pub splits: crate::route::SplitRegistry,
    /// The certificates each TLS listener serves now, for `/status`.
    pub certificates: ArcSwap<Vec<(Arc<str>, crate::tls::CertInfo)>>,
    /// The configuration generation and the last reload's outcome, for `/status`.
    pub history: ConfigHistory,
    /// Server discovery: its tasks and the servers they last published.
    pub discovery: crate::discovery::Discovery,
}

/// A reload's outcome as the admin API reports it: the error, rendered.
pub type ReloadResult = Result<(), String>;

/// What the admin API may ask of the supervisor that serves it.
pub trait Control: Send + Sync + 'static {
    /// Re-reads the config file in force and applies it, like SIGHUP. The future owns what
    /// it needs, so it can run in its own task and finish even if the caller goes away.
    fn reload(&self) -> Pin<Box<dyn Future<Output = ReloadResult> + Send + 'static>>;
}
