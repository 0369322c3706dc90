//! HTTP-FLV egress at the byte level: headers a web player needs, the FLV it gets, how its
//! body ends (HTTP/1.0 and HTTP/1.1), the answers for streams and applications that are not
//! there, requests that are slow, too large or not HTTP, and slow viewers held to the
//! latency budget.

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::budget::{self, Pace, PacedReader, Played, Received};
use common::{Node, test_config};
use sluice_media::flv::{Demuxer, TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO};
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::http;
use sluice_testkit::media::{Tag, fixture_media};
use sluice_testkit::rtmp::{DEADLINE, Publisher, closed_within};
use sluice_testkit::wait::eventually;
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
    let publishing = Publisher::new(node.rtmp_url("live/web"), tags.clone(), metadata.clone())
        .gap(Duration::from_millis(4))
        .loops(5)
        .spawn();
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
    assert!(got[1..3].iter().all(Tag::is_sequence_header));
    let kinds: Vec<u8> = got[1..3].iter().map(|t| t.type_id).collect();
    assert!(kinds.contains(&TAG_AUDIO) && kinds.contains(&TAG_VIDEO));
    let first_picture = got[3..]
        .iter()
        .find(|t| t.type_id == TAG_VIDEO)
        .expect("video");
    assert!(first_picture.is_video_keyframe());
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
    let (status, _) = http::get(node.addrs.http, "/live/nobody.flv").await;
    assert_eq!(status, 404);
    let (status, _) = http::get(node.addrs.http, "/other/key.flv").await;
    assert_eq!(status, 404);
    let (status, _) = http::get(node.addrs.http, "/live/key.mp4").await;
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

/// An HTTP/1.1 chunked body, decoded as it arrives; panics on bad framing.
#[derive(Default)]
struct Dechunker {
    buf: Vec<u8>,
    /// Data bytes left in the current chunk.
    left: usize,
    /// A CRLF is due (after chunk data, or after the last chunk's size line).
    crlf: bool,
    /// The last chunk's size line came.
    last: bool,
}

impl Dechunker {
    /// Feeds received bytes; returns the body bytes they complete.
    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if self.left > 0 {
                let n = self.left.min(self.buf.len());
                out.extend(self.buf.drain(..n));
                self.left -= n;
                if self.left > 0 {
                    break;
                }
                self.crlf = true;
            }
            if self.crlf {
                if self.buf.len() < 2 {
                    break;
                }
                assert_eq!(&self.buf[..2], b"\r\n", "chunk not ended by CRLF");
                self.buf.drain(..2);
                self.crlf = false;
            }
            if self.last {
                assert!(self.buf.is_empty(), "bytes after the last chunk");
                break;
            }
            let Some(end) = find(&self.buf, b"\r\n") else {
                break;
            };
            let line = std::str::from_utf8(&self.buf[..end]).expect("size line");
            let size = usize::from_str_radix(line, 16).expect("hex chunk size");
            self.buf.drain(..end + 2);
            if size == 0 {
                self.last = true;
                self.crlf = true;
            }
            self.left = size;
        }
        out
    }

    /// Whether the body ended with the last chunk.
    fn ended(&self) -> bool {
        self.last && !self.crlf
    }
}

/// Splits a complete response into its lower-cased head and its body.
fn split_response(data: &[u8]) -> (String, &[u8]) {
    let end = find(data, b"\r\n\r\n").expect("a response head");
    (
        String::from_utf8_lossy(&data[..end]).to_ascii_lowercase(),
        &data[end + 4..],
    )
}

/// The FLV tags in a body: (type, timestamp); panics on anything but whole tags.
fn flv_tags(body: &[u8]) -> Vec<(u8, u32)> {
    assert_eq!(&body[..3], b"FLV");
    let mut demuxer = Demuxer::new();
    demuxer.push(body);
    let mut tags = Vec::new();
    while let Some((header, _)) = demuxer.next_tag().expect("whole FLV tags") {
        tags.push((header.tag_type, header.timestamp));
    }
    tags
}

/// HTTP/1.0 gets an HTTP/1.0 response whose body ends with the connection; HTTP/1.1 a
/// chunked body (one chunk per tag) that ends with the last chunk when the stream ends.
/// Both carry whole FLV tags to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_end_cleanly_when_the_stream_ends() {
    let node = Node::start(test_config("[streams]\nrepublish_grace_ms = 200\n")).await;
    let (tags, metadata) = fixture_media(H264_AAC);
    let addr = node.addrs.http;
    let read_all = |raw: &'static str| async move {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.write_all(raw.as_bytes()).await.expect("request");
        let mut data = Vec::new();
        tokio::time::timeout(DEADLINE, socket.read_to_end(&mut data))
            .await
            .expect("the body did not end")
            .expect("read");
        data
    };
    let v10 = tokio::spawn(read_all("GET /live/end.flv HTTP/1.0\r\n\r\n"));
    let v11 = tokio::spawn(read_all("GET /live/end.flv HTTP/1.1\r\nHost: x\r\n\r\n"));
    // Both wait before the first frame, so both get everything from the start.
    let attached = eventually(DEADLINE, || async {
        let streams = node.streams_json().await;
        streams["streams"].as_array().is_some_and(|all| {
            all.iter()
                .any(|s| s["stream"] == "end" && s["viewers"] == 2)
        })
    })
    .await;
    assert!(attached, "the viewers did not attach");
    let publishing = Publisher::new(node.rtmp_url("live/end"), tags, metadata)
        .gap(Duration::from_millis(2))
        .loops(2)
        .spawn();
    let publisher = publishing.await.expect("publisher");
    drop(publisher);

    let data = v10.await.expect("viewer");
    let (head, body) = split_response(&data);
    assert!(head.starts_with("http/1.0 200 ok"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let tags10 = flv_tags(body);
    assert!(tags10.len() > 100, "{} tags", tags10.len());

    let data = v11.await.expect("viewer");
    let (head, body) = split_response(&data);
    assert!(head.starts_with("http/1.1 200 ok"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let mut chunks = Dechunker::default();
    let body = chunks.push(body);
    assert!(chunks.ended(), "no last chunk");
    assert_eq!(flv_tags(&body), tags10, "the same tags either way");
    assert_eq!(
        node.metric(
            "sluice_connections_closed_total{protocol=\"http_flv\",reason=\"stream_ended\"}"
        )
        .await,
        2.0
    );
    node.stop().await;
}

/// A client that never finishes its request head is closed at `http.request_timeout_ms`;
/// one whose head is over 8 KiB gets 431; anything but HTTP/1 gets 400. None of them
/// disturbs a viewer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_oversized_and_bad_requests_are_refused() {
    let node = Node::start(test_config("[http]\nrequest_timeout_ms = 300\n")).await;
    let addr = node.addrs.http;

    for partial in [&b""[..], b"GET /live/slow.flv HTTP/1.1\r\nHost: x\r\n"] {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.write_all(partial).await.expect("write");
        let started = Instant::now();
        assert!(
            closed_within(&mut socket, Duration::from_secs(3)).await,
            "a slow request head held its connection"
        );
        assert!(started.elapsed() >= Duration::from_millis(250));
    }
    assert_eq!(
        node.metric(
            "sluice_connections_refused_total{protocol=\"http_flv\",reason=\"request_timeout\"}"
        )
        .await,
        2.0
    );

    let mut huge = b"GET /live/big.flv HTTP/1.1\r\nHost: x\r\nx-pad: ".to_vec();
    huge.resize(huge.len() + 9000, b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    let (head, _) = request(addr, std::str::from_utf8(&huge).expect("ascii"), 0).await;
    assert!(head.starts_with("http/1.1 431"), "{head}");

    let (head, _) = request(addr, "\x16\x03\x01\x02\x00\x01\x00\r\n\r\n", 0).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let (head, _) = request(addr, "DELETE /live/a.flv HTTP/1.1\r\n\r\n", 0).await;
    assert!(head.starts_with("http/1.1 405"), "{head}");
    for reason in ["head_too_large", "bad_request"] {
        assert_eq!(
            node.metric(&format!(
                "sluice_connections_refused_total{{protocol=\"http_flv\",reason=\"{reason}\"}}"
            ))
            .await,
            1.0,
            "{reason}"
        );
    }
    node.stop().await;
}

/// Connections over `http.max_connections` are answered 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503() {
    let node = Node::start(test_config("[http]\nmax_connections = 1\n")).await;
    // Holds the only place (its head is never finished).
    let mut first = TcpStream::connect(node.addrs.http).await.expect("connect");
    first.write_all(b"GET /live/a.flv").await.expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (head, _) = request(
        node.addrs.http,
        "GET /live/a.flv HTTP/1.1\r\nHost: x\r\n\r\n",
        0,
    )
    .await;
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert_eq!(
        node.metric(
            "sluice_connections_refused_total{protocol=\"http_flv\",reason=\"max_connections\"}"
        )
        .await,
        1.0
    );
    drop(first);
    node.stop().await;
}

/// A viewer whose socket takes nothing is closed after `http.idle_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_reads_nothing_is_closed() {
    let node = Node::start(test_config(
        "[http]\nidle_timeout_ms = 1000\n[schedule.apps.live]\nsend_buffer_bytes = 8192\n",
    ))
    .await;
    let publishing = Publisher::fixture(node.rtmp_url("live/stuck"), H264_AAC)
        .gap(Duration::from_millis(10))
        .loops(100)
        .spawn();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut socket = socket.connect(node.addrs.http).await.expect("connect");
    socket
        .write_all(b"GET /live/stuck.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let stalled = eventually(DEADLINE, || async {
        node.metric(
            "sluice_connections_closed_total{protocol=\"http_flv\",reason=\"write_stalled\"}",
        )
        .await
            == 1.0
    })
    .await;
    assert!(stalled, "{}", node.metrics().await);
    assert!(closed_within(&mut socket, DEADLINE).await);
    publishing.abort();
    node.stop().await;
}

/// An HTTP/1.1 player of `live/sched` on a socket with a small receive buffer, reading as
/// `pace` says, for `total`; returns what it decoded and when it resumed after a pause.
async fn flv_player(addr: std::net::SocketAddr, pace: Pace, total: Duration) -> Played {
    let mut socket = budget::player_socket(addr).await;
    socket
        .write_all(b"GET /live/sched.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut reader = PacedReader::new(pace, total);
    let mut head = Vec::new();
    let mut chunks = Dechunker::default();
    let mut demuxer = Demuxer::new();
    let mut got = Vec::new();
    while let Some(mut data) = reader.next(&mut socket).await {
        if find(&head, b"\r\n\r\n").is_none() {
            let before = head.len();
            head.extend_from_slice(data);
            let Some(end) = find(&head, b"\r\n\r\n") else {
                continue;
            };
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            assert!(text.starts_with("http/1.1 200"), "{text}");
            data = &data[end + 4 - before..];
        }
        demuxer.push(&chunks.push(data));
        let now = Instant::now();
        while let Some((header, payload)) = demuxer.next_tag().expect("valid FLV") {
            got.push(Received {
                tag: Tag {
                    type_id: header.tag_type,
                    timestamp: header.timestamp,
                    payload,
                },
                at: now,
                bytes_before: reader.read(),
            });
        }
    }
    (got, reader.resumed())
}

/// The latency budget holds for HTTP-FLV viewers as for RTMP ones (see scheduling.rs): a
/// viewer that stops reading for 10 s and one that reads at half the stream's bitrate get
/// only frames within `max_latency_ms` (plus what the kernel's buffers held), because the
/// server hands the kernel only what the socket takes and gives the rest back to the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_flv_viewers_stay_within_the_latency_budget() {
    let node = Node::start(budget::config()).await;
    let (sent, publishing) =
        budget::real_time_publisher(node.rtmp_url("live/sched"), Duration::from_secs(16));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = node.addrs.http;
    let ((paused_got, resumed), (slow_got, _)) =
        budget::paused_and_slow(|pace, total| flv_player(addr, pace, total)).await;
    publishing.await.expect("publisher");

    budget::assert_within_budget(&sent, (&paused_got, resumed), &slow_got);
    assert!(
        node.metric("sluice_viewer_skips_total{reason=\"latency\"}")
            .await
            >= 1.0
    );
    // They were caught up and written by the stream's shared writer until their sockets
    // filled; it handed them back, and their own tasks applied the budget from there.
    budget::assert_handed_back(&node, "http_flv").await;
    node.stop().await;
}
