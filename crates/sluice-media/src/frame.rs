//! One frame of a stream, and the wire forms built from it once and shared by every viewer.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::codec::CodecId;
use crate::flv::{AudioPacketType, AudioTag, FlvError, VideoFrameType, VideoPacketType, VideoTag};

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// An FLV/RTMP audio tag body.
    Audio,
    /// An FLV/RTMP video tag body.
    Video,
    /// Script data (onMetaData), AMF0.
    Script,
}

impl FrameKind {
    /// The FLV tag type and RTMP message type id for this kind (they coincide: 8, 9, 18).
    pub fn type_id(self) -> u8 {
        match self {
            FrameKind::Audio => 8,
            FrameKind::Video => 9,
            FrameKind::Script => 18,
        }
    }
}

/// One frame. `payload` is the FLV tag body exactly as RTMP carries it in a message (tag
/// header byte(s) included), so egress formats only add framing and never re-encode.
#[derive(Debug)]
pub struct Frame {
    /// Audio, video or script data.
    pub kind: FrameKind,
    /// Decode timestamp in milliseconds on the stream's output timeline (64-bit: already
    /// unwrapped from 32-bit RTMP time and rebased across publisher reconnects).
    pub dts: u64,
    /// Composition time offset (pts - dts) in milliseconds; 0 for audio and script data.
    pub cts: i32,
    /// A random access point (video key frame). Audio frames are not keyframes.
    pub keyframe: bool,
    /// A codec configuration record (AVC/HEVC/AV1 sequence header, AAC AudioSpecificConfig,
    /// Opus header) rather than media.
    pub seq_header: bool,
    /// A frame the decoder can drop without harming others (H.264 disposable inter frame).
    pub disposable: bool,
    /// The codec this frame is coded with, as its tag header names it.
    pub codec: CodecId,
    /// The FLV tag body (= RTMP message body).
    pub payload: Bytes,
    /// Wire forms built lazily, once, and shared by every viewer of that format.
    wire: WireCache,
}

/// Lazily built, shared serialisations of a frame.
#[derive(Debug, Default)]
struct WireCache {
    flv: OnceLock<Bytes>,
    rtmp: OnceLock<Bytes>,
}

/// The parts of a [`Frame`], named, so that building one reads as what each flag means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameParts {
    /// Audio, video or script data.
    pub kind: FrameKind,
    /// Decode timestamp in milliseconds on the stream's output timeline.
    pub dts: u64,
    /// Composition time offset (pts - dts) in milliseconds.
    pub cts: i32,
    /// A random access point.
    pub keyframe: bool,
    /// A codec configuration record rather than media.
    pub seq_header: bool,
    /// A frame the decoder can drop without harming others.
    pub disposable: bool,
    /// The codec the tag header names.
    pub codec: CodecId,
    /// The FLV tag body (= RTMP message body).
    pub payload: Bytes,
}

impl Frame {
    /// A frame from its parts, with no wire forms built yet.
    pub fn from_parts(parts: FrameParts) -> Self {
        let FrameParts {
            kind,
            dts,
            cts,
            keyframe,
            seq_header,
            disposable,
            codec,
            payload,
        } = parts;
        Frame {
            kind,
            dts,
            cts,
            keyframe,
            seq_header,
            disposable,
            codec,
            payload,
            wire: WireCache::default(),
        }
    }

    /// This frame's parts (the payload shared, not copied), e.g. to send it to another node
    /// that rebuilds it with [`Frame::from_parts`] instead of parsing it again.
    pub fn to_parts(&self) -> FrameParts {
        FrameParts {
            kind: self.kind,
            dts: self.dts,
            cts: self.cts,
            keyframe: self.keyframe,
            seq_header: self.seq_header,
            disposable: self.disposable,
            codec: self.codec,
            payload: self.payload.clone(),
        }
    }

    /// A script-data frame (onMetaData and friends), carried as is.
    pub fn script(dts: u64, payload: Bytes) -> Frame {
        Frame::from_parts(FrameParts {
            kind: FrameKind::Script,
            dts,
            cts: 0,
            keyframe: false,
            seq_header: false,
            disposable: false,
            codec: CodecId::Amf0,
            payload,
        })
    }

    /// Classifies an RTMP audio/video/script message body (= FLV tag body) into a frame.
    ///
    /// A video frame is a keyframe only if it carries coded media with a key frame type, so
    /// sequence headers, sequence ends, metadata and command frames never start a GOP. Audio
    /// is never a keyframe. `seq_header` marks configuration records (AVC/HEVC/AV1/VP9 records,
    /// AAC AudioSpecificConfig, Opus/FLAC headers); a sequence end is not one. Enhanced audio
    /// MultichannelConfig packets are ordinary frames here. Script data is not inspected.
    pub fn parse(kind: FrameKind, dts: u64, payload: Bytes) -> Result<Frame, FlvError> {
        if payload.is_empty() {
            return Err(FlvError::Empty);
        }
        let mut parts = FrameParts {
            kind,
            dts,
            cts: 0,
            keyframe: false,
            seq_header: false,
            disposable: false,
            codec: CodecId::Amf0,
            payload: Bytes::new(),
        };
        match kind {
            FrameKind::Script => {}
            FrameKind::Video => {
                let tag = VideoTag::parse(&payload)?;
                let media = matches!(
                    tag.packet_type,
                    VideoPacketType::CodedFrames | VideoPacketType::CodedFramesX
                );
                parts.codec = tag.codec;
                parts.cts = tag.cts;
                parts.keyframe = media
                    && matches!(
                        tag.frame_type,
                        VideoFrameType::Key | VideoFrameType::GeneratedKey
                    );
                // Encoders rarely use the disposable frame type for H.264/HEVC, so the
                // NAL headers of inter frames are read too (a few bytes per frame).
                parts.disposable = media
                    && (tag.frame_type == VideoFrameType::DisposableInter
                        || (!parts.keyframe
                            && crate::codec::is_non_reference(tag.codec, tag.data(&payload))));
                parts.seq_header = matches!(
                    tag.packet_type,
                    VideoPacketType::SequenceStart | VideoPacketType::Mpeg2TsSequenceStart
                );
            }
            FrameKind::Audio => {
                let tag = AudioTag::parse(&payload)?;
                parts.codec = tag.codec;
                parts.seq_header = tag.packet_type == AudioPacketType::SequenceStart;
            }
        }
        parts.payload = payload;
        Ok(Frame::from_parts(parts))
    }

    /// The 32-bit RTMP/FLV timestamp of this frame (wraps every ~49.7 days).
    pub fn wire_timestamp(&self) -> u32 {
        self.dts as u32
    }

    /// The FLV tag for this frame (11-byte tag header, body, 4-byte previous tag size), built
    /// on first use and shared afterwards.
    pub fn flv_tag(&self) -> Bytes {
        self.wire
            .flv
            .get_or_init(|| {
                crate::flv::encode_tag(self.kind.type_id(), self.wire_timestamp(), &self.payload)
            })
            .clone()
    }

    /// This frame's RTMP wire form, built by `build` on first use and shared afterwards. The
    /// builder is the RTMP crate's chunk writer; every caller must pass the same one (same chunk
    /// size, stream id and chunk stream ids), which the stream guarantees.
    pub fn rtmp_chunks(&self, build: impl FnOnce(&Frame) -> Bytes) -> Bytes {
        self.wire.rtmp.get_or_init(|| build(self)).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(body: &[u8]) -> Frame {
        Frame::parse(FrameKind::Video, 40, Bytes::copy_from_slice(body)).unwrap()
    }

    fn flags(f: &Frame) -> (CodecId, bool, bool, bool, i32) {
        (f.codec, f.keyframe, f.seq_header, f.disposable, f.cts)
    }

    #[test]
    fn classifies_video() {
        assert_eq!(
            flags(&video(&[0x17, 0, 0, 0, 0, 1])),
            (CodecId::Avc, false, true, false, 0)
        );
        assert_eq!(
            flags(&video(&[0x17, 1, 0, 0, 0x50, 0])),
            (CodecId::Avc, true, false, false, 80)
        );
        assert_eq!(
            flags(&video(&[0x27, 1, 0xff, 0xff, 0xd8, 0])),
            (CodecId::Avc, false, false, false, -40)
        );
        assert_eq!(
            flags(&video(&[0x37, 1, 0, 0, 0, 0])),
            (CodecId::Avc, false, false, true, 0)
        );
        assert_eq!(
            flags(&video(&[0x17, 2, 0, 0, 0])),
            (CodecId::Avc, false, false, false, 0),
            "sequence end"
        );
        assert_eq!(
            flags(&video(&[0x57, 0])),
            (CodecId::Avc, false, false, false, 0),
            "command frame"
        );
        assert_eq!(
            flags(&video(&[0x90, b'h', b'v', b'c', b'1', 1])),
            (CodecId::Hevc, false, true, false, 0)
        );
        assert_eq!(
            flags(&video(&[0x91, b'h', b'v', b'c', b'1', 0, 0, 9, 0])),
            (CodecId::Hevc, true, false, false, 9)
        );
        assert_eq!(
            flags(&video(&[0x93, b'a', b'v', b'0', b'1', 0])),
            (CodecId::Av1, true, false, false, 0)
        );
        assert_eq!(
            flags(&video(&[0x94, b'a', b'v', b'0', b'1', 2])),
            (CodecId::Av1, false, false, false, 0),
            "metadata"
        );
        assert_eq!(
            flags(&video(&[0x92, b'v', b'p', b'0', b'9'])),
            (CodecId::Vp9, false, false, false, 0),
            "sequence end"
        );
        let f = video(&[0x17, 1, 0, 0, 0, 0xab]);
        assert_eq!(
            (f.kind, f.dts, &f.payload[..]),
            (FrameKind::Video, 40, &[0x17, 1, 0, 0, 0, 0xab][..])
        );
    }

    #[test]
    fn classifies_audio_and_script() {
        let audio =
            |b: &[u8]| Frame::parse(FrameKind::Audio, 0, Bytes::copy_from_slice(b)).unwrap();
        assert_eq!(
            flags(&audio(&[0xaf, 0, 0x12, 0x10])),
            (CodecId::Aac, false, true, false, 0)
        );
        assert_eq!(
            flags(&audio(&[0xaf, 1, 0x21])),
            (CodecId::Aac, false, false, false, 0)
        );
        assert_eq!(
            flags(&audio(&[0x2f, 0xff])),
            (CodecId::Mp3, false, false, false, 0)
        );
        assert_eq!(
            flags(&audio(&[0x90, b'O', b'p', b'u', b's', b'O'])),
            (CodecId::Opus, false, true, false, 0)
        );
        assert_eq!(
            flags(&audio(&[0x94, b'O', b'p', b'u', b's', 0])),
            (CodecId::Opus, false, false, false, 0)
        );
        let s = Frame::parse(FrameKind::Script, 7, Bytes::from_static(b"\x02")).unwrap();
        assert_eq!(
            (s.codec, s.kind, s.dts),
            (CodecId::Amf0, FrameKind::Script, 7)
        );
        assert_eq!(
            Frame::script(7, Bytes::from_static(b"\x02")).codec,
            CodecId::Amf0
        );
    }

    #[test]
    fn rejects_bad_bodies() {
        for kind in [FrameKind::Audio, FrameKind::Video, FrameKind::Script] {
            assert_eq!(
                Frame::parse(kind, 0, Bytes::new()).unwrap_err(),
                FlvError::Empty
            );
        }
        assert!(Frame::parse(FrameKind::Video, 0, Bytes::from_static(&[0x17, 1])).is_err());
        assert!(Frame::parse(FrameKind::Audio, 0, Bytes::from_static(&[0xaf])).is_err());
    }

    #[test]
    fn parts_roundtrip() {
        let f = video(&[0x27, 1, 0xff, 0xff, 0xd8, 0]);
        let parts = f.to_parts();
        assert_eq!(
            parts.payload.as_ptr(),
            f.payload.as_ptr(),
            "shared, not copied"
        );
        let again = Frame::from_parts(parts.clone());
        assert_eq!(again.to_parts(), parts);
        assert_eq!(flags(&again), flags(&f));
    }

    #[test]
    fn wire_forms_are_built_once() {
        let f = video(&[0x17, 1, 0, 0, 0, 0xab]);
        let tag = f.flv_tag();
        assert_eq!(tag.len(), 11 + 6 + 4);
        assert_eq!(tag.as_ptr(), f.flv_tag().as_ptr());
        let mut calls = 0;
        f.rtmp_chunks(|_| {
            calls += 1;
            Bytes::from_static(b"x")
        });
        f.rtmp_chunks(|_| unreachable!("cached"));
        assert_eq!(calls, 1);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..48)) {
            for kind in [FrameKind::Audio, FrameKind::Video] {
                let _ = Frame::parse(kind, 0, Bytes::from(body.clone()));
            }
        }
    }
}
