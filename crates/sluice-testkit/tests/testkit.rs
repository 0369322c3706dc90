//! Tests of the testkit itself; they also pin the fixtures' contents (see fixtures/README.md).

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use sluice_testkit::probe::{ProbeReport, probe, probe_via_modern};
use sluice_testkit::process::{Child, publish};
use sluice_testkit::{fixture, fixtures, tools};

const T: Duration = Duration::from_secs(60);

struct Expect {
    video: &'static str,
    video_profile: &'static str,
    audio: &'static str,
    sample_rate: u32,
    video_frames: u64,
    audio_frames: u64,
}

fn expect(name: &str) -> Expect {
    match name {
        fixtures::H264_AAC => Expect {
            video: "h264",
            video_profile: "Main",
            audio: "aac",
            sample_rate: 44_100,
            video_frames: 50,
            audio_frames: 88,
        },
        fixtures::H264_AAC_BFRAMES => Expect {
            video: "h264",
            video_profile: "High",
            audio: "aac",
            sample_rate: 44_100,
            video_frames: 50,
            audio_frames: 88,
        },
        fixtures::HEVC_AAC => Expect {
            video: "hevc",
            video_profile: "Main",
            audio: "aac",
            sample_rate: 44_100,
            video_frames: 50,
            audio_frames: 88,
        },
        fixtures::AV1_OPUS => Expect {
            video: "av1",
            video_profile: "Main",
            audio: "opus",
            sample_rate: 48_000,
            video_frames: 50,
            audio_frames: 101,
        },
        other => panic!("unknown fixture {other}"),
    }
}

const ALL: [&str; 4] = [
    fixtures::H264_AAC,
    fixtures::H264_AAC_BFRAMES,
    fixtures::HEVC_AAC,
    fixtures::AV1_OPUS,
];

fn check(name: &str, report: &ProbeReport) {
    let e = expect(name);
    assert_eq!(report.streams.len(), 2, "{name}: {report:?}");
    let v = report
        .video()
        .unwrap_or_else(|| panic!("{name}: no video: {report:?}"));
    assert_eq!(v.codec(), e.video, "{name}");
    assert_eq!(v.profile.as_deref(), Some(e.video_profile), "{name}");
    assert_eq!((v.width, v.height), (Some(640), Some(360)), "{name}");
    assert_eq!(
        v.nb_read_frames,
        Some(e.video_frames),
        "{name}: video frames"
    );
    let a = report
        .audio()
        .unwrap_or_else(|| panic!("{name}: no audio: {report:?}"));
    assert_eq!(a.codec(), e.audio, "{name}");
    assert_eq!(a.sample_rate, Some(e.sample_rate), "{name}");
    assert_eq!(a.channels, Some(2), "{name}");
    assert_eq!(
        a.nb_read_frames,
        Some(e.audio_frames),
        "{name}: audio frames"
    );
}

#[test]
fn fixtures_probe_as_documented() {
    for name in ALL {
        let path = fixture(name);
        let report = probe(path.to_str().unwrap(), T).unwrap();
        check(name, &report);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < 300 * 1024, "{name} is {size} bytes");
    }
}

/// Each fixture stream-copies to FLV (enhanced FLV for HEVC/AV1/Opus, via the modern ffmpeg)
/// without losing a frame, and the modern-ffmpeg probe path reads it back.
#[test]
fn fixtures_copy_to_flv_losslessly() {
    let dir = tempfile::tempdir().unwrap();
    for name in ALL {
        let legacy = name.ends_with(".flv");
        let ffmpeg = if legacy {
            tools::ffmpeg5()
        } else {
            tools::ffmpeg_modern()
        };
        let out = dir.path().join(format!("{name}.copy.flv"));
        let mut publisher = publish(ffmpeg, &fixture(name), out.to_str().unwrap(), false, &[]);
        publisher.wait_success(T).unwrap();
        let report = probe_via_modern(out.to_str().unwrap(), T).unwrap();
        check(name, &report);
        if legacy {
            check(name, &probe(out.to_str().unwrap(), T).unwrap());
        }
    }
}

#[test]
fn tool_versions() {
    let v5 = tools::version(tools::ffmpeg5());
    assert!(v5.starts_with("ffmpeg version 5."), "{v5}");
    let vp = tools::version(tools::ffprobe());
    assert!(vp.starts_with("ffprobe version"), "{vp}");
    let vm = tools::version(tools::ffmpeg_modern());
    assert!(vm.starts_with("ffmpeg version"), "{vm}");
}

/// A server that accepts and never answers must not hang a probe.
#[test]
fn probe_times_out_and_kills() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("rtmp://{}/live/stuck", listener.local_addr().unwrap());
    let start = Instant::now();
    let err = probe(&url, Duration::from_secs(2)).unwrap_err();
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(6), "took {elapsed:?}");
    assert!(format!("{err:#}").contains("killed"), "{err:#}");
    let start = Instant::now();
    let err = probe_via_modern(&url, Duration::from_secs(2)).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}",
        start.elapsed()
    );
    assert!(format!("{err:#}").contains("killed"), "{err:#}");
}

#[test]
fn probe_error_carries_stderr() {
    let err = probe("/nonexistent/file.flv", T).unwrap_err();
    assert!(format!("{err:#}").contains("No such file"), "{err:#}");
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn child_is_killed_on_drop() {
    let mut child = Child::spawn(Command::new("sleep").arg("30")).unwrap();
    let pid = child.id();
    assert!(child.wait_timeout(Duration::from_millis(100)).is_none());
    assert!(child.is_running());
    let start = Instant::now();
    drop(child);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(!alive(pid));
}

#[test]
fn child_ignoring_sigterm_is_sigkilled() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' TERM; echo ready >&2; exec sleep 30"]);
    let mut child = Child::spawn(&mut cmd).unwrap();
    let start = Instant::now();
    while !child.stderr_tail().contains("ready") {
        assert!(start.elapsed() < Duration::from_secs(5), "sh never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child.terminate(Duration::from_millis(200));
    assert!(!status.success());
    assert!(!alive(child.id()));
}

#[test]
fn child_stderr_tail_and_wait_success() {
    let mut child = Child::spawn(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap();
    let err = child.wait_success(T).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("boom") && msg.contains('3'), "{msg}");
}
