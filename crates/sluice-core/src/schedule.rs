//! Frame-level scheduling policy: what one application's viewers get when they fall behind,
//! where a new viewer starts, and how its writes are batched. Read from `[schedule]` in the
//! config (a default and per-application overrides) and applied by [`Cursor::read`] and the
//! front ends on every read, so a reload changes it for connected viewers.
//!
//! A viewer's lag is how long ago its next frame arrived (frames of the cached GOP a viewer
//! started on count from its start, so the start burst is not "late"). With lag above:
//! - `drop_disposable_after`: disposable video frames (non-reference, which nothing else
//!   decodes from) are dropped;
//! - `drop_inter_after`: video inter frames are dropped until the next keyframe;
//! - `max_latency`: the viewer jumps to the newest keyframe in the ring, with the metadata
//!   and sequence headers in force there if they differ from what it has; if even that
//!   keyframe is over budget (a GOP longer than the budget), to the live edge, video resuming
//!   at the next keyframe.
//!
//! Audio is never dropped on its own: it is small, and a gap is heard where a dropped video
//! frame is not seen. It is skipped only by a jump, together with the video before the jump
//! target, so the two stay in step.
//!
//! [`Cursor::read`]: crate::stream::Cursor::read

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a new viewer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// At the newest cached keyframe: a picture at once, up to a GOP behind live.
    Gop,
    /// At the live edge: audio at once, video from the next keyframe; the lowest latency.
    Live,
}

/// One application's resolved scheduling settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Latency budget; `None` never jumps.
    pub max_latency: Option<Duration>,
    /// Lag above which disposable video frames are dropped.
    pub drop_disposable_after: Option<Duration>,
    /// Lag above which video inter frames are dropped until the next keyframe.
    pub drop_inter_after: Option<Duration>,
    /// Where new viewers start.
    pub start: StartAt,
    /// Frames are held this long after the first one of a batch, then written together;
    /// zero writes each as soon as it arrives.
    pub merge_write: Duration,
    /// A batch is written early once it holds this many bytes (0: no byte trigger).
    pub merge_write_bytes: usize,
    /// TCP_NODELAY on viewer sockets.
    pub tcp_nodelay: bool,
    /// SO_SNDBUF for viewer sockets (0: the kernel's autotuning).
    pub send_buffer_bytes: usize,
    /// TCP_NOTSENT_LOWAT for viewer sockets (0: the kernel's default).
    pub notsent_lowat_bytes: u32,
}

impl Default for Schedule {
    fn default() -> Self {
        ScheduleSettings::default().resolve()
    }
}

/// `[schedule.default]` and, key by key, each `[schedule.apps.NAME]` override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Latency budget in ms (0: none).
    pub max_latency_ms: u64,
    /// Drop disposable video frames above this lag, in ms (0: never).
    pub drop_disposable_after_ms: u64,
    /// Drop video inter frames until the next keyframe above this lag, in ms (0: never).
    pub drop_inter_after_ms: u64,
    /// Where new viewers start.
    pub start: StartAt,
    /// Write batching window in ms (0: each frame at once).
    pub merge_write_ms: u64,
    /// Write a batch early at this many bytes (0: only the window).
    pub merge_write_bytes: usize,
    /// TCP_NODELAY on viewer sockets.
    pub tcp_nodelay: bool,
    /// SO_SNDBUF for viewer sockets (0: kernel autotuning).
    pub send_buffer_bytes: usize,
    /// TCP_NOTSENT_LOWAT for viewer sockets (0: kernel default).
    pub notsent_lowat_bytes: u32,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        ScheduleSettings {
            max_latency_ms: 0,
            drop_disposable_after_ms: 0,
            drop_inter_after_ms: 0,
            start: StartAt::Gop,
            merge_write_ms: 0,
            merge_write_bytes: 0,
            tcp_nodelay: true,
            send_buffer_bytes: 0,
            notsent_lowat_bytes: 65536,
        }
    }
}

impl ScheduleSettings {
    /// The settings as the policy uses them.
    pub fn resolve(&self) -> Schedule {
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        Schedule {
            max_latency: ms(self.max_latency_ms),
            drop_disposable_after: ms(self.drop_disposable_after_ms),
            drop_inter_after: ms(self.drop_inter_after_ms),
            start: self.start,
            merge_write: Duration::from_millis(self.merge_write_ms),
            merge_write_bytes: self.merge_write_bytes,
            tcp_nodelay: self.tcp_nodelay,
            send_buffer_bytes: self.send_buffer_bytes,
            notsent_lowat_bytes: self.notsent_lowat_bytes,
        }
    }
}

/// What a viewer's cursor left out, by reason, since it was last asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Jumps forward because the next frame was older than the latency budget.
    pub latency_jumps: u64,
    /// Jumps forward because the viewer fell out of the ring (the cache's byte budget).
    pub ring_jumps: u64,
    /// Frames passed over by jumps.
    pub skipped_frames: u64,
    /// Disposable video frames dropped.
    pub disposable: u64,
    /// Video inter frames dropped while waiting for a keyframe.
    pub inter: u64,
}

impl Drops {
    /// Whether nothing was dropped.
    pub fn is_empty(&self) -> bool {
        *self == Drops::default()
    }
}
