//! Codec identities, and what their configuration records say: profile, level and picture
//! size of a video sequence header (AVC, HEVC, AV1, VP9), sample rate and channels of an
//! audio one (AAC, Opus, FLAC, and MP3 frame headers).
//!
//! These parsers feed metadata (logs, metrics, the admin API, HLS `CODECS`), never the media
//! path: they return `None` on anything they do not understand and never panic.

use crate::bits::{BitReader, rbsp};
use crate::flv::{AudioPacketType, AudioTag, VideoPacketType, VideoTag};

/// A codec as FLV tag headers name it (legacy ids or enhanced FourCCs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CodecId {
    /// H.264 / AVC (legacy codec id 7, or FourCC `avc1`).
    Avc,
    /// H.265 / HEVC (FourCC `hvc1`, or the de-facto legacy codec id 12).
    Hevc,
    /// AV1 (FourCC `av01`).
    Av1,
    /// VP9 (FourCC `vp09`).
    Vp9,
    /// AAC (legacy sound format 10, or FourCC `mp4a`).
    Aac,
    /// MP3 (legacy sound formats 2 and 14, or FourCC `.mp3`).
    Mp3,
    /// Opus (FourCC `Opus`).
    Opus,
    /// Script data (AMF0).
    Amf0,
    /// Anything else: carried through untouched.
    Other,
    /// VP8 (FourCC `vp08`).
    Vp8,
    /// H.266 / VVC (FourCC `vvc1`).
    Vvc,
    /// FLAC (FourCC `fLaC`).
    Flac,
    /// AC-3 (FourCC `ac-3`).
    Ac3,
    /// E-AC-3 (FourCC `ec-3`).
    Eac3,
}

impl CodecId {
    /// The codec an Enhanced RTMP FourCC names ([`CodecId::Other`] if unknown).
    pub fn from_fourcc(fourcc: [u8; 4]) -> CodecId {
        match &fourcc {
            b"avc1" => CodecId::Avc,
            b"hvc1" => CodecId::Hevc,
            b"av01" => CodecId::Av1,
            b"vp09" => CodecId::Vp9,
            b"vp08" => CodecId::Vp8,
            b"vvc1" => CodecId::Vvc,
            b"mp4a" => CodecId::Aac,
            b".mp3" => CodecId::Mp3,
            b"Opus" => CodecId::Opus,
            b"fLaC" => CodecId::Flac,
            b"ac-3" => CodecId::Ac3,
            b"ec-3" => CodecId::Eac3,
            _ => CodecId::Other,
        }
    }

    /// A stable number for the codec, for wire formats that carry it (the node-to-node
    /// relay): numbers are never reused, and a new codec takes a new one.
    pub fn to_u8(self) -> u8 {
        match self {
            CodecId::Other => 0,
            CodecId::Amf0 => 1,
            CodecId::Avc => 2,
            CodecId::Hevc => 3,
            CodecId::Av1 => 4,
            CodecId::Vp9 => 5,
            CodecId::Vp8 => 6,
            CodecId::Vvc => 7,
            CodecId::Aac => 8,
            CodecId::Mp3 => 9,
            CodecId::Opus => 10,
            CodecId::Flac => 11,
            CodecId::Ac3 => 12,
            CodecId::Eac3 => 13,
        }
    }

    /// The codec [`to_u8`](Self::to_u8) gave `n`; `None` for a number no codec has.
    pub fn from_u8(n: u8) -> Option<CodecId> {
        Some(match n {
            0 => CodecId::Other,
            1 => CodecId::Amf0,
            2 => CodecId::Avc,
            3 => CodecId::Hevc,
            4 => CodecId::Av1,
            5 => CodecId::Vp9,
            6 => CodecId::Vp8,
            7 => CodecId::Vvc,
            8 => CodecId::Aac,
            9 => CodecId::Mp3,
            10 => CodecId::Opus,
            11 => CodecId::Flac,
            12 => CodecId::Ac3,
            13 => CodecId::Eac3,
            _ => return None,
        })
    }
}

/// What a video sequence header says about the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VideoInfo {
    /// Codec.
    pub codec: Option<CodecId>,
    /// Profile, as a name where the codec has names ("High", "Main", ...).
    pub profile: String,
    /// Level, codec-specific notation ("3.1" for AVC, HEVC and AV1, "4.1" for VP9).
    pub level: String,
    /// Display width in pixels (after cropping); 0 if the header does not tell.
    pub width: u32,
    /// Display height in pixels (after cropping); 0 if the header does not tell.
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

/// Describes a video sequence header, given the whole tag body of a video frame whose
/// `seq_header` flag is set (legacy AVC, or enhanced `avc1`/`hvc1`/`av01`/`vp09`).
pub fn video_info(seq_header_payload: &[u8]) -> Option<VideoInfo> {
    let tag = VideoTag::parse(seq_header_payload).ok()?;
    if tag.packet_type != VideoPacketType::SequenceStart {
        return None;
    }
    let record = tag.data(seq_header_payload);
    let mut info = match tag.codec {
        CodecId::Avc => avc::parse(record)?,
        CodecId::Hevc => hevc::parse(record)?,
        CodecId::Av1 => av1::parse(record)?,
        CodecId::Vp9 => vp9(record)?,
        _ => return None,
    };
    info.codec = Some(tag.codec);
    Some(info)
}

/// Describes an audio stream from an audio tag body: an AAC AudioSpecificConfig or Opus/FLAC
/// sequence start, or any MP3 (or other legacy) frame, whose headers carry the format.
pub fn audio_info(payload: &[u8]) -> Option<AudioInfo> {
    let tag = AudioTag::parse(payload).ok()?;
    let data = tag.data(payload);
    let seq_start = tag.packet_type == AudioPacketType::SequenceStart;
    let mut info = match tag.codec {
        CodecId::Aac if seq_start => aac(data)?,
        CodecId::Opus if seq_start => opus(data)?,
        CodecId::Flac if seq_start => flac(data)?,
        CodecId::Mp3 => mp3(data).or_else(|| legacy_audio(&tag))?,
        CodecId::Other if tag.fourcc.is_none() => legacy_audio(&tag)?,
        _ => return None,
    };
    info.codec = Some(tag.codec);
    Some(info)
}

/// "X.Y" from a level number expressed in tenths (AVC `level_idc`, VP9 `level`).
fn tenths(level: u32) -> String {
    format!("{}.{}", level / 10, level % 10)
}

/// Whether coded video `data` (length-prefixed NAL units, 4-byte lengths as every FLV
/// muxer we know writes them) holds only non-reference pictures: H.264 slices with
/// `nal_ref_idc` 0, or HEVC sub-layer non-reference slices (the `_N` types). Nothing decodes
/// from such a frame, so a late viewer can drop it without breaking the picture. Other codecs,
/// and data that does not parse, are `false`.
pub fn is_non_reference(codec: CodecId, data: &[u8]) -> bool {
    let mut rest = data;
    let mut saw_slice = false;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(nal) = rest.get(4..4 + len).filter(|n| !n.is_empty()) else {
            return false;
        };
        rest = &rest[4 + len..];
        let reference = match codec {
            CodecId::Avc => {
                let nal_type = nal[0] & 0x1f;
                if !(1..=5).contains(&nal_type) {
                    continue;
                }
                nal[0] & 0x60 != 0
            }
            CodecId::Hevc => {
                let nal_type = (nal[0] >> 1) & 0x3f;
                if nal_type > 31 {
                    continue;
                }
                // Types 0..=14 that are even are sub-layer non-reference; 16.. are IRAP.
                !(nal_type <= 14 && nal_type % 2 == 0)
            }
            _ => return false,
        };
        if reference {
            return false;
        }
        saw_slice = true;
    }
    saw_slice && rest.is_empty()
}

mod avc {
    //! AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3) and the H.264 SPS (7.3.2.1).

    use super::*;

    pub(super) fn parse(record: &[u8]) -> Option<VideoInfo> {
        // version, profile, compatibility, level, length size, SPS count, SPS length.
        let (&count, rest) = record.get(5..)?.split_first()?;
        if count & 0x1f == 0 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        let sps = rest.get(2..2 + len)?;
        sps_info(sps.get(1..)?)
    }

    /// Parses an SPS RBSP after its NAL header byte.
    fn sps_info(nal: &[u8]) -> Option<VideoInfo> {
        let data = rbsp(nal);
        let mut r = BitReader::new(&data);
        let profile = r.bits(8)?;
        let constraints = r.bits(8)?;
        let level = r.bits(8)?;
        r.ue()?; // seq_parameter_set_id
        let (mut chroma_format, mut separate_planes) = (1, false);
        if matches!(
            profile,
            100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
        ) {
            chroma_format = r.ue()?;
            if chroma_format == 3 {
                separate_planes = r.bit()?;
            }
            r.ue()?; // bit_depth_luma_minus8
            r.ue()?; // bit_depth_chroma_minus8
            r.bit()?; // qpprime_y_zero_transform_bypass_flag
            if r.bit()? {
                for i in 0..if chroma_format == 3 { 12 } else { 8 } {
                    if r.bit()? {
                        skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }
        r.ue()?; // log2_max_frame_num_minus4
        match r.ue()? {
            0 => {
                r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
            }
            1 => {
                r.bit()?;
                r.se()?;
                r.se()?;
                for _ in 0..r.ue()?.min(256) {
                    r.se()?;
                }
            }
            _ => {}
        }
        r.ue()?; // max_num_ref_frames
        r.bit()?; // gaps_in_frame_num_value_allowed_flag
        let width_mbs = u64::from(r.ue()?) + 1;
        let height_units = u64::from(r.ue()?) + 1;
        let frame_mbs_only = r.bit()?;
        if !frame_mbs_only {
            r.bit()?; // mb_adaptive_frame_field_flag
        }
        r.bit()?; // direct_8x8_inference_flag
        let field_factor = if frame_mbs_only { 1 } else { 2 };
        let (mut crop_x, mut crop_y) = (0u64, 0u64);
        if r.bit()? {
            // Crop offsets count chroma samples (7.4.2.1.1), so scale by the subsampling.
            let (unit_x, unit_y) = match (separate_planes, chroma_format) {
                (true, _) | (_, 0) => (1, field_factor),
                (_, 1) => (2, 2 * field_factor),
                (_, 2) => (2, field_factor),
                _ => (1, field_factor),
            };
            crop_x = unit_x * (u64::from(r.ue()?) + u64::from(r.ue()?));
            crop_y = unit_y * (u64::from(r.ue()?) + u64::from(r.ue()?));
        }
        let width = (width_mbs * 16).saturating_sub(crop_x);
        let height = (field_factor * height_units * 16).saturating_sub(crop_y);
        let level = if level == 9
            || (level == 11 && constraints & 0x10 != 0 && matches!(profile, 66 | 77 | 88))
        {
            "1b".to_owned()
        } else {
            tenths(level)
        };
        Some(VideoInfo {
            codec: None,
            profile: profile_name(profile, constraints),
            level,
            width: u32::try_from(width).ok()?,
            height: u32::try_from(height).ok()?,
        })
    }

    fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Option<()> {
        let (mut last, mut next) = (8i32, 8i32);
        for _ in 0..size {
            if next != 0 {
                next = (last + r.se()?).rem_euclid(256);
            }
            if next != 0 {
                last = next;
            }
        }
        Some(())
    }

    fn profile_name(profile: u32, constraints: u32) -> String {
        match profile {
            66 if constraints & 0x40 != 0 => "Constrained Baseline",
            66 => "Baseline",
            77 => "Main",
            88 => "Extended",
            100 => "High",
            110 => "High 10",
            122 => "High 4:2:2",
            244 => "High 4:4:4 Predictive",
            44 => "CAVLC 4:4:4 Intra",
            _ => return format!("profile {profile}"),
        }
        .to_owned()
    }
}

mod hevc {
    //! HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3) and the H.265 SPS (7.3.2.2).

    use super::*;

    const SPS: u8 = 33;

    pub(super) fn parse(record: &[u8]) -> Option<VideoInfo> {
        let general = record.get(1)?;
        let level = u32::from(*record.get(12)?);
        let info = VideoInfo {
            profile: profile_name(u32::from(general & 0x1f)),
            level: level_name(level),
            ..VideoInfo::default()
        };
        // Byte 22 counts the arrays that follow: type (low 6 bits), NAL count, length-prefixed NALs.
        let mut rest = record.get(23..)?;
        for _ in 0..*record.get(22)? {
            let nal_type = rest.first()? & 0x3f;
            let count = u16::from_be_bytes(rest.get(1..3)?.try_into().ok()?);
            rest = rest.get(3..)?;
            for _ in 0..count {
                let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
                let nal = rest.get(2..2 + len)?;
                rest = &rest[2 + len..];
                if nal_type == SPS {
                    // The SPS is authoritative; the record's copy of the fields may be stale.
                    return Some(sps_info(nal.get(2..)?).unwrap_or(info));
                }
            }
        }
        Some(info)
    }

    fn sps_info(nal: &[u8]) -> Option<VideoInfo> {
        let data = rbsp(nal);
        let mut r = BitReader::new(&data);
        r.bits(4)?; // sps_video_parameter_set_id
        let sub_layers = r.bits(3)?; // sps_max_sub_layers_minus1
        r.bit()?; // sps_temporal_id_nesting_flag
        // profile_tier_level(1, sps_max_sub_layers_minus1): general part is 88 bits + level.
        r.bits(3)?;
        let profile = r.bits(5)?;
        r.skip(32 + 48)?;
        let level = r.bits(8)?;
        let mut present = [(false, false); 8];
        for p in present.iter_mut().take(sub_layers as usize) {
            *p = (r.bit()?, r.bit()?);
        }
        if sub_layers > 0 {
            r.skip(2 * (8 - sub_layers as usize))?;
        }
        for &(profile_present, level_present) in present.iter().take(sub_layers as usize) {
            r.skip(if profile_present { 88 } else { 0 } + if level_present { 8 } else { 0 })?;
        }
        r.ue()?; // sps_seq_parameter_set_id
        let chroma_format = r.ue()?;
        let separate_planes = chroma_format == 3 && r.bit()?;
        let width = r.ue()?;
        let height = r.ue()?;
        let (mut crop_x, mut crop_y) = (0u64, 0u64);
        if r.bit()? {
            let (unit_x, unit_y) = match (separate_planes, chroma_format) {
                (false, 1) => (2, 2),
                (false, 2) => (2, 1),
                _ => (1, 1),
            };
            crop_x = unit_x * (u64::from(r.ue()?) + u64::from(r.ue()?));
            crop_y = unit_y * (u64::from(r.ue()?) + u64::from(r.ue()?));
        }
        Some(VideoInfo {
            codec: None,
            profile: profile_name(profile),
            level: level_name(level),
            width: u64::from(width).saturating_sub(crop_x) as u32,
            height: u64::from(height).saturating_sub(crop_y) as u32,
        })
    }

    fn profile_name(profile: u32) -> String {
        match profile {
            1 => "Main",
            2 => "Main 10",
            3 => "Main Still Picture",
            4 => "Rext",
            5 => "High Throughput",
            9 => "SCC",
            _ => return format!("profile {profile}"),
        }
        .to_owned()
    }

    /// `general_level_idc` is 30 times the level number (A.4.1): 93 is "3.1".
    fn level_name(level: u32) -> String {
        format!("{}.{}", level / 30, level % 30 / 3)
    }
}

mod av1 {
    //! AV1CodecConfigurationRecord (av1C, AV1-ISOBMFF 2.3) and the sequence header OBU (AV1
    //! spec 5.5) among its configOBUs.

    use super::*;

    const OBU_SEQUENCE_HEADER: u32 = 1;

    pub(super) fn parse(record: &[u8]) -> Option<VideoInfo> {
        if record.first()? & 0x80 == 0 {
            return None; // marker bit
        }
        let b1 = *record.get(1)?;
        let fallback = VideoInfo {
            profile: profile_name(u32::from(b1 >> 5)),
            level: level_name(u32::from(b1 & 0x1f)),
            ..VideoInfo::default()
        };
        let mut obus = record.get(4..)?;
        while !obus.is_empty() {
            let mut r = BitReader::new(obus);
            r.bit()?; // obu_forbidden_bit
            let obu_type = r.bits(4)?;
            let extension = r.bit()?;
            let has_size = r.bit()?;
            let mut start = 1 + usize::from(extension);
            let size = if has_size {
                let (size, n) = leb128(obus.get(start..)?)?;
                start += n;
                usize::try_from(size).ok()?
            } else {
                obus.len().checked_sub(start)?
            };
            let payload = obus.get(start..start.checked_add(size)?)?;
            if obu_type == OBU_SEQUENCE_HEADER {
                return Some(sequence_header(payload).unwrap_or(fallback));
            }
            obus = &obus[start + size..];
        }
        Some(fallback)
    }

    fn leb128(data: &[u8]) -> Option<(u64, usize)> {
        let mut value = 0u64;
        for (i, b) in data.iter().take(8).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some((value, i + 1));
            }
        }
        None
    }

    fn sequence_header(payload: &[u8]) -> Option<VideoInfo> {
        let mut r = BitReader::new(payload);
        let profile = r.bits(3)?;
        r.bit()?; // still_picture
        let level;
        if r.bit()? {
            // reduced_still_picture_header
            level = r.bits(5)?;
        } else {
            let mut delay_len = 0;
            let timing_info = r.bit()?;
            if timing_info {
                r.skip(64)?; // num_units_in_display_tick, time_scale
                if r.bit()? {
                    r.uvlc()?; // num_ticks_per_picture_minus_1
                }
            }
            let decoder_model = timing_info && r.bit()?;
            if decoder_model {
                delay_len = r.bits(5)? as usize + 1;
                r.skip(32 + 5 + 5)?;
            }
            let initial_display_delay = r.bit()?;
            let points = r.bits(5)? + 1;
            let mut first_level = None;
            for _ in 0..points {
                r.skip(12)?; // operating_point_idc
                let idx = r.bits(5)?;
                first_level.get_or_insert(idx);
                if idx > 7 {
                    r.bit()?; // seq_tier
                }
                if decoder_model && r.bit()? {
                    r.skip(2 * delay_len + 1)?;
                }
                if initial_display_delay && r.bit()? {
                    r.skip(4)?;
                }
            }
            level = first_level?;
        }
        let width_bits = r.bits(4)? + 1;
        let height_bits = r.bits(4)? + 1;
        let width = u64::from(r.bits(width_bits)?) + 1;
        let height = u64::from(r.bits(height_bits)?) + 1;
        Some(VideoInfo {
            codec: None,
            profile: profile_name(profile),
            level: level_name(level),
            width: u32::try_from(width).ok()?,
            height: u32::try_from(height).ok()?,
        })
    }

    fn profile_name(profile: u32) -> String {
        match profile {
            0 => "Main",
            1 => "High",
            2 => "Professional",
            _ => return format!("profile {profile}"),
        }
        .to_owned()
    }

    /// `seq_level_idx` counts minor levels from 2.0 (Annex A.3); 31 means unconstrained.
    fn level_name(idx: u32) -> String {
        if idx == 31 {
            "max".to_owned()
        } else {
            format!("{}.{}", 2 + idx / 4, idx % 4)
        }
    }
}

/// VPCodecConfigurationRecord (vpcC, VP Codec ISO Media File Format 2.2). The record carries
/// no picture size; width and height stay 0.
fn vp9(record: &[u8]) -> Option<VideoInfo> {
    // ffmpeg writes the vpcC FullBox version and flags in front of the record (1, 0, 0, 0);
    // bare records start with a profile (0..=3) and a bit-depth nibble that is never 0.
    let record = match record {
        [1, 0, 0, 0, rest @ ..] => rest,
        _ => record,
    };
    let [profile, level, ..] = *record else {
        return None;
    };
    Some(VideoInfo {
        profile: format!("Profile {profile}"),
        level: tenths(u32::from(level)),
        ..VideoInfo::default()
    })
}

/// Sampling frequencies by index (ISO/IEC 14496-3 1.6.3.4).
const AAC_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1). For explicitly signalled SBR/PS (HE-AAC)
/// the output rate and channel count are reported, not the core's.
fn aac(asc: &[u8]) -> Option<AudioInfo> {
    let mut r = BitReader::new(asc);
    let object_type = |r: &mut BitReader<'_>| match r.bits(5)? {
        31 => Some(32 + r.bits(6)?),
        t => Some(t),
    };
    let rate = |r: &mut BitReader<'_>| match r.bits(4)? {
        15 => r.bits(24),
        i => AAC_RATES.get(i as usize).copied(),
    };
    let aot = object_type(&mut r)?;
    let mut sample_rate = rate(&mut r)?;
    let config = r.bits(4)?;
    let mut channels = match config {
        7 => 8,
        c => c as u8,
    };
    if aot == 5 || aot == 29 {
        sample_rate = rate(&mut r)?;
        if aot == 29 {
            channels = 2; // parametric stereo decodes mono to stereo
        }
    }
    let profile = match aot {
        1 => "Main".to_owned(),
        2 => "LC".to_owned(),
        3 => "SSR".to_owned(),
        4 => "LTP".to_owned(),
        5 => "HE-AAC".to_owned(),
        29 => "HE-AACv2".to_owned(),
        23 => "LD".to_owned(),
        39 => "ELD".to_owned(),
        t => format!("AOT {t}"),
    };
    Some(AudioInfo {
        codec: None,
        profile,
        sample_rate,
        channels,
    })
}

/// The Opus ID header (RFC 7845 5.1). Opus always decodes at 48 kHz; the header's input rate
/// is informational only.
fn opus(head: &[u8]) -> Option<AudioInfo> {
    if head.get(..8)? != b"OpusHead" {
        return None;
    }
    let channels = *head.get(9)?;
    Some(AudioInfo {
        codec: None,
        profile: String::new(),
        sample_rate: 48000,
        channels,
    })
}

/// FLAC STREAMINFO (RFC 9639 8.2). ffmpeg sends the bare 34-byte block; a `fLaC` marker and
/// a metadata block header in front are accepted too (a bare block never starts with one: its
/// minimum block size is at least 16).
fn flac(data: &[u8]) -> Option<AudioInfo> {
    let mut data = data.strip_prefix(b"fLaC").unwrap_or(data);
    if let [0x00 | 0x80, 0, 0, 34, rest @ ..] = data {
        data = rest;
    }
    // Skip min/max block size (2 + 2) and min/max frame size (3 + 3).
    let mut r = BitReader::new(data.get(10..)?);
    let sample_rate = r.bits(20)?;
    let channels = r.bits(3)? as u8 + 1;
    (sample_rate > 0).then(|| AudioInfo {
        codec: None,
        profile: String::new(),
        sample_rate,
        channels,
    })
}

/// An MPEG audio frame header (ISO/IEC 11172-3 2.4.1.3, with the MPEG-2 and 2.5 rates): more
/// exact than the FLV tag bits, which cannot say 48 kHz.
fn mp3(frame: &[u8]) -> Option<AudioInfo> {
    let [a, b, c, d, ..] = *frame else {
        return None;
    };
    if a != 0xff || b & 0xe0 != 0xe0 {
        return None;
    }
    let base = match c >> 2 & 3 {
        0 => 44100,
        1 => 48000,
        2 => 32000,
        _ => return None,
    };
    let sample_rate = match b >> 3 & 3 {
        3 => base,     // MPEG-1
        2 => base / 2, // MPEG-2
        0 => base / 4, // MPEG-2.5
        _ => return None,
    };
    let channels = if d >> 6 == 3 { 1 } else { 2 };
    Some(AudioInfo {
        codec: None,
        profile: String::new(),
        sample_rate,
        channels,
    })
}

/// What the legacy tag bits say, for formats whose frames we do not parse.
fn legacy_audio(tag: &AudioTag) -> Option<AudioInfo> {
    let sample_rate = match tag.sound_format {
        // Nellymoser 8/16 kHz, MP3 8 kHz and G.711 have fixed rates whatever the bits say.
        5 | 7 | 8 | 14 => 8000,
        4 | 11 => 16000,
        _ => [5512, 11025, 22050, 44100][usize::from(tag.sound_rate)],
    };
    let channels = tag.sound_type + 1;
    Some(AudioInfo {
        codec: None,
        profile: String::new(),
        sample_rate,
        channels,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn codec_numbers_roundtrip_and_are_distinct() {
        use super::CodecId;
        let mut seen = std::collections::HashSet::new();
        for n in 0..=u8::MAX {
            if let Some(codec) = CodecId::from_u8(n) {
                assert_eq!(codec.to_u8(), n, "{codec:?}");
                assert!(seen.insert(codec), "{codec:?} has two numbers");
            }
        }
        assert_eq!(seen.len(), 14, "every codec has a number");
        assert_eq!(CodecId::from_u8(14), None);
    }

    #[test]
    fn non_reference_pictures_are_recognised() {
        use super::{CodecId, is_non_reference};
        let nal = |bytes: &[u8]| {
            let mut v = (bytes.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(bytes);
            v
        };
        // H.264: SEI then a non-reference B slice; a reference P slice; an IDR.
        let b = [nal(&[0x06, 5, 1, 0]), nal(&[0x01, 0x9e, 0x20])].concat();
        assert!(is_non_reference(CodecId::Avc, &b));
        assert!(!is_non_reference(CodecId::Avc, &nal(&[0x41, 0x9a])));
        assert!(!is_non_reference(CodecId::Avc, &nal(&[0x65, 0x88])));
        // No slice at all, a cut length, other codecs: not droppable.
        assert!(!is_non_reference(CodecId::Avc, &nal(&[0x06, 5])));
        assert!(!is_non_reference(CodecId::Avc, &[0, 0, 0, 9, 1]));
        assert!(!is_non_reference(CodecId::Av1, &b));
        // HEVC: TRAIL_N (0) is droppable, TRAIL_R (1) and IDR (19) are not.
        assert!(is_non_reference(CodecId::Hevc, &nal(&[0x00, 0x01, 0xaa])));
        assert!(!is_non_reference(CodecId::Hevc, &nal(&[0x02, 0x01, 0xaa])));
        assert!(!is_non_reference(CodecId::Hevc, &nal(&[0x26, 0x01, 0xaa])));
    }

    use super::*;

    #[test]
    fn aac_configs() {
        let lc = audio_info(&[0xaf, 0, 0x12, 0x10]).unwrap();
        assert_eq!(
            (lc.codec, lc.profile.as_str(), lc.sample_rate, lc.channels),
            (Some(CodecId::Aac), "LC", 44100, 2)
        );
        // HE-AAC v1, explicit: AOT 5, core 24 kHz stereo, extension 48 kHz, AOT 2.
        let he = aac(&[0x2b, 0x11, 0x88, 0x00]).unwrap();
        assert_eq!(
            (he.profile.as_str(), he.sample_rate, he.channels),
            ("HE-AAC", 48000, 2)
        );
        // HE-AAC v2: AOT 29, 22.05 kHz mono core, 44.1 kHz extension.
        let v2 = aac(&[0xeb, 0x8a, 0x08, 0x00]).unwrap();
        assert_eq!(
            (v2.profile.as_str(), v2.sample_rate, v2.channels),
            ("HE-AACv2", 44100, 2)
        );
        // Explicit 24-bit rate (index 15): AOT 2, rate 0x00_1f40 = 8000, mono.
        let ex = aac(&[0x17, 0x80, 0x0f, 0xa0, 0x08]).unwrap();
        assert_eq!((ex.sample_rate, ex.channels), (8000, 1));
        assert_eq!(aac(&[0x12]), None);
        assert_eq!(
            audio_info(&[0xaf, 1, 0x21]),
            None,
            "raw AAC frames say nothing"
        );
    }

    #[test]
    fn opus_and_flac() {
        let mut body = vec![0x90, b'O', b'p', b'u', b's'];
        body.extend(b"OpusHead\x01\x06\x38\x01\x44\xac\x00\x00\x00\x00\x01");
        let i = audio_info(&body).unwrap();
        assert_eq!(
            (i.codec, i.sample_rate, i.channels),
            (Some(CodecId::Opus), 48000, 6)
        );
        let mut body = vec![
            0x90, b'f', b'L', b'a', b'C', b'f', b'L', b'a', b'C', 0x80, 0, 0, 34,
        ];
        body.extend([0x10, 0, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        body.extend([0x0b, 0xb8, 0x02, 0xf0]); // 48000 Hz, 2 channels, 16-bit
        let i = audio_info(&body).unwrap();
        assert_eq!(
            (i.codec, i.sample_rate, i.channels),
            (Some(CodecId::Flac), 48000, 2)
        );
        // As ffmpeg 8 writes it: the bare STREAMINFO block (1024-sample blocks, 48 kHz stereo).
        let body = b"\x90fLaC\x04\x00\x04\x00\x00\x00\x00\x00\x10\x98\x0b\xb8\x02\xf0\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00";
        let i = audio_info(body).unwrap();
        assert_eq!((i.sample_rate, i.channels), (48000, 2));
    }

    #[test]
    fn mp3_and_legacy() {
        // Enhanced .mp3 carrying an MPEG-1 48 kHz joint-stereo frame header.
        let i = audio_info(&[0x91, b'.', b'm', b'p', b'3', 0xff, 0xfb, 0x94, 0x40]).unwrap();
        assert_eq!(
            (i.codec, i.sample_rate, i.channels),
            (Some(CodecId::Mp3), 48000, 2)
        );
        // Legacy MP3 with no frame header: the tag bits (44 kHz, stereo).
        assert_eq!(
            audio_info(&[0x2f]).map(|i| (i.sample_rate, i.channels)),
            Some((44100, 2))
        );
        // Speex is 16 kHz mono.
        assert_eq!(
            audio_info(&[0xb2, 0]).map(|i| (i.sample_rate, i.channels, i.codec)),
            Some((16000, 1, Some(CodecId::Other)))
        );
    }

    #[test]
    fn avc_sps_with_cropping() {
        // x264 Baseline 3.0 SPS for 1920x1080 (1088 coded, cropped by 8 rows).
        let mut body = vec![0x17, 0, 0, 0, 0, 1, 0x42, 0xc0, 0x28, 0xff, 0xe1, 0, 0x0c];
        body.extend([
            0x67, 0x42, 0xc0, 0x28, 0xda, 0x01, 0xe0, 0x08, 0x9f, 0x96, 0x10, 0x00,
        ]);
        let i = video_info(&body).unwrap();
        assert_eq!(
            (i.profile.as_str(), i.level.as_str(), i.width, i.height),
            ("Constrained Baseline", "4.0", 1920, 1080)
        );
        assert_eq!(video_info(&body[..body.len() - 6]), None, "truncated SPS");
        assert_eq!(
            video_info(&[0x17, 1, 0, 0, 0]),
            None,
            "not a sequence header"
        );
    }

    #[test]
    fn av1_reduced_still_picture_and_fallback() {
        // av1C with one sequence header OBU: profile 0, reduced still picture, level 8 (4.0),
        // 4-bit width/height fields: 15 + 1 = 16 x 9 + 1 = 10.
        let obu = [0x0a, 0x04, 0x1a, 0x0c, 0xfe, 0x40];
        let mut body = vec![0x90, b'a', b'v', b'0', b'1', 0x81, 0x08, 0x0c, 0x00];
        body.extend(obu);
        let i = video_info(&body).unwrap();
        assert_eq!(
            (i.profile.as_str(), i.level.as_str(), i.width, i.height),
            ("Main", "4.0", 16, 10)
        );
        // Without configOBUs the record's own profile and level are reported.
        let i = video_info(&body[..9]).unwrap();
        assert_eq!(
            (i.codec, i.level.as_str(), i.width),
            (Some(CodecId::Av1), "4.0", 0)
        );
    }

    #[test]
    fn vp9_records() {
        let i = video_info(&[
            0x90, b'v', b'p', b'0', b'9', 1, 0, 0, 0, 2, 41, 0xa2, 1, 1, 1, 0, 0,
        ])
        .unwrap();
        assert_eq!(
            (i.profile.as_str(), i.level.as_str(), i.width),
            ("Profile 2", "4.1", 0)
        );
        let i = video_info(&[0x90, b'v', b'p', b'0', b'9', 0, 31, 0x82, 1, 1, 1, 0, 0]).unwrap();
        assert_eq!(i.level, "3.1");
    }

    proptest::proptest! {
        #[test]
        fn info_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            let _ = video_info(&body);
            let _ = audio_info(&body);
            for head in [&b"\x17\x00\x00\x00\x00"[..], b"\x90hvc1", b"\x90av01", b"\x90vp09", b"\xaf\x00", b"\x90Opus", b"\x90fLaC", b"\x2f"] {
                let mut b = head.to_vec();
                b.extend(&body);
                let _ = video_info(&b);
                let _ = audio_info(&b);
            }
        }
    }
}
