//! RTMP peers other than ffmpeg: a publisher that interleaves chunk streams, rml_rtmp's
//! client as an independent player, viewers joining mid-stream, a second publisher, and a
//! publisher that drops and comes back.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::rtmp::{Interleaver, whole_message};
use common::{Node, test_config};
use sluice_media::flv::{TAG_AUDIO, TAG_VIDEO};
use sluice_rtmp::client::StatusCode;
use sluice_rtmp::message::Message;
use sluice_runtime::client::{Client, ClientError};
use sluice_testkit::fixtures::{H264_AAC, H264_AAC_BFRAMES};
use sluice_testkit::media::{Tag, fixture_media};
use sluice_testkit::rtmp::{DEADLINE, Got, Publisher, handshaken, media_of, record, url};
use sluice_testkit::wait::eventually;

/// A viewer that asked before the publisher came gets the stream from its first frame.
async fn early_viewer(node: &Node, key: &str) -> Client {
    Client::play(&url(&node.rtmp_url(key)), DEADLINE)
        .await
        .expect("play")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_chunk_streams_are_ingested_frame_exact() {
    let node = Node::start(test_config("")).await;
    let mut viewer = early_viewer(&node, "live/interleaved").await;
    let recording = tokio::spawn(async move { record(&mut viewer, usize::MAX, DEADLINE).await });

    let mut publisher = Client::publish(&url(&node.rtmp_url("live/interleaved")), DEADLINE)
        .await
        .expect("publish");
    let (tags, metadata) = fixture_media(H264_AAC);
    publisher
        .send_metadata(metadata.clone())
        .await
        .expect("metadata");

    // Timestamps start just under the 24-bit limit so later ones need extended timestamps,
    // in type-0 headers and on the type-3 chunks that continue them.
    let base = 0xFF_FC00u32;
    let stream_id = publisher
        .session()
        .media_message(TAG_VIDEO, 0, Bytes::new())
        .expect("publishing")
        .stream_id;
    let messages: Vec<Message> = tags
        .iter()
        .map(|t| Message {
            // Audio on 4, video on 6; every third video tag on 7 so three streams interleave.
            csid: match (t.type_id, t.timestamp % 3) {
                (TAG_AUDIO, _) => 4,
                (_, 0) => 7,
                _ => 6,
            },
            type_id: t.type_id,
            timestamp: base + t.timestamp,
            stream_id,
            payload: t.payload.clone(),
        })
        .collect();
    let chunk_size = 100u32;
    let set_chunk_size = Message {
        csid: 2,
        type_id: 1,
        timestamp: 0,
        stream_id: 0,
        payload: Bytes::copy_from_slice(&chunk_size.to_be_bytes()),
    };
    let mut wire = whole_message(&set_chunk_size, 128);
    // A message begun and then abandoned with Abort must leave no trace.
    let abandoned = Message {
        csid: 9,
        type_id: TAG_VIDEO,
        timestamp: base,
        stream_id,
        payload: Bytes::from(vec![0x17; 1000]),
    };
    wire.extend_from_slice(&whole_message(&abandoned, chunk_size as usize)[..1 + 11 + 100]);
    let abort = Message {
        csid: 2,
        type_id: 2,
        timestamp: 0,
        stream_id: 0,
        payload: Bytes::copy_from_slice(&9u32.to_be_bytes()),
    };
    wire.extend_from_slice(&whole_message(&abort, chunk_size as usize));
    let (body, order) = Interleaver {
        chunk_size: chunk_size as usize,
        absolute_every: 7,
    }
    .write(messages);
    wire.extend_from_slice(&body);
    assert_eq!(order.len(), tags.len());
    assert_ne!(
        order.iter().map(|m| m.timestamp).collect::<Vec<_>>(),
        tags.iter().map(|t| base + t.timestamp).collect::<Vec<_>>(),
        "the interleaving must reorder completion, or this test proves nothing"
    );
    // Sent in uneven pieces, as TCP delivers.
    for piece in wire.chunks(777) {
        publisher.send_raw(piece).await.expect("send");
    }
    drop(publisher);

    let got = recording.await.expect("viewer");
    assert_eq!(got.first(), Some(&Got::Metadata(metadata)));
    let received = media_of(&got);
    let expected: Vec<Tag> = order
        .iter()
        .map(|m| Tag {
            type_id: m.type_id,
            timestamp: m.timestamp,
            payload: m.payload.clone(),
        })
        .collect();
    assert_eq!(received.len(), expected.len(), "every frame, no more");
    for (i, (r, e)) in received.iter().zip(&expected).enumerate() {
        assert_eq!(r, e, "frame {i} differs");
    }
    assert_eq!(
        node.metric("sluice_frames_in_total{kind=\"video\"}").await
            + node.metric("sluice_frames_in_total{kind=\"audio\"}").await,
        tags.len() as f64
    );
    node.stop().await;
}

/// rml_rtmp's client session (an implementation we did not write) plays a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rml_rtmp_client_plays() {
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let node = Node::start(test_config("")).await;
    let (tags, metadata) = fixture_media(H264_AAC);
    let publishing = Publisher::new(node.rtmp_url("live/rml"), tags.clone(), metadata)
        .gap(Duration::from_millis(5))
        .loops(3)
        .spawn();
    // Wait until it is live so the player joins mid-stream (GOP cache path).
    assert!(
        eventually(DEADLINE, || async {
            node.metric("sluice_frames_in_total{kind=\"video\"}").await > 60.0
        })
        .await
    );

    let mut socket = handshaken(node.addrs.rtmp).await;
    let mut config = ClientSessionConfig::new();
    config.tc_url = Some(format!("rtmp://{}/live", node.addrs.rtmp));
    let (mut session, initial) = ClientSession::new(config).expect("session");
    let mut pending: Vec<ClientSessionResult> = initial;
    pending.push(session.request_connection("live".into()).expect("connect"));

    let mut video = Vec::new();
    let mut audio = 0usize;
    let mut metadata_seen = false;
    let mut play_requested = false;
    let mut buf = vec![0u8; 64 * 1024];
    let outcome = tokio::time::timeout(DEADLINE, async {
        loop {
            for result in pending.drain(..) {
                match result {
                    ClientSessionResult::OutboundResponse(packet) => {
                        socket.write_all(&packet.bytes).await.expect("write");
                    }
                    ClientSessionResult::RaisedEvent(event) => match event {
                        ClientSessionEvent::ConnectionRequestAccepted => play_requested = true,
                        ClientSessionEvent::StreamMetadataReceived { metadata } => {
                            assert_eq!(metadata.video_width, Some(640));
                            assert_eq!(metadata.video_height, Some(360));
                            metadata_seen = true;
                        }
                        ClientSessionEvent::VideoDataReceived { data, .. } => video.push(data),
                        ClientSessionEvent::AudioDataReceived { .. } => audio += 1,
                        _ => {}
                    },
                    ClientSessionResult::UnhandleableMessageReceived(_) => {}
                }
            }
            if play_requested {
                play_requested = false;
                let r = session.request_playback("rml".into()).expect("play");
                pending.push(r);
                continue;
            }
            if video.len() >= 40 {
                return;
            }
            let n = socket.read(&mut buf).await.expect("read");
            assert!(n > 0, "server closed on rml_rtmp");
            pending = session
                .handle_input(&buf[..n])
                .expect("rml_rtmp parses our output");
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "rml_rtmp received {} video frames",
        video.len()
    );
    assert!(metadata_seen, "metadata first");
    let first = Tag {
        type_id: TAG_VIDEO,
        timestamp: 0,
        payload: video[0].clone(),
    };
    assert!(first.is_sequence_header(), "AVC sequence header first");
    assert_eq!(video[1][0] >> 4, 1, "then a keyframe");
    assert!(audio > 0);
    publishing.abort();
    node.stop().await;
}

/// A viewer who joins a running stream gets metadata, then both sequence headers, then a
/// keyframe, before anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_stream_viewer_starts_with_metadata_headers_and_a_keyframe() {
    let node = Node::start(test_config("")).await;
    let (tags, metadata) = fixture_media(H264_AAC);
    let publishing = Publisher::new(node.rtmp_url("live/mid"), tags.clone(), metadata.clone())
        .gap(Duration::from_millis(4))
        .loops(4)
        .spawn();
    for joined_after in [30.0, 75.0, 140.0] {
        assert!(
            eventually(DEADLINE, || async {
                node.metric("sluice_frames_in_total{kind=\"video\"}").await > joined_after
            })
            .await
        );
        let mut viewer = Client::play(&url(&node.rtmp_url("live/mid")), DEADLINE)
            .await
            .expect("play");
        let got = record(&mut viewer, 12, DEADLINE).await;
        let got: Vec<Got> = got.into_iter().filter(|g| *g != Got::Begin).collect();
        assert_eq!(got.first(), Some(&Got::Metadata(metadata.clone())));
        let media = media_of(&got);
        assert!(media.len() >= 3, "got {got:?}");
        let headers: Vec<u8> = media[..2].iter().map(|t| t.type_id).collect();
        assert!(
            media[..2].iter().all(Tag::is_sequence_header),
            "{:?}",
            &media[..2]
        );
        assert!(headers.contains(&TAG_AUDIO) && headers.contains(&TAG_VIDEO));
        let first_video = media[2..]
            .iter()
            .find(|t| t.type_id == TAG_VIDEO)
            .expect("video");
        assert!(
            first_video.is_video_keyframe(),
            "first picture is a keyframe"
        );
        assert!(media[2..].iter().all(|t| !t.is_sequence_header()));
    }
    publishing.abort();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_publisher_is_refused_and_the_first_keeps_going() {
    let node = Node::start(test_config("")).await;
    let first = Client::publish(&url(&node.rtmp_url("live/taken")), DEADLINE)
        .await
        .expect("first publisher");
    let second = Client::publish(&url(&node.rtmp_url("live/taken")), DEADLINE).await;
    match second {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, StatusCode::BadName),
        other => panic!("second publisher not refused: {other:?}"),
    }
    assert_eq!(
        node.metric("sluice_connections_refused_total{protocol=\"rtmp\",reason=\"stream_busy\"}")
            .await,
        1.0
    );
    // The first one still publishes.
    let mut viewer = Client::play(&url(&node.rtmp_url("live/taken")), DEADLINE)
        .await
        .expect("play");
    let mut first = first;
    let (tags, _) = fixture_media(H264_AAC);
    for t in tags.iter().take(10) {
        first
            .send_media(t.type_id, t.timestamp, t.payload.clone())
            .await
            .expect("first still publishing");
    }
    let got = media_of(&record(&mut viewer, 10, DEADLINE).await);
    assert_eq!(got.len(), 10);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_when_configured_replaces_the_publisher() {
    let node = Node::start(test_config("[streams]\npublish_conflict = \"takeover\"\n")).await;
    let _first = Client::publish(&url(&node.rtmp_url("live/t")), DEADLINE)
        .await
        .expect("first");
    let _second = Client::publish(&url(&node.rtmp_url("live/t")), DEADLINE)
        .await
        .expect("second takes over");
    assert!(
        eventually(DEADLINE, || async {
            node.metric("sluice_connections_closed_total{protocol=\"rtmp\",reason=\"displaced\"}")
                .await
                == 1.0
        })
        .await
    );
    node.stop().await;
}

/// The publisher drops and comes back (with different sequence headers) within the grace
/// period: the viewer's connection carries on and it gets the new headers, then a keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_carry_on_when_the_publisher_comes_back() {
    let node = Node::start(test_config("[streams]\nrepublish_grace_ms = 5000\n")).await;
    let mut viewer = early_viewer(&node, "live/back").await;
    let (main_tags, metadata) = fixture_media(H264_AAC);
    let (high_tags, _) = fixture_media(H264_AAC_BFRAMES);

    let first = Publisher::new(
        node.rtmp_url("live/back"),
        main_tags.clone(),
        metadata.clone(),
    )
    .gap(Duration::from_millis(1))
    .spawn();
    let before = media_of(&record(&mut viewer, main_tags.len(), DEADLINE).await);
    assert_eq!(before.len(), main_tags.len());
    drop(first.await.expect("first publisher"));

    let second = Publisher::new(node.rtmp_url("live/back"), high_tags.clone(), metadata)
        .gap(Duration::from_millis(1))
        .spawn();
    let after = record(&mut viewer, 20, DEADLINE).await;
    assert!(
        !after.contains(&Got::Eof),
        "viewer was not ended: {after:?}"
    );
    let after = media_of(&after);
    assert_eq!(after.len(), 20, "viewer keeps receiving");
    let new_video_header = high_tags
        .iter()
        .find(|t| t.type_id == TAG_VIDEO && t.is_sequence_header())
        .expect("header");
    let old_video_header = main_tags
        .iter()
        .find(|t| t.type_id == TAG_VIDEO && t.is_sequence_header())
        .expect("header");
    assert_ne!(new_video_header.payload, old_video_header.payload);
    let pos = after
        .iter()
        .position(|t| t.payload == new_video_header.payload)
        .expect("the new AVC sequence header reached the viewer");
    let first_picture = after[pos..]
        .iter()
        .find(|t| t.type_id == TAG_VIDEO && !t.is_sequence_header())
        .expect("picture");
    assert!(first_picture.is_video_keyframe());
    drop(second.await.expect("second publisher"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_of_a_stream_nobody_publishes_is_told_so_after_the_wait() {
    let node = Node::start(test_config("[streams]\nwait_for_publisher_ms = 300\n")).await;
    let mut viewer = Client::play(&url(&node.rtmp_url("live/nobody")), DEADLINE)
        .await
        .expect("play is accepted while waiting");
    let told = tokio::time::timeout(DEADLINE, async {
        loop {
            match viewer.next_event().await {
                Ok(Some(sluice_rtmp::client::ClientEvent::Failed { code, .. })) => {
                    break Some(code);
                }
                Ok(Some(sluice_rtmp::client::ClientEvent::Media { .. })) => panic!("media?"),
                Ok(Some(_)) => {}
                _ => break None,
            }
        }
    })
    .await
    .expect("an answer in time");
    assert_eq!(told, Some(StatusCode::StreamNotFound));
    assert!(
        eventually(DEADLINE, || async {
            node.metric(
                "sluice_connections_closed_total{protocol=\"rtmp\",reason=\"no_publisher\"}",
            )
            .await
                == 1.0
        })
        .await
    );
    node.stop().await;
}
