//! The runtime's side of server discovery: the one function through which discovered
//! servers enter a pool. It merges a pool's discovered set with the servers its file lists
//! and applies the result as a reload of that one pool would (`apply::apply_one_pool`),
//! under the same lock that serialises reloads, so the two never interleave.

use std::sync::Arc;

use super::{apply, Fulcrum};
use crate::discovery::{self, DiscoveredServer, Publish};

impl Fulcrum {
    /// Installs `found` as the dynamic servers of `pool`: servers that stay keep their
    /// state, new ones start with their health checks (no traffic before the first pass,
    /// unless `initial_state = "up"`), removed ones stop taking new requests. Returns once
    /// the new servers have had their first probe, bounded by the probe timeout.
    pub(crate) async fn publish_discovered(&self, pool: &str, found: Arc<[DiscoveredServer]>) {
        let first_round = {
            let mut guard = self.inner.live.lock().await;
            let Some(live) = guard.as_mut() else {
                return; // shut down
            };
            let cfg = self.shared().config.load();
            let Some(ps) = cfg.pool(pool).filter(|p| p.discovery.is_some()) else {
                return; // a reload removed the pool or its sources meanwhile
            };
            self.shared().discovery.set_found(&ps.name, found.clone());
            let merged = Arc::new(discovery::merge(ps, &found));
            apply::apply_one_pool(&merged, live, self.shared())
        };
        apply::wait_for_first_probes(&first_round).await;
    }

    /// `publish_discovered` as the discovery tasks call it; holds the runtime weakly, so
    /// that a task never keeps a stopped fulcrum alive.
    pub(super) fn discovery_publisher(&self) -> Publish {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move |pool, found| {
            let weak = weak.clone();
            Box::pin(async move {
                if let Some(inner) = weak.upgrade() {
                    Fulcrum { inner }.publish_discovered(&pool, found).await;
                }
            })
        })
    }
}
