//! The fMP4 muxer against real decoders: the fixtures, as the frames the server sees, muxed
//! into an init segment and ~200 ms fragments, then read back by Debian's ffprobe (H.264/AAC)
//! or the modern ffmpeg (HEVC/AAC and AV1/Opus, via enhanced FLV): every frame must be there,
//! at its input timestamps, and decode without an error.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use sluice_hls::fmp4::{Fragmenter, Init, init_segment};
use sluice_media::flv::{
    AudioPacketType, AudioTag, Demuxer, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, VideoPacketType, VideoTag,
};
use sluice_media::{Frame, FrameKind};
use sluice_testkit::{process, tools};

const DEADLINE: Duration = Duration::from_secs(60);
const PART_MS: u64 = 200;

fn frame(type_id: u8, timestamp: u32, payload: Bytes) -> Arc<Frame> {
    let kind = match type_id {
        TAG_AUDIO => FrameKind::Audio,
        TAG_VIDEO => FrameKind::Video,
        TAG_SCRIPT => FrameKind::Script,
        t => panic!("tag type {t}"),
    };
    Arc::new(Frame::parse(kind, u64::from(timestamp), payload).expect("classifiable"))
}

/// A fixture as the server's frames.
fn flv_fixture_frames(name: &str) -> Vec<Arc<Frame>> {
    sluice_testkit::media::fixture_tags(name)
        .into_iter()
        .map(|t| frame(t.type_id, t.timestamp, t.payload))
        .collect()
}

/// A Matroska fixture stream-copied to enhanced FLV by the modern ffmpeg, as frames.
fn mkv_fixture_frames(name: &str, dir: &Path) -> Vec<Arc<Frame>> {
    let flv = dir.join("fixture.flv");
    process::run(
        Command::new(tools::ffmpeg_modern())
            .args(["-hide_banner", "-nostdin", "-v", "error", "-y", "-i"])
            .arg(sluice_testkit::fixture(name))
            .args(["-c", "copy", "-f", "flv"])
            .arg(&flv),
        DEADLINE,
    )
    .expect("ffmpeg to FLV");
    let mut demuxer = Demuxer::new();
    demuxer.push(&std::fs::read(&flv).expect("FLV written"));
    let mut frames = Vec::new();
    while let Some((header, body)) = demuxer.next_tag().expect("valid FLV") {
        frames.push(frame(header.tag_type, header.timestamp, body));
    }
    frames
}

/// What was muxed: the file, its init, and the timestamps (ms) of the pictures and audio
/// frames that went in, in decode order: video (dts, pts), audio dts.
struct Muxed {
    init: Init,
    video: Vec<(u64, i64)>,
    audio: Vec<u64>,
    fragments: usize,
}

/// Muxes `frames` into `path`: the init from the first sequence headers, then the media
/// frames cut into fragments of about [`PART_MS`].
fn mux(frames: &[Arc<Frame>], path: &Path) -> Muxed {
    let header = |kind| frames.iter().find(|f| f.kind == kind && f.seq_header);
    let init = init_segment(
        header(FrameKind::Video).map(|f| &**f),
        header(FrameKind::Audio).map(|f| &**f),
    )
    .expect("init segment");
    let media: Vec<_> = frames
        .iter()
        .filter(|f| f.kind != FrameKind::Script && !f.seq_header)
        .cloned()
        .collect();
    let mut file = init.bytes.to_vec();
    let mut fragmenter = Fragmenter::new(&init);
    let mut fragments = 0;
    let mut start = 0;
    for i in 1..=media.len() {
        if i == media.len() || media[i].dts >= media[start].dts + PART_MS {
            let bytes = fragmenter.fragment(&media[start..i]);
            assert!(!bytes.is_empty());
            file.extend_from_slice(&bytes);
            fragments += 1;
            start = i;
        }
    }
    std::fs::write(path, file).expect("write fMP4");
    // Pictures: coded frames (the FLV from the modern ffmpeg also carries one metadata tag).
    let picture = |f: &Frame| {
        VideoTag::parse(&f.payload).is_ok_and(|t| {
            matches!(
                t.packet_type,
                VideoPacketType::CodedFrames | VideoPacketType::CodedFramesX
            )
        })
    };
    Muxed {
        video: media
            .iter()
            .filter(|f| f.kind == FrameKind::Video && picture(f))
            .map(|f| (f.dts, f.dts as i64 + i64::from(f.cts)))
            .collect(),
        audio: media
            .iter()
            .filter(|f| {
                // Coded audio (not the Opus stream's MultichannelConfig tag).
                f.kind == FrameKind::Audio
                    && AudioTag::parse(&f.payload)
                        .is_ok_and(|t| t.packet_type == AudioPacketType::CodedFrames)
            })
            .map(|f| f.dts)
            .collect(),
        init,
        fragments,
    }
}

/// One packet as a demuxer saw it, times in ms.
#[derive(Debug)]
struct Packet {
    dts: f64,
    pts: f64,
    key: bool,
}

fn assert_near(got: f64, want: f64, what: &str) {
    // Audio ticks are 1/44100 s: a rounded millisecond is within half a tick of the input.
    assert!(
        (got - want).abs() < 0.6,
        "{what}: got {got} ms, want {want}"
    );
}

/// Checks the packets of one stream against the input timestamps.
fn check_packets(video: &[Packet], audio: &[Packet], muxed: &Muxed, expected: (usize, usize)) {
    assert_eq!(video.len(), expected.0, "video packets");
    assert_eq!(audio.len(), expected.1, "audio packets");
    assert_eq!(muxed.video.len(), expected.0, "video frames in");
    assert_eq!(muxed.audio.len(), expected.1, "audio frames in");
    for (i, (p, &(dts, pts))) in video.iter().zip(&muxed.video).enumerate() {
        assert_near(p.dts, dts as f64, &format!("video packet {i} dts"));
        assert_near(p.pts, pts as f64, &format!("video packet {i} pts"));
    }
    assert!(video[0].key, "the first picture is a sync sample");
    assert_eq!(
        video.iter().filter(|p| p.key).count(),
        2,
        "keyframes at 0 s and 1 s (GOP 25), and only those"
    );
    for (i, (p, &dts)) in audio.iter().zip(&muxed.audio).enumerate() {
        assert_near(p.dts, dts as f64, &format!("audio packet {i} dts"));
        assert_near(p.pts, dts as f64, &format!("audio packet {i} pts"));
    }
}

/// Debian's ffprobe: streams, every packet, and frames decoded; and nothing on stderr.
fn ffprobe(path: &Path) -> (Value, Vec<Packet>, Vec<Packet>) {
    let out = process::run(
        Command::new(tools::ffprobe())
            .args(["-hide_banner", "-v", "error", "-count_frames"])
            .args(["-show_streams", "-show_packets", "-of", "json"])
            .arg(path),
        DEADLINE,
    )
    .expect("ffprobe");
    assert!(
        out.stderr.is_empty(),
        "ffprobe errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ms = |p: &Value, k: &str| {
        p[k].as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .map(|s| s * 1000.0)
            .unwrap_or_else(|| panic!("packet without {k}: {p}"))
    };
    let (mut video, mut audio) = (Vec::new(), Vec::new());
    for p in json["packets"].as_array().expect("packets") {
        let packet = Packet {
            dts: ms(p, "dts_time"),
            pts: ms(p, "pts_time"),
            key: p["flags"].as_str().is_some_and(|f| f.starts_with('K')),
        };
        match p["codec_type"].as_str() {
            Some("video") => video.push(packet),
            Some("audio") => audio.push(packet),
            other => panic!("packet of {other:?}"),
        }
    }
    (json, video, audio)
}

fn stream<'a>(json: &'a Value, codec_type: &str) -> &'a Value {
    json["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|s| s["codec_type"] == codec_type)
        .unwrap_or_else(|| panic!("no {codec_type} stream"))
}

fn h264_aac(fixture: &str, has_reordering: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.mp4");
    let muxed = mux(&flv_fixture_frames(fixture), &path);
    assert!(muxed.fragments >= 10, "~200 ms fragments of 2 s");
    let (json, video, audio) = ffprobe(&path);
    let v = stream(&json, "video");
    let a = stream(&json, "audio");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(640), Some(360))
    );
    assert_eq!(v["nb_read_frames"], "50", "every picture decoded");
    assert_eq!(a["codec_name"], "aac");
    assert_eq!(a["sample_rate"], "44100");
    assert_eq!(a["channels"], 2);
    assert_eq!(a["nb_read_frames"], "88", "every audio frame decoded");
    // The codec string agrees with what the decoder says of the stream.
    let profile = match v["profile"].as_str() {
        Some("Main") => "4d",
        Some("High") => "64",
        p => panic!("profile {p:?}"),
    };
    let level = format!("{:02x}", v["level"].as_u64().expect("level"));
    let codecs = &muxed.init.codecs;
    assert!(
        codecs.starts_with(&format!("avc1.{profile}")) && codecs[9..11] == level,
        "{codecs} vs ffprobe {profile} level {level}"
    );
    assert!(codecs.ends_with(",mp4a.40.2"), "{codecs}");
    check_packets(&video, &audio, &muxed, (50, 88));
    assert_eq!(
        muxed.video.iter().any(|&(dts, pts)| pts != dts as i64),
        has_reordering
    );
}

#[test]
fn h264_aac_reads_back_exactly_in_ffprobe() {
    h264_aac("h264_aac.flv", false);
}

#[test]
fn h264_aac_with_b_frames_keeps_composition_times() {
    h264_aac("h264_aac_bframes.flv", true);
}

/// The modern ffmpeg reads the file twice: decoding every frame (`framemd5` of decoded
/// frames, nothing on stderr) and copying every packet (`framemd5` of packets, whose lines
/// carry dts and pts in the stream time base).
fn modern_ffmpeg(path: &Path) -> (BTreeMap<usize, usize>, Vec<Packet>, Vec<Packet>) {
    let run = |copy: bool| {
        let mut cmd = Command::new(tools::ffmpeg_modern());
        cmd.args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
            .arg(path)
            .args(["-map", "0"]);
        if copy {
            cmd.args(["-c", "copy", "-copyts"]);
        }
        cmd.args(["-f", "framemd5", "-"]);
        let out = process::run(&mut cmd, DEADLINE).expect("modern ffmpeg");
        assert!(
            out.stderr.is_empty(),
            "ffmpeg errors: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("text")
    };
    let mut decoded = BTreeMap::new();
    for line in run(false).lines().filter(|l| !l.starts_with('#')) {
        let stream: usize = line.split(',').next().unwrap().trim().parse().unwrap();
        *decoded.entry(stream).or_default() += 1;
    }
    let copied = run(true);
    // "#tb 0: 1/90000": each stream's time base.
    let mut time_base = BTreeMap::new();
    for line in copied.lines().filter_map(|l| l.strip_prefix("#tb ")) {
        let (stream, tb) = line.split_once(": ").unwrap();
        let (num, den) = tb.split_once('/').unwrap();
        let tb = num.parse::<f64>().unwrap() / den.parse::<f64>().unwrap();
        time_base.insert(stream.parse::<usize>().unwrap(), tb);
    }
    let (mut video, mut audio) = (Vec::new(), Vec::new());
    for line in copied.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let stream: usize = fields[0].parse().unwrap();
        let ms = |i: usize| fields[i].parse::<f64>().unwrap() * time_base[&stream] * 1000.0;
        let packet = Packet {
            dts: ms(1),
            pts: ms(2),
            key: false,
        };
        if stream == 0 {
            video.push(packet);
        } else {
            audio.push(packet);
        }
    }
    (decoded, video, audio)
}

fn enhanced(fixture: &str, codecs: &str, expected: (usize, usize)) -> Muxed {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = mkv_fixture_frames(fixture, dir.path());
    let path = dir.path().join("out.mp4");
    let muxed = mux(&frames, &path);
    assert_eq!(muxed.init.codecs, codecs);
    assert_eq!((muxed.init.width, muxed.init.height), (640, 360));
    let (decoded, video, audio) = modern_ffmpeg(&path);
    assert_eq!(
        decoded.values().copied().collect::<Vec<_>>(),
        [expected.0, expected.1],
        "frames decoded per stream"
    );
    assert_eq!(video.len(), expected.0);
    assert_eq!(audio.len(), expected.1);
    assert_eq!(muxed.video.len(), expected.0, "video frames in");
    assert_eq!(muxed.audio.len(), expected.1, "audio frames in");
    for (i, (p, &(dts, pts))) in video.iter().zip(&muxed.video).enumerate() {
        assert_near(p.dts, dts as f64, &format!("video packet {i} dts"));
        assert_near(p.pts, pts as f64, &format!("video packet {i} pts"));
    }
    for (i, (p, &dts)) in audio.iter().zip(&muxed.audio).enumerate() {
        assert_near(p.dts, dts as f64, &format!("audio packet {i} dts"));
    }
    muxed
}

#[test]
fn hevc_aac_reads_back_in_the_modern_ffmpeg() {
    // Main profile, Main tier, level 2.1 (63), constraint byte 0x90: what Debian's ffprobe
    // reports for the fixture (profile Main, level 63).
    let muxed = enhanced("hevc_aac.mkv", "hvc1.1.6.L63.90,mp4a.40.2", (50, 88));
    assert!(
        muxed.video.iter().any(|&(dts, pts)| pts != dts as i64),
        "B-frames: composition offsets"
    );
}

#[test]
fn av1_opus_reads_back_in_the_modern_ffmpeg() {
    // Main profile, level 2.1 (seq_level_idx 1, as ffprobe reports it), Main tier, 8-bit.
    let muxed = enhanced("av1_opus.mkv", "av01.0.01M.08,opus", (50, 101));
    assert!(muxed.video.iter().all(|&(dts, pts)| pts == dts as i64));
}
