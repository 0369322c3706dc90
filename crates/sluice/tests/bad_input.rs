//! Hostile and broken peers: each bad input ends only its own connection, with its reason
//! counted, while a viewer of another stream keeps receiving throughout.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::rtmp::{amf0_command, whole_message};
use common::{Node, test_config};
use rml_amf0::Amf0Value;
use sluice_rtmp::chunk::{ChunkLimits, ChunkReader};
use sluice_rtmp::command::Command;
use sluice_rtmp::message::Message;
use sluice_runtime::client::Client;
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::media::fixture_media;
use sluice_testkit::rtmp::{
    DEADLINE, Got, Player, Publisher, closed_within, handshaken, record, url,
};
use sluice_testkit::wait::eventually;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A viewer of `live/good`, fed by a paced publisher.
struct Bystander {
    viewer: Player,
    publisher: tokio::task::JoinHandle<Client>,
}

impl Bystander {
    async fn start(node: &Node) -> Bystander {
        let publisher = Publisher::fixture(node.rtmp_url("live/good"), H264_AAC)
            .gap(Duration::from_millis(10))
            .loops(100)
            .spawn();
        let viewer = Player::start(&node.rtmp_url("live/good"), DEADLINE).await;
        let b = Bystander { viewer, publisher };
        b.assert_still_receiving().await;
        b
    }

    async fn assert_still_receiving(&self) {
        if let Err(e) = self.viewer.keeps_receiving(5).await {
            panic!("the bystander stopped receiving: {e}");
        }
    }

    async fn stop(self) {
        self.viewer.stop().await;
        self.publisher.abort();
    }
}

fn closed_series(reason: &str) -> String {
    format!("sluice_connections_closed_total{{protocol=\"rtmp\",reason=\"{reason}\"}}")
}

/// Sends `bytes` on `socket` and asserts the server closes it, counting `reason`.
async fn expect_closed(node: &Node, mut socket: TcpStream, bytes: &[u8], reason: &str) {
    let before = node.metric(&closed_series(reason)).await;
    // The server may close before reading everything; a failed write is fine.
    let _ = socket.write_all(bytes).await;
    assert!(
        closed_within(&mut socket, DEADLINE).await,
        "server kept the connection open ({reason})"
    );
    let counted = eventually(DEADLINE, || async {
        node.metric(&closed_series(reason)).await == before + 1.0
    })
    .await;
    assert!(
        counted,
        "close not counted as {reason}:\n{}",
        node.metrics().await
    );
}

fn control(type_id: u8, payload: &[u8]) -> BytesMut {
    whole_message(
        &Message {
            csid: 2,
            type_id,
            timestamp: 0,
            stream_id: 0,
            payload: Bytes::copy_from_slice(payload),
        },
        128,
    )
}

fn command(values: Vec<Amf0Value>) -> BytesMut {
    command_on(0, values)
}

fn command_on(stream_id: u32, values: Vec<Amf0Value>) -> BytesMut {
    whole_message(
        &Message {
            csid: 3,
            type_id: 20,
            timestamp: 0,
            stream_id,
            payload: amf0_command(values),
        },
        128,
    )
}

/// Reads the server's output with our chunk reader until `n` commands arrived.
async fn read_commands(socket: &mut TcpStream, n: usize) -> Vec<Command> {
    use tokio::io::AsyncReadExt;
    let mut reader = ChunkReader::new(ChunkLimits::default());
    let mut commands = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    tokio::time::timeout(DEADLINE, async {
        while commands.len() < n {
            let read = socket.read(&mut buf).await.expect("read");
            assert!(read > 0, "server closed; commands so far: {commands:?}");
            reader.push(&buf[..read]);
            while let Some(msg) = reader.next_message().expect("valid chunks") {
                // The reader applies SetChunkSize itself.
                if msg.type_id == 20 {
                    commands.push(Command::decode(&msg.payload).expect("amf0"));
                }
            }
        }
    })
    .await
    .expect("answers in time");
    commands
}

fn text(s: &str) -> Amf0Value {
    Amf0Value::Utf8String(s.to_owned())
}

fn connect_command() -> BytesMut {
    let mut props = std::collections::HashMap::new();
    props.insert("app".to_owned(), text("live"));
    props.insert("tcUrl".to_owned(), text("rtmp://127.0.0.1/live"));
    command(vec![
        text("connect"),
        Amf0Value::Number(1.0),
        Amf0Value::Object(props),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_its_own_connection() {
    let node = Node::start(test_config("")).await;
    let bystander = Bystander::start(&node).await;
    let rtmp = node.addrs.rtmp;

    // A handshake that stops halfway is cut at the handshake deadline.
    let mut half = vec![3u8];
    half.extend_from_slice(&[0u8; 700]);
    expect_closed(
        &node,
        TcpStream::connect(rtmp).await.expect("connect"),
        &half,
        "handshake_timeout",
    )
    .await;
    bystander.assert_still_receiving().await;

    // Something that is not RTMP at all.
    expect_closed(
        &node,
        TcpStream::connect(rtmp).await.expect("connect"),
        b"GET /live/good.flv HTTP/1.1\r\nHost: x\r\n\r\n",
        "handshake_error",
    )
    .await;

    // Garbage after a good handshake: a chunk header continuing a message never begun.
    expect_closed(&node, handshaken(rtmp).await, &[0xC5; 64], "protocol_error").await;
    // HTTP after the handshake ('G' reads as a type-1 header on a fresh chunk stream).
    expect_closed(
        &node,
        handshaken(rtmp).await,
        b"GET / HTTP/1.1\r\n\r\n",
        "protocol_error",
    )
    .await;
    bystander.assert_still_receiving().await;

    // An absurd chunk size, and a zero one.
    expect_closed(
        &node,
        handshaken(rtmp).await,
        &control(1, &0x7FFF_FFFFu32.to_be_bytes()),
        "protocol_error",
    )
    .await;
    expect_closed(
        &node,
        handshaken(rtmp).await,
        &control(1, &0u32.to_be_bytes()),
        "protocol_error",
    )
    .await;
    // A control message too short for its type.
    expect_closed(
        &node,
        handshaken(rtmp).await,
        &control(5, &[0, 1]),
        "protocol_error",
    )
    .await;

    // A message over the size cap (8 MiB by default) is refused at its header, before any
    // of it is buffered.
    let mut huge = BytesMut::new();
    common::rtmp::basic_header(&mut huge, 0, 6);
    huge.extend_from_slice(&[0, 0, 0, 0xFF, 0xFF, 0xFF, 9, 1, 0, 0, 0]);
    huge.extend_from_slice(&[0x17; 128]);
    expect_closed(&node, handshaken(rtmp).await, &huge, "protocol_error").await;
    bystander.assert_still_receiving().await;

    // AMF0 commands with missing fields: connect without its command object; a command
    // cut inside a value; a command before connect.
    expect_closed(
        &node,
        handshaken(rtmp).await,
        &command(vec![text("connect"), Amf0Value::Number(1.0)]),
        "protocol_error",
    )
    .await;
    let mut cut = amf0_command(vec![text("connect"), Amf0Value::Number(1.0)]).to_vec();
    cut.truncate(cut.len() - 3);
    let cut_msg = whole_message(
        &Message {
            csid: 3,
            type_id: 20,
            timestamp: 0,
            stream_id: 0,
            payload: Bytes::from(cut),
        },
        128,
    );
    expect_closed(&node, handshaken(rtmp).await, &cut_msg, "protocol_error").await;
    expect_closed(
        &node,
        handshaken(rtmp).await,
        &command(vec![
            text("createStream"),
            Amf0Value::Number(2.0),
            Amf0Value::Null,
        ]),
        "protocol_error",
    )
    .await;
    // A command name that is not a string.
    expect_closed(
        &node,
        handshaken(rtmp).await,
        &command(vec![Amf0Value::Number(7.0), Amf0Value::Number(1.0)]),
        "protocol_error",
    )
    .await;
    bystander.assert_still_receiving().await;

    // A second connect on a connected session.
    let mut twice = connect_command();
    twice.extend_from_slice(&connect_command());
    expect_closed(&node, handshaken(rtmp).await, &twice, "protocol_error").await;

    bystander.assert_still_receiving().await;
    assert_eq!(node.metric("sluice_publishers").await, 1.0);
    bystander.stop().await;
    node.stop().await;
}

/// This process's resident memory in bytes, from /proc/self/status (the node runs in it).
fn vm_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// A peer that opens 40 chunk streams, announces an 8 MiB message on each (the largest
/// allowed) and sends 4 KiB of every one, round after round, would make the server hold
/// 40 x 8 MiB without a budget. With the default budget (16 MiB) it is closed, counted as
/// `ingest_budget`, the process's memory stays bounded, and a viewer of another stream
/// keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_partial_messages_are_held_to_the_ingest_budget() {
    const STREAMS: u32 = 40;
    const CHUNK: usize = 4096;
    const ANNOUNCED: u32 = 8 << 20;
    // Enough to put 120 MiB in the server's hands were it not refused, and no message ever
    // completes (3 MiB of each 8 MiB).
    const ROUNDS: usize = 768;
    // Bound on how much the process grows, as resident memory: the budget (16 MiB) plus,
    // for slack, one buffer being copied as it doubles (at most 8 MiB) and what the
    // allocator keeps of freed buffers and per-thread arenas, with room for the other
    // tests of this file running beside it. Measured: ~11 MiB with the budget, ~116 MiB
    // with the budget set out of reach, so the bound tells the two apart either way.
    const RSS_GROWTH_BOUND: u64 = 40 << 20;

    let node = Node::start(test_config("")).await;
    let bystander = Bystander::start(&node).await;
    let rss_before = vm_rss();
    let closed_before = node.metric(&closed_series("ingest_budget")).await;
    let protocol_errors_before = node.metric(&closed_series("protocol_error")).await;

    let mut socket = handshaken(node.addrs.rtmp).await;
    socket
        .write_all(&control(1, &(CHUNK as u32).to_be_bytes()))
        .await
        .expect("set chunk size");
    let payload = [0x17u8; CHUNK];
    let mut round_bytes = BytesMut::new();
    let mut rss_peak = rss_before;
    let mut sent = 0usize;
    for round in 0..ROUNDS {
        round_bytes.clear();
        for csid in 3..3 + STREAMS {
            if round == 0 {
                common::rtmp::basic_header(&mut round_bytes, 0, csid);
                round_bytes.extend_from_slice(&[0, 0, 0]); // timestamp
                round_bytes.extend_from_slice(&ANNOUNCED.to_be_bytes()[1..]);
                round_bytes.extend_from_slice(&[9, 1, 0, 0, 0]); // video, stream 1
            } else {
                common::rtmp::basic_header(&mut round_bytes, 3, csid);
            }
            round_bytes.extend_from_slice(&payload);
        }
        // The server closes mid-attack; writes then fail, which ends it.
        if socket.write_all(&round_bytes).await.is_err() {
            break;
        }
        sent += round_bytes.len();
        rss_peak = rss_peak.max(vm_rss());
    }
    assert!(
        closed_within(&mut socket, DEADLINE).await,
        "server kept the connection open after {sent} bytes"
    );
    let counted = eventually(DEADLINE, || async {
        node.metric(&closed_series("ingest_budget")).await == closed_before + 1.0
    })
    .await;
    assert!(counted, "close not counted:\n{}", node.metrics().await);
    assert_eq!(
        node.metric(&closed_series("protocol_error")).await,
        protocol_errors_before,
        "counted as a protocol error too"
    );
    rss_peak = rss_peak.max(vm_rss());
    let growth = rss_peak.saturating_sub(rss_before);
    assert!(
        growth < RSS_GROWTH_BOUND,
        "resident memory grew by {} MiB (sent {} MiB)",
        growth >> 20,
        sent >> 20
    );

    bystander.assert_still_receiving().await;
    bystander.stop().await;
    node.stop().await;
}

/// What real clients get wrong without meaning harm is answered or dropped and counted, and
/// the connection goes on: an unknown command gets `_error`; `@setDataFrame` without an
/// object is dropped without touching the stream's metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sloppy_but_harmless_input_is_answered_and_counted() {
    let node = Node::start(test_config("")).await;
    let bystander = Bystander::start(&node).await;

    let mut publisher = Client::publish(&url(&node.rtmp_url("live/sloppy")), DEADLINE)
        .await
        .expect("publish");
    let stream_id = publisher
        .session()
        .media_message(9, 0, Bytes::new())
        .expect("publishing")
        .stream_id;
    let (tags, metadata) = fixture_media(H264_AAC);
    publisher
        .send_metadata(metadata.clone())
        .await
        .expect("metadata");

    // @setDataFrame with no object, and with a number where the object belongs.
    for body in [
        vec![text("@setDataFrame"), text("onMetaData")],
        vec![
            text("@setDataFrame"),
            text("onMetaData"),
            Amf0Value::Number(1.0),
        ],
        vec![text("@setDataFrame")],
    ] {
        let msg = Message {
            csid: 5,
            type_id: 18,
            timestamp: 0,
            stream_id,
            payload: amf0_command(body),
        };
        publisher
            .send_raw(&whole_message(&msg, 4096))
            .await
            .expect("send");
    }

    // Unknown command with a transaction id: answered with _error naming it; the
    // connection stays and answers the next command.
    let mut raw = handshaken(node.addrs.rtmp).await;
    let mut bytes = connect_command();
    bytes.extend_from_slice(&command(vec![
        text("fooBarBaz"),
        Amf0Value::Number(42.0),
        Amf0Value::Null,
    ]));
    bytes.extend_from_slice(&command(vec![
        text("createStream"),
        Amf0Value::Number(43.0),
        Amf0Value::Null,
    ]));
    raw.write_all(&bytes).await.expect("send");
    let answers = read_commands(&mut raw, 3).await;
    let names: Vec<(&str, f64)> = answers
        .iter()
        .map(|c| (c.name.as_str(), c.transaction_id))
        .collect();
    assert_eq!(
        names,
        [("_result", 1.0), ("_error", 42.0), ("_result", 43.0)],
        "{answers:?}"
    );
    assert!(format!("{:?}", answers[1].args).contains("fooBarBaz"));

    let dropped = |reason: &'static str| {
        let node = &node;
        async move {
            node.metric(&format!(
                "sluice_rtmp_messages_dropped_total{{reason=\"{reason}\"}}"
            ))
            .await
        }
    };
    assert!(
        eventually(DEADLINE, || async {
            dropped("unknown_command").await == 1.0 && dropped("bad_data").await == 3.0
        })
        .await,
        "{}",
        node.metrics().await
    );

    // The connection still publishes, and viewers get the good metadata.
    for t in tags.iter().take(20) {
        publisher
            .send_media(t.type_id, t.timestamp, t.payload.clone())
            .await
            .expect("still publishing");
    }
    let mut viewer = Client::play(&url(&node.rtmp_url("live/sloppy")), DEADLINE)
        .await
        .expect("play");
    let got = record(&mut viewer, 3, DEADLINE).await;
    assert!(got.contains(&Got::Metadata(metadata)), "viewer got {got:?}");
    bystander.assert_still_receiving().await;
    bystander.stop().await;
    node.stop().await;
}
