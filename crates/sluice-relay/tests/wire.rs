//! The relay wire format from the outside: roundtrips through any split of the bytes,
//! truncated streams, garbage, limits and versions.

use bytes::Bytes;
use proptest::prelude::*;
use sluice_media::{CodecId, FrameKind, FrameParts};
use sluice_relay::{
    Control, ControlDecoder, ControlEncoder, DecodeError, GopDecoder, GopEncoder, GopEvent,
    GopHeader, Limits, Pull, RefuseCode, StreamKind, VERSION,
};

/// Feeds `bytes` cut at `cuts` (offsets, any order) and polls after every piece.
fn feed_in_pieces<T>(
    bytes: &[u8],
    cuts: &[usize],
    mut feed: impl FnMut(Bytes),
    mut poll: impl FnMut() -> Result<Option<T>, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    for w in points.windows(2) {
        feed(Bytes::copy_from_slice(&bytes[w[0]..w[1]]));
        while let Some(m) = poll()? {
            out.push(m);
        }
    }
    Ok(out)
}

fn control_bytes(msgs: &[Control]) -> Vec<u8> {
    let mut enc = ControlEncoder::new();
    msgs.iter()
        .flat_map(|m| enc.encode(m).unwrap().to_vec())
        .collect()
}

fn gop_bytes(header: GopHeader, records: &[FrameParts]) -> Vec<u8> {
    let mut enc = GopEncoder::new();
    let mut out = enc.start(&header).to_vec();
    for r in records {
        for part in enc.record(r).unwrap() {
            out.extend_from_slice(&part);
        }
    }
    out
}

fn decode_control(bytes: &[u8], cuts: &[usize]) -> Result<Vec<Control>, DecodeError> {
    let dec = std::cell::RefCell::new(ControlDecoder::new(Limits::default()));
    let out = feed_in_pieces(
        bytes,
        cuts,
        |b| dec.borrow_mut().feed(b),
        || dec.borrow_mut().poll(),
    )?;
    dec.borrow().finish()?;
    Ok(out)
}

fn decode_gop(bytes: &[u8], cuts: &[usize], limits: Limits) -> Result<Vec<GopEvent>, DecodeError> {
    let dec = std::cell::RefCell::new(GopDecoder::new(limits));
    let out = feed_in_pieces(
        bytes,
        cuts,
        |b| dec.borrow_mut().feed(b),
        || dec.borrow_mut().poll(),
    )?;
    dec.borrow().finish()?;
    Ok(out)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn control() -> impl Strategy<Value = Control> {
    let code = prop_oneof![
        Just(RefuseCode::NotFound),
        Just(RefuseCode::Loop),
        Just(RefuseCode::TooDeep),
        Just(RefuseCode::NotAllowed),
        any::<u8>().prop_map(RefuseCode::Unsupported),
    ];
    prop_oneof![
        (text(), text(), proptest::collection::vec(text(), 0..5))
            .prop_map(|(app, name, via)| Control::Pull(Pull { app, name, via })),
        any::<u64>().prop_map(|pull_id| Control::Accepted { pull_id }),
        (code, text()).prop_map(|(code, message)| Control::Refused { code, message }),
        Just(Control::Ended),
    ]
}

fn record() -> impl Strategy<Value = FrameParts> {
    (
        prop_oneof![
            Just(FrameKind::Audio),
            Just(FrameKind::Video),
            Just(FrameKind::Script)
        ],
        any::<u64>(),
        any::<i32>(),
        any::<[bool; 3]>(),
        (0..=u8::MAX).prop_filter_map("a codec number", CodecId::from_u8),
        proptest::collection::vec(any::<u8>(), 1..300),
    )
        .prop_map(
            |(kind, dts, cts, [keyframe, seq_header, disposable], codec, payload)| FrameParts {
                kind,
                dts,
                cts,
                keyframe,
                seq_header,
                disposable,
                codec,
                payload: payload.into(),
            },
        )
}

/// A GOP stream's start, then `record_header` as the header of one record.
fn gop_with_record_header(record_header: &[u8]) -> Vec<u8> {
    let mut gop = gop_bytes(
        GopHeader {
            pull_id: 1,
            gop_seq: 0,
        },
        &[],
    );
    gop.extend_from_slice(record_header);
    gop
}

proptest! {
    #[test]
    fn control_roundtrips_through_any_split(
        msgs in proptest::collection::vec(control(), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let bytes = control_bytes(&msgs);
        prop_assert_eq!(decode_control(&bytes, &cuts)?, msgs);
    }

    #[test]
    fn gop_roundtrips_through_any_split(
        pull_id in any::<u64>(),
        gop_seq in any::<u64>(),
        records in proptest::collection::vec(record(), 0..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let header = GopHeader { pull_id, gop_seq };
        let bytes = gop_bytes(header, &records);
        let events = decode_gop(&bytes, &cuts, Limits::default())?;
        let mut expected = vec![GopEvent::Header(header)];
        expected.extend(records.into_iter().map(GopEvent::Frame));
        prop_assert_eq!(events, expected);
    }

    #[test]
    fn garbage_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        valid_preamble in any::<bool>(),
        old_version in any::<bool>(),
    ) {
        let version = if old_version { 1 } else { VERSION };
        let mut control = if valid_preamble { StreamKind::Control.preamble(version).to_vec() } else { Vec::new() };
        control.extend_from_slice(&bytes);
        if let Ok(msgs) = decode_control(&control, &cuts)
            && valid_preamble
            && old_version
        {
            prop_assert!(msgs.iter().all(|m| matches!(m, Control::Refused { .. })), "{:?}", msgs);
        }
        let mut gop = if valid_preamble { StreamKind::Gop.preamble(VERSION).to_vec() } else { Vec::new() };
        gop.extend_from_slice(&bytes);
        let _ = decode_gop(&gop, &cuts, Limits { max_control: 64, max_frame: 64 });
    }

    #[test]
    fn any_truncation_is_pending_then_truncated(
        msg in control(),
        records in proptest::collection::vec(record(), 1..4),
        cut in any::<usize>(),
    ) {
        // A control stream cut inside its only message: nothing decodes, the end says so.
        let bytes = control_bytes(std::slice::from_ref(&msg));
        let cut = cut % bytes.len();
        let mut dec = ControlDecoder::new(Limits::default());
        dec.feed_slice(&bytes[..cut]);
        prop_assert_eq!(dec.poll(), Ok(None));
        if cut == sluice_relay::PREAMBLE_LEN || cut == 0 {
            prop_assert_eq!(dec.finish(), Ok(()), "nothing begun, nothing cut");
        } else {
            prop_assert!(matches!(dec.finish(), Err(DecodeError::Truncated(_))));
        }

        // A GOP stream cut anywhere: truncated unless the cut falls between records.
        let header = GopHeader { pull_id: 1, gop_seq: 1 };
        let mut boundaries = vec![gop_bytes(header, &[]).len()];
        for i in 1..=records.len() {
            boundaries.push(gop_bytes(header, &records[..i]).len());
        }
        let bytes = gop_bytes(header, &records);
        let cut = cut % (bytes.len() + 1);
        let mut dec = GopDecoder::new(Limits::default());
        dec.feed_slice(&bytes[..cut]);
        while dec.poll()?.is_some() {}
        if boundaries.contains(&cut) {
            prop_assert_eq!(dec.finish(), Ok(()));
        } else {
            prop_assert!(matches!(dec.finish(), Err(DecodeError::Truncated(_))));
        }
    }
}

#[test]
fn wrong_magic_kind_and_version_are_named() {
    let mut dec = ControlDecoder::new(Limits::default());
    dec.feed_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(dec.poll(), Err(DecodeError::BadMagic(*b"GET ")));
    assert_eq!(dec.poll(), Err(DecodeError::BadMagic(*b"GET ")), "sticky");

    let mut dec = ControlDecoder::new(Limits::default());
    dec.feed_slice(&StreamKind::Gop.preamble(VERSION));
    assert_eq!(
        dec.poll(),
        Err(DecodeError::WrongStream {
            expected: StreamKind::Control,
            found: StreamKind::Gop
        })
    );

    let mut dec = GopDecoder::new(Limits::default());
    dec.feed_slice(&StreamKind::Gop.preamble(3));
    assert_eq!(dec.poll(), Err(DecodeError::UnsupportedVersion(3)));
    assert!(
        DecodeError::UnsupportedVersion(3)
            .to_string()
            .contains("version 3")
    );
}

#[test]
fn version_1_streams_are_refused() {
    assert_eq!(VERSION, 2);
    // A version 1 GOP stream (a 14-byte record header): refused at its preamble.
    let mut v1 = StreamKind::Gop.preamble(1).to_vec();
    v1.extend_from_slice(&[0; 16]);
    v1.extend_from_slice(&[9, 1, 0, 0, 0, 0, 0, 0, 0, 40, 0, 0, 0, 2, 0x17, 1]);
    assert_eq!(
        decode_gop(&v1, &[7], Limits::default()),
        Err(DecodeError::UnsupportedVersion(1))
    );
    // A version 1 pull request: refused as soon as its type byte is here.
    let mut v1 = StreamKind::Control.preamble(1).to_vec();
    v1.extend_from_slice(&[0, 0, 0, 7, 1]);
    assert_eq!(
        decode_control(&v1, &[3]),
        Err(DecodeError::UnsupportedVersion(1))
    );
}

#[test]
fn a_frame_keeps_its_parts_across_the_relay() {
    // What the upstream parsed is what the edge gets: 64-bit dts, flags, cts and codec.
    let payload = Bytes::from_static(&[0x27, 1, 0xff, 0xff, 0xd8, 0x21, 0x9a]);
    let sent = sluice_media::Frame::parse(FrameKind::Video, 0, payload).unwrap();
    let mut parts = sent.to_parts();
    parts.dts = u64::from(u32::MAX) + 1000;
    let bytes = gop_bytes(
        GopHeader {
            pull_id: 1,
            gop_seq: 0,
        },
        std::slice::from_ref(&parts),
    );
    let events = decode_gop(&bytes, &[20, 30], Limits::default()).unwrap();
    let GopEvent::Frame(got) = &events[1] else {
        panic!("a frame: {events:?}")
    };
    assert_eq!(got, &parts);
    assert_eq!((got.cts, got.codec), (-40, CodecId::Avc));
    let frame = sluice_media::Frame::from_parts(got.clone());
    assert_eq!(frame.dts, u64::from(u32::MAX) + 1000);
}

#[test]
fn lengths_over_the_limits_are_refused_before_buffering() {
    let limits = Limits {
        max_control: 32,
        max_frame: 100,
    };
    let mut dec = ControlDecoder::new(limits);
    let mut bytes = StreamKind::Control.preamble(VERSION).to_vec();
    bytes.extend_from_slice(&33u32.to_be_bytes());
    dec.feed_slice(&bytes);
    assert!(matches!(
        dec.poll(),
        Err(DecodeError::TooLarge {
            len: 33,
            max: 32,
            ..
        })
    ));

    let mut bytes = gop_bytes(
        GopHeader {
            pull_id: 1,
            gop_seq: 0,
        },
        &[],
    );
    bytes.extend_from_slice(&[9, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut dec = GopDecoder::new(limits);
    dec.feed_slice(&bytes);
    assert!(matches!(dec.poll(), Ok(Some(GopEvent::Header(_)))));
    assert!(matches!(
        dec.poll(),
        Err(DecodeError::TooLarge { what: "frame", .. })
    ));
}

#[test]
fn malformed_bodies_are_refused() {
    let msg = |body: &[u8]| {
        let mut b = StreamKind::Control.preamble(VERSION).to_vec();
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(body);
        let mut dec = ControlDecoder::new(Limits::default());
        dec.feed_slice(&b);
        dec.poll()
    };
    assert_eq!(
        msg(&[]),
        Err(DecodeError::Malformed("empty control message"))
    );
    assert_eq!(msg(&[99]), Err(DecodeError::UnknownMessage(99)));
    assert_eq!(
        msg(&[4, 0]),
        Err(DecodeError::Malformed("control message: trailing bytes"))
    );
    assert_eq!(
        msg(&[2, 0, 0]),
        Err(DecodeError::Malformed("accepted: pull id"))
    );
    assert_eq!(msg(&[3, 9, 0, 0]), Err(DecodeError::UnknownRefusal(9)));
    assert_eq!(
        msg(&[1, 0, 2, 0xff, 0xfe, 0, 0, 0, 0]),
        Err(DecodeError::Malformed("pull: app"))
    );
    assert_eq!(
        msg(&[1, 0, 0, 0, 0, 0xff, 0xff]),
        Err(DecodeError::Malformed("pull: via count")),
        "a count the body cannot hold"
    );

    // kind, flags, codec, cts (4), dts (8), len (4)
    let record = |kind: u8, flags: u8, codec: u8, len: u8| {
        let mut h = vec![
            kind, flags, codec, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, len,
        ];
        h.extend(std::iter::repeat_n(0x17, len.into()));
        gop_with_record_header(&h)
    };
    let decode = |bytes: Vec<u8>| decode_gop(&bytes, &[], Limits::default());
    assert_eq!(decode(record(7, 0, 2, 1)), Err(DecodeError::UnknownKind(7)));
    assert_eq!(
        decode(record(9, 8, 2, 1)),
        Err(DecodeError::UnknownFlags(8))
    );
    assert_eq!(
        decode(record(9, 0, 200, 1)),
        Err(DecodeError::UnknownCodec(200))
    );
    assert_eq!(
        decode(record(9, 1, 2, 0)),
        Err(DecodeError::Malformed("empty audio or video frame"))
    );
    assert_eq!(
        decode(record(8, 0, 8, 0)),
        Err(DecodeError::Malformed("empty audio or video frame"))
    );
    assert!(
        matches!(&decode(record(18, 0, 1, 0)).unwrap()[1], GopEvent::Frame(f) if f.payload.is_empty()),
        "script data may be empty"
    );
    assert!(matches!(
        &decode(record(9, 7, 2, 1)).unwrap()[1],
        GopEvent::Frame(FrameParts {
            keyframe: true,
            seq_header: true,
            disposable: true,
            ..
        })
    ));
}

#[test]
fn a_gop_stream_that_ends_before_its_header_is_truncated() {
    let mut dec = GopDecoder::new(Limits::default());
    assert_eq!(dec.finish(), Err(DecodeError::Truncated(0)));
    dec.feed_slice(&StreamKind::Gop.preamble(VERSION));
    assert_eq!(dec.poll(), Ok(None));
    assert_eq!(dec.finish(), Err(DecodeError::Truncated(0)));
}

#[test]
fn payloads_that_arrive_whole_are_not_copied() {
    let payload = Bytes::from(vec![5u8; 1000]);
    let record = FrameParts {
        kind: FrameKind::Video,
        dts: 1,
        cts: 0,
        keyframe: false,
        seq_header: false,
        disposable: false,
        codec: CodecId::Avc,
        payload: payload.clone(),
    };
    let mut enc = GopEncoder::new();
    let [head, body] = enc.record(&record).unwrap();
    let mut dec = GopDecoder::new(Limits::default());
    dec.feed(enc.start(&GopHeader {
        pull_id: 1,
        gop_seq: 1,
    }));
    dec.feed(head);
    dec.feed(body);
    assert!(matches!(dec.poll(), Ok(Some(GopEvent::Header(_)))));
    let Ok(Some(GopEvent::Frame(got))) = dec.poll() else {
        panic!("a frame")
    };
    assert_eq!(got.payload.as_ptr(), payload.as_ptr());
}
