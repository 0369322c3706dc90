//! Interop with the real clients: ffmpeg publishes a fixture over RTMP, ffprobe reads it back
//! over RTMP and HTTP-FLV at the same time, and every frame arrives and decodes.
//!
//! * Debian's ffmpeg/ffprobe 5.1 for legacy FLV (H.264 + AAC, with and without B-frames).
//! * The modern ffmpeg (imageio-ffmpeg, 9.x) for enhanced RTMP (HEVC + AAC, AV1 + Opus). It
//!   needs no flag for that: `-c copy -f flv` writes enhanced tags for codecs legacy FLV cannot
//!   carry. Debian's ffprobe cannot demux enhanced FLV, so the stream is first stream-copied to
//!   Matroska by the modern ffmpeg (see [`probe_av_via_modern`]).
//!
//! Exact counts are possible because the probes connect first and wait for the publisher
//! (`streams.wait_for_publisher_ms`): a viewer waiting since before the first frame gets the
//! stream from its first tag, including the AAC frame at dts 0 that precedes the first video
//! keyframe. The server ends the viewers' streams `republish_grace_ms` (0.5 s in the test
//! config) after the publisher leaves, which is when `ffprobe -count_frames` returns.
//!
//! While the publisher is live, the admin API must describe the stream (codecs, profile,
//! level, resolution, audio format); afterwards `/metrics` must have counted every message
//! once, and the stream must be forgotten.

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::{Node, test_config};
use serde_json::Value;
use sluice_testkit::http::metric_value;
use sluice_testkit::probe::{ProbeReport, probe, probe_via_modern};
use sluice_testkit::wait::eventually;
use sluice_testkit::{fixture, fixtures, process, tools};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Deadline of one probe (it returns when the server ends the stream, ~3 s after it starts on
/// an idle machine). Generous: CI runs several ffmpeg processes at once on two cores.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for the real-time publisher of a 2 s fixture to finish.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(90);
/// Deadline for state the tests wait on (viewers attached, the API showing the publisher).
const WAIT: Duration = Duration::from_secs(60);

/// Which ffmpeg publishes and which probe reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tools {
    /// Debian's ffmpeg 5.1 and ffprobe 5.1 (legacy FLV).
    Debian,
    /// The modern ffmpeg publishes (enhanced RTMP) and remuxes for the probe.
    Modern,
}

/// Where the probes read the stream back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Egress {
    Rtmp,
    HttpFlv,
}

/// What a fixture contains (fixtures/README.md) and what the API must say about it.
#[derive(Debug)]
struct Case {
    fixture: &'static str,
    tools: Tools,
    egresses: &'static [Egress],
    /// ffprobe's codec names.
    video: &'static str,
    audio: &'static str,
    /// ffprobe's and the admin API's profile names.
    video_profile: &'static str,
    /// The admin API's level (from the codec configuration record).
    video_level: &'static str,
    audio_profile: &'static str,
    sample_rate: u32,
    /// Frames ffprobe decodes.
    video_frames: u64,
    audio_frames: u64,
    /// RTMP video and audio messages the publisher sends (frames plus what its FLV muxer adds
    /// around them; see the cases), all of which the server must ingest and pass on.
    video_messages: u64,
    audio_messages: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg5_h264_aac_reads_back_over_rtmp_and_http_flv() {
    run(Case {
        fixture: fixtures::H264_AAC,
        tools: Tools::Debian,
        egresses: &[Egress::Rtmp, Egress::HttpFlv],
        video: "h264",
        audio: "aac",
        video_profile: "Main",
        // 640x360 = 920 macroblocks at 25 fps is over level 2.2's 20,250 MB/s.
        video_level: "3.0",
        audio_profile: "LC",
        sample_rate: 44_100,
        video_frames: 50,
        audio_frames: 88,
        // AVC sequence header + 50 frames + the end-of-sequence tag ffmpeg 5.1 writes last.
        video_messages: 52,
        // AAC sequence header + 88 frames.
        audio_messages: 89,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg5_h264_with_b_frames_keeps_every_frame() {
    run(Case {
        fixture: fixtures::H264_AAC_BFRAMES,
        tools: Tools::Debian,
        egresses: &[Egress::HttpFlv],
        video: "h264",
        audio: "aac",
        video_profile: "High",
        video_level: "3.0",
        audio_profile: "LC",
        sample_rate: 44_100,
        video_frames: 50,
        audio_frames: 88,
        video_messages: 52,
        audio_messages: 89,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_ffmpeg_hevc_aac_over_enhanced_rtmp() {
    run(Case {
        fixture: fixtures::HEVC_AAC,
        tools: Tools::Modern,
        egresses: &[Egress::Rtmp, Egress::HttpFlv],
        video: "hevc",
        audio: "aac",
        video_profile: "Main",
        // 230,400 luma samples: over level 2's 122,880, within 2.1's 245,760.
        video_level: "2.1",
        audio_profile: "LC",
        sample_rate: 44_100,
        video_frames: 50,
        audio_frames: 88,
        // SequenceStart (hvcC) + the Metadata tag (colorInfo) + 50 frames; no SequenceEnd.
        video_messages: 52,
        audio_messages: 89,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_ffmpeg_av1_opus_over_enhanced_rtmp() {
    run(Case {
        fixture: fixtures::AV1_OPUS,
        tools: Tools::Modern,
        egresses: &[Egress::Rtmp, Egress::HttpFlv],
        video: "av1",
        audio: "opus",
        video_profile: "Main",
        // seq_level_idx 1: 230,400 samples are over level 2.0's 147,456.
        video_level: "2.1",
        // The admin API takes the profile from the codec configuration; Opus has none.
        audio_profile: "",
        sample_rate: 48_000,
        video_frames: 50,
        // 100 × 20 ms + 1 frame for the 312-sample pre-skip, as in the source file.
        audio_frames: 101,
        // SequenceStart (av1C) + the Metadata tag (colorInfo) + 50 frames.
        video_messages: 52,
        // SequenceStart (OpusHead) + MultichannelConfig + 101 frames.
        audio_messages: 103,
    })
    .await;
}

/// Probes wait on the stream, the fixture is published in real time, then everything the
/// probes, the API and the metrics saw is checked against `case`.
async fn run(case: Case) {
    let node = Node::start(test_config("")).await;
    // A key per fixture, so a failure message says which stream it was about.
    let name = case.fixture.replace('.', "_");
    let path = format!("live/{name}");
    let before = node.metrics().await;

    // 1. Viewers first, so they receive the stream from its first frame.
    let mut probes = Vec::new();
    for &egress in case.egresses {
        let url = match egress {
            Egress::Rtmp => node.rtmp_url(&path),
            Egress::HttpFlv => node.flv_url(&path),
        };
        let tools = case.tools;
        let task = tokio::task::spawn_blocking(move || match tools {
            Tools::Debian => probe(&url, PROBE_TIMEOUT),
            Tools::Modern => probe_via_modern(&url, PROBE_TIMEOUT),
        });
        probes.push((egress, task));
    }
    let viewers = case.egresses.len() as u64;
    let attached = eventually(WAIT, || async {
        stream_json(&node, &name)
            .await
            .is_some_and(|s| s["viewers"].as_u64() == Some(viewers))
    })
    .await;
    assert!(
        attached,
        "{}: the probes did not attach as viewers: {}",
        case.fixture,
        node.streams_json().await
    );

    // 2. Publish in real time (like a live encoder).
    let ffmpeg = match case.tools {
        Tools::Debian => tools::ffmpeg5(),
        Tools::Modern => tools::ffmpeg_modern(),
    };
    let mut publisher = process::publish(
        ffmpeg,
        &fixture(case.fixture),
        &node.rtmp_url(&path),
        true,
        &[],
    );

    // 3. While it is live, the admin API describes it.
    let deadline = Instant::now() + WAIT;
    let live = loop {
        let stream = stream_json(&node, &name).await;
        if let Some(s) = stream
            .filter(|s| s["publishing"] == true && s["video"].is_object() && s["audio"].is_object())
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{}: /api/streams never showed the publisher with both codecs: {}",
            case.fixture,
            node.streams_json().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    check_api(&case, &live);

    let published = tokio::task::spawn_blocking(move || {
        let result = publisher.wait_success(PUBLISH_TIMEOUT);
        (result, publisher)
    })
    .await
    .expect("publisher task");
    published
        .0
        .unwrap_or_else(|e| panic!("{}: publisher: {e:#}", case.fixture));

    // 4. Every probe got every frame.
    for (egress, task) in probes {
        let report = task
            .await
            .expect("probe task")
            .unwrap_or_else(|e| panic!("{} over {egress:?}: {e:#}", case.fixture));
        check_probe(&case, egress, &report);
    }

    // 5. The counters grew by what was published.
    let after = node.metrics().await;
    check_metrics(&case, &before, &after);

    // 6. Nothing is left behind: the stream is forgotten, no publisher or viewer is counted.
    let idle = eventually(WAIT, || async {
        let text = node.metrics().await;
        [
            "sluice_streams",
            "sluice_publishers",
            r#"sluice_viewers{protocol="rtmp"}"#,
            r#"sluice_viewers{protocol="http_flv"}"#,
        ]
        .iter()
        .all(|series| metric_value(&text, series) == 0.0)
    })
    .await;
    assert!(
        idle,
        "{}: gauges did not return to zero:\n{}",
        case.fixture,
        node.metrics().await
    );
    assert_eq!(node.streams_json().await["streams"], serde_json::json!([]));
    node.stop().await;
}

/// The stream `live/<name>` in `/api/streams`, if listed.
async fn stream_json(node: &Node, name: &str) -> Option<Value> {
    let all = node.streams_json().await;
    all["streams"]
        .as_array()?
        .iter()
        .find(|s| s["app"] == "live" && s["stream"] == name)
        .cloned()
}

fn check_api(case: &Case, stream: &Value) {
    let what = format!("{}: /api/streams entry {stream}", case.fixture);
    assert_eq!(stream["publishing"], true, "{what}");
    let video = &stream["video"];
    assert_eq!(video["codec"], case.video, "{what}");
    assert_eq!(video["profile"], case.video_profile, "{what}");
    assert_eq!(video["level"], case.video_level, "{what}");
    assert_eq!(video["width"], 640, "{what}");
    assert_eq!(video["height"], 360, "{what}");
    let audio = &stream["audio"];
    assert_eq!(audio["codec"], case.audio, "{what}");
    assert_eq!(audio["profile"], case.audio_profile, "{what}");
    assert_eq!(audio["sample_rate"], case.sample_rate, "{what}");
    assert_eq!(audio["channels"], 2, "{what}");
    // Both sequence headers have arrived, so frames and payload bytes have been counted.
    assert!(
        stream["frames_in"].as_u64().is_some_and(|n| n >= 2),
        "{what}"
    );
    assert!(stream["bytes_in"].as_u64().is_some_and(|n| n > 0), "{what}");
    assert!(stream["uptime_secs"].as_f64().is_some(), "{what}");
}

fn check_probe(case: &Case, egress: Egress, report: &ProbeReport) {
    let what = format!("{} over {egress:?}: {report:?}", case.fixture);
    // (Over RTMP, ffprobe also lists a data stream for the `|RtmpSampleAccess` message.)
    assert_eq!(report.of_type("video").count(), 1, "{what}");
    assert_eq!(report.of_type("audio").count(), 1, "{what}");
    let video = report
        .video()
        .unwrap_or_else(|| panic!("{what}: no video stream"));
    assert_eq!(video.codec(), case.video, "{what}");
    assert_eq!(video.profile.as_deref(), Some(case.video_profile), "{what}");
    assert_eq!(
        (video.width, video.height),
        (Some(640), Some(360)),
        "{what}"
    );
    assert_eq!(video.frames(), case.video_frames, "{what}: video frames");
    let audio = report
        .audio()
        .unwrap_or_else(|| panic!("{what}: no audio stream"));
    assert_eq!(audio.codec(), case.audio, "{what}");
    assert_eq!(audio.sample_rate, Some(case.sample_rate), "{what}");
    assert_eq!(audio.channels, Some(2), "{what}");
    assert_eq!(audio.frames(), case.audio_frames, "{what}: audio frames");
}

fn check_metrics(case: &Case, before: &str, after: &str) {
    let grew = |series: &str| metric_value(after, series) - metric_value(before, series);
    let what = format!("{}: /metrics after publishing:\n{after}", case.fixture);
    // Every message the publisher sent was ingested once, and none was refused.
    let video = grew(r#"sluice_frames_in_total{kind="video"}"#);
    let audio = grew(r#"sluice_frames_in_total{kind="audio"}"#);
    let script = grew(r#"sluice_frames_in_total{kind="script"}"#);
    assert_eq!(video, case.video_messages as f64, "{what}");
    assert_eq!(audio, case.audio_messages as f64, "{what}");
    // @setDataFrame onMetaData.
    assert_eq!(script, 1.0, "{what}");
    assert_eq!(
        grew(r#"sluice_frames_in_total{kind="invalid"}"#),
        0.0,
        "{what}"
    );
    // The whole fixture went in over RTMP (the file's own framing is smaller than the media).
    let size = std::fs::metadata(fixture(case.fixture))
        .expect("fixture")
        .len() as f64;
    assert!(
        grew(r#"sluice_bytes_in_total{protocol="rtmp"}"#) > size * 0.9,
        "{what}"
    );
    for egress in case.egresses {
        let protocol = match egress {
            Egress::Rtmp => "rtmp",
            Egress::HttpFlv => "http_flv",
        };
        let series = |name: &str| format!(r#"{name}{{protocol="{protocol}"}}"#);
        assert!(
            grew(&series("sluice_bytes_out_total")) > size * 0.9,
            "{what}"
        );
        // One viewer per egress, waiting since before the first frame: it was sent every
        // ingested frame.
        let frames_out = grew(&series("sluice_frames_out_total"));
        assert_eq!(frames_out, video + audio + script, "{what}");
        // The viewers' streams ended because the publisher left, not for another reason.
        let ended = format!(
            r#"sluice_connections_closed_total{{protocol="{protocol}",reason="stream_ended"}}"#
        );
        assert_eq!(grew(&ended), 1.0, "{what}");
    }
}

/// An HTTP-FLV viewer waiting before the publisher gets one tag per ingested message, and
/// `sluice_frames_out_total{protocol="http_flv"}` counts every one of them, including the
/// first batch, read before the response starts. The publisher is not real-time here, so that
/// batch is a full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_flv_frames_out_counts_every_tag_sent() {
    let node = Node::start(test_config("")).await;
    let addr = node.addrs.http;
    let viewer = tokio::spawn(async move {
        // HTTP/1.0: the body is not chunked and ends when the server closes the connection.
        let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        socket
            .write_all(b"GET /live/count.flv HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await.expect("response");
        response
    });
    let attached = eventually(WAIT, || async {
        stream_json(&node, "count")
            .await
            .is_some_and(|s| s["viewers"] == 1)
    })
    .await;
    assert!(attached, "the viewer did not attach");
    let mut publisher = process::publish(
        tools::ffmpeg5(),
        &fixture(fixtures::H264_AAC),
        &node.rtmp_url("live/count"),
        false,
        &[],
    );
    tokio::task::spawn_blocking(move || publisher.wait_success(PUBLISH_TIMEOUT))
        .await
        .expect("publisher task")
        .expect("publisher");
    let response = tokio::time::timeout(PROBE_TIMEOUT, viewer)
        .await
        .expect("the HTTP-FLV body did not end")
        .expect("viewer task");

    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&response[..split]);
    assert!(head.starts_with("HTTP/1.0 200 "), "{head}");
    let tags = flv_tag_count(&response[split + 4..]);
    // Every ingested message (52 video, 89 audio, 1 script) is one tag.
    assert_eq!(tags, 142);
    let metrics = node.metrics().await;
    let sent = metric_value(&metrics, r#"sluice_frames_out_total{protocol="http_flv"}"#);
    assert_eq!(sent, tags as f64, "{metrics}");
    node.stop().await;
}

/// Number of tags in a complete FLV byte stream (header, then tags each followed by its size).
fn flv_tag_count(flv: &[u8]) -> usize {
    assert!(flv.starts_with(b"FLV"), "not FLV");
    let mut at = 9 + 4;
    let mut tags = 0;
    while at < flv.len() {
        let header = flv.get(at..at + 11).expect("truncated tag header");
        let size = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
        at += 11 + size + 4;
        assert!(at <= flv.len(), "truncated tag {tags}");
        tags += 1;
    }
    tags
}
