//! MPEG-TS muxing for classic HLS segments, the container of players that predate fMP4 HLS.
//!
//! [`TsMuxer`] owns one stream's transport-stream state: the program tables (PAT, PMT), the
//! continuity counters of every PID, and the codec configuration the elementary streams need
//! in-band (H.264/HEVC parameter sets before every keyframe, an ADTS header on every AAC
//! frame), because TS, unlike fMP4, has no init segment. It turns [`Frame`]s into 188-byte
//! packets, one PES per frame, without I/O; the caller decides where segments start and calls
//! [`TsMuxer::write_tables`] there so that each segment decodes on its own.
//!
//! Carried: H.264 and HEVC video (length-prefixed NAL units become Annex B with an access
//! unit delimiter), AAC (as ADTS) and MP3 audio. Anything else is refused at construction.

use bytes::{BufMut, BytesMut};
use sluice_media::flv::{AudioPacketType, AudioTag, VideoPacketType, VideoTag};
use sluice_media::{CodecId, Frame, FrameKind};

/// The size of every transport stream packet.
pub const PACKET_LEN: usize = 188;
/// The PID of the program map table.
pub const PMT_PID: u16 = 0x1000;
/// The PID of the video elementary stream.
pub const VIDEO_PID: u16 = 0x100;
/// The PID of the audio elementary stream.
pub const AUDIO_PID: u16 = 0x101;

const SYNC_BYTE: u8 = 0x47;
const PAT_PID: u16 = 0;
const PROGRAM_NUMBER: u16 = 1;
const TRANSPORT_STREAM_ID: u16 = 1;
/// Packet payload room after the 4-byte header.
const PAYLOAD_ROOM: usize = PACKET_LEN - 4;
/// PES stream ids: the first video and the first audio stream.
const VIDEO_STREAM_ID: u8 = 0xe0;
const AUDIO_STREAM_ID: u8 = 0xc0;
/// Timestamps (PTS, DTS, PCR base) are 33-bit counts of a 90 kHz clock.
const TIMESTAMP_MODULUS: i128 = 1 << 33;
/// How far the program clock runs behind the decode time of the frame it is sent with, in
/// 90 kHz ticks (100 ms): the decoder's buffer model wants a frame's bytes to arrive before
/// the frame is due, and old set-top boxes, the players TS is for, follow that model.
const PCR_LEAD: i128 = 9_000;
const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// An H.264 access unit delimiter NAL unit (primary_pic_type 7: any slice type).
const AVC_AUD: [u8; 6] = [0, 0, 0, 1, 0x09, 0xf0];
/// An HEVC access unit delimiter NAL unit (type 35, temporal id 1; pic_type 2: any slice).
const HEVC_AUD: [u8; 7] = [0, 0, 0, 1, 0x46, 0x01, 0x50];
/// Sampling frequencies by their MPEG-4 audio index (the ADTS header carries the index).
const AAC_SAMPLE_RATES: [u32; 13] = [
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
];

/// Why a [`TsMuxer`] could not be made for a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TsError {
    /// The stream's codec cannot be carried in MPEG-TS by this muxer (use fMP4).
    #[error("codec {0:?} is not supported in MPEG-TS")]
    Unsupported(CodecId),
    /// A frame given as a sequence header is not one, or its configuration does not parse.
    #[error("bad {0}")]
    BadConfig(&'static str),
    /// Neither a video nor an audio sequence header was given.
    #[error("no audio or video stream to mux")]
    NoStreams,
}

/// The video codecs carried, with their PMT stream types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VideoCodec {
    Avc,
    Hevc,
}

impl VideoCodec {
    fn id(self) -> CodecId {
        match self {
            VideoCodec::Avc => CodecId::Avc,
            VideoCodec::Hevc => CodecId::Hevc,
        }
    }

    fn stream_type(self) -> u8 {
        match self {
            VideoCodec::Avc => 0x1b,
            VideoCodec::Hevc => 0x24,
        }
    }

    fn is_aud(self, nal: &[u8]) -> bool {
        match self {
            VideoCodec::Avc => nal[0] & 0x1f == 9,
            VideoCodec::Hevc => (nal[0] >> 1) & 0x3f == 35,
        }
    }
}

/// What a video configuration record says that the TS form needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VideoConfig {
    /// Bytes of the big-endian length in front of every NAL unit (1, 2 or 4).
    length_size: usize,
    /// The record's parameter sets (SPS/PPS; VPS/SPS/PPS) in Annex B form, start codes
    /// included: written before every keyframe.
    parameter_sets: Vec<u8>,
}

#[derive(Debug)]
struct VideoTrack {
    codec: VideoCodec,
    config: VideoConfig,
    cc: u8,
}

/// The fields of an ADTS header that come from the AudioSpecificConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AdtsConfig {
    /// MPEG-4 audio object type minus one (1 = AAC LC).
    profile: u8,
    /// Index into [`AAC_SAMPLE_RATES`].
    sample_rate_index: u8,
    /// Channel configuration, 1..=7.
    channels: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AudioCodec {
    Aac(AdtsConfig),
    /// MPEG audio layer III frames carry their own headers. The stream type is 0x03
    /// (MPEG-1) or 0x04 (MPEG-2 half sample rates).
    Mp3 {
        stream_type: u8,
    },
}

impl AudioCodec {
    fn id(self) -> CodecId {
        match self {
            AudioCodec::Aac(_) => CodecId::Aac,
            AudioCodec::Mp3 { .. } => CodecId::Mp3,
        }
    }

    fn stream_type(self) -> u8 {
        match self {
            AudioCodec::Aac(_) => 0x0f,
            AudioCodec::Mp3 { stream_type } => stream_type,
        }
    }
}

#[derive(Debug)]
struct AudioTrack {
    codec: AudioCodec,
    cc: u8,
}

/// One stream's MPEG-TS muxer: frames in, 188-byte packets out. See the module docs.
#[derive(Debug)]
pub struct TsMuxer {
    video: Option<VideoTrack>,
    audio: Option<AudioTrack>,
    /// The PAT and PMT sections (CRC included); fixed for the muxer's life.
    pat: Vec<u8>,
    pmt: Vec<u8>,
    pat_cc: u8,
    pmt_cc: u8,
    /// One video frame's Annex B bytes, reused from frame to frame.
    es: Vec<u8>,
    skipped: u64,
}

impl TsMuxer {
    /// A muxer for a stream with these sequence-header frames: video = a legacy AVC or an
    /// enhanced `avc1`/`hvc1` (or legacy id 12 HEVC) sequence start; audio = an AAC sequence
    /// header, or any MP3 frame (MP3 has no sequence header). Either may be `None`, not both.
    /// Other codecs are [`TsError::Unsupported`]: the caller falls back to fMP4 or refuses.
    pub fn new(video: Option<&Frame>, audio: Option<&Frame>) -> Result<TsMuxer, TsError> {
        let video = match video {
            Some(f) => {
                let (codec, config) = video_config(f)?;
                Some(VideoTrack {
                    codec,
                    config,
                    cc: 0,
                })
            }
            None => None,
        };
        let audio = match audio {
            Some(f) => Some(AudioTrack {
                codec: audio_codec(f)?,
                cc: 0,
            }),
            None => None,
        };
        if video.is_none() && audio.is_none() {
            return Err(TsError::NoStreams);
        }
        let mut streams = Vec::new();
        if let Some(v) = &video {
            streams.push((v.codec.stream_type(), VIDEO_PID));
        }
        if let Some(a) = &audio {
            streams.push((a.codec.stream_type(), AUDIO_PID));
        }
        let pcr_pid = if video.is_some() {
            VIDEO_PID
        } else {
            AUDIO_PID
        };
        Ok(TsMuxer {
            video,
            audio,
            pat: pat_section(),
            pmt: pmt_section(pcr_pid, &streams),
            pat_cc: 0,
            pmt_cc: 0,
            es: Vec::new(),
            skipped: 0,
        })
    }

    /// Writes the PAT and the PMT (one packet each). Call it at the start of every segment
    /// (and part), so that each can be decoded alone.
    pub fn write_tables(&mut self, out: &mut BytesMut) {
        out.reserve(2 * PACKET_LEN);
        write_section(out, PAT_PID, &mut self.pat_cc, &self.pat);
        write_section(out, PMT_PID, &mut self.pmt_cc, &self.pmt);
    }

    /// Writes one frame as one PES. H.264/HEVC frames become Annex B, after an access unit
    /// delimiter, with the record's parameter sets before every keyframe; AAC frames get an
    /// ADTS header. PTS/DTS are the frame's times ×90 (33-bit wrap). The PCR goes with every
    /// video frame (every audio frame if there is no video), the random access indicator
    /// with keyframes (every audio frame if there is no video).
    ///
    /// Writes nothing for script data, sequence ends and video metadata or command frames.
    /// A sequence header of the stream's codec writes nothing either but replaces the
    /// configuration the following frames use (a change of codec needs a new muxer). Frames
    /// of another codec or of a bad payload are skipped and counted
    /// ([`TsMuxer::skipped_frames`]); nothing a publisher sends makes this panic.
    pub fn write_frame(&mut self, frame: &Frame, out: &mut BytesMut) {
        let written = match frame.kind {
            FrameKind::Script => Ok(()),
            FrameKind::Video => self.write_video(frame, out),
            FrameKind::Audio => self.write_audio(frame, out),
        };
        if written.is_err() {
            self.skipped += 1;
        }
    }

    /// How many frames [`TsMuxer::write_frame`] skipped: another codec than the stream's, a
    /// kind of stream the muxer has no track for, or a payload that does not parse.
    pub fn skipped_frames(&self) -> u64 {
        self.skipped
    }

    fn write_video(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), Skip> {
        let track = self.video.as_mut().ok_or(Skip)?;
        let tag = VideoTag::parse(&frame.payload).map_err(|_| Skip)?;
        if tag.codec != track.codec.id() {
            return Err(Skip);
        }
        let data = tag.data(&frame.payload);
        match tag.packet_type {
            VideoPacketType::CodedFrames | VideoPacketType::CodedFramesX => {}
            VideoPacketType::SequenceStart => {
                track.config = parse_video_record(track.codec, data).ok_or(Skip)?;
                return Ok(());
            }
            _ => return Ok(()),
        }
        self.es.clear();
        self.es.extend_from_slice(match track.codec {
            VideoCodec::Avc => &AVC_AUD[..],
            VideoCodec::Hevc => &HEVC_AUD[..],
        });
        if frame.keyframe {
            self.es.extend_from_slice(&track.config.parameter_sets);
        }
        if !append_annex_b(&mut self.es, data, track.config.length_size, track.codec) {
            return Err(Skip);
        }
        let dts = frame_ticks(frame.dts, 0);
        let pts = frame_ticks(frame.dts, frame.cts);
        let pes = Pes {
            pid: VIDEO_PID,
            stream_id: VIDEO_STREAM_ID,
            pts,
            dts: (dts != pts).then_some(dts),
            pcr: Some(pcr_ticks(frame.dts)),
            random_access: frame.keyframe,
        };
        write_pes(out, &mut track.cc, &pes, [&self.es, &[]]);
        Ok(())
    }

    fn write_audio(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), Skip> {
        let track = self.audio.as_mut().ok_or(Skip)?;
        let tag = AudioTag::parse(&frame.payload).map_err(|_| Skip)?;
        if tag.codec != track.codec.id() {
            return Err(Skip);
        }
        let data = tag.data(&frame.payload);
        match tag.packet_type {
            AudioPacketType::CodedFrames => {}
            AudioPacketType::SequenceStart => {
                if let AudioCodec::Aac(_) = track.codec {
                    track.codec = AudioCodec::Aac(parse_audio_specific_config(data).ok_or(Skip)?);
                }
                return Ok(());
            }
            _ => return Ok(()),
        }
        if data.is_empty() {
            return Err(Skip);
        }
        let adts;
        let prefix: &[u8] = match track.codec {
            AudioCodec::Aac(config) => {
                adts = adts_header(config, data.len()).ok_or(Skip)?;
                &adts
            }
            AudioCodec::Mp3 { .. } => &[],
        };
        // Without video, every audio frame is where a player can start, and carries the clock.
        let audio_only = self.video.is_none();
        let pes = Pes {
            pid: AUDIO_PID,
            stream_id: AUDIO_STREAM_ID,
            pts: frame_ticks(frame.dts, 0),
            dts: None,
            pcr: audio_only.then(|| pcr_ticks(frame.dts)),
            random_access: audio_only,
        };
        write_pes(out, &mut track.cc, &pes, [prefix, data]);
        Ok(())
    }
}

/// A frame [`TsMuxer::write_frame`] skips.
#[derive(Debug)]
struct Skip;

fn video_config(frame: &Frame) -> Result<(VideoCodec, VideoConfig), TsError> {
    if frame.kind != FrameKind::Video {
        return Err(TsError::BadConfig(
            "video sequence header: not a video frame",
        ));
    }
    let tag = VideoTag::parse(&frame.payload)
        .map_err(|_| TsError::BadConfig("video sequence header: tag header"))?;
    let codec = match tag.codec {
        CodecId::Avc => VideoCodec::Avc,
        CodecId::Hevc => VideoCodec::Hevc,
        other => return Err(TsError::Unsupported(other)),
    };
    if tag.packet_type != VideoPacketType::SequenceStart {
        return Err(TsError::BadConfig(
            "video sequence header: not a sequence start",
        ));
    }
    let config = parse_video_record(codec, tag.data(&frame.payload))
        .ok_or(TsError::BadConfig("video configuration record"))?;
    Ok((codec, config))
}

fn audio_codec(frame: &Frame) -> Result<AudioCodec, TsError> {
    if frame.kind != FrameKind::Audio {
        return Err(TsError::BadConfig(
            "audio sequence header: not an audio frame",
        ));
    }
    let tag = AudioTag::parse(&frame.payload)
        .map_err(|_| TsError::BadConfig("audio sequence header: tag header"))?;
    match tag.codec {
        CodecId::Aac => {
            if tag.packet_type != AudioPacketType::SequenceStart {
                return Err(TsError::BadConfig(
                    "audio sequence header: not a sequence start",
                ));
            }
            let config = parse_audio_specific_config(tag.data(&frame.payload))
                .ok_or(TsError::BadConfig("AudioSpecificConfig"))?;
            Ok(AudioCodec::Aac(config))
        }
        CodecId::Mp3 => {
            let rate = sluice_media::audio_info(&frame.payload).map_or(0, |i| i.sample_rate);
            let stream_type = if rate != 0 && rate < 32000 {
                0x04
            } else {
                0x03
            };
            Ok(AudioCodec::Mp3 { stream_type })
        }
        other => Err(TsError::Unsupported(other)),
    }
}

/// A cursor over a configuration record; every read is `None` past the end.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.data.split_at_checked(n)?;
        self.data = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A NAL unit behind a 16-bit length, as both records list parameter sets.
    fn nal(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

fn parse_video_record(codec: VideoCodec, record: &[u8]) -> Option<VideoConfig> {
    match codec {
        VideoCodec::Avc => parse_avcc(record),
        VideoCodec::Hevc => parse_hvcc(record),
    }
}

fn length_size(byte: u8) -> Option<usize> {
    match byte & 3 {
        2 => None,
        n => Some(usize::from(n) + 1),
    }
}

fn push_nal(out: &mut Vec<u8>, nal: &[u8]) {
    if !nal.is_empty() {
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(nal);
    }
}

/// AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1): version, profile, compatibility,
/// level, length size, then the SPS and PPS lists. The High-profile tail is not needed.
fn parse_avcc(record: &[u8]) -> Option<VideoConfig> {
    let mut r = Reader { data: record };
    if r.u8()? != 1 {
        return None;
    }
    r.take(3)?;
    let length_size = length_size(r.u8()?)?;
    let mut parameter_sets = Vec::new();
    for _ in 0..r.u8()? & 0x1f {
        push_nal(&mut parameter_sets, r.nal()?);
    }
    for _ in 0..r.u8()? {
        push_nal(&mut parameter_sets, r.nal()?);
    }
    Some(VideoConfig {
        length_size,
        parameter_sets,
    })
}

/// HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1): 21 bytes of profile and format
/// fields, the length size, then arrays of NAL units by type. VPS, SPS and PPS are kept, in
/// that order whatever the record's order; SEI arrays are left out.
fn parse_hvcc(record: &[u8]) -> Option<VideoConfig> {
    let mut r = Reader { data: record };
    if r.u8()? != 1 {
        return None;
    }
    r.take(20)?;
    let length_size = length_size(r.u8()?)?;
    let mut sets: Vec<(u8, &[u8])> = Vec::new();
    for _ in 0..r.u8()? {
        let nal_type = r.u8()? & 0x3f;
        for _ in 0..r.u16()? {
            let nal = r.nal()?;
            if (32..=34).contains(&nal_type) {
                sets.push((nal_type, nal));
            }
        }
    }
    sets.sort_by_key(|&(nal_type, _)| nal_type);
    let mut parameter_sets = Vec::new();
    for (_, nal) in sets {
        push_nal(&mut parameter_sets, nal);
    }
    Some(VideoConfig {
        length_size,
        parameter_sets,
    })
}

/// Appends the length-prefixed NAL units of `data` as Annex B (each behind a 4-byte start
/// code), leaving out access unit delimiters (the muxer writes its own first). False if a
/// length runs past the end of `data` or no NAL unit is left.
fn append_annex_b(out: &mut Vec<u8>, data: &[u8], length_size: usize, codec: VideoCodec) -> bool {
    let mut rest = data;
    let mut any = false;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_at_checked(length_size) else {
            return false;
        };
        let len = len.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
        let Some((nal, tail)) = tail.split_at_checked(len) else {
            return false;
        };
        rest = tail;
        if nal.is_empty() || codec.is_aud(nal) {
            continue;
        }
        push_nal(out, nal);
        any = true;
    }
    any
}

/// Reads the fields an ADTS header repeats from an AudioSpecificConfig (ISO/IEC 14496-3
/// 1.6.2.1). Explicitly signalled HE-AAC (SBR, PS) is written as its AAC LC core at the core
/// rate; decoders find the SBR data in the stream. `None` for what ADTS cannot describe: object
/// types above 4, rates outside the index table, a channel layout given by a PCE.
fn parse_audio_specific_config(asc: &[u8]) -> Option<AdtsConfig> {
    let mut bits = Bits { data: asc, pos: 0 };
    let mut object_type = bits.object_type()?;
    let sample_rate_index = bits.sample_rate_index()?;
    let channels = bits.read(4)? as u8;
    if object_type == 5 || object_type == 29 {
        bits.sample_rate_index()?;
        object_type = bits.object_type()?;
    }
    if !(1..=4).contains(&object_type) || !(1..=7).contains(&channels) {
        return None;
    }
    Some(AdtsConfig {
        profile: object_type as u8 - 1,
        sample_rate_index,
        channels,
    })
}

/// MSB-first bits of a short configuration.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn read(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            v = v << 1 | u32::from(byte >> (7 - self.pos % 8) & 1);
            self.pos += 1;
        }
        Some(v)
    }

    fn object_type(&mut self) -> Option<u32> {
        match self.read(5)? {
            31 => Some(32 + self.read(6)?),
            t => Some(t),
        }
    }

    /// The sampling frequency index; an explicit 24-bit rate is mapped to its index.
    fn sample_rate_index(&mut self) -> Option<u8> {
        match self.read(4)? {
            15 => {
                let rate = self.read(24)?;
                AAC_SAMPLE_RATES
                    .iter()
                    .position(|&r| r == rate)
                    .map(|i| i as u8)
            }
            i if (i as usize) < AAC_SAMPLE_RATES.len() => Some(i as u8),
            _ => None,
        }
    }
}

/// The 7-byte ADTS header (no CRC) of a raw AAC frame of `payload_len` bytes; `None` if the
/// frame is too long for the 13-bit frame length.
fn adts_header(config: AdtsConfig, payload_len: usize) -> Option<[u8; 7]> {
    let frame_len = payload_len.checked_add(7).filter(|&n| n < 1 << 13)?;
    let AdtsConfig {
        profile,
        sample_rate_index,
        channels,
    } = config;
    Some([
        0xff,
        // MPEG-4, layer 0, no CRC.
        0xf1,
        profile << 6 | sample_rate_index << 2 | channels >> 2,
        (channels & 3) << 6 | (frame_len >> 11) as u8,
        (frame_len >> 3) as u8,
        // Buffer fullness 0x7ff: variable rate.
        ((frame_len & 7) as u8) << 5 | 0x1f,
        0xfc,
    ])
}

/// 90 kHz ticks of `ms + offset_ms`, wrapped to 33 bits.
fn frame_ticks(ms: u64, offset_ms: i32) -> u64 {
    ((i128::from(ms) + i128::from(offset_ms)) * 90).rem_euclid(TIMESTAMP_MODULUS) as u64
}

/// The program clock sent with a frame decoded at `dts_ms`: [`PCR_LEAD`] earlier, never
/// below zero (so it only ever moves forward, until the 33-bit wrap).
fn pcr_ticks(dts_ms: u64) -> u64 {
    (i128::from(dts_ms) * 90 - PCR_LEAD)
        .max(0)
        .rem_euclid(TIMESTAMP_MODULUS) as u64
}

/// A PTS or DTS field: 4-bit prefix, then the 33 bits in groups of 3, 15 and 15, each
/// followed by a marker bit.
fn encode_timestamp(prefix: u8, ticks: u64) -> [u8; 5] {
    let hi = ((ticks >> 15) & 0x7fff) << 1 | 1;
    let lo = (ticks & 0x7fff) << 1 | 1;
    [
        prefix << 4 | ((ticks >> 29) & 0x0e) as u8 | 1,
        (hi >> 8) as u8,
        hi as u8,
        (lo >> 8) as u8,
        lo as u8,
    ]
}

/// A PCR field: 33-bit base, 6 reserved bits, 9-bit extension (0).
fn encode_pcr(base: u64) -> [u8; 6] {
    [
        (base >> 25) as u8,
        (base >> 17) as u8,
        (base >> 9) as u8,
        (base >> 1) as u8,
        ((base & 1) as u8) << 7 | 0x7e,
        0,
    ]
}

/// MPEG-2 CRC-32 (polynomial 0x04c11db7, MSB first, initial all ones, no final XOR), as PSI
/// sections end with.
fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in data {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                crc << 1 ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A long-form PSI section: `table_id`, the section length, `id` (transport stream id or
/// program number), version 0 current, section 0 of 0, `body`, CRC.
fn psi_section(table_id: u8, id: u16, body: &[u8]) -> Vec<u8> {
    // Everything after the length field: id, version byte, two section numbers, body, CRC.
    let section_len = 5 + body.len() + 4;
    let mut s = Vec::with_capacity(3 + section_len);
    s.push(table_id);
    // Section syntax indicator, '0', reserved '11', 12-bit length.
    s.extend_from_slice(&(0xb000 | section_len as u16).to_be_bytes());
    s.extend_from_slice(&id.to_be_bytes());
    // Reserved '11', version 0, current_next_indicator 1.
    s.push(0xc1);
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

/// The PAT: one program, whose PMT is on [`PMT_PID`].
fn pat_section() -> Vec<u8> {
    let mut body = PROGRAM_NUMBER.to_be_bytes().to_vec();
    body.extend_from_slice(&(0xe000 | PMT_PID).to_be_bytes());
    psi_section(0x00, TRANSPORT_STREAM_ID, &body)
}

/// The PMT: the PCR PID, no program descriptors, then each `(stream_type, pid)`.
fn pmt_section(pcr_pid: u16, streams: &[(u8, u16)]) -> Vec<u8> {
    let mut body = (0xe000 | pcr_pid).to_be_bytes().to_vec();
    body.extend_from_slice(&[0xf0, 0x00]);
    for &(stream_type, pid) in streams {
        body.push(stream_type);
        body.extend_from_slice(&(0xe000 | pid).to_be_bytes());
        body.extend_from_slice(&[0xf0, 0x00]);
    }
    psi_section(0x02, PROGRAM_NUMBER, &body)
}

/// The 4-byte packet header. `cc` is advanced: every packet here carries payload.
fn put_packet_header(
    out: &mut BytesMut,
    pid: u16,
    unit_start: bool,
    adaptation: bool,
    cc: &mut u8,
) {
    out.put_u8(SYNC_BYTE);
    out.put_u16(u16::from(unit_start) << 14 | pid & 0x1fff);
    out.put_u8(if adaptation { 0x30 } else { 0x10 } | *cc);
    *cc = (*cc + 1) & 0x0f;
}

/// One section in one packet (ours are short): header, pointer field 0, section, 0xff fill.
fn write_section(out: &mut BytesMut, pid: u16, cc: &mut u8, section: &[u8]) {
    put_packet_header(out, pid, true, false, cc);
    out.put_u8(0);
    out.put_slice(section);
    out.put_bytes(0xff, PAYLOAD_ROOM - 1 - section.len());
}

/// What goes in one PES packet's header and its first TS packet's adaptation field.
#[derive(Debug)]
struct Pes {
    pid: u16,
    stream_id: u8,
    pts: u64,
    /// Only when it differs from the PTS.
    dts: Option<u64>,
    pcr: Option<u64>,
    random_access: bool,
}

/// Writes one PES packet carrying `es` (the concatenation of its slices) as TS packets: the
/// first carries the PES header (and the PCR and random access flag in its adaptation field),
/// the last is filled up with adaptation field stuffing.
fn write_pes(out: &mut BytesMut, cc: &mut u8, pes: &Pes, es: [&[u8]; 2]) {
    let mut header = [0u8; 19];
    let header_data_len = if pes.dts.is_some() { 10 } else { 5 };
    let header_len = 9 + header_data_len;
    let es_len = es[0].len() + es[1].len();
    // PES_packet_length counts the bytes after it; 0 (unbounded) when it does not fit.
    let pes_len = u16::try_from(3 + header_data_len + es_len).unwrap_or(0);
    header[..4].copy_from_slice(&[0, 0, 1, pes.stream_id]);
    header[4..6].copy_from_slice(&pes_len.to_be_bytes());
    // Marker '10', data_alignment_indicator: the PES starts with an access unit.
    header[6] = 0x84;
    header[7] = if pes.dts.is_some() { 0xc0 } else { 0x80 };
    header[8] = header_data_len as u8;
    match pes.dts {
        Some(dts) => {
            header[9..14].copy_from_slice(&encode_timestamp(0b0011, pes.pts));
            header[14..19].copy_from_slice(&encode_timestamp(0b0001, dts));
        }
        None => header[9..14].copy_from_slice(&encode_timestamp(0b0010, pes.pts)),
    }
    let mut parts = [&header[..header_len], es[0], es[1]];
    let mut remaining = header_len + es_len;
    out.reserve((remaining / PAYLOAD_ROOM + 2) * PACKET_LEN);
    let mut first = true;
    while remaining > 0 {
        // The adaptation field the first packet needs: a flags byte, and the PCR.
        let pcr = if first { pes.pcr } else { None };
        let random_access = first && pes.random_access;
        let fields_len = if pcr.is_some() || random_access {
            1 + if pcr.is_some() { 6 } else { 0 }
        } else {
            0
        };
        // The adaptation field's own length byte comes on top of its fields.
        let room = PAYLOAD_ROOM - if fields_len > 0 { 1 + fields_len } else { 0 };
        let payload_len = remaining.min(room);
        let stuffing = room - payload_len;
        let adaptation = fields_len > 0 || stuffing > 0;
        put_packet_header(out, pes.pid, first, adaptation, cc);
        if fields_len > 0 {
            out.put_u8((fields_len + stuffing) as u8);
            out.put_u8(u8::from(random_access) << 6 | u8::from(pcr.is_some()) << 4);
            if let Some(pcr) = pcr {
                out.put_slice(&encode_pcr(pcr));
            }
            out.put_bytes(0xff, stuffing);
        } else if stuffing > 0 {
            // An adaptation field of length 0 is the one byte of its length; longer ones
            // need their flags byte before the stuffing.
            out.put_u8((stuffing - 1) as u8);
            if stuffing > 1 {
                out.put_u8(0);
                out.put_bytes(0xff, stuffing - 2);
            }
        }
        take_into(out, &mut parts, payload_len);
        remaining -= payload_len;
        first = false;
    }
}

/// Moves the next `n` bytes of the concatenation of `parts` to `out`.
fn take_into(out: &mut BytesMut, parts: &mut [&[u8]], mut n: usize) {
    for part in parts.iter_mut() {
        if n == 0 {
            break;
        }
        let k = n.min(part.len());
        out.put_slice(&part[..k]);
        *part = &part[k..];
        n -= k;
    }
}

#[cfg(test)]
mod tests;
