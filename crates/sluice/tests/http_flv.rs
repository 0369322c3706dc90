//! HTTP-FLV egress at the byte level: headers a web player needs, the FLV it gets, and the
//! answers for streams and applications that are not there.

mod common;

use std::time::Duration;

use common::rtmp::{
    DEADLINE, Tag, fixture_media, is_sequence_header, is_video_keyframe, spawn_paced_publisher,
};
use common::{Node, eventually, test_config};
use sluice_media::flv::{Demuxer, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};
use sluice_testkit::fixtures::H264_AAC;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a raw request and returns the response head and up to `body_limit` body bytes.
async fn request(addr: std::net::SocketAddr, raw: &str, body_limit: usize) -> (String, Vec<u8>) {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket.write_all(raw.as_bytes()).await.expect("write");
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(DEADLINE, async {
        loop {
            let n = socket.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            data.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&data, b"\r\n\r\n")
                && data.len() - (end + 4) >= body_limit
            {
                return;
            }
        }
    })
    .await;
    let end = find(&data, b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
    (head, data[end + 4..].to_vec())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_player_gets_headers_cors_and_an_flv_that_starts_on_a_keyframe() {
    let node = Node::start(test_config("")).await;
    let (tags, metadata) = fixture_media(H264_AAC);
    let publishing = spawn_paced_publisher(
        node.rtmp_url("live/web"),
        metadata.clone(),
        tags.clone(),
        Duration::from_millis(4),
        5,
    );
    assert!(
        eventually(DEADLINE, || async {
            node.metric("sluice_frames_in_total{kind=\"video\"}").await > 70.0
        })
        .await
    );

    // HTTP/1.0 gets a close-delimited body we can parse as it comes.
    let (head, body) = request(
        node.addrs.http,
        "GET /live/web.flv HTTP/1.0\r\nOrigin: https://player.example\r\n\r\n",
        64 * 1024,
    )
    .await;
    assert!(
        head.starts_with("http/1.0 200") || head.starts_with("http/1.1 200"),
        "{head}"
    );
    assert!(head.contains("content-type: video/x-flv"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");

    assert_eq!(&body[..3], b"FLV");
    let mut demuxer = Demuxer::new();
    demuxer.push(&body);
    let mut got = Vec::new();
    while let Ok(Some((header, payload))) = demuxer.next_tag() {
        got.push(Tag {
            type_id: header.tag_type,
            timestamp: header.timestamp,
            payload,
        });
    }
    assert!(got.len() > 5, "tags: {}", got.len());
    assert_eq!(got[0].type_id, TAG_SCRIPT);
    assert_eq!(got[0].payload, metadata);
    assert!(got[1..3].iter().all(is_sequence_header));
    let kinds: Vec<u8> = got[1..3].iter().map(|t| t.type_id).collect();
    assert!(kinds.contains(&TAG_AUDIO) && kinds.contains(&TAG_VIDEO));
    let first_picture = got[3..]
        .iter()
        .find(|t| t.type_id == TAG_VIDEO)
        .expect("video");
    assert!(is_video_keyframe(first_picture));
    // Every body byte-identical to a fixture tag: the server forwards, never re-encodes.
    for t in &got[1..] {
        assert!(
            tags.iter().any(|f| f.payload == t.payload),
            "unknown tag body"
        );
    }
    assert!(
        node.metric("sluice_frames_out_total{protocol=\"http_flv\"}")
            .await
            > 5.0
    );

    // HTTP/1.1 keeps the connection with a chunked body.
    let (head, _) = request(
        node.addrs.http,
        "GET /live/web.flv HTTP/1.1\r\nHost: x\r\n\r\n",
        1,
    )
    .await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");

    // A CORS preflight.
    let (head, _) = request(
        node.addrs.http,
        "OPTIONS /live/web.flv HTTP/1.1\r\nHost: x\r\nOrigin: https://player.example\r\n\
         Access-Control-Request-Method: GET\r\nConnection: close\r\n\r\n",
        0,
    )
    .await;
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert!(
        head.contains("access-control-allow-methods: get, options"),
        "{head}"
    );
    publishing.abort();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_streams_and_apps_are_404s() {
    let node = Node::start(test_config(
        "[streams]\nwait_for_publisher_ms = 200\napps = [\"live\"]\n",
    ))
    .await;
    let (status, _) = common::http_get(node.addrs.http, "/live/nobody.flv").await;
    assert_eq!(status, 404);
    let (status, _) = common::http_get(node.addrs.http, "/other/key.flv").await;
    assert_eq!(status, 404);
    let (status, _) = common::http_get(node.addrs.http, "/live/key.mp4").await;
    assert_eq!(status, 404);
    assert_eq!(
        node.metric(
            "sluice_connections_refused_total{protocol=\"http_flv\",reason=\"unknown_app\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        node.metric(
            "sluice_connections_closed_total{protocol=\"http_flv\",reason=\"no_publisher\"}"
        )
        .await,
        1.0
    );
    node.stop().await;
}
