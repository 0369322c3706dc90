//! Codec identities and what their configuration records tell (HELPER: fill in parsers).

/// A codec as FLV tag headers name it (legacy ids or enhanced FourCCs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecId {
    /// H.264 / AVC (legacy codec id 7, or FourCC `avc1`).
    Avc,
    /// H.265 / HEVC (FourCC `hvc1`).
    Hevc,
    /// AV1 (FourCC `av01`).
    Av1,
    /// VP9 (FourCC `vp09`).
    Vp9,
    /// AAC (legacy sound format 10, or FourCC `mp4a`).
    Aac,
    /// MP3 (legacy sound format 2, or FourCC `.mp3`).
    Mp3,
    /// Opus (FourCC `Opus`).
    Opus,
    /// Script data (AMF0).
    Amf0,
    /// Anything else: carried through untouched.
    Other,
}

/// What a video sequence header says about the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VideoInfo {
    /// Codec.
    pub codec: Option<CodecId>,
    /// Profile, as a name where the codec has names ("High", "Main", ...).
    pub profile: String,
    /// Level, codec-specific notation.
    pub level: String,
    /// Coded width in pixels.
    pub width: u32,
    /// Coded height in pixels.
    pub height: u32,
}

/// What an audio sequence header (or the legacy tag header) says about the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AudioInfo {
    /// Codec.
    pub codec: Option<CodecId>,
    /// Profile ("LC", "HE-AAC", ...), empty where the codec has none.
    pub profile: String,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Channel count.
    pub channels: u8,
}
