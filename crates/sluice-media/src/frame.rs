//! One frame of a stream, and the wire forms built from it once and shared by every viewer.

use std::sync::{Mutex, OnceLock};

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

/// The parameters an RTMP serialisation of a frame depends on: the key under which it is
/// cached, so that two viewers whose parameters differ never share bytes (a reload that
/// changes `rtmp.chunk_size` leaves connected viewers on the old size and new ones on the
/// new one, both of the same frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RtmpForm {
    /// The chunk size the viewer's connection announced.
    pub chunk_size: u32,
    /// The message stream id the viewer plays on.
    pub stream_id: u32,
}

/// RTMP forms cached per frame beyond the first: a reload or an unusual client adds one
/// each; past this many, further forms are built on every use (correct, only slower).
const MAX_EXTRA_RTMP_FORMS: usize = 3;

/// Lazily built, shared serialisations of a frame, each under the key of every parameter it
/// depends on.
#[derive(Debug, Default)]
struct WireCache {
    flv: OnceLock<Bytes>,
    /// The HTTP/1.1 chunk size line that goes before the FLV tag (after the CRLF ending the
    /// chunk before it).
    flv_chunk_line: OnceLock<Bytes>,
    /// The first RTMP form asked for (all of them, almost always): read without a lock.
    rtmp: OnceLock<(RtmpForm, Bytes)>,
    /// Other RTMP forms, under a short lock.
    rtmp_extra: Mutex<Vec<(RtmpForm, Bytes)>>,
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

    /// The HTTP/1.1 chunk size line of this frame's FLV tag, preceded by the CRLF that ends
    /// the chunk before it (a chunked FLV body is one chunk per tag); built once and shared.
    pub fn flv_chunk_line(&self) -> Bytes {
        self.wire
            .flv_chunk_line
            .get_or_init(|| {
                let len = crate::flv::tag_len(self.payload.len());
                Bytes::from(format!("\r\n{len:x}\r\n"))
            })
            .clone()
    }

    /// This frame's RTMP wire form for `form`, built by `build` on first use and shared by
    /// every viewer with the same parameters afterwards. `build` is the RTMP chunk writer
    /// for exactly `form` (the runtime's wire module is its one caller).
    pub fn rtmp_chunks(&self, form: RtmpForm, build: impl FnOnce(&Frame) -> Bytes) -> Bytes {
        match self.wire.rtmp.get() {
            Some((first, bytes)) if *first == form => return bytes.clone(),
            Some(_) => {}
            None => {
                let bytes = build(self);
                // Another viewer may have set the first form meanwhile; these bytes are
                // right for `form` either way.
                let _ = self.wire.rtmp.set((form, bytes.clone()));
                return bytes;
            }
        }
        // A poisoned lock only means another viewer's builder panicked mid-way; the
        // list itself is always whole.
        let mut extra = self
            .wire
            .rtmp_extra
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, bytes)) = extra.iter().find(|(f, _)| *f == form) {
            return bytes.clone();
        }
        let bytes = build(self);
        if extra.len() < MAX_EXTRA_RTMP_FORMS {
            extra.push((form, bytes.clone()));
        }
        bytes
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
        let line = f.flv_chunk_line();
        assert_eq!(
            &line[..],
            b"\r\n15\r\n",
            "CRLF, the tag's length in hex, CRLF"
        );
        assert_eq!(line.as_ptr(), f.flv_chunk_line().as_ptr());
        let form = |chunk_size| RtmpForm {
            chunk_size,
            stream_id: 1,
        };
        let mut calls = 0;
        let a = f.rtmp_chunks(form(128), |_| {
            calls += 1;
            Bytes::from_static(b"128")
        });
        f.rtmp_chunks(form(128), |_| unreachable!("cached"));
        assert_eq!(calls, 1);
        assert_eq!(&a[..], b"128");
    }

    #[test]
    fn rtmp_forms_with_other_parameters_never_share_bytes() {
        let f = video(&[0x17, 1, 0, 0, 0, 0xab]);
        let form = |chunk_size, stream_id| RtmpForm {
            chunk_size,
            stream_id,
        };
        let built = |tag: &'static str| move |_: &Frame| Bytes::from_static(tag.as_bytes());
        assert_eq!(
            &f.rtmp_chunks(form(4096, 1), built("4096/1"))[..],
            b"4096/1"
        );
        assert_eq!(&f.rtmp_chunks(form(128, 1), built("128/1"))[..], b"128/1");
        assert_eq!(&f.rtmp_chunks(form(128, 3), built("128/3"))[..], b"128/3");
        // Each is cached under its own key.
        for (chunk_size, stream_id, want) in [
            (4096, 1, &b"4096/1"[..]),
            (128, 1, b"128/1"),
            (128, 3, b"128/3"),
        ] {
            let got = f.rtmp_chunks(form(chunk_size, stream_id), |_| unreachable!("cached"));
            assert_eq!(&got[..], want);
        }
        // Past the cache's room, forms are still right, built on each use.
        assert_eq!(
            &f.rtmp_chunks(form(60000, 1), built("60000/1"))[..],
            b"60000/1"
        );
        assert_eq!(&f.rtmp_chunks(form(256, 1), built("256/1"))[..], b"256/1");
        assert_eq!(
            &f.rtmp_chunks(form(256, 1), built("256/1 again"))[..],
            b"256/1 again"
        );
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
