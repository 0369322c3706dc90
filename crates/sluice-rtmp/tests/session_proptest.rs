//! Random messages and bytes never panic a session.

use bytes::Bytes;
use proptest::prelude::*;
use sluice_rtmp::Message;
use sluice_rtmp::chunk::ChunkLimits;
use sluice_rtmp::client::{ClientConfig, ClientSession};
use sluice_rtmp::command::{
    Amf0Value, Command, decode_data, encode_value, metadata_from_set_data_frame,
};
use sluice_rtmp::connection::ServerConnection;
use sluice_rtmp::server::{ServerConfig, ServerSession};

/// A server session that has accepted connect and a publish on stream 1, so media, data and
/// stream commands reach their deepest paths.
fn busy_server() -> ServerSession {
    let mut s = ServerSession::new(ServerConfig::default());
    let connect = Command::new(
        "connect",
        1.0,
        Amf0Value::Object([("app".to_owned(), Amf0Value::Utf8String("live".into()))].into()),
        vec![],
    );
    let publish = Command::new(
        "publish",
        0.0,
        Amf0Value::Null,
        vec![Amf0Value::Utf8String("k".into())],
    );
    for (sid, c) in [(0, connect), (1, publish)] {
        s.handle_message(Message {
            csid: 3,
            type_id: 20,
            timestamp: 0,
            stream_id: sid,
            payload: c.encode(),
        })
        .unwrap();
        s.accept_connect();
    }
    s.accept_publish(1);
    s
}

/// Payloads biased towards AMF0-looking bytes (string/object/array markers and command names).
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let names = prop_oneof![
        Just("connect"),
        Just("createStream"),
        Just("publish"),
        Just("play"),
        Just("play2"),
        Just("deleteStream"),
        Just("FCUnpublish"),
        Just("@setDataFrame"),
        Just("onMetaData"),
        Just("pause"),
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        (names, proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(n, tail)| {
            let mut v = encode_value(&Amf0Value::Utf8String(n.into())).to_vec();
            v.extend(tail);
            v
        }),
        proptest::collection::vec(
            prop_oneof![
                Just(0u8),
                Just(2),
                Just(3),
                Just(8),
                Just(9),
                Just(10),
                any::<u8>()
            ],
            0..300
        ),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        prop_oneof![0u8..=25, any::<u8>()],
        0u32..4,
        any::<u32>(),
        payload(),
    )
        .prop_map(|(type_id, stream_id, timestamp, payload)| Message {
            csid: 3,
            type_id,
            timestamp,
            stream_id,
            payload: Bytes::from(payload),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_messages_never_panic(msgs in proptest::collection::vec(message(), 1..20)) {
        let mut fresh = ServerSession::new(ServerConfig::default());
        let mut busy = busy_server();
        let mut client = ClientSession::new(ClientConfig::default());
        client.connect();
        client.play("x");
        for m in msgs {
            let _ = fresh.handle_message(m.clone());
            let _ = busy.handle_message(m.clone());
            let _ = client.handle_message(m);
            busy.accept_play(2);
            busy.record_bytes_received(u64::MAX);
        }
        while fresh.poll_event().is_some() || fresh.poll_output().is_some() {}
        while busy.poll_event().is_some() || busy.poll_output().is_some() {}
    }

    #[test]
    fn random_bytes_never_panic_decoders(p in payload()) {
        let _ = Command::decode(&p);
        let _ = decode_data(&p);
        if let Ok(body) = metadata_from_set_data_frame(&p) {
            // Whatever we accept is again valid metadata.
            prop_assert_eq!(metadata_from_set_data_frame(&body).unwrap(), body);
        }
    }

    #[test]
    fn random_bytes_never_panic_a_connection(chunks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..400), 1..8)) {
        let mut conn = ServerConnection::new(ServerConfig::default(), ChunkLimits::default());
        for c in chunks {
            if conn.handle_input(&c).is_err() {
                break;
            }
        }
        let mut out = bytes::BytesMut::new();
        conn.drain_output(&mut out);
    }
}
