//! The latency budget end to end: a viewer that stops reading for 10 s and one that reads at
//! half the stream's bitrate are kept within `max_latency_ms` once they read again, moved
//! forward at keyframes, with the reasons counted; a viewer that keeps up loses nothing.
//!
//! Ages are measured at the player: the time from the publisher sending a frame to the
//! player decoding it from the socket. Whatever sat in the kernel's buffers when a viewer
//! paused is necessarily old when it resumes, and a reader slower than the stream needs
//! time to drain a frame it has started; both are allowed for explicitly, from the socket
//! buffer sizes the test sets, so what is asserted is the server's own bound.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::rtmp::{DEADLINE, Tag, fixture_media, handshake_on, url};
use common::{Node, test_config};
use sluice_media::flv::TAG_VIDEO;
use sluice_proto::client::Client;
use sluice_rtmp::chunk::ChunkLimits;
use sluice_rtmp::client::{ClientConfig, ClientEvent};
use sluice_rtmp::connection::ClientConnection;
use sluice_testkit::fixtures::H264_AAC;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUDGET_MS: u64 = 800;
const FRAME_INTERVAL: Duration = Duration::from_millis(40);
/// Measurement slack: the publisher, the server and the players share one process and two
/// threads, on a CI machine that may be busy; a late wake-up of any of them shows up as age.
/// (Without the budget, ages here reach the full 10 s pause.)
const SLACK: Duration = Duration::from_millis(250);
/// The viewers' socket buffers: the server's send buffer (the kernel doubles what is set)
/// and the player's receive buffer.
const SERVER_SNDBUF: usize = 8 * 1024;
const PLAYER_RCVBUF: u32 = 4 * 1024;
/// What the kernel can hold between the two (it doubles the sizes set), with some slack.
const IN_FLIGHT: usize = 2 * SERVER_SNDBUF + 2 * PLAYER_RCVBUF as usize + 8 * 1024;

fn config() -> sluice_core::Config {
    test_config(&format!(
        "[streams]\ngop_cache_gops = 30\n[schedule.apps.live]\nmax_latency_ms = {BUDGET_MS}\ndrop_disposable_after_ms = 200\n\
         drop_inter_after_ms = 500\nsend_buffer_bytes = {SERVER_SNDBUF}\n"
    ))
}

/// When each (type, timestamp) was sent.
type SendTimes = Arc<Mutex<HashMap<(u8, u32), Instant>>>;

/// Publishes the fixture in real time (each tag at its timestamp), looping for `duration`.
fn real_time_publisher(
    url_text: String,
    duration: Duration,
) -> (SendTimes, tokio::task::JoinHandle<()>) {
    let sent: SendTimes = Arc::default();
    let record = sent.clone();
    let task = tokio::spawn(async move {
        let (tags, metadata) = fixture_media(H264_AAC);
        let mut publisher = Client::publish(&url(&url_text), DEADLINE)
            .await
            .expect("publish");
        publisher.send_metadata(metadata).await.expect("metadata");
        let span = tags.last().map_or(0, |t| t.timestamp) + 40;
        let start = Instant::now();
        for pass in 0.. {
            for tag in &tags {
                if pass > 0 && common::rtmp::is_sequence_header(tag) {
                    continue;
                }
                let ts = tag.timestamp + pass * span;
                let due = start + Duration::from_millis(u64::from(ts));
                if due > start + duration {
                    return;
                }
                tokio::time::sleep_until(due.into()).await;
                record
                    .lock()
                    .expect("lock")
                    .insert((tag.type_id, ts), Instant::now());
                publisher
                    .send_media(tag.type_id, ts, tag.payload.clone())
                    .await
                    .expect("send");
            }
        }
    });
    (sent, task)
}

/// A frame a player decoded, when, and how many bytes it had read by then.
struct Received {
    tag: Tag,
    at: Instant,
    bytes_before: usize,
}

/// How a test player reads.
#[derive(Clone, Copy)]
enum Pace {
    /// Reads normally, pauses from `at` for `pause`, then reads as fast as it can.
    PauseAt { at: Duration, pause: Duration },
    /// Reads `bytes_per_sec` at most, in small pieces.
    Rate { bytes_per_sec: usize },
}

/// A player on a socket with a small receive buffer, reading as `pace` says, for `total`.
async fn player(
    addr: std::net::SocketAddr,
    pace: Pace,
    total: Duration,
) -> (Vec<Received>, Instant) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(PLAYER_RCVBUF).expect("rcvbuf");
    let socket = socket.connect(addr).await.expect("connect");
    let mut socket = handshake_on(socket).await;
    let mut conn = ClientConnection::new(
        ClientConfig {
            tc_url: format!("rtmp://{addr}/live"),
            ..ClientConfig::default()
        },
        ChunkLimits::default(),
    );
    conn.session.connect();
    conn.session.play("sched");
    let started = Instant::now();
    let mut resumed = started;
    let mut out = BytesMut::new();
    let mut got = Vec::new();
    let mut read_total = 0usize;
    let mut buf = vec![0u8; 1024];
    while started.elapsed() < total {
        conn.drain_output(&mut out);
        if !out.is_empty() {
            socket.write_all(&out.split()).await.expect("write");
        }
        match pace {
            Pace::PauseAt { at, pause } if started.elapsed() >= at && resumed == started => {
                tokio::time::sleep(pause).await;
                resumed = Instant::now();
            }
            Pace::Rate { bytes_per_sec } => {
                let allowed = started.elapsed().as_secs_f64() * bytes_per_sec as f64;
                if read_total as f64 > allowed {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
            _ => {}
        }
        let n = match tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buf)).await
        {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => continue,
        };
        read_total += n;
        conn.handle_input(&buf[..n]).expect("valid RTMP");
        let now = Instant::now();
        while let Some(event) = conn.session.poll_event() {
            if let ClientEvent::Media {
                type_id,
                timestamp,
                payload,
            } = event
            {
                got.push(Received {
                    tag: Tag {
                        type_id,
                        timestamp,
                        payload,
                    },
                    at: now,
                    bytes_before: read_total,
                });
            }
        }
    }
    (got, resumed)
}

/// The age of a received frame, or None for frames the test did not send (headers).
fn age(sent: &SendTimes, r: &Received) -> Option<Duration> {
    let sent = sent.lock().expect("lock");
    sent.get(&(r.tag.type_id, r.tag.timestamp))
        .map(|t| r.at.saturating_duration_since(*t))
}

/// Video frames that follow a gap in the timeline (a jump or dropped inter frames) must be
/// keyframes: a viewer is moved forward only to where it can decode.
fn assert_resumes_at_keyframes(got: &[Received]) {
    let video: Vec<&Tag> = got
        .iter()
        .map(|r| &r.tag)
        .filter(|t| t.type_id == TAG_VIDEO && t.payload.get(1) == Some(&1))
        .collect();
    let mut gaps = 0;
    for pair in video.windows(2) {
        let gap = pair[1].timestamp.wrapping_sub(pair[0].timestamp);
        if u64::from(gap) > 2 * FRAME_INTERVAL.as_millis() as u64 {
            gaps += 1;
            assert!(
                common::rtmp::is_video_keyframe(pair[1]),
                "after a gap of {gap} ms came a non-keyframe at {}",
                pair[1].timestamp
            );
        }
    }
    assert!(gaps > 0, "the viewer was never moved forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_viewers_stay_within_the_budget_and_others_lose_nothing() {
    let node = Node::start(config()).await;
    let total = Duration::from_secs(16);
    // A viewer that keeps up, connected before the publisher, so it must get every frame.
    let mut steady = Client::play(&url(&node.rtmp_url("live/sched")), DEADLINE)
        .await
        .expect("play");
    let (sent, publishing) = real_time_publisher(node.rtmp_url("live/sched"), total);
    let steady_task = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Ok(Some(e))) =
            tokio::time::timeout(Duration::from_secs(3), steady.next_event()).await
        {
            if let ClientEvent::Media {
                type_id, timestamp, ..
            } = e
            {
                got.push((type_id, timestamp));
            }
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let fixture_bytes: usize = fixture_media(H264_AAC)
        .0
        .iter()
        .map(|t| t.payload.len())
        .sum();
    let half_rate = fixture_bytes / 2 / 2; // the fixture lasts 2 s
    let paused = player(
        node.addrs.rtmp,
        Pace::PauseAt {
            at: Duration::from_secs(2),
            pause: Duration::from_secs(10),
        },
        Duration::from_secs(14),
    );
    let slow = player(
        node.addrs.rtmp,
        Pace::Rate {
            bytes_per_sec: half_rate,
        },
        Duration::from_secs(12),
    );
    let ((paused_got, resumed), (slow_got, _)) = tokio::join!(paused, slow);
    publishing.await.expect("publisher");

    let budget = Duration::from_millis(BUDGET_MS);
    // The paused viewer: after what the kernel held at the pause, every frame is fresh.
    let after: Vec<&Received> = paused_got.iter().filter(|r| r.at >= resumed).collect();
    let first_byte = after.first().map_or(0, |r| r.bytes_before);
    let fresh: Vec<&&Received> = after
        .iter()
        .filter(|r| r.bytes_before > first_byte + IN_FLIGHT)
        .collect();
    assert!(
        fresh.len() > 20,
        "the paused viewer received {} frames after resuming",
        fresh.len()
    );
    for r in &fresh {
        if let Some(age) = age(&sent, r) {
            assert!(
                age <= budget + FRAME_INTERVAL + SLACK,
                "paused viewer got frame {} aged {age:?}",
                r.tag.timestamp
            );
        }
    }
    assert_resumes_at_keyframes(&paused_got);

    // The slow viewer: each frame within the budget, plus what a half-rate reader needs to
    // drain the kernel's buffers and the frame itself.
    assert!(
        slow_got.len() > 50,
        "the slow viewer received {}",
        slow_got.len()
    );
    let settled = slow_got.iter().skip_while(|r| r.bytes_before < IN_FLIGHT);
    for r in settled {
        if let Some(age) = age(&sent, r) {
            let drain = Duration::from_secs_f64(
                (IN_FLIGHT + r.tag.payload.len()) as f64 / half_rate as f64,
            );
            assert!(
                age <= budget + FRAME_INTERVAL + SLACK + drain,
                "slow viewer got frame {} aged {age:?} (drain allowance {drain:?})",
                r.tag.timestamp
            );
        }
    }
    assert_resumes_at_keyframes(&slow_got);

    // The reasons are counted.
    // The ring holds 30 GOPs, so no viewer fell out of it: the budget moved them.
    let jumps = node
        .metric("sluice_viewer_skips_total{reason=\"latency\"}")
        .await;
    assert_eq!(
        node.metric("sluice_viewer_skips_total{reason=\"ring\"}")
            .await,
        0.0
    );
    let dropped = node
        .metric("sluice_frames_dropped_total{reason=\"jump\"}")
        .await
        + node
            .metric("sluice_frames_dropped_total{reason=\"inter\"}")
            .await;
    assert!(
        jumps >= 1.0 && dropped > 0.0,
        "jumps {jumps}, dropped {dropped}\n{}",
        node.metrics().await
    );

    // The steady viewer lost nothing the publisher sent.
    let steady_got = steady_task.await.expect("steady viewer");
    let mut missing: Vec<(u8, u32)> = sent
        .lock()
        .expect("lock")
        .keys()
        .filter(|k| !steady_got.contains(k))
        .copied()
        .collect();
    missing.sort();
    assert!(missing.is_empty(), "the steady viewer missed {missing:?}");
    node.stop().await;
}

/// A reload that sets a latency budget reaches a viewer that is already connected (and
/// already late): the schedule is read on every read, not fixed at play time. The reload
/// here swaps the running config as `sluice::reload` does after reading a good file (the
/// file and SIGHUP paths are tested in `reload.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_sets_a_budget_applies_to_connected_viewers() {
    let no_budget = test_config(&format!(
        "[streams]\ngop_cache_gops = 30\n[schedule.apps.live]\nsend_buffer_bytes = {SERVER_SNDBUF}\n"
    ));
    let node = Node::start(no_budget).await;
    let (sent, publishing) =
        real_time_publisher(node.rtmp_url("live/sched"), Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused = player(
        node.addrs.rtmp,
        Pace::PauseAt {
            at: Duration::from_secs(1),
            pause: Duration::from_secs(5),
        },
        Duration::from_secs(9),
    );
    let reload = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        node.ctx.config.store(Arc::new(config()));
    };
    let ((got, resumed), ()) = tokio::join!(paused, reload);
    publishing.await.expect("publisher");

    let after: Vec<&Received> = got.iter().filter(|r| r.at >= resumed).collect();
    let first_byte = after.first().map_or(0, |r| r.bytes_before);
    let fresh: Vec<&&Received> = after
        .iter()
        .filter(|r| r.bytes_before > first_byte + IN_FLIGHT)
        .collect();
    assert!(fresh.len() > 20, "{} frames after resuming", fresh.len());
    let budget = Duration::from_millis(BUDGET_MS);
    for r in &fresh {
        if let Some(age) = age(&sent, r) {
            assert!(
                age <= budget + FRAME_INTERVAL + SLACK,
                "frame {} aged {age:?}: the reloaded budget did not apply",
                r.tag.timestamp
            );
        }
    }
    assert!(
        node.metric("sluice_viewer_skips_total{reason=\"latency\"}")
            .await
            >= 1.0
    );
    assert_resumes_at_keyframes(&got);
    node.stop().await;
}

/// Batched writes: with a 200 ms window each viewer gets its frames in a few large writes
/// instead of one per frame, loses none of them, and RTMP and HTTP-FLV alike. Without a
/// window, writes follow frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_write_batches_frames_into_few_writes_and_loses_none() {
    for (merge_ms, batched) in [(200u64, true), (0, false)] {
        let node = Node::start(test_config(&format!(
            "[schedule.apps.live]\nmerge_write_ms = {merge_ms}\n"
        )))
        .await;
        let mut rtmp = Client::play(&url(&node.rtmp_url("live/sched")), DEADLINE)
            .await
            .expect("play");
        let flv_addr = node.addrs.http;
        let flv = tokio::spawn(async move {
            let (status, body) = common::http_get(flv_addr, "/live/sched.flv").await;
            assert_eq!(status, 200);
            body.len()
        });
        let (sent, publishing) =
            real_time_publisher(node.rtmp_url("live/sched"), Duration::from_secs(3));
        let mut media = 0usize;
        while let Ok(Ok(Some(e))) =
            tokio::time::timeout(Duration::from_secs(2), rtmp.next_event()).await
        {
            if matches!(e, ClientEvent::Media { .. }) {
                media += 1;
            }
        }
        publishing.await.expect("publisher");
        assert!(flv.await.expect("flv viewer") > 100_000);
        let ingested = node.metric("sluice_frames_in_total{kind=\"video\"}").await
            + node.metric("sluice_frames_in_total{kind=\"audio\"}").await;
        assert!(sent.lock().expect("lock").len() > 150);
        assert_eq!(media as f64, ingested, "every frame arrives");
        for protocol in ["rtmp", "http_flv"] {
            let frames = node
                .metric(&format!(
                    "sluice_frames_out_total{{protocol=\"{protocol}\"}}"
                ))
                .await;
            let writes = node
                .metric(&format!(
                    "sluice_media_writes_total{{protocol=\"{protocol}\"}}"
                ))
                .await;
            if batched {
                assert!(
                    writes * 4.0 < frames,
                    "{protocol}: {writes} writes for {frames} frames with {merge_ms} ms batches"
                );
            } else {
                assert!(
                    writes * 3.0 > frames,
                    "{protocol}: {writes} writes for {frames} frames unbatched"
                );
            }
        }
        node.stop().await;
    }
}
