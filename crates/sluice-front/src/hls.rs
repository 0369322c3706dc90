//! HLS and LL-HLS from the node's memory: one segmenter per stream, its parts in a cache,
//! playlists rendered once per change, requests answered (or held, for blocking reloads) on the
//! HTTP listener's connections (see [`crate::http`] for the connection side).
//!
//! A stream is segmented from its first HLS request on: the segmenter task reads the stream
//! like a viewer (a cursor with no latency budget, so it sees every frame; on an edge the
//! same request starts the same single-flight pull as any viewer's), feeds
//! [`sluice_hls::segmenter::Segmenter`], puts each part's bytes in the [`moka`] cache (weighed by
//! bytes, one budget for all streams) and publishes a [`Snapshot`] of the window with its
//! playlists already written. It stops `hls.idle_timeout_ms` after the last request, or when
//! the stream ends.
//!
//! Parts are stored once, appended to a memory file per segment
//! ([`sluice_runtime::io::MemoryFile`]), and every request is answered with `sendfile(2)`:
//! the kernel hands the file's pages to the socket by reference instead of copying our
//! buffer on each send (that copy was 28 % of the CPU serving classic HLS to 1,000 viewers,
//! 15 % for LL-HLS, under perf). A whole segment is one range of its file: fMP4 and TS
//! segments are the concatenation of their parts. Where `memfd_create` is refused (a seccomp
//! filter), parts stay in memory as shared `Bytes`, written with `writev`. URIs carry media sequence numbers that start from the wall clock, so a
//! restarted segmenter never reuses a URI an HTTP cache may still hold.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use parking_lot::Mutex;
use sluice_core::config::HlsContainer;
use sluice_core::topology::Via;
use sluice_core::{ReadState, Schedule, StreamKey};
use sluice_hls::playlist::{self, DirectiveState, Directives, Resource, Skip};
use sluice_hls::segmenter::{Output, Segmenter, Settings, Tracks};
use sluice_hls::window::{Container, Window};
use sluice_runtime::Context;
use sluice_runtime::io::MemoryFile;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};
use tracing::{Instrument, debug, info, info_span, warn};

/// Frames read from the ring at a time.
const READ_BATCH: usize = 256;
/// A connection that asked for a media playlist within this many target durations counts
/// as a viewer.
const SESSION_TARGETS: u32 = 3;
/// How often an idle segmenter looks at the clock (idle timeout, sessions).
const TICK: Duration = Duration::from_secs(1);

/// Why a stream has no HLS (any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Nobody published it in time, or the pull found nothing upstream.
    NotFound,
    /// Its codecs cannot be muxed into the configured container.
    Unsupported,
    /// The publisher left for good, the segmenter idled out, or the node shuts down.
    Ended,
}

/// A stream's HLS state as the segmenter last published it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The segments listed.
    pub window: Window,
    /// The tracks in force: init id and description.
    pub tracks: Option<(u32, Tracks)>,
    /// The media playlist in full.
    pub playlist: Bytes,
    /// The media playlist as a delta update (`_HLS_skip=YES`), when it differs.
    pub delta: Option<Bytes>,
    /// The multivariant playlist.
    pub multivariant: Bytes,
    /// The publisher has left for good: the playlist has `EXT-X-ENDLIST` and nothing more
    /// will come (it is served a little longer, so players finish the last segments).
    pub ended: bool,
    /// Set once the segmenter has stopped.
    pub gone: Option<Gone>,
}

impl Snapshot {
    fn has_media(&self) -> bool {
        self.window.last_part().is_some()
    }
}

/// A piece of a response body: shared bytes, or a range of a memory file sent with
/// `sendfile(2)`. Cached parts are chunks too.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Bytes in memory.
    Memory(Bytes),
    /// `len` bytes of `file` from `offset`.
    File {
        /// The segment's memory file.
        file: Arc<MemoryFile>,
        /// Where the range starts.
        offset: u64,
        /// Its length.
        len: usize,
    },
}

impl Chunk {
    /// The chunk's length.
    pub fn len(&self) -> usize {
        match self {
            Chunk::Memory(bytes) => bytes.len(),
            Chunk::File { len, .. } => *len,
        }
    }

    /// Whether the chunk is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends each part to its segment's memory file (a new file for each segment, closed once
/// the cache lets go of the segment's last part).
#[derive(Debug, Default)]
struct SegmentFiles {
    current: Option<(u64, Arc<MemoryFile>)>,
    /// Memory files cannot be made here: parts stay as bytes.
    unavailable: bool,
}

impl SegmentFiles {
    fn store(&mut self, msn: u64, bytes: Bytes) -> Chunk {
        if self.unavailable {
            return Chunk::Memory(bytes);
        }
        let file = match &self.current {
            Some((current, file)) if *current == msn => file.clone(),
            _ => match MemoryFile::new("sluice-hls") {
                Ok(file) => {
                    let file = Arc::new(file);
                    self.current = Some((msn, file.clone()));
                    file
                }
                Err(error) => {
                    warn!(%error, "hls: no memory files (memfd_create); parts are kept as buffers");
                    self.unavailable = true;
                    return Chunk::Memory(bytes);
                }
            },
        };
        match file.append(&bytes) {
            Ok(offset) => Chunk::File {
                file,
                offset,
                len: bytes.len(),
            },
            Err(error) => {
                warn!(%error, "hls: appending to a memory file failed; the part is kept as a buffer");
                self.current = None;
                Chunk::Memory(bytes)
            }
        }
    }
}

/// Cache key of a part or an init segment of one segmenter run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CacheKey {
    run: u64,
    item: Item,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Item {
    Part { msn: u64, index: u32 },
    Init(u32),
}

/// One stream's segmenter run, as requests see it.
#[derive(Debug)]
struct HlsStream {
    /// Distinguishes runs in the cache.
    run: u64,
    state: watch::Sender<Arc<Snapshot>>,
    /// When a request last came (ms since the service started).
    last_request_ms: AtomicU64,
    /// Connections that asked for the media playlist, and when they last did.
    sessions: Mutex<HashMap<u64, Instant>>,
}

/// HLS for the whole node: the segmenters and their cache.
#[derive(Debug)]
pub struct Hls {
    ctx: Arc<Context>,
    streams: DashMap<StreamKey, Arc<HlsStream>>,
    cache: Cache<CacheKey, Chunk>,
    next_run: AtomicU64,
    epoch: Instant,
}

/// What a request asks of HLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The stream.
    pub key: StreamKey,
    /// `NAME.m3u8` (None) or a file under `NAME/`.
    pub file: Option<String>,
    /// The query string (without `?`).
    pub query: String,
    /// The connection asking, to count viewers.
    pub conn: u64,
    /// The access grant the request is under, if any: the multivariant playlist then
    /// points at the media playlist under it.
    pub grant: Option<String>,
}

/// A body: chunks written one after the other.
pub type Body = Vec<Chunk>;

/// The answer to an HLS request.
#[derive(Debug)]
pub struct Response {
    /// Status line, e.g. `200 OK`.
    pub status: &'static str,
    /// Content type of a 200.
    pub content_type: &'static str,
    /// Cache-Control value.
    pub cache_control: &'static str,
    /// The body.
    pub body: Body,
}

impl Response {
    fn ok(content_type: &'static str, cache_control: &'static str, body: Body) -> Self {
        Response {
            status: "200 OK",
            content_type,
            cache_control,
            body,
        }
    }

    /// A short text answer (an error, or a refusal the caller decides on).
    pub fn error(status: &'static str, text: &'static str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            cache_control: "no-cache",
            body: vec![Chunk::Memory(Bytes::from_static(text.as_bytes()))],
        }
    }

    /// The body's length.
    pub fn len(&self) -> usize {
        self.body.iter().map(Chunk::len).sum()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Long-lived: parts and segments never change under their URI.
const IMMUTABLE: &str = "public, max-age=3600, immutable";
/// A blocking reload's answer names a fixed point of the stream: a CDN may keep it briefly.
const BLOCKING_PLAYLIST: &str = "public, max-age=2";
const LIVE_PLAYLIST: &str = "no-cache";
const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

/// What the resource label of a request is, for metrics.
/// The multivariant playlist with its media playlist's URI (`NAME/media.m3u8`, the last
/// line) under `grant` (`NAME/GRANT/media.m3u8`).
fn under_grant(multivariant: &Bytes, grant: &str) -> Bytes {
    const MEDIA: &[u8] = b"/media.m3u8\n";
    match multivariant.strip_suffix(MEDIA) {
        Some(head) => {
            let mut out = Vec::with_capacity(multivariant.len() + grant.len() + 1);
            out.extend_from_slice(head);
            out.push(b'/');
            out.extend_from_slice(grant.as_bytes());
            out.extend_from_slice(MEDIA);
            Bytes::from(out)
        }
        None => multivariant.clone(),
    }
}

fn resource_label(file: Option<&Resource>) -> &'static str {
    match file {
        None => "multivariant",
        Some(Resource::MediaPlaylist) => "playlist",
        Some(Resource::Init(_)) => "init",
        Some(Resource::Segment(_)) => "segment",
        Some(Resource::Part(..)) => "part",
    }
}

fn status_label(status: &'static str) -> &'static str {
    status.get(..3).unwrap_or(status)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn container(c: HlsContainer) -> Container {
    match c {
        HlsContainer::Fmp4 => Container::Fmp4,
        HlsContainer::Ts => Container::Ts,
    }
}

impl Hls {
    /// HLS for the node of `ctx`, its cache sized from the config in force.
    pub fn new(ctx: Arc<Context>) -> Arc<Self> {
        let cfg = ctx.config.load();
        let cache = Cache::builder()
            .max_capacity(cfg.hls.cache_max_bytes)
            .weigher(|_, chunk: &Chunk| u32::try_from(chunk.len()).unwrap_or(u32::MAX))
            // A live cache wants the newest part, which no frequency sketch has seen yet:
            // least-recently-used admits it.
            .eviction_policy(EvictionPolicy::lru())
            // Evicted explicitly when a segment leaves its window; this only bounds what a
            // segmenter that died without cleaning up could leave behind.
            .time_to_idle(Duration::from_secs(600))
            .build();
        drop(cfg);
        Arc::new(Hls {
            ctx,
            streams: DashMap::new(),
            cache,
            next_run: AtomicU64::new(1),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The HLS state of `key`, for the admin API: `None` when it is not being segmented.
    pub fn info(&self, key: &StreamKey) -> Option<HlsInfo> {
        let stream = self.streams.get(key)?.clone();
        let snapshot = stream.state.borrow().clone();
        let viewers = stream.sessions.lock().len();
        Some(HlsInfo {
            viewers,
            media_sequence: snapshot.window.media_sequence(),
            segments: snapshot.window.segments.len(),
            last_part: snapshot.window.last_part(),
            window_bytes: snapshot.window.bytes(),
            codecs: snapshot
                .tracks
                .as_ref()
                .map(|(_, t)| t.codecs.clone())
                .unwrap_or_default(),
        })
    }

    /// Updates the cache gauge (called when metrics are scraped).
    pub fn update_gauges(&self) {
        self.cache.run_pending_tasks();
        self.ctx
            .metrics
            .hls_cache_bytes
            .set(i64::try_from(self.cache.weighted_size()).unwrap_or(i64::MAX));
    }

    /// Answers one request, waiting where LL-HLS says to (a blocking reload, a hinted part).
    pub async fn respond(self: &Arc<Self>, request: &Request) -> Response {
        let cfg = self.ctx.config.load();
        let c = container(cfg.hls.container);
        let resource = match request.file.as_deref() {
            None => None,
            Some(file) => match playlist::parse_resource(file, c) {
                Some(r) => Some(r),
                None => {
                    return self.count("other", Response::error("404 Not Found", "not found\n"));
                }
            },
        };
        let directives = match resource {
            Some(Resource::MediaPlaylist) => match playlist::parse_query(&request.query) {
                Ok(d) => d,
                Err(_) => {
                    return self.count(
                        "playlist",
                        Response::error("400 Bad Request", "bad LL-HLS query\n"),
                    );
                }
            },
            _ => Directives::default(),
        };
        drop(cfg);
        let response = self.answer(request, resource.as_ref(), &directives).await;
        self.count(resource_label(resource.as_ref()), response)
    }

    fn count(&self, resource: &'static str, response: Response) -> Response {
        self.ctx
            .metrics
            .hls_requests
            .get_or_create(&[
                ("resource", resource),
                ("status", status_label(response.status)),
            ])
            .inc();
        response
    }

    async fn answer(
        self: &Arc<Self>,
        request: &Request,
        resource: Option<&Resource>,
        directives: &Directives,
    ) -> Response {
        let stream = self.stream(&request.key);
        stream
            .last_request_ms
            .store(self.now_ms(), Ordering::Relaxed);
        // The first media: the stream's first part (a publisher that never comes, or a pull
        // that finds nothing, ends the run with `NotFound`).
        let mut state = stream.state.subscribe();
        // Bounded even when a publisher is attached and sends nothing.
        let first_media = {
            let cfg = self.ctx.config.load();
            cfg.streams.wait_for_publisher() + cfg.cluster.pull.timeout()
        };
        let first = timeout(
            first_media,
            state.wait_for(|s| s.has_media() || s.gone.is_some()),
        )
        .await
        .map(|waited| waited.map(|s| s.clone()));
        let snapshot = match first {
            Ok(Ok(s)) if s.has_media() => s,
            Ok(Ok(s)) if s.gone == Some(Gone::Unsupported) => {
                return Response::error(
                    "415 Unsupported Media Type",
                    "the stream's codecs cannot be served in this HLS container\n",
                );
            }
            _ => return Response::error("404 Not Found", "stream not found\n"),
        };
        match resource {
            None => Response::ok(
                PLAYLIST_TYPE,
                LIVE_PLAYLIST,
                vec![Chunk::Memory(match &request.grant {
                    None => snapshot.multivariant.clone(),
                    Some(grant) => under_grant(&snapshot.multivariant, grant),
                })],
            ),
            Some(Resource::MediaPlaylist) => {
                self.note_session(&stream, request.conn);
                self.playlist(&mut state, snapshot, directives).await
            }
            Some(Resource::Init(id)) => match self.cache.get(&CacheKey {
                run: stream.run,
                item: Item::Init(*id),
            }) {
                Some(init) => Response::ok("video/mp4", IMMUTABLE, vec![init]),
                None => Response::error("404 Not Found", "not found\n"),
            },
            Some(Resource::Segment(msn)) => self.segment(&stream, &snapshot, *msn),
            Some(Resource::Part(msn, index)) => {
                self.part(&stream, &mut state, snapshot, *msn, *index).await
            }
        }
    }

    /// The media playlist, once the window holds what the directives ask for.
    async fn playlist(
        &self,
        state: &mut watch::Receiver<Arc<Snapshot>>,
        snapshot: Arc<Snapshot>,
        directives: &Directives,
    ) -> Response {
        let blocking = directives.msn.is_some();
        let state_now = if snapshot.ended {
            DirectiveState::Ready
        } else {
            playlist::directive_state(&snapshot.window, directives)
        };
        let snapshot = match state_now {
            DirectiveState::Ready => snapshot,
            DirectiveState::TooFarAhead => {
                return Response::error("400 Bad Request", "_HLS_msn is too far ahead\n");
            }
            DirectiveState::Gone => snapshot,
            DirectiveState::Wait => {
                let held = self
                    .hold(state, &snapshot, |s| {
                        s.ended
                            || playlist::directive_state(&s.window, directives)
                                != DirectiveState::Wait
                    })
                    .await;
                match held {
                    Ok(s) => s,
                    Err(response) => return response,
                }
            }
        };
        let body = match (directives.skip, &snapshot.delta) {
            (Skip::No, _) | (_, None) => snapshot.playlist.clone(),
            (_, Some(delta)) => delta.clone(),
        };
        let cache_control = if blocking {
            BLOCKING_PLAYLIST
        } else {
            LIVE_PLAYLIST
        };
        Response::ok(PLAYLIST_TYPE, cache_control, vec![Chunk::Memory(body)])
    }

    /// Holds a request until `ready` says the snapshot has what it asks for: at most three
    /// target durations (then 503, as the spec says), and never past the segmenter's end
    /// (then 404).
    async fn hold(
        &self,
        state: &mut watch::Receiver<Arc<Snapshot>>,
        now: &Snapshot,
        mut ready: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Arc<Snapshot>, Response> {
        let limit = Duration::from_secs(3 * u64::from(now.window.target_duration_s.max(1)));
        let started = Instant::now();
        let waited = timeout(limit, state.wait_for(|s| s.gone.is_some() || ready(s))).await;
        self.ctx
            .metrics
            .hls_blocked_wait
            .observe(started.elapsed().as_secs_f64());
        match waited {
            Ok(Ok(s)) if s.gone.is_none() => Ok(s.clone()),
            Ok(_) => Err(Response::error("404 Not Found", "stream ended\n")),
            Err(_) => Err(Response::error(
                "503 Service Unavailable",
                "the requested part did not come in time\n",
            )),
        }
    }

    /// A complete segment: its parts, one after the other.
    fn segment(&self, stream: &HlsStream, snapshot: &Snapshot, msn: u64) -> Response {
        let Some(segment) = snapshot.window.segment(msn).filter(|s| s.complete) else {
            return Response::error("404 Not Found", "not found\n");
        };
        let mut body = Vec::with_capacity(segment.parts.len());
        for index in 0..segment.parts.len() {
            let key = CacheKey {
                run: stream.run,
                item: Item::Part {
                    msn,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                },
            };
            match (self.cache.get(&key), body.last_mut()) {
                // Parts follow each other in their segment's file: one range for all.
                (
                    Some(Chunk::File { file, offset, len }),
                    Some(Chunk::File {
                        file: last,
                        offset: start,
                        len: so_far,
                    }),
                ) if Arc::ptr_eq(&file, last) && *start + *so_far as u64 == offset => {
                    *so_far += len;
                }
                (Some(chunk), _) => body.push(chunk),
                (None, _) => return Response::error("404 Not Found", "not found\n"),
            }
        }
        let content_type = match snapshot.window.container {
            Container::Fmp4 => "video/mp4",
            Container::Ts => "video/mp2t",
        };
        Response::ok(content_type, IMMUTABLE, body)
    }

    /// A part: at once when it exists; held when it is the next one to be cut (the preload
    /// hint), as LL-HLS clients fetch it ahead.
    async fn part(
        &self,
        stream: &HlsStream,
        state: &mut watch::Receiver<Arc<Snapshot>>,
        snapshot: Arc<Snapshot>,
        msn: u64,
        index: u32,
    ) -> Response {
        match part_fate(&snapshot, msn, index) {
            Fate::Listed => {}
            Fate::Never => return Response::error("404 Not Found", "not found\n"),
            Fate::Coming => {
                let held = self
                    .hold(state, &snapshot, |s| {
                        part_fate(s, msn, index) != Fate::Coming
                    })
                    .await;
                match held {
                    Ok(s) if part_fate(&s, msn, index) == Fate::Listed => {}
                    Ok(_) => return Response::error("404 Not Found", "not found\n"),
                    Err(response) => return response,
                }
            }
        }
        match self.cache.get(&CacheKey {
            run: stream.run,
            item: Item::Part { msn, index },
        }) {
            Some(chunk) => {
                let content_type = match snapshot.window.container {
                    Container::Fmp4 => "video/mp4",
                    Container::Ts => "video/mp2t",
                };
                Response::ok(content_type, IMMUTABLE, vec![chunk])
            }
            None => Response::error("404 Not Found", "not found\n"),
        }
    }

    fn note_session(&self, stream: &HlsStream, conn: u64) {
        if stream
            .sessions
            .lock()
            .insert(conn, Instant::now())
            .is_none()
        {
            self.ctx.metrics.hls_viewers.inc();
        }
    }

    /// The stream's segmenter run, started if there is none.
    fn stream(self: &Arc<Self>, key: &StreamKey) -> Arc<HlsStream> {
        let existing = self.streams.get(key).map(|s| s.clone());
        if let Some(stream) = existing {
            let ended = stream.state.borrow().ended;
            let republished = || {
                self.ctx
                    .registry
                    .get(key)
                    .is_some_and(|s| s.is_publishing())
            };
            if !ended || !republished() {
                return stream;
            }
            // A new publisher after the end: a new run (the old one lingers, then goes).
            self.streams.remove_if(key, |_, s| Arc::ptr_eq(s, &stream));
        }
        let mut started = false;
        let stream = self
            .streams
            .entry(key.clone())
            .or_insert_with(|| {
                started = true;
                Arc::new(HlsStream {
                    run: self.next_run.fetch_add(1, Ordering::Relaxed),
                    state: watch::Sender::new(Arc::new(Snapshot::default())),
                    last_request_ms: AtomicU64::new(self.now_ms()),
                    sessions: Mutex::new(HashMap::new()),
                })
            })
            .value()
            .clone();
        if started {
            let hls = self.clone();
            let key = key.clone();
            let run = stream.clone();
            let span = info_span!("hls", stream = %key, run = stream.run);
            self.ctx
                .tracker
                .spawn(async move { hls.segment_stream(key, run).await }.instrument(span));
        }
        stream
    }

    /// The segmenter task of one run; see the module docs.
    async fn segment_stream(self: Arc<Self>, key: StreamKey, stream: Arc<HlsStream>) {
        self.ctx.metrics.hls_segmenters.inc();
        let gone = self.run_segmenter(&key, &stream).await;
        self.ctx.metrics.hls_segmenters.dec();
        debug!(?gone, "hls segmenter stopped");
        // Requests from now on start a new run.
        self.streams.remove_if(&key, |_, s| Arc::ptr_eq(s, &stream));
        let left = {
            let mut sessions = stream.sessions.lock();
            let n = sessions.len();
            sessions.clear();
            n
        };
        self.ctx
            .metrics
            .hls_viewers
            .dec_by(i64::try_from(left).unwrap_or(0));
        let snapshot = stream.state.borrow().clone();
        self.forget(stream.run, &snapshot);
        stream.state.send_modify(|s| {
            let mut ended = (**s).clone();
            ended.gone = Some(gone);
            *s = Arc::new(ended);
        });
    }

    fn forget(&self, run: u64, snapshot: &Snapshot) {
        for segment in &snapshot.window.segments {
            for index in 0..segment.parts.len() {
                self.cache.invalidate(&CacheKey {
                    run,
                    item: Item::Part {
                        msn: segment.msn,
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                    },
                });
            }
        }
        if let Some((id, _)) = &snapshot.tracks {
            self.cache.invalidate(&CacheKey {
                run,
                item: Item::Init(*id),
            });
        }
    }

    async fn run_segmenter(&self, key: &StreamKey, stream: &HlsStream) -> Gone {
        let cfg = self.ctx.config.load_full();
        let settings = Settings {
            container: container(cfg.hls.container),
            target_duration_ms: cfg.hls.target_duration_ms,
            part_target_ms: cfg.hls.part_target_ms,
            window_segments: cfg.hls.window_segments,
            // Numbers from the wall clock (tenths of a second): a later run never reuses a
            // URI of an earlier one.
            first_msn: unix_ms() / 100,
        };
        let idle = cfg.hls.idle_timeout();
        let grace = cfg.streams.republish_grace();
        let (mut cursor, mut pull) = self.ctx.watch(key, &Via::default());
        let wait = pull
            .as_ref()
            .map_or(cfg.streams.wait_for_publisher(), |p| p.wait);
        drop(cfg);
        let mut segmenter = Segmenter::new(settings, sluice_hls::mux::factory(settings.container));
        // Every frame, none dropped: the segments are for every viewer.
        let schedule = Schedule::default();
        let since = Instant::now();
        let mut started = false;
        let mut frames = Vec::with_capacity(READ_BATCH);
        let mut out = Vec::new();
        let mut tracks: Option<(u32, Tracks)> = None;
        let mut files = SegmentFiles::default();
        let mut next_prune = since;
        let shutdown = self.ctx.shutdown.clone();
        loop {
            let now = Instant::now();
            let state = cursor.read(&mut frames, READ_BATCH, now, &schedule);
            if cursor.take_drops().ring_jumps > 0 {
                // Fell out of the ring (the segmenter could not keep up): a new timeline.
                segmenter.end(&mut out);
            }
            let wall = unix_ms();
            for frame in frames.drain(..) {
                segmenter.push(&frame, wall, &mut out);
            }
            match state {
                ReadState::Frames | ReadState::Pending => {}
                ReadState::WaitingForPublisher => {
                    if !started && now >= since + wait {
                        info!("hls: no publisher");
                        return Gone::NotFound;
                    }
                }
                ReadState::Unpublished(at) => {
                    segmenter.end(&mut out);
                    if now >= at + grace {
                        if !started {
                            return Gone::Ended;
                        }
                        self.apply(stream.run, &mut out, &mut tracks, &mut files);
                        self.publish(key, stream, &segmenter, &tracks, true);
                        // The stream is forgotten; players finish the last segments from
                        // the ended playlist, and a new publisher starts a new run.
                        drop(cursor);
                        let linger = Duration::from_secs(
                            3 * u64::from(segmenter.window().target_duration_s),
                        );
                        tokio::select! {
                            _ = sleep(linger) => {}
                            _ = shutdown.cancelled() => {}
                        }
                        return Gone::Ended;
                    }
                }
            }
            if !started && let Some(reason) = pull.as_ref().and_then(|p| p.failure()) {
                info!(%reason, "hls: stream not found upstream");
                return Gone::NotFound;
            }
            if !out.is_empty() {
                let unsupported = self.apply(stream.run, &mut out, &mut tracks, &mut files);
                if unsupported && tracks.is_none() {
                    return Gone::Unsupported;
                }
                started |= segmenter.window().last_part().is_some();
                self.publish(key, stream, &segmenter, &tracks, false);
            }
            if started {
                // Only a wait for the first frames needs the pull's status.
                pull = None;
            }
            let last = Duration::from_millis(stream.last_request_ms.load(Ordering::Relaxed));
            if self.epoch.elapsed().saturating_sub(last) > idle {
                return Gone::Ended;
            }
            if now >= next_prune {
                self.prune_sessions(stream, segmenter.window().target_duration_s);
                next_prune = now + TICK;
            }
            let pull_changed = async {
                match pull.as_mut() {
                    Some(p) => p.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cursor.changed() => {}
                _ = pull_changed => {}
                _ = sleep(TICK) => {}
                _ = shutdown.cancelled() => return Gone::Ended,
            }
        }
    }

    /// Caches what the segmenter produced; whether a set of tracks was refused.
    fn apply(
        &self,
        run: u64,
        out: &mut Vec<Output>,
        tracks: &mut Option<(u32, Tracks)>,
        files: &mut SegmentFiles,
    ) -> bool {
        let mut unsupported = false;
        for output in out.drain(..) {
            match output {
                Output::Tracks { id, tracks: t } => {
                    if !t.init.is_empty() {
                        self.cache.insert(
                            CacheKey {
                                run,
                                item: Item::Init(id),
                            },
                            Chunk::Memory(t.init.clone()),
                        );
                    }
                    info!(codecs = %t.codecs, init = id, "hls tracks");
                    *tracks = Some((id, t));
                }
                Output::Part { msn, index, bytes } => {
                    self.ctx.metrics.hls_parts.inc();
                    self.cache.insert(
                        CacheKey {
                            run,
                            item: Item::Part { msn, index },
                        },
                        files.store(msn, bytes),
                    );
                }
                Output::Evicted { msn, parts } => {
                    for index in 0..parts {
                        self.cache.invalidate(&CacheKey {
                            run,
                            item: Item::Part { msn, index },
                        });
                    }
                }
                Output::Unsupported { reason } => {
                    warn!(%reason, "hls: the stream's codecs cannot be segmented");
                    *tracks = None;
                    unsupported = true;
                }
            }
        }
        unsupported
    }

    /// Renders the playlists and publishes the new snapshot.
    fn publish(
        &self,
        key: &StreamKey,
        stream: &HlsStream,
        segmenter: &Segmenter,
        tracks: &Option<(u32, Tracks)>,
        ended: bool,
    ) {
        let window = segmenter.window().clone();
        let mut text = String::with_capacity(2048);
        playlist::media_playlist(&window, Skip::No, &mut text);
        let (playlist, delta) = if ended {
            // Nothing comes after the last segment: no hint of a next part.
            let mut last = String::with_capacity(text.len() + 16);
            for line in text
                .lines()
                .filter(|l| !l.starts_with("#EXT-X-PRELOAD-HINT"))
            {
                last.push_str(line);
                last.push('\n');
            }
            last.push_str("#EXT-X-ENDLIST\n");
            (Bytes::from(last), None)
        } else {
            let full = Bytes::from(std::mem::take(&mut text));
            playlist::media_playlist(&window, Skip::Yes, &mut text);
            let delta = (text.as_bytes() != &full[..]).then(|| Bytes::from(text));
            (full, delta)
        };
        let mut multivariant = String::with_capacity(256);
        if let Some((_, t)) = tracks {
            let bitrate = self
                .ctx
                .registry
                .get(key)
                .map_or(0, |s| s.info(Instant::now()).bitrate_bps);
            let media_uri = format!("{}/media.m3u8", crate::player::url_segment(&key.name));
            playlist::multivariant(
                &media_uri,
                bitrate,
                &t.codecs,
                t.resolution,
                &mut multivariant,
            );
        }
        let snapshot = Snapshot {
            window,
            tracks: tracks.clone(),
            playlist,
            delta,
            multivariant: Bytes::from(multivariant),
            ended,
            gone: None,
        };
        stream.state.send_replace(Arc::new(snapshot));
    }

    fn prune_sessions(&self, stream: &HlsStream, target_duration_s: u32) {
        let horizon = Duration::from_secs(u64::from(SESSION_TARGETS * target_duration_s.max(1)));
        let now = Instant::now();
        let mut sessions = stream.sessions.lock();
        let before = sessions.len();
        sessions.retain(|_, last| now.saturating_duration_since(*last) <= horizon);
        let gone = before - sessions.len();
        drop(sessions);
        if gone > 0 {
            self.ctx
                .metrics
                .hls_viewers
                .dec_by(i64::try_from(gone).unwrap_or(0));
        }
    }
}

/// Whether a part is listed, will be (it is the next to be cut: the preload hint's target,
/// which LL-HLS clients fetch ahead), or never will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Listed,
    Coming,
    Never,
}

fn part_fate(snapshot: &Snapshot, msn: u64, index: u32) -> Fate {
    let window = &snapshot.window;
    if let Some(segment) = window.segment(msn) {
        let cut = segment.parts.len();
        return match index as usize {
            i if i < cut => Fate::Listed,
            i if i == cut && !segment.complete && !snapshot.ended => Fate::Coming,
            _ => Fate::Never,
        };
    }
    // The segment after the last one, before its first part.
    match window.segments.back() {
        Some(last) if last.complete && msn == last.msn + 1 && index == 0 && !snapshot.ended => {
            Fate::Coming
        }
        _ => Fate::Never,
    }
}

/// What `/api/streams` shows of a stream's HLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HlsInfo {
    /// Connections that asked for the media playlist recently.
    pub viewers: usize,
    /// First listed segment.
    pub media_sequence: u64,
    /// Segments listed.
    pub segments: usize,
    /// The newest part (msn, index).
    pub last_part: Option<(u64, u32)>,
    /// Bytes of the listed parts.
    pub window_bytes: usize,
    /// CODECS of the tracks.
    pub codecs: String,
}
