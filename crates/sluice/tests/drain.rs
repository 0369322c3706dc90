//! Graceful drain, against the real binary (`sluice serve` child processes):
//!
//! - SIGTERM: `/readyz` turns 503 at once while `/healthz` stays 200; an RTMP viewer, an
//!   HTTP-FLV viewer, an HLS player and the publisher connected before keep going for the
//!   grace period (bytes keep arriving); a new RTMP play and publish get their refusal
//!   statuses, a new HTTP-FLV request and a new HLS multivariant playlist 503 with
//!   Retry-After; refusals are counted; the process exits 0 once the grace is over.
//! - A second SIGTERM during the drain, or SIGINT, shuts down at once.
//! - `POST /api/drain` (with the admin token, refused without it) does the same without a
//!   signal; with `server.drain_redirect`, a new RTMP client is rejected at connect; a
//!   drain whose last session leaves ends before its grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_rtmp::client::StatusCode;
use sluice_runtime::client::{Client, ClientError};
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::http::{self, KeepAlive};
use sluice_testkit::node::{Process, Spec, Transport, logged};
use sluice_testkit::rtmp::{Player, Publisher, url};
use sluice_testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// Deadline for anything to happen. Generous: CI runs this beside other tests on two cores.
const WAIT: Duration = Duration::from_secs(30);
/// The grace period of the SIGTERM test: long enough to watch viewers go on, short enough
/// for a quick test.
const GRACE: Duration = Duration::from_secs(3);
/// How soon `/readyz` must fail after the signal (it is one flag; the bound is slack for a
/// loaded machine, and the time taken is printed).
const READY_FLIPS: Duration = Duration::from_millis(500);
/// The admin token of the API test.
const TOKEN: &str = "drain-test-token";
/// Where the API test's node sends RTMP clients while it drains.
const REDIRECT: &str = "rtmp://other.example/live";

/// An HTTP-FLV viewer reading from a task: the bytes it got so far.
struct FlvReader {
    bytes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FlvReader {
    async fn start(http: SocketAddr, path: &str) -> FlvReader {
        let mut socket = tokio::net::TcpStream::connect(http).await.expect("connect");
        socket
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let bytes = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let bytes = bytes.clone();
            async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = socket.read(&mut buf).await {
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        FlvReader { bytes, task }
    }

    fn got(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for FlvReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until live/`stream` on `node` has `viewers` viewers (RTMP and HTTP-FLV).
async fn wait_viewers(node: &Process, stream: &str, viewers: u64) {
    let ok = eventually(WAIT, || async {
        node.stream(stream)
            .await
            .is_some_and(|s| s["viewers"].as_u64() == Some(viewers))
    })
    .await;
    assert!(ok, "{viewers} viewers never attached:\n{}", node.log());
}

/// Polls `/readyz` until it answers 503; how long that took (panics past `within`).
async fn readyz_fails_within(admin: SocketAddr, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = http::get(admin, "/readyz").await;
        if status == 503 {
            assert_eq!(body, "draining\n");
            return start.elapsed();
        }
        assert_eq!((status, body.as_str()), (200, "ready\n"));
        assert!(
            start.elapsed() < within,
            "/readyz still 200 after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A refused play or publish: its onStatus code.
fn refusal(result: Result<Client, ClientError>) -> (StatusCode, String) {
    match result {
        Err(ClientError::Refused { code, description }) => (code, description),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, it was admitted"),
    }
}

/// Checks, `windows` times `every` apart, that the RTMP player and the HTTP-FLV reader
/// received more in each window.
async fn keep_receiving(player: &Player, flv: &FlvReader, windows: u32, every: Duration) {
    for window in 0..windows {
        let (media, bytes) = (player.media(), flv.got());
        tokio::time::sleep(every).await;
        assert!(
            player.media() > media,
            "RTMP viewer got nothing in window {window}; events: {:?}",
            player.events()
        );
        assert!(
            flv.got() > bytes,
            "HTTP-FLV viewer got nothing in window {window} ({bytes} bytes in all)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_connected_viewers_refuses_new_ones_then_exits_zero() {
    let mut node = Process::start(
        BIN,
        Spec::origin("drain", Transport::Rtmp).with(&format!(
            "[server]\ndrain_grace_ms = {}\nshutdown_timeout_ms = 2000\n",
            GRACE.as_millis()
        )),
    )
    .await;
    let publishing = Publisher::fixture(node.rtmp_url("cam"), H264_AAC)
        .real_time()
        .spawn();
    node.wait_publishing("cam").await;
    let playing = Instant::now();
    let player = Player::start(&node.rtmp_url("cam"), WAIT).await;
    player.wait_videos(1, playing).await;
    let flv = FlvReader::start(node.http, "/live/cam.flv").await;
    wait_viewers(&node, "cam", 2).await;
    // An HLS player: the multivariant playlist, then its media playlist, on one connection.
    let mut hls = KeepAlive::connect(node.http).await;
    let multivariant = hls.get("/live/cam.m3u8", WAIT).await;
    assert_eq!(multivariant.status, 200, "{}", multivariant.text());
    let media = hls.get("/live/cam/media.m3u8", WAIT).await;
    assert_eq!(media.status, 200, "{}", media.text());
    assert_eq!(
        http::get(node.admin, "/readyz").await,
        (200, "ready\n".into())
    );
    assert_eq!(node.metric("sluice_draining").await, 0.0);

    let signalled = Instant::now();
    node.term();
    let flipped = readyz_fails_within(node.admin, READY_FLIPS).await;
    #[allow(clippy::print_stderr)] // how quick, for the test log
    {
        eprintln!("/readyz failed {flipped:?} after SIGTERM");
    }
    assert_eq!(
        http::get(node.admin, "/healthz").await,
        (200, "ok\n".into())
    );

    // New viewers and publishers are refused.
    let (code, description) = refusal(Client::play(&url(&node.rtmp_url("cam")), WAIT).await);
    assert_eq!(
        (code.as_str(), description.as_str()),
        ("NetStream.Play.Failed", "node draining")
    );
    let (code, description) = refusal(Client::publish(&url(&node.rtmp_url("new")), WAIT).await);
    assert_eq!(
        (code, description.as_str()),
        (StatusCode::BadName, "node draining")
    );
    let refused = http::request(node.http, "GET", "/live/cam.flv").await;
    assert_eq!(refused.status, 503, "{}", refused.head);
    assert!(
        refused.head.to_ascii_lowercase().contains("retry-after: 2"),
        "{}",
        refused.head
    );
    assert_eq!(refused.body, "node draining\n");
    let mut new_hls = KeepAlive::connect(node.http).await;
    let refused = new_hls.get("/live/cam.m3u8", WAIT).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("2"));

    // The HLS player goes on: its media playlist, on its connection and on a new one.
    let media = hls.get("/live/cam/media.m3u8", WAIT).await;
    assert_eq!(media.status, 200, "{}", media.text());
    let media = new_hls.get("/live/cam/media.m3u8", WAIT).await;
    assert_eq!(media.status, 200, "{}", media.text());

    // The viewers connected before keep receiving for most of the grace period.
    keep_receiving(&player, &flv, 4, Duration::from_millis(500)).await;
    assert!(
        signalled.elapsed() < GRACE,
        "the checks outlasted the grace period ({:?}): the test proves nothing",
        signalled.elapsed()
    );
    assert!(node.is_running(), "exited early:\n{}", node.log());

    let metrics = node.metrics().await;
    assert_eq!(http::metric_value(&metrics, "sluice_draining"), 1.0);
    for protocol in ["rtmp", "http_flv", "hls"] {
        let series = format!(
            r#"sluice_connections_refused_total{{protocol="{protocol}",reason="draining"}}"#
        );
        assert!(
            http::metric_value(&metrics, &series) >= 1.0,
            "{series} not counted:\n{metrics}"
        );
    }

    // Then shutdown proceeds as it always did, and the process exits 0.
    let status = node
        .wait_exit(GRACE + WAIT)
        .await
        .unwrap_or_else(|| panic!("still running after the grace period:\n{}", node.log()));
    let ran = signalled.elapsed();
    let log = node.log();
    assert_eq!(status.code(), Some(0), "{status}:\n{log}");
    assert!(
        ran >= GRACE,
        "exited after {ran:?}, before the grace period"
    );
    assert!(logged(&log, "drain grace period over", ""), "{log}");
    assert!(logged(&log, "stopped", ""), "{log}");
    // The viewers were told the stream ended (RTMP) or saw the body end.
    let deadline = Instant::now() + WAIT;
    while player.ended().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(player.ended().is_some(), "{:?}", player.events());
    publishing.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_drain_needs_the_token_and_ends_early_once_everyone_left() {
    let mut node = Process::start(
        BIN,
        Spec::origin("drain-api", Transport::Rtmp).with(&format!(
            "[server]\ndrain_grace_ms = 60000\ndrain_redirect = \"{REDIRECT}\"\n\
             [admin]\ntoken = \"{TOKEN}\"\n"
        )),
    )
    .await;
    let (admin, bearer) = (node.admin, format!("Authorization: Bearer {TOKEN}"));
    let admin_get = |path: &'static str| {
        let bearer = bearer.clone();
        async move { http::request_with(admin, "GET", path, &[&bearer]).await }
    };
    let publishing = Publisher::fixture(node.rtmp_url("cam"), H264_AAC)
        .real_time()
        .spawn();
    let published = eventually(WAIT, || async {
        admin_get("/api/streams")
            .await
            .body
            .contains(r#""publishing":true"#)
    })
    .await;
    assert!(published, "never published:\n{}", node.log());
    let flv = FlvReader::start(node.http, "/live/cam.flv").await;
    let attached = eventually(WAIT, || async { flv.got() > 0 }).await;
    assert!(attached, "no HTTP-FLV bytes:\n{}", node.log());

    // Without the token: refused, and nothing changes. /readyz needs no token.
    let denied = http::request(node.admin, "POST", "/api/drain").await;
    assert_eq!(denied.status, 401, "{}", denied.body);
    assert_eq!(
        http::get(node.admin, "/readyz").await,
        (200, "ready\n".into())
    );

    let requested = Instant::now();
    let drained = http::request_with(node.admin, "POST", "/api/drain", &[&bearer]).await;
    assert_eq!(drained.status, 202, "{}", drained.body);
    let answer: serde_json::Value = serde_json::from_str(&drained.body).expect("JSON");
    assert_eq!(answer["started"], true, "{answer}");
    assert_eq!(answer["grace_ms"], 60000, "{answer}");
    readyz_fails_within(node.admin, READY_FLIPS).await;
    let again = http::request_with(node.admin, "POST", "/api/drain", &[&bearer]).await;
    assert_eq!(again.status, 202);
    assert!(again.body.contains(r#""started":false"#), "{}", again.body);
    assert_eq!(
        http::get(node.admin, "/healthz").await,
        (200, "ok\n".into())
    );
    let refused = http::request(node.http, "GET", "/live/cam.flv").await;
    assert_eq!(refused.status, 503, "{}", refused.head);
    // With `drain_redirect`, RTMP clients are turned away at connect (the URL, in
    // `ex.redirect`, is checked in sluice-rtmp's session tests).
    let (code, description) = refusal(Client::play(&url(&node.rtmp_url("cam")), WAIT).await);
    assert_eq!(
        (code, description.as_str()),
        (StatusCode::ConnectRejected, "node draining")
    );
    let metrics = admin_get("/metrics").await.body;
    assert_eq!(http::metric_value(&metrics, "sluice_draining"), 1.0);
    for protocol in ["rtmp", "http_flv"] {
        let series = format!(
            r#"sluice_connections_refused_total{{protocol="{protocol}",reason="draining"}}"#
        );
        assert_eq!(http::metric_value(&metrics, &series), 1.0, "{series}");
    }

    // The viewer goes on.
    let before = flv.got();
    let more = eventually(WAIT, || async { flv.got() > before }).await;
    assert!(more, "the HTTP-FLV viewer stopped receiving");

    // Everyone leaves: the drain ends long before its minute.
    drop(flv);
    publishing.abort();
    let status = node
        .wait_exit(WAIT)
        .await
        .unwrap_or_else(|| panic!("still draining with nobody left:\n{}", node.log()));
    let log = node.log();
    assert_eq!(status.code(), Some(0), "{status}:\n{log}");
    assert!(
        requested.elapsed() < Duration::from_secs(60),
        "waited out the grace period"
    );
    assert!(
        logged(&log, "drained: no viewer or publisher left", ""),
        "{log}"
    );
}

/// A node with a long drain grace and a publisher on it (so a drain does not end early).
async fn publishing_node(id: &str) -> (Process, JoinHandle<Client>) {
    let node = Process::start(
        BIN,
        Spec::origin(id, Transport::Rtmp).with("[server]\ndrain_grace_ms = 60000\n"),
    )
    .await;
    let publishing = Publisher::fixture(node.rtmp_url("cam"), H264_AAC)
        .real_time()
        .spawn();
    node.wait_publishing("cam").await;
    (node, publishing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_or_sigint_skips_the_drain() {
    let ((mut twice, publishing), (mut interrupted, publishing_too)) = tokio::join!(
        publishing_node("drain-twice"),
        publishing_node("drain-interrupted")
    );
    twice.term();
    readyz_fails_within(twice.admin, READY_FLIPS).await;
    let started = Instant::now();
    twice.term();
    interrupted.interrupt();
    for node in [&mut twice, &mut interrupted] {
        let status = node
            .wait_exit(WAIT)
            .await
            .unwrap_or_else(|| panic!("{} still running:\n{}", node.id, node.log()));
        let log = node.log();
        assert_eq!(status.code(), Some(0), "{status}:\n{log}");
        assert!(!logged(&log, "drain grace period over", ""), "{log}");
    }
    // Well within the minute of grace: shutdown went on at once.
    assert!(started.elapsed() < WAIT, "{:?}", started.elapsed());
    assert!(logged(&twice.log(), "SIGTERM received (again)", ""));
    assert!(logged(&interrupted.log(), "SIGINT received", ""));
    assert!(!logged(&interrupted.log(), "SIGTERM received", ""));
    publishing.abort();
    publishing_too.abort();
}
