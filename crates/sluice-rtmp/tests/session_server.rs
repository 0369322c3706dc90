//! Message-level tests of `ServerSession`: every command path, sloppy clients, bad input.

use bytes::{BufMut, Bytes, BytesMut};
use sluice_rtmp::command::{Amf0Value, Command, decode_data, encode_value, object};
use sluice_rtmp::control::{Control, UserControl};
use sluice_rtmp::server::{
    MAX_STREAMS, PublishMode, ServerConfig, ServerEvent, ServerSession, SessionError,
};
use sluice_rtmp::{Message, MessageType};

fn s(v: &str) -> Amf0Value {
    Amf0Value::Utf8String(v.to_owned())
}

fn n(v: f64) -> Amf0Value {
    Amf0Value::Number(v)
}

fn msg(type_id: u8, stream_id: u32, timestamp: u32, payload: impl Into<Bytes>) -> Message {
    Message {
        csid: 3,
        type_id,
        timestamp,
        stream_id,
        payload: payload.into(),
    }
}

fn cmd(stream_id: u32, name: &str, tid: f64, obj: Amf0Value, args: Vec<Amf0Value>) -> Message {
    msg(
        20,
        stream_id,
        0,
        Command::new(name, tid, obj, args).encode(),
    )
}

fn data(stream_id: u32, ts: u32, values: &[Amf0Value]) -> Message {
    let mut p = BytesMut::new();
    for v in values {
        p.put_slice(&encode_value(v));
    }
    msg(18, stream_id, ts, p.freeze())
}

fn events(session: &mut ServerSession) -> Vec<ServerEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn output(session: &mut ServerSession) -> Vec<Message> {
    std::iter::from_fn(|| session.poll_output()).collect()
}

/// Decoded commands among `out` (type 20), with the stream id they went on.
fn commands(out: &[Message]) -> Vec<(u32, Command)> {
    out.iter()
        .filter(|m| m.type_id == 20)
        .map(|m| (m.stream_id, Command::decode(&m.payload).unwrap()))
        .collect()
}

fn info(cmd: &Command, key: &str) -> Option<Amf0Value> {
    cmd.args.iter().find_map(|a| match a {
        Amf0Value::Object(o) => o.get(key).cloned(),
        _ => None,
    })
}

fn code(cmd: &Command) -> String {
    match info(cmd, "code") {
        Some(Amf0Value::Utf8String(c)) => c,
        other => panic!("no code in {cmd:?}: {other:?}"),
    }
}

fn connect_object() -> Amf0Value {
    object([
        ("app", s("live")),
        ("tcUrl", s("rtmp://edge/live")),
        ("flashVer", s("FMLE/3.0 (compatible; FMSc/1.0)")),
        ("type", s("nonprivate")),
    ])
}

/// A session past connect (accepted), output and events drained.
fn connected() -> ServerSession {
    let mut session = ServerSession::new(ServerConfig::default());
    session
        .handle_message(cmd(0, "connect", 1.0, connect_object(), vec![]))
        .unwrap();
    session.accept_connect();
    output(&mut session);
    events(&mut session);
    session
}

/// A session publishing `key` on stream 1 (accepted).
fn publishing(key: &str) -> ServerSession {
    let mut session = connected();
    session
        .handle_message(cmd(0, "createStream", 4.0, Amf0Value::Null, vec![]))
        .unwrap();
    session
        .handle_message(cmd(
            1,
            "publish",
            0.0,
            Amf0Value::Null,
            vec![s(key), s("live")],
        ))
        .unwrap();
    session.accept_publish(1);
    output(&mut session);
    events(&mut session);
    session
}

#[test]
fn connect_is_answered_with_controls_then_result() {
    let mut session = ServerSession::new(ServerConfig::default());
    session
        .handle_message(cmd(0, "connect", 1.0, connect_object(), vec![]))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::ConnectRequested {
            app: "live".into(),
            tc_url: Some("rtmp://edge/live".into()),
            flash_ver: Some("FMLE/3.0 (compatible; FMSc/1.0)".into()),
            enhanced: None,
        }]
    );
    assert!(
        output(&mut session).is_empty(),
        "nothing before the decision"
    );
    session.accept_connect();
    let out = output(&mut session);
    let controls: Vec<_> = out[..3]
        .iter()
        .map(|m| Control::decode(m).unwrap().unwrap())
        .collect();
    assert_eq!(
        controls,
        vec![
            Control::WindowAckSize(2_500_000),
            Control::SetPeerBandwidth {
                size: 2_500_000,
                limit: 2
            },
            Control::SetChunkSize(4096),
        ]
    );
    assert_eq!(session.chunk_size(), 4096);
    let cmds = commands(&out);
    assert_eq!(cmds.len(), 1);
    let (sid, result) = &cmds[0];
    assert_eq!(
        (*sid, result.name.as_str(), result.transaction_id),
        (0, "_result", 1.0)
    );
    assert_eq!(out[3].csid, 3);
    assert_eq!(code(result), "NetConnection.Connect.Success");
    assert_eq!(info(result, "objectEncoding"), Some(n(0.0)));
    let Amf0Value::Object(props) = &result.command_object else {
        panic!("no properties: {result:?}");
    };
    assert!(props.contains_key("fmsVer"));
    assert!(
        !props.contains_key("fourCcList"),
        "not offered, not answered"
    );
}

#[test]
fn enhanced_connect_is_negotiated() {
    let mut session = ServerSession::new(ServerConfig::default());
    let mut obj = connect_object();
    if let Amf0Value::Object(o) = &mut obj {
        o.insert(
            "fourCcList".into(),
            Amf0Value::StrictArray(vec![s("hvc1"), s("av01"), n(3.0)]),
        );
    }
    session
        .handle_message(cmd(0, "connect", 1.0, obj, vec![]))
        .unwrap();
    let ServerEvent::ConnectRequested { enhanced, .. } = &events(&mut session)[0] else {
        panic!("no connect event");
    };
    assert_eq!(
        enhanced.as_deref(),
        Some(&["hvc1".to_owned(), "av01".to_owned()][..])
    );
    session.accept_connect();
    let (_, result) = commands(&output(&mut session)).remove(0);
    let Amf0Value::Object(props) = &result.command_object else {
        panic!("no properties");
    };
    let Some(Amf0Value::StrictArray(list)) = props.get("fourCcList") else {
        panic!("no fourCcList in {props:?}");
    };
    for codec in ["avc1", "hvc1", "av01", "vp09", "mp4a", "Opus"] {
        assert!(list.contains(&s(codec)), "{codec} missing");
    }
    assert_eq!(props.get("capsEx"), Some(&n(0.0)));
    assert_eq!(
        props.get("videoFourCcInfoMap"),
        Some(&object([("*", n(4.0))]))
    );
    assert_eq!(
        props.get("audioFourCcInfoMap"),
        Some(&object([("*", n(4.0))]))
    );
}

#[test]
fn enhanced_v2_info_map_alone_counts_as_an_offer() {
    let mut session = ServerSession::new(ServerConfig::default());
    let mut obj = connect_object();
    if let Amf0Value::Object(o) = &mut obj {
        o.insert("videoFourCcInfoMap".into(), object([("hvc1", n(1.0))]));
    }
    session
        .handle_message(cmd(0, "connect", 1.0, obj, vec![]))
        .unwrap();
    let ServerEvent::ConnectRequested { enhanced, .. } = &events(&mut session)[0] else {
        panic!("no connect event");
    };
    assert_eq!(enhanced.as_deref(), Some(&["hvc1".to_owned()][..]));
}

#[test]
fn connect_without_object_is_rejected_with_error() {
    let mut session = ServerSession::new(ServerConfig::default());
    let err = session
        .handle_message(cmd(0, "connect", 1.0, Amf0Value::Null, vec![]))
        .unwrap_err();
    assert!(matches!(err, SessionError::ConnectWithoutObject), "{err}");
    let cmds = commands(&output(&mut session));
    assert_eq!(cmds[0].1.name, "_error");
    assert_eq!(code(&cmds[0].1), "NetConnection.Connect.Rejected");
    assert!(events(&mut session).is_empty());

    // A bare "connect" string (no transaction id, no object) is the same.
    let mut session = ServerSession::new(ServerConfig::default());
    let err = session
        .handle_message(msg(20, 0, 0, encode_value(&s("connect"))))
        .unwrap_err();
    assert!(matches!(err, SessionError::ConnectWithoutObject));
}

#[test]
fn connect_without_app_reports_empty_app() {
    let mut session = ServerSession::new(ServerConfig::default());
    session
        .handle_message(cmd(0, "connect", 1.0, object([]), vec![]))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::ConnectRequested {
            app: String::new(),
            tc_url: None,
            flash_ver: None,
            enhanced: None
        }]
    );
}

#[test]
fn commands_before_connect_are_errors() {
    for name in [
        "createStream",
        "publish",
        "play",
        "releaseStream",
        "whatever",
    ] {
        let mut session = ServerSession::new(ServerConfig::default());
        let err = session
            .handle_message(cmd(0, name, 2.0, Amf0Value::Null, vec![]))
            .unwrap_err();
        assert!(
            matches!(&err, SessionError::CommandBeforeConnect(c) if c == name),
            "{err}"
        );
        assert!(err.to_string().contains("before connect"));
    }
}

#[test]
fn rejected_connect_then_commands_are_errors() {
    let mut session = ServerSession::new(ServerConfig::default());
    session
        .handle_message(cmd(0, "connect", 7.0, connect_object(), vec![]))
        .unwrap();
    session.reject_connect("unknown app");
    let (_, err) = commands(&output(&mut session)).remove(0);
    assert_eq!((err.name.as_str(), err.transaction_id), ("_error", 7.0));
    assert_eq!(code(&err), "NetConnection.Connect.Rejected");
    assert_eq!(info(&err, "description"), Some(s("unknown app")));
    assert!(matches!(
        session.handle_message(cmd(0, "createStream", 2.0, Amf0Value::Null, vec![])),
        Err(SessionError::AfterRejectedConnect(_))
    ));
}

/// A draining node sends its clients elsewhere the way nginx-rtmp, SRS and Wowza do:
/// `ex.redirect` (and `redirect`) in the rejection's info object.
#[test]
fn a_redirected_connect_carries_the_url_in_ex() {
    let mut session = ServerSession::new(ServerConfig::default());
    session
        .handle_message(cmd(0, "connect", 3.0, connect_object(), vec![]))
        .unwrap();
    session.redirect_connect("node draining", "rtmp://other.example/live");
    let (_, err) = commands(&output(&mut session)).remove(0);
    assert_eq!((err.name.as_str(), err.transaction_id), ("_error", 3.0));
    assert_eq!(code(&err), "NetConnection.Connect.Rejected");
    assert_eq!(info(&err, "description"), Some(s("node draining")));
    assert_eq!(info(&err, "redirect"), Some(s("rtmp://other.example/live")));
    let Some(Amf0Value::Object(ex)) = info(&err, "ex") else {
        panic!("no ex object in {err:?}");
    };
    assert_eq!(ex.get("code"), Some(&Amf0Value::Number(302.0)));
    assert_eq!(ex.get("redirect"), Some(&s("rtmp://other.example/live")));
    assert!(matches!(
        session.handle_message(cmd(0, "createStream", 2.0, Amf0Value::Null, vec![])),
        Err(SessionError::AfterRejectedConnect(_))
    ));
}

#[test]
fn duplicate_connect_is_an_error() {
    let mut session = connected();
    assert!(matches!(
        session.handle_message(cmd(0, "connect", 1.0, connect_object(), vec![])),
        Err(SessionError::DuplicateConnect)
    ));
}

#[test]
fn obs_publish_flow() {
    let mut session = connected();
    for (name, tid) in [("releaseStream", 2.0), ("FCPublish", 3.0)] {
        session
            .handle_message(cmd(0, name, tid, Amf0Value::Null, vec![s("key?token=x")]))
            .unwrap();
    }
    session
        .handle_message(cmd(0, "createStream", 4.0, Amf0Value::Null, vec![]))
        .unwrap();
    let cmds = commands(&output(&mut session));
    let answers: Vec<_> = cmds
        .iter()
        .map(|(_, c)| (c.name.as_str(), c.transaction_id))
        .collect();
    assert_eq!(
        answers,
        vec![("_result", 2.0), ("_result", 3.0), ("_result", 4.0)]
    );
    assert_eq!(cmds[2].1.args, vec![n(1.0)], "first stream id is 1");

    session
        .handle_message(cmd(
            1,
            "publish",
            5.0,
            Amf0Value::Null,
            vec![s("key?token=x"), s("live")],
        ))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::PublishRequested {
            stream_id: 1,
            stream_key: "key?token=x".into(),
            mode: PublishMode::Live
        }]
    );
    // Media before the publish is accepted is dropped.
    session
        .handle_message(msg(9, 1, 0, &b"\x17\x00early"[..]))
        .unwrap();
    assert!(events(&mut session).is_empty());
    assert_eq!(session.stats().media_dropped, 1);

    session.accept_publish(1);
    let out = output(&mut session);
    assert_eq!(
        Control::decode(&out[0]).unwrap(),
        Some(Control::User(UserControl::StreamBegin(1)))
    );
    let cmds = commands(&out);
    let names: Vec<_> = cmds
        .iter()
        .map(|(sid, c)| (*sid, c.name.as_str()))
        .collect();
    assert_eq!(names, vec![(1, "onFCPublish"), (1, "onStatus")]);
    assert_eq!(code(&cmds[0].1), "NetStream.Publish.Start");
    assert_eq!(code(&cmds[1].1), "NetStream.Publish.Start");
    assert!(out.iter().skip(1).all(|m| m.csid == 3));

    // Metadata, video, audio.
    let meta = object([("width", n(1280.0)), ("height", n(720.0))]);
    session
        .handle_message(data(
            1,
            0,
            &[s("@setDataFrame"), s("onMetaData"), meta.clone()],
        ))
        .unwrap();
    let video = Bytes::from_static(b"\x17\x00\x00\x00\x00avcC");
    let audio = Bytes::from_static(b"\xaf\x00\x12\x10");
    session
        .handle_message(msg(9, 1, 40, video.clone()))
        .unwrap();
    session
        .handle_message(msg(8, 1, 42, audio.clone()))
        .unwrap();
    // Media on a stream that is not publishing is dropped.
    session
        .handle_message(msg(9, 2, 40, video.clone()))
        .unwrap();
    let evs = events(&mut session);
    let ServerEvent::Metadata {
        stream_id: 1,
        timestamp: 0,
        payload,
    } = &evs[0]
    else {
        panic!("expected metadata, got {evs:?}");
    };
    assert_eq!(decode_data(payload).unwrap(), vec![s("onMetaData"), meta]);
    assert_eq!(
        evs[1..],
        [
            ServerEvent::Media {
                stream_id: 1,
                type_id: 9,
                timestamp: 40,
                payload: video
            },
            ServerEvent::Media {
                stream_id: 1,
                type_id: 8,
                timestamp: 42,
                payload: audio
            },
        ]
    );
    assert_eq!(session.stats().media_dropped, 2);

    session
        .handle_message(cmd(
            0,
            "FCUnpublish",
            6.0,
            Amf0Value::Null,
            vec![s("key?token=x")],
        ))
        .unwrap();
    session
        .handle_message(cmd(1, "deleteStream", 0.0, Amf0Value::Null, vec![n(1.0)]))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::PublishFinished { stream_id: 1 }],
        "finished once, not twice"
    );
}

#[test]
fn publish_modes_and_missing_type() {
    for (arg, mode) in [
        (Some("record"), PublishMode::Record),
        (Some("append"), PublishMode::Append),
        (Some("LIVE?"), PublishMode::Live),
        (None, PublishMode::Live),
    ] {
        let mut session = connected();
        let mut args = vec![s("k")];
        args.extend(arg.map(s));
        session
            .handle_message(cmd(1, "publish", 0.0, Amf0Value::Null, args))
            .unwrap();
        assert_eq!(
            events(&mut session),
            vec![ServerEvent::PublishRequested {
                stream_id: 1,
                stream_key: "k".into(),
                mode
            }]
        );
    }
}

#[test]
fn publish_without_name_is_rejected_not_fatal() {
    for args in [vec![], vec![n(1.0)], vec![s("")]] {
        let mut session = connected();
        session
            .handle_message(cmd(1, "publish", 0.0, Amf0Value::Null, args))
            .unwrap();
        assert!(events(&mut session).is_empty());
        let (sid, status) = commands(&output(&mut session)).remove(0);
        assert_eq!(sid, 1);
        assert_eq!(code(&status), "NetStream.Publish.BadName");
        assert_eq!(info(&status, "level"), Some(s("error")));
    }
}

#[test]
fn publish_on_uncreated_stream_is_tolerated() {
    let mut session = connected();
    session
        .handle_message(cmd(5, "publish", 0.0, Amf0Value::Null, vec![s("k")]))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::PublishRequested {
            stream_id: 5,
            stream_key: "k".into(),
            mode: PublishMode::Live
        }]
    );
    session.accept_publish(5);
    session
        .handle_message(msg(8, 5, 1, &b"\xaf\x01"[..]))
        .unwrap();
    assert!(matches!(
        events(&mut session)[..],
        [ServerEvent::Media { stream_id: 5, .. }]
    ));
}

#[test]
fn reject_publish_sends_error_status_and_drops_media() {
    let mut session = connected();
    session
        .handle_message(cmd(1, "publish", 0.0, Amf0Value::Null, vec![s("taken")]))
        .unwrap();
    events(&mut session);
    session.reject_publish(1, "NetStream.Publish.BadName", "already publishing");
    let (_, status) = commands(&output(&mut session)).remove(0);
    assert_eq!(code(&status), "NetStream.Publish.BadName");
    assert_eq!(info(&status, "description"), Some(s("already publishing")));
    session.handle_message(msg(9, 1, 0, &b"\x17"[..])).unwrap();
    assert!(events(&mut session).is_empty());
    // And the stream can be published again.
    session
        .handle_message(cmd(1, "publish", 0.0, Amf0Value::Null, vec![s("other")]))
        .unwrap();
    assert_eq!(events(&mut session).len(), 1);
}

#[test]
fn malformed_set_data_frame_is_dropped_not_fatal() {
    let mut session = publishing("k");
    for bad in [
        data(1, 0, &[s("@setDataFrame")]),
        data(1, 0, &[s("@setDataFrame"), s("onMetaData")]),
        data(1, 0, &[s("@setDataFrame"), s("onMetaData"), n(1.0)]),
        data(1, 0, &[s("onCuePoint"), object([])]),
        msg(
            18,
            1,
            0,
            &b"\x02\x00\x0d@setDataFrame\x02\x00\x0aonMetaData\x03\x00\x01"[..],
        ),
        msg(18, 1, 0, Bytes::new()),
    ] {
        session.handle_message(bad).unwrap();
    }
    assert!(events(&mut session).is_empty());
    assert_eq!(session.stats().data_dropped, 6);
}

#[test]
fn amf3_data_and_command_types_are_handled() {
    let mut session = publishing("k");
    let mut p = BytesMut::from(&[0u8][..]);
    for v in [s("@setDataFrame"), s("onMetaData"), object([("w", n(1.0))])] {
        p.put_slice(&encode_value(&v));
    }
    session.handle_message(msg(15, 1, 7, p.freeze())).unwrap();
    assert!(matches!(
        events(&mut session)[..],
        [ServerEvent::Metadata { timestamp: 7, .. }]
    ));

    let mut p = BytesMut::from(&[0u8][..]);
    p.put_slice(&Command::new("createStream", 9.0, Amf0Value::Null, vec![]).encode());
    session.handle_message(msg(17, 0, 0, p.freeze())).unwrap();
    let (_, result) = commands(&output(&mut session)).remove(0);
    assert_eq!(
        (result.name.as_str(), result.transaction_id),
        ("_result", 9.0)
    );
    assert_eq!(result.args, vec![n(2.0)], "stream 1 is publishing");
}

#[test]
fn play_flow() {
    let mut session = connected();
    session
        .handle_message(cmd(0, "createStream", 2.0, Amf0Value::Null, vec![]))
        .unwrap();
    output(&mut session);
    session
        .handle_message(msg(
            4,
            0,
            0,
            Control::User(UserControl::SetBufferLength {
                stream_id: 1,
                ms: 3000,
            })
            .to_message()
            .payload,
        ))
        .unwrap();
    session
        .handle_message(cmd(
            1,
            "play",
            0.0,
            Amf0Value::Null,
            vec![s("cam?x=1"), n(-2000.0), n(-1.0), Amf0Value::Boolean(true)],
        ))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::PlayRequested {
            stream_id: 1,
            stream_key: "cam?x=1".into()
        }]
    );
    session.accept_play(1);
    let out = output(&mut session);
    assert_eq!(
        Control::decode(&out[0]).unwrap(),
        Some(Control::User(UserControl::StreamBegin(1)))
    );
    let codes: Vec<_> = commands(&out).iter().map(|(_, c)| code(c)).collect();
    assert_eq!(codes, vec!["NetStream.Play.Reset", "NetStream.Play.Start"]);
    let datas: Vec<_> = out
        .iter()
        .filter(|m| m.type_id == MessageType::DataAmf0 as u8)
        .map(|m| (m.stream_id, decode_data(&m.payload).unwrap()))
        .collect();
    assert_eq!(
        datas,
        vec![
            (
                1,
                vec![
                    s("|RtmpSampleAccess"),
                    Amf0Value::Boolean(true),
                    Amf0Value::Boolean(true)
                ]
            ),
            (
                1,
                vec![s("onStatus"), object([("code", s("NetStream.Data.Start"))])]
            ),
        ]
    );
    // The order players expect: controls, Reset, Start, sample access, Data.Start.
    let kinds: Vec<_> = out.iter().map(|m| m.type_id).collect();
    assert_eq!(kinds, vec![4, 20, 20, 18, 18]);

    // Publisher leaves and comes back.
    session.stream_eof(1);
    let out = output(&mut session);
    assert_eq!(code(&commands(&out)[0].1), "NetStream.Play.UnpublishNotify");
    assert_eq!(
        Control::decode(&out[1]).unwrap(),
        Some(Control::User(UserControl::StreamEof(1)))
    );
    session.stream_begin(1);
    let out = output(&mut session);
    assert_eq!(
        Control::decode(&out[0]).unwrap(),
        Some(Control::User(UserControl::StreamBegin(1)))
    );
    assert_eq!(code(&commands(&out)[0].1), "NetStream.Play.PublishNotify");

    session
        .handle_message(cmd(1, "closeStream", 0.0, Amf0Value::Null, vec![]))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::PlayFinished { stream_id: 1 }]
    );
}

#[test]
fn play_with_missing_or_wrong_arguments() {
    // No args / wrong name type: rejected with StreamNotFound, not fatal.
    for args in [vec![], vec![n(3.0)], vec![Amf0Value::Null, s("x")]] {
        let mut session = connected();
        session
            .handle_message(cmd(1, "play", 0.0, Amf0Value::Null, args))
            .unwrap();
        assert!(events(&mut session).is_empty());
        let (_, status) = commands(&output(&mut session)).remove(0);
        assert_eq!(code(&status), "NetStream.Play.StreamNotFound");
    }
    // Name with junk optional args of the wrong types: accepted.
    let mut session = connected();
    session
        .handle_message(cmd(
            1,
            "play",
            0.0,
            Amf0Value::Null,
            vec![s("cam"), s("start?"), Amf0Value::Undefined, n(0.0)],
        ))
        .unwrap();
    assert_eq!(events(&mut session).len(), 1);
    // Bare "play" with the name and nothing else (no tid, no object).
    let mut session = connected();
    let mut p = BytesMut::new();
    p.put_slice(&encode_value(&s("play")));
    p.put_slice(&encode_value(&s("cam")));
    session.handle_message(msg(20, 1, 0, p.freeze())).unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::PlayRequested {
            stream_id: 1,
            stream_key: "cam".into()
        }]
    );
}

#[test]
fn play2_and_replayed_play() {
    let mut session = connected();
    session
        .handle_message(cmd(
            1,
            "play2",
            0.0,
            Amf0Value::Null,
            vec![object([("streamName", s("hd")), ("start", n(0.0))])],
        ))
        .unwrap();
    session
        .handle_message(cmd(1, "play", 0.0, Amf0Value::Null, vec![s("sd")]))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![
            ServerEvent::PlayRequested {
                stream_id: 1,
                stream_key: "hd".into()
            },
            ServerEvent::PlayFinished { stream_id: 1 },
            ServerEvent::PlayRequested {
                stream_id: 1,
                stream_key: "sd".into()
            },
        ]
    );
}

#[test]
fn reject_play_sends_error_status() {
    let mut session = connected();
    session
        .handle_message(cmd(1, "play", 0.0, Amf0Value::Null, vec![s("nope")]))
        .unwrap();
    session.reject_play(1, "NetStream.Play.StreamNotFound", "No such stream.");
    let (sid, status) = commands(&output(&mut session)).remove(0);
    assert_eq!(sid, 1);
    assert_eq!(code(&status), "NetStream.Play.StreamNotFound");
    assert_eq!(info(&status, "level"), Some(s("error")));
}

#[test]
fn delete_stream_finishes_publish_and_play() {
    let mut session = publishing("k");
    session
        .handle_message(cmd(0, "deleteStream", 0.0, Amf0Value::Null, vec![n(1.0)]))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::PublishFinished { stream_id: 1 }]
    );
    session.handle_message(msg(9, 1, 0, &b"\x17"[..])).unwrap();
    assert!(events(&mut session).is_empty(), "no media after delete");

    let mut session = publishing("k");
    session
        .handle_message(cmd(1, "closeStream", 0.0, Amf0Value::Null, vec![]))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![ServerEvent::PublishFinished { stream_id: 1 }]
    );
}

#[test]
fn unknown_commands_answered_only_with_transaction_id() {
    let mut session = connected();
    session
        .handle_message(cmd(0, "fancyCall", 12.0, Amf0Value::Null, vec![]))
        .unwrap();
    session
        .handle_message(cmd(0, "fancyNotify", 0.0, Amf0Value::Null, vec![]))
        .unwrap();
    let cmds = commands(&output(&mut session));
    assert_eq!(cmds.len(), 1);
    assert_eq!(
        (cmds[0].1.name.as_str(), cmds[0].1.transaction_id),
        ("_error", 12.0)
    );
    assert_eq!(code(&cmds[0].1), "NetConnection.Call.Failed");
    assert_eq!(session.stats().unknown_commands, 2);
    // Answers from the peer are never answered (no _error ping-pong).
    session
        .handle_message(cmd(0, "_error", 3.0, Amf0Value::Null, vec![]))
        .unwrap();
    assert!(output(&mut session).is_empty());
}

#[test]
fn harmless_commands() {
    let mut session = publishing("k");
    for (sid, name, tid, args) in [
        (1, "receiveAudio", 0.0, vec![Amf0Value::Boolean(true)]),
        (1, "receiveVideo", 0.0, vec![Amf0Value::Boolean(false)]),
        (0, "_checkbw", 5.0, vec![]),
        (0, "getStreamLength", 6.0, vec![s("k")]),
        (1, "pause", 0.0, vec![Amf0Value::Boolean(true), n(100.0)]),
        (1, "pause", 0.0, vec![Amf0Value::Boolean(false), n(100.0)]),
    ] {
        session
            .handle_message(cmd(sid, name, tid, Amf0Value::Null, args))
            .unwrap();
    }
    let cmds = commands(&output(&mut session));
    let seen: Vec<_> = cmds
        .iter()
        .map(|(_, c)| (c.name.clone(), c.transaction_id))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("_result".into(), 6.0),
            ("onStatus".into(), 0.0),
            ("onStatus".into(), 0.0)
        ]
    );
    assert_eq!(code(&cmds[1].1), "NetStream.Pause.Notify");
    assert_eq!(code(&cmds[2].1), "NetStream.Unpause.Notify");
    assert!(events(&mut session).is_empty());
    assert_eq!(session.stats().unknown_commands, 0);
}

#[test]
fn create_stream_is_capped() {
    let mut session = connected();
    for tid in 0..MAX_STREAMS + 2 {
        session
            .handle_message(cmd(
                0,
                "createStream",
                tid as f64 + 2.0,
                Amf0Value::Null,
                vec![],
            ))
            .unwrap();
    }
    let cmds = commands(&output(&mut session));
    let ids: Vec<_> = cmds[..MAX_STREAMS]
        .iter()
        .map(|(_, c)| c.args.clone())
        .collect();
    assert_eq!(ids[0], vec![n(1.0)]);
    assert_eq!(ids[MAX_STREAMS - 1], vec![n(MAX_STREAMS as f64)]);
    assert!(cmds[MAX_STREAMS..].iter().all(|(_, c)| c.name == "_error"));
    // Deleting one frees its id for the next createStream.
    session
        .handle_message(cmd(0, "deleteStream", 0.0, Amf0Value::Null, vec![n(3.0)]))
        .unwrap();
    session
        .handle_message(cmd(0, "createStream", 99.0, Amf0Value::Null, vec![]))
        .unwrap();
    assert_eq!(commands(&output(&mut session))[0].1.args, vec![n(3.0)]);
}

#[test]
fn pings_acks_and_windows() {
    let mut session = connected();
    session.ping(1234);
    assert_eq!(
        Control::decode(&output(&mut session)[0]).unwrap(),
        Some(Control::User(UserControl::PingRequest(1234)))
    );
    let user = |u| Control::User(u).to_message();
    session
        .handle_message(user(UserControl::PingResponse(1234)))
        .unwrap();
    session
        .handle_message(user(UserControl::PingRequest(77)))
        .unwrap();
    session
        .handle_message(Control::Acknowledgement(5000).to_message())
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![
            ServerEvent::PingResponse { timestamp: 1234 },
            ServerEvent::PeerAcknowledged { bytes: 5000 }
        ]
    );
    assert_eq!(
        Control::decode(&output(&mut session)[0]).unwrap(),
        Some(Control::User(UserControl::PingResponse(77)))
    );

    // Our window (2.5 MB) until the peer sets one.
    session.record_bytes_received(2_000_000);
    assert!(output(&mut session).is_empty());
    session.record_bytes_received(2_600_000);
    assert_eq!(
        Control::decode(&output(&mut session)[0]).unwrap(),
        Some(Control::Acknowledgement(2_600_000))
    );
    session
        .handle_message(Control::WindowAckSize(1000).to_message())
        .unwrap();
    session.record_bytes_received(2_600_999);
    assert!(output(&mut session).is_empty());
    session.record_bytes_received(2_601_000);
    assert_eq!(
        Control::decode(&output(&mut session)[0]).unwrap(),
        Some(Control::Acknowledgement(2_601_000))
    );
    // Sequence numbers wrap at 2^32.
    session.record_bytes_received((1 << 32) + 5);
    assert_eq!(
        Control::decode(&output(&mut session)[0]).unwrap(),
        Some(Control::Acknowledgement(5))
    );
}

#[test]
fn malformed_control_and_command_are_errors() {
    let mut session = connected();
    assert!(matches!(
        session.handle_message(msg(3, 0, 0, &b"\x00\x01"[..])),
        Err(SessionError::Control(_))
    ));
    assert!(matches!(
        session.handle_message(msg(20, 0, 0, &b"\x02\x00\x09conn"[..])),
        Err(SessionError::Command(_))
    ));
    assert!(matches!(
        session.handle_message(msg(20, 0, 0, &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00"[..])),
        Err(SessionError::Command(_))
    ));
}

fn aggregate_part(type_id: u8, ts: u32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![type_id];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    v.extend_from_slice(&ts.to_be_bytes()[1..]);
    v.push((ts >> 24) as u8);
    v.extend_from_slice(&[0, 0, 0]);
    v.extend_from_slice(body);
    v.extend_from_slice(&(11 + body.len() as u32).to_be_bytes());
    v
}

#[test]
fn aggregates_are_split_with_adjusted_timestamps() {
    let mut session = publishing("k");
    let mut agg = aggregate_part(9, 0x0100_0000, b"\x27\x01video");
    agg.extend(aggregate_part(8, 0x0100_0028, b"\xaf\x01audio"));
    agg.extend(aggregate_part(18, 0x0100_0028, &{
        let mut p = encode_value(&s("onMetaData")).to_vec();
        p.extend_from_slice(&encode_value(&object([("w", n(1.0))])));
        p
    }));
    session
        .handle_message(msg(22, 1, 5000, agg.clone()))
        .unwrap();
    let evs = events(&mut session);
    assert_eq!(
        evs[..2],
        [
            ServerEvent::Media {
                stream_id: 1,
                type_id: 9,
                timestamp: 5000,
                payload: Bytes::from_static(b"\x27\x01video")
            },
            ServerEvent::Media {
                stream_id: 1,
                type_id: 8,
                timestamp: 5040,
                payload: Bytes::from_static(b"\xaf\x01audio")
            },
        ]
    );
    assert!(matches!(
        evs[2],
        ServerEvent::Metadata {
            timestamp: 5040,
            ..
        }
    ));

    // Truncated: the complete first part is delivered, the rest counted.
    agg.truncate(30);
    session.handle_message(msg(22, 1, 0, agg)).unwrap();
    assert_eq!(events(&mut session).len(), 1);
    assert_eq!(session.stats().aggregates_truncated, 1);
    // Not publishing: dropped.
    let mut session = connected();
    session
        .handle_message(msg(22, 1, 0, aggregate_part(9, 0, b"x")))
        .unwrap();
    assert!(events(&mut session).is_empty());
}

#[test]
fn unknown_message_types_are_ignored() {
    let mut session = connected();
    for type_id in [0, 7, 16, 19, 21, 23, 255] {
        session
            .handle_message(msg(type_id, 0, 0, &b"junk"[..]))
            .unwrap();
    }
    assert!(events(&mut session).is_empty());
    assert!(output(&mut session).is_empty());
}

#[test]
fn media_and_data_on_stream_zero_go_to_the_only_publisher() {
    let mut session = publishing("k");
    session.handle_message(msg(9, 0, 3, &b"\x17v"[..])).unwrap();
    session
        .handle_message(data(0, 0, &[s("onMetaData"), object([("w", n(1.0))])]))
        .unwrap();
    let evs = events(&mut session);
    assert!(
        matches!(
            evs[..],
            [
                ServerEvent::Media {
                    stream_id: 1,
                    timestamp: 3,
                    ..
                },
                ServerEvent::Metadata { stream_id: 1, .. }
            ]
        ),
        "{evs:?}"
    );
    // With two publishers it is ambiguous: dropped.
    session
        .handle_message(cmd(2, "publish", 0.0, Amf0Value::Null, vec![s("k2")]))
        .unwrap();
    session.accept_publish(2);
    events(&mut session);
    session.handle_message(msg(9, 0, 3, &b"\x17v"[..])).unwrap();
    assert!(events(&mut session).is_empty());
}

#[test]
fn late_accept_after_the_peer_left_does_nothing() {
    let mut session = connected();
    session
        .handle_message(cmd(1, "play", 0.0, Amf0Value::Null, vec![s("cam")]))
        .unwrap();
    session
        .handle_message(cmd(1, "closeStream", 0.0, Amf0Value::Null, vec![]))
        .unwrap();
    assert_eq!(
        events(&mut session),
        vec![
            ServerEvent::PlayRequested {
                stream_id: 1,
                stream_key: "cam".into()
            },
            ServerEvent::PlayFinished { stream_id: 1 }
        ]
    );
    output(&mut session);
    session.accept_play(1);
    session.accept_publish(1);
    assert!(output(&mut session).is_empty());
}

/// A peer that pipelines commands behind connect and publish gets every answer in request
/// order: the connection holds messages back while a request awaits the application.
#[test]
fn pipelined_requests_wait_for_the_applications_decision() {
    use sluice_rtmp::chunk::{ChunkLimits, ChunkReader, ChunkWriter};
    use sluice_rtmp::connection::ServerConnection;

    let mut input = BytesMut::new();
    let mut writer = ChunkWriter::new();
    for m in [
        cmd(0, "connect", 1.0, connect_object(), vec![]),
        cmd(0, "createStream", 2.0, Amf0Value::Null, vec![]),
        cmd(
            1,
            "publish",
            3.0,
            Amf0Value::Null,
            vec![s("key"), s("live")],
        ),
        msg(9, 1, 0, Bytes::from_static(&[0x17, 0, 0, 0, 0])),
    ] {
        writer.write(&m, &mut input);
    }
    let mut conn = ServerConnection::new(ServerConfig::default(), ChunkLimits::default());
    conn.handle_input(&input).unwrap();
    let first: Vec<ServerEvent> = std::iter::from_fn(|| conn.session.poll_event()).collect();
    assert!(
        matches!(first.as_slice(), [ServerEvent::ConnectRequested { .. }]),
        "{first:?}"
    );
    assert!(conn.session.awaiting_decision());
    conn.session.accept_connect();
    conn.handle_input(&[]).unwrap();
    let second: Vec<ServerEvent> = std::iter::from_fn(|| conn.session.poll_event()).collect();
    assert!(
        matches!(
            second.as_slice(),
            [ServerEvent::PublishRequested { stream_id: 1, .. }]
        ),
        "{second:?}"
    );
    conn.session.accept_publish(1);
    conn.handle_input(&[]).unwrap();
    let third: Vec<ServerEvent> = std::iter::from_fn(|| conn.session.poll_event()).collect();
    assert!(
        matches!(third.as_slice(), [ServerEvent::Media { stream_id: 1, .. }]),
        "the media behind publish is delivered, not dropped: {third:?}"
    );

    let mut out = BytesMut::new();
    conn.drain_output(&mut out);
    let mut reader = ChunkReader::new(ChunkLimits::default());
    reader.push(&out);
    let mut answers = Vec::new();
    while let Some(m) = reader.next_message().unwrap() {
        if m.type_id == 20 {
            let c = Command::decode(&m.payload).unwrap();
            answers.push((c.name.clone(), c.transaction_id));
        }
    }
    let names: Vec<(&str, f64)> = answers.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    assert_eq!(
        &names[..2],
        [("_result", 1.0), ("_result", 2.0)],
        "connect answered before createStream"
    );
    assert_eq!(names[2].0, "onStatus");
}
