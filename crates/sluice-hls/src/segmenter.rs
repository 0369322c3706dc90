//! Cuts one stream's frames into GOP-aligned segments made of LL-HLS parts, once per stream.
//!
//! The segmenter owns the stream's [`Window`] (what playlists list) and the cutting rules; a
//! [`PartMuxer`] (fMP4 or MPEG-TS) turns each part's frames into bytes, which are handed out in
//! [`Output::Part`] for the caller to cache and serve. Nothing here reads a clock: the caller
//! passes the wall-clock time a frame is pushed at, for `EXT-X-PROGRAM-DATE-TIME`.
//!
//! Rules:
//! - A video stream's segment starts at a keyframe and ends at the first keyframe once the
//!   segment has lasted the target duration (so it stretches to the GOP). An audio-only
//!   stream's segments are cut by time.
//! - A part is cut right after the frame that brings it to the part target (its estimated
//!   end: that frame's time plus the interval before it), so it is published the moment its
//!   last frame arrives rather than when the next one does. Advertised part durations never
//!   exceed the part target; they telescope, so a segment's parts add up to its real length.
//! - New codec parameters (a different sequence header), the publisher leaving or timestamps
//!   going back start a new segment after a discontinuity; new parameters also a new init.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use sluice_media::{Frame, FrameKind};

use crate::window::{Container, PartInfo, SegmentInfo, Window};

/// What the segmenter needs of a container: one part's bytes at a time.
pub trait PartMuxer: Send {
    /// The bytes of one part holding `frames` (media frames of the tracks the muxer was made
    /// for, in arrival order); `segment_start` when the part begins a segment.
    fn part(&mut self, frames: &[Arc<Frame>], segment_start: bool) -> Bytes;
}

/// A new set of tracks, described for the multivariant playlist and (fMP4) initialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracks {
    /// The init segment for fMP4 (`EXT-X-MAP`); empty for MPEG-TS.
    pub init: Bytes,
    /// RFC 6381 codec strings, comma-separated (`CODECS`).
    pub codecs: String,
    /// Picture size, when there is video and its header tells.
    pub resolution: Option<(u32, u32)>,
}

/// Makes the muxer for a set of tracks from their sequence headers (video, audio), or says
/// why it cannot (an unsupported codec).
pub type MuxerFactory = Box<
    dyn Fn(
            Option<&Frame>,
            Option<&Frame>,
        )
            -> Result<(Box<dyn PartMuxer>, Tracks), Box<dyn std::error::Error + Send + Sync>>
        + Send,
>;

/// How to cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Container of segments and parts.
    pub container: Container,
    /// Minimum segment duration (a segment ends at the first keyframe after it), ms.
    pub target_duration_ms: u32,
    /// LL-HLS part target, ms.
    pub part_target_ms: u32,
    /// Complete segments kept in the window.
    pub window_segments: usize,
    /// The first segment's media sequence number (and, truncated, the first init's id):
    /// a caller restarting a stream's segmenter starts past the old numbers, so a URI never
    /// names two different things.
    pub first_msn: u64,
}

/// What a push produced, for the caller to cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// New tracks: segments from now on need init `id`.
    Tracks {
        /// The init's id (`init-{id}.mp4`).
        id: u32,
        /// Init bytes and description.
        tracks: Tracks,
    },
    /// A part was cut (already listed in the window).
    Part {
        /// Its segment.
        msn: u64,
        /// Its index in the segment.
        index: u32,
        /// Its bytes.
        bytes: Bytes,
    },
    /// A segment left the window; its parts are no longer served.
    Evicted {
        /// The segment.
        msn: u64,
        /// How many parts it had.
        parts: u32,
    },
    /// A set of tracks could not be muxed; their frames are dropped until the headers change.
    Unsupported {
        /// Why.
        reason: String,
    },
}

/// The part being filled.
#[derive(Debug, Default)]
struct OpenPart {
    frames: Vec<Arc<Frame>>,
    /// It holds a keyframe (or, audio-only, any frame).
    independent: bool,
    /// It holds a frame of the track that clocks the cut.
    clocked: bool,
}

/// Cuts a stream; see the module docs.
pub struct Segmenter {
    settings: Settings,
    factory: MuxerFactory,
    window: Window,
    muxer: Option<Box<dyn PartMuxer>>,
    /// The muxer's tracks were made for these sequence headers.
    video_header: Option<Arc<Frame>>,
    audio_header: Option<Arc<Frame>>,
    /// Headers seen since; a difference starts a new init.
    latest_video_header: Option<Arc<Frame>>,
    latest_audio_header: Option<Arc<Frame>>,
    /// The current tracks could not be muxed.
    unsupported: bool,
    /// Whether the tracks have video (the cut is clocked by video, segments by keyframes).
    has_video: bool,
    next_init_id: u32,
    init_id: u32,
    next_msn: u64,
    /// A discontinuity comes before the next segment.
    discontinuity: bool,
    part: OpenPart,
    /// Start of the open segment (dts of its first clocked frame), ms.
    segment_start: Option<u64>,
    /// End of the last cut part as advertised (telescoping durations), ms.
    advertised_end: u64,
    /// The clocked track's last dts and the interval before it, ms.
    last_dts: Option<u64>,
    last_interval: u64,
    /// Wall clock of dts `anchor.1`, ms since the epoch (for PROGRAM-DATE-TIME).
    anchor: Option<(u64, u64)>,
    /// Largest complete segment duration so far, ms.
    longest_segment_ms: u64,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("settings", &self.settings)
            .field("window", &self.window)
            .field("init_id", &self.init_id)
            .field("next_msn", &self.next_msn)
            .finish_non_exhaustive()
    }
}

/// Frame interval assumed before a second frame of the clocked track tells the real one.
const DEFAULT_INTERVAL_MS: u64 = 33;
/// A timestamp this far behind the last one is a new timeline, not jitter.
const BACKWARDS_MS: u64 = 1000;

impl Segmenter {
    /// A segmenter cutting as `settings` say, muxing with what `factory` makes.
    pub fn new(settings: Settings, factory: MuxerFactory) -> Self {
        let part_target_ms = match settings.container {
            Container::Fmp4 => settings.part_target_ms.max(1),
            // Classic HLS: parts are still cut (they are the unit of muxing) but not listed.
            Container::Ts => settings.part_target_ms.max(1),
        };
        Segmenter {
            settings,
            factory,
            window: Window {
                container: settings.container,
                target_duration_s: settings.target_duration_ms.div_ceil(1000).max(1),
                part_target_ms,
                discontinuity_sequence: 0,
                segments: VecDeque::new(),
            },
            muxer: None,
            video_header: None,
            audio_header: None,
            latest_video_header: None,
            latest_audio_header: None,
            unsupported: false,
            has_video: false,
            // Truncation is fine: ids only need to differ from recent ones.
            next_init_id: settings.first_msn as u32,
            init_id: settings.first_msn as u32,
            next_msn: settings.first_msn,
            discontinuity: false,
            part: OpenPart::default(),
            segment_start: None,
            advertised_end: 0,
            last_dts: None,
            last_interval: DEFAULT_INTERVAL_MS,
            anchor: None,
            longest_segment_ms: 0,
        }
    }

    /// What playlists list now.
    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Feeds one frame, pushed at `wall_ms` (ms since the Unix epoch).
    pub fn push(&mut self, frame: &Arc<Frame>, wall_ms: u64, out: &mut Vec<Output>) {
        match frame.kind {
            FrameKind::Script => {}
            _ if frame.seq_header => self.header(frame, out),
            FrameKind::Video | FrameKind::Audio => self.media(frame, wall_ms, out),
        }
    }

    /// The publisher left (or the stream was spliced onto another timeline): the open part
    /// and segment are closed, and the next frames begin a segment after a discontinuity.
    pub fn end(&mut self, out: &mut Vec<Output>) {
        let end = self.last_dts.map(|last| last + self.last_interval);
        self.close_segment(end, out);
        if !self.window.segments.is_empty() {
            self.discontinuity = true;
        }
        self.last_dts = None;
        self.anchor = None;
    }

    fn header(&mut self, frame: &Arc<Frame>, out: &mut Vec<Output>) {
        let slot = match frame.kind {
            FrameKind::Video => &mut self.latest_video_header,
            _ => &mut self.latest_audio_header,
        };
        if slot.as_ref().is_some_and(|h| h.payload == frame.payload) {
            return;
        }
        *slot = Some(frame.clone());
        if self.muxer.is_some() || self.unsupported {
            // New parameters: what was cut so far ends here; the tracks are rebuilt at the
            // next media frame.
            self.end(out);
            self.muxer = None;
            self.unsupported = false;
        }
    }

    /// Makes the muxer for the latest headers, once media comes.
    fn start_tracks(&mut self, out: &mut Vec<Output>) -> bool {
        if self.muxer.is_some() {
            return true;
        }
        if self.unsupported {
            return false;
        }
        let (video, audio) = (
            self.latest_video_header.clone(),
            self.latest_audio_header.clone(),
        );
        match (self.factory)(video.as_deref(), audio.as_deref()) {
            Ok((muxer, tracks)) => {
                self.muxer = Some(muxer);
                self.has_video = video.is_some();
                self.video_header = video;
                self.audio_header = audio;
                self.init_id = self.next_init_id;
                self.next_init_id = self.next_init_id.wrapping_add(1);
                out.push(Output::Tracks {
                    id: self.init_id,
                    tracks,
                });
                true
            }
            Err(e) => {
                self.unsupported = true;
                out.push(Output::Unsupported {
                    reason: e.to_string(),
                });
                false
            }
        }
    }

    fn media(&mut self, frame: &Arc<Frame>, wall_ms: u64, out: &mut Vec<Output>) {
        if !self.start_tracks(out) {
            return;
        }
        let is_video = frame.kind == FrameKind::Video;
        if is_video && self.video_header.is_none() || !is_video && self.audio_header.is_none() {
            // A track the init does not have (its header has not come): left out.
            return;
        }
        let clocked = is_video == self.has_video;
        if clocked
            && let Some(last) = self.last_dts
            && frame.dts + BACKWARDS_MS < last
        {
            self.end(out);
        }
        if self.segment_start.is_none() {
            // Waiting for a segment start: video streams begin at a keyframe, audio before it
            // waits in the part (it may belong with that keyframe).
            if self.has_video && !(is_video && frame.keyframe) {
                if !is_video {
                    self.part.frames.push(frame.clone());
                    // Keep only audio close to where the keyframe will be.
                    let newest = frame.dts;
                    self.part
                        .frames
                        .retain(|f| f.dts + u64::from(self.settings.part_target_ms) >= newest);
                }
                return;
            }
            self.open_segment(frame.dts, wall_ms);
        } else if clocked
            && (if self.has_video { frame.keyframe } else { true })
            && let Some(start) = self.segment_start
            && frame.dts.saturating_sub(start) >= u64::from(self.settings.target_duration_ms)
        {
            // Audio waiting in the open part (no video in it yet) starts the new segment.
            let carried = if self.part.clocked {
                Vec::new()
            } else {
                std::mem::take(&mut self.part.frames)
            };
            self.close_segment(Some(frame.dts), out);
            self.part.frames = carried;
            self.open_segment(frame.dts, wall_ms);
        }
        if clocked {
            if let Some(last) = self.last_dts
                && frame.dts > last
            {
                self.last_interval = frame.dts - last;
            }
            self.last_dts = Some(frame.dts);
            self.part.clocked = true;
            if frame.keyframe || !self.has_video {
                self.part.independent = true;
            }
        }
        self.part.frames.push(frame.clone());
        if clocked {
            let estimated_end = frame.dts + self.last_interval;
            let target = u64::from(self.settings.part_target_ms);
            if estimated_end.saturating_sub(self.advertised_end) + self.last_interval / 2 >= target
            {
                self.cut_part(Some(estimated_end), out);
            }
        }
    }

    fn open_segment(&mut self, dts: u64, wall_ms: u64) {
        let (anchor_wall, anchor_dts) = *self.anchor.get_or_insert((wall_ms, dts));
        let pdt_ms = (anchor_wall + dts).saturating_sub(anchor_dts);
        self.segment_start = Some(dts);
        self.advertised_end = dts;
        self.window.segments.push_back(SegmentInfo {
            msn: self.next_msn,
            init_id: self.init_id,
            discontinuity: std::mem::take(&mut self.discontinuity),
            pdt_ms,
            parts: Vec::new(),
            complete: false,
        });
        self.next_msn += 1;
    }

    /// Cuts the open part, ending at `end` (ms); nothing without clocked frames.
    fn cut_part(&mut self, end: Option<u64>, out: &mut Vec<Output>) {
        if !self.part.clocked {
            return;
        }
        let part = std::mem::take(&mut self.part);
        let Some(segment) = self.window.segments.back_mut() else {
            return;
        };
        let Some(muxer) = self.muxer.as_mut() else {
            return;
        };
        let index = u32::try_from(segment.parts.len()).unwrap_or(u32::MAX);
        let bytes = muxer.part(&part.frames, index == 0);
        if bytes.is_empty() {
            // Nothing the muxer could use (frames it skips): no part; the next one covers
            // the time.
            return;
        }
        let end = end.unwrap_or(self.advertised_end + self.last_interval);
        let target = u64::from(self.settings.part_target_ms);
        let duration = end.saturating_sub(self.advertised_end).min(target);
        self.advertised_end += duration;
        segment.parts.push(PartInfo {
            duration_ms: u32::try_from(duration).unwrap_or(u32::MAX),
            independent: part.independent,
            bytes: bytes.len(),
        });
        out.push(Output::Part {
            msn: segment.msn,
            index,
            bytes,
        });
    }

    /// Closes the open segment (its open part first, ending at `end` when known) and evicts
    /// what leaves the window.
    fn close_segment(&mut self, end: Option<u64>, out: &mut Vec<Output>) {
        if self.segment_start.take().is_none() {
            self.part = OpenPart::default();
            return;
        }
        self.cut_part(end, out);
        self.part = OpenPart::default();
        if let Some(segment) = self.window.segments.back_mut() {
            if segment.parts.is_empty() {
                // Nothing was cut into it: it never existed (its number is reused).
                let discontinuity = segment.discontinuity;
                self.window.segments.pop_back();
                self.next_msn -= 1;
                self.discontinuity |= discontinuity;
            } else {
                segment.complete = true;
                let duration = segment.duration_ms();
                self.longest_segment_ms = self.longest_segment_ms.max(duration);
                // EXTINF rounded to the nearest second must not exceed the target duration.
                let rounded = u32::try_from((self.longest_segment_ms + 500) / 1000)
                    .unwrap_or(u32::MAX)
                    .max(1);
                self.window.target_duration_s = self.window.target_duration_s.max(rounded);
            }
        }
        let complete = self.window.segments.iter().filter(|s| s.complete).count();
        for _ in self.settings.window_segments..complete {
            let Some(gone) = self.window.segments.pop_front() else {
                break;
            };
            if gone.discontinuity {
                self.window.discontinuity_sequence += 1;
            }
            out.push(Output::Evicted {
                msn: gone.msn,
                parts: u32::try_from(gone.parts.len()).unwrap_or(u32::MAX),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sluice_media::{CodecId, FrameParts};

    use super::*;

    /// Writes each part as the dts of its frames, to check what went where.
    struct Recorder;

    impl PartMuxer for Recorder {
        fn part(&mut self, frames: &[Arc<Frame>], segment_start: bool) -> Bytes {
            let mut text = if segment_start { "S" } else { "" }.to_owned();
            for f in frames {
                let kind = if f.kind == FrameKind::Video { 'v' } else { 'a' };
                text.push_str(&format!(" {kind}{}", f.dts));
            }
            Bytes::from(text)
        }
    }

    fn factory() -> MuxerFactory {
        Box::new(|video: Option<&Frame>, audio: Option<&Frame>| {
            let codecs = [video.map(|_| "avc1"), audio.map(|_| "mp4a")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(",");
            Ok((
                Box::new(Recorder) as Box<dyn PartMuxer>,
                Tracks {
                    init: Bytes::from_static(b"init"),
                    codecs,
                    resolution: None,
                },
            ))
        })
    }

    fn frame(
        kind: FrameKind,
        dts: u64,
        keyframe: bool,
        seq_header: bool,
        payload: u8,
    ) -> Arc<Frame> {
        Arc::new(Frame::from_parts(FrameParts {
            kind,
            dts,
            cts: 0,
            keyframe,
            seq_header,
            disposable: false,
            codec: if kind == FrameKind::Video {
                CodecId::Avc
            } else {
                CodecId::Aac
            },
            payload: Bytes::from(vec![payload; 4]),
        }))
    }

    fn settings() -> Settings {
        Settings {
            container: Container::Fmp4,
            target_duration_ms: 1000,
            part_target_ms: 200,
            window_segments: 3,
            first_msn: 0,
        }
    }

    /// 30 fps video with a keyframe every `gop` frames and 43 audio frames/s, for `ms`.
    fn av_stream(ms: u64, gop: u64) -> Vec<Arc<Frame>> {
        let mut frames = vec![
            frame(FrameKind::Video, 0, true, true, 1),
            frame(FrameKind::Audio, 0, false, true, 2),
        ];
        let (mut v, mut a) = (0u64, 0u64);
        loop {
            let vd = v * 1000 / 30;
            let ad = a * 1024 * 1000 / 44100;
            if vd.min(ad) >= ms {
                break;
            }
            if vd <= ad {
                frames.push(frame(FrameKind::Video, vd, v % gop == 0, false, 3));
                v += 1;
            } else {
                frames.push(frame(FrameKind::Audio, ad, false, false, 4));
                a += 1;
            }
        }
        frames
    }

    fn run(seg: &mut Segmenter, frames: &[Arc<Frame>]) -> Vec<Output> {
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            seg.push(f, 1_700_000_000_000 + i as u64, &mut out);
        }
        out
    }

    #[test]
    fn segments_start_at_keyframes_and_stretch_to_the_gop() {
        let mut seg = Segmenter::new(settings(), factory());
        // 1.5 s GOPs, target 1 s: segments are one GOP long.
        let out = run(&mut seg, &av_stream(6100, 45));
        assert!(
            matches!(&out[0], Output::Tracks { id: 0, tracks } if tracks.codecs == "avc1,mp4a")
        );
        let w = seg.window();
        let complete: Vec<_> = w.segments.iter().filter(|s| s.complete).collect();
        assert_eq!(complete.len(), 3, "{w:?}");
        for s in &complete {
            assert_eq!(s.duration_ms(), 1500, "segment {} {:?}", s.msn, s.parts);
            assert!(s.parts[0].independent);
            assert!(s.parts[1..].iter().all(|p| !p.independent));
            assert!(s.parts.iter().all(|p| p.duration_ms <= 200));
            // 85 % of the part target, but for the last part of a segment.
            assert!(
                s.parts[..s.parts.len() - 1]
                    .iter()
                    .all(|p| p.duration_ms >= 170),
                "{:?}",
                s.parts
            );
        }
        assert_eq!(w.target_duration_s, 2);
        // Every part's bytes begin where the previous ended: each video frame exactly once.
        let text: String = out
            .iter()
            .filter_map(|o| match o {
                Output::Part { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            })
            .collect();
        let video: Vec<u64> = text
            .split_whitespace()
            .filter_map(|t| t.strip_prefix('v'))
            .map(|d| d.parse().expect("dts"))
            .collect();
        assert!(video.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(video[0], 0);
        // Segments start with their keyframe's part.
        assert_eq!(
            text.matches('S').count() as u64,
            seg.window().last_part().map_or(0, |(msn, _)| msn + 1)
        );
        // Evicted segments: 0 and 1 (window of 3 complete + the open one).
        let evicted: Vec<u64> = out
            .iter()
            .filter_map(|o| match o {
                Output::Evicted { msn, .. } => Some(*msn),
                _ => None,
            })
            .collect();
        assert_eq!(evicted, vec![0]);
        assert_eq!(seg.window().media_sequence(), 1);
    }

    #[test]
    fn parts_are_cut_at_their_last_frame() {
        let mut seg = Segmenter::new(settings(), factory());
        let mut out = Vec::new();
        let frames = av_stream(1000, 30);
        let mut parts_after = Vec::new();
        for f in &frames {
            let before = out.len();
            seg.push(f, 0, &mut out);
            if out[before..]
                .iter()
                .any(|o| matches!(o, Output::Part { .. }))
            {
                parts_after.push(f.dts);
            }
        }
        // Cut right after video frame 5 (dts 166: ends at ~200), not at frame 6's arrival.
        assert_eq!(parts_after[0], 166, "{parts_after:?}");
    }

    #[test]
    fn new_headers_start_a_new_init_after_a_discontinuity() {
        let mut seg = Segmenter::new(settings(), factory());
        let mut frames = av_stream(2100, 30);
        frames.push(frame(FrameKind::Video, 2100, true, true, 9));
        frames.extend(av_stream(2100, 30).into_iter().skip(2).map(|f| {
            let mut p = f.to_parts();
            p.dts += 2100;
            Arc::new(Frame::from_parts(p))
        }));
        let out = run(&mut seg, &frames);
        let inits: Vec<u32> = out
            .iter()
            .filter_map(|o| match o {
                Output::Tracks { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(inits, vec![0, 1]);
        let w = seg.window();
        let after = w
            .segments
            .iter()
            .find(|s| s.init_id == 1)
            .expect("new init");
        assert!(after.discontinuity);
        assert_eq!(w.segments.iter().filter(|s| s.discontinuity).count(), 1);
        // The same header again changes nothing.
        let again = run(&mut seg, &[frame(FrameKind::Video, 4300, true, true, 9)]);
        assert!(again.is_empty());
    }

    #[test]
    fn the_end_of_a_publish_closes_the_segment_and_marks_the_next() {
        let mut seg = Segmenter::new(settings(), factory());
        run(&mut seg, &av_stream(1500, 30));
        let mut out = Vec::new();
        seg.end(&mut out);
        assert!(seg.window().segments.iter().all(|s| s.complete));
        let first_run = seg.window().segments.len();
        assert_eq!(first_run, 2);
        // The publisher comes back with a new timeline from 0.
        run(&mut seg, &av_stream(500, 30)[2..]);
        let w = seg.window();
        let marked: Vec<bool> = w.segments.iter().map(|s| s.discontinuity).collect();
        assert_eq!(marked, vec![false, false, true]);
        assert!(!w.segments[2].complete && !w.segments[2].parts.is_empty());
        assert_eq!(w.discontinuity_sequence, 0);
    }

    #[test]
    fn audio_only_streams_are_cut_by_time() {
        let mut seg = Segmenter::new(settings(), factory());
        let frames: Vec<_> = av_stream(3000, 30)
            .into_iter()
            .filter(|f| f.kind == FrameKind::Audio)
            .collect();
        run(&mut seg, &frames);
        let w = seg.window();
        let complete: Vec<_> = w.segments.iter().filter(|s| s.complete).collect();
        assert_eq!(complete.len(), 2);
        for s in complete {
            assert!(
                (1000..1100).contains(&s.duration_ms()),
                "{}",
                s.duration_ms()
            );
            assert!(
                s.parts
                    .iter()
                    .all(|p| p.independent && p.duration_ms <= 200)
            );
        }
    }

    #[test]
    fn video_waits_for_a_keyframe() {
        let mut seg = Segmenter::new(settings(), factory());
        let mut frames = av_stream(2000, 30);
        // Drop the first keyframe: the stream starts mid-GOP.
        frames.remove(2);
        let out = run(&mut seg, &frames);
        let first = out
            .iter()
            .find_map(|o| match o {
                Output::Part { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            })
            .expect("a part");
        let first_video = first
            .split_whitespace()
            .find_map(|t| t.strip_prefix('v'))
            .expect("video");
        assert_eq!(first_video, "1000");
    }
}
