//! The pull manager: at most one pull per stream, started by the first viewer that asks for a
//! stream this node lacks, joined by every later one, stopped once nobody watches.
//!
//! A pull is a task that tries the application's upstreams in order (health first), attaches
//! as the stream's publisher when the first frame arrives — so the GOP cache and scheduling
//! apply exactly as for a local publisher — and, when its upstream fails or falls silent,
//! switches to the next candidate. A switch keeps the publisher attached, so viewers stay
//! connected; the new upstream's frames are taken from its first keyframe (sequence headers
//! pass) and rebased to continue the timeline, so players see one continuous stream.
//!
//! With a stream registry ([`Directory`]), the upstreams it names for a stream come first,
//! before the application's static list (and an edge pulls any application the registry
//! knows). A live pull whose stream the registry moves to another origin switches there the
//! same way as on a failure, and a pull waiting to retry is woken by the registry's changes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Serialize;
use sluice_core::topology::{
    Directory, PullConfig, PullStatus, PullTicket, Puller, Role, Upstream, Via,
};
use sluice_core::{Publisher, StreamKey};
use sluice_media::{Frame, FrameKind};
use sluice_runtime::Context;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::health::{Backoff, Health, UpstreamHealth};
use crate::quic::QuicRelay;
use crate::source::{PullError, Source};

/// Remembered misses kept at most; past it, expired ones are dropped first, then all.
const MAX_MISSES: usize = 10_000;
/// How often a pull with no frame in flight checks whether anyone still watches.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// Pulls streams this node lacks from upstream. Installed into the [`Context`] as its
/// [`Puller`]; also answers the admin API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PullManager {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ctx: Weak<Context>,
    quic: Option<Arc<QuicRelay>>,
    pulls: DashMap<StreamKey, Arc<PullState>>,
    misses: DashMap<StreamKey, Instant>,
    health: Health,
    /// The stream registry, when one is configured (set once at start-up).
    directory: OnceLock<Arc<dyn Directory>>,
}

/// One running pull, shared by its task, its viewers' tickets and the API.
#[derive(Debug)]
struct PullState {
    status: watch::Sender<PullStatus>,
    progress: Mutex<PullProgress>,
}

#[derive(Debug, Default, Clone)]
struct PullProgress {
    upstream: Option<Upstream>,
    since: Option<SystemTime>,
    started: Option<SystemTime>,
    bytes: u64,
    frames: u64,
    switches: u64,
    last_error: Option<String>,
}

/// One pull, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct PullJson {
    /// Application.
    pub app: String,
    /// Stream name.
    pub stream: String,
    /// `pulling` (asking upstreams), `live` or `failed`.
    pub state: &'static str,
    /// The upstream frames come from now.
    pub upstream: Option<String>,
    /// Its transport (`rtmp`, `quic`).
    pub transport: Option<&'static str>,
    /// Unix time (seconds) since when the current upstream delivers.
    pub since_unix: Option<f64>,
    /// Unix time (seconds) the pull started.
    pub started_unix: Option<f64>,
    /// Payload bytes received.
    pub bytes: u64,
    /// Frames received.
    pub frames: u64,
    /// Switches to another upstream.
    pub switches: u64,
    /// The latest upstream failure.
    pub last_error: Option<String>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl PullManager {
    /// A manager for `ctx`, installed as its puller. `quic` is the relay endpoint used for
    /// `quic://` upstreams.
    pub fn install(ctx: &Arc<Context>, quic: Option<Arc<QuicRelay>>) -> PullManager {
        let manager = PullManager {
            shared: Arc::new(Shared {
                ctx: Arc::downgrade(ctx),
                quic,
                pulls: DashMap::new(),
                misses: DashMap::new(),
                health: Health::default(),
                directory: OnceLock::new(),
            }),
        };
        let _ = ctx.puller.set(Arc::new(manager.clone()));
        manager
    }

    /// Running pulls, sorted by stream.
    pub fn pulls(&self) -> Vec<PullJson> {
        let mut out: Vec<_> = self
            .shared
            .pulls
            .iter()
            .map(|e| {
                let p = e.value().progress.lock().clone();
                let state = match &*e.value().status.borrow() {
                    PullStatus::Pulling => "pulling",
                    PullStatus::Live => "live",
                    PullStatus::Failed(_) => "failed",
                };
                PullJson {
                    app: e.key().app.to_string(),
                    stream: e.key().name.to_string(),
                    state,
                    upstream: p.upstream.as_ref().map(|u| u.url.to_string()),
                    transport: p.upstream.as_ref().map(|u| u.transport.as_str()),
                    since_unix: p.since.map(unix),
                    started_unix: p.started.map(unix),
                    bytes: p.bytes,
                    frames: p.frames,
                    switches: p.switches,
                    last_error: p.last_error,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.app, &a.stream).cmp(&(&b.app, &b.stream)));
        out
    }

    /// Consults `directory` before the static upstreams from now on (once, at start-up).
    pub fn set_directory(&self, directory: Arc<dyn Directory>) {
        let _ = self.shared.directory.set(directory);
    }

    /// Streams pulled now (whatever their state).
    pub fn is_pulling(&self, key: &StreamKey) -> bool {
        self.shared.pulls.contains_key(key)
    }

    /// The upstream health table.
    pub fn upstreams(&self) -> Vec<UpstreamHealth> {
        self.shared.health.snapshot(Instant::now())
    }
}

impl Shared {
    fn remember_miss(&self, key: &StreamKey, until: Instant) {
        if self.misses.len() >= MAX_MISSES {
            let now = Instant::now();
            self.misses.retain(|_, t| *t > now);
            if self.misses.len() >= MAX_MISSES {
                self.misses.clear();
            }
        }
        self.misses.insert(key.clone(), until);
    }
}

impl Puller for PullManager {
    fn demand(&self, key: &StreamKey, via: &Via) -> Option<PullTicket> {
        let shared = &self.shared;
        let ctx = shared.ctx.upgrade()?;
        let cfg = ctx.config.load();
        if cfg.cluster.upstreams(&key.app).is_none() {
            // No static upstreams: only the registry can name one. An edge asks it about
            // anything; a node that also takes publishers only about what it has shown, so
            // its viewers otherwise wait for a local publisher as before.
            let directory = shared.directory.get()?;
            let pulls = match cfg.cluster.role {
                Role::Origin => false,
                Role::Edge => true,
                Role::Both => !directory.upstreams(key).is_empty(),
            };
            if !pulls {
                return None;
            }
        }
        let node = cfg.cluster.node_id();
        if let Some(refusal) = via.refuse(node, cfg.cluster.max_hops) {
            warn!(%key, %refusal, "pull refused");
            ctx.metrics
                .pull_failures
                .get_or_create(&[("reason", "refused")])
                .inc();
            return Some(PullTicket::failed(refusal.to_string()));
        }
        let now = Instant::now();
        if let Some(until) = shared.misses.get(key).map(|t| *t) {
            if until > now {
                ctx.metrics.pull_misses_cached.inc();
                return Some(PullTicket::failed(format!("no upstream has {key}")));
            }
            shared.misses.remove_if(key, |_, t| *t <= now);
        }
        // Single flight: the entry is created and the task spawned under the map's shard
        // lock, so concurrent viewers of a cold stream all join the one pull.
        let state = match shared.pulls.entry(key.clone()) {
            dashmap::Entry::Occupied(e) => e.get().clone(),
            dashmap::Entry::Vacant(e) => {
                let state = Arc::new(PullState {
                    status: watch::Sender::new(PullStatus::Pulling),
                    progress: Mutex::new(PullProgress {
                        started: Some(SystemTime::now()),
                        ..Default::default()
                    }),
                });
                e.insert(state.clone());
                let task = PullTask {
                    shared: shared.clone(),
                    ctx: ctx.clone(),
                    key: key.clone(),
                    via: via.through(node),
                    state: state.clone(),
                    publisher: None,
                    idle_since: None,
                    saw_video: false,
                    last_loss: None,
                    changes: shared.directory.get().map(|d| d.changes()),
                };
                let span = info_span!(parent: None, "pull", app = %key.app, stream = %key.name);
                ctx.tracker.spawn(task.run().instrument(span));
                state
            }
        };
        Some(PullTicket {
            status: state.status.subscribe(),
            wait: cfg.cluster.pull.timeout(),
        })
    }
}

/// How a connected source stopped delivering.
enum SourceEnd {
    /// Stop pulling altogether (shutdown, no viewers, a local publisher took the stream).
    Stop,
    /// The upstream failed, fell silent or ended the stream: try the candidates again.
    Lost(PullError),
}

/// The task behind one pull.
struct PullTask {
    shared: Arc<Shared>,
    ctx: Arc<Context>,
    key: StreamKey,
    /// Sent upstream: the viewer's via-list with this node appended.
    via: Via,
    state: Arc<PullState>,
    /// Attached from the first frame on, kept across switches.
    publisher: Option<Publisher>,
    idle_since: Option<Instant>,
    saw_video: bool,
    /// Why the upstream in use was lost, until a switch counts it.
    last_loss: Option<&'static str>,
    /// The registry's changes, when there is a registry.
    changes: Option<watch::Receiver<u64>>,
}

impl PullTask {
    async fn run(mut self) {
        self.ctx.metrics.pulls.inc();
        info!(via = %self.via.to_query(), "pull started");
        self.pull().await;
        drop(self.publisher.take());
        let state = self.state.clone();
        self.shared
            .pulls
            .remove_if(&self.key, |_, s| Arc::ptr_eq(s, &state));
        self.ctx.metrics.pulls.dec();
        info!("pull stopped");
    }

    async fn pull(&mut self) {
        let mut delivered_ever = false;
        loop {
            let cfg = self.ctx.config.load_full();
            let settings = &cfg.cluster.pull;
            let mut candidates = cfg.cluster.candidates(&self.key);
            if let Some(directory) = self.shared.directory.get() {
                // The registry's first, then the static ones it did not name; the health
                // order below is stable, so among the ready ones the registry's lead.
                let mut named = directory.lookup(&self.key).await;
                candidates.retain(|c| !named.iter().any(|n| n.url == c.url));
                named.append(&mut candidates);
                candidates = named;
            }
            let now = Instant::now();
            self.shared.health.order(&mut candidates, now);
            if candidates.is_empty() {
                if !delivered_ever {
                    let what = if self.shared.directory.get().is_some() {
                        format!("no upstream has {}", self.key)
                    } else {
                        "the application no longer pulls from upstream".to_owned()
                    };
                    self.shared
                        .remember_miss(&self.key, now + settings.miss_ttl());
                    self.fail(what);
                    return;
                }
                // Lost, and the registry names nobody yet: wait for it (or the viewers to go).
                if self.publisher.take().is_some() {
                    info!("stream lost upstream; waiting for the registry");
                    self.state.status.send_replace(PullStatus::Pulling);
                }
                if self.wait_until(now + settings.backoff_max()).await {
                    return;
                }
                continue;
            }
            if delivered_ever {
                // Every candidate backing off: wait for the first to be due, unless the
                // viewers are gone or the node stops first.
                if let Some(at) = self.shared.health.next_retry(&candidates[..1], now) {
                    if self.wait_until(at.min(now + settings.backoff_max())).await {
                        return;
                    }
                    continue;
                }
            }
            let mut errors = Vec::new();
            let mut delivered = false;
            for upstream in &candidates {
                if self.stopping(settings.idle_timeout()) {
                    return;
                }
                match self.attempt(upstream, settings, delivered_ever).await {
                    Ok(SourceEnd::Stop) => return,
                    Ok(SourceEnd::Lost(error)) => {
                        // Start over: the failed upstream now backs off behind the others.
                        self.record_failure(upstream, &error, settings);
                        delivered = true;
                        delivered_ever = true;
                        break;
                    }
                    Err(error) => {
                        self.record_failure(upstream, &error, settings);
                        errors.push(format!("{}: {error}", upstream.url));
                    }
                }
            }
            if delivered {
                continue;
            }
            if !delivered_ever {
                warn!(errors = %errors.join("; "), "no upstream has the stream");
                self.shared
                    .remember_miss(&self.key, Instant::now() + settings.miss_ttl());
                self.fail(format!("no upstream has {}", self.key));
                return;
            }
            // Lost, and nobody has it now: detach so viewers start their republish grace,
            // then keep asking while they wait.
            if self.publisher.take().is_some() {
                info!(errors = %errors.join("; "), "stream lost upstream; retrying");
                self.state.status.send_replace(PullStatus::Pulling);
            }
            let retry = Instant::now() + settings.backoff_initial();
            if self.wait_until(retry).await {
                return;
            }
        }
    }

    /// One upstream: connect, wait for the first frame, then deliver until it stops.
    /// `Err` when it never delivered.
    async fn attempt(
        &mut self,
        upstream: &Upstream,
        settings: &PullConfig,
        switching: bool,
    ) -> Result<SourceEnd, PullError> {
        let started = Instant::now();
        let quic = self.shared.quic.as_deref();
        let shutdown = self.ctx.shutdown.clone();
        let credentials = credentials(
            &self.ctx.config.load(),
            upstream.app_for(&self.key),
            &self.key.name,
        );
        let opened = tokio::select! {
            opened = Source::open(upstream, &self.key, &self.via, &credentials, quic, settings.connect_timeout()) => opened,
            _ = shutdown.cancelled() => return Ok(SourceEnd::Stop),
        };
        let mut source = opened?;
        let first = tokio::select! {
            first = tokio::time::timeout(settings.no_data_timeout(), source.next()) => match first {
                Ok(first) => first?,
                Err(_) => return Err(PullError::Timeout("waiting for the first frame")),
            },
            _ = shutdown.cancelled() => return Ok(SourceEnd::Stop),
        };
        let connect = started.elapsed();
        self.shared
            .health
            .success(&upstream.url, connect, Instant::now());
        let transport = upstream.transport.as_str();
        self.ctx
            .metrics
            .pull_starts
            .get_or_create(&[("transport", transport)])
            .inc();
        match &mut self.publisher {
            Some(publisher) => publisher.restart_timeline(),
            None => {
                let cache = self.ctx.cache_settings();
                match self.ctx.registry.publish(
                    &self.key,
                    cache,
                    false,
                    tokio::time::Instant::now(),
                ) {
                    Ok(publisher) => self.publisher = Some(publisher),
                    Err(error) => {
                        info!(%error, "a local publisher has the stream; pull stops");
                        return Ok(SourceEnd::Stop);
                    }
                }
            }
        }
        {
            let mut progress = self.state.progress.lock();
            if switching {
                progress.switches += 1;
                let reason = self.last_loss.take().unwrap_or("lost");
                self.ctx
                    .metrics
                    .pull_switches
                    .get_or_create(&[("reason", reason)])
                    .inc();
            }
            progress.upstream = Some(upstream.clone());
            progress.since = Some(SystemTime::now());
        }
        info!(upstream = %upstream.url, transport, connect_ms = connect.as_millis() as u64, switching, "pulling");
        self.state.status.send_replace(PullStatus::Live);
        // After a switch, the new upstream joins at its first keyframe.
        let mut splicing = switching && self.saw_video;
        let counter = self
            .ctx
            .metrics
            .pull_bytes
            .get_or_create(&[("transport", transport)])
            .clone();
        let mut next = Some(first);
        let mut changes = self.changes.clone();
        loop {
            let frame = match next.take() {
                Some(p) => p,
                None => tokio::select! {
                    pulled = tokio::time::timeout(settings.no_data_timeout(), source.next()) => match pulled {
                        Ok(Ok(p)) => p,
                        Ok(Err(error)) => return Ok(SourceEnd::Lost(error)),
                        Err(_) => return Ok(SourceEnd::Lost(PullError::Timeout("silent upstream"))),
                    },
                    changed = registry_changed(&mut changes) => {
                        if !changed {
                            changes = None;
                        } else if self.moved_from(upstream) {
                            return Ok(SourceEnd::Lost(PullError::Moved));
                        }
                        continue;
                    }
                    _ = shutdown.cancelled() => return Ok(SourceEnd::Stop),
                },
            };
            if self.stopping(settings.idle_timeout()) {
                return Ok(SourceEnd::Stop);
            }
            if frame.kind == FrameKind::Video {
                self.saw_video = true;
            }
            if splicing && !splice_point(&frame) {
                continue;
            }
            splicing = splicing && frame.kind != FrameKind::Video;
            let len = frame.payload.len() as u64;
            counter.inc_by(len);
            {
                let mut progress = self.state.progress.lock();
                progress.bytes += len;
                progress.frames += 1;
            }
            let Some(publisher) = self.publisher.as_mut() else {
                return Ok(SourceEnd::Stop);
            };
            match publisher.push_frame(frame, tokio::time::Instant::now()) {
                Ok(()) => {}
                Err(sluice_core::stream::IngestError::Displaced) => {
                    info!("a local publisher took the stream over; pull stops");
                    return Ok(SourceEnd::Stop);
                }
                Err(error) => debug!(%error, "pulled frame dropped"),
            }
        }
    }

    fn record_failure(&mut self, upstream: &Upstream, error: &PullError, settings: &PullConfig) {
        let now = Instant::now();
        let label = error.label();
        self.ctx
            .metrics
            .pull_failures
            .get_or_create(&[("reason", label)])
            .inc();
        if error.is_miss() || matches!(error, PullError::Ended | PullError::Moved) {
            self.shared.health.reachable(&upstream.url, now);
        } else {
            let backoff = Backoff {
                initial: settings.backoff_initial(),
                max: settings.backoff_max(),
            };
            self.shared.health.failure(
                &upstream.url,
                error.to_string(),
                backoff,
                now,
                fastrand::f64(),
            );
        }
        if self.publisher.is_some() {
            self.last_loss.get_or_insert(label);
        }
        debug!(upstream = %upstream.url, %error, "upstream attempt failed");
        self.state.progress.lock().last_error = Some(format!("{}: {error}", upstream.url));
    }

    fn fail(&self, reason: String) {
        self.state
            .status
            .send_replace(PullStatus::Failed(reason.into()));
    }

    /// Whether the pull should end: the node stops, or nobody has watched for `idle`.
    fn stopping(&mut self, idle: Duration) -> bool {
        if self.ctx.shutdown.is_cancelled() {
            return true;
        }
        let viewers = match &self.publisher {
            Some(publisher) => publisher.stream().stats.viewers.load(Ordering::Acquire),
            None => self
                .ctx
                .registry
                .get(&self.key)
                .map_or(0, |s| s.stats.viewers.load(Ordering::Acquire)),
        };
        if viewers > 0 {
            self.idle_since = None;
            return false;
        }
        let now = Instant::now();
        let since = *self.idle_since.get_or_insert(now);
        now.saturating_duration_since(since) >= idle
    }

    /// Whether the registry now names another upstream than `current` for this stream.
    fn moved_from(&self, current: &Upstream) -> bool {
        let Some(directory) = self.shared.directory.get() else {
            return false;
        };
        let named = directory.upstreams(&self.key);
        if named.is_empty() || named.iter().any(|u| u.url == current.url) {
            return false;
        }
        // Only for an upstream worth trying: a stale entry naming a node that just failed
        // (backing off) is no reason to leave one that delivers.
        let now = Instant::now();
        named.iter().any(|u| {
            self.shared
                .health
                .next_retry(std::slice::from_ref(u), now)
                .is_none()
        })
    }

    /// Sleeps until `at`, checking for idleness meanwhile; true if the pull should end. A
    /// change in the registry ends the wait early (false: try now).
    async fn wait_until(&mut self, at: Instant) -> bool {
        let idle = self.ctx.config.load().cluster.pull.idle_timeout();
        let mut changes = self.changes.clone();
        if let Some(c) = changes.as_mut() {
            c.mark_unchanged();
        }
        loop {
            if self.stopping(idle) {
                return true;
            }
            let now = Instant::now();
            if now >= at {
                return false;
            }
            let step = (at - now).min(IDLE_CHECK);
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                changed = registry_changed(&mut changes) => {
                    if changed {
                        return false;
                    }
                    changes = None;
                }
                _ = self.ctx.shutdown.cancelled() => return true,
            }
        }
    }
}

/// Resolves when the registry's view changes: true; false once it never will (no registry,
/// or it is gone).
async fn registry_changed(changes: &mut Option<watch::Receiver<u64>>) -> bool {
    match changes {
        Some(c) => c.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Whether a pulled frame may start the stream after a switch: the video keyframe that
/// opens a GOP, or what a decoder needs before it (sequence headers, metadata).
fn splice_point(frame: &Frame) -> bool {
    match frame.kind {
        FrameKind::Script => true,
        FrameKind::Audio => frame.seq_header,
        FrameKind::Video => frame.keyframe || frame.seq_header,
    }
}

/// This node's credentials for an RTMP pull of `app/stream` (see `cluster.pull.credentials`
/// and `cluster.pull.sign_with`): a query, maybe empty.
fn credentials(config: &sluice_core::Config, app: &str, stream: &str) -> String {
    let pull = &config.cluster.pull;
    let mut query = pull.credentials.clone();
    if pull.sign_with.is_empty() {
        return query;
    }
    // Read per pull, so a rotated key file applies to the next pull (the config's validation
    // checked the key was there at load).
    let keys = match sluice_auth::load_signing_keys(&config.auth) {
        Ok(keys) => keys,
        Err(error) => {
            warn!(%error, "no signing keys: this pull goes unsigned");
            return query;
        }
    };
    if let Some(secret) = keys.get(&pull.sign_with) {
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + PULL_SIGNATURE_SECS;
        let signed = sluice_auth::sign(
            &pull.sign_with,
            secret.as_bytes(),
            sluice_auth::Action::Play,
            app,
            stream,
            expires,
            None,
        );
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&signed);
    } else {
        warn!(key_id = %pull.sign_with, "cluster.pull.sign_with names no signing key now: this pull goes unsigned");
    }
    query
}

/// How long a pull's signature is valid: it is checked once, when the pull connects.
const PULL_SIGNATURE_SECS: u64 = 300;

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sluice_media::{CodecId, FrameParts};

    use super::*;

    /// A frame with these flags and a payload that says otherwise: the flags decide.
    fn frame(kind: FrameKind, keyframe: bool, seq_header: bool) -> Frame {
        Frame::from_parts(FrameParts {
            kind,
            dts: 0,
            cts: 0,
            keyframe,
            seq_header,
            disposable: false,
            codec: CodecId::Other,
            payload: Bytes::from_static(&[0xff]),
        })
    }

    #[test]
    fn a_switch_splices_at_headers_and_keyframes_by_their_flags() {
        assert!(splice_point(&frame(FrameKind::Script, false, false)));
        assert!(splice_point(&frame(FrameKind::Video, true, false)));
        assert!(splice_point(&frame(FrameKind::Video, false, true)));
        assert!(splice_point(&frame(FrameKind::Audio, false, true)));
        assert!(!splice_point(&frame(FrameKind::Video, false, false)));
        assert!(!splice_point(&frame(FrameKind::Audio, false, false)));
    }
}
