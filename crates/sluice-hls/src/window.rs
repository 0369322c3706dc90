//! What a media playlist lists: the segments in the window, each with its parts. This is the
//! model the segmenter keeps and the playlist writer reads; the media bytes are not here (the
//! server caches them under [`PartId`]/[`SegmentId`]-like keys of its own).

use std::collections::VecDeque;

/// The container media is muxed into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Container {
    /// fMP4/CMAF: an init segment, then moof+mdat fragments; LL-HLS parts.
    #[default]
    Fmp4,
    /// MPEG-TS segments, for players that predate fMP4 HLS; classic HLS (no parts listed).
    Ts,
}

impl Container {
    /// The file extension of this container's segments and parts.
    pub fn extension(self) -> &'static str {
        match self {
            Container::Fmp4 => "m4s",
            Container::Ts => "ts",
        }
    }
}

/// One LL-HLS part: a run of frames cut at the part target, muxed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartInfo {
    /// Media time the part covers, in milliseconds.
    pub duration_ms: u32,
    /// The part starts with a keyframe (or has no video): a player can start decoding here.
    pub independent: bool,
    /// Size of the part's bytes.
    pub bytes: usize,
}

/// One media segment: the parts cut so far, complete once the next segment has begun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Media sequence number.
    pub msn: u64,
    /// The init segment (`EXT-X-MAP`) this segment's fragments need (fMP4 only).
    pub init_id: u32,
    /// A discontinuity comes before this segment (publisher change, failover splice, new
    /// codec parameters).
    pub discontinuity: bool,
    /// Wall-clock time of the segment's first frame, milliseconds since the Unix epoch.
    pub pdt_ms: u64,
    /// The parts, in order.
    pub parts: Vec<PartInfo>,
    /// No more parts will be added.
    pub complete: bool,
}

impl SegmentInfo {
    /// The segment's duration so far, in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.parts.iter().map(|p| u64::from(p.duration_ms)).sum()
    }

    /// The segment's size so far.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}

/// The segments a media playlist lists, oldest first; the last may be incomplete (the one
/// being cut, listed by its parts only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Window {
    /// Container of every segment.
    pub container: Container,
    /// `EXT-X-TARGETDURATION`, whole seconds: never below the configured target nor below any
    /// segment's rounded duration so far, and it never decreases.
    pub target_duration_s: u32,
    /// `EXT-X-PART-INF:PART-TARGET`, milliseconds.
    pub part_target_ms: u32,
    /// `EXT-X-DISCONTINUITY-SEQUENCE`: discontinuities that have left the window.
    pub discontinuity_sequence: u64,
    /// The segments, oldest first.
    pub segments: VecDeque<SegmentInfo>,
}

impl Window {
    /// `EXT-X-MEDIA-SEQUENCE`: the first listed segment's number (the next one to be cut when
    /// nothing is listed yet).
    pub fn media_sequence(&self) -> u64 {
        self.segments.front().map_or(0, |s| s.msn)
    }

    /// The newest part: its segment's msn and its index in that segment.
    pub fn last_part(&self) -> Option<(u64, u32)> {
        self.segments.iter().rev().find_map(|s| {
            let n = u32::try_from(s.parts.len()).ok()?;
            n.checked_sub(1).map(|last| (s.msn, last))
        })
    }

    /// The segment numbered `msn`, if listed.
    pub fn segment(&self, msn: u64) -> Option<&SegmentInfo> {
        let first = self.segments.front()?.msn;
        let at = usize::try_from(msn.checked_sub(first)?).ok()?;
        self.segments.get(at)
    }

    /// Bytes of every listed part.
    pub fn bytes(&self) -> usize {
        self.segments.iter().map(SegmentInfo::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(msn: u64, parts: usize, complete: bool) -> SegmentInfo {
        SegmentInfo {
            msn,
            init_id: 0,
            discontinuity: false,
            pdt_ms: 0,
            parts: vec![
                PartInfo {
                    duration_ms: 200,
                    independent: false,
                    bytes: 10,
                };
                parts
            ],
            complete,
        }
    }

    #[test]
    fn the_window_finds_segments_and_the_last_part() {
        let mut w = Window::default();
        assert_eq!(w.last_part(), None);
        assert_eq!(w.media_sequence(), 0);
        w.segments.push_back(segment(7, 5, true));
        w.segments.push_back(segment(8, 0, false));
        assert_eq!(w.media_sequence(), 7);
        assert_eq!(w.last_part(), Some((7, 4)));
        let part = w.segments[0].parts[0];
        w.segments[1].parts.push(part);
        assert_eq!(w.last_part(), Some((8, 0)));
        assert_eq!(w.segment(8).map(|s| s.msn), Some(8));
        assert_eq!(w.segment(6), None);
        assert_eq!(w.segment(9), None);
        assert_eq!(w.segments[0].duration_ms(), 1000);
        assert_eq!(w.bytes(), 60);
    }
}
