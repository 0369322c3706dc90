//! The latency budget end to end: a viewer that stops reading for 10 s and one that reads at
//! half the stream's bitrate are kept within `max_latency_ms` once they read again, moved
//! forward at keyframes, with the reasons counted; a viewer that keeps up loses nothing.
//! How ages are measured and what is allowed for: `common/budget.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::BytesMut;
use common::budget::{
    Pace, PacedReader, Played, Received, SERVER_SNDBUF, assert_handed_back,
    assert_paused_viewer_fresh, assert_within_budget, config, paused_and_slow, player_socket,
    real_time_publisher,
};
use common::{Node, test_config};
use sluice_rtmp::chunk::ChunkLimits;
use sluice_rtmp::client::{ClientConfig, ClientEvent};
use sluice_rtmp::connection::ClientConnection;
use sluice_runtime::client::Client;
use sluice_testkit::http;
use sluice_testkit::media::Tag;
use sluice_testkit::rtmp::{DEADLINE, handshake_on, url};
use tokio::io::AsyncWriteExt;

/// A player on a socket with a small receive buffer, reading as `pace` says, for `total`.
async fn player(addr: std::net::SocketAddr, pace: Pace, total: Duration) -> Played {
    let mut socket = handshake_on(player_socket(addr).await).await;
    let mut conn = ClientConnection::new(
        ClientConfig {
            tc_url: format!("rtmp://{addr}/live"),
            ..ClientConfig::default()
        },
        ChunkLimits::default(),
    );
    conn.session.connect();
    conn.session.play("sched");
    let mut reader = PacedReader::new(pace, total);
    let mut out = BytesMut::new();
    let mut got = Vec::new();
    loop {
        // The client's output only changes after its input: answers to the server, acks.
        conn.drain_output(&mut out);
        if !out.is_empty() {
            socket.write_all(&out.split()).await.expect("write");
        }
        let Some(data) = reader.next(&mut socket).await else {
            break;
        };
        conn.handle_input(data).expect("valid RTMP");
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
                    bytes_before: reader.read(),
                });
            }
        }
    }
    (got, reader.resumed())
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

    let addr = node.addrs.rtmp;
    let ((paused_got, resumed), (slow_got, _)) =
        paused_and_slow(|pace, total| player(addr, pace, total)).await;
    publishing.await.expect("publisher");

    assert_within_budget(&sent, (&paused_got, resumed), &slow_got);

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
    // Both were written by the stream's shared writer while caught up; it handed them back
    // when their sockets filled, and their own tasks applied the budget from there.
    assert_handed_back(&node, "rtmp").await;

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

    // Fresh frames only: the reloaded budget applied to the connected viewer.
    assert_paused_viewer_fresh(&sent, &got, resumed);
    assert!(
        node.metric("sluice_viewer_skips_total{reason=\"latency\"}")
            .await
            >= 1.0
    );
    node.stop().await;
}

/// An RTMP viewer and an HTTP-FLV viewer of `live/sched` (the latter's body length, once
/// the stream ends).
async fn rtmp_and_flv_viewers(node: &Node) -> (Client, tokio::task::JoinHandle<usize>) {
    let rtmp = Client::play(&url(&node.rtmp_url("live/sched")), DEADLINE)
        .await
        .expect("play");
    let flv_addr = node.addrs.http;
    let flv = tokio::spawn(async move {
        let (status, body) = http::get(flv_addr, "/live/sched.flv").await;
        assert_eq!(status, 200);
        body.len()
    });
    (rtmp, flv)
}

/// Frames sent and media writes to `protocol` viewers so far.
async fn frames_and_writes(node: &Node, protocol: &str) -> (f64, f64) {
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
    (frames, writes)
}

/// Media messages an RTMP viewer gets until 2 s pass without one.
async fn count_media(mut rtmp: Client) -> usize {
    let mut media = 0usize;
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(Duration::from_secs(2), rtmp.next_event()).await
    {
        if matches!(e, ClientEvent::Media { .. }) {
            media += 1;
        }
    }
    media
}

/// Viewers that keep up are written by their stream's shared writer, with or without a
/// batching window: a reload to a window keeps them there and batches their writes; one
/// that adds a byte trigger (counted per viewer) hands them back to their own tasks. No
/// frame is lost on the way, RTMP and HTTP-FLV alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_move_viewers_between_the_shared_writer_and_their_own_tasks_losing_nothing() {
    let node = Node::start(test_config("")).await;
    let (rtmp, flv) = rtmp_and_flv_viewers(&node).await;
    let (sent, publishing) =
        real_time_publisher(node.rtmp_url("live/sched"), Duration::from_secs(5));
    let reading = count_media(rtmp);
    let protocols = ["rtmp", "http_flv"];
    let in_writer = |protocol: &str| format!("sluice_fanout_viewers{{protocol=\"{protocol}\"}}");
    let counts = |protocol: &'static str| frames_and_writes(&node, protocol);
    let reloads = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for protocol in protocols {
            assert_eq!(node.metric(&in_writer(protocol)).await, 1.0, "{protocol}");
        }
        node.ctx.config.store(Arc::new(test_config(
            "[schedule.apps.live]\nmerge_write_ms = 200\n",
        )));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = [counts("rtmp").await, counts("http_flv").await];
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let after = [counts("rtmp").await, counts("http_flv").await];
        for (protocol, (before, after)) in protocols.into_iter().zip(before.into_iter().zip(after))
        {
            assert_eq!(node.metric(&in_writer(protocol)).await, 1.0, "{protocol}");
            let (frames, writes) = (after.0 - before.0, after.1 - before.1);
            assert!(
                frames > 40.0 && writes * 4.0 < frames,
                "{protocol}: {writes} writes for {frames} frames with 200 ms batches"
            );
        }
        node.ctx.config.store(Arc::new(test_config(
            "[schedule.apps.live]\nmerge_write_ms = 200\nmerge_write_bytes = 100000\n",
        )));
        tokio::time::sleep(Duration::from_millis(600)).await;
        for protocol in protocols {
            assert_eq!(node.metric(&in_writer(protocol)).await, 0.0, "{protocol}");
            let handbacks = format!(
                "sluice_fanout_handbacks_total{{protocol=\"{protocol}\",reason=\"batching\"}}"
            );
            assert_eq!(node.metric(&handbacks).await, 1.0, "{protocol}");
        }
    };
    let (media, ()) = tokio::join!(reading, reloads);
    publishing.await.expect("publisher");
    assert!(flv.await.expect("flv viewer") > 100_000);
    let ingested = node.metric("sluice_frames_in_total{kind=\"video\"}").await
        + node.metric("sluice_frames_in_total{kind=\"audio\"}").await;
    assert!(sent.lock().expect("lock").len() > 250);
    assert_eq!(media as f64, ingested, "every frame arrives");
    let flv_frames = node
        .metric("sluice_frames_out_total{protocol=\"http_flv\"}")
        .await;
    let script = node.metric("sluice_frames_in_total{kind=\"script\"}").await;
    assert_eq!(
        flv_frames,
        ingested + script,
        "every tag arrives over HTTP-FLV"
    );
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
        let (rtmp, flv) = rtmp_and_flv_viewers(&node).await;
        let (sent, publishing) =
            real_time_publisher(node.rtmp_url("live/sched"), Duration::from_secs(3));
        let media = count_media(rtmp).await;
        publishing.await.expect("publisher");
        assert!(flv.await.expect("flv viewer") > 100_000);
        let ingested = node.metric("sluice_frames_in_total{kind=\"video\"}").await
            + node.metric("sluice_frames_in_total{kind=\"audio\"}").await;
        assert!(sent.lock().expect("lock").len() > 150);
        assert_eq!(media as f64, ingested, "every frame arrives");
        for protocol in ["rtmp", "http_flv"] {
            let (frames, writes) = frames_and_writes(&node, protocol).await;
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
