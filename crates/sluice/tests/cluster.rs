//! Origin pullback and edge tiers, with every node a `sluice serve` process on loopback port 0
//! (so one can be SIGKILLed) and real clients: ffmpeg publishes, ffprobe and RTMP viewers read.
//!
//! Each scenario is an `async fn` taking the node-to-node [`Transport`]; the `#[tokio::test]`
//! functions run it over RTMP. A QUIC variant is one more three-line test passing
//! `Transport::Quic` (the nodes then get a QUIC listener and the demo cluster's TLS files).
//!
//! Assertions are on frames (which fixture frame a viewer got, keyframes, timestamps), codecs
//! and counters, not on timings; the one exception is the loop test, where "refused at once"
//! means well under the pull timeout (5 s against 10 s).
//!
//! Recognising frames: looped publishers (`-stream_loop -1 -c copy`) send the fixture's video
//! tags byte for byte on every pass, so each video message a viewer receives is placed in the
//! fixture by its payload. A viewer's video is then the fixture's frames in order, looping;
//! where it jumps (a switch of upstream, a new publisher) the frame it jumps to must be a
//! keyframe. That is "the first video after the failure is a keyframe", made exact: frames
//! already on their way when an origin dies arrive after the kill but continue the sequence.

mod common;

use std::time::Duration;

use common::cluster::{
    check_continuity, expect_not_found, first_video_since, fixture_video_index, node, sluice_once,
};
use sluice_rtmp::client::ClientEvent;
use sluice_runtime::client::{Client, RtmpUrl};
use sluice_testkit::media::{Tag, fixture_media, is_avc_config, is_keyframe};
use sluice_testkit::nginx::Nginx;
use sluice_testkit::node::{Process, Spec, Transport, WAIT, logged};
use sluice_testkit::probe::{self, ProbeReport};
use sluice_testkit::process::{self, Child};
use sluice_testkit::rtmp::{Player, Seen};
use sluice_testkit::wait::eventually;
use sluice_testkit::{fixture, fixtures, http, tools};
use tokio::time::Instant;

/// Deadline of one ffprobe run.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for a real-time publisher of the 2 s fixture to finish.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(60);
/// ffprobe options that read the first 120 packets (about 2 s) of a live stream and return.
/// A packet count, not a duration: ffmpeg's RTMP demuxer turns the `|RtmpSampleAccess`
/// message RTMP servers send players into a data packet at time 0, so a duration ("%+2")
/// would end before the first media packet of a stream that has run for over 2 s.
const SOME_PACKETS: &[&str] = &["-read_intervals", "%+#120"];

fn publish_looped(url: &str) -> Child {
    process::publish_looped(tools::ffmpeg5(), &fixture(fixtures::H264_AAC), url, &[])
}

/// ffprobe on `url` from a blocking thread; panics with ffprobe's error.
async fn probe(url: String, extra: &'static [&'static str]) -> ProbeReport {
    tokio::task::spawn_blocking(move || {
        probe::probe_with(&url, extra, PROBE_TIMEOUT).unwrap_or_else(|e| panic!("{url}: {e:#}"))
    })
    .await
    .expect("probe task")
}

/// The fixture's codecs: H.264 640x360 and AAC 44.1 kHz stereo.
fn assert_fixture_codecs(what: &str, report: &ProbeReport) {
    let video = report
        .video()
        .unwrap_or_else(|| panic!("{what}: no video: {report:?}"));
    assert_eq!(
        (video.codec(), video.width, video.height),
        ("h264", Some(640), Some(360)),
        "{what}: {report:?}"
    );
    let audio = report
        .audio()
        .unwrap_or_else(|| panic!("{what}: no audio: {report:?}"));
    assert_eq!(
        (audio.codec(), audio.sample_rate, audio.channels),
        ("aac", Some(44_100), Some(2)),
        "{what}: {report:?}"
    );
}

/// For each video keyframe of a fixture, the (video, audio) frames from it to the end, in
/// file order: what a viewer joining at that keyframe decodes. For `h264_aac.flv` the first
/// is (50, 87): the AAC frame at dts 0 precedes the first keyframe (23 ms).
fn fixture_suffixes(name: &str) -> Vec<(u64, u64)> {
    let (media, _) = fixture_media(name);
    let coded = |t: &Tag| !t.is_sequence_header() && !is_avc_config(&t.payload);
    (0..media.len())
        .filter(|&i| media[i].type_id == 9 && is_keyframe(&media[i].payload) && coded(&media[i]))
        .map(|i| {
            let count = |type_id: u8| {
                media[i..]
                    .iter()
                    .filter(|t| t.type_id == type_id && coded(t))
                    .count() as u64
            };
            (count(9), count(8))
        })
        .collect()
}

async fn start_recorders(url: &str, n: usize) -> Vec<Player> {
    let mut viewers = Vec::with_capacity(n);
    for _ in 0..n {
        viewers.push(Player::start(url, WAIT).await);
    }
    viewers
}

/// Stops the viewers and checks each recording from `since` on (`check_continuity`: never
/// closed, timestamps steady, every jump onto a keyframe); returns the recordings.
async fn assert_continuous(viewers: Vec<Player>, since: Instant, edge: &Process) -> Vec<Vec<Seen>> {
    let index = fixture_video_index(fixtures::H264_AAC);
    let mut all = Vec::new();
    for (n, v) in viewers.into_iter().enumerate() {
        let seen = v.stop().await;
        if let Err(e) = check_continuity(
            &format!("viewer {n}"),
            &seen,
            (&index.0, index.1),
            since,
            true,
        ) {
            panic!("{e}\nedge log:\n{}", edge.log());
        }
        all.push(seen);
    }
    all
}

// --- 1. origin and edge ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_serves_the_origin_stream_over_rtmp() {
    edge_serves_the_origin_stream(Transport::Rtmp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_serves_the_origin_stream_over_quic() {
    edge_serves_the_origin_stream(Transport::Quic).await;
}

/// ffmpeg publishes the fixture once, in real time, to the origin; as soon as the origin has
/// it, ffprobe reads it from the origin directly and from the edge over RTMP and HTTP-FLV.
/// Every reader gets the fixture's codecs and every frame from the keyframe it joined at to
/// the end — on an idle machine all 50 video frames — and the edge's readers exactly what
/// the direct reader got when they joined at the same keyframe. Then, with a looped stream, three edge viewers cost the origin one viewer.
async fn edge_serves_the_origin_stream(t: Transport) {
    let origin = node(Spec::origin("origin", t)).await;
    let edge = node(Spec::edge("edge", t, &[origin.upstream(t)])).await;

    let mut publisher = process::publish(
        tools::ffmpeg5(),
        &fixture(fixtures::H264_AAC),
        &origin.rtmp_url("whole"),
        true,
        &[],
    );
    origin.wait_publishing("whole").await;
    let probes = [
        origin.rtmp_url("whole"),
        edge.rtmp_url("whole"),
        edge.flv_url("whole"),
    ]
    .map(|url| tokio::spawn(probe(url, &[])));
    let published = tokio::task::spawn_blocking(move || {
        let result = publisher.wait_success(PUBLISH_TIMEOUT);
        (publisher, result)
    });
    let mut reports = Vec::new();
    for p in probes {
        reports.push(p.await.expect("probe"));
    }
    let (_publisher, result) = published.await.expect("publisher");
    result.expect("publisher");

    // A viewer joining a live stream starts at the newest cached keyframe; the probes join
    // within the first GOP unless the machine is very busy. Whatever the keyframe, each
    // must get everything from it to the end of the stream.
    let suffixes = fixture_suffixes(fixtures::H264_AAC);
    let frames = |r: &ProbeReport| {
        (
            r.video().map_or(0, |s| s.frames()),
            r.audio().map_or(0, |s| s.frames()),
        )
    };
    let direct = &reports[0];
    for (what, report) in [
        ("origin RTMP", direct),
        ("edge RTMP", &reports[1]),
        ("edge HTTP-FLV", &reports[2]),
    ] {
        assert_fixture_codecs(what, report);
        let (video, audio) = frames(report);
        // The audio around a keyframe is in the publisher's interleaving order, which may
        // differ from the file's by a frame.
        assert!(
            suffixes
                .iter()
                .any(|&(v, a)| video == v && audio.abs_diff(a) <= 1),
            "{what}: {video} video / {audio} audio frames is not the fixture from one of \
             its keyframes on ({suffixes:?}): {report:?}"
        );
        if video == frames(direct).0 {
            assert_eq!(
                frames(report),
                frames(direct),
                "{what}: frames differ from the origin's"
            );
        }
    }

    // Many viewers at the edge are one viewer at the origin.
    let _looped = publish_looped(&origin.rtmp_url("many"));
    origin.wait_publishing("many").await;
    let viewers = start_recorders(&edge.rtmp_url("many"), 3).await;
    let since = Instant::now();
    for v in &viewers {
        v.wait_videos(5, since).await;
    }
    let origin_side = origin.stream("many").await.expect("origin has the stream");
    let edge_side = edge.stream("many").await.expect("edge has the stream");
    assert_eq!(origin_side["viewers"], 1, "origin: {origin_side}");
    assert_eq!(edge_side["viewers"], 3, "edge: {edge_side}");
    let pull = edge.pull("many").await.expect("edge pulls the stream");
    assert_eq!(pull["state"], "live", "{pull}");
    assert_eq!(pull["upstream"], origin.upstream(t), "{pull}");
    assert_eq!(pull["transport"], t.label(), "{pull}");
    for v in viewers {
        v.stop().await;
    }
}

// --- 2. a crowd asks for a cold stream ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_on_a_cold_stream_makes_one_pull_over_rtmp() {
    a_crowd_on_a_cold_stream_makes_one_pull(Transport::Rtmp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_on_a_cold_stream_makes_one_pull_over_quic() {
    a_crowd_on_a_cold_stream_makes_one_pull(Transport::Quic).await;
}

/// 500 RTMP viewers ask the edge for a stream it does not have yet, all at once: the edge
/// pulls it once, and every viewer gets the sequence header and then a keyframe first.
async fn a_crowd_on_a_cold_stream_makes_one_pull(t: Transport) {
    const VIEWERS: usize = 500;
    let origin = node(Spec::origin("origin", t)).await;
    let edge = node(Spec::edge("edge", t, &[origin.upstream(t)])).await;
    let _publisher = publish_looped(&origin.rtmp_url("herd"));
    origin.wait_publishing("herd").await;

    let url = RtmpUrl::parse(&edge.rtmp_url("herd")).expect("url");
    // Spawned in a loop with no await between: all start within a few milliseconds.
    let viewers: Vec<_> = (0..VIEWERS)
        .map(|_| tokio::spawn(first_video(url.clone())))
        .collect();
    let mut clients = Vec::with_capacity(VIEWERS);
    let mut failures = Vec::new();
    for (n, v) in viewers.into_iter().enumerate() {
        match v.await.expect("viewer task") {
            Ok(client) => clients.push(client),
            Err(e) => failures.push(format!("viewer {n}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {VIEWERS} viewers failed: {:?}\nedge log:\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        edge.log()
    );

    let starts = format!("sluice_pull_starts_total{{transport=\"{}\"}}", t.label());
    assert_eq!(edge.metric(&starts).await, 1.0, "one pull for the crowd");
    assert_eq!(edge.metric_sum("sluice_pull_starts_total").await, 1.0);
    let origin_side = origin.stream("herd").await.expect("origin has the stream");
    assert_eq!(origin_side["viewers"], 1, "origin: {origin_side}");
    if t == Transport::Rtmp {
        // ffmpeg's and the edge's: nobody else connected.
        assert_eq!(
            origin
                .metric("sluice_connections_total{protocol=\"rtmp\"}")
                .await,
            2.0
        );
    }
    let edge_side = edge.stream("herd").await.expect("edge has the stream");
    assert_eq!(edge_side["viewers"], VIEWERS, "edge: {edge_side}");
    drop(clients);
}

/// Plays `url` until the first coded video frame; it must follow the AVC sequence header
/// and be a keyframe. Returns the client, still playing.
async fn first_video(url: RtmpUrl) -> Result<Client, String> {
    let mut client = Client::play(&url, WAIT)
        .await
        .map_err(|e| format!("play: {e}"))?;
    let mut header = false;
    tokio::time::timeout(WAIT, async {
        loop {
            match client.next_event().await {
                Ok(Some(ClientEvent::Media {
                    type_id: 9,
                    payload,
                    ..
                })) => {
                    if is_avc_config(&payload) {
                        header |= payload.get(1) == Some(&0);
                        continue;
                    }
                    if !header {
                        return Err("a video frame before the sequence header".to_owned());
                    }
                    if !is_keyframe(&payload) {
                        return Err("the first video frame is not a keyframe".to_owned());
                    }
                    return Ok(());
                }
                Ok(Some(_)) => {}
                other => return Err(format!("ended before video: {other:?}")),
            }
        }
    })
    .await
    .map_err(|_| "no video".to_owned())??;
    Ok(client)
}

// --- 3. failover between origins ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_fails_over_when_its_origin_dies_over_rtmp() {
    edge_fails_over_when_its_origin_dies(Transport::Rtmp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_fails_over_when_its_origin_dies_over_quic() {
    edge_fails_over_when_its_origin_dies(Transport::Quic).await;
}

/// Two origins have the same stream; five viewers watch it at the edge. The origin the edge
/// pulls from is SIGKILLed: every viewer stays connected and gets video again, spliced in at
/// a keyframe, its timestamps never going back; the edge now pulls from the other origin.
async fn edge_fails_over_when_its_origin_dies(t: Transport) {
    let mut o1 = node(Spec::origin("o1", t)).await;
    let mut o2 = node(Spec::origin("o2", t)).await;
    let edge = node(Spec::edge("edge", t, &[o1.upstream(t), o2.upstream(t)])).await;
    let _p1 = publish_looped(&o1.rtmp_url("fo"));
    let _p2 = publish_looped(&o2.rtmp_url("fo"));
    o1.wait_publishing("fo").await;
    o2.wait_publishing("fo").await;

    let viewers = start_recorders(&edge.rtmp_url("fo"), 5).await;
    let since = Instant::now();
    for v in &viewers {
        v.wait_videos(10, since).await;
    }
    let pull = edge.pull("fo").await.expect("edge pulls the stream");
    let used = pull["upstream"].as_str().expect("an upstream").to_owned();
    let (dead, alive) = if used == o1.upstream(t) {
        (&mut o1, o2.upstream(t))
    } else {
        assert_eq!(used, o2.upstream(t), "{pull}");
        (&mut o2, o1.upstream(t))
    };
    let killed = Instant::now();
    dead.kill();

    let switched = eventually(WAIT, || async {
        edge.pull("fo")
            .await
            .is_some_and(|p| p["upstream"] == alive.as_str() && p["switches"].as_u64() >= Some(1))
    })
    .await;
    assert!(
        switched,
        "the edge did not switch to {alive}: {:?}\n{}",
        edge.pull("fo").await,
        edge.log()
    );
    // 30 frames: more than a GOP, so well past the splice.
    for v in &viewers {
        v.wait_videos(30, killed).await;
    }
    assert!(edge.metric_sum("sluice_pull_switches_total").await >= 1.0);
    assert_continuous(viewers, since, &edge).await;
}

// --- 4. the broadcaster moves to another origin ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_viewers_follow_the_broadcaster_to_another_origin_over_rtmp() {
    edge_viewers_follow_the_broadcaster_to_another_origin(Transport::Rtmp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_viewers_follow_the_broadcaster_to_another_origin_over_quic() {
    edge_viewers_follow_the_broadcaster_to_another_origin(Transport::Quic).await;
}

/// The broadcaster's only origin dies; the broadcaster reconnects to the other one. Viewers
/// at the edge, held by the republish grace, get the stream again, starting at a keyframe.
async fn edge_viewers_follow_the_broadcaster_to_another_origin(t: Transport) {
    let mut o1 = node(Spec::origin("o1", t)).await;
    let o2 = node(Spec::origin("o2", t)).await;
    let edge = node(
        Spec::edge("edge", t, &[o1.upstream(t), o2.upstream(t)])
            .with("[streams]\nrepublish_grace_ms = 5000"),
    )
    .await;
    let mut p1 = publish_looped(&o1.rtmp_url("mv"));
    o1.wait_publishing("mv").await;
    let viewers = start_recorders(&edge.rtmp_url("mv"), 3).await;
    let since = Instant::now();
    for v in &viewers {
        v.wait_videos(10, since).await;
    }

    o1.kill();
    // The broadcaster's connection is gone; it notices by itself (or is told to stop).
    let deadline = Instant::now() + Duration::from_secs(5);
    while p1.is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p1.kill();
    let republished = Instant::now();
    let _p2 = publish_looped(&o2.rtmp_url("mv"));
    for v in &viewers {
        v.wait_videos(30, republished).await;
    }
    let pull = edge.pull("mv").await.expect("edge pulls the stream");
    assert_eq!(pull["upstream"], o2.upstream(t), "{pull}");
    for (n, seen) in assert_continuous(viewers, since, &edge)
        .await
        .iter()
        .enumerate()
    {
        let first =
            first_video_since(seen, republished).expect("video after the broadcaster came back");
        assert!(
            is_keyframe(&first),
            "viewer {n}: the first frame from the new origin is not a keyframe"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_restarted_in_place_is_pulled_from_again_over_rtmp() {
    an_origin_restarted_in_place_is_pulled_from_again(Transport::Rtmp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_restarted_in_place_is_pulled_from_again_over_quic() {
    an_origin_restarted_in_place_is_pulled_from_again(Transport::Quic).await;
}

/// The edge's only origin dies and comes back on the same addresses, and the broadcaster
/// with it. Over QUIC nothing tells the edge the old process died (a killed peer sends no
/// close), so this checks that the edge does not keep asking on its connection to the dead
/// process: its viewers, held by the republish grace, get the stream again at a keyframe.
async fn an_origin_restarted_in_place_is_pulled_from_again(t: Transport) {
    let mut o1 = node(Spec::origin("o1", t)).await;
    let edge = node(
        Spec::edge("edge", t, &[o1.upstream(t)]).with("[streams]\nrepublish_grace_ms = 10000"),
    )
    .await;
    let mut p1 = publish_looped(&o1.rtmp_url("rs"));
    o1.wait_publishing("rs").await;
    let viewers = start_recorders(&edge.rtmp_url("rs"), 2).await;
    let since = Instant::now();
    for v in &viewers {
        v.wait_videos(10, since).await;
    }

    o1.kill();
    p1.kill();
    let mut same_place = format!("[rtmp]\nlisten = \"{}\"\n", o1.rtmp);
    if let Some(quic) = o1.quic {
        same_place.push_str(&format!("[cluster]\nquic_listen = \"{quic}\"\n"));
    }
    let o1 = node(Spec::origin("o1", t).with(&same_place)).await;
    let _p1 = publish_looped(&o1.rtmp_url("rs"));
    let republished = Instant::now();
    for v in &viewers {
        v.wait_videos(30, republished).await;
    }
    assert_continuous(viewers, since, &edge).await;
}

// --- 5. a third-party origin ----------------------------------------------------------------

/// nginx-rtmp as the origin: the edge pulls from it like from any RTMP server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_pulls_from_nginx_rtmp() {
    let nginx = tokio::task::spawn_blocking(|| Nginx::start(WAIT))
        .await
        .expect("nginx task")
        .expect("nginx-rtmp");
    let upstream = format!("rtmp://{}/live", nginx.addr());
    let edge = node(Spec::edge(
        "edge",
        Transport::Rtmp,
        std::slice::from_ref(&upstream),
    ))
    .await;
    let _publisher = publish_looped(&nginx.url("ng"));
    // nginx has no API: wait until it plays the stream to a viewer of its own.
    let mut direct = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(c) = first_video(RtmpUrl::parse(&nginx.url("ng")).expect("url")).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nginx never played the stream:\n{}", nginx.stderr_tail()));
    let _ = direct.next_event().await;
    drop(direct);

    let report = probe(edge.rtmp_url("ng"), SOME_PACKETS).await;
    assert_fixture_codecs("edge of nginx-rtmp", &report);
    assert!(report.video().is_some_and(|v| v.frames() > 0), "{report:?}");
    let pull = edge.pull("ng").await.expect("edge pulls the stream");
    assert_eq!(pull["upstream"], upstream.as_str(), "{pull}");
    assert_eq!(
        edge.metric("sluice_pull_starts_total{transport=\"rtmp\"}")
            .await,
        1.0
    );
}

// --- 6. tiers and loops --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tiers_origin_mid_edge_over_rtmp() {
    three_tiers_origin_mid_edge(Transport::Rtmp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tiers_origin_mid_edge_over_quic() {
    three_tiers_origin_mid_edge(Transport::Quic).await;
}

/// origin → mid → edge: ffprobe at the edge reads the stream; mid pulls from the origin and
/// the edge from mid.
async fn three_tiers_origin_mid_edge(t: Transport) {
    let origin = node(Spec::origin("origin", t)).await;
    let mid = node(Spec::edge("mid", t, &[origin.upstream(t)])).await;
    let edge = node(Spec::edge("edge", t, &[mid.upstream(t)])).await;
    let _publisher = publish_looped(&origin.rtmp_url("tier"));
    origin.wait_publishing("tier").await;

    let report = probe(edge.rtmp_url("tier"), SOME_PACKETS).await;
    assert_fixture_codecs("edge of mid of origin", &report);
    assert!(report.video().is_some_and(|v| v.frames() > 0), "{report:?}");
    // Pulls outlive their last viewer by idle_timeout_ms (5 s).
    for (node, from) in [(&mid, &origin), (&edge, &mid)] {
        let pull = node
            .pull("tier")
            .await
            .unwrap_or_else(|| panic!("{} has no pull:\n{}", node.id, node.log()));
        assert_eq!(pull["upstream"], from.upstream(t), "{}: {pull}", node.id);
        assert_eq!(pull["state"], "live", "{}: {pull}", node.id);
    }
    let origin_side = origin.stream("tier").await.expect("origin has the stream");
    assert_eq!(origin_side["viewers"], 1, "origin: {origin_side}");
}

/// A and B each pull from the other and nobody publishes: the request comes back to A, which
/// refuses it as a loop, and A's viewer is told "not found" at once, not after the pull
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_loop_is_refused_at_once() {
    let t = Transport::Rtmp;
    // B's port is needed before B starts: pick one that was free a moment ago.
    let b_rtmp = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let slow = "[cluster.pull]\ntimeout_ms = 10000";
    let mut a = Spec::edge("loop-a", t, &[format!("rtmp://{b_rtmp}/live")]).with(slow);
    a.role = "both";
    let a = node(a).await;
    let mut b = Spec::edge("loop-b", t, &[a.upstream(t)])
        .with(slow)
        .with(&format!("[rtmp]\nlisten = \"{b_rtmp}\""));
    b.role = "both";
    let b = node(b).await;

    let asked = Instant::now();
    let description = expect_not_found(&a.rtmp_url("nowhere")).await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "not found after {took:?} ({description}); the pull timeout is 10 s"
    );
    let refused = "sluice_pull_failures_total{reason=\"refused\"}";
    let refusals = a.metric(refused).await + b.metric(refused).await;
    assert!(refusals >= 1.0, "no refusal counted");
    let (log_a, log_b) = (a.log(), b.log());
    assert!(
        logged(&log_a, "pull refused", "pull loop") || logged(&log_b, "pull refused", "pull loop"),
        "no \"pull refused\" log line naming the loop\nA:\n{log_a}\nB:\n{log_b}"
    );
}

#[test]
fn check_config_refuses_the_node_itself_as_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("self.toml");
    std::fs::write(
        &config,
        "[rtmp]\nlisten = \"127.0.0.1:1935\"\n\
         [cluster]\nrole = \"edge\"\nnode_id = \"self\"\n\
         [cluster.apps.live]\nupstreams = [\"rtmp://127.0.0.1:1935/live\"]\n",
    )
    .expect("write config");
    let (ok, stderr) = sluice_once(&["check-config", config.to_str().expect("UTF-8 path")]);
    assert!(!ok, "check-config accepted a pull loop:\n{stderr}");
    assert!(stderr.contains("pull loop"), "{stderr}");
}

// --- 7. misses ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_are_remembered_over_rtmp() {
    misses_are_remembered(Transport::Rtmp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_are_remembered_over_quic() {
    misses_are_remembered(Transport::Quic).await;
}

/// An HTTP-FLV viewer and then 50 RTMP viewers, one after another, ask the edge for a stream
/// nobody has: the origin is asked once (twice at most), the rest are answered from the
/// remembered miss.
async fn misses_are_remembered(t: Transport) {
    let origin = node(Spec::origin("origin", t)).await;
    // A TTL far longer than the 50 requests take, however slow the machine.
    let edge = node(
        Spec::edge("edge", t, &[origin.upstream(t)]).with("[cluster.pull]\nmiss_ttl_ms = 20000"),
    )
    .await;
    // HTTP-FLV too: the failed pull is a 404 at once, not after the pull timeout (5 s here).
    let asked = Instant::now();
    let (status, _) = http::get(edge.http, "/live/ghost.flv").await;
    assert_eq!(status, 404);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    for _ in 0..50 {
        expect_not_found(&edge.rtmp_url("ghost")).await;
    }
    let not_found = edge
        .metric("sluice_pull_failures_total{reason=\"not_found\"}")
        .await;
    assert!(
        (1.0..=2.0).contains(&not_found),
        "the edge asked the origin {not_found} times"
    );
    if t == Transport::Rtmp {
        let asked = origin
            .metric("sluice_connections_refused_total{protocol=\"rtmp\",reason=\"pull_not_found\"}")
            .await;
        assert!(
            (1.0..=2.0).contains(&asked),
            "the origin was asked {asked} times"
        );
    }
    let cached = edge.metric("sluice_pull_misses_cached_total").await;
    assert!(cached >= 41.0, "{cached} misses answered from the cache");
}
