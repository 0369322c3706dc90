//! fMP4/CMAF muxing for HLS and LL-HLS: the init segment (`ftyp` + `moov`) of a stream's
//! tracks, and one `moof` + `mdat` fragment per LL-HLS part.
//!
//! This module owns the ISO BMFF boxes and the mapping from FLV tag bodies to MP4 samples:
//! codec configuration records become sample entries (`avcC`, `hvcC`, `av1C`, `esds`, `dOps`),
//! millisecond timestamps become track-timescale decode times and durations, and coded frames
//! become sample data, copied once per frame per stream into the fragment. Which frames go into
//! which fragment is the segmenter's business.
//!
//! Tracks: video is track 1 (timescale 90 kHz), audio track 2 (timescale = sample rate; Opus
//! 48 kHz). NAL unit lengths are written as 4 bytes whatever the stream uses (the record's
//! `lengthSizeMinusOne` is rewritten to 3 and 1/2/3-byte lengths widened while copying), the
//! form every player accepts. AV1 temporal delimiter OBUs are dropped, as AV1-in-ISOBMFF asks.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_media::flv::{
    AudioPacketType, AudioTag, FlvError, VideoFrameType, VideoPacketType, VideoTag,
};
use sluice_media::{CodecId, Frame, FrameKind, audio_info, video_info};

/// The video track's timescale: 90 kHz, so millisecond timestamps convert exactly (× 90).
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// Track id of the video track.
pub const VIDEO_TRACK_ID: u32 = 1;
/// Track id of the audio track.
pub const AUDIO_TRACK_ID: u32 = 2;

/// Sample flags of a sync sample that depends on no other (key frames, all audio).
const SYNC_SAMPLE: u32 = 0x0200_0000;
/// Sample flags of a non-sync sample that depends on others.
const NON_SYNC_SAMPLE: u32 = 0x0101_0000;
/// `sample_is_depended_on = 2`: no other sample references this one.
const NOT_DEPENDED_ON: u32 = 0x0080_0000;
/// The duration given to the last video sample of a fragment when no earlier delta is known.
const DEFAULT_VIDEO_DURATION_MS: u64 = 40;

/// Why an init segment could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Fmp4Error {
    /// Neither a video nor an audio sequence header was given.
    #[error("no tracks: neither a video nor an audio sequence header")]
    NoTracks,
    /// The frame given as a track's sequence header is not one (wrong kind or packet type).
    #[error("not a {0} sequence header")]
    NotSequenceHeader(&'static str),
    /// The codec has no fMP4 mapping here (supported: AVC, HEVC, AV1, AAC, Opus).
    #[error("codec {0:?} is not supported in fMP4")]
    UnsupportedCodec(CodecId),
    /// The configuration record is too short or malformed; names the record.
    #[error("malformed {0} record")]
    BadRecord(&'static str),
    /// The sequence header's FLV tag header does not parse.
    #[error("sequence header: {0}")]
    Flv(#[from] FlvError),
}

/// An init segment and what a playlist says about it. Two inits are equal when their bytes
/// and tracks are: a new sequence header that compares equal needs no new `EXT-X-MAP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// `ftyp` + `moov` (with `mvex`/`trex`), served as the `EXT-X-MAP`.
    pub bytes: Bytes,
    /// RFC 6381 codecs for the HLS `CODECS` attribute, video first: e.g.
    /// `avc1.64001f,mp4a.40.2`, `hvc1.1.6.L93.B0`, `av01.0.04M.08,opus`.
    pub codecs: String,
    /// Picture width in pixels (0 without video, or if the record's SPS does not parse).
    pub width: u32,
    /// Picture height in pixels (0 without video, or if the record's SPS does not parse).
    pub height: u32,
    /// A video track is present (track [`VIDEO_TRACK_ID`]).
    pub has_video: bool,
    /// An audio track is present (track [`AUDIO_TRACK_ID`]).
    pub has_audio: bool,
    /// The video codec, if any.
    pub video_codec: Option<CodecId>,
    /// The audio codec, if any.
    pub audio_codec: Option<CodecId>,
    /// The video track's timescale ([`VIDEO_TIMESCALE`]).
    pub video_timescale: u32,
    /// The audio track's timescale: the sample rate (0 without audio).
    pub audio_timescale: u32,
    /// Audio channel count (0 without audio).
    pub audio_channels: u8,
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
}

/// What the fragmenter needs to know of the video track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VideoTrack {
    codec: CodecId,
    /// Length-prefix size of the stream's NAL units (AVC/HEVC), `None` for AV1.
    nal_length_size: Option<u8>,
}

/// What the fragmenter needs to know of the audio track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AudioTrack {
    codec: CodecId,
    timescale: u32,
    /// The nominal frame duration in track ticks (AAC 1024, or 2048 for explicit SBR whose
    /// reported rate is the output rate; Opus 960 when a packet's TOC does not tell).
    frame_ticks: u32,
}

/// Builds the init segment for a stream's tracks from their sequence-header frames: video =
/// legacy AVC or enhanced `avc1`/`hvc1`/`av01` sequence start, audio = AAC sequence header or
/// enhanced Opus sequence start. Either may be `None`, not both.
pub fn init_segment(video: Option<&Frame>, audio: Option<&Frame>) -> Result<Init, Fmp4Error> {
    if video.is_none() && audio.is_none() {
        return Err(Fmp4Error::NoTracks);
    }
    let video = video.map(VideoConfig::from_frame).transpose()?;
    let audio = audio.map(AudioConfig::from_frame).transpose()?;

    let mut w = Writer::with_capacity(1024);
    w.boxed(b"ftyp", |w| {
        w.bytes(b"iso6");
        w.u32(0);
        w.bytes(b"iso6cmfcmp41");
        if video
            .as_ref()
            .is_some_and(|v| v.track.codec == CodecId::Av1)
        {
            w.bytes(b"av01");
        }
    });
    w.boxed(b"moov", |w| {
        w.full(b"mvhd", 0, 0, |w| {
            w.u32(0); // creation_time
            w.u32(0); // modification_time
            w.u32(1000);
            w.u32(0); // duration: unknown, fragmented
            w.u32(0x0001_0000); // rate 1.0
            w.u16(0x0100); // volume 1.0
            w.zeros(2 + 8);
            w.matrix();
            w.zeros(24); // pre_defined
            w.u32(AUDIO_TRACK_ID + 1); // next_track_ID
        });
        if let Some(v) = &video {
            v.write_trak(w);
        }
        if let Some(a) = &audio {
            a.write_trak(w);
        }
        w.boxed(b"mvex", |w| {
            for (present, id) in [
                (video.is_some(), VIDEO_TRACK_ID),
                (audio.is_some(), AUDIO_TRACK_ID),
            ] {
                if present {
                    w.full(b"trex", 0, 0, |w| {
                        w.u32(id);
                        w.u32(1); // default_sample_description_index
                        w.u32(0); // default_sample_duration
                        w.u32(0); // default_sample_size
                        w.u32(0); // default_sample_flags
                    });
                }
            }
        });
    });

    let codecs = [
        video.as_ref().map(|v| v.codec_string.as_str()),
        audio.as_ref().map(|a| a.codec_string.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(",");
    Ok(Init {
        bytes: w.finish(),
        codecs,
        width: video.as_ref().map_or(0, |v| v.width),
        height: video.as_ref().map_or(0, |v| v.height),
        has_video: video.is_some(),
        has_audio: audio.is_some(),
        video_codec: video.as_ref().map(|v| v.track.codec),
        audio_codec: audio.as_ref().map(|a| a.track.codec),
        video_timescale: VIDEO_TIMESCALE,
        audio_timescale: audio.as_ref().map_or(0, |a| a.track.timescale),
        audio_channels: audio.as_ref().map_or(0, |a| a.channels),
        video: video.map(|v| v.track),
        audio: audio.map(|a| a.track),
    })
}

/// A video sequence header, understood.
struct VideoConfig {
    track: VideoTrack,
    /// The sample entry's FourCC and its configuration box's.
    entry: [u8; 4],
    config_box: [u8; 4],
    /// The record as written to the init segment (NAL length size rewritten to 4).
    record: Vec<u8>,
    codec_string: String,
    width: u32,
    height: u32,
}

impl VideoConfig {
    fn from_frame(frame: &Frame) -> Result<VideoConfig, Fmp4Error> {
        const NOT: Fmp4Error = Fmp4Error::NotSequenceHeader("video");
        if frame.kind != FrameKind::Video {
            return Err(NOT);
        }
        let tag = VideoTag::parse(&frame.payload)?;
        if tag.packet_type != VideoPacketType::SequenceStart {
            return Err(NOT);
        }
        let mut record = tag.data(&frame.payload).to_vec();
        let (entry, config_box, nal_length_size, codec_string) = match tag.codec {
            CodecId::Avc => {
                // version, profile, compatibility, level, 6 bits reserved + lengthSizeMinusOne.
                let [1, profile, compat, level, sizes, ..] = record[..] else {
                    return Err(Fmp4Error::BadRecord("avcC"));
                };
                record[4] = sizes | 3;
                let codec = format!("avc1.{profile:02x}{compat:02x}{level:02x}");
                (*b"avc1", *b"avcC", Some((sizes & 3) + 1), codec)
            }
            CodecId::Hevc => {
                let sizes = *record.get(21).ok_or(Fmp4Error::BadRecord("hvcC"))?;
                if record.len() < 23 || record[0] != 1 {
                    return Err(Fmp4Error::BadRecord("hvcC"));
                }
                record[21] = sizes | 3;
                let codec = hevc_codec_string(&record);
                (*b"hvc1", *b"hvcC", Some((sizes & 3) + 1), codec)
            }
            CodecId::Av1 => {
                // marker (1) + version (7 bits, 1), then profile/level, tier/depth/chroma.
                let [0x81, b1, b2, ..] = record[..] else {
                    return Err(Fmp4Error::BadRecord("av1C"));
                };
                if record.len() < 4 {
                    return Err(Fmp4Error::BadRecord("av1C"));
                }
                (*b"av01", *b"av1C", None, av1_codec_string(b1, b2))
            }
            codec => return Err(Fmp4Error::UnsupportedCodec(codec)),
        };
        // The record is what decoders use; the parsed size only labels the track, so a
        // record whose SPS we cannot read still muxes (with a 0x0 track header).
        let (width, height) = video_info(&frame.payload).map_or((0, 0), |i| (i.width, i.height));
        Ok(VideoConfig {
            track: VideoTrack {
                codec: tag.codec,
                nal_length_size,
            },
            entry,
            config_box,
            record,
            codec_string,
            width,
            height,
        })
    }

    fn write_trak(&self, w: &mut Writer) {
        w.trak(
            VIDEO_TRACK_ID,
            VIDEO_TIMESCALE,
            self.width,
            self.height,
            |w| {
                w.boxed(&self.entry, |w| {
                    w.zeros(6);
                    w.u16(1); // data_reference_index
                    w.zeros(2 + 2 + 12); // pre_defined, reserved, pre_defined
                    w.u16(clamp_u16(self.width));
                    w.u16(clamp_u16(self.height));
                    w.u32(0x0048_0000); // 72 dpi
                    w.u32(0x0048_0000);
                    w.u32(0);
                    w.u16(1); // frame_count
                    w.zeros(32); // compressorname
                    w.u16(0x0018); // depth
                    w.u16(0xffff); // pre_defined = -1
                    w.boxed(&self.config_box, |w| w.bytes(&self.record));
                });
            },
        );
    }
}

/// An audio sequence header, understood.
struct AudioConfig {
    track: AudioTrack,
    channels: u8,
    codec_string: String,
    /// The AAC AudioSpecificConfig, or the Opus ID header's fields in `dOps` form.
    config: AudioBox,
}

enum AudioBox {
    Esds(Vec<u8>),
    DOps(Vec<u8>),
}

impl AudioConfig {
    fn from_frame(frame: &Frame) -> Result<AudioConfig, Fmp4Error> {
        const NOT: Fmp4Error = Fmp4Error::NotSequenceHeader("audio");
        if frame.kind != FrameKind::Audio {
            return Err(NOT);
        }
        let tag = AudioTag::parse(&frame.payload)?;
        if tag.packet_type != AudioPacketType::SequenceStart {
            return Err(NOT);
        }
        let data = tag.data(&frame.payload);
        match tag.codec {
            CodecId::Aac => {
                let info = audio_info(&frame.payload)
                    .filter(|i| i.sample_rate > 0)
                    .ok_or(Fmp4Error::BadRecord("AudioSpecificConfig"))?;
                let object_type = aac_object_type(data).ok_or(Fmp4Error::BadRecord("ASC"))?;
                // Explicit SBR/PS report the output rate, at which a frame is 2048 samples.
                let frame_ticks = if matches!(object_type, 5 | 29) {
                    2048
                } else {
                    1024
                };
                Ok(AudioConfig {
                    track: AudioTrack {
                        codec: CodecId::Aac,
                        timescale: info.sample_rate,
                        frame_ticks,
                    },
                    channels: info.channels,
                    codec_string: format!("mp4a.40.{object_type}"),
                    config: AudioBox::Esds(data.to_vec()),
                })
            }
            CodecId::Opus => {
                let (channels, d_ops) = opus_head_to_dops(data)?;
                Ok(AudioConfig {
                    track: AudioTrack {
                        codec: CodecId::Opus,
                        timescale: 48_000,
                        frame_ticks: 960,
                    },
                    channels,
                    codec_string: "opus".to_owned(),
                    config: AudioBox::DOps(d_ops),
                })
            }
            codec => Err(Fmp4Error::UnsupportedCodec(codec)),
        }
    }

    fn write_trak(&self, w: &mut Writer) {
        let entry = match self.config {
            AudioBox::Esds(_) => b"mp4a",
            AudioBox::DOps(_) => b"Opus",
        };
        w.trak(AUDIO_TRACK_ID, self.track.timescale, 0, 0, |w| {
            w.boxed(entry, |w| {
                w.zeros(6);
                w.u16(1); // data_reference_index
                w.zeros(8);
                // A channel configuration of 0 (layout in a PCE) says nothing: stereo is the
                // conventional placeholder.
                w.u16(if self.channels == 0 {
                    2
                } else {
                    u16::from(self.channels)
                });
                w.u16(16); // samplesize
                w.zeros(4);
                // 16.16 fixed point; rates above 65535 Hz do not fit and are given as 0 (the
                // timescale and the decoder configuration carry the real rate).
                w.u32(u16::try_from(self.track.timescale).map_or(0, |r| u32::from(r) << 16));
                match &self.config {
                    AudioBox::Esds(asc) => w.full(b"esds", 0, 0, |w| w.bytes(&es_descriptor(asc))),
                    AudioBox::DOps(d_ops) => w.boxed(b"dOps", |w| w.bytes(d_ops)),
                }
            });
        });
    }
}

/// The RFC 6381 string of an HEVC record (ISO/IEC 14496-15 annex E.3): profile space and
/// idc, the compatibility flags bit-reversed in hex, tier and level, then the constraint
/// bytes without trailing zeros.
fn hevc_codec_string(record: &[u8]) -> String {
    let b1 = record[1];
    let space = ["", "A", "B", "C"][usize::from(b1 >> 6)];
    let tier = if b1 & 0x20 != 0 { 'H' } else { 'L' };
    let compat = u32::from_be_bytes([record[2], record[3], record[4], record[5]]).reverse_bits();
    let mut out = format!("hvc1.{space}{}.{compat:X}.{tier}{}", b1 & 0x1f, record[12]);
    let constraints = &record[6..12];
    let used = constraints
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1);
    for b in &constraints[..used] {
        let _ = write!(out, ".{b:X}");
    }
    out
}

/// The RFC 6381 string of an AV1 stream (AV1-ISOBMFF "Codecs Parameter String") from the
/// second and third bytes of its `av1C`: `av01.P.LLT.DD`.
fn av1_codec_string(b1: u8, b2: u8) -> String {
    let profile = b1 >> 5;
    let level = b1 & 0x1f;
    let tier = if b2 & 0x80 != 0 { 'H' } else { 'M' };
    let high_bitdepth = b2 & 0x40 != 0;
    let twelve_bit = b2 & 0x20 != 0;
    let depth = match (high_bitdepth, twelve_bit) {
        (true, true) if profile == 2 => 12,
        (true, _) => 10,
        _ => 8,
    };
    format!("av01.{profile}.{level:02}{tier}.{depth:02}")
}

/// The audio object type at the front of an AudioSpecificConfig (5 bits; 31 escapes to 6
/// more).
fn aac_object_type(asc: &[u8]) -> Option<u8> {
    let first = *asc.first()? >> 3;
    if first != 31 {
        return Some(first);
    }
    let bits = u16::from_be_bytes([asc[0], *asc.get(1)?]);
    Some(32 + ((bits >> 5) & 0x3f) as u8)
}

/// The `esds` payload (ISO/IEC 14496-1 ES_Descriptor) around an AudioSpecificConfig.
fn es_descriptor(asc: &[u8]) -> Vec<u8> {
    let mut decoder_config = vec![
        0x40, // objectTypeIndication: MPEG-4 audio
        0x15, // streamType audio (5) << 2 | upStream 0 | reserved 1
        0, 0, 0, // bufferSizeDB
    ];
    decoder_config.extend_from_slice(&[0; 8]); // maxBitrate, avgBitrate: unknown
    descriptor(&mut decoder_config, 0x05, asc);
    let mut es = vec![0, AUDIO_TRACK_ID as u8, 0]; // ES_ID, flags
    descriptor(&mut es, 0x04, &decoder_config);
    descriptor(&mut es, 0x06, &[0x02]); // SLConfig: predefined MP4
    let mut out = Vec::with_capacity(es.len() + 5);
    descriptor(&mut out, 0x03, &es);
    out
}

/// Appends an MPEG-4 descriptor: tag, size in 7-bit groups (high bit = more), body.
fn descriptor(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    let len = body.len();
    let groups = (1..4).filter(|i| len >> (7 * i) != 0).count();
    for i in (1..=groups).rev() {
        out.push(0x80 | ((len >> (7 * i)) & 0x7f) as u8);
    }
    out.push((len & 0x7f) as u8);
    out.extend_from_slice(body);
}

/// The Opus ID header (RFC 7845 5.1, little-endian) as the body of a `dOps` box (Opus in
/// ISOBMFF 4.3.2, big-endian, version 0), and the channel count.
fn opus_head_to_dops(head: &[u8]) -> Result<(u8, Vec<u8>), Fmp4Error> {
    const BAD: Fmp4Error = Fmp4Error::BadRecord("OpusHead");
    if head.len() < 19 || &head[..8] != b"OpusHead" {
        return Err(BAD);
    }
    let channels = head[9];
    let family = head[18];
    let mut out = vec![0, channels];
    out.extend_from_slice(&u16::from_le_bytes([head[10], head[11]]).to_be_bytes());
    out.extend_from_slice(
        &u32::from_le_bytes([head[12], head[13], head[14], head[15]]).to_be_bytes(),
    );
    out.extend_from_slice(&i16::from_le_bytes([head[16], head[17]]).to_be_bytes());
    out.push(family);
    if family != 0 {
        // stream count, coupled count, one mapping byte per channel.
        let table = head.get(19..21 + usize::from(channels)).ok_or(BAD)?;
        out.extend_from_slice(table);
    }
    Ok((channels, out))
}

/// The duration of an Opus packet in 48 kHz samples, from its TOC byte (RFC 6716 3.1).
fn opus_packet_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config & 3)], // SILK 10/20/40/60 ms
        12..=15 => [480, 960][usize::from(config & 1)],            // hybrid 10/20 ms
        _ => [120, 240, 480, 960][usize::from(config & 3)],        // CELT 2.5..20 ms
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    Some(frame * frames)
}

/// Builds one fragment (`moof` + `mdat`) per call, keeping the `mfhd` sequence number and the
/// per-track timing state between calls. One per stream (and per init segment).
#[derive(Debug)]
pub struct Fragmenter {
    /// The next `mfhd` sequence number (starts at 1).
    sequence: u32,
    video: Option<(VideoTrack, TrackTiming)>,
    audio: Option<(AudioTrack, TrackTiming)>,
}

/// What a track remembers between fragments, to estimate the duration of a fragment's last
/// sample (whose successor has not arrived).
#[derive(Debug, Default, Clone, Copy)]
struct TrackTiming {
    /// Decode time of the last sample written, in track ticks.
    last_time: Option<u64>,
    /// The last known delta between two consecutive samples, in track ticks.
    last_delta: Option<u32>,
}

/// One sample of a fragment being built: timing, flags, and where its bytes come from.
struct Sample<'a> {
    time: u64,
    composition_offset: i32,
    flags: u32,
    data: SampleData<'a>,
    size: u32,
    /// The codec's own idea of this sample's duration (Opus TOC, AAC frame), if any.
    nominal_duration: Option<u32>,
}

/// One track's samples in a fragment: one `traf`/`trun`, its data contiguous in the `mdat`.
struct Run<'a> {
    track_id: u32,
    /// Write per-sample composition offsets (video).
    composition_offsets: bool,
    samples: Vec<Sample<'a>>,
    /// Each sample's duration in track ticks.
    durations: Vec<u32>,
}

impl Run<'_> {
    fn data_len(&self) -> u64 {
        self.samples.iter().map(|s| u64::from(s.size)).sum()
    }
}

/// How a sample's bytes are copied into the `mdat`.
#[derive(Clone, Copy)]
enum SampleData<'a> {
    /// As they are.
    Plain(&'a [u8]),
    /// NAL units with `len_size`-byte lengths, written with 4-byte lengths.
    Relength { data: &'a [u8], len_size: u8 },
    /// AV1 OBUs (all with size fields), temporal delimiters left out.
    Av1(&'a [u8]),
}

impl Fragmenter {
    /// A fragmenter for the tracks of `init`.
    pub fn new(init: &Init) -> Self {
        Fragmenter {
            sequence: 1,
            video: init.video.map(|t| (t, TrackTiming::default())),
            audio: init.audio.map(|t| (t, TrackTiming::default())),
        }
    }

    /// The `mfhd` sequence number the next fragment gets.
    pub fn next_sequence(&self) -> u32 {
        self.sequence
    }

    /// One fragment holding `frames`: media frames of both tracks in arrival order. Frames
    /// of a track the init lacks, of another codec, sequence headers, script data, command,
    /// metadata and end-of-sequence tags, and payloads that do not parse are skipped. Each
    /// track's `tfdt` is its first frame's dts; a sample lasts until the next sample of its
    /// track, and a track's last sample gets its codec's frame duration (audio) or the
    /// track's previous delta (video). Empty `Bytes` (and no sequence number used) if no
    /// frame is usable.
    pub fn fragment(&mut self, frames: &[Arc<Frame>]) -> Bytes {
        let mut video = Vec::new();
        let mut audio = Vec::new();
        for frame in frames {
            match frame.kind {
                FrameKind::Video => {
                    if let Some((track, _)) = &self.video {
                        video.extend(video_sample(track, frame));
                    }
                }
                FrameKind::Audio => {
                    if let Some((track, _)) = &self.audio {
                        audio.extend(audio_sample(track, frame));
                    }
                }
                FrameKind::Script => {}
            }
        }
        if video.is_empty() && audio.is_empty() {
            return Bytes::new();
        }
        let mut runs = Vec::with_capacity(2);
        if let Some((_, timing)) = &mut self.video
            && !video.is_empty()
        {
            let fallback = ms_to_ticks(DEFAULT_VIDEO_DURATION_MS, VIDEO_TIMESCALE);
            let durations = durations(&video, timing, fallback, false);
            runs.push(Run {
                track_id: VIDEO_TRACK_ID,
                composition_offsets: true,
                samples: video,
                durations,
            });
        }
        if let Some((track, timing)) = &mut self.audio
            && !audio.is_empty()
        {
            let durations = durations(&audio, timing, u64::from(track.frame_ticks), true);
            runs.push(Run {
                track_id: AUDIO_TRACK_ID,
                composition_offsets: false,
                samples: audio,
                durations,
            });
        }
        let sequence = self.sequence;
        self.sequence = self.sequence.wrapping_add(1).max(1);
        write_fragment(sequence, &runs)
    }
}

/// A video frame as a sample, or `None` if it carries no coded picture of the track's codec
/// (or its data does not parse).
fn video_sample<'a>(track: &VideoTrack, frame: &'a Frame) -> Option<Sample<'a>> {
    if frame.seq_header || frame.codec != track.codec {
        return None;
    }
    let tag = VideoTag::parse(&frame.payload).ok()?;
    if !matches!(
        tag.packet_type,
        VideoPacketType::CodedFrames | VideoPacketType::CodedFramesX
    ) || tag.frame_type == VideoFrameType::Command
        || tag.codec != track.codec
    {
        return None;
    }
    let raw = tag.data(&frame.payload);
    let data = match (track.nal_length_size, track.codec) {
        (Some(4), _) => SampleData::Plain(raw),
        (Some(len_size), _) => SampleData::Relength {
            data: raw,
            len_size,
        },
        (None, CodecId::Av1) => SampleData::Av1(raw),
        (None, _) => SampleData::Plain(raw),
    };
    let data = data.checked()?;
    let size = data.size()?;
    if size == 0 {
        return None;
    }
    let mut flags = if frame.keyframe {
        SYNC_SAMPLE
    } else {
        NON_SYNC_SAMPLE
    };
    if frame.disposable {
        flags |= NOT_DEPENDED_ON;
    }
    Some(Sample {
        time: ms_to_ticks(frame.dts, VIDEO_TIMESCALE),
        // cts is a signed 24-bit number of ms on the wire, so × 90 fits an i32.
        composition_offset: tag.cts.saturating_mul(90),
        flags,
        data,
        size,
        nominal_duration: None,
    })
}

/// An audio frame as a sample, or `None` if it carries no coded audio of the track's codec.
fn audio_sample<'a>(track: &AudioTrack, frame: &'a Frame) -> Option<Sample<'a>> {
    if frame.seq_header || frame.codec != track.codec {
        return None;
    }
    let tag = AudioTag::parse(&frame.payload).ok()?;
    if tag.packet_type != AudioPacketType::CodedFrames || tag.codec != track.codec {
        return None;
    }
    let data = tag.data(&frame.payload);
    let size = u32::try_from(data.len()).ok().filter(|&s| s > 0)?;
    let nominal_duration = match track.codec {
        CodecId::Opus => opus_packet_samples(data).or(Some(track.frame_ticks)),
        _ => Some(track.frame_ticks),
    };
    Some(Sample {
        time: ms_to_ticks(frame.dts, track.timescale),
        composition_offset: 0,
        flags: SYNC_SAMPLE,
        data: SampleData::Plain(data),
        size,
        nominal_duration,
    })
}

/// The durations of a track's samples: the delta to the next sample of the track; for the
/// last one, its codec's own duration where `prefer_nominal` (audio), else the track's last
/// known delta (video), else `fallback`. Updates the track's timing memory.
fn durations(
    samples: &[Sample<'_>],
    timing: &mut TrackTiming,
    fallback: u64,
    prefer_nominal: bool,
) -> Vec<u32> {
    let clamp = |d: u64| u32::try_from(d).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(samples.len());
    if let (Some(prev), Some(first)) = (timing.last_time, samples.first())
        && first.time > prev
    {
        timing.last_delta = Some(clamp(first.time - prev));
    }
    for pair in samples.windows(2) {
        let delta = clamp(pair[1].time.saturating_sub(pair[0].time));
        out.push(delta);
        if delta > 0 {
            timing.last_delta = Some(delta);
        }
    }
    let last = samples.last().map(|s| {
        let nominal = s.nominal_duration.filter(|_| prefer_nominal);
        nominal.or(timing.last_delta).unwrap_or(clamp(fallback))
    });
    out.extend(last);
    timing.last_time = samples.last().map(|s| s.time);
    out
}

/// Writes `moof` (one `traf` per run) and the `mdat` holding each run's sample data in turn.
fn write_fragment(sequence: u32, runs: &[Run<'_>]) -> Bytes {
    let data_len: u64 = runs.iter().map(Run::data_len).sum();
    let samples: usize = runs.iter().map(|r| r.samples.len()).sum();
    let mut w = Writer::with_capacity(256 + samples * 16 + data_len as usize);
    // Where each trun's data_offset field is, to patch once the moof's size is known.
    let mut offset_fields = Vec::with_capacity(runs.len());
    w.boxed(b"moof", |w| {
        w.full(b"mfhd", 0, 0, |w| w.u32(sequence));
        for run in runs {
            w.boxed(b"traf", |w| {
                // default-base-is-moof: data offsets count from the moof's first byte.
                w.full(b"tfhd", 0, 0x02_0000, |w| w.u32(run.track_id));
                w.full(b"tfdt", 1, 0, |w| w.u64(run.samples[0].time));
                // Data offset, then per sample: duration, size, flags (and the composition
                // offset, signed in version 1).
                let flags = 0x000701 | if run.composition_offsets { 0x000800 } else { 0 };
                w.full(b"trun", 1, flags, |w| {
                    w.u32(u32::try_from(run.samples.len()).unwrap_or(u32::MAX));
                    offset_fields.push(w.len());
                    w.u32(0);
                    for (sample, duration) in run.samples.iter().zip(&run.durations) {
                        w.u32(*duration);
                        w.u32(sample.size);
                        w.u32(sample.flags);
                        if run.composition_offsets {
                            w.u32(sample.composition_offset as u32);
                        }
                    }
                });
            });
        }
    });
    let moof_len = w.len() as u64;
    let mdat_header = if data_len + 8 > u64::from(u32::MAX) {
        16
    } else {
        8
    };
    let mut run_start = moof_len + mdat_header;
    for (run, field) in runs.iter().zip(offset_fields) {
        // A data offset past 2 GiB cannot be expressed; no real part comes near it.
        w.patch_u32(field, i32::try_from(run_start).unwrap_or(i32::MAX) as u32);
        run_start += run.data_len();
    }
    if mdat_header == 16 {
        w.u32(1);
        w.bytes(b"mdat");
        w.u64(data_len + 16);
    } else {
        w.u32((data_len + 8) as u32);
        w.bytes(b"mdat");
    }
    for run in runs {
        for sample in &run.samples {
            sample.data.write(&mut w.buf);
        }
    }
    w.finish()
}

impl SampleData<'_> {
    /// `self`, or for AV1 data whose OBUs do not all carry sizes, the data as it is.
    fn checked(self) -> Option<Self> {
        match self {
            SampleData::Av1(data) if self.size().is_none() => Some(SampleData::Plain(data)),
            other => Some(other),
        }
    }

    /// The number of bytes [`SampleData::write`] appends; `None` if the data does not parse
    /// as the form says (or exceeds 4 GiB).
    fn size(&self) -> Option<u32> {
        let mut total = 0u64;
        match *self {
            SampleData::Plain(data) => total = data.len() as u64,
            SampleData::Relength { data, len_size } => {
                for nal in nal_units(data, len_size) {
                    total += 4 + nal.ok()?.len() as u64;
                }
            }
            SampleData::Av1(data) => {
                for obu in obus(data) {
                    let (obu_type, obu) = obu.ok()?;
                    if obu_type != OBU_TEMPORAL_DELIMITER {
                        total += obu.len() as u64;
                    }
                }
            }
        }
        u32::try_from(total).ok()
    }

    /// Appends the sample's bytes (only called after [`SampleData::size`] succeeded).
    fn write(&self, out: &mut BytesMut) {
        match *self {
            SampleData::Plain(data) => out.put_slice(data),
            SampleData::Relength { data, len_size } => {
                for nal in nal_units(data, len_size).flatten() {
                    out.put_u32(nal.len() as u32);
                    out.put_slice(nal);
                }
            }
            SampleData::Av1(data) => {
                for (obu_type, obu) in obus(data).flatten() {
                    if obu_type != OBU_TEMPORAL_DELIMITER {
                        out.put_slice(obu);
                    }
                }
            }
        }
    }
}

/// The NAL units of length-prefixed data; an `Err(())` item where a length runs past the end.
fn nal_units(data: &[u8], len_size: u8) -> impl Iterator<Item = Result<&[u8], ()>> {
    let len_size = usize::from(len_size);
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(prefix) = rest.get(..len_size) else {
            rest = &[];
            return Some(Err(()));
        };
        let len = prefix
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        let Some(nal) = rest.get(len_size..len_size.saturating_add(len)) else {
            rest = &[];
            return Some(Err(()));
        };
        rest = &rest[len_size + len..];
        Some(Ok(nal))
    })
}

const OBU_TEMPORAL_DELIMITER: u8 = 2;

/// The OBUs of AV1 data (type, whole OBU with header); an `Err(())` item where an OBU has no
/// size field or runs past the end.
fn obus(data: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), ()>> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let header = *rest.first()?;
        let obu_type = (header >> 3) & 0x0f;
        let extension = usize::from(header & 0x04 != 0);
        let has_size = header & 0x02 != 0;
        let mut at = 1 + extension;
        let mut size = 0usize;
        let mut ok = has_size;
        if has_size {
            ok = false;
            for i in 0..8 {
                let Some(&b) = rest.get(at) else { break };
                at += 1;
                size |= usize::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    ok = true;
                    break;
                }
            }
        }
        let end = at.checked_add(size).filter(|&e| ok && e <= rest.len());
        let Some(end) = end else {
            rest = &[];
            return Some(Err(()));
        };
        let obu = &rest[..end];
        rest = &rest[end..];
        Some(Ok((obu_type, obu)))
    })
}

/// `ms` in ticks of `timescale`, rounded to the nearest tick.
fn ms_to_ticks(ms: u64, timescale: u32) -> u64 {
    let ticks = (u128::from(ms) * u128::from(timescale) + 500) / 1000;
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

fn clamp_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// A box writer: boxes are size-prefixed and nest; the size is patched when a box closes.
struct Writer {
    buf: BytesMut,
}

impl Writer {
    fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: BytesMut::with_capacity(capacity),
        }
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    /// A box of type `fourcc` whose body `body` writes.
    fn boxed(&mut self, fourcc: &[u8; 4], body: impl FnOnce(&mut Writer)) {
        let start = self.buf.len();
        self.buf.put_u32(0);
        self.buf.put_slice(fourcc);
        body(self);
        // Only an mdat could pass 4 GiB, and that one is written by hand.
        let size = u32::try_from(self.buf.len() - start).unwrap_or(u32::MAX);
        self.patch_u32(start, size);
    }

    /// A full box: version and flags, then `body`.
    fn full(&mut self, fourcc: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut Writer)) {
        self.boxed(fourcc, |w| {
            w.u32(u32::from(version) << 24 | (flags & 0x00ff_ffff));
            body(w);
        });
    }

    fn patch_u32(&mut self, at: usize, value: u32) {
        self.buf[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    fn u16(&mut self, v: u16) {
        self.buf.put_u16(v);
    }

    fn u32(&mut self, v: u32) {
        self.buf.put_u32(v);
    }

    fn u64(&mut self, v: u64) {
        self.buf.put_u64(v);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.buf.put_slice(b);
    }

    fn zeros(&mut self, n: usize) {
        self.buf.put_bytes(0, n);
    }

    /// The identity transformation matrix of `mvhd` and `tkhd`.
    fn matrix(&mut self) {
        for v in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000u32] {
            self.u32(v);
        }
    }

    /// A `trak` with its header, media header, handler, media information and an empty
    /// sample table whose only content is the sample description `entry` writes.
    fn trak(
        &mut self,
        track_id: u32,
        timescale: u32,
        width: u32,
        height: u32,
        entry: impl FnOnce(&mut Writer),
    ) {
        let video = track_id == VIDEO_TRACK_ID;
        self.boxed(b"trak", |w| {
            // flags: track enabled, in movie.
            w.full(b"tkhd", 0, 3, |w| {
                w.u32(0); // creation_time
                w.u32(0); // modification_time
                w.u32(track_id);
                w.u32(0);
                w.u32(0); // duration
                w.zeros(8);
                w.u16(0); // layer
                w.u16(0); // alternate_group
                w.u16(if video { 0 } else { 0x0100 }); // volume
                w.u16(0);
                w.matrix();
                w.u32(u32::from(clamp_u16(width)) << 16);
                w.u32(u32::from(clamp_u16(height)) << 16);
            });
            w.boxed(b"mdia", |w| {
                w.full(b"mdhd", 0, 0, |w| {
                    w.u32(0);
                    w.u32(0);
                    w.u32(timescale);
                    w.u32(0); // duration
                    w.u16(0x55c4); // language "und"
                    w.u16(0);
                });
                w.full(b"hdlr", 0, 0, |w| {
                    w.u32(0);
                    w.bytes(if video { b"vide" } else { b"soun" });
                    w.zeros(12);
                    w.bytes(if video {
                        b"VideoHandler\0"
                    } else {
                        b"SoundHandler\0"
                    });
                });
                w.boxed(b"minf", |w| {
                    if video {
                        w.full(b"vmhd", 0, 1, |w| w.zeros(8));
                    } else {
                        w.full(b"smhd", 0, 0, |w| w.zeros(4));
                    }
                    w.boxed(b"dinf", |w| {
                        w.full(b"dref", 0, 0, |w| {
                            w.u32(1);
                            // flags 1: the media is in this file.
                            w.full(b"url ", 0, 1, |_| {});
                        });
                    });
                    w.boxed(b"stbl", |w| {
                        w.full(b"stsd", 0, 0, |w| {
                            w.u32(1);
                            entry(w);
                        });
                        w.full(b"stts", 0, 0, |w| w.u32(0));
                        w.full(b"stsc", 0, 0, |w| w.u32(0));
                        w.full(b"stsz", 0, 0, |w| w.zeros(8));
                        w.full(b"stco", 0, 0, |w| w.u32(0));
                    });
                });
            });
        });
    }

    fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests;
