//! What every connection task shares: the registry, the live config, metrics, shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use sluice_core::metrics::{Metrics, proto};
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
    /// Cancelled when the node starts draining ([`Context::drain`]) or shuts down (it is a
    /// child of `shutdown`): from then on new viewers and publishers are refused and
    /// `/readyz` fails, while connected ones go on until shutdown. Whatever must let go of
    /// the node's place in the world before its sessions end (a registry's keys, say)
    /// awaits this token.
    pub draining: CancellationToken,
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
        let shutdown = CancellationToken::new();
        Arc::new(Context {
            registry: Registry::new(),
            config: ArcSwap::from_pointee(config),
            metrics: Metrics::new(),
            draining: shutdown.child_token(),
            shutdown,
            tracker: TaskTracker::new(),
            puller: OnceLock::new(),
            limits: crate::limits::Limits::default(),
            fanout: crate::fanout::Fanout::default(),
            next_conn_id: AtomicU64::new(1),
        })
    }

    /// Starts draining (see [`Context::draining`]); whether this call started it (false
    /// when the node already drains or shuts down).
    pub fn drain(&self) -> bool {
        if self.draining.is_cancelled() {
            return false;
        }
        self.draining.cancel();
        self.metrics.draining.set(1);
        true
    }

    /// Whether new viewers and publishers are refused: the node drains or shuts down.
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Viewers and publishers connected now, all protocols: RTMP and HTTP-FLV viewers
    /// (TLS included, and other nodes pulling over RTMP), HLS viewers (connections that
    /// polled a media playlist recently), local publishers and streams relayed to other
    /// nodes over QUIC. A drain ends early when this reaches 0. (This node's own pulls are
    /// not counted: they serve its viewers, and idle out after them.)
    pub fn sessions(&self) -> i64 {
        let m = &self.metrics;
        let viewers = |protocol| m.viewers.get_or_create(&[("protocol", protocol)]).get();
        viewers(proto::RTMP)
            + viewers(proto::HTTP_FLV)
            + m.hls_viewers.get()
            + m.publishers.get()
            + m.relay_streams.get()
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
