//! The fixtures as FLV tags, and what a test asks of a tag body (keyframe, sequence header).
//!
//! The checks read the legacy FLV tag bytes directly, independently of `sluice-media`'s
//! parser, so a test does not grade the code under test with that same code.

use bytes::Bytes;
use sluice_media::flv::{Demuxer, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};

/// One FLV tag of a fixture (or an RTMP message as received): type, timestamp and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// 8 audio, 9 video, 18 script data.
    pub type_id: u8,
    /// Milliseconds.
    pub timestamp: u32,
    /// The tag body (an RTMP message body).
    pub payload: Bytes,
}

impl Tag {
    /// A video keyframe by its frame type; an AVC sequence header carries that type too.
    pub fn is_video_keyframe(&self) -> bool {
        self.type_id == TAG_VIDEO && is_keyframe(&self.payload)
    }

    /// An AVC or AAC sequence header.
    pub fn is_sequence_header(&self) -> bool {
        is_sequence_header(self.type_id, &self.payload)
    }
}

/// The tags of a checked-in fixture (see [`crate::fixtures`]), in file order. Panics if the
/// file is not FLV or holds other tag types.
pub fn fixture_tags(name: &str) -> Vec<Tag> {
    let file = std::fs::read(crate::fixture(name)).expect("fixture");
    let mut demuxer = Demuxer::new();
    demuxer.push(&file);
    let mut tags = Vec::new();
    while let Some((header, payload)) = demuxer.next_tag().expect("valid fixture") {
        assert!(
            matches!(header.tag_type, TAG_AUDIO | TAG_VIDEO | TAG_SCRIPT),
            "{name}: tag type {}",
            header.tag_type
        );
        tags.push(Tag {
            type_id: header.tag_type,
            timestamp: header.timestamp,
            payload,
        });
    }
    tags
}

/// A fixture's media tags (audio and video, in file order) and its onMetaData body.
pub fn fixture_media(name: &str) -> (Vec<Tag>, Bytes) {
    let tags = fixture_tags(name);
    let metadata = tags
        .iter()
        .find(|t| t.type_id == TAG_SCRIPT)
        .map(|t| t.payload.clone())
        .expect("fixture has onMetaData");
    let media = tags
        .into_iter()
        .filter(|t| t.type_id != TAG_SCRIPT)
        .collect();
    (media, metadata)
}

/// A video tag body whose frame type (high nibble of the first byte) is 1, keyframe.
pub fn is_keyframe(body: &[u8]) -> bool {
    body.first().is_some_and(|b| b >> 4 == 1)
}

/// An AVC video tag body that is not a coded frame (packet type 0, sequence header, or 2,
/// end of sequence).
pub fn is_avc_config(body: &[u8]) -> bool {
    body.first().is_some_and(|b| b & 0x0f == 7) && body.get(1).is_some_and(|t| *t != 1)
}

/// An AVC (video) or AAC (audio) sequence header: packet type byte 0 in a legacy tag.
pub fn is_sequence_header(type_id: u8, body: &[u8]) -> bool {
    let Some(&first) = body.first() else {
        return false;
    };
    body.get(1) == Some(&0)
        && match type_id {
            TAG_VIDEO => first & 0x0f == 7,
            TAG_AUDIO => first >> 4 == 10,
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_headers_keyframes_and_inter_frames_apart() {
        let avc_header = [0x17, 0, 0, 0, 0];
        let avc_key = [0x17, 1, 0, 0, 0];
        let avc_inter = [0x27, 1, 0, 0, 0];
        let avc_end = [0x17, 2, 0, 0, 0];
        let aac_header = [0xaf, 0, 0x12];
        let aac_frame = [0xaf, 1, 0x21];
        assert!(is_sequence_header(TAG_VIDEO, &avc_header));
        assert!(is_sequence_header(TAG_AUDIO, &aac_header));
        assert!(!is_sequence_header(TAG_VIDEO, &avc_key));
        assert!(!is_sequence_header(TAG_AUDIO, &aac_frame));
        assert!(
            !is_sequence_header(TAG_AUDIO, &avc_header),
            "audio is not AVC"
        );
        assert!(!is_sequence_header(TAG_VIDEO, &[]));
        assert!(is_keyframe(&avc_key) && is_keyframe(&avc_header));
        assert!(!is_keyframe(&avc_inter) && !is_keyframe(&[]));
        assert!(is_avc_config(&avc_header) && is_avc_config(&avc_end));
        assert!(!is_avc_config(&avc_key) && !is_avc_config(&avc_inter));
    }

    #[test]
    fn a_fixture_is_headers_then_a_keyframe() {
        let (media, metadata) = fixture_media(crate::fixtures::H264_AAC);
        assert!(metadata.starts_with(b"\x02\x00\x0aonMetaData"));
        let video: Vec<&Tag> = media.iter().filter(|t| t.type_id == TAG_VIDEO).collect();
        assert_eq!(
            video.len(),
            52,
            "a sequence header, 50 frames, an end of sequence"
        );
        assert!(video[0].is_sequence_header() && video[0].is_video_keyframe());
        assert!(video[1].is_video_keyframe() && !video[1].is_sequence_header());
        assert!(video[2..].iter().any(|t| !t.is_video_keyframe()));
        assert!(is_avc_config(&video[51].payload) && !video[51].is_sequence_header());
        assert!(media.iter().any(Tag::is_sequence_header));
    }
}
