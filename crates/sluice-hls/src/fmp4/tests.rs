//! Box structure, timing and codec-string tests of the fMP4 muxer, read back with a small
//! box parser of the tests' own (not the writer under test).

use std::sync::Arc;

use bytes::Bytes;
use sluice_media::flv::{TAG_AUDIO, TAG_VIDEO};
use sluice_media::{CodecId, Frame, FrameKind};

use super::*;

/// A parsed box: type, body (after the 8-byte header), and children for container boxes.
#[derive(Debug)]
struct Node<'a> {
    kind: [u8; 4],
    body: &'a [u8],
    children: Vec<Node<'a>>,
}

const CONTAINERS: [&[u8; 4]; 9] = [
    b"moov", b"trak", b"mdia", b"minf", b"dinf", b"stbl", b"mvex", b"moof", b"traf",
];

/// Parses `data` as a sequence of boxes, asserting that every size is in bounds and that the
/// sizes add up to exactly `data` (recursively for containers).
fn parse(data: &[u8]) -> Vec<Node<'_>> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        assert!(rest.len() >= 8, "box header truncated: {rest:?}");
        let mut size = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let mut header = 8;
        if size == 1 {
            size = u64::from_be_bytes(rest[8..16].try_into().unwrap()) as usize;
            header = 16;
        }
        assert!(
            size >= header && size <= rest.len(),
            "box size {size} of {} bytes left",
            rest.len()
        );
        let kind: [u8; 4] = rest[4..8].try_into().unwrap();
        let body = &rest[header..size];
        let children = if CONTAINERS.contains(&&kind) {
            parse(body)
        } else {
            Vec::new()
        };
        out.push(Node {
            kind,
            body,
            children,
        });
        rest = &rest[size..];
    }
    out
}

fn kinds(nodes: &[Node<'_>]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| String::from_utf8_lossy(&n.kind).into_owned())
        .collect()
}

/// The first box along `path` (e.g. `["moov", "trak", "mdia"]`).
fn find<'n, 'a>(nodes: &'n [Node<'a>], path: &[&str]) -> &'n Node<'a> {
    let (first, rest) = path.split_first().expect("a path");
    let node = nodes
        .iter()
        .find(|n| n.kind == first.as_bytes())
        .unwrap_or_else(|| panic!("no {first} among {:?}", kinds(nodes)));
    if rest.is_empty() {
        node
    } else {
        find(&node.children, rest)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// One `traf` read back: track, tfdt, and per sample (duration, size, flags, offset).
#[derive(Debug, PartialEq, Eq)]
struct Run {
    track_id: u32,
    base_time: u64,
    data_offset: u32,
    samples: Vec<(u32, u32, u32, i32)>,
}

fn runs(moof: &Node<'_>) -> Vec<Run> {
    moof.children
        .iter()
        .filter(|n| &n.kind == b"traf")
        .map(|traf| {
            let tfhd = find(&traf.children, &["tfhd"]).body;
            assert_eq!(
                u32_at(tfhd, 0),
                0x02_0000,
                "tfhd: default-base-is-moof only"
            );
            let tfdt = find(&traf.children, &["tfdt"]).body;
            assert_eq!(tfdt[0], 1, "tfdt version 1");
            let trun = find(&traf.children, &["trun"]).body;
            let flags = u32_at(trun, 0) & 0xff_ffff;
            assert_eq!(trun[0], 1, "trun version 1 (signed offsets)");
            assert_eq!(flags & 0x701, 0x701);
            let with_cto = flags & 0x800 != 0;
            let count = u32_at(trun, 4) as usize;
            let per = if with_cto { 16 } else { 12 };
            assert_eq!(
                trun.len(),
                12 + count * per,
                "trun size for {count} samples"
            );
            let samples = (0..count)
                .map(|i| {
                    let at = 12 + i * per;
                    let cto = if with_cto {
                        u32_at(trun, at + 12) as i32
                    } else {
                        0
                    };
                    (
                        u32_at(trun, at),
                        u32_at(trun, at + 4),
                        u32_at(trun, at + 8),
                        cto,
                    )
                })
                .collect();
            Run {
                track_id: u32_at(tfhd, 4),
                base_time: u64::from_be_bytes(tfdt[4..12].try_into().unwrap()),
                data_offset: u32_at(trun, 8),
                samples,
            }
        })
        .collect()
}

/// Checks a fragment's structure: moof then mdat, each run's data inside the mdat, the runs
/// back to back and filling it exactly. Returns the runs and each sample's bytes.
fn check_fragment(bytes: &[u8]) -> (u32, Vec<Run>, Vec<Vec<&[u8]>>) {
    let top = parse(bytes);
    assert_eq!(kinds(&top), ["moof", "mdat"]);
    let moof = &top[0];
    let mfhd = find(&moof.children, &["mfhd"]).body;
    let runs = runs(moof);
    let moof_len = moof.body.len() + 8;
    let mdat_header = bytes.len() - moof_len - top[1].body.len();
    let mut expect_offset = moof_len + mdat_header;
    let mut data = Vec::new();
    for run in &runs {
        assert_eq!(run.data_offset as usize, expect_offset, "runs back to back");
        let mut at = expect_offset;
        let mut samples = Vec::new();
        for &(_, size, _, _) in &run.samples {
            samples.push(&bytes[at..at + size as usize]);
            at += size as usize;
        }
        expect_offset = at;
        data.push(samples);
    }
    assert_eq!(expect_offset, bytes.len(), "the runs fill the mdat exactly");
    (u32_at(mfhd, 4), runs, data)
}

fn frame(kind: FrameKind, dts: u64, body: &[u8]) -> Arc<Frame> {
    Arc::new(Frame::parse(kind, dts, Bytes::copy_from_slice(body)).expect("frame"))
}

/// An avcC with one SPS/PPS (not a parseable SPS: the size is then 0x0) and `len_size`-byte
/// NAL lengths.
fn avc_header(len_size: u8) -> Arc<Frame> {
    let mut body = vec![0x17, 0, 0, 0, 0];
    body.extend_from_slice(&[1, 0x64, 0x00, 0x1f, 0xfc | (len_size - 1), 0xe1]);
    body.extend_from_slice(&[0, 4, 0x67, 0x64, 0x00, 0x1f, 1, 0, 2, 0x68, 0xee]);
    frame(FrameKind::Video, 0, &body)
}

/// AAC LC, 44.1 kHz, stereo.
fn aac_header() -> Arc<Frame> {
    frame(FrameKind::Audio, 0, &[0xaf, 0, 0x12, 0x10])
}

fn avc(dts: u64, cts: i32, key: bool, nals: &[u8]) -> Arc<Frame> {
    let [_, c0, c1, c2] = cts.to_be_bytes();
    let mut body = vec![if key { 0x17 } else { 0x27 }, 1, c0, c1, c2];
    body.extend_from_slice(nals);
    frame(FrameKind::Video, dts, &body)
}

fn aac(dts: u64, data: &[u8]) -> Arc<Frame> {
    let mut body = vec![0xaf, 1];
    body.extend_from_slice(data);
    frame(FrameKind::Audio, dts, &body)
}

fn h264_aac_init() -> Init {
    init_segment(Some(&avc_header(4)), Some(&aac_header())).expect("init")
}

#[test]
fn init_segment_boxes_nest_and_describe_both_tracks() {
    let init = h264_aac_init();
    assert_eq!(init.codecs, "avc1.64001f,mp4a.40.2");
    assert!(init.has_video && init.has_audio);
    assert_eq!((init.audio_timescale, init.audio_channels), (44100, 2));
    let top = parse(&init.bytes);
    assert_eq!(kinds(&top), ["ftyp", "moov"]);
    assert_eq!(&top[0].body[..4], b"iso6");
    let moov = &top[1];
    assert_eq!(kinds(&moov.children), ["mvhd", "trak", "trak", "mvex"]);
    let mvex = find(&top, &["moov", "mvex"]);
    assert_eq!(kinds(&mvex.children), ["trex", "trex"]);
    assert_eq!(u32_at(mvex.children[0].body, 4), VIDEO_TRACK_ID);
    assert_eq!(u32_at(mvex.children[1].body, 4), AUDIO_TRACK_ID);

    let tracks: Vec<_> = moov
        .children
        .iter()
        .filter(|n| &n.kind == b"trak")
        .collect();
    for (trak, id, handler, timescale, entry) in [
        (tracks[0], 1, b"vide", 90_000, b"avc1"),
        (tracks[1], 2, b"soun", 44_100, b"mp4a"),
    ] {
        assert_eq!(u32_at(find(&trak.children, &["tkhd"]).body, 12), id);
        assert_eq!(
            &find(&trak.children, &["mdia", "hdlr"]).body[8..12],
            handler
        );
        assert_eq!(
            u32_at(find(&trak.children, &["mdia", "mdhd"]).body, 12),
            timescale
        );
        let stsd = find(&trak.children, &["mdia", "minf", "stbl", "stsd"]).body;
        assert_eq!(u32_at(stsd, 4), 1, "one sample entry");
        let entries = parse(&stsd[8..]);
        assert_eq!(&entries[0].kind, entry);
    }
    // The avcC inside the sample entry (after the 78 fixed bytes) is the record, with its
    // NAL length size as 4 bytes.
    let stsd = find(&tracks[0].children, &["mdia", "minf", "stbl", "stsd"]).body;
    let avc1 = &parse(&stsd[8..])[0];
    let avcc = parse(&avc1.body[78..]);
    assert_eq!(kinds(&avcc), ["avcC"]);
    assert_eq!(&avcc[0].body[..6], &[1, 0x64, 0x00, 0x1f, 0xff, 0xe1]);
    // esds: ES_Descriptor > DecoderConfig (MPEG-4 audio) > DecoderSpecificInfo = the ASC.
    let stsd = find(&tracks[1].children, &["mdia", "minf", "stbl", "stsd"]).body;
    let mp4a = &parse(&stsd[8..])[0];
    assert_eq!(u32_at(mp4a.body, 16) >> 16, 2, "channels");
    assert_eq!(u32_at(mp4a.body, 24) >> 16, 44100, "sample rate");
    let esds = &parse(&mp4a.body[28..])[0];
    assert_eq!(&esds.kind, b"esds");
    assert_eq!(
        &esds.body[4..],
        &[
            3, 25, 0, 2, 0, // ES_Descriptor, ES_ID 2
            4, 17, 0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // DecoderConfig
            5, 2, 0x12, 0x10, // the ASC
            6, 1, 2, // SLConfig
        ]
    );
}

#[test]
fn fragments_carry_timing_flags_and_data() {
    let init = h264_aac_init();
    let mut fragmenter = Fragmenter::new(&init);
    let nal = |b: u8| [0, 0, 0, 2, 0x65, b];
    let frames = vec![
        avc(1000, 80, true, &nal(1)),
        aac(1000, &[0xa0]),
        aac(1023, &[0xa1, 0xa1]),
        avc(1040, 0, false, &nal(2)),
        aac(1046, &[0xa2]),
        avc(1080, -40, false, &nal(3)),
    ];
    let bytes = fragmenter.fragment(&frames);
    let (sequence, runs, data) = check_fragment(&bytes);
    assert_eq!(sequence, 1);
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].track_id, runs[0].base_time),
        (VIDEO_TRACK_ID, 90_000)
    );
    assert_eq!(
        runs[0].samples,
        [
            (3600, 6, SYNC_SAMPLE, 7200),
            (3600, 6, NON_SYNC_SAMPLE, 0),
            (3600, 6, NON_SYNC_SAMPLE, -3600), // the last gets the previous delta
        ]
    );
    assert_eq!(data[0], [&nal(1)[..], &nal(2), &nal(3)]);
    // 1000 ms = 44100 ticks; 1023 ms = 45114.3; 1046 ms = 46128.6: deltas of the rounded
    // times (so they add up to the timestamps), the last one a whole AAC frame.
    assert_eq!(
        (runs[1].track_id, runs[1].base_time),
        (AUDIO_TRACK_ID, 44_100)
    );
    assert_eq!(
        runs[1].samples,
        [
            (1014, 1, SYNC_SAMPLE, 0),
            (1015, 2, SYNC_SAMPLE, 0),
            (1024, 1, SYNC_SAMPLE, 0)
        ]
    );
    assert_eq!(data[1], [&[0xa0][..], &[0xa1, 0xa1], &[0xa2]]);

    // The next fragment: its own tfdt, the next sequence number; a lone video frame takes the
    // delta from the previous fragment's last frame.
    let bytes = fragmenter.fragment(&[avc(1200, 0, false, &nal(4))]);
    let (sequence, runs, _) = check_fragment(&bytes);
    assert_eq!(sequence, 2);
    assert_eq!(runs.len(), 1, "no audio, no audio traf");
    assert_eq!(runs[0].base_time, 1200 * 90);
    assert_eq!(runs[0].samples[0].0, 120 * 90);
}

#[test]
fn unusable_frames_are_skipped() {
    let init = h264_aac_init();
    let mut fragmenter = Fragmenter::new(&init);
    let skipped = [
        avc_header(4),
        aac_header(),
        Arc::new(Frame::script(0, Bytes::from_static(b"\x02"))),
        frame(FrameKind::Video, 0, &[0x17, 2, 0, 0, 0]), // end of sequence
        frame(FrameKind::Video, 0, &[0x57, 0]),          // command frame
        frame(FrameKind::Audio, 0, &[0x2f, 0xff, 0xfb]), // MP3: not the init's codec
        frame(
            FrameKind::Video,
            0,
            &[0x91, b'h', b'v', b'c', b'1', 0, 0, 0, 0, 0, 0, 1, 1],
        ),
        avc(0, 0, true, &[]), // no picture data
    ];
    let bytes = fragmenter.fragment(&skipped);
    assert!(bytes.is_empty());
    assert_eq!(fragmenter.next_sequence(), 1, "no sequence number used");

    // Audio-only init: video frames are skipped.
    let audio_only = init_segment(None, Some(&aac_header())).unwrap();
    assert_eq!(audio_only.codecs, "mp4a.40.2");
    assert_eq!(
        kinds(&find(&parse(&audio_only.bytes), &["moov"]).children),
        ["mvhd", "trak", "mvex"]
    );
    let mut fragmenter = Fragmenter::new(&audio_only);
    let bytes = fragmenter.fragment(&[avc(0, 0, true, &[0, 0, 0, 1, 5]), aac(0, &[1])]);
    let (_, runs, _) = check_fragment(&bytes);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].track_id, AUDIO_TRACK_ID);
}

#[test]
fn short_nal_lengths_become_four_bytes() {
    let init = init_segment(Some(&avc_header(2)), None).unwrap();
    let stsd_entry = {
        let top = parse(&init.bytes);
        let stsd = find(&top, &["moov", "trak", "mdia", "minf", "stbl", "stsd"]).body;
        parse(&stsd[8..])[0].body.to_vec()
    };
    assert_eq!(
        stsd_entry[78 + 8 + 4],
        0xff,
        "lengthSizeMinusOne rewritten to 3"
    );
    let mut fragmenter = Fragmenter::new(&init);
    let bytes = fragmenter.fragment(&[
        avc(0, 0, true, &[0, 2, 0x65, 1, 0, 1, 0x06]),
        avc(40, 0, false, &[0, 9, 0x41]), // length past the end: skipped
        avc(80, 0, false, &[0, 1, 0x41]),
    ]);
    let (_, runs, data) = check_fragment(&bytes);
    assert_eq!(runs[0].samples.len(), 2);
    assert_eq!(data[0][0], [0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x06]);
    assert_eq!(data[0][1], [0, 0, 0, 1, 0x41]);
    assert_eq!(runs[0].samples[0].0, 80 * 90, "timed by the frames kept");
}

#[test]
fn av1_temporal_delimiters_are_dropped() {
    // av1C: marker/version, Main profile level 4 (3.0), Main tier 8-bit 4:2:0.
    let header = frame(
        FrameKind::Video,
        0,
        &[0x90, b'a', b'v', b'0', b'1', 0x81, 0x04, 0x0c, 0x00],
    );
    let init = init_segment(Some(&header), None).unwrap();
    assert_eq!(init.codecs, "av01.0.04M.08");
    let mut fragmenter = Fragmenter::new(&init);
    let td = [0x12, 0x00];
    let frame_obu = [0x32, 0x02, 0xaa, 0xbb];
    let mut body = vec![0x91, b'a', b'v', b'0', b'1'];
    body.extend_from_slice(&td);
    body.extend_from_slice(&frame_obu);
    let bytes = fragmenter.fragment(&[frame(FrameKind::Video, 0, &body)]);
    let (_, runs, data) = check_fragment(&bytes);
    assert_eq!(runs[0].samples[0].2, SYNC_SAMPLE);
    assert_eq!(data[0][0], frame_obu);
}

#[test]
fn codec_strings() {
    // HEVC Main, Main tier, level 3.1, progressive frame-only constraint byte.
    let mut hvcc = vec![1, 0x01, 0x60, 0, 0, 0, 0xb0, 0, 0, 0, 0, 0, 93];
    hvcc.resize(23, 0);
    assert_eq!(hevc_codec_string(&hvcc), "hvc1.1.6.L93.B0");
    // Main 10, High tier, level 5.1, profile space 1, two constraint bytes.
    let mut hvcc = vec![1, 0x62, 0x20, 0, 0, 0, 0x90, 0x08, 0, 0, 0, 0, 153];
    hvcc.resize(23, 0);
    assert_eq!(hevc_codec_string(&hvcc), "hvc1.A2.4.H153.90.8");
    assert_eq!(av1_codec_string(0x08, 0x4c), "av01.0.08M.10");
    assert_eq!(av1_codec_string(0x53, 0xe0), "av01.2.19H.12");
    assert_eq!(aac_object_type(&[0x12, 0x10]), Some(2));
    assert_eq!(aac_object_type(&[0x2b, 0x92]), Some(5));
    assert_eq!(
        aac_object_type(&[0xf8, 0xe0]),
        Some(39),
        "escaped AOT (ELD)"
    );
    assert_eq!(
        opus_packet_samples(&[0xfc]),
        Some(960),
        "CELT 20 ms, one frame"
    );
    assert_eq!(
        opus_packet_samples(&[0x0b << 3 | 1]),
        Some(5760),
        "2 × 60 ms"
    );
    assert_eq!(
        opus_packet_samples(&[14 << 3 | 3, 0x03]),
        Some(1440),
        "3 × 10 ms (hybrid)"
    );
}

#[test]
fn opus_head_becomes_dops() {
    let mut head = b"OpusHead".to_vec();
    head.extend_from_slice(&[1, 2, 0x38, 0x01, 0x80, 0xbb, 0, 0, 0xfe, 0xff, 0]);
    let mut body = vec![0x90, b'O', b'p', b'u', b's'];
    body.extend_from_slice(&head);
    let init = init_segment(None, Some(&frame(FrameKind::Audio, 0, &body))).unwrap();
    assert_eq!(init.codecs, "opus");
    assert_eq!((init.audio_timescale, init.audio_channels), (48_000, 2));
    let top = parse(&init.bytes);
    let stsd = find(&top, &["moov", "trak", "mdia", "minf", "stbl", "stsd"]).body;
    let entry = &parse(&stsd[8..])[0];
    assert_eq!(&entry.kind, b"Opus");
    let dops = &parse(&entry.body[28..])[0];
    assert_eq!(&dops.kind, b"dOps");
    // version 0, 2 channels, pre-skip 312, 48 kHz input, gain -2, family 0: big-endian.
    assert_eq!(
        dops.body,
        [0, 2, 0x01, 0x38, 0, 0, 0xbb, 0x80, 0xff, 0xfe, 0]
    );
}

#[test]
fn init_errors() {
    assert_eq!(init_segment(None, None).unwrap_err(), Fmp4Error::NoTracks);
    assert_eq!(
        init_segment(Some(&avc(0, 0, true, &[0, 0, 0, 1, 5])), None).unwrap_err(),
        Fmp4Error::NotSequenceHeader("video")
    );
    assert_eq!(
        init_segment(None, Some(&avc_header(4))).unwrap_err(),
        Fmp4Error::NotSequenceHeader("audio")
    );
    let vp9 = frame(
        FrameKind::Video,
        0,
        &[0x90, b'v', b'p', b'0', b'9', 1, 0, 0, 0],
    );
    assert_eq!(
        init_segment(Some(&vp9), None).unwrap_err(),
        Fmp4Error::UnsupportedCodec(CodecId::Vp9)
    );
    assert_eq!(
        init_segment(
            Some(&frame(FrameKind::Video, 0, &[0x17, 0, 0, 0, 0, 1, 2])),
            None
        )
        .unwrap_err(),
        Fmp4Error::BadRecord("avcC")
    );
    let flac = frame(FrameKind::Audio, 0, &[0x90, b'f', b'L', b'a', b'C', 0]);
    assert_eq!(
        init_segment(None, Some(&flac)).unwrap_err(),
        Fmp4Error::UnsupportedCodec(CodecId::Flac)
    );
}

#[test]
fn real_fixture_records() {
    for (name, codecs, size) in [
        ("h264_aac.flv", "avc1.4d401e,mp4a.40.2", (640, 360)),
        ("h264_aac_bframes.flv", "avc1.64001e,mp4a.40.2", (640, 360)),
    ] {
        let tags = sluice_testkit::media::fixture_tags(name);
        let header = |type_id| {
            let tag = tags
                .iter()
                .find(|t| t.type_id == type_id && t.is_sequence_header())
                .expect("sequence header");
            let kind = if type_id == TAG_VIDEO {
                FrameKind::Video
            } else {
                FrameKind::Audio
            };
            Frame::parse(kind, 0, tag.payload.clone()).unwrap()
        };
        let init = init_segment(Some(&header(TAG_VIDEO)), Some(&header(TAG_AUDIO))).unwrap();
        assert_eq!(init.codecs, codecs, "{name}");
        assert_eq!((init.width, init.height), size, "{name}");
        parse(&init.bytes);
    }
}

fn arbitrary_frame() -> impl proptest::strategy::Strategy<Value = Arc<Frame>> {
    use proptest::prelude::*;
    let nals = proptest::collection::vec(any::<u8>(), 0..40);
    (0u8..6, 0u64..5000, -200i32..200, any::<bool>(), nals).prop_map(
        |(shape, dts, cts, key, data)| {
            let body = match shape {
                // Well-formed AVC / AAC frames with random contents.
                0 => {
                    let mut b = vec![0, 0, 0, data.len() as u8];
                    b.extend_from_slice(&data);
                    return avc(dts, cts, key, &b);
                }
                1 => return aac(dts, &data),
                2 => {
                    let mut b = vec![0x90 | shape, b'a', b'v', b'0', b'1'];
                    b.extend_from_slice(&data);
                    b
                }
                _ => data,
            };
            let kind = if shape % 2 == 0 {
                FrameKind::Video
            } else {
                FrameKind::Audio
            };
            Frame::parse(kind, dts, Bytes::from(body))
                .map(Arc::new)
                .unwrap_or_else(|_| aac(dts, &[]))
        },
    )
}

proptest::proptest! {
    #[test]
    fn random_frames_never_panic_and_boxes_add_up(
        parts in proptest::collection::vec(proptest::collection::vec(arbitrary_frame(), 0..12), 1..5),
        len_size in 1u8..=4,
    ) {
        for init in [
            h264_aac_init(),
            init_segment(Some(&avc_header(len_size)), None).unwrap(),
        ] {
            let mut fragmenter = Fragmenter::new(&init);
            for frames in &parts {
                let bytes = fragmenter.fragment(frames);
                if !bytes.is_empty() {
                    let (_, runs, _) = check_fragment(&bytes);
                    proptest::prop_assert!(!runs.is_empty());
                }
            }
        }
    }
}

#[test]
fn equal_sequence_headers_give_equal_inits() {
    assert_eq!(h264_aac_init(), h264_aac_init());
    let other = init_segment(Some(&avc_header(2)), Some(&aac_header())).unwrap();
    assert_ne!(other, h264_aac_init());
}
