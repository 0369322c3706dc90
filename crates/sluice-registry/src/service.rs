//! The etcd session: this node's lease and keys, the watch that keeps the [`View`] current,
//! lookups with a deadline, and reconnection with backoff.
//!
//! One task ([`Registry::run`]) owns the session. It grants one lease per session and writes
//! every key of this node under it — its node entry, and one entry per stream its own
//! publishers publish — so a crash (or a partition longer than the TTL) removes them all; a
//! publisher that leaves has its key deleted (only if the key is still ours: another origin
//! may have taken the stream over). A session that fails is given up whole: the view stays as
//! it was (serving goes on with what is known), the failure is counted, and a new session
//! (new lease, keys written again, view listed again) starts after a backoff.
//!
//! Viewers never wait on etcd beyond `lookup_timeout_ms`: the view answers at once, a lookup
//! is one bounded request, and no lock is held across an await.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use sluice_core::StreamKey;
use sluice_core::metrics::{Label1, Metrics};
use sluice_core::topology::{Directory, RegistryConfig, Upstream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::view::{Layout, NodeEntry, StreamEntry, View, upstreams_of};

/// How often this node's own publishers are compared with the keys it wrote.
const SYNC_EVERY: Duration = Duration::from_millis(200);
/// The node entry is rewritten at least this often (its load changes).
const NODE_EVERY: Duration = Duration::from_secs(2);

/// What the session needs to know of the node it runs in.
pub trait Local: Send + Sync {
    /// Streams this node's own publishers publish now (not pulled ones).
    fn publishing(&self) -> Vec<StreamKey>;
    /// The node's entry now (its load).
    fn describe(&self) -> NodeEntry;
}

/// The stream registry of one node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RegistryConfig,
    layout: Layout,
    node_id: String,
    /// Whether this node can pull over the QUIC relay.
    quic: bool,
    /// The advertised base URLs, the application appended per stream.
    advertise: Vec<String>,
    view: RwLock<View>,
    changes: watch::Sender<u64>,
    /// The session's client while it works; cloned out for lookups.
    client: Mutex<Option<SessionClient>>,
    up: AtomicBool,
    errors: Family<Label1, Counter>,
    up_gauge: Gauge,
    lookups: Family<Label1, Counter>,
}

/// The etcd client (which has no `Debug`).
#[derive(Clone)]
struct SessionClient(Client);

impl std::fmt::Debug for SessionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("etcd client")
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
struct SessionError {
    op: &'static str,
    message: String,
}

fn failed(op: &'static str) -> impl FnOnce(etcd_client::Error) -> SessionError {
    move |e| SessionError {
        op,
        message: e.to_string(),
    }
}

/// Runs `f` with deadline `d`; a timeout is an error of `op`.
async fn bounded<T>(
    op: &'static str,
    d: Duration,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, SessionError> {
    match timeout(d, f).await {
        Ok(r) => r.map_err(failed(op)),
        Err(_) => Err(SessionError {
            op,
            message: format!("no answer within {} ms", d.as_millis()),
        }),
    }
}

/// `/api/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterJson {
    /// Whether a registry is configured.
    pub enabled: bool,
    /// Whether the session with etcd works now.
    pub up: bool,
    /// This node's id.
    pub node_id: String,
    /// The key prefix.
    pub prefix: String,
    /// The nodes registered.
    pub nodes: Vec<NodeEntry>,
    /// The streams registered.
    pub streams: Vec<ClusterStreamJson>,
}

/// One stream in `/api/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStreamJson {
    /// Application.
    pub app: String,
    /// Stream name.
    pub stream: String,
    /// The publishing node.
    pub node: String,
    /// Where to pull it from.
    pub upstreams: Vec<String>,
}

impl Registry {
    /// A registry for `cfg` (which must be enabled) of node `node_id`, advertising
    /// `advertise` (base URLs); `quic`: this node can pull over the relay.
    pub fn new(
        cfg: RegistryConfig,
        node_id: &str,
        advertise: Vec<String>,
        quic: bool,
        metrics: &Metrics,
    ) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                layout: Layout::new(&cfg.prefix),
                cfg,
                node_id: node_id.to_owned(),
                quic,
                advertise,
                view: RwLock::new(View::default()),
                changes: watch::Sender::new(0),
                client: Mutex::new(None),
                up: AtomicBool::new(false),
                errors: metrics.registry_errors.clone(),
                up_gauge: metrics.registry_up.clone(),
                lookups: metrics.registry_lookups.clone(),
            }),
        }
    }

    /// Whether the session with etcd works now.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// The cluster as the registry shows it.
    pub fn cluster(&self) -> ClusterJson {
        let view = self.inner.view.read();
        ClusterJson {
            enabled: true,
            up: self.is_up(),
            node_id: self.inner.node_id.clone(),
            prefix: self.inner.cfg.prefix.clone(),
            nodes: view.nodes(),
            streams: view
                .streams()
                .into_iter()
                .map(|(k, e)| ClusterStreamJson {
                    app: k.app.to_string(),
                    stream: k.name.to_string(),
                    node: e.node,
                    upstreams: e.upstreams,
                })
                .collect(),
        }
    }

    /// Keeps sessions with etcd until `shutdown`; then revokes this node's lease (its keys go
    /// at once) if etcd answers within the request deadline.
    pub async fn run(self, local: Arc<dyn Local>, shutdown: CancellationToken) {
        let inner = &self.inner;
        let mut backoff = inner.cfg.backoff_initial();
        loop {
            let started = Instant::now();
            let result = inner.session(&*local, &shutdown).await;
            inner.set_up(false);
            inner.client.lock().take();
            match result {
                Ok(()) => return,
                Err(error) => {
                    inner.errors.get_or_create(&[("op", error.op)]).inc();
                    warn!(%error, "stream registry session failed; serving on with what is known");
                }
            }
            // A session that lasted resets the backoff; one that failed at once doubles it.
            if started.elapsed() > inner.cfg.lease_ttl() {
                backoff = inner.cfg.backoff_initial();
            }
            let wait = backoff.mul_f64(0.75 + fastrand::f64() / 2.0);
            backoff = (backoff * 2).min(inner.cfg.backoff_max());
            tokio::select! {
                _ = sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

impl Inner {
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.up_gauge.set(i64::from(up));
    }

    fn publish_change(&self) {
        let generation = self.view.read().generation();
        self.changes.send_replace(generation);
    }

    fn entry_for(&self, key: &StreamKey) -> StreamEntry {
        StreamEntry {
            node: self.node_id.clone(),
            upstreams: self
                .advertise
                .iter()
                .map(|base| format!("{}/{}", base.trim_end_matches('/'), key.app))
                .collect(),
        }
    }

    async fn session(
        &self,
        local: &dyn Local,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let cfg = &self.cfg;
        let request = cfg.request_timeout();
        let options = ConnectOptions::new().with_timeout(request);
        let mut client = bounded(
            "connect",
            cfg.connect_timeout(),
            Client::connect(&cfg.endpoints, Some(options)),
        )
        .await?;
        // The first request opens the connection: it gets the connect deadline.
        let ttl = i64::try_from(cfg.lease_ttl_s).unwrap_or(i64::MAX);
        let lease = bounded(
            "lease",
            cfg.connect_timeout() + request,
            client.lease_grant(ttl, None),
        )
        .await?
        .id();
        let (mut keeper, mut kept) =
            bounded("keepalive", request, client.lease_keep_alive(lease)).await?;
        let mut node_written = self.write_node(&mut client, lease, local, None).await?;
        let root = self.layout.root();
        let listing = bounded(
            "list",
            request,
            client.get(root.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = listing.header().map_or(0, |h| h.revision());
        {
            let mut view = self.view.write();
            view.reset(
                &self.layout,
                listing.kvs().iter().map(|kv| (kv.key(), kv.value())),
            );
        }
        self.publish_change();
        let (_watcher, mut watch_stream) = bounded(
            "watch",
            request,
            client.watch(
                root,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        *self.client.lock() = Some(SessionClient(client.clone()));
        self.set_up(true);
        info!(lease, revision, "stream registry session up");

        let mut registered: HashSet<StreamKey> = HashSet::new();
        let keepalive_every = (cfg.lease_ttl() / 3).max(Duration::from_millis(300));
        let mut keepalive = tokio::time::interval(keepalive_every);
        let mut sync = tokio::time::interval(SYNC_EVERY);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewed = Instant::now();
        let lost = |op: &'static str, message: &str| SessionError {
            op,
            message: message.to_owned(),
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Our keys go now rather than at the lease's expiry.
                    let _ = bounded("revoke", request, client.lease_revoke(lease)).await;
                    info!("stream registry: lease revoked");
                    return Ok(());
                }
                _ = keepalive.tick() => {
                    if last_renewed.elapsed() > cfg.lease_ttl() {
                        return Err(lost("keepalive", "lease not renewed within its TTL"));
                    }
                    bounded("keepalive", request, keeper.keep_alive()).await?;
                }
                renewed = kept.message() => match renewed {
                    Ok(Some(r)) if r.ttl() > 0 => last_renewed = Instant::now(),
                    Ok(Some(_)) => return Err(lost("keepalive", "lease expired")),
                    Ok(None) => return Err(lost("keepalive", "keep-alive stream ended")),
                    Err(e) => return Err(failed("keepalive")(e)),
                },
                message = watch_stream.message() => match message {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return Err(lost("watch", resp.cancel_reason()));
                        }
                        let mut changed = false;
                        {
                            let mut view = self.view.write();
                            for event in resp.events() {
                                let Some(kv) = event.kv() else { continue };
                                changed |= match event.event_type() {
                                    EventType::Put => view.put(&self.layout, kv.key(), kv.value()),
                                    EventType::Delete => view.delete(&self.layout, kv.key()),
                                };
                            }
                        }
                        if changed {
                            self.publish_change();
                        }
                    }
                    Ok(None) => return Err(lost("watch", "watch stream ended")),
                    Err(e) => return Err(failed("watch")(e)),
                },
                _ = sync.tick() => {
                    self.sync_streams(&mut client, lease, local, &mut registered).await?;
                    node_written = self.write_node(&mut client, lease, local, Some(node_written)).await?;
                }
            }
        }
    }

    /// Writes the node entry if it changed (or is due); returns when it was last written.
    async fn write_node(
        &self,
        client: &mut Client,
        lease: i64,
        local: &dyn Local,
        last: Option<(Instant, NodeEntry)>,
    ) -> Result<(Instant, NodeEntry), SessionError> {
        let mut entry = local.describe();
        if let Some((at, before)) = last {
            let mut same = before.clone();
            same.updated_unix = entry.updated_unix;
            if same == entry && at.elapsed() < NODE_EVERY {
                return Ok((at, before));
            }
        }
        entry.id = self.node_id.clone();
        let value = serde_json::to_string(&entry).unwrap_or_default();
        bounded(
            "put",
            self.cfg.request_timeout(),
            client.put(
                self.layout.node(&self.node_id),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        Ok((Instant::now(), entry))
    }

    /// Writes keys for streams this node's publishers took up, deletes those they left.
    async fn sync_streams(
        &self,
        client: &mut Client,
        lease: i64,
        local: &dyn Local,
        registered: &mut HashSet<StreamKey>,
    ) -> Result<(), SessionError> {
        let now: HashSet<StreamKey> = local.publishing().into_iter().collect();
        let request = self.cfg.request_timeout();
        for key in now.difference(registered).cloned().collect::<Vec<_>>() {
            let value = self.entry_for(&key).to_json();
            bounded(
                "put",
                request,
                client.put(
                    self.layout.stream(&key),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                ),
            )
            .await?;
            info!(%key, "stream registered");
            registered.insert(key);
        }
        for key in registered.difference(&now).cloned().collect::<Vec<_>>() {
            let k = self.layout.stream(&key);
            // Only while the key is still ours: a publisher that moved to another origin
            // may already have it written there.
            let txn = Txn::new()
                .when([Compare::lease(k.clone(), CompareOp::Equal, lease)])
                .and_then([TxnOp::delete(k, None)]);
            bounded("delete", request, client.txn(txn)).await?;
            info!(%key, "stream unregistered");
            registered.remove(&key);
        }
        Ok(())
    }

    async fn lookup(&self, key: &StreamKey) -> Vec<Upstream> {
        let cached = upstreams_of(&self.view.read(), key, &self.node_id, self.quic);
        if !cached.is_empty() {
            self.count("cached");
            return cached;
        }
        let Some(SessionClient(mut client)) = self.client.lock().clone() else {
            self.count("unavailable");
            return Vec::new();
        };
        let k = self.layout.stream(key);
        match timeout(self.cfg.lookup_timeout(), client.get(k, None)).await {
            Ok(Ok(resp)) => {
                let Some(kv) = resp.kvs().first() else {
                    self.count("missing");
                    return Vec::new();
                };
                // Read, not kept: the view is the watch's alone. A Get answered before a
                // delete the watch has already applied would otherwise put back a stream
                // that is gone, with no later event to take it out again.
                let mut answer = View::default();
                answer.put(&self.layout, kv.key(), kv.value());
                let found = upstreams_of(&answer, key, &self.node_id, self.quic);
                self.count(if found.is_empty() { "missing" } else { "found" });
                found
            }
            Ok(Err(error)) => {
                debug!(%key, %error, "registry lookup failed");
                self.count("error");
                self.errors.get_or_create(&[("op", "lookup")]).inc();
                Vec::new()
            }
            Err(_) => {
                self.count("timeout");
                self.errors.get_or_create(&[("op", "lookup")]).inc();
                Vec::new()
            }
        }
    }

    fn count(&self, result: &'static str) {
        self.lookups.get_or_create(&[("result", result)]).inc();
    }
}

impl Directory for Registry {
    fn upstreams(&self, key: &StreamKey) -> Vec<Upstream> {
        let inner = &self.inner;
        upstreams_of(&inner.view.read(), key, &inner.node_id, inner.quic)
    }

    fn lookup<'a>(
        &'a self,
        key: &'a StreamKey,
    ) -> Pin<Box<dyn Future<Output = Vec<Upstream>> + Send + 'a>> {
        Box::pin(self.inner.lookup(key))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}
