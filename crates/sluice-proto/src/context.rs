//! What every connection task shares: the registry, the live config, metrics, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use sluice_core::metrics::Metrics;
use sluice_core::{CacheSettings, Config, Registry};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared state of a running node.
#[derive(Debug)]
pub struct Context {
    /// Live streams.
    pub registry: Registry,
    /// The config in force; swapped whole on reload.
    pub config: ArcSwap<Config>,
    /// Metrics.
    pub metrics: Metrics,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    next_conn_id: AtomicU64,
}

impl Context {
    /// A context for `config`.
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Context {
            registry: Registry::new(),
            config: ArcSwap::from_pointee(config),
            metrics: Metrics::new(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn_id: AtomicU64::new(1),
        })
    }

    /// A process-unique connection id for logs.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Cache settings for new streams, from the config in force.
    pub fn cache_settings(&self) -> CacheSettings {
        let c = self.config.load();
        CacheSettings {
            gop_cache: c.streams.gop_cache,
            gops: c.streams.gop_cache_gops,
            max_bytes: c.streams.gop_cache_max_bytes,
        }
    }

    /// Sets the streams gauge from the registry (called when metrics are scraped).
    pub fn update_stream_gauge(&self) {
        self.metrics.streams.set(self.registry.len() as i64);
    }
}
