//! Our `ClientConnection` against our `ServerConnection`, in memory, and client edge cases.

use bytes::{Bytes, BytesMut};
use sluice_rtmp::Message;
use sluice_rtmp::chunk::{ChunkLimits, encode_full};
use sluice_rtmp::client::{ClientConfig, ClientEvent, ClientSession, StatusCode};
use sluice_rtmp::command::{Amf0Value, Command, encode_metadata, object};
use sluice_rtmp::connection::{ClientConnection, ServerConnection};
use sluice_rtmp::control::{Control, UserControl};
use sluice_rtmp::server::{PublishMode, ServerConfig, ServerEvent};

struct Link {
    client: ClientConnection,
    server: ServerConnection,
    client_events: Vec<ClientEvent>,
    server_events: Vec<ServerEvent>,
}

impl Link {
    fn new(enhanced: bool) -> Self {
        let config = ClientConfig {
            app: "live".into(),
            tc_url: "rtmp://origin/live".into(),
            chunk_size: 8192,
            flash_ver: "LNX 9,0,124,2".into(),
            enhanced,
        };
        Link {
            client: ClientConnection::new(config, ChunkLimits::default()),
            server: ServerConnection::new(ServerConfig::default(), ChunkLimits::default()),
            client_events: Vec::new(),
            server_events: Vec::new(),
        }
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn pump(&mut self) {
        loop {
            let mut c2s = BytesMut::new();
            self.client.drain_output(&mut c2s);
            if !c2s.is_empty() {
                self.server.handle_input(&c2s).unwrap();
            }
            while let Some(e) = self.server.session.poll_event() {
                self.server_events.push(e);
            }
            let mut s2c = BytesMut::new();
            self.server.drain_output(&mut s2c);
            if !s2c.is_empty() {
                self.client.handle_input(&s2c).unwrap();
            }
            while let Some(e) = self.client.session.poll_event() {
                self.client_events.push(e);
            }
            if c2s.is_empty() && s2c.is_empty() {
                return;
            }
        }
    }

    fn take_server_events(&mut self) -> Vec<ServerEvent> {
        std::mem::take(&mut self.server_events)
    }

    fn take_client_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.client_events)
    }
}

#[test]
fn our_client_plays_from_our_server() {
    let mut link = Link::new(true);
    link.client.session.connect();
    link.client.session.play("cam"); // queued until connected
    link.pump();
    let evs = link.take_server_events();
    let ServerEvent::ConnectRequested {
        app,
        tc_url,
        flash_ver,
        enhanced,
    } = &evs[0]
    else {
        panic!("{evs:?}");
    };
    assert_eq!(app, "live");
    assert_eq!(tc_url.as_deref(), Some("rtmp://origin/live"));
    assert_eq!(flash_ver.as_deref(), Some("LNX 9,0,124,2"));
    assert!(enhanced.as_ref().unwrap().contains(&"hvc1".to_owned()));
    assert_eq!(evs.len(), 1, "play waits for connect: {evs:?}");

    link.server.session.accept_connect();
    link.pump();
    assert_eq!(
        link.take_client_events(),
        vec![
            ClientEvent::Connected,
            ClientEvent::StreamCreated { stream_id: 1 }
        ]
    );
    assert_eq!(
        link.take_server_events(),
        vec![ServerEvent::PlayRequested {
            stream_id: 1,
            stream_key: "cam".into()
        }]
    );
    link.server.session.accept_play(1);
    link.pump();
    let evs = link.take_client_events();
    assert_eq!(evs[0], ClientEvent::StreamBegin);
    assert!(
        matches!(&evs[1], ClientEvent::Status { code, .. } if code.as_str() == "NetStream.Play.Reset")
    );
    assert_eq!(evs[2], ClientEvent::PlayStarted);
    assert_eq!(evs.len(), 3, "{evs:?}");

    // Shared media and metadata, as the front end writes them.
    let size = link.server.chunk_size();
    let body = encode_metadata(&[("width".into(), Amf0Value::Number(640.0))]);
    let video: Bytes = vec![7u8; 10_000].into();
    let mut wire = BytesMut::new();
    for (csid, type_id, ts, payload) in [
        (5, 18, 0, body.clone()),
        (6, 9, 0x0200_0000, video.clone()),
        (4, 8, 0x0200_0001, Bytes::from_static(b"\xaf\x01")),
    ] {
        wire.extend_from_slice(&encode_full(
            &Message {
                csid,
                type_id,
                timestamp: ts,
                stream_id: 1,
                payload,
            },
            size,
        ));
    }
    link.client.handle_input(&wire).unwrap();
    link.pump();
    assert_eq!(
        link.take_client_events(),
        vec![
            ClientEvent::Metadata {
                timestamp: 0,
                payload: body
            },
            ClientEvent::Media {
                type_id: 9,
                timestamp: 0x0200_0000,
                payload: video
            },
            ClientEvent::Media {
                type_id: 8,
                timestamp: 0x0200_0001,
                payload: Bytes::from_static(b"\xaf\x01")
            },
        ]
    );

    link.server.session.stream_eof(1);
    link.pump();
    let evs = link.take_client_events();
    assert!(
        matches!(&evs[0], ClientEvent::Status { code, .. } if *code == StatusCode::UnpublishNotify)
    );
    assert_eq!(evs[1], ClientEvent::StreamEof);

    link.client.session.close();
    link.pump();
    assert_eq!(
        link.take_server_events(),
        vec![ServerEvent::PlayFinished { stream_id: 1 }]
    );
}

#[test]
fn our_client_publishes_to_our_server() {
    let mut link = Link::new(false);
    link.client.session.connect();
    link.client.session.publish("key?token=x");
    link.pump();
    assert!(matches!(
        &link.take_server_events()[..],
        [ServerEvent::ConnectRequested { enhanced: None, .. }]
    ));
    link.server.session.accept_connect();
    link.pump();
    assert_eq!(
        link.take_server_events(),
        vec![ServerEvent::PublishRequested {
            stream_id: 1,
            stream_key: "key?token=x".into(),
            mode: PublishMode::Live
        }]
    );
    assert!(
        link.client
            .session
            .media_message(9, 0, Bytes::new())
            .is_none(),
        "no media before Publish.Start"
    );
    link.server.session.accept_publish(1);
    link.pump();
    assert_eq!(
        link.take_client_events(),
        vec![
            ClientEvent::Connected,
            ClientEvent::StreamCreated { stream_id: 1 },
            ClientEvent::StreamBegin,
            ClientEvent::PublishStarted
        ]
    );

    let body = encode_metadata(&[("framerate".into(), Amf0Value::Number(30.0))]);
    let mut out = BytesMut::new();
    let meta = link.client.session.metadata_message(body.clone()).unwrap();
    link.client.send(&meta, &mut out);
    let frames = [
        (9u8, 0u32, Bytes::from(vec![1u8; 20_000])),
        (8, 5, Bytes::from_static(b"\xaf\x01aac")),
        (9, 40, Bytes::from_static(b"\x27\x01p")),
    ];
    for (t, ts, p) in &frames {
        let m = link
            .client
            .session
            .media_message(*t, *ts, p.clone())
            .unwrap();
        assert_eq!((m.csid, m.stream_id), (if *t == 8 { 4 } else { 6 }, 1));
        link.client.send(&m, &mut out);
    }
    link.server.handle_input(&out).unwrap();
    link.pump();
    let evs = link.take_server_events();
    assert_eq!(
        evs[0],
        ServerEvent::Metadata {
            stream_id: 1,
            timestamp: 0,
            payload: body
        }
    );
    let media: Vec<_> = evs[1..]
        .iter()
        .map(|e| match e {
            ServerEvent::Media {
                type_id,
                timestamp,
                payload,
                ..
            } => (*type_id, *timestamp, payload.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(media, frames.to_vec());

    link.client.session.close();
    link.pump();
    assert_eq!(
        link.take_server_events(),
        vec![ServerEvent::PublishFinished { stream_id: 1 }]
    );
}

#[test]
fn our_client_reports_rejections() {
    let mut link = Link::new(false);
    link.client.session.connect();
    link.pump();
    link.server.session.reject_connect("no such app");
    link.pump();
    assert_eq!(
        link.take_client_events(),
        vec![ClientEvent::ConnectRejected {
            description: "no such app".into()
        }]
    );

    let mut link = Link::new(false);
    link.client.session.connect();
    link.client.session.play("missing");
    link.pump();
    link.server.session.accept_connect();
    link.pump();
    link.server
        .session
        .reject_play(1, "NetStream.Play.StreamNotFound", "not here");
    link.pump();
    assert_eq!(
        link.take_client_events().last(),
        Some(&ClientEvent::Failed {
            code: StatusCode::StreamNotFound,
            description: "not here".into()
        })
    );
}

#[test]
fn status_codes_are_typed() {
    for (wire, code) in [
        ("NetStream.Play.StreamNotFound", StatusCode::StreamNotFound),
        ("NetStream.Publish.BadName", StatusCode::BadName),
        (
            "NetConnection.Connect.Rejected",
            StatusCode::ConnectRejected,
        ),
        (
            "NetStream.Play.Failed",
            StatusCode::Other("NetStream.Play.Failed".into()),
        ),
    ] {
        assert_eq!(StatusCode::from(wire), code);
        assert_eq!(code.to_string(), wire);
    }
    // Codes are matched whole: a lookalike is another code.
    assert_eq!(
        StatusCode::from("Custom.StreamNotFound"),
        StatusCode::Other("Custom.StreamNotFound".into())
    );
}

fn to_client(session: &mut ClientSession, msg: Message) {
    session.handle_message(msg).unwrap();
}

fn command_msg(cmd: Command, stream_id: u32) -> Message {
    Message {
        csid: 3,
        type_id: 20,
        timestamp: 0,
        stream_id,
        payload: cmd.encode(),
    }
}

#[test]
fn client_message_level_details() {
    let mut session = ClientSession::new(ClientConfig::default());
    session.connect();
    let out: Vec<_> = std::iter::from_fn(|| session.poll_output()).collect();
    assert_eq!(
        Control::decode(&out[0]).unwrap(),
        Some(Control::SetChunkSize(4096))
    );
    let connect = Command::decode(&out[1].payload).unwrap();
    assert_eq!(
        (connect.name.as_str(), connect.transaction_id),
        ("connect", 1.0)
    );
    let Amf0Value::Object(props) = &connect.command_object else {
        panic!();
    };
    assert!(matches!(props.get("fourCcList"), Some(Amf0Value::StrictArray(l)) if !l.is_empty()));

    // createStream answered with an _error: Failed.
    to_client(
        &mut session,
        command_msg(Command::result(1.0, Amf0Value::Null, vec![]), 0),
    );
    session.play("x");
    let out: Vec<_> = std::iter::from_fn(|| session.poll_output()).collect();
    let create = out
        .iter()
        .filter(|m| m.type_id == 20)
        .map(|m| Command::decode(&m.payload).unwrap())
        .find(|c| c.name == "createStream")
        .unwrap();
    to_client(
        &mut session,
        command_msg(
            Command::error(
                create.transaction_id,
                Amf0Value::Null,
                vec![object([
                    (
                        "code",
                        Amf0Value::Utf8String("NetConnection.Call.Failed".into()),
                    ),
                    ("level", Amf0Value::Utf8String("error".into())),
                ])],
            ),
            0,
        ),
    );
    let evs: Vec<_> = std::iter::from_fn(|| session.poll_event()).collect();
    assert_eq!(
        evs,
        vec![
            ClientEvent::Connected,
            ClientEvent::Failed {
                code: StatusCode::Other("NetConnection.Call.Failed".into()),
                description: String::new()
            }
        ]
    );

    // Pings are answered; acks follow the server's window.
    to_client(
        &mut session,
        Control::User(UserControl::PingRequest(9)).to_message(),
    );
    to_client(&mut session, Control::WindowAckSize(100).to_message());
    session.record_bytes_received(99);
    session.record_bytes_received(150);
    let out: Vec<_> = std::iter::from_fn(|| session.poll_output())
        .map(|m| Control::decode(&m).unwrap())
        .collect();
    assert_eq!(
        out,
        vec![
            Some(Control::User(UserControl::PingResponse(9))),
            Some(Control::Acknowledgement(150))
        ]
    );
}

#[test]
fn client_tolerates_odd_server_messages() {
    let mut session = ClientSession::new(ClientConfig::default());
    session.connect();
    to_client(
        &mut session,
        command_msg(Command::result(1.0, Amf0Value::Null, vec![]), 0),
    );
    // Media for a stream we do not play, data before play, unknown commands, onStatus
    // without an info object.
    for m in [
        Message {
            csid: 6,
            type_id: 9,
            timestamp: 0,
            stream_id: 1,
            payload: Bytes::from_static(b"x"),
        },
        Message {
            csid: 5,
            type_id: 18,
            timestamp: 0,
            stream_id: 1,
            payload: Bytes::from_static(b"\x05"),
        },
        command_msg(Command::new("onBWDone", 0.0, Amf0Value::Null, vec![]), 0),
        command_msg(Command::new("onStatus", 0.0, Amf0Value::Null, vec![]), 1),
    ] {
        to_client(&mut session, m);
    }
    let evs: Vec<_> = std::iter::from_fn(|| session.poll_event()).collect();
    assert_eq!(evs[0], ClientEvent::Connected);
    assert!(matches!(&evs[1], ClientEvent::Status { code, .. } if code.as_str().is_empty()));
    assert_eq!(evs.len(), 2);
    // createStream answer without a stream id is an error.
    session.play("x");
    let create = std::iter::from_fn(|| session.poll_output())
        .filter(|m| m.type_id == 20)
        .map(|m| Command::decode(&m.payload).unwrap())
        .find(|c| c.name == "createStream")
        .unwrap();
    assert!(
        session
            .handle_message(command_msg(
                Command::result(create.transaction_id, Amf0Value::Null, vec![]),
                0
            ))
            .is_err()
    );
}
