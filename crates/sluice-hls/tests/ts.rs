//! The TS muxer against real decoders: the fixtures as frames, muxed into ~1 s segments
//! (tables at each, and at every ~200 ms "part"), concatenated into one .ts file, and read
//! back by Debian's ffprobe (every packet, its timestamps, decoding every frame) and, for
//! HEVC, also by the modern ffmpeg.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::Value;
use sluice_hls::ts::TsMuxer;
use sluice_media::flv::{Demuxer, TAG_AUDIO, TAG_VIDEO, VideoPacketType, VideoTag};
use sluice_media::{Frame, FrameKind};
use sluice_testkit::{fixture, fixtures, media, probe, process, tools};

const DEADLINE: Duration = Duration::from_secs(120);

fn frame(type_id: u8, timestamp: u32, payload: bytes::Bytes) -> Frame {
    let kind = match type_id {
        TAG_AUDIO => FrameKind::Audio,
        TAG_VIDEO => FrameKind::Video,
        _ => FrameKind::Script,
    };
    Frame::parse(kind, u64::from(timestamp), payload).expect("fixture frame")
}

fn fixture_frames(name: &str) -> Vec<Frame> {
    media::fixture_tags(name)
        .into_iter()
        .map(|t| frame(t.type_id, t.timestamp, t.payload))
        .collect()
}

/// Muxes `frames` as a segmenter would: a segment starts at the first frame and then at the
/// first keyframe 1 s or more into the segment, tables at each, and again every 200 ms as
/// LL-HLS parts would have them. Returns the segments.
fn mux_segments(frames: &[Frame]) -> Vec<BytesMut> {
    let seq = |kind| frames.iter().find(|f| f.kind == kind && f.seq_header);
    let mut muxer = TsMuxer::new(seq(FrameKind::Video), seq(FrameKind::Audio)).expect("muxer");
    let mut segments: Vec<BytesMut> = Vec::new();
    let (mut segment_start, mut part_start) = (None::<u64>, 0);
    for f in frames.iter().filter(|f| f.kind != FrameKind::Script) {
        let new_segment = segment_start.is_none_or(|start| f.keyframe && f.dts >= start + 1000);
        if new_segment {
            segments.push(BytesMut::new());
            segment_start = Some(f.dts);
        }
        let out = segments.last_mut().expect("a segment");
        if new_segment || f.dts >= part_start + 200 {
            part_start = f.dts;
            muxer.write_tables(out);
        }
        muxer.write_frame(f, out);
    }
    assert_eq!(muxer.skipped_frames(), 0);
    segments
}

/// One packet as a decoder must see it: pts, dts (90 kHz ticks), keyframe.
type Packet = (i64, i64, bool);

/// What the decoder must see: the video packets, then the audio packets.
fn expected(frames: &[Frame]) -> (Vec<Packet>, Vec<Packet>) {
    let ms = |t: i64| t * 90;
    let video = frames
        .iter()
        .filter(|f| {
            f.kind == FrameKind::Video
                && matches!(
                    VideoTag::parse(&f.payload).expect("tag").packet_type,
                    VideoPacketType::CodedFrames | VideoPacketType::CodedFramesX
                )
        })
        .map(|f| {
            let dts = f.dts as i64;
            (ms(dts + i64::from(f.cts)), ms(dts), f.keyframe)
        })
        .collect();
    let audio = frames
        .iter()
        .filter(|f| f.kind == FrameKind::Audio && !f.seq_header)
        .map(|f| (ms(f.dts as i64), ms(f.dts as i64), true))
        .collect();
    (video, audio)
}

/// Runs Debian's ffprobe over `path`: every packet, and every frame decoded (`-count_frames`).
/// Asserts it wrote nothing on stderr at level `warning` or above.
fn ffprobe(path: &Path) -> Value {
    let mut cmd = Command::new(tools::ffprobe());
    cmd.args([
        "-hide_banner",
        "-v",
        "warning",
        "-show_packets",
        "-show_streams",
    ])
    .args(["-count_frames", "-of", "json"])
    .arg(path);
    let out = process::run(&mut cmd, DEADLINE).expect("ffprobe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "ffprobe stderr: {stderr}");
    serde_json::from_slice(&out.stdout).expect("ffprobe JSON")
}

/// Checks what ffprobe read from the muxed `frames` against the frames.
fn check_probe(report: &Value, frames: &[Frame], video_codec: &str) {
    let (want_video, want_audio) = expected(frames);
    let streams = report["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 2, "{streams:?}");
    let stream = |kind: &str| {
        streams
            .iter()
            .find(|s| s["codec_type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} stream"))
    };
    let (video, audio) = (stream("video"), stream("audio"));
    assert_eq!(video["codec_name"], video_codec);
    assert_eq!(audio["codec_name"], "aac");
    assert_eq!(
        (video["width"].as_u64(), video["height"].as_u64()),
        (Some(640), Some(360))
    );
    let decoded = |s: &Value| {
        s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse::<usize>().ok())
    };
    assert_eq!(
        decoded(video),
        Some(want_video.len()),
        "video frames decoded"
    );
    assert_eq!(
        decoded(audio),
        Some(want_audio.len()),
        "audio frames decoded"
    );

    let packets = report["packets"].as_array().expect("packets");
    let of = |s: &Value| {
        packets
            .iter()
            .filter(|p| p["stream_index"] == s["index"])
            .map(|p| {
                let ts = |k: &str| p[k].as_i64().unwrap_or_else(|| panic!("{k} in {p}"));
                let key = p["flags"].as_str().is_some_and(|f| f.contains('K'));
                (ts("pts"), ts("dts"), key)
            })
            .collect::<Vec<Packet>>()
    };
    assert_eq!(of(video), want_video, "video packets: pts, dts, keyframe");
    assert_eq!(of(audio), want_audio, "audio packets: pts, dts");
}

fn write_ts(dir: &Path, segments: &[BytesMut]) -> std::path::PathBuf {
    let path = dir.join("out.ts");
    let file: Vec<u8> = segments.iter().flat_map(|s| s.iter().copied()).collect();
    std::fs::write(&path, file).expect("write .ts");
    path
}

fn check_fixture(name: &str) {
    let frames = fixture_frames(name);
    let segments = mux_segments(&frames);
    assert_eq!(
        segments.len(),
        2,
        "2 s of GOP 25 at 25 fps: two ~1 s segments"
    );
    for s in &segments {
        assert_eq!(s.len() % 188, 0);
        assert_eq!(&s[..2], &[0x47, 0x40], "a segment starts with the PAT");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_ts(dir.path(), &segments);
    check_probe(&ffprobe(&path), &frames, "h264");
}

#[test]
fn h264_aac_decodes_in_ffprobe() {
    check_fixture(fixtures::H264_AAC);
}

#[test]
fn h264_aac_with_b_frames_decodes_in_ffprobe() {
    let frames = fixture_frames(fixtures::H264_AAC_BFRAMES);
    assert!(frames.iter().any(|f| f.cts > 0), "the fixture reorders");
    check_fixture(fixtures::H264_AAC_BFRAMES);
}

#[test]
fn hevc_aac_from_enhanced_flv_decodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flv = dir.path().join("hevc.flv");
    let mut cmd = Command::new(tools::ffmpeg_modern());
    cmd.args(["-hide_banner", "-nostdin", "-v", "error", "-y", "-i"])
        .arg(fixture(fixtures::HEVC_AAC))
        .args(["-c", "copy", "-f", "flv"])
        .arg(&flv);
    process::run(&mut cmd, DEADLINE).expect("fixture to enhanced FLV");
    let mut demuxer = Demuxer::new();
    demuxer.push(&std::fs::read(&flv).expect("read FLV"));
    let mut frames = Vec::new();
    while let Some((header, body)) = demuxer.next_tag().expect("valid FLV") {
        frames.push(frame(header.tag_type, header.timestamp, body));
    }
    assert!(
        frames
            .iter()
            .any(|f| f.seq_header && f.payload[0] & 0x80 != 0),
        "enhanced"
    );

    let segments = mux_segments(&frames);
    let path = write_ts(dir.path(), &segments);
    check_probe(&ffprobe(&path), &frames, "hevc");

    // The modern ffmpeg decodes all of it without a complaint.
    let mut cmd = Command::new(tools::ffmpeg_modern());
    cmd.args(["-hide_banner", "-nostdin", "-v", "warning", "-i"])
        .arg(&path)
        .args(["-f", "null", "-"]);
    let out = process::run(&mut cmd, DEADLINE).expect("modern ffmpeg decode");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "modern ffmpeg stderr: {stderr}");
    let report =
        probe::probe_via_modern(path.to_str().expect("UTF-8 path"), DEADLINE).expect("probe");
    let video = report.video().expect("video");
    let audio = report.audio().expect("audio");
    assert_eq!((video.codec(), video.frames()), ("hevc", 50));
    assert_eq!((audio.codec(), audio.frames()), ("aac", 88));
}
