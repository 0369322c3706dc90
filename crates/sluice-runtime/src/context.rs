//! What every connection task shares: the registry, the live config, metrics, shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use sluice_core::metrics::Metrics;
use sluice_core::topology::{PullTicket, Puller, Via};
use sluice_core::{CacheSettings, Config, Cursor, Registry, StreamKey};
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
    /// The pull machinery, when this node pulls streams it lacks (set once at start-up).
    pub puller: OnceLock<Arc<dyn Puller>>,
    /// Per-address limits and the refusal log.
    pub limits: crate::limits::Limits,
    /// The shared writers of caught-up viewers.
    pub(crate) fanout: crate::fanout::Fanout,
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
            puller: OnceLock::new(),
            limits: crate::limits::Limits::default(),
            fanout: crate::fanout::Fanout::default(),
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

    /// A viewer's cursor on `key`, and the ticket of the pull that brings the stream when no
    /// local publisher has it and this node pulls it from upstream.
    pub fn watch(&self, key: &StreamKey, via: &Via) -> (Cursor, Option<PullTicket>) {
        let cursor = self.registry.subscribe(key, self.cache_settings());
        let ticket = match self.puller.get() {
            Some(puller) if !cursor.stream().is_publishing() => puller.demand(key, via),
            _ => None,
        };
        (cursor, ticket)
    }

    /// Sets the streams gauge from the registry (called when metrics are scraped).
    pub fn update_stream_gauge(&self) {
        self.metrics.streams.set(self.registry.len() as i64);
    }
}
