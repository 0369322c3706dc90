//! HLS and LL-HLS end to end: real players (ffmpeg 5.1's and ffmpeg 9's HLS demuxers) read
//! what Sluice segments; playlists are held to the spec's rules by an independent checker
//! (`sluice_testkit::hls`) while a blocking-reload client follows the stream part by part;
//! delta updates, the preload hint, the end of a stream; bad requests get their status and
//! another stream's RTMP viewer is untouched; an edge pulls for an HLS request; metrics and
//! the API report it, and the cache lets go of a stream it no longer segments.
//!
//! Frame counts are checked against the node's own count of ingested frames
//! (`sluice_frames_in_total`), timestamps against each other (continuous across segments).

mod common;

use std::time::Duration;

use common::cluster::node;
use common::{Node, test_config};
use serde_json::Value;
use sluice_testkit::hls::{self as m3u8, Playlist};
use sluice_testkit::http::{KeepAlive, Reply, metric_value};
use sluice_testkit::node::{Spec, Transport};
use sluice_testkit::process::{self, Child};
use sluice_testkit::rtmp::{Player, Publisher};
use sluice_testkit::wait::eventually;
use sluice_testkit::{fixture, fixtures, tools};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);
/// Deadline of one HTTP exchange (a blocking reload waits at most 3 target durations).
const REQUEST: Duration = Duration::from_secs(10);
/// Deadline of a player reading a live playlist to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// 1 s segments (the fixtures' GOP), 200 ms parts, 8 segments listed.
fn hls_config(extra: &str) -> sluice_core::Config {
    test_config(&format!(
        "[hls]\ntarget_duration_ms = 1000\npart_target_ms = 200\nwindow_segments = 8\n\
         idle_timeout_ms = 10000\n{extra}"
    ))
}

fn media_path(name: &str) -> String {
    format!("/live/{name}/media.m3u8")
}

/// GETs and parses a media playlist, checking it against the spec's rules.
async fn checked_playlist(conn: &mut KeepAlive, path: &str) -> (Reply, Playlist) {
    let reply = conn.get(path, REQUEST).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    let text = reply.text();
    let playlist = m3u8::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}\n{text}"));
    if let Err(problems) = m3u8::check_media_playlist(&playlist) {
        panic!("{path} breaks the rules:\n{}\n{text}", problems.join("\n"));
    }
    (reply, playlist)
}

/// Waits until the stream's media playlist lists `segments` complete segments.
async fn wait_segments(node: &Node, name: &str, segments: usize) -> Playlist {
    let mut conn = KeepAlive::connect(node.addrs.http).await;
    let deadline = Instant::now() + WAIT + Duration::from_secs(segments as u64);
    loop {
        let reply = conn.get(&media_path(name), REQUEST).await;
        if reply.status == 200 {
            let playlist = m3u8::parse(&reply.text()).expect("playlist");
            if playlist.segments.iter().filter(|s| s.uri.is_some()).count() >= segments {
                return playlist;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name}: never {segments} segments; last answer {} {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One packet as ffprobe reports it.
#[derive(Debug, Clone, Copy)]
struct Packet {
    video: bool,
    dts_ms: f64,
}

/// What a player read: codec names by type and packets.
#[derive(Debug, Default)]
struct Read {
    video_codec: String,
    audio_codec: String,
    packets: Vec<Packet>,
}

impl Read {
    fn video(&self) -> Vec<f64> {
        self.packets
            .iter()
            .filter(|p| p.video)
            .map(|p| p.dts_ms)
            .collect()
    }
    fn audio(&self) -> Vec<f64> {
        self.packets
            .iter()
            .filter(|p| !p.video)
            .map(|p| p.dts_ms)
            .collect()
    }
}

/// Debian's ffprobe `-show_streams -show_packets` on `input` (with `input_args` before it).
fn probe_packets(input: &str, input_args: &[&str]) -> Read {
    let mut cmd = std::process::Command::new(tools::ffprobe());
    cmd.args(["-hide_banner", "-v", "error"])
        .args(input_args)
        .args([
            "-show_streams",
            "-show_packets",
            "-show_entries",
            "stream=codec_type,codec_name:packet=codec_type,dts_time",
            "-of",
            "json",
            input,
        ]);
    let out = process::run(&mut cmd, READ_TIMEOUT).unwrap_or_else(|e| panic!("{input}: {e:#}"));
    let json: Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let mut read = Read::default();
    for stream in json["streams"].as_array().into_iter().flatten() {
        let name = stream["codec_name"].as_str().unwrap_or_default().to_owned();
        match stream["codec_type"].as_str() {
            Some("video") => read.video_codec = name,
            Some("audio") => read.audio_codec = name,
            _ => {}
        }
    }
    for packet in json["packets"].as_array().into_iter().flatten() {
        let Some(dts) = packet["dts_time"]
            .as_str()
            .and_then(|t| t.parse::<f64>().ok())
        else {
            continue;
        };
        read.packets.push(Packet {
            video: packet["codec_type"] == "video",
            dts_ms: dts * 1000.0,
        });
    }
    read
}

/// The modern ffmpeg (ffmpeg 9) reads `url` from the first listed segment to the end and
/// stream-copies it into Matroska, whose packets Debian's ffprobe then lists.
fn read_with_modern(url: &str) -> Read {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("hls.mkv");
    let mut cmd = std::process::Command::new(tools::ffmpeg_modern());
    cmd.args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
        .args(["-live_start_index", "0", "-i", url])
        .args(["-map", "0:v", "-map", "0:a", "-c", "copy", "-f", "matroska"])
        .arg(&copy);
    process::run(&mut cmd, READ_TIMEOUT).unwrap_or_else(|e| panic!("ffmpeg 9 on {url}: {e:#}"));
    probe_packets(copy.to_str().expect("utf-8 path"), &[])
}

/// Every frame once, in order, no gap longer than `max_gap_ms`.
fn assert_continuous(what: &str, dts: &[f64], max_gap_ms: f64) {
    for pair in dts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > 0.0 && gap <= max_gap_ms,
            "{what}: timestamps jump from {:.1} to {:.1} ms",
            pair[0],
            pair[1]
        );
    }
}

/// A player reads a live stream from its first listed segment until the publisher leaves
/// and the playlist ends: ≥ 90 % of the ingested frames, timestamps continuous.
async fn player_reads_the_whole_stream(
    config_extra: &str,
    publisher: fn(&str) -> Child,
    read: fn(&str) -> Read,
    codecs: (&str, &str),
) {
    let node = Node::start(hls_config(config_extra)).await;
    let name = "cam";
    let mut publishing = publisher(&node.rtmp_url(&format!("live/{name}")));
    wait_segments(&node, name, 1).await;
    let url = format!("http://{}{}", node.addrs.http, media_path(name));
    let reader = tokio::task::spawn_blocking(move || read(&url));
    // About six seconds of stream (three fixture passes), then the publisher leaves.
    tokio::time::sleep(Duration::from_secs(6)).await;
    publishing.kill();
    let read = reader.await.expect("reader");
    let ingested_video = node.metric(r#"sluice_frames_in_total{kind="video"}"#).await;
    let ingested_audio = node.metric(r#"sluice_frames_in_total{kind="audio"}"#).await;
    assert_eq!(
        (read.video_codec.as_str(), read.audio_codec.as_str()),
        codecs
    );
    let (video, audio) = (read.video(), read.audio());
    assert!(
        video.len() as f64 >= 0.9 * ingested_video && ingested_video >= 100.0,
        "video: read {} of {ingested_video} frames",
        video.len()
    );
    assert!(
        audio.len() as f64 >= 0.9 * ingested_audio,
        "audio: read {} of {ingested_audio} frames",
        audio.len()
    );
    // 25 fps video (40 ms), 23 ms AAC frames: a lost frame would show as a gap of 80 or
    // 46 ms. (Where the publisher loops the 2 s fixture its own timestamps leave 63 ms.)
    assert_continuous("video", &video, 70.0);
    assert_continuous("audio", &audio, 40.0);
    node.stop().await;
}

fn ffmpeg5_h264(url: &str) -> Child {
    process::publish_looped(tools::ffmpeg5(), &fixture(fixtures::H264_AAC), url, &[])
}

fn modern_hevc(url: &str) -> Child {
    process::publish_looped(
        tools::ffmpeg_modern(),
        &fixture(fixtures::HEVC_AAC),
        url,
        &[],
    )
}

fn modern_av1(url: &str) -> Child {
    process::publish_looped(
        tools::ffmpeg_modern(),
        &fixture(fixtures::AV1_OPUS),
        url,
        &[],
    )
}

fn ffprobe5(url: &str) -> Read {
    probe_packets(url, &["-live_start_index", "0"])
}

#[tokio::test]
async fn ffmpeg5_reads_h264_aac_fmp4_segments_with_continuous_timestamps() {
    player_reads_the_whole_stream("", ffmpeg5_h264, ffprobe5, ("h264", "aac")).await;
}

#[tokio::test]
async fn ffmpeg5_reads_h264_aac_transport_stream_segments() {
    player_reads_the_whole_stream(
        "container = \"ts\"\n",
        ffmpeg5_h264,
        ffprobe5,
        ("h264", "aac"),
    )
    .await;
}

#[tokio::test]
async fn ffmpeg9_reads_hevc_aac_published_over_enhanced_rtmp() {
    player_reads_the_whole_stream("", modern_hevc, read_with_modern, ("hevc", "aac")).await;
}

#[tokio::test]
async fn ffmpeg9_reads_av1_opus_published_over_enhanced_rtmp() {
    player_reads_the_whole_stream("", modern_av1, read_with_modern, ("av1", "opus")).await;
}

/// The part after the last one a playlist lists (where its preload hint points).
fn next_part(playlist: &Playlist) -> (u64, usize) {
    let last = playlist.segments.len() - 1;
    let open = &playlist.segments[last];
    if open.uri.is_some() {
        (playlist.msn(last) + 1, 0)
    } else {
        (playlist.msn(last), open.parts.len())
    }
}

/// Whether `playlist` lists part `index` of segment `msn`.
fn lists_part(playlist: &Playlist, msn: u64, index: usize) -> bool {
    (0..playlist.segments.len()).any(|i| {
        let segment = &playlist.segments[i];
        playlist.msn(i) == msn && (segment.parts.len() > index || segment.uri.is_some())
    })
}

#[tokio::test]
async fn a_blocking_client_follows_every_part_and_every_playlist_keeps_the_rules() {
    let node = Node::start(hls_config("")).await;
    let _publishing = Publisher::fixture(node.rtmp_url("live/ll"), fixtures::H264_AAC)
        .real_time()
        .spawn();
    let mut conn = KeepAlive::connect(node.addrs.http).await;
    let first = wait_segments(&node, "ll", 1).await;
    assert!(
        first
            .server_control
            .as_ref()
            .is_some_and(|c| c.can_block_reload)
    );

    // The multivariant playlist names the codecs and the media playlist.
    let multivariant = conn.get("/live/ll.m3u8", REQUEST).await;
    assert_eq!(multivariant.status, 200);
    let text = multivariant.text();
    assert!(text.contains("#EXT-X-STREAM-INF:"), "{text}");
    assert!(text.contains("CODECS=\"avc1.4d"), "{text}");
    assert!(text.contains("mp4a.40.2"), "{text}");
    assert!(text.contains("RESOLUTION=640x360"), "{text}");
    assert!(text.contains("ll/media.m3u8"), "{text}");

    // Follow the stream part by part with blocking reloads for about 5 s.
    let (_, mut playlist) = checked_playlist(&mut conn, &media_path("ll")).await;
    let map = playlist.segments[0].map.clone().expect("EXT-X-MAP");
    let init = conn.get(&format!("/live/ll/{map}"), REQUEST).await;
    assert_eq!(init.status, 200);
    assert_eq!(&init.body[4..8], b"ftyp");
    let mut parts = 0;
    let mut waited = 0;
    let mut fetched = std::collections::HashSet::new();
    for _ in 0..25 {
        let (msn, index) = next_part(&playlist);
        let path = format!("{}?_HLS_msn={msn}&_HLS_part={index}", media_path("ll"));
        let asked = Instant::now();
        let (reply, newer) = checked_playlist(&mut conn, &path).await;
        if asked.elapsed() > Duration::from_millis(20) {
            waited += 1;
        }
        assert!(
            lists_part(&newer, msn, index),
            "{path} answered without part {msn}.{index}:\n{}",
            reply.text()
        );
        assert!(!reply.closes, "the connection stays open");
        if let Err(problems) = m3u8::check_sequence(&playlist, &newer) {
            panic!("reload broke the sequence:\n{}", problems.join("\n"));
        }
        // Fetch every part listed that was not fetched yet: each is a moof + mdat.
        for segment in &newer.segments {
            for part in &segment.parts {
                if fetched.insert(part.uri.clone()) {
                    let got = conn.get(&format!("/live/ll/{}", part.uri), REQUEST).await;
                    assert_eq!(got.status, 200, "{}", part.uri);
                    assert_eq!(&got.body[4..8], b"moof", "{}", part.uri);
                    assert!(
                        got.header("cache-control")
                            .is_some_and(|c| c.contains("max-age")),
                        "parts are cacheable"
                    );
                    parts += 1;
                }
            }
        }
        playlist = newer;
    }
    assert!(parts >= 20, "fetched {parts} parts");
    // Asked for parts not cut yet, nearly every reload had to wait for one.
    assert!(waited >= 15, "only {waited} of 25 blocking reloads waited");

    // The preload hint names the next part; asking for it waits until it is cut.
    let hint = playlist
        .preload_hints
        .first()
        .expect("a preload hint")
        .uri
        .clone();
    let hinted = conn.get(&format!("/live/ll/{hint}"), REQUEST).await;
    assert_eq!(hinted.status, 200, "{hint}");
    assert_eq!(&hinted.body[4..8], b"moof");

    // A whole segment is its parts one after the other.
    let complete = playlist
        .segments
        .iter()
        .rev()
        .find(|s| s.uri.is_some() && !s.parts.is_empty())
        .expect("a complete segment with parts");
    let mut joined = Vec::new();
    for part in &complete.parts {
        joined.extend(
            conn.get(&format!("/live/ll/{}", part.uri), REQUEST)
                .await
                .body,
        );
    }
    let uri = complete.uri.clone().expect("uri");
    let segment = conn.get(&format!("/live/ll/{uri}"), REQUEST).await;
    assert_eq!(segment.status, 200);
    assert_eq!(segment.body, joined, "{uri} is not its parts");

    // Far ahead (more than two segments past the last): 400 at once, as the spec says.
    let (msn, _) = next_part(&playlist);
    let ahead = conn
        .get(
            &format!("{}?_HLS_msn={}", media_path("ll"), msn + 10),
            REQUEST,
        )
        .await;
    assert_eq!(ahead.status, 400);

    // Delta updates, once the playlist is longer than CAN-SKIP-UNTIL (6 target durations).
    let full = wait_segments(&node, "ll", 8).await;
    let skip = format!("{}?_HLS_skip=YES", media_path("ll"));
    let (_, delta) = checked_playlist(&mut conn, &skip).await;
    let skipped = delta
        .skipped_segments
        .expect("EXT-X-SKIP in a delta update");
    assert!(skipped >= 1, "skipped {skipped}");
    assert_eq!(delta.media_sequence(), delta.msn(0) - skipped);
    assert!(
        delta.segments.len() < full.segments.len(),
        "a delta update is shorter"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_request_for_a_part_that_does_not_come_is_answered_503() {
    let node = Node::start(hls_config("")).await;
    // Two seconds of media, then the publisher stays connected and sends nothing.
    let publishing = Publisher::fixture(node.rtmp_url("live/stuck"), fixtures::H264_AAC)
        .real_time()
        .until(Duration::from_secs(2))
        .spawn();
    let playlist = wait_segments(&node, "stuck", 1).await;
    let _client = publishing.await.expect("publisher");
    let mut conn = KeepAlive::connect(node.addrs.http).await;
    let (_, current) = checked_playlist(&mut conn, &media_path("stuck")).await;
    let (msn, index) = next_part(&current);
    assert!(msn >= playlist.msn(0));
    let asked = Instant::now();
    let reply = conn
        .get(
            &format!("{}?_HLS_msn={msn}&_HLS_part={index}", media_path("stuck")),
            REQUEST,
        )
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    // Held for three target durations first (1 s segments, stretched to at least 1 s).
    assert!(asked.elapsed() >= Duration::from_secs(3));
    let waits = node.metric("sluice_hls_blocked_wait_seconds_count").await;
    assert!(waits >= 1.0, "blocked waits counted: {waits}");
    node.stop().await;
}

#[tokio::test]
async fn bad_requests_get_their_status_and_harm_no_other_viewer() {
    let node = Node::start(hls_config("[streams]\nwait_for_publisher_ms = 1000\n")).await;
    let _other = Publisher::fixture(node.rtmp_url("live/other"), fixtures::H264_AAC)
        .real_time()
        .spawn();
    let _hls = Publisher::fixture(node.rtmp_url("live/s"), fixtures::H264_AAC)
        .real_time()
        .spawn();
    let viewer = Player::start(&node.rtmp_url("live/other"), WAIT).await;
    wait_segments(&node, "s", 1).await;
    let mut conn = KeepAlive::connect(node.addrs.http).await;
    let long = "x".repeat(3000);
    let cases: Vec<(String, u16)> = vec![
        ("/live/nobody.m3u8".into(), 404),
        ("/live/nobody/media.m3u8".into(), 404),
        (format!("{}?_HLS_part=1", media_path("s")), 400),
        (format!("{}?_HLS_msn=abc", media_path("s")), 400),
        (format!("{}?_HLS_msn=1&_HLS_msn=2", media_path("s")), 400),
        (format!("{}?token={long}", media_path("s")), 414),
        ("/live/s/seg-1.m4s".into(), 404),
        ("/live/s/part-1.0.m4s".into(), 404),
        ("/live/s/init-0.mp4".into(), 404),
        ("/live/s/passwd".into(), 404),
        ("/live/s/seg-01.m4s".into(), 404),
        ("/live/s/part-99999999999999999999.0.m4s".into(), 404),
    ];
    for (path, status) in &cases {
        let reply = conn.get(path, REQUEST).await;
        assert_eq!(reply.status, *status, "{path}: {}", reply.text());
    }
    // Traversal: never a file, always refused (each on its own connection: some close).
    for (path, status) in [
        ("/live/%2e%2e/media.m3u8", 400),
        ("/live/s/../../etc/passwd", 404),
        ("/live/..%2F..%2Fetc/media.m3u8", 404),
    ] {
        let reply = sluice_testkit::http::request(node.addrs.http, "GET", path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
    }
    // After all of it, the same connection still serves, and the RTMP viewer of the other
    // stream kept receiving.
    let (_, playlist) = checked_playlist(&mut conn, &media_path("s")).await;
    assert!(!playlist.segments.is_empty());
    viewer
        .keeps_receiving(25)
        .await
        .unwrap_or_else(|e| panic!("the other stream's viewer: {e}"));
    let metrics = node.metrics().await;
    assert!(
        metric_value(
            &metrics,
            r#"sluice_hls_requests_total{resource="playlist",status="400"}"#
        ) >= 3.0,
        "{metrics}"
    );
    node.stop().await;
}

#[tokio::test]
async fn the_end_of_a_stream_ends_the_playlist_and_a_new_publisher_starts_a_new_one() {
    let node = Node::start(hls_config("")).await;
    let publishing = Publisher::fixture(node.rtmp_url("live/e"), fixtures::H264_AAC)
        .real_time()
        .until(Duration::from_secs(3))
        .spawn();
    wait_segments(&node, "e", 1).await;
    drop(publishing.await.expect("publisher"));
    let mut conn = KeepAlive::connect(node.addrs.http).await;
    let addr = node.addrs.http;
    // Within the republish grace the playlist stays live; after it, it ends.
    let ended = eventually(WAIT, || async move {
        let (status, body) = sluice_testkit::http::get(addr, &media_path("e")).await;
        status == 200 && body.contains("#EXT-X-ENDLIST")
    })
    .await;
    assert!(ended, "the playlist never got EXT-X-ENDLIST");
    let (_, last) = checked_playlist(&mut conn, &media_path("e")).await;
    assert!(last.endlist && last.preload_hints.is_empty());
    assert!(last.segments.iter().all(|s| s.uri.is_some()));
    let first_run = last.media_sequence();
    // A blocking reload of an ended playlist is answered at once.
    let (msn, index) = next_part(&last);
    let at_once = conn
        .get(
            &format!("{}?_HLS_msn={msn}&_HLS_part={index}", media_path("e")),
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(at_once.status, 200);

    // The broadcaster comes back: a new playlist, numbered past the old one.
    let _again = Publisher::fixture(node.rtmp_url("live/e"), fixtures::H264_AAC)
        .real_time()
        .spawn();
    let restarted = eventually(WAIT, || async move {
        let (status, body) = sluice_testkit::http::get(addr, &media_path("e")).await;
        status == 200 && !body.contains("#EXT-X-ENDLIST")
    })
    .await;
    assert!(restarted, "no new playlist after the publisher came back");
    let (_, fresh) = checked_playlist(&mut conn, &media_path("e")).await;
    assert!(fresh.media_sequence() > first_run);
    node.stop().await;
}

#[tokio::test]
async fn metrics_and_the_api_report_hls_and_the_cache_lets_go_of_an_idle_stream() {
    let node = Node::start(hls_config("idle_timeout_ms = 2000\n")).await;
    let _publishing = Publisher::fixture(node.rtmp_url("live/m"), fixtures::H264_AAC)
        .real_time()
        .spawn();
    wait_segments(&node, "m", 3).await;
    let mut conn = KeepAlive::connect(node.addrs.http).await;
    let (_, playlist) = checked_playlist(&mut conn, &media_path("m")).await;
    for segment in &playlist.segments {
        if let Some(uri) = &segment.uri {
            assert_eq!(
                conn.get(&format!("/live/m/{uri}"), REQUEST).await.status,
                200
            );
        }
    }
    let streams = node.streams_json().await;
    let hls = &streams["streams"][0]["hls"];
    assert!(hls["segments"].as_u64().unwrap_or(0) >= 3, "{streams}");
    assert!(hls["viewers"].as_u64() >= Some(1), "{streams}");
    assert!(
        hls["codecs"]
            .as_str()
            .unwrap_or_default()
            .starts_with("avc1.")
    );
    let window_bytes = hls["window_bytes"].as_f64().unwrap_or(0.0);
    let metrics = node.metrics().await;
    assert_eq!(metric_value(&metrics, "sluice_hls_segmenters"), 1.0);
    assert!(metric_value(&metrics, "sluice_hls_viewers") >= 1.0);
    assert!(metric_value(&metrics, "sluice_hls_parts_total") >= 10.0);
    assert!(
        metric_value(
            &metrics,
            r#"sluice_hls_requests_total{resource="segment",status="200"}"#
        ) >= 3.0
    );
    assert!(metric_value(&metrics, r#"sluice_bytes_out_total{protocol="hls"}"#) > window_bytes);
    // The cache holds about the window (+ the init, the part being added meanwhile).
    let cached = metric_value(&metrics, "sluice_hls_cache_bytes");
    assert!(
        cached > 0.0 && cached <= window_bytes * 1.1 + 64.0 * 1024.0,
        "cache {cached} B for a window of {window_bytes} B"
    );
    // Parts live in memory files, one per segment (the node runs in this process).
    let files = segment_files();
    assert!(
        (3..=12).contains(&files),
        "{files} segment files for a window of {} segments",
        playlist.segments.len()
    );
    // Nobody asks any more: the segmenter stops and its parts leave the cache.
    drop(conn);
    let released = eventually(WAIT, || async {
        let text = node.metrics().await;
        metric_value(&text, "sluice_hls_segmenters") == 0.0
            && metric_value(&text, "sluice_hls_cache_bytes") == 0.0
            && metric_value(&text, "sluice_hls_viewers") == 0.0
    })
    .await;
    assert!(released, "{}", node.metrics().await);
    let closed = eventually(WAIT, || async { segment_files() == 0 }).await;
    assert!(closed, "{} segment files still open", segment_files());
    node.stop().await;
}

/// Memory files of HLS segments this process has open.
fn segment_files() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("/memfd:sluice-hls"))
        .count()
}

#[tokio::test]
async fn an_hls_request_on_an_edge_pulls_the_stream_from_its_origin() {
    let origin = node(Spec::origin("origin", Transport::Rtmp)).await;
    let edge = node(Spec::edge(
        "edge",
        Transport::Rtmp,
        &[origin.upstream(Transport::Rtmp)],
    ))
    .await;
    let _publishing = process::publish_looped(
        tools::ffmpeg5(),
        &fixture(fixtures::H264_AAC),
        &origin.rtmp_url("pulled"),
        &[],
    );
    let mut conn = KeepAlive::connect(edge.http).await;
    let deadline = Instant::now() + WAIT;
    let playlist = loop {
        let reply = conn.get(&media_path("pulled"), REQUEST).await;
        if reply.status == 200 {
            let playlist = m3u8::parse(&reply.text()).expect("playlist");
            if playlist.segments.iter().any(|s| s.uri.is_some()) {
                break playlist;
            }
        }
        assert!(
            Instant::now() < deadline,
            "edge: {} {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    m3u8::check_media_playlist(&playlist).unwrap_or_else(|p| panic!("{}", p.join("\n")));
    assert_eq!(edge.metric("sluice_pulls").await, 1.0);
    let uri = playlist.segments[0].uri.clone().expect("segment");
    let segment = conn.get(&format!("/live/pulled/{uri}"), REQUEST).await;
    assert_eq!(segment.status, 200);
    assert_eq!(&segment.body[4..8], b"moof");
}
