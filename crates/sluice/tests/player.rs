//! The player page in a real browser: Debian's headless Chromium opens `/play/live/NAME`
//! while ffmpeg publishes a moving test picture, and the video must play, change from
//! screenshot to screenshot, and report its latency behind live (printed to the test log).
//! Chromium, playwright-core and the player libraries are installed on first use
//! (`sluice_testkit::browser`).

#![allow(clippy::print_stderr)] // the latency a viewer sees, for the test log

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Node, test_config};
use sluice_testkit::browser::{self, PlayReport};
use sluice_testkit::process::Child;
use sluice_testkit::tools;
use sluice_testkit::wait::eventually;
use tokio::time::Instant;

/// How long the browser watches once the video plays.
const WATCH: Duration = Duration::from_secs(6);
/// The publisher stops by itself after this long, whatever happens to the test.
const PUBLISH_SECONDS: &str = "120";

/// ffmpeg publishing a moving picture (testsrc2, 640x360 30 fps, H.264 baseline with a
/// keyframe every second) and a tone (AAC) in real time.
fn publish_test_picture(url: &str) -> Child {
    Child::spawn(
        Command::new(tools::ffmpeg5())
            .args(["-hide_banner", "-nostdin", "-loglevel", "error", "-re"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
            .args(["-t", PUBLISH_SECONDS])
            .args([
                "-c:v",
                "libx264",
                "-profile:v",
                "baseline",
                "-preset",
                "veryfast",
            ])
            .args(["-tune", "zerolatency", "-pix_fmt", "yuv420p", "-g", "30"])
            .args(["-c:a", "aac", "-b:a", "96k"])
            .args(["-f", "flv", url]),
    )
    .expect("starting ffmpeg")
}

/// A node serving the player page with its libraries from the test cache, and a live
/// stream `live/NAME` on it.
async fn node_with_live_stream(name: &str) -> (Node, Child) {
    let started = Instant::now();
    let assets = tokio::task::spawn_blocking(|| {
        // First use installs these (timed in the log); later runs find them.
        browser::chromium();
        browser::playwright();
        browser::player_assets().to_owned()
    })
    .await
    .expect("browser kit");
    eprintln!("browser kit ready in {:.1?}", started.elapsed());
    let node = Node::start(test_config(&format!(
        "[player]\nassets_dir = {:?}\n",
        assets.display().to_string()
    )))
    .await;
    let publisher = publish_test_picture(&node.rtmp_url(&format!("live/{name}")));
    assert!(
        eventually(Duration::from_secs(20), || async {
            node.metric("sluice_frames_in_total{kind=\"video\"}").await > 30.0
        })
        .await,
        "the publisher's frames never arrived"
    );
    (node, publisher)
}

async fn play(url: String) -> PlayReport {
    tokio::task::spawn_blocking(move || browser::play_page(&url, WATCH))
        .await
        .expect("browser task")
        .expect("the browser ran")
}

fn check(report: &PlayReport, engine: &str) {
    let summary = format!(
        "playing {} after {:?}, engine {:?}, state {:?}, picture changed {}, latency median {:?} \
         max {:?} ({} samples), errors {:?}, screenshots {:?}, page {:?}",
        report.playing,
        report.time_to_play,
        report.engine,
        report.state,
        report.picture_changed,
        report.median_latency(),
        report.max_latency(),
        report.latency.len(),
        report.errors,
        report
            .screenshots
            .iter()
            .map(|s| (&s.frame_hash, s.current_time))
            .collect::<Vec<_>>(),
        report.page_screenshot,
    );
    eprintln!("{engine}: {summary}");
    assert!(report.playing, "{summary}");
    assert_eq!(report.engine.as_deref(), Some(engine), "{summary}");
    assert!(report.screenshots.len() >= 2, "{summary}");
    assert!(
        report.picture_changed,
        "the picture never changed: {summary}"
    );
    let times: Vec<f64> = report.screenshots.iter().map(|s| s.current_time).collect();
    assert!(
        times.last() > times.first(),
        "the video's time did not move: {summary}"
    );
    assert!(!report.latency.is_empty(), "no latency reported: {summary}");
    assert!(
        report.latency.iter().all(|l| l.is_finite() && *l >= 0.0),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_http_flv_on_the_player_page() {
    let (node, mut publisher) = node_with_live_stream("flvpage").await;
    let url = format!("http://{}/play/live/flvpage?format=flv", node.addrs.http);
    let report = play(url).await;
    assert!(
        publisher.is_running(),
        "ffmpeg stopped: {}",
        publisher.stderr_tail()
    );
    check(&report, "mpegts.js");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_plays_ll_hls_on_the_player_page() {
    let (node, mut publisher) = node_with_live_stream("hlspage").await;
    let url = format!("http://{}/play/live/hlspage", node.addrs.http);
    let report = play(url).await;
    assert!(
        publisher.is_running(),
        "ffmpeg stopped: {}",
        publisher.stderr_tail()
    );
    check(&report, "hls.js");
    let worst = report.max_latency().unwrap_or(f64::MAX);
    assert!(worst <= 3.0, "LL-HLS latency {worst:.2} s over 3 s");
    node.stop().await;
}
