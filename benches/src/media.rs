//! What a viewer needs to know about a media message or FLV tag without parsing its body:
//! sequence header, keyframe, inter frame. Only the first bytes of the body are read, so the
//! HTTP-FLV reader never has to buffer a tag (see [`TagScanner`]).

use sluice_media::flv::{TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};

/// Bytes of a tag body [`classify`] looks at.
pub const PROBE: usize = 8;

/// A media message, classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A video codec configuration record (AVC sequence header, hvcC, av1C...).
    VideoHeader,
    /// A coded video frame.
    Video {
        /// A keyframe.
        key: bool,
    },
    /// An audio configuration record (AAC AudioSpecificConfig, OpusHead...).
    AudioHeader,
    /// A coded audio frame.
    Audio,
    /// Anything else: script data, end of sequence, video info/command frames, metadata.
    Other,
}

/// Classifies a tag body from its first bytes (legacy FLV and Enhanced RTMP).
pub fn classify(type_id: u8, body: &[u8]) -> Class {
    let Some(&b0) = body.first() else {
        return Class::Other;
    };
    match type_id {
        TAG_VIDEO => {
            let frame_type = (b0 >> 4) & 0x07;
            if frame_type == 5 {
                return Class::Other; // video info / command frame
            }
            let key = frame_type == 1 || frame_type == 4;
            if b0 & 0x80 != 0 {
                // Enhanced RTMP: IsExHeader, packet type in the low nibble.
                match b0 & 0x0f {
                    0 | 5 => Class::VideoHeader,       // SequenceStart, MPEG2TSSequenceStart
                    1 | 3 | 6 => Class::Video { key }, // CodedFrames(X), Multitrack
                    _ => Class::Other,                 // SequenceEnd, Metadata, ModEx...
                }
            } else {
                match b0 & 0x0f {
                    // AVC, and the HEVC/AV1 ids some servers used before Enhanced RTMP:
                    // packet type byte follows.
                    7 | 12 | 13 => match body.get(1) {
                        Some(0) => Class::VideoHeader,
                        Some(1) => Class::Video { key },
                        _ => Class::Other,
                    },
                    _ => Class::Video { key },
                }
            }
        }
        TAG_AUDIO => match b0 >> 4 {
            10 => match body.get(1) {
                Some(0) => Class::AudioHeader,
                Some(_) => Class::Audio,
                None => Class::Other,
            },
            9 => match b0 & 0x0f {
                0 => Class::AudioHeader,
                1 => Class::Audio,
                _ => Class::Other,
            },
            _ => Class::Audio,
        },
        TAG_SCRIPT => Class::Other,
        _ => Class::Other,
    }
}

/// One FLV tag seen by [`TagScanner`]: its header and the first bytes of its body.
#[derive(Debug, Clone, Copy)]
pub struct TagInfo {
    /// Tag type (8 audio, 9 video, 18 script).
    pub tag_type: u8,
    /// Timestamp, ms (extended byte folded in).
    pub timestamp: u32,
    /// Body size in bytes.
    pub size: u32,
    /// The body's class.
    pub class: Class,
}

/// Why an FLV stream could not be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The stream does not start with `FLV`.
    #[error("not an FLV stream")]
    NotFlv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    FileHeader,
    Skip,
    TagHeader,
    Probe,
}

/// Walks an FLV byte stream tag by tag without buffering bodies: it keeps the 11-byte tag
/// header and the first [`PROBE`] body bytes, and skips the rest. Constant memory per
/// viewer, one pass over the bytes.
#[derive(Debug)]
pub struct TagScanner {
    state: St,
    acc: [u8; 16],
    have: usize,
    skip: u64,
    head: (u8, u32, u32),
}

impl Default for TagScanner {
    fn default() -> Self {
        Self {
            state: St::FileHeader,
            acc: [0; 16],
            have: 0,
            skip: 0,
            head: (0, 0, 0),
        }
    }
}

impl TagScanner {
    /// Appends `need` bytes to the accumulator from `data`; true once it holds `need`.
    fn fill(&mut self, data: &mut &[u8], need: usize) -> bool {
        let n = (need - self.have).min(data.len());
        self.acc[self.have..self.have + n].copy_from_slice(&data[..n]);
        self.have += n;
        *data = &data[n..];
        self.have == need
    }

    /// Feeds stream bytes; calls `on_tag` for every tag whose header and probe are complete.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut on_tag: impl FnMut(TagInfo),
    ) -> Result<(), ScanError> {
        while !data.is_empty() {
            match self.state {
                St::FileHeader => {
                    if !self.fill(&mut data, 9) {
                        continue;
                    }
                    let header_len =
                        u32::from_be_bytes([self.acc[5], self.acc[6], self.acc[7], self.acc[8]]);
                    if &self.acc[..3] != b"FLV" || header_len < 9 {
                        return Err(ScanError::NotFlv);
                    }
                    self.have = 0;
                    self.skip = u64::from(header_len - 9) + 4; // rest of the header, PreviousTagSize0
                    self.state = St::Skip;
                }
                St::Skip => {
                    let n = self.skip.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.skip -= n;
                    if self.skip == 0 {
                        self.state = St::TagHeader;
                    }
                }
                St::TagHeader => {
                    if !self.fill(&mut data, 11) {
                        continue;
                    }
                    let a = &self.acc;
                    let size = u32::from_be_bytes([0, a[1], a[2], a[3]]);
                    let ts = u32::from_be_bytes([a[7], a[4], a[5], a[6]]);
                    self.head = (a[0] & 0x1f, ts, size);
                    self.have = 0;
                    if size == 0 {
                        self.emit(&mut on_tag, 0);
                    } else {
                        self.state = St::Probe;
                    }
                }
                St::Probe => {
                    let need = (self.head.2 as usize).min(PROBE);
                    if !self.fill(&mut data, need) {
                        continue;
                    }
                    self.emit(&mut on_tag, need);
                }
            }
        }
        Ok(())
    }

    fn emit(&mut self, on_tag: &mut impl FnMut(TagInfo), probed: usize) {
        let (tag_type, timestamp, size) = self.head;
        on_tag(TagInfo {
            tag_type,
            timestamp,
            size,
            class: classify(tag_type, &self.acc[..probed]),
        });
        self.have = 0;
        self.skip = u64::from(size) - probed as u64 + 4; // rest of the body, PreviousTagSize
        self.state = St::Skip;
    }
}

#[cfg(test)]
mod tests {
    use sluice_media::flv::{
        AudioPacketType, AudioTag, Demuxer, VideoFrameType, VideoPacketType, VideoTag,
    };

    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(name);
        std::fs::read(path).expect("fixture")
    }

    /// The class sluice-media's full parsers give.
    fn reference(tag_type: u8, body: &[u8]) -> Class {
        match tag_type {
            TAG_VIDEO => {
                let v = VideoTag::parse(body).unwrap();
                match (v.packet_type, v.frame_type) {
                    (_, VideoFrameType::Command) => Class::Other,
                    (VideoPacketType::SequenceStart, _) => Class::VideoHeader,
                    (VideoPacketType::CodedFrames | VideoPacketType::CodedFramesX, ft) => {
                        Class::Video {
                            key: matches!(ft, VideoFrameType::Key | VideoFrameType::GeneratedKey),
                        }
                    }
                    _ => Class::Other,
                }
            }
            TAG_AUDIO => match AudioTag::parse(body).unwrap().packet_type {
                AudioPacketType::SequenceStart => Class::AudioHeader,
                AudioPacketType::CodedFrames => Class::Audio,
                _ => Class::Other,
            },
            _ => Class::Other,
        }
    }

    #[test]
    fn scanner_matches_the_demuxer_at_any_split() {
        for name in ["h264_aac.flv", "h264_aac_bframes.flv"] {
            let file = fixture(name);
            let mut demuxer = Demuxer::new();
            demuxer.push(&file);
            let mut expected = Vec::new();
            while let Some((h, body)) = demuxer.next_tag().unwrap() {
                let class = reference(h.tag_type, &body);
                assert_eq!(class, classify(h.tag_type, &body[..body.len().min(PROBE)]));
                expected.push((h.tag_type, h.timestamp, h.data_size, class));
            }
            assert!(expected.iter().any(|t| t.3 == Class::Video { key: true }));
            assert!(expected.iter().any(|t| t.3 == Class::VideoHeader));
            assert!(expected.iter().any(|t| t.3 == Class::AudioHeader));
            for step in [1, 2, 7, 11, 12, 4096, file.len()] {
                let mut scanner = TagScanner::default();
                let mut got = Vec::new();
                for piece in file.chunks(step) {
                    scanner
                        .feed(piece, |t| {
                            got.push((t.tag_type, t.timestamp, t.size, t.class))
                        })
                        .unwrap();
                }
                assert_eq!(got, expected, "{name} in pieces of {step}");
            }
        }
    }

    #[test]
    fn scanner_refuses_non_flv() {
        let mut s = TagScanner::default();
        assert_eq!(
            s.feed(b"HTTP/1.1 200 OK\r\n", |_| {}),
            Err(ScanError::NotFlv)
        );
    }
}
