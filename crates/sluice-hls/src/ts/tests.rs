//! Unit tests of the TS muxer. The output is read back with a small TS/PES reader written
//! here from the specification, not with the muxer's own helpers.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use sluice_media::{CodecId, Frame, FrameKind, FrameParts};

use super::*;

// ---- inputs ----

const SPS: [u8; 4] = [0x67, 0x64, 0x00, 0x1f];
const PPS: [u8; 3] = [0x68, 0xeb, 0xe3];

fn avcc() -> Vec<u8> {
    let mut r = vec![1, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0, SPS.len() as u8];
    r.extend_from_slice(&SPS);
    r.extend_from_slice(&[1, 0, PPS.len() as u8]);
    r.extend_from_slice(&PPS);
    r
}

fn video(dts: u64, body: Vec<u8>) -> Frame {
    Frame::parse(FrameKind::Video, dts, Bytes::from(body)).expect("video frame")
}

fn audio(dts: u64, body: Vec<u8>) -> Frame {
    Frame::parse(FrameKind::Audio, dts, Bytes::from(body)).expect("audio frame")
}

fn avc_seq(record: &[u8]) -> Frame {
    let mut body = vec![0x17, 0, 0, 0, 0];
    body.extend_from_slice(record);
    video(0, body)
}

/// A legacy AVC coded frame of `nalus`, each behind a 4-byte length.
fn avc_frame(dts: u64, cts: i32, key: bool, nalus: &[&[u8]]) -> Frame {
    let [_, c0, c1, c2] = cts.to_be_bytes();
    let mut body = vec![if key { 0x17 } else { 0x27 }, 1, c0, c1, c2];
    for nal in nalus {
        body.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        body.extend_from_slice(nal);
    }
    video(dts, body)
}

fn aac_seq(asc: &[u8]) -> Frame {
    let mut body = vec![0xaf, 0];
    body.extend_from_slice(asc);
    audio(0, body)
}

fn aac_frame(dts: u64, raw: &[u8]) -> Frame {
    let mut body = vec![0xaf, 1];
    body.extend_from_slice(raw);
    audio(dts, body)
}

/// An enhanced `hvc1` sequence start whose record lists PPS, VPS, SPS in that order.
fn hevc_seq() -> Frame {
    let mut body = vec![0x90];
    body.extend_from_slice(b"hvc1");
    body.push(1);
    body.extend_from_slice(&[0; 20]);
    body.push(0xf3); // length size 4
    body.push(3);
    for (nal_type, nal) in [
        (34u8, &[0x44, 0x01, 0xc1][..]),
        (32, &[0x40, 0x01, 0x0c][..]),
        (33, &[0x42, 0x01, 0x01][..]),
    ] {
        body.extend_from_slice(&[0x80 | nal_type, 0, 1, 0, nal.len() as u8]);
        body.extend_from_slice(nal);
    }
    video(0, body)
}

// ---- a reader of what the muxer wrote ----

#[derive(Debug)]
struct Packet {
    pid: u16,
    unit_start: bool,
    cc: u8,
    /// The adaptation field after its length byte, if there is one.
    adaptation: Option<Vec<u8>>,
    payload: Vec<u8>,
}

fn packets(ts: &[u8]) -> Vec<Packet> {
    assert_eq!(ts.len() % 188, 0, "whole packets");
    ts.chunks(188)
        .map(|p| {
            assert_eq!(p[0], 0x47, "sync byte");
            assert_eq!(p[1] & 0x80, 0, "no transport error");
            let control = p[3] >> 4 & 3;
            assert!(control == 1 || control == 3, "payload always: {control}");
            let mut at = 4;
            let adaptation = (control == 3).then(|| {
                let len = usize::from(p[4]);
                at = 5 + len;
                assert!(at <= 188, "adaptation field fits");
                p[5..at].to_vec()
            });
            Packet {
                pid: u16::from(p[1] & 0x1f) << 8 | u16::from(p[2]),
                unit_start: p[1] & 0x40 != 0,
                cc: p[3] & 0x0f,
                adaptation,
                payload: p[at..].to_vec(),
            }
        })
        .collect()
}

/// One PES packet as read back.
#[derive(Debug)]
struct ReadPes {
    pid: u16,
    stream_id: u8,
    pts: u64,
    dts: Option<u64>,
    es: Vec<u8>,
    /// The first TS packet's adaptation field flags, and its PCR base.
    flags: u8,
    pcr: Option<u64>,
}

fn decode_timestamp(b: &[u8], prefix: u8) -> u64 {
    assert_eq!(b[0] >> 4, prefix, "timestamp prefix");
    assert!(
        b[0] & 1 == 1 && b[2] & 1 == 1 && b[4] & 1 == 1,
        "marker bits"
    );
    (u64::from(b[0] >> 1 & 7) << 30)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}

fn parse_pes(pid: u16, first: &Packet, bytes: &[u8]) -> ReadPes {
    assert_eq!(&bytes[..3], &[0, 0, 1], "PES start code");
    let declared = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
    if declared != 0 {
        assert_eq!(declared, bytes.len() - 6, "PES_packet_length");
    }
    assert_eq!(bytes[6] & 0xc0, 0x80, "marker bits '10'");
    let pts_dts = bytes[7] >> 6;
    let header_len = usize::from(bytes[8]);
    let (pts, dts) = match pts_dts {
        2 => (decode_timestamp(&bytes[9..14], 2), None),
        3 => (
            decode_timestamp(&bytes[9..14], 3),
            Some(decode_timestamp(&bytes[14..19], 1)),
        ),
        other => panic!("PTS_DTS_flags {other}"),
    };
    let (mut flags, mut pcr) = (0, None);
    if let Some(af) = first.adaptation.as_ref().filter(|af| !af.is_empty()) {
        flags = af[0];
        if flags & 0x10 != 0 {
            let b = &af[1..7];
            pcr = Some(
                u64::from(b[0]) << 25
                    | u64::from(b[1]) << 17
                    | u64::from(b[2]) << 9
                    | u64::from(b[3]) << 1
                    | u64::from(b[4] >> 7),
            );
        }
    }
    ReadPes {
        pid,
        stream_id: bytes[3],
        pts,
        dts,
        es: bytes[9 + header_len..].to_vec(),
        flags,
        pcr,
    }
}

/// The PES packets of `ts` in the order they start, checking continuity counters and that
/// stuffing after the adaptation field's flags is all 0xff.
fn read_pes(ts: &[u8]) -> Vec<ReadPes> {
    let packets = packets(ts);
    let mut open: HashMap<u16, (usize, Vec<u8>)> = HashMap::new();
    let mut done = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        if p.pid == 0 || p.pid == PMT_PID {
            continue;
        }
        if p.unit_start {
            if let Some((first, bytes)) = open.remove(&p.pid) {
                done.push((first, p.pid, bytes));
            }
            open.insert(p.pid, (i, Vec::new()));
        }
        open.get_mut(&p.pid)
            .expect("PES starts with unit start")
            .1
            .extend_from_slice(&p.payload);
    }
    done.extend(
        open.into_iter()
            .map(|(pid, (first, bytes))| (first, pid, bytes)),
    );
    done.sort_by_key(|(first, _, _)| *first);
    done.into_iter()
        .map(|(first, pid, bytes)| parse_pes(pid, &packets[first], &bytes))
        .collect()
}

fn mux(video: Option<&Frame>, audio: Option<&Frame>, frames: &[Frame]) -> (TsMuxer, Vec<u8>) {
    let mut m = TsMuxer::new(video, audio).expect("muxer");
    let mut out = BytesMut::new();
    m.write_tables(&mut out);
    for f in frames {
        m.write_frame(f, &mut out);
    }
    (m, out.to_vec())
}

fn annex_b(nalus: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for n in nalus {
        v.extend_from_slice(&[0, 0, 0, 1]);
        v.extend_from_slice(n);
    }
    v
}

// ---- tests ----

#[test]
fn timestamps_encode_known_values() {
    assert_eq!(encode_timestamp(0b0010, 0), [0x21, 0x00, 0x01, 0x00, 0x01]);
    assert_eq!(
        encode_timestamp(0b0011, 0x1_2345_6789),
        [0x39, 0x8d, 0x15, 0xcf, 0x13]
    );
    assert_eq!(
        encode_timestamp(0b0001, (1 << 33) - 1),
        [0x1f, 0xff, 0xff, 0xff, 0xff]
    );
    assert_eq!(frame_ticks(1000, 40), 93_600);
    assert_eq!(frame_ticks(0, -40), (1 << 33) - 3600, "negative PTS wraps");
    assert_eq!(
        frame_ticks(95_443_718, 0),
        95_443_718 * 90 - (1 << 33),
        "33-bit wrap"
    );
    assert!(frame_ticks(u64::MAX, i32::MIN) < 1 << 33, "no overflow");
    assert_eq!(pcr_ticks(50), 0, "never below zero");
    assert_eq!(pcr_ticks(1000), 81_000);
}

#[test]
fn pes_headers_carry_pts_and_dts() {
    let key = avc_frame(1000, 40, true, &[&[0x65, 1]]);
    let inter = avc_frame(1040, 0, false, &[&[0x41, 2]]);
    let (_, ts) = mux(Some(&avc_seq(&avcc())), None, &[key, inter]);
    let pes = read_pes(&ts);
    assert_eq!(pes.len(), 2);
    assert_eq!((pes[0].pts, pes[0].dts), (93_600, Some(90_000)));
    assert_eq!(
        (pes[1].pts, pes[1].dts),
        (93_600, None),
        "DTS left out when equal"
    );
    assert_eq!(pes[0].stream_id, 0xe0);
    assert_eq!(pes[0].pcr, Some(90_000 - 9_000));
    assert_eq!(pes[0].flags & 0x40, 0x40, "random access on the keyframe");
    assert_eq!(pes[1].flags & 0x40, 0, "not on inter frames");
    assert_eq!(
        pes[1].pcr,
        Some(93_600 - 9_000),
        "PCR with every video frame"
    );
}

#[test]
fn adts_header_for_a_known_audio_specific_config() {
    // AAC LC (2), 44.1 kHz (index 4), stereo (2).
    let config = parse_audio_specific_config(&[0x12, 0x10]).expect("ASC");
    assert_eq!(
        config,
        AdtsConfig {
            profile: 1,
            sample_rate_index: 4,
            channels: 2
        }
    );
    let h = adts_header(config, 100).expect("header");
    assert_eq!(h, [0xff, 0xf1, 0x50, 0x80, 0x0d, 0x7f, 0xfc]);
    // The same fields read back bit by bit.
    let bits = u64::from_be_bytes([0, h[0], h[1], h[2], h[3], h[4], h[5], h[6]]);
    let field = |from: u32, len: u32| (bits >> (56 - from - len)) & ((1 << len) - 1);
    assert_eq!(field(0, 12), 0xfff, "syncword");
    assert_eq!(field(12, 1), 0, "MPEG-4");
    assert_eq!(field(15, 1), 1, "protection absent");
    assert_eq!(field(16, 2), 1, "profile: AAC LC");
    assert_eq!(field(18, 4), 4, "44.1 kHz");
    assert_eq!(field(23, 3), 2, "channels");
    assert_eq!(field(30, 13), 107, "frame length, header included");
    assert_eq!(field(43, 11), 0x7ff, "buffer fullness");
    assert_eq!(field(54, 2), 0, "one raw data block");

    // HE-AAC (SBR, 5) at a 22.05 kHz core, stereo, 44.1 kHz extension rate, AAC LC core:
    // written as its AAC LC core.
    assert_eq!(
        parse_audio_specific_config(&[0x2b, 0x92, 0x08]),
        Some(AdtsConfig {
            profile: 1,
            sample_rate_index: 7,
            channels: 2
        })
    );
    // An explicit 48 kHz (index 15 + 24 bits) maps onto its index.
    assert_eq!(
        parse_audio_specific_config(&[0x17, 0x80, 0x5d, 0xc0, 0x10]),
        Some(AdtsConfig {
            profile: 1,
            sample_rate_index: 3,
            channels: 2
        })
    );
    assert_eq!(
        parse_audio_specific_config(&[0x12, 0x00]),
        None,
        "PCE channels"
    );
    assert_eq!(parse_audio_specific_config(&[0x12]), None, "truncated");
    assert_eq!(
        parse_audio_specific_config(&[0x3a, 0x10]),
        None,
        "object type 7"
    );
    assert_eq!(adts_header(config, 8185), None, "13-bit frame length");
    assert!(adts_header(config, 8184).is_some());
}

#[test]
fn aac_frames_go_out_as_adts() {
    let raw = [0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c];
    let (_, ts) = mux(None, Some(&aac_seq(&[0x12, 0x10])), &[aac_frame(23, &raw)]);
    let pes = read_pes(&ts);
    assert_eq!(pes.len(), 1);
    assert_eq!((pes[0].pid, pes[0].stream_id), (AUDIO_PID, 0xc0));
    assert_eq!((pes[0].pts, pes[0].dts), (23 * 90, None));
    let mut want = adts_header(parse_audio_specific_config(&[0x12, 0x10]).unwrap(), 6)
        .unwrap()
        .to_vec();
    want.extend_from_slice(&raw);
    assert_eq!(pes[0].es, want);
    assert_eq!(
        (pes[0].flags & 0x40, pes[0].pcr),
        (0x40, Some(0)),
        "audio only: the clock and random access go with audio"
    );
}

#[test]
fn mp3_frames_go_out_as_they_are() {
    // MPEG-1 layer III, 128 kb/s, 44.1 kHz: its own header, no ADTS.
    let mp3 = [0xff, 0xfb, 0x90, 0x64, 0x00, 0x0f];
    let first = audio(0, [&[0x2f][..], &mp3].concat());
    let (m, ts) = mux(
        None,
        Some(&first),
        &[audio(26, [&[0x2f][..], &mp3].concat())],
    );
    let pes = read_pes(&ts);
    assert_eq!(
        (pes.len(), pes[0].pts, &pes[0].es[..]),
        (1, 26 * 90, &mp3[..])
    );
    assert_eq!(m.skipped_frames(), 0);
}

#[test]
fn annex_b_conversion_of_a_known_nalu_sequence() {
    let aud = [0x09, 0xf0];
    let idr = [0x65, 0x88, 0x84, 0x00];
    let sei = [0x06, 0x05, 0x01];
    let key = avc_frame(0, 0, true, &[&aud, &sei, &idr]);
    let inter = avc_frame(40, 0, false, &[&[0x41, 0x9a]]);
    let (m, ts) = mux(Some(&avc_seq(&avcc())), None, &[key, inter]);
    let pes = read_pes(&ts);
    assert_eq!(
        pes[0].es,
        annex_b(&[&aud, &SPS, &PPS, &sei, &idr]),
        "one AUD first, the parameter sets, then the frame's units"
    );
    assert_eq!(pes[1].es, annex_b(&[&aud, &[0x41, 0x9a]]));
    assert_eq!(m.skipped_frames(), 0);

    // 2-byte lengths, as a record may declare.
    let mut record = avcc();
    record[4] = 0xfd;
    let mut out = Vec::new();
    assert!(append_annex_b(
        &mut out,
        &[0, 2, 0x41, 1, 0, 1, 0x06],
        2,
        VideoCodec::Avc
    ));
    assert_eq!(out, annex_b(&[&[0x41, 1], &[0x06]]));
    assert_eq!(parse_avcc(&record).map(|c| c.length_size), Some(2));
    // Lengths that run past the end, or nothing but delimiters.
    assert!(!append_annex_b(
        &mut Vec::new(),
        &[0, 0, 0, 9, 0x65],
        4,
        VideoCodec::Avc
    ));
    assert!(!append_annex_b(
        &mut Vec::new(),
        &[0, 0, 0],
        4,
        VideoCodec::Avc
    ));
    assert!(!append_annex_b(
        &mut Vec::new(),
        &[0, 0, 0, 2, 0x09, 0xf0],
        4,
        VideoCodec::Avc
    ));
}

#[test]
fn hevc_keyframes_get_vps_sps_pps() {
    let idr = [0x26, 0x01, 0xaf];
    let mut body = vec![0x91];
    body.extend_from_slice(b"hvc1");
    body.extend_from_slice(&[0, 0, 0]); // cts
    body.extend_from_slice(&(idr.len() as u32).to_be_bytes());
    body.extend_from_slice(&idr);
    let (_, ts) = mux(Some(&hevc_seq()), None, &[video(80, body)]);
    let pes = read_pes(&ts);
    assert_eq!(
        pes[0].es,
        annex_b(&[
            &[0x46, 0x01, 0x50],
            &[0x40, 0x01, 0x0c],
            &[0x42, 0x01, 0x01],
            &[0x44, 0x01, 0xc1],
            &idr
        ])
    );
}

/// The PSI section of the first packet on `pid`, CRC checked.
fn section(ts: &[u8], pid: u16) -> Vec<u8> {
    let p = packets(ts)
        .into_iter()
        .find(|p| p.pid == pid)
        .expect("table");
    assert!(p.unit_start);
    assert_eq!(p.payload[0], 0, "pointer field");
    let s = &p.payload[1..];
    let len = 3 + usize::from(u16::from_be_bytes([s[1], s[2]]) & 0x0fff);
    assert!(
        s[len..].iter().all(|&b| b == 0xff),
        "0xff after the section"
    );
    assert_eq!(
        crc32_mpeg2(&s[..len]),
        0,
        "CRC over a section ending with its CRC"
    );
    s[..len].to_vec()
}

#[test]
fn tables_and_their_crc() {
    assert_eq!(
        crc32_mpeg2(b"123456789"),
        0x0376_e6e7,
        "CRC-32/MPEG-2 check value"
    );
    let (_, ts) = mux(Some(&avc_seq(&avcc())), Some(&aac_seq(&[0x12, 0x10])), &[]);
    assert_eq!(ts.len(), 2 * 188);
    let pat = section(&ts, 0);
    assert_eq!(
        &pat[..pat.len() - 4],
        &[
            0x00, 0xb0, 0x0d, 0x00, 0x01, 0xc1, 0x00, 0x00, 0x00, 0x01, 0xf0, 0x00
        ]
    );
    let pmt = section(&ts, PMT_PID);
    assert_eq!(
        &pmt[..pmt.len() - 4],
        &[
            0x02, 0xb0, 0x17, 0x00, 0x01, 0xc1, 0x00, 0x00, // header
            0xe1, 0x00, 0xf0, 0x00, // PCR PID 0x100, no descriptors
            0x1b, 0xe1, 0x00, 0xf0, 0x00, // H.264 on 0x100
            0x0f, 0xe1, 0x01, 0xf0, 0x00, // AAC (ADTS) on 0x101
        ]
    );
    // HEVC; audio only (PCR on the audio PID).
    let (_, ts) = mux(Some(&hevc_seq()), None, &[]);
    assert_eq!(
        &section(&ts, PMT_PID)[12..17],
        &[0x24, 0xe1, 0x00, 0xf0, 0x00]
    );
    let (_, ts) = mux(None, Some(&aac_seq(&[0x12, 0x10])), &[]);
    assert_eq!(&section(&ts, PMT_PID)[8..10], &[0xe1, 0x01]);
    let (_, ts) = mux(
        None,
        Some(&audio(0, vec![0x2f, 0xff, 0xfb, 0x90, 0x00])),
        &[],
    );
    assert_eq!(section(&ts, PMT_PID)[12], 0x03, "MP3");
}

#[test]
fn packets_are_whole_and_counters_run_per_pid() {
    let mut frames = Vec::new();
    for i in 0..40u64 {
        // Sizes that end exactly on, just short of, and past a packet boundary.
        let len = [1, 160, 170, 171, 172, 183, 184, 185, 400, 3000][i as usize % 10];
        let mut nal = vec![0x41; len];
        nal[0] = if i % 10 == 0 { 0x65 } else { 0x41 };
        frames.push(avc_frame(i * 40, 0, i % 10 == 0, &[&nal]));
        // 14 PES header bytes + 7 ADTS bytes + 162: one byte short of a packet (an
        // adaptation field of length 0), + 163: exactly one packet.
        let raw_len = [1, 161, 162, 163, 164, 170, 180, 300, 1000, 8184][i as usize % 10];
        frames.push(aac_frame(i * 40 + 3, &vec![0x21; raw_len]));
    }
    let mut m = TsMuxer::new(Some(&avc_seq(&avcc())), Some(&aac_seq(&[0x12, 0x10]))).unwrap();
    let mut out = BytesMut::new();
    for (i, f) in frames.iter().enumerate() {
        if i % 20 == 0 {
            m.write_tables(&mut out);
        }
        m.write_frame(f, &mut out);
    }
    let mut last: HashMap<u16, u8> = HashMap::new();
    let packets = packets(&out);
    for p in &packets {
        if let Some(prev) = last.insert(p.pid, p.cc) {
            assert_eq!(p.cc, (prev + 1) % 16, "continuity on PID {:#x}", p.pid);
        }
    }
    let mut pids: Vec<_> = last.keys().copied().collect();
    pids.sort_unstable();
    assert_eq!(pids, [0, VIDEO_PID, AUDIO_PID, PMT_PID]);
    let pes = read_pes(&out);
    assert_eq!(pes.len(), 80, "one PES per frame");
    for (f, p) in frames.iter().zip(&pes) {
        let data = if f.kind == FrameKind::Video {
            let tag = VideoTag::parse(&f.payload).unwrap();
            tag.data(&f.payload)[4..].to_vec()
        } else {
            f.payload[2..].to_vec()
        };
        assert!(p.es.ends_with(&data), "payload intact");
        assert_eq!(p.pts, f.dts * 90);
    }
}

#[test]
fn refuses_what_it_cannot_carry() {
    let av1 = video(0, [&[0x90][..], b"av01", &[0x81, 0, 0, 0]].concat());
    assert_eq!(
        TsMuxer::new(Some(&av1), None).unwrap_err(),
        TsError::Unsupported(CodecId::Av1)
    );
    let opus = audio(0, [&[0x90][..], b"Opus", b"OpusHead"].concat());
    assert_eq!(
        TsMuxer::new(None, Some(&opus)).unwrap_err(),
        TsError::Unsupported(CodecId::Opus)
    );
    assert_eq!(TsMuxer::new(None, None).unwrap_err(), TsError::NoStreams);
    assert!(matches!(
        TsMuxer::new(Some(&avc_seq(&[1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 9])), None),
        Err(TsError::BadConfig(_))
    ));
    assert!(matches!(
        TsMuxer::new(Some(&avc_frame(0, 0, true, &[&[0x65]])), None),
        Err(TsError::BadConfig(_))
    ));
    assert!(matches!(
        TsMuxer::new(None, Some(&aac_seq(&[0x12]))),
        Err(TsError::BadConfig(_))
    ));
    assert!(matches!(
        TsMuxer::new(Some(&aac_seq(&[0x12, 0x10])), None),
        Err(TsError::BadConfig(_))
    ));
}

#[test]
fn skips_bad_and_foreign_frames_and_follows_new_sequence_headers() {
    let (mut m, _) = mux(Some(&avc_seq(&avcc())), None, &[]);
    let mut out = BytesMut::new();
    m.write_frame(&aac_frame(0, &[1, 2]), &mut out); // no audio track
    m.write_frame(
        &video(0, vec![0x17, 1, 0, 0, 0, 0, 0, 0, 9, 0x65]),
        &mut out,
    ); // bad length
    m.write_frame(&video(0, vec![0x17, 2, 0, 0, 0]), &mut out); // sequence end: nothing
    m.write_frame(&Frame::script(0, Bytes::from_static(b"\x02")), &mut out);
    assert!(out.is_empty());
    assert_eq!(m.skipped_frames(), 2);

    // A new record replaces the parameter sets that go before keyframes.
    let mut record = avcc();
    let at = record.len() - 1;
    record[at] = 0x99;
    m.write_frame(&avc_seq(&record), &mut out);
    assert!(out.is_empty(), "a sequence header writes nothing");
    m.write_frame(&avc_frame(0, 0, true, &[&[0x65, 7]]), &mut out);
    let pes = read_pes(&out);
    assert_eq!(
        pes[0].es,
        annex_b(&[&[0x09, 0xf0], &SPS, &[0x68, 0xeb, 0x99], &[0x65, 7]])
    );
}

proptest! {
    #[test]
    fn random_frames_never_panic_and_stay_whole_packets(
        frames in prop::collection::vec(
            (0u8..3, any::<bool>(), any::<bool>(), 0u8..8, any::<u64>(), any::<i32>(),
             prop::collection::vec(any::<u8>(), 0..600)),
            0..24,
        ),
        headers in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let codecs = [CodecId::Avc, CodecId::Hevc, CodecId::Aac, CodecId::Mp3, CodecId::Av1,
                      CodecId::Opus, CodecId::Other, CodecId::Amf0];
        let make = |(kind, keyframe, seq_header, codec, dts, cts, payload): &(u8, bool, bool, u8, u64, i32, Vec<u8>)| {
            Frame::from_parts(FrameParts {
                kind: [FrameKind::Audio, FrameKind::Video, FrameKind::Script][usize::from(*kind)],
                dts: *dts,
                cts: *cts,
                keyframe: *keyframe,
                seq_header: *seq_header,
                disposable: false,
                codec: codecs[usize::from(*codec)],
                payload: Bytes::from(payload.clone()),
            })
        };
        // Random bodies behind real tag headers reach the NAL and ADTS code, not only the
        // tag parser.
        let mut with_header = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            with_header.push(make(f));
            let prefix: &[u8] = match i % 4 {
                0 => &[0x17, 1, 0, 0, 0],
                1 => &[0x27, 1, 0xff, 0xff, 0xf0],
                2 => &[0xaf, 1],
                _ => &[0x17, 0, 0, 0, 0],
            };
            let kind = if i % 4 == 2 { FrameKind::Audio } else { FrameKind::Video };
            if let Ok(frame) = Frame::parse(kind, f.4 >> 8, Bytes::from([prefix, &f.6].concat())) {
                with_header.push(frame);
            }
        }
        let seq_video = avc_seq(&[&avcc()[..], &headers].concat());
        let random_record = avc_seq(&headers);
        let random_asc = aac_seq(&headers);
        let video_headers = [Some(&seq_video), Some(&random_record), Some(&hevc_seq()), None];
        let audio_headers = [Some(aac_seq(&[0x12, 0x10])), Some(random_asc), None];
        for v in video_headers {
            for a in &audio_headers {
                let Ok(mut m) = TsMuxer::new(v, a.as_ref()) else { continue };
                let mut out = BytesMut::new();
                for (i, f) in with_header.iter().enumerate() {
                    if i % 5 == 0 {
                        m.write_tables(&mut out);
                    }
                    m.write_frame(f, &mut out);
                }
                prop_assert_eq!(out.len() % 188, 0);
                prop_assert!(out.chunks(188).all(|p| p[0] == 0x47));
            }
        }
    }
}
