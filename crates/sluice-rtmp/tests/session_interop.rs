//! In-memory interop with rml_rtmp's client session as an independent peer (no sockets).

use bytes::{Bytes, BytesMut};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use sluice_rtmp::Message;
use sluice_rtmp::chunk::{ChunkLimits, encode_full};
use sluice_rtmp::command::{Amf0Value, decode_data, encode_metadata};
use sluice_rtmp::connection::ServerConnection;
use sluice_rtmp::server::{PublishMode, ServerConfig, ServerEvent};

/// Our server and their client, joined by in-memory byte pipes.
struct Pair {
    server: ServerConnection,
    client: ClientSession,
    client_events: Vec<ClientSessionEvent>,
    server_events: Vec<ServerEvent>,
}

impl Pair {
    /// Handshakes with rml_rtmp on both sides, then hands any bytes after the handshake to
    /// the sessions.
    fn new() -> Self {
        let mut c = Handshake::new(PeerType::Client);
        let mut s = Handshake::new(PeerType::Server);
        let mut to_server = c.generate_outbound_p0_and_p1().unwrap();
        let (mut client_done, mut server_done) = (false, false);
        let mut leftover_for_server = Vec::new();
        for _ in 0..4 {
            let to_client = if server_done {
                leftover_for_server.extend_from_slice(&to_server);
                Vec::new()
            } else {
                match s.process_bytes(&to_server).unwrap() {
                    HandshakeProcessResult::InProgress { response_bytes } => response_bytes,
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        server_done = true;
                        leftover_for_server = remaining_bytes;
                        response_bytes
                    }
                }
            };
            to_server = Vec::new();
            if !client_done && !to_client.is_empty() {
                match c.process_bytes(&to_client).unwrap() {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        to_server = response_bytes
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        client_done = true;
                        assert!(remaining_bytes.is_empty());
                        to_server = response_bytes;
                    }
                }
            }
            if client_done && server_done && to_server.is_empty() {
                break;
            }
        }
        assert!(client_done && server_done, "handshake did not complete");
        let (client, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
        let mut pair = Pair {
            server: ServerConnection::new(ServerConfig::default(), ChunkLimits::default()),
            client,
            client_events: Vec::new(),
            server_events: Vec::new(),
        };
        pair.deliver_to_server(&leftover_for_server);
        pair
    }

    fn deliver_to_server(&mut self, bytes: &[u8]) {
        self.server.handle_input(bytes).unwrap();
        while let Some(e) = self.server.session.poll_event() {
            self.server_events.push(e);
        }
    }

    /// Delivers `bytes` to their client, and everything it answers back to us.
    fn deliver_to_client(&mut self, bytes: &[u8]) {
        let results = self.client.handle_input(bytes).unwrap();
        self.apply(results);
    }

    fn apply(&mut self, results: Vec<ClientSessionResult>) {
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => self.deliver_to_server(&p.bytes),
                ClientSessionResult::RaisedEvent(e) => self.client_events.push(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
    }

    fn client_sent(&mut self, result: ClientSessionResult) {
        self.apply(vec![result]);
    }

    /// Flushes our session output to their client.
    fn flush(&mut self) {
        let mut out = BytesMut::new();
        self.server.drain_output(&mut out);
        if !out.is_empty() {
            self.deliver_to_client(&out);
        }
    }

    fn connect(&mut self) {
        let r = self.client.request_connection("live".into()).unwrap();
        self.client_sent(r);
        assert!(matches!(
            self.server_events.remove(0),
            ServerEvent::ConnectRequested { ref app, .. } if app == "live"
        ));
        self.server.session.accept_connect();
        self.flush();
        assert_eq!(
            self.client_events.remove(0),
            ClientSessionEvent::ConnectionRequestAccepted
        );
    }
}

#[test]
fn rml_client_plays_media_we_serialise_once() {
    let mut pair = Pair::new();
    pair.connect();
    let r = pair.client.request_playback("cam?token=1".into()).unwrap();
    pair.client_sent(r);
    pair.flush(); // createStream result -> their SetBufferLength + play
    assert_eq!(
        pair.server_events,
        vec![ServerEvent::PlayRequested {
            stream_id: 1,
            stream_key: "cam?token=1".into()
        }]
    );
    pair.server_events.clear();
    pair.server.session.accept_play(1);
    pair.flush();
    assert!(
        pair.client_events
            .contains(&ClientSessionEvent::PlaybackRequestAccepted),
        "{:?}",
        pair.client_events
    );
    pair.client_events.clear();

    // Shared media: full type-0 headers at our announced chunk size, message stream 1.
    let chunk_size = pair.server.chunk_size();
    assert_eq!(chunk_size, 4096);
    let big: Bytes = (0..20_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let media = [
        (6, 9, 0, Bytes::from_static(b"\x17\x00\x00\x00\x00seqhdr")),
        (4, 8, 0, Bytes::from_static(b"\xaf\x00\x12\x10")),
        (6, 9, 40, big.clone()),
        (4, 8, 23, Bytes::from_static(b"\xaf\x01aac")),
        (6, 9, 0x0100_0000, big.clone()), // extended timestamp
    ];
    let body = encode_metadata(&[
        ("width".into(), Amf0Value::Number(1920.0)),
        ("height".into(), Amf0Value::Number(1080.0)),
    ]);
    let meta = encode_full(
        &Message {
            csid: 5,
            type_id: 18,
            timestamp: 0,
            stream_id: 1,
            payload: body,
        },
        chunk_size,
    );
    pair.deliver_to_client(&meta);
    for (csid, type_id, timestamp, payload) in &media {
        let wire = encode_full(
            &Message {
                csid: *csid,
                type_id: *type_id,
                timestamp: *timestamp,
                stream_id: 1,
                payload: payload.clone(),
            },
            chunk_size,
        );
        pair.deliver_to_client(&wire);
    }
    let ClientSessionEvent::StreamMetadataReceived { metadata } = &pair.client_events[0] else {
        panic!("no metadata: {:?}", pair.client_events[0]);
    };
    assert_eq!(
        (metadata.video_width, metadata.video_height),
        (Some(1920), Some(1080))
    );
    let got: Vec<_> = pair.client_events[1..]
        .iter()
        .map(|e| match e {
            ClientSessionEvent::VideoDataReceived { timestamp, data } => {
                (9, timestamp.value, data.clone())
            }
            ClientSessionEvent::AudioDataReceived { timestamp, data } => {
                (8, timestamp.value, data.clone())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let want: Vec<_> = media
        .iter()
        .map(|(_, t, ts, p)| (*t, *ts, p.clone()))
        .collect();
    assert_eq!(got, want);

    // A command after media still parses on their side (chunk streams kept apart).
    pair.server.session.stream_eof(1);
    pair.flush();
    assert!(pair.client_events.iter().any(|e| matches!(
        e,
        ClientSessionEvent::UnhandleableOnStatusCode { code } if code == "NetStream.Play.UnpublishNotify"
    )));
}

#[test]
fn rml_client_publishes_to_us() {
    let mut pair = Pair::new();
    pair.connect();
    let r = pair
        .client
        .request_publishing("key?token=x".into(), PublishRequestType::Live)
        .unwrap();
    pair.client_sent(r);
    pair.flush();
    assert_eq!(
        pair.server_events,
        vec![ServerEvent::PublishRequested {
            stream_id: 1,
            stream_key: "key?token=x".into(),
            mode: PublishMode::Live
        }]
    );
    pair.server_events.clear();
    pair.server.session.accept_publish(1);
    pair.flush();
    assert!(
        pair.client_events
            .contains(&ClientSessionEvent::PublishRequestAccepted)
    );

    let mut metadata = StreamMetadata::new();
    metadata.video_width = Some(1280);
    metadata.encoder = Some("obs".into());
    let r = pair.client.publish_metadata(&metadata).unwrap();
    pair.client_sent(r);
    let big: Bytes = vec![0x5a; 70_000].into();
    let frames = [
        (9, 0, Bytes::from_static(b"\x17\x00\x00\x00\x00avcc")),
        (8, 0, Bytes::from_static(b"\xaf\x00\x12\x10")),
        (9, 33, big.clone()),
        (8, 21, Bytes::from_static(b"\xaf\x01frame")),
        (9, 0x0123_4567, big),
    ];
    for (type_id, ts, data) in &frames {
        let r = if *type_id == 9 {
            pair.client
                .publish_video_data(data.clone(), RtmpTimestamp::new(*ts), false)
        } else {
            pair.client
                .publish_audio_data(data.clone(), RtmpTimestamp::new(*ts), false)
        };
        pair.client_sent(r.unwrap());
    }
    let ServerEvent::Metadata {
        stream_id: 1,
        payload,
        ..
    } = &pair.server_events[0]
    else {
        panic!("no metadata: {:?}", pair.server_events);
    };
    let values = decode_data(payload).unwrap();
    assert_eq!(values[0], Amf0Value::Utf8String("onMetaData".into()));
    let Amf0Value::Object(props) = &values[1] else {
        panic!("metadata is not an object: {values:?}");
    };
    assert_eq!(props.get("width"), Some(&Amf0Value::Number(1280.0)));
    assert_eq!(
        props.get("encoder"),
        Some(&Amf0Value::Utf8String("obs".into()))
    );
    let media: Vec<_> = pair.server_events[1..]
        .iter()
        .map(|e| match e {
            ServerEvent::Media {
                stream_id: 1,
                type_id,
                timestamp,
                payload,
            } => (*type_id, *timestamp, payload.clone()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(media, frames.to_vec());

    pair.server_events.clear();
    let r = pair.client.stop_publishing().unwrap();
    pair.apply(r);
    assert_eq!(
        pair.server_events,
        vec![ServerEvent::PublishFinished { stream_id: 1 }]
    );
}
