//! A publisher faster than the server can take: it is slowed by TCP flow control (the
//! server reads a connection only as fast as it ingests), every frame it sent is ingested,
//! and the server's memory stays within the cache's byte budget plus a constant.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Node, test_config};
use sluice_runtime::client::Client;
use sluice_testkit::rtmp::{DEADLINE, url};
use sluice_testkit::wait::eventually;

/// Resident memory of this process (the node runs in it), from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_publisher_is_slowed_and_memory_stays_bounded() {
    const BUDGET: u64 = 4 << 20;
    const FRAMES: u32 = 12_000;
    const FRAME_BYTES: usize = 16 * 1024;
    let node = Node::start(test_config(&format!(
        "[streams]\ngop_cache_max_bytes = {BUDGET}\n"
    )))
    .await;
    let mut publisher = Client::publish(&url(&node.rtmp_url("live/flood")), DEADLINE)
        .await
        .expect("publish");
    // A viewer too, so the frames are really fanned out, not just stored.
    let mut viewer = Client::play(&url(&node.rtmp_url("live/flood")), DEADLINE)
        .await
        .expect("play");
    let viewing = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Ok(Some(_))) =
            tokio::time::timeout(Duration::from_secs(5), viewer.next_event()).await
        {
            n += 1;
        }
        n
    });

    let mut header = vec![
        0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f,
    ];
    header.extend_from_slice(&[1, 0, 2, 0x68, 0xee]);
    publisher
        .send_media(9, 0, Bytes::from(header))
        .await
        .expect("header");
    let before = rss_bytes();
    let mut peak = before;
    // ~190 MB as fast as the socket takes it: far more than the budget, and far faster than
    // real time. One keyframe per 100 frames.
    for i in 0..FRAMES {
        let mut body = vec![if i % 100 == 0 { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        body.extend_from_slice(&(FRAME_BYTES as u32 - 9).to_be_bytes());
        body.resize(FRAME_BYTES, (i % 251) as u8);
        publisher
            .send_media(9, i * 10, Bytes::from(body))
            .await
            .expect("the server keeps reading");
        if i % 500 == 0 {
            peak = peak.max(rss_bytes());
        }
    }
    // Every frame was ingested: none was dropped to keep up, so the publisher was slowed.
    assert!(
        eventually(DEADLINE, || async {
            node.metric("sluice_frames_in_total{kind=\"video\"}").await == f64::from(FRAMES + 1)
        })
        .await,
        "frames in: {}",
        node.metric("sluice_frames_in_total{kind=\"video\"}").await
    );
    let streams = node.streams_json().await;
    let cached = streams["streams"][0]["cached_bytes"]
        .as_u64()
        .expect("cached_bytes");
    assert!(
        cached <= BUDGET,
        "ring holds {cached} bytes, budget {BUDGET}"
    );
    let growth = peak.saturating_sub(before);
    assert!(
        growth < BUDGET + (48 << 20),
        "memory grew by {} MiB while {} MiB went through",
        growth >> 20,
        (u64::from(FRAMES) * FRAME_BYTES as u64) >> 20
    );
    drop(publisher);
    assert!(viewing.await.expect("viewer") > 100);
    node.stop().await;
}
