//! The stream registry on a real etcd (Debian's etcd-server, one member on loopback, see
//! `sluice_testkit::etcd`), with every node a `sluice serve` process and real RTMP viewers.
//!
//! Leases are short (2 s) so expiry-driven cases stay quick.

mod common;

use std::time::Duration;

use common::cluster::{first_video_since, node};
use serde_json::Value;
use sluice_testkit::etcd::Etcd;
use sluice_testkit::media::is_keyframe;
use sluice_testkit::node::{Process, Spec, Transport, WAIT};
use sluice_testkit::process::{self, Child};
use sluice_testkit::rtmp::Player;
use sluice_testkit::wait::eventually;
use sluice_testkit::{fixture, fixtures, http, tools};
use tokio::time::Instant;

/// `cluster.registry.lease_ttl_s` of every node here.
const TTL_S: u64 = 2;

fn registry(etcd: &Etcd) -> String {
    format!(
        "[cluster.registry]\nendpoints = [{:?}]\nprefix = \"/t\"\nlease_ttl_s = {TTL_S}\n\
         backoff_initial_ms = 100\nbackoff_max_ms = 500\n",
        etcd.endpoint()
    )
}

fn publish_looped(url: &str) -> Child {
    process::publish_looped(tools::ffmpeg5(), &fixture(fixtures::H264_AAC), url, &[])
}

async fn cluster(node: &Process) -> Value {
    let (status, body) = http::get(node.admin, "/api/cluster").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits until `node`'s registry view shows live/`stream` published by `origin`.
async fn wait_registered(node: &Process, stream: &str, origin: &str) {
    let ok = eventually(WAIT, || async {
        cluster(node).await["streams"]
            .as_array()
            .is_some_and(|list| {
                list.iter()
                    .any(|s| s["stream"] == stream && s["node"] == origin)
            })
    })
    .await;
    assert!(
        ok,
        "{}: live/{stream} never shown at {origin}; log:\n{}",
        node.id,
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_follow_a_publisher_to_another_origin_through_the_registry() {
    let etcd = Etcd::start().await;
    let reg = registry(&etcd);
    let mut o1 = node(Spec::origin("o1", Transport::Rtmp).with(&reg)).await;
    let o2 = node(Spec::origin("o2", Transport::Rtmp).with(&reg)).await;
    // No static upstreams: the edge knows the origins only through the registry.
    let edge = node(
        Spec::edge("edge", Transport::Rtmp, &[])
            .with(&reg)
            .with("[streams]\nrepublish_grace_ms = 8000"),
    )
    .await;
    let mut p1 = publish_looped(&o1.rtmp_url("mv"));
    o1.wait_publishing("mv").await;
    wait_registered(&edge, "mv", "o1").await;
    let viewer = Player::start(&edge.rtmp_url("mv"), WAIT).await;
    let since = Instant::now();
    viewer.wait_videos(10, since).await;
    let pull = edge.pull("mv").await.expect("edge pulls");
    assert_eq!(pull["upstream"], o1.upstream(Transport::Rtmp), "{pull}");
    let view = cluster(&edge).await;
    let ids: Vec<&str> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["edge", "o1", "o2"], "{view}");
    assert_eq!(view["up"], true, "{view}");

    // Origin 1 dies (no chance to delete its key); the broadcaster moves to origin 2.
    o1.kill();
    p1.kill();
    // Origin 1 is gone: whatever video reaches the viewer from here on comes from origin 2
    // (the edge may switch before wait_publishing below sees origin 2 publish).
    let moving = Instant::now();
    let _p2 = publish_looped(&o2.rtmp_url("mv"));
    o2.wait_publishing("mv").await;
    let republished = Instant::now();
    viewer.wait_videos(20, republished).await;
    let followed = republished.elapsed();
    assert!(
        followed <= Duration::from_secs(TTL_S + 1),
        "viewers followed after {followed:?}; edge log:\n{}",
        edge.log()
    );
    assert_eq!(viewer.ended(), None, "the viewer stayed connected");
    let pull = edge.pull("mv").await.expect("edge pulls");
    assert_eq!(pull["upstream"], o2.upstream(Transport::Rtmp), "{pull}");
    let seen = viewer.stop().await;
    let first = first_video_since(&seen, moving).expect("video from origin 2");
    assert!(
        is_keyframe(&first),
        "the first frame from origin 2 is a keyframe"
    );
    wait_registered(&edge, "mv", "o2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_origin_leaves_the_registry_while_its_viewers_play_on() {
    let etcd = Etcd::start().await;
    let reg = registry(&etcd);
    let mut origin = node(
        Spec::origin("o1", Transport::Rtmp)
            .with(&reg)
            .with("[server]\ndrain_grace_ms = 20000\n"),
    )
    .await;
    let watcher = node(Spec::edge("edge", Transport::Rtmp, &[]).with(&reg)).await;
    let _p = publish_looped(&origin.rtmp_url("dr"));
    origin.wait_publishing("dr").await;
    wait_registered(&watcher, "dr", "o1").await;
    let viewer = Player::start(&origin.rtmp_url("dr"), WAIT).await;
    viewer.wait_videos(5, Instant::now()).await;

    origin.term();
    let gone = eventually(WAIT, || async {
        let view = cluster(&watcher).await;
        let listed = |what: &str, key: &str, value: &str| {
            view[what]
                .as_array()
                .is_some_and(|list| list.iter().any(|e| e[key] == value))
        };
        !listed("streams", "stream", "dr") && !listed("nodes", "id", "o1")
    })
    .await;
    assert!(
        gone,
        "the draining origin stayed registered: {}",
        cluster(&watcher).await
    );
    // Well inside the lease TTL's reach: released, not expired; and the viewer plays on.
    assert!(origin.is_running(), "the origin is still draining");
    viewer
        .keeps_receiving(20)
        .await
        .unwrap_or_else(|e| panic!("{e}; origin log:\n{}", origin.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_changes_nothing_for_viewers() {
    let mut etcd = Etcd::start().await;
    let reg = registry(&etcd);
    let origin = node(Spec::origin("o1", Transport::Rtmp).with(&reg)).await;
    let edge = node(Spec::edge("edge", Transport::Rtmp, &[]).with(&reg)).await;
    let _p = publish_looped(&origin.rtmp_url("out"));
    origin.wait_publishing("out").await;
    wait_registered(&edge, "out", "o1").await;
    let viewer = Player::start(&edge.rtmp_url("out"), WAIT).await;
    viewer.wait_videos(10, Instant::now()).await;
    assert_eq!(edge.metric("sluice_registry_up").await, 1.0);

    etcd.stop();
    let down = eventually(WAIT, || async {
        edge.metric("sluice_registry_up").await == 0.0
            && origin.metric("sluice_registry_up").await == 0.0
    })
    .await;
    assert!(down, "the nodes never noticed the outage");
    assert!(edge.metric_sum("sluice_registry_errors_total").await >= 1.0);
    viewer
        .keeps_receiving(30)
        .await
        .unwrap_or_else(|e| panic!("{e}; edge log:\n{}", edge.log()));
    // A new viewer of the stream the edge knows.
    let late = Player::start(&edge.rtmp_url("out"), WAIT).await;
    late.wait_videos(10, Instant::now()).await;
    assert_eq!(viewer.ended(), None);
    assert_eq!(late.ended(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_key_to_a_dead_node_is_skipped() {
    let etcd = Etcd::start().await;
    let reg = registry(&etcd);
    let origin = node(Spec::origin("o1", Transport::Rtmp)).await;
    let edge =
        node(Spec::edge("edge", Transport::Rtmp, &[origin.upstream(Transport::Rtmp)]).with(&reg))
            .await;
    // A key nobody keeps alive, naming a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd client");
    client
        .put(
            "/t/streams/live/stale",
            format!("rtmp://{closed}/live"),
            None,
        )
        .await
        .expect("put");
    wait_registered(&edge, "stale", "").await;
    let _p = publish_looped(&origin.rtmp_url("stale"));
    origin.wait_publishing("stale").await;
    let viewer = Player::start(&edge.rtmp_url("stale"), WAIT).await;
    viewer.wait_videos(10, Instant::now()).await;
    let pull = edge.pull("stale").await.expect("edge pulls");
    assert_eq!(pull["upstream"], origin.upstream(Transport::Rtmp), "{pull}");
    assert!(
        edge.metric("sluice_registry_lookups_total{result=\"cached\"}")
            .await
            >= 1.0,
        "the registry was asked first"
    );
    assert!(
        edge.metric("sluice_pull_failures_total{reason=\"connect\"}")
            .await
            >= 1.0,
        "the dead node was tried"
    );
}
