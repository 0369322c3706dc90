//! Who may publish and watch (`[auth]`, `[limits]`, the admin token), with real clients:
//! Debian's ffmpeg 5.1 publishes with stream keys and signed URLs and is refused without
//! them; ffprobe and raw HTTP requests play RTMP, HTTP-FLV and HLS under the same rules; a
//! real webhook receiver allows, refuses, renames and answers too late; keys rotate and key
//! files are read again on SIGHUP; an edge's pulls carry its own signature.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Node, test_config};
use serde_json::Value;
use sluice_auth::Action;
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::hooks::{HookServer, Reply};
use sluice_testkit::node::{Process, Spec, Transport};
use sluice_testkit::process::{self, Child};
use sluice_testkit::wait::eventually;
use sluice_testkit::{fixture, http, probe, tools};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
/// Deadline for anything to happen. Generous: CI runs this beside other tests on two cores.
const WAIT: Duration = Duration::from_secs(30);
const KEY_ONE: &str = "0123456789abcdef-one";
const KEY_TWO: &str = "0123456789abcdef-two";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn signed(kid: &str, secret: &str, action: Action, stream: &str, expires: u64) -> String {
    sluice_auth::sign(
        kid,
        secret.as_bytes(),
        action,
        "live",
        stream,
        expires,
        None,
    )
}

/// ffmpeg 5.1 publishing the fixture in a loop to `url`.
fn publish(url: &str) -> Child {
    process::publish_looped(tools::ffmpeg5(), &fixture(H264_AAC), url, &[])
}

/// Publishes the 2 s fixture once to `url` and says whether ffmpeg succeeded.
async fn publish_once(url: &str) -> bool {
    let mut child = process::publish(tools::ffmpeg5(), &fixture(H264_AAC), url, false, &[]);
    tokio::task::spawn_blocking(move || child.wait_success(WAIT).is_ok())
        .await
        .expect("publisher task")
}

async fn wait_publishing(node: &Node, stream: &str) {
    let ok = eventually(WAIT, || async {
        node.streams_json().await["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["stream"] == stream
                    && s["publishing"] == true
                    && s["frames_in"].as_u64() > Some(0)
            })
    })
    .await;
    assert!(
        ok,
        "live/{stream} never published: {}",
        node.streams_json().await
    );
}

async fn refused(node: &Node, reason: &str) -> f64 {
    let text = node.metrics().await;
    ["rtmp", "http_flv", "hls"]
        .iter()
        .map(|p| {
            http::metric_value(
                &text,
                &format!(r#"sluice_connections_refused_total{{protocol="{p}",reason="{reason}"}}"#),
            )
        })
        .sum()
}

/// An HTTP/1.0 GET on the node's HTTP listener: (status, head, body bytes up to the close or
/// `limit`).
async fn get(node: &Node, path: &str, limit: usize) -> (u16, String, Vec<u8>) {
    get_at(node.addrs.http, path, limit).await
}

async fn get_at(addr: SocketAddr, path: &str, limit: usize) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(WAIT, async {
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
            if data.len() >= limit {
                break;
            }
        }
    })
    .await;
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head for {path}: {data:?}"));
    let head = String::from_utf8_lossy(&data[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, data[end + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_publishes_with_a_good_stream_key_and_is_refused_without_one() {
    let node = Node::start(test_config(
        "[auth.apps.live.publish]\ncheck = \"key\"\nkeys = [\"s3cret-key\"]\n",
    ))
    .await;
    assert!(
        !publish_once(&node.rtmp_url("live/cam")).await,
        "published without a key"
    );
    assert!(
        !publish_once(&node.rtmp_url("live/cam?key=wrong")).await,
        "published with a wrong key"
    );
    assert_eq!(refused(&node, "auth_missing").await, 1.0);
    assert_eq!(refused(&node, "auth_invalid").await, 1.0);
    // A name longer than any credential is refused before the rule (or a hook) sees it
    // (our own client: ffmpeg cuts such a name short).
    let long = format!("live/cam?key={}", "k".repeat(sluice_auth::MAX_QUERY));
    let url = sluice_testkit::rtmp::url(&node.rtmp_url(&long));
    let refusal = sluice_runtime::client::Client::publish(&url, WAIT)
        .await
        .expect_err("a 2 KiB key is refused");
    assert!(refusal.to_string().contains("BadName"), "{refusal}");
    assert_eq!(refused(&node, "bad_publish").await, 1.0);
    assert_eq!(
        refused(&node, "auth_invalid").await,
        1.0,
        "never reached the rule"
    );
    // OBS puts the key in the stream name (`cam?key=...`): ffmpeg sends the same.
    let mut good = publish(&node.rtmp_url("live/cam?key=s3cret-key"));
    wait_publishing(&node, "cam").await;
    // Playing is open in this application: ffprobe reads the stream with no credentials.
    let url = node.rtmp_url("live/cam");
    let report = tokio::task::spawn_blocking(move || {
        probe::probe_with(&url, &["-read_intervals", "%+2"], WAIT)
    })
    .await
    .expect("probe task")
    .expect("ffprobe plays an open application");
    assert_eq!(report.video().expect("video").codec(), "h264");
    good.kill();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_admit_publishers_and_viewers_and_refuse_bad_or_expired_ones() {
    let node = Node::start(test_config(&format!(
        "[auth]\nclock_skew_ms = 0\n[auth.signing_keys]\nk1 = {KEY_ONE:?}\nk2 = {KEY_TWO:?}\n\
         [auth.apps.live.publish]\ncheck = \"signed\"\n[auth.apps.live.play]\ncheck = \"signed\"\n"
    )))
    .await;
    let later = now_s() + 600;
    // A play signature does not publish; an expired one, a forged one neither.
    let play_sig = signed("k1", KEY_ONE, Action::Play, "cam", later);
    assert!(!publish_once(&node.rtmp_url(&format!("live/cam?{play_sig}"))).await);
    let expired = signed("k1", KEY_ONE, Action::Publish, "cam", now_s() - 5);
    assert!(!publish_once(&node.rtmp_url(&format!("live/cam?{expired}"))).await);
    let forged = signed("k1", "not-the-key-at-all", Action::Publish, "cam", later);
    assert!(!publish_once(&node.rtmp_url(&format!("live/cam?{forged}"))).await);
    assert_eq!(refused(&node, "auth_invalid").await, 2.0);
    assert_eq!(refused(&node, "auth_expired").await, 1.0);
    // Either of two keys (a rotation in progress) publishes.
    let good = signed("k2", KEY_TWO, Action::Publish, "cam", later);
    let mut publisher = publish(&node.rtmp_url(&format!("live/cam?{good}")));
    wait_publishing(&node, "cam").await;

    // HTTP-FLV: 401 without credentials, 403 with bad ones, 410 when expired, else FLV.
    let (status, _, _) = get(&node, "/live/cam.flv", 0).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(&node, &format!("/live/cam.flv?{forged}"), 0).await;
    assert_eq!(status, 403);
    let old = signed("k1", KEY_ONE, Action::Play, "cam", now_s() - 5);
    let (status, _, _) = get(&node, &format!("/live/cam.flv?{old}"), 0).await;
    assert_eq!(status, 410);
    let other_stream = signed("k1", KEY_ONE, Action::Play, "other", later);
    let (status, _, _) = get(&node, &format!("/live/cam.flv?{other_stream}"), 0).await;
    assert_eq!(status, 403, "a signature is for one stream");
    let (status, _, body) = get(&node, &format!("/live/cam.flv?{play_sig}"), 4096).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..3], b"FLV");

    // RTMP play with ffprobe: refused without, plays with.
    let url = node.rtmp_url("live/cam");
    let unsigned = tokio::task::spawn_blocking(move || {
        probe::probe_with(&url, &["-read_intervals", "%+2"], WAIT)
    })
    .await
    .expect("probe task");
    assert!(unsigned.is_err(), "ffprobe played without a signature");
    let url = node.rtmp_url(&format!("live/cam?{play_sig}"));
    let report = tokio::task::spawn_blocking(move || {
        probe::probe_with(&url, &["-read_intervals", "%+2"], WAIT)
    })
    .await
    .expect("probe task")
    .expect("ffprobe plays with a signature");
    assert_eq!(report.audio().expect("audio").codec(), "aac");
    publisher.kill();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_checks_the_playlist_once_and_binds_every_later_url_to_its_grant() {
    let node = Node::start(test_config(&format!(
        "[auth.signing_keys]\nk1 = {KEY_ONE:?}\n[auth.apps.live.play]\ncheck = \"signed\"\n"
    )))
    .await;
    let mut publisher = publish(&node.rtmp_url("live/cam"));
    wait_publishing(&node, "cam").await;
    let sig = signed("k1", KEY_ONE, Action::Play, "cam", now_s() + 600);

    let (status, _, _) = get(&node, "/live/cam.m3u8", 0).await;
    assert_eq!(status, 401);
    let (status, _, body) = get(&node, &format!("/live/cam.m3u8?{sig}"), usize::MAX).await;
    assert_eq!(status, 200);
    let body = String::from_utf8(body).expect("playlist text");
    let media = body
        .lines()
        .find(|l| l.ends_with("/media.m3u8"))
        .unwrap_or_else(|| panic!("no media playlist URI in {body}"));
    let grant = media
        .strip_prefix("cam/")
        .and_then(|rest| rest.strip_suffix("/media.m3u8"))
        .unwrap_or_else(|| panic!("the media URI is not under a grant: {media}"));
    assert!(grant.starts_with("g."), "{grant}");

    // Under the grant: the media playlist, its init segment and parts, no credentials asked.
    let (status, _, playlist) =
        get(&node, &format!("/live/cam/{grant}/media.m3u8"), usize::MAX).await;
    assert_eq!(status, 200);
    let playlist = String::from_utf8(playlist).expect("playlist text");
    let init = playlist
        .lines()
        .find_map(|l| l.split("URI=\"").nth(1).and_then(|u| u.split('"').next()))
        .unwrap_or_else(|| panic!("no init URI in {playlist}"));
    let (status, _, init_bytes) =
        get(&node, &format!("/live/cam/{grant}/{init}"), usize::MAX).await;
    assert_eq!(status, 200);
    assert_eq!(&init_bytes[4..8], b"ftyp");

    // Without the grant, with a forged one, or for another stream: refused.
    let (status, _, _) = get(&node, &format!("/live/cam/{init}"), 0).await;
    assert_eq!(status, 401);
    let mut forged = grant.to_owned();
    let last = forged.pop().expect("grant");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let (status, _, _) = get(&node, &format!("/live/cam/{forged}/{init}"), 0).await;
    assert_eq!(status, 403);
    let (status, _, _) = get(&node, &format!("/live/other/{grant}/media.m3u8"), 0).await;
    assert_eq!(status, 403);

    // A media playlist asked directly with credentials is redirected under a grant.
    let (status, head, _) = get(&node, &format!("/live/cam/media.m3u8?{sig}"), 0).await;
    assert_eq!(status, 302, "{head}");
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("no location in {head}"));
    assert!(
        location.starts_with("/live/cam/g.") && location.ends_with("/media.m3u8"),
        "{location}"
    );
    publisher.kill();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_allow_refuse_rename_and_time_out_to_the_configured_default() {
    let hooks = HookServer::start(|event: &Value| match event["stream"].as_str() {
        Some("denied") => Reply::Status(403),
        Some("renamed") => Reply::Redirect("studio".to_owned()),
        Some("slow") => Reply::Late(Duration::from_secs(3), 200),
        _ => Reply::Status(200),
    })
    .await;
    let node = Node::start(test_config(&format!(
        "[auth.webhook]\ntimeout_ms = 500\non_failure = \"deny\"\n\
         [auth.apps.live.publish]\nhook = {:?}\ndone_hook = {:?}\n\
         [auth.apps.live.play]\nhook = {:?}\ndone_hook = {:?}\n",
        hooks.url("on_publish"),
        hooks.url("on_publish_done"),
        hooks.url("on_play"),
        hooks.url("on_play_done"),
    )))
    .await;
    assert!(!publish_once(&node.rtmp_url("live/denied")).await);
    assert!(
        !publish_once(&node.rtmp_url("live/slow")).await,
        "a hook that times out denies"
    );
    assert_eq!(refused(&node, "hook_denied").await, 1.0);
    assert_eq!(refused(&node, "hook_failed").await, 1.0);

    // A 3xx with a plain name renames the published stream.
    let mut renamed = publish(&node.rtmp_url("live/renamed?token=abc"));
    wait_publishing(&node, "studio").await;
    let mut allowed = publish(&node.rtmp_url("live/open"));
    wait_publishing(&node, "open").await;
    let (status, _, body) = get(&node, "/live/open.flv?who=viewer", 4096).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..3], b"FLV");
    let (status, _, _) = get(&node, "/live/denied.flv", 0).await;
    assert_eq!(status, 403);

    let publish_events = hooks.received_with("publish");
    let event = publish_events
        .iter()
        .find(|e| e["stream"] == "renamed")
        .expect("the renamed publish was asked");
    assert_eq!(event["app"], "live");
    assert_eq!(event["protocol"], "rtmp");
    assert_eq!(event["query"], "token=abc");
    assert_eq!(event["client"], "127.0.0.1");
    assert!(event["node"].is_string());
    let play = hooks.received_with("play");
    assert!(
        play.iter().any(|e| e["stream"] == "open"
            && e["protocol"] == "http_flv"
            && e["query"] == "who=viewer"),
        "{play:?}"
    );

    // "done" hooks when the viewer and the publishers leave.
    allowed.kill();
    renamed.kill();
    let done = eventually(WAIT, || async {
        let published = hooks.received_with("publish_done");
        published.iter().any(|e| e["stream"] == "studio")
            && published.iter().any(|e| e["stream"] == "open")
            && hooks
                .received_with("play_done")
                .iter()
                .any(|e| e["stream"] == "open")
    })
    .await;
    assert!(done, "done hooks: {:?}", hooks.received());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_but_the_probes_do_not() {
    let node = Node::start(test_config("[admin]\ntoken = \"admin-secret\"\n")).await;
    let admin = node.addrs.admin;
    let open = http::request(admin, "GET", "/healthz").await;
    assert_eq!(open.status, 200);
    for path in ["/metrics", "/api/streams", "/api/pulls"] {
        assert_eq!(
            http::request(admin, "GET", path).await.status,
            401,
            "{path}"
        );
        let wrong =
            http::request_with(admin, "GET", path, &["Authorization: Bearer admin-secreT"]).await;
        assert_eq!(wrong.status, 401, "{path}");
        let right =
            http::request_with(admin, "GET", path, &["Authorization: Bearer admin-secret"]).await;
        assert_eq!(right.status, 200, "{path}: {}", right.body);
    }
    node.stop().await;

    // Admin on a public address without a token: the node refuses to start.
    let status = std::process::Command::new(BIN)
        .args(["serve"])
        .env_clear()
        .env("SLUICE__ADMIN__LISTEN", "0.0.0.0:0")
        .env("SLUICE__RTMP__LISTEN", "127.0.0.1:0")
        .env("SLUICE__HTTP__LISTEN", "127.0.0.1:0")
        .output()
        .expect("run sluice");
    assert!(!status.status.success());
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("admin.token"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_and_count_per_address_and_per_node() {
    let node = Node::start(test_config(
        "[limits]\nmax_connections_per_address = 3\npublish_attempts_per_minute = 3\nmax_streams = 1\n",
    ))
    .await;
    let mut first = publish(&node.rtmp_url("live/one"));
    wait_publishing(&node, "one").await;
    // A second stream is over the node's maximum.
    assert!(!publish_once(&node.rtmp_url("live/two")).await);
    assert_eq!(refused(&node, "max_streams").await, 1.0);
    // Two attempts so far; the third is allowed, the fourth in the same minute is not.
    assert!(!publish_once(&node.rtmp_url("live/three")).await);
    assert!(!publish_once(&node.rtmp_url("live/four")).await);
    assert_eq!(refused(&node, "publish_rate").await, 1.0);

    // The publisher holds one connection of 127.0.0.1; two more, then refused at accept.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tokio::net::TcpStream::connect(node.addrs.http)
                .await
                .expect("connect"),
        );
    }
    let over = eventually(WAIT, || async {
        refused(&node, "address_connections").await >= 1.0 || {
            let _ = tokio::net::TcpStream::connect(node.addrs.rtmp).await;
            false
        }
    })
    .await;
    assert!(over, "{}", node.metrics().await);
    drop(held);
    first.kill();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_and_key_files_are_read_again_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("signing.keys");
    let stream_keys = dir.path().join("stream.keys");
    std::fs::write(&keys, format!("# id secret\nk1 {KEY_ONE}\n")).expect("keys");
    std::fs::write(&stream_keys, "first-key\n").expect("stream keys");
    let spec = Spec::origin("rotating", Transport::Rtmp).with(&format!(
        "[auth]\nsigning_key_file = {:?}\n[auth.apps.live.play]\ncheck = \"signed\"\n\
         [auth.apps.live.publish]\ncheck = \"key\"\nkey_file = {:?}\n",
        keys.display().to_string(),
        stream_keys.display().to_string()
    ));
    let node = Process::start(BIN, spec).await;
    let mut publisher = process::publish_looped(
        tools::ffmpeg5(),
        &fixture(H264_AAC),
        &format!("{}?key=first-key", node.rtmp_url("cam")),
        &[],
    );
    node.wait_publishing("cam").await;
    let later = now_s() + 600;
    let flv = |query: String| {
        let http = node.http;
        async move {
            let r = http::request(http, "HEAD", &format!("/live/cam.flv?{query}")).await;
            r.status
        }
    };
    assert_eq!(
        flv(signed("k1", KEY_ONE, Action::Play, "cam", later)).await,
        200
    );
    assert_eq!(
        flv(signed("k2", KEY_TWO, Action::Play, "cam", later)).await,
        403
    );

    // Rotation: k2 joins (both valid), then k1 leaves.
    std::fs::write(&keys, format!("k1 {KEY_ONE}\nk2 {KEY_TWO}\n")).expect("keys");
    std::fs::write(&stream_keys, "second-key\n").expect("stream keys");
    node.hup();
    let both = eventually(WAIT, || async {
        flv(signed("k2", KEY_TWO, Action::Play, "cam", later)).await == 200
    })
    .await;
    assert!(both, "k2 never became valid; log:\n{}", node.log());
    assert_eq!(
        flv(signed("k1", KEY_ONE, Action::Play, "cam", later)).await,
        200
    );
    std::fs::write(&keys, format!("k2 {KEY_TWO}\n")).expect("keys");
    node.hup();
    let gone = eventually(WAIT, || async {
        flv(signed("k1", KEY_ONE, Action::Play, "cam", later)).await == 403
    })
    .await;
    assert!(gone, "k1 stayed valid; log:\n{}", node.log());
    // The publisher that joined with the old stream key keeps publishing; a new one needs
    // the new key.
    assert!(publisher.is_running());
    let rtmp = node.rtmp_url("other");
    assert!(!publish_once(&format!("{rtmp}?key=first-key")).await);
    assert!(publisher.is_running());

    // A key file that cannot be read refuses the reload: the keys in force stay.
    std::fs::remove_file(&keys).expect("remove keys");
    node.hup();
    let refused_logged = eventually(WAIT, || async {
        node.log().contains("config reload refused")
    })
    .await;
    assert!(refused_logged, "{}", node.log());
    assert_eq!(
        flv(signed("k2", KEY_TWO, Action::Play, "cam", later)).await,
        200
    );
    publisher.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_checks_its_viewers_itself_and_signs_its_own_pulls() {
    let auth = format!(
        "[auth.signing_keys]\nnodes = {KEY_ONE:?}\nviewers = {KEY_TWO:?}\n\
         [auth.apps.live.play]\ncheck = \"signed\"\n"
    );
    let origin = Process::start(BIN, Spec::origin("origin", Transport::Rtmp).with(&auth)).await;
    let edge = Process::start(
        BIN,
        Spec::edge("edge", Transport::Rtmp, &[origin.upstream(Transport::Rtmp)])
            .with(&auth)
            .with("[cluster.pull]\nsign_with = \"nodes\"\n"),
    )
    .await;
    let mut publisher = process::publish_looped(
        tools::ffmpeg5(),
        &fixture(H264_AAC),
        &origin.rtmp_url("cam"),
        &[],
    );
    origin.wait_publishing("cam").await;
    let sig = signed("viewers", KEY_TWO, Action::Play, "cam", now_s() + 600);
    let unsigned = http::request(edge.http, "HEAD", "/live/cam.flv").await;
    assert_eq!(unsigned.status, 401, "the edge checks its viewers");
    let (status, _, body) = get_at(edge.http, &format!("/live/cam.flv?{sig}"), 4096).await;
    assert_eq!(status, 200, "{}", edge.log());
    assert_eq!(&body[..3], b"FLV");
    // The origin saw a signed pull, not a refusal.
    assert_eq!(
        origin
            .metric(r#"sluice_connections_refused_total{protocol="rtmp",reason="auth_missing"}"#)
            .await,
        0.0
    );
    publisher.kill();
}
