//! One frame of a stream, and the wire forms built from it once and shared by every viewer.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::codec::CodecId;

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

impl Frame {
    /// A frame with no wire forms built yet.
    pub fn new(
        kind: FrameKind,
        dts: u64,
        cts: i32,
        keyframe: bool,
        seq_header: bool,
        disposable: bool,
        codec: CodecId,
        payload: Bytes,
    ) -> Self {
        Frame { kind, dts, cts, keyframe, seq_header, disposable, codec, payload, wire: WireCache::default() }
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
            .get_or_init(|| crate::flv::encode_tag(self.kind.type_id(), self.wire_timestamp(), &self.payload))
            .clone()
    }

    /// This frame's RTMP wire form, built by `build` on first use and shared afterwards. The
    /// builder is the RTMP crate's chunk writer; every caller must pass the same one (same chunk
    /// size, stream id and chunk stream ids), which the stream guarantees.
    pub fn rtmp_chunks(&self, build: impl FnOnce(&Frame) -> Bytes) -> Bytes {
        self.wire.rtmp.get_or_init(|| build(self)).clone()
    }
}
