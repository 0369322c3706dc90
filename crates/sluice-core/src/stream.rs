//! One live stream: its sequence headers, a ring of recent frames (the GOP cache) and the
//! cursors of its viewers.
//!
//! The ring is the queue (DESIGN principle 2): frames are appended once, as `Arc<Frame>`, and
//! every viewer is a position in the ring. A viewer that falls out of the ring skips to the
//! newest keyframe (with the headers that were current there) instead of being buffered, so
//! per-viewer memory does not depend on the viewer's speed. The lock is short and never held
//! across an `.await`: readers copy out `Arc`s and write after releasing it.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;
use sluice_media::{AudioInfo, Frame, FrameKind, VideoInfo};
use tokio::sync::watch;

use crate::registry::Registry;
use crate::schedule::{Drops, Schedule, StartAt};

/// A stream's identity: the RTMP application and the stream name (stream key without its
/// query string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Application (`live` in `rtmp://host/live/key`).
    pub app: Arc<str>,
    /// Stream name (`key`).
    pub name: Arc<str>,
}

impl StreamKey {
    /// A key from its parts.
    pub fn new(app: &str, name: &str) -> Self {
        StreamKey {
            app: app.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.name)
    }
}

/// Cache settings a stream is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// New viewers start at the newest keyframe already cached (else at the next one).
    pub gop_cache: bool,
    /// GOPs kept, the live one included.
    pub gops: usize,
    /// Byte budget of the ring.
    pub max_bytes: usize,
}

/// A frame count cap on top of the byte budget, so that streams of tiny frames (audio only)
/// cannot grow the ring's bookkeeping without bound.
const MAX_RING_FRAMES: usize = 16_384;

/// The decoder configuration a viewer needs before media: metadata and sequence headers.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// The latest onMetaData script frame.
    pub metadata: Option<Arc<Frame>>,
    /// The latest video sequence header.
    pub video: Option<Arc<Frame>>,
    /// The latest audio sequence header.
    pub audio: Option<Arc<Frame>>,
}

impl Headers {
    fn frames(&self) -> impl Iterator<Item = &Arc<Frame>> {
        [&self.metadata, &self.video, &self.audio]
            .into_iter()
            .flatten()
    }
}

/// A frame in the ring and when it arrived (the scheduler measures lag from it).
#[derive(Debug)]
struct Entry {
    frame: Arc<Frame>,
    arrived: Instant,
}

/// Where a GOP starts in the ring, and the headers in force there.
#[derive(Debug)]
struct GopStart {
    seq: u64,
    headers: Headers,
}

/// Counters and facts about a stream, for the API and metrics.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Payload bytes received from publishers.
    pub bytes_in: AtomicU64,
    /// Frames received from publishers.
    pub frames_in: AtomicU64,
    /// Viewers attached now.
    pub viewers: AtomicUsize,
    /// Of those, players over RTMP (and RTMPS) now, as the viewer driver counts them
    /// (edges pulling over RTMP included).
    pub rtmp_viewers: AtomicUsize,
    /// Of those, players over HTTP-FLV (and HTTPS) now.
    pub http_flv_viewers: AtomicUsize,
    /// Times a viewer was moved forward because it fell out of the ring.
    pub viewer_skips: AtomicU64,
}

/// A snapshot of a stream for the admin API.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Identity.
    pub key: StreamKey,
    /// A publisher is attached now.
    pub publishing: bool,
    /// Video codec details from the latest sequence header.
    pub video: Option<VideoInfo>,
    /// Audio codec details from the latest sequence header.
    pub audio: Option<AudioInfo>,
    /// Incoming bitrate over the last measured second, in bits per second.
    pub bitrate_bps: u64,
    /// How long the current publisher has been publishing.
    pub uptime: Option<Duration>,
    /// Viewers attached now.
    pub viewers: usize,
    /// Players over RTMP now.
    pub rtmp_viewers: usize,
    /// Players over HTTP-FLV now.
    pub http_flv_viewers: usize,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames and bytes in the ring now.
    pub cached_frames: usize,
    /// Bytes in the ring now.
    pub cached_bytes: usize,
}

/// Rolling one-second bitrate measurement.
#[derive(Debug, Default)]
struct BitrateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    last_bps: u64,
}

impl BitrateMeter {
    fn add(&mut self, bytes: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        self.bytes += bytes as u64;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            self.last_bps = self.bytes * 8 * 1000 / elapsed.as_millis().max(1) as u64;
            self.bytes = 0;
            self.window_start = Some(now);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The attached publisher's id.
    publisher: Option<u64>,
    /// When the last publisher left (None while publishing or before the first one).
    unpublished_at: Option<Instant>,
    publish_started: Option<Instant>,
    /// The ring: `frames[0]` has sequence number `first_seq`.
    frames: VecDeque<Entry>,
    first_seq: u64,
    bytes: usize,
    /// Keyframe positions within the ring, oldest first.
    gops: VecDeque<GopStart>,
    headers: Headers,
    has_video: bool,
    /// The newest dts appended, so that a returning publisher continues the timeline.
    last_dts: Option<u64>,
    video_info: Option<VideoInfo>,
    audio_info: Option<AudioInfo>,
    bitrate: BitrateMeter,
}

impl State {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.frames.len() as u64
    }

    fn entry(&self, seq: u64) -> &Entry {
        &self.frames[(seq - self.first_seq) as usize]
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.frames.pop_front() {
            self.bytes -= e.frame.payload.len();
            self.first_seq += 1;
        }
        while self.gops.front().is_some_and(|g| g.seq < self.first_seq) {
            self.gops.pop_front();
        }
    }

    fn evict(&mut self, cache: &CacheSettings) {
        while self.gops.len() > cache.gops.max(1) {
            self.drop_oldest_gop();
        }
        while self.bytes > cache.max_bytes && self.gops.len() > 1 {
            self.drop_oldest_gop();
        }
        while (self.bytes > cache.max_bytes && self.frames.len() > 1)
            || self.frames.len() > MAX_RING_FRAMES
        {
            self.pop_front();
        }
    }

    fn drop_oldest_gop(&mut self) {
        let Some(until) = self.gops.get(1).map(|g| g.seq) else {
            return;
        };
        while self.first_seq < until {
            self.pop_front();
        }
    }
}

/// Why a publisher could not attach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Another publisher holds the key and the config says reject.
    #[error("stream {0} is already being published")]
    AlreadyPublishing(StreamKey),
}

/// Why a publisher's frame was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Another publisher took the stream over.
    #[error("another publisher took over the stream")]
    Displaced,
    /// The payload is not a valid FLV tag body.
    #[error("bad media payload: {0}")]
    BadPayload(sluice_media::FlvError),
}

/// A live stream. Shared as `Arc<Stream>` by its publisher, viewers and the registry.
#[derive(Debug)]
pub struct Stream {
    key: StreamKey,
    cache: CacheSettings,
    state: Mutex<State>,
    /// Bumped on every change viewers may care about; viewers wait on it.
    changed: watch::Sender<u64>,
    /// Counters.
    pub stats: StreamStats,
}

impl Stream {
    pub(crate) fn new(key: StreamKey, cache: CacheSettings) -> Self {
        Stream {
            key,
            cache,
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
            stats: StreamStats::default(),
        }
    }

    /// The stream's key.
    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Whether publisher `id` is the one attached.
    pub(crate) fn is_published_by(&self, id: u64) -> bool {
        self.state.lock().publisher == Some(id)
    }

    /// Whether a publisher is attached.
    pub fn is_publishing(&self) -> bool {
        self.state.lock().publisher.is_some()
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.stats.viewers.load(Ordering::Acquire) == 0 && self.state.lock().publisher.is_none()
    }

    /// Attaches publisher `id`; `takeover` displaces a current one instead of failing.
    pub(crate) fn attach_publisher(
        &self,
        id: u64,
        takeover: bool,
        now: Instant,
    ) -> Result<(), PublishError> {
        {
            let mut s = self.state.lock();
            if s.publisher.is_some() && !takeover {
                return Err(PublishError::AlreadyPublishing(self.key.clone()));
            }
            s.publisher = Some(id);
            s.unpublished_at = None;
            s.publish_started = Some(now);
        }
        self.bump();
        Ok(())
    }

    pub(crate) fn detach_publisher(&self, id: u64, now: Instant) {
        {
            let mut s = self.state.lock();
            if s.publisher != Some(id) {
                return;
            }
            s.publisher = None;
            s.unpublished_at = Some(now);
            s.publish_started = None;
        }
        self.bump();
    }

    /// Appends a frame from publisher `id`.
    pub(crate) fn append(&self, id: u64, frame: Frame, now: Instant) -> Result<(), IngestError> {
        let frame = Arc::new(frame);
        {
            let mut s = self.state.lock();
            if s.publisher != Some(id) {
                return Err(IngestError::Displaced);
            }
            s.bitrate.add(frame.payload.len(), now);
            s.last_dts = Some(s.last_dts.map_or(frame.dts, |d| d.max(frame.dts)));
            let next_seq = s.next_seq();
            match frame.kind {
                FrameKind::Script => s.headers.metadata = Some(frame.clone()),
                FrameKind::Video if frame.seq_header => {
                    s.video_info = sluice_media::codec::video_info(&frame.payload);
                    s.headers.video = Some(frame.clone());
                }
                FrameKind::Audio if frame.seq_header => {
                    s.audio_info = sluice_media::codec::audio_info(&frame.payload);
                    s.headers.audio = Some(frame.clone());
                }
                FrameKind::Audio => {
                    if s.audio_info.is_none() {
                        // Codecs without a sequence header (MP3) describe themselves per tag.
                        s.audio_info = sluice_media::codec::audio_info(&frame.payload);
                    }
                }
                FrameKind::Video => {
                    s.has_video = true;
                    if frame.keyframe {
                        let headers = s.headers.clone();
                        s.gops.push_back(GopStart {
                            seq: next_seq,
                            headers,
                        });
                    }
                }
            }
            s.bytes += frame.payload.len();
            s.frames.push_back(Entry {
                frame: frame.clone(),
                arrived: now,
            });
            s.evict(&self.cache);
        }
        self.stats
            .bytes_in
            .fetch_add(frame.payload.len() as u64, Ordering::Relaxed);
        self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        self.bump();
        Ok(())
    }

    /// A receiver woken on every change of the stream (appends, publishers coming and
    /// going), for a writer that serves many viewers from [`Stream::tail`].
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Up to `max` ring frames from sequence number `from` on, verbatim (no schedule
    /// applied), appended to `out`: for a writer delivering to viewers that stand at
    /// `from` (see [`Cursor::live_position`]). Nothing is returned once the publisher has
    /// left: those viewers' own cursors take over and report it.
    pub fn tail(&self, from: u64, out: &mut Vec<Arc<Frame>>, max: usize) -> Tail {
        let s = self.state.lock();
        if s.publisher.is_none() {
            return Tail::Unpublished;
        }
        if from < s.first_seq {
            return Tail::Evicted;
        }
        let end = s.next_seq().min(from.saturating_add(max as u64));
        let first_arrived = (from < end).then(|| s.entry(from).arrived);
        out.extend((from..end).map(|seq| s.entry(seq).frame.clone()));
        Tail::Frames { first_arrived }
    }

    /// The newest dts appended so far.
    pub(crate) fn last_dts(&self) -> Option<u64> {
        self.state.lock().last_dts
    }

    /// A snapshot for the admin API.
    pub fn info(&self, now: Instant) -> StreamInfo {
        let s = self.state.lock();
        StreamInfo {
            key: self.key.clone(),
            publishing: s.publisher.is_some(),
            video: s.video_info.clone(),
            audio: s.audio_info.clone(),
            bitrate_bps: s.bitrate.last_bps,
            uptime: s.publish_started.map(|t| now.saturating_duration_since(t)),
            viewers: self.stats.viewers.load(Ordering::Relaxed),
            rtmp_viewers: self.stats.rtmp_viewers.load(Ordering::Relaxed),
            http_flv_viewers: self.stats.http_flv_viewers.load(Ordering::Relaxed),
            bytes_in: self.stats.bytes_in.load(Ordering::Relaxed),
            frames_in: self.stats.frames_in.load(Ordering::Relaxed),
            cached_frames: s.frames.len(),
            cached_bytes: s.bytes,
        }
    }
}

/// What a [`Stream::tail`] read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The frames from the position on were appended to the output (maybe none);
    /// `first_arrived` is when the first of them arrived.
    Frames {
        /// Arrival of the oldest frame returned.
        first_arrived: Option<Instant>,
    },
    /// The position has left the ring.
    Evicted,
    /// No publisher is attached.
    Unpublished,
}

/// What a viewer's read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    /// Frames were appended to the output.
    Frames,
    /// Nothing new yet; wait for [`Cursor::changed`].
    Pending,
    /// The stream has never had a publisher (or not since this viewer arrived); wait for one.
    WaitingForPublisher,
    /// The publisher left at this instant; wait for it to come back (for a grace period).
    Unpublished(Instant),
}

/// The headers a viewer was last sent, so a jump re-sends only those that changed.
#[derive(Debug, Default)]
struct SentHeaders {
    metadata: Option<Arc<Frame>>,
    video: Option<Arc<Frame>>,
    audio: Option<Arc<Frame>>,
}

impl SentHeaders {
    fn slot(&mut self, frame: &Frame) -> Option<&mut Option<Arc<Frame>>> {
        match frame.kind {
            FrameKind::Script => Some(&mut self.metadata),
            FrameKind::Video if frame.seq_header => Some(&mut self.video),
            FrameKind::Audio if frame.seq_header => Some(&mut self.audio),
            _ => None,
        }
    }

    /// Notes a frame going out.
    fn record(&mut self, frame: &Arc<Frame>) {
        if let Some(slot) = self.slot(frame) {
            *slot = Some(frame.clone());
        }
    }

    /// Pushes those of `headers` the viewer does not have yet.
    fn send_changed(&mut self, headers: &Headers, out: &mut Vec<Arc<Frame>>) {
        for h in headers.frames() {
            let Some(slot) = self.slot(h) else { continue };
            if !slot.as_ref().is_some_and(|sent| Arc::ptr_eq(sent, h)) {
                *slot = Some(h.clone());
                out.push(h.clone());
            }
        }
    }
}

/// A viewer's position in a stream's ring.
#[derive(Debug)]
pub struct Cursor {
    stream: Arc<Stream>,
    /// To forget the stream when its last viewer leaves.
    registry: Registry,
    changed: watch::Receiver<u64>,
    /// Sequence number of the next frame to read; None until the viewer has started.
    next: Option<u64>,
    /// When the viewer started: frames that arrived earlier (the cached GOP it starts on)
    /// count as arriving then.
    since: Option<Instant>,
    /// Drop video until the next keyframe (started at the live edge, or inter frames dropped).
    need_keyframe: bool,
    /// What was left out since the last [`Cursor::take_drops`].
    drops: Drops,
    sent: SentHeaders,
    /// Ring frames the last read returned, with the state to restore if they are given back.
    returned: VecDeque<Returned>,
    /// Headers given back by [`Cursor::unread`], sent first by the next read.
    resend: Vec<Arc<Frame>>,
    /// The viewer arrived before the stream had frames.
    waited: bool,
}

/// A ring frame a read returned: its position, and whether video was waiting for a
/// keyframe before it.
#[derive(Debug, Clone, Copy)]
struct Returned {
    seq: u64,
    need_keyframe: bool,
}

impl Cursor {
    pub(crate) fn new(stream: Arc<Stream>, registry: Registry) -> Self {
        let changed = stream.changed.subscribe();
        stream.stats.viewers.fetch_add(1, Ordering::AcqRel);
        Cursor {
            stream,
            registry,
            changed,
            next: None,
            since: None,
            need_keyframe: false,
            drops: Drops::default(),
            sent: SentHeaders::default(),
            returned: VecDeque::new(),
            resend: Vec::new(),
            waited: false,
        }
    }

    /// The stream this cursor reads.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// What was left out since the last call.
    pub fn take_drops(&mut self) -> Drops {
        std::mem::take(&mut self.drops)
    }

    /// Gives back `unsent`, the tail of what the last [`read`](Self::read) returned that the
    /// socket did not take, so the next read decides about those frames again with the time
    /// then (jumping over them if they have grown too old). A front end that hands the
    /// kernel only what it can take at once thereby commits to no more than its socket
    /// buffer: the latency budget holds end to end instead of vanishing into a queue.
    pub fn unread(&mut self, unsent: &[Arc<Frame>]) {
        let ring = unsent.len().min(self.returned.len());
        if ring > 0 {
            let first = self.returned[self.returned.len() - ring];
            self.next = Some(first.seq);
            self.need_keyframe = first.need_keyframe;
            self.returned.truncate(self.returned.len() - ring);
        }
        // Headers a start or jump pushed ahead of the ring frames come first in the output.
        let headers = &unsent[..unsent.len() - ring];
        self.resend.extend(headers.iter().cloned());
        // A given-back header must not count as sent (a later jump would skip it).
        for frame in &unsent[unsent.len() - ring..] {
            if let Some(slot) = self.sent.slot(frame)
                && slot.as_ref().is_some_and(|f| Arc::ptr_eq(f, frame))
            {
                *slot = None;
            }
        }
    }

    /// Where this viewer stands if it has read everything in order, with nothing pending
    /// (started, nothing given back, not waiting for a keyframe) while a publisher is
    /// attached: the next frame's sequence number. From there a writer holding the stream's
    /// [`Stream::tail`] can deliver to it until it hands the viewer back with
    /// [`Cursor::resume_at`]. None otherwise.
    pub fn live_position(&self) -> Option<u64> {
        let next = self.next?;
        if !self.resend.is_empty() || self.need_keyframe {
            return None;
        }
        let s = self.stream.state.lock();
        (s.publisher.is_some() && next == s.next_seq()).then_some(next)
    }

    /// Takes over from a writer that delivered the ring frames up to `next` (exclusive)
    /// after [`Cursor::live_position`]; `headers` are the header frames among them, in
    /// order. The next [`Cursor::read`] goes on from `next` and is not waited for.
    pub fn resume_at(&mut self, next: u64, headers: &[Arc<Frame>]) {
        self.next = Some(next);
        self.returned.clear();
        for frame in headers {
            self.sent.record(frame);
        }
        // Frames may have arrived meanwhile that the writer left to this cursor.
        self.changed.mark_changed();
    }

    /// Copies up to `max` frames to send into `out` (as `Arc` clones) and advances, applying
    /// `schedule` (see [`crate::schedule`]) as of `now`. Headers a start or jump needs come
    /// on top of `max`.
    pub fn read(
        &mut self,
        out: &mut Vec<Arc<Frame>>,
        max: usize,
        now: Instant,
        schedule: &Schedule,
    ) -> ReadState {
        // Mark the current version seen before reading, so a change that lands after this
        // read wakes the next `changed()`.
        self.changed.mark_unchanged();
        // A clone so the guard does not borrow `self` (one refcount bump per read).
        let stream = self.stream.clone();
        let cache = stream.cache;
        let s = stream.state.lock();
        let start_len = out.len();
        self.returned.clear();
        out.append(&mut self.resend);
        let mut seq = match self.next {
            Some(next) if next < s.first_seq => {
                // Fell out of the ring (its byte budget): on to the newest keyframe.
                self.drops.ring_jumps += 1;
                self.drops.skipped_frames += s.first_seq - next;
                self.jump(&s, out, s.first_seq, now, schedule.max_latency)
            }
            Some(next) => next,
            None => {
                // Frames that came while this viewer waited on an empty ring are its, even
                // when their publisher has already left again (a short publish can come
                // and go between two wake-ups).
                let came_while_waiting = self.waited && s.first_seq == 0 && !s.frames.is_empty();
                if s.publisher.is_none()
                    && (s.frames.is_empty() || s.unpublished_at.is_some())
                    && !came_while_waiting
                {
                    self.waited |= s.frames.is_empty();
                    return ReadState::WaitingForPublisher;
                }
                if s.frames.is_empty() {
                    self.waited = true;
                    return ReadState::Pending;
                }
                self.since = Some(now);
                if self.waited && s.first_seq == 0 {
                    // Waiting since before the stream's first frame: everything from the
                    // start, headers included, as they are in the ring in order.
                    0
                } else if cache.gop_cache
                    && schedule.start == StartAt::Gop
                    && let Some(gop) = s.gops.back()
                {
                    self.sent.send_changed(&gop.headers, out);
                    gop.seq
                } else {
                    self.sent.send_changed(&s.headers, out);
                    self.need_keyframe = s.has_video;
                    s.next_seq()
                }
            }
        };
        let end = s.next_seq();
        let since = self.since.unwrap_or(now);
        let lag_of = |e: &Entry| now.saturating_duration_since(e.arrived.max(since));
        if let Some(budget) = schedule.max_latency
            && seq < end
            && lag_of(s.entry(seq)) > budget
        {
            self.drops.latency_jumps += 1;
            seq = self.jump(&s, out, seq, now, Some(budget));
        }
        let over = |limit: Option<Duration>, lag: Duration| limit.is_some_and(|l| lag > l);
        let mut taken = 0;
        while seq < end && taken < max {
            let entry = s.entry(seq);
            let frame = &entry.frame;
            let need_before = self.need_keyframe;
            seq += 1;
            if frame.kind == FrameKind::Video && !frame.seq_header {
                let lag = lag_of(entry);
                if !frame.keyframe && !self.need_keyframe && over(schedule.drop_inter_after, lag) {
                    self.need_keyframe = true;
                }
                if self.need_keyframe {
                    if !frame.keyframe {
                        self.drops.inter += 1;
                        continue;
                    }
                    self.need_keyframe = false;
                } else if frame.disposable && over(schedule.drop_disposable_after, lag) {
                    self.drops.disposable += 1;
                    continue;
                }
            }
            self.returned.push_back(Returned {
                seq: seq - 1,
                need_keyframe: need_before,
            });
            self.sent.record(frame);
            out.push(frame.clone());
            taken += 1;
        }
        self.next = Some(seq);
        if out.len() > start_len {
            if s.publisher.is_none() && s.unpublished_at.is_some() {
                // The publisher has left: the next read reports it, so the next `changed()`
                // must not wait for a change that will never come.
                self.changed.mark_changed();
            }
            ReadState::Frames
        } else if let (None, Some(at)) = (s.publisher, s.unpublished_at) {
            ReadState::Unpublished(at)
        } else {
            ReadState::Pending
        }
    }

    /// Moves a viewer that is behind from `from` to the newest keyframe, pushing the headers
    /// in force there that it lacks; to the live edge (video from the next keyframe) if that
    /// keyframe is itself older than `budget`. Returns the new position.
    fn jump(
        &mut self,
        s: &State,
        out: &mut Vec<Arc<Frame>>,
        from: u64,
        now: Instant,
        budget: Option<Duration>,
    ) -> u64 {
        self.stream
            .stats
            .viewer_skips
            .fetch_add(1, Ordering::Relaxed);
        let fresh = |seq: u64| {
            budget.is_none_or(|b| now.saturating_duration_since(s.entry(seq).arrived) <= b)
        };
        let to = match s.gops.back() {
            Some(gop) if gop.seq >= from && fresh(gop.seq) => {
                self.sent.send_changed(&gop.headers, out);
                self.need_keyframe = false;
                gop.seq
            }
            _ => {
                self.sent.send_changed(&s.headers, out);
                self.need_keyframe = s.has_video;
                s.next_seq()
            }
        };
        self.drops.skipped_frames += to.saturating_sub(from);
        to
    }

    /// Resolves when the stream has changed since the last [`Cursor::read`], or at once when
    /// that read has more to report (the publisher left after its last frames).
    pub async fn changed(&mut self) {
        // The sender lives as long as the stream, which this cursor keeps alive.
        let _ = self.changed.changed().await;
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.stream.stats.viewers.fetch_sub(1, Ordering::AcqRel);
        self.registry.forget_if_idle(self.stream.key());
    }
}
