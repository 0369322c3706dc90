//! The registry of live streams, keyed by app/stream: who publishes, who watches, and when a
//! stream is forgotten (no publisher and no viewer).
//!
//! DashMap guards are only held inside these synchronous methods, never across an `.await`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use sluice_media::time::TimestampExtender;
use sluice_media::{Frame, FrameKind};

use crate::stream::{CacheSettings, Cursor, IngestError, PublishError, Stream, StreamKey};

/// All streams of this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    streams: DashMap<StreamKey, Arc<Stream>>,
    next_publisher_id: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            inner: Arc::new(Inner {
                streams: DashMap::new(),
                next_publisher_id: AtomicU64::new(1),
            }),
        }
    }

    /// Attaches a publisher to `key`, creating the stream if needed. With `takeover`, a current
    /// publisher is displaced (its next frame fails with [`IngestError::Displaced`]).
    pub fn publish(
        &self,
        key: &StreamKey,
        cache: CacheSettings,
        takeover: bool,
        now: Instant,
    ) -> Result<Publisher, PublishError> {
        let id = self.inner.next_publisher_id.fetch_add(1, Ordering::Relaxed);
        // Attach while holding the map entry, so the stream cannot be forgotten in between.
        let stream = match self.inner.streams.entry(key.clone()) {
            dashmap::Entry::Occupied(e) => {
                e.get().attach_publisher(id, takeover, now)?;
                e.get().clone()
            }
            dashmap::Entry::Vacant(e) => {
                let stream = Arc::new(Stream::new(key.clone(), cache));
                stream.attach_publisher(id, takeover, now)?;
                e.insert(stream.clone());
                stream
            }
        };
        let rebase_from = stream.last_dts();
        Ok(Publisher {
            registry: self.clone(),
            stream,
            id,
            extender: TimestampExtender::default(),
            rebase_from,
            offset: None,
        })
    }

    /// A cursor on `key`, creating the stream (without publisher) if it does not exist, so a
    /// viewer may wait for a publisher.
    pub fn subscribe(&self, key: &StreamKey, cache: CacheSettings) -> Cursor {
        // The cursor is registered inside the map entry, so the stream cannot be forgotten
        // between lookup and registration.
        match self.inner.streams.entry(key.clone()) {
            dashmap::Entry::Occupied(e) => Cursor::new(e.get().clone(), self.clone()),
            dashmap::Entry::Vacant(e) => {
                let stream = Arc::new(Stream::new(key.clone(), cache));
                e.insert(stream.clone());
                Cursor::new(stream, self.clone())
            }
        }
    }

    /// The stream under `key`, if any.
    pub fn get(&self, key: &StreamKey) -> Option<Arc<Stream>> {
        self.inner.streams.get(key).map(|s| s.clone())
    }

    /// All streams, sorted by key.
    pub fn streams(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self
            .inner
            .streams
            .iter()
            .map(|e| e.value().clone())
            .collect();
        v.sort_by(|a, b| a.key().cmp(b.key()));
        v
    }

    /// Streams known now.
    pub fn len(&self) -> usize {
        self.inner.streams.len()
    }

    /// No streams known.
    pub fn is_empty(&self) -> bool {
        self.inner.streams.is_empty()
    }

    /// Forgets `key` if nobody publishes or watches it.
    pub(crate) fn forget_if_idle(&self, key: &StreamKey) {
        self.inner.streams.remove_if(key, |_, s| s.is_idle());
    }
}

/// A publisher's handle: parses incoming media into frames on the stream's timeline and
/// detaches (leaving viewers attached for the grace period) when dropped.
#[derive(Debug)]
pub struct Publisher {
    registry: Registry,
    stream: Arc<Stream>,
    id: u64,
    extender: TimestampExtender,
    /// The stream's newest dts when this publisher attached: a returning publisher's
    /// timestamps are rebased to continue after it, so viewers see one monotonic timeline.
    rebase_from: Option<u64>,
    offset: Option<i64>,
}

impl Publisher {
    /// The stream published to.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// Resolves once another publisher has taken the stream over (`publish_conflict =
    /// "takeover"`), so an idle displaced connection is closed at once rather than at its
    /// next frame.
    pub async fn displaced(&self) {
        let mut changes = self.stream.subscribe_changes();
        while self.stream.is_published_by(self.id) {
            if changes.changed().await.is_err() {
                // The stream is gone; so is any rival.
                return std::future::pending().await;
            }
        }
    }

    /// Starts a new source timeline (an upstream switch): the next timestamps are rebased to
    /// continue just after the stream's newest frame, as a returning publisher's are, so
    /// viewers see one monotonic timeline across the switch.
    pub fn restart_timeline(&mut self) {
        self.extender = TimestampExtender::default();
        self.rebase_from = self.stream.last_dts();
        self.offset = None;
    }

    /// The stream-timeline dts of a frame with RTMP `timestamp` (unwrapped to 64 bits, then
    /// [rebased](Self::rebase)).
    fn dts(&mut self, timestamp: u32, coded: bool) -> u64 {
        let ext = self.extender.extend(timestamp);
        self.rebase(ext, coded)
    }

    /// The stream-timeline dts of a frame at `source_dts` on its source's 64-bit timeline.
    /// When continuing another source's timeline, the offset is fixed by the first coded
    /// frame (`coded`): sequence headers and metadata often come first with timestamp 0 (an
    /// origin starting a viewer at its cached GOP does so), and fixing it there would push
    /// the media ahead by the GOP's own timestamp. Until then they take the provisional
    /// offset (just after the old timeline).
    fn rebase(&mut self, source_dts: u64, coded: bool) -> u64 {
        let ext = source_dts as i64;
        let offset = match (self.offset, self.rebase_from) {
            (Some(offset), _) => offset,
            (None, None) => *self.offset.insert(0),
            (None, Some(last)) => {
                let offset = last as i64 + 1 - ext;
                if coded {
                    self.offset = Some(offset);
                }
                offset
            }
        };
        (ext + offset).max(0) as u64
    }

    /// Ingests an RTMP audio or video message body (= FLV tag body) with its 32-bit timestamp.
    pub fn push_media(
        &mut self,
        kind: FrameKind,
        timestamp: u32,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), IngestError> {
        let mut frame = Frame::parse(kind, 0, payload).map_err(IngestError::BadPayload)?;
        frame.dts = self.dts(timestamp, !frame.seq_header);
        self.stream.append(self.id, frame, now)
    }

    /// Ingests a frame already built (parsed once where it came from: an origin pull),
    /// whose `dts` is on its source's 64-bit timeline (unwrapped already); it is rebased
    /// onto the stream's timeline as [`push_media`](Self::push_media)'s are.
    pub fn push_frame(&mut self, mut frame: Frame, now: Instant) -> Result<(), IngestError> {
        let coded = frame.kind != FrameKind::Script && !frame.seq_header;
        frame.dts = self.rebase(frame.dts, coded);
        self.stream.append(self.id, frame, now)
    }

    /// Ingests an onMetaData script-tag body.
    pub fn push_metadata(
        &mut self,
        timestamp: u32,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), IngestError> {
        let dts = self.dts(timestamp, false);
        self.stream
            .append(self.id, Frame::script(dts, payload), now)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stream.detach_publisher(self.id, Instant::now());
        self.registry.forget_if_idle(self.stream.key());
    }
}
