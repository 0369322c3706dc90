//! The stream ring and registry with injected time: where viewers start, how they skip, how
//! publishers come, collide and return.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use sluice_core::{CacheSettings, Publisher, ReadState, Registry, Schedule, StreamKey};
use sluice_media::{Frame, FrameKind};

const CACHE: CacheSettings = CacheSettings {
    gop_cache: true,
    gops: 2,
    max_bytes: 1 << 20,
};

fn avc(keyframe: bool, seq: bool, marker: u8) -> Bytes {
    let frame_type = if keyframe || seq { 0x17 } else { 0x27 };
    Bytes::from(vec![frame_type, u8::from(!seq), 0, 0, 0, marker, marker])
}

fn aac(seq: bool, marker: u8) -> Bytes {
    Bytes::from(vec![0xaf, u8::from(!seq), 0x12, marker])
}

fn video(p: &mut Publisher, ts: u32, keyframe: bool, marker: u8) {
    p.push_media(
        FrameKind::Video,
        ts,
        avc(keyframe, false, marker),
        Instant::now(),
    )
    .unwrap();
}

fn headers(p: &mut Publisher, ts: u32, marker: u8) {
    p.push_metadata(
        ts,
        Bytes::from_static(b"\x02\x00\x0aonMetaData\x03\x00\x00\x09"),
        Instant::now(),
    )
    .unwrap();
    p.push_media(
        FrameKind::Video,
        ts,
        avc(true, true, marker),
        Instant::now(),
    )
    .unwrap();
    p.push_media(FrameKind::Audio, ts, aac(true, marker), Instant::now())
        .unwrap();
}

fn read_all(cursor: &mut sluice_core::Cursor) -> (Vec<Arc<Frame>>, ReadState) {
    let mut out = Vec::new();
    let state = cursor.read(&mut out, usize::MAX, Instant::now(), &Schedule::default());
    (out, state)
}

fn key() -> StreamKey {
    StreamKey::new("live", "cam")
}

#[test]
fn new_viewer_gets_metadata_and_headers_then_the_newest_keyframe() {
    let reg = Registry::new();
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    headers(&mut p, 0, 1);
    video(&mut p, 0, true, 10);
    video(&mut p, 40, false, 11);
    video(&mut p, 80, true, 12);
    p.push_media(FrameKind::Audio, 90, aac(false, 13), Instant::now())
        .unwrap();
    video(&mut p, 120, false, 14);

    let mut viewer = reg.subscribe(&key(), CACHE);
    let (frames, state) = read_all(&mut viewer);
    assert_eq!(state, ReadState::Frames);
    let kinds: Vec<_> = frames
        .iter()
        .map(|f| (f.kind, f.seq_header, f.keyframe, f.dts))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (FrameKind::Script, false, false, 0),
            (FrameKind::Video, true, false, 0),
            (FrameKind::Audio, true, false, 0),
            (FrameKind::Video, false, true, 80),
            (FrameKind::Audio, false, false, 90),
            (FrameKind::Video, false, false, 120),
        ]
    );
    assert_eq!(read_all(&mut viewer).1, ReadState::Pending);
    video(&mut p, 160, false, 15);
    let (frames, _) = read_all(&mut viewer);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].dts, 160);
}

#[test]
fn without_gop_cache_a_viewer_waits_for_the_next_keyframe() {
    let reg = Registry::new();
    let cache = CacheSettings {
        gop_cache: false,
        ..CACHE
    };
    let mut p = reg.publish(&key(), cache, false, Instant::now()).unwrap();
    headers(&mut p, 0, 1);
    video(&mut p, 0, true, 10);
    video(&mut p, 40, false, 11);
    let mut viewer = reg.subscribe(&key(), cache);
    let (frames, _) = read_all(&mut viewer);
    assert_eq!(frames.len(), 3, "headers only");
    assert!(
        frames
            .iter()
            .all(|f| f.seq_header || f.kind == FrameKind::Script)
    );
    video(&mut p, 80, false, 12);
    p.push_media(FrameKind::Audio, 81, aac(false, 2), Instant::now())
        .unwrap();
    let dts: Vec<_> = read_all(&mut viewer).0.iter().map(|f| f.dts).collect();
    assert_eq!(
        dts,
        vec![81],
        "inter frames before the keyframe are skipped, audio is not"
    );
    video(&mut p, 120, true, 13);
    video(&mut p, 160, false, 14);
    let dts: Vec<_> = read_all(&mut viewer).0.iter().map(|f| f.dts).collect();
    assert_eq!(dts, vec![120, 160]);
}

#[test]
fn a_viewer_that_falls_out_of_the_ring_skips_to_the_newest_keyframe() {
    let reg = Registry::new();
    let cache = CacheSettings { gops: 1, ..CACHE };
    let mut p = reg.publish(&key(), cache, false, Instant::now()).unwrap();
    headers(&mut p, 0, 1);
    video(&mut p, 0, true, 10);
    let mut viewer = reg.subscribe(&key(), cache);
    read_all(&mut viewer);
    // Three more GOPs while the viewer reads nothing: with one GOP kept, it fell out.
    for gop in 1..=3u32 {
        video(&mut p, gop * 1000, true, 20);
        video(&mut p, gop * 1000 + 40, false, 21);
    }
    let (frames, _) = read_all(&mut viewer);
    let drops = viewer.take_drops();
    assert_eq!(drops.ring_jumps, 1);
    assert_eq!(drops.latency_jumps, 0);
    assert_eq!(
        viewer
            .stream()
            .stats
            .viewer_skips
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The newest GOP from its keyframe; the headers did not change, so none are re-sent.
    let summary: Vec<_> = frames
        .iter()
        .map(|f| (f.seq_header || f.kind == FrameKind::Script, f.dts))
        .collect();
    assert_eq!(summary, vec![(false, 3000), (false, 3040)]);
    assert!(frames[0].keyframe);
}

#[test]
fn byte_budget_evicts_old_gops_but_keeps_the_live_one() {
    let reg = Registry::new();
    let cache = CacheSettings {
        gop_cache: true,
        gops: 10,
        max_bytes: 100,
    };
    let mut p = reg.publish(&key(), cache, false, Instant::now()).unwrap();
    for i in 0..40u32 {
        video(&mut p, i * 40, i % 10 == 0, 1);
    }
    let info = p.stream().info(Instant::now());
    assert!(info.cached_bytes <= 100, "{info:?}");
    let mut viewer = reg.subscribe(&key(), cache);
    let (frames, _) = read_all(&mut viewer);
    assert!(frames[0].keyframe, "a viewer still starts on a keyframe");
    assert_eq!(frames[0].dts, 30 * 40);
}

#[test]
fn a_second_publisher_is_refused_or_takes_over() {
    let reg = Registry::new();
    let mut first = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    assert!(reg.publish(&key(), CACHE, false, Instant::now()).is_err());
    let mut second = reg.publish(&key(), CACHE, true, Instant::now()).unwrap();
    let err = first
        .push_media(FrameKind::Video, 0, avc(true, false, 1), Instant::now())
        .unwrap_err();
    assert_eq!(err, sluice_core::stream::IngestError::Displaced);
    video(&mut second, 0, true, 2);
    drop(first);
    assert!(
        reg.get(&key()).unwrap().is_publishing(),
        "the displaced publisher's exit leaves the new one"
    );
}

#[test]
fn a_returning_publisher_continues_the_timeline_and_viewers_carry_on() {
    let reg = Registry::new();
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    headers(&mut p, 0, 1);
    video(&mut p, 0, true, 10);
    video(&mut p, 5000, false, 11);
    let mut viewer = reg.subscribe(&key(), CACHE);
    read_all(&mut viewer);
    let left_at = Instant::now();
    drop(p);
    assert!(matches!(read_all(&mut viewer).1, ReadState::Unpublished(t) if t >= left_at));
    assert!(reg.get(&key()).is_some(), "kept while a viewer waits");

    // It comes back with timestamps from zero and a changed sequence header.
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    headers(&mut p, 0, 2);
    video(&mut p, 0, true, 20);
    video(&mut p, 40, false, 21);
    let (frames, _) = read_all(&mut viewer);
    let video_header = frames
        .iter()
        .find(|f| f.kind == FrameKind::Video && f.seq_header)
        .unwrap();
    assert_eq!(
        video_header.payload[5], 2,
        "the new sequence header reaches the viewer"
    );
    let dts: Vec<_> = frames.iter().map(|f| f.dts).collect();
    assert!(
        dts.iter().all(|&d| d > 5000),
        "rebased after the old timeline: {dts:?}"
    );
    assert!(dts.windows(2).all(|w| w[0] <= w[1]), "monotonic: {dts:?}");
}

#[test]
fn a_restarted_timeline_continues_from_the_first_coded_frame_not_the_headers() {
    // An upstream switch: the new source starts a viewer at its cached GOP, sending the
    // headers at timestamp 0 and the GOP at its own, much later, timestamps.
    let reg = Registry::new();
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    headers(&mut p, 0, 1);
    video(&mut p, 0, true, 10);
    video(&mut p, 4000, false, 11);
    let mut viewer = reg.subscribe(&key(), CACHE);
    read_all(&mut viewer);
    p.restart_timeline();
    headers(&mut p, 0, 1);
    video(&mut p, 8600, true, 20);
    video(&mut p, 8640, false, 21);
    let (frames, _) = read_all(&mut viewer);
    let dts: Vec<_> = frames.iter().map(|f| f.dts).collect();
    let keyframe = frames.iter().find(|f| f.keyframe && !f.seq_header).unwrap();
    assert_eq!(
        keyframe.dts, 4001,
        "continues right after the old timeline: {dts:?}"
    );
    assert_eq!(dts.last(), Some(&4041), "{dts:?}");
    assert!(
        dts.iter().all(|&d| d == 4001 || d == 4041),
        "headers too: {dts:?}"
    );
}

#[test]
fn built_frames_keep_their_flags_and_64_bit_time_and_are_rebased_after_a_switch() {
    // Frames an origin pull built (parsed once upstream) go into the ring as they are.
    let parsed = |kind, payload: Bytes| Frame::parse(kind, 0, payload).unwrap();
    let at = |dts: u64, frame: Frame| {
        Frame::from_parts(sluice_media::FrameParts {
            dts,
            ..frame.to_parts()
        })
    };
    let reg = Registry::new();
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    let far = u64::from(u32::MAX) + 1000;
    let now = Instant::now();
    p.push_frame(at(far, parsed(FrameKind::Video, avc(true, true, 1))), now)
        .unwrap();
    p.push_frame(at(far, parsed(FrameKind::Video, avc(true, false, 2))), now)
        .unwrap();
    p.push_frame(
        at(far + 40, parsed(FrameKind::Video, avc(false, false, 3))),
        now,
    )
    .unwrap();
    let mut viewer = reg.subscribe(&key(), CACHE);
    let (frames, _) = read_all(&mut viewer);
    let got: Vec<_> = frames
        .iter()
        .map(|f| (f.dts, f.seq_header, f.keyframe))
        .collect();
    assert_eq!(
        got,
        vec![
            (far, true, false),
            (far, false, true),
            (far + 40, false, false)
        ]
    );

    // A switch: the new source's metadata and headers at 0 do not fix the offset, its
    // first coded frame does, just after the old timeline.
    p.restart_timeline();
    p.push_frame(Frame::script(0, Bytes::from_static(b"\x02")), now)
        .unwrap();
    p.push_frame(at(0, parsed(FrameKind::Video, avc(true, true, 4))), now)
        .unwrap();
    p.push_frame(at(9000, parsed(FrameKind::Video, avc(true, false, 5))), now)
        .unwrap();
    p.push_frame(
        at(9040, parsed(FrameKind::Video, avc(false, false, 6))),
        now,
    )
    .unwrap();
    let dts: Vec<_> = read_all(&mut viewer).0.iter().map(|f| f.dts).collect();
    assert_eq!(dts, vec![far + 41, far + 41, far + 41, far + 81]);
}

#[test]
fn a_bad_payload_is_refused_with_its_flv_error() {
    let reg = Registry::new();
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    assert_eq!(
        p.push_media(FrameKind::Video, 0, Bytes::new(), Instant::now()),
        Err(sluice_core::stream::IngestError::BadPayload(
            sluice_media::FlvError::Empty
        ))
    );
}

#[test]
fn timestamps_unwrap_past_32_bits() {
    let reg = Registry::new();
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    video(&mut p, u32::MAX - 20, true, 1);
    video(&mut p, 19, false, 2);
    let mut viewer = reg.subscribe(&key(), CACHE);
    let dts: Vec<_> = read_all(&mut viewer).0.iter().map(|f| f.dts).collect();
    assert_eq!(
        dts,
        vec![u64::from(u32::MAX) - 20, u64::from(u32::MAX) + 20]
    );
}

#[test]
fn streams_are_forgotten_when_nobody_publishes_or_watches() {
    let reg = Registry::new();
    let viewer = reg.subscribe(&key(), CACHE);
    assert_eq!(reg.len(), 1);
    let p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    drop(viewer);
    assert_eq!(reg.len(), 1, "still published");
    drop(p);
    assert!(reg.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_viewer_that_read_the_last_frames_learns_the_publisher_left_without_waiting() {
    let reg = Registry::new();
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    headers(&mut p, 0, 1);
    let mut viewer = reg.subscribe(&key(), CACHE);
    read_all(&mut viewer);
    video(&mut p, 0, true, 10);
    drop(p);
    // Its last frames and the publisher's leaving came together: one read returns the
    // frames, and the wait after it must not hang on a change that will never come.
    assert_eq!(read_all(&mut viewer).1, ReadState::Frames);
    tokio::time::timeout(Duration::from_secs(5), viewer.changed())
        .await
        .expect("woken at once");
    assert!(matches!(read_all(&mut viewer).1, ReadState::Unpublished(_)));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_viewer_is_woken_by_the_first_frame() {
    let reg = Registry::new();
    let mut viewer = reg.subscribe(&key(), CACHE);
    assert_eq!(read_all(&mut viewer).1, ReadState::WaitingForPublisher);
    let reg2 = reg.clone();
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut p = reg2.publish(&key(), CACHE, false, Instant::now()).unwrap();
        video(&mut p, 0, true, 1);
        p
    });
    loop {
        let (frames, state) = read_all(&mut viewer);
        if state == ReadState::Frames {
            assert!(frames[0].keyframe);
            break;
        }
        tokio::time::timeout(Duration::from_secs(5), viewer.changed())
            .await
            .unwrap();
    }
    drop(publisher.await.unwrap());
}

#[test]
fn a_viewer_waiting_before_the_first_frame_gets_every_frame() {
    let reg = Registry::new();
    let mut viewer = reg.subscribe(&key(), CACHE);
    assert_eq!(read_all(&mut viewer).1, ReadState::WaitingForPublisher);
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    headers(&mut p, 0, 1);
    p.push_media(FrameKind::Audio, 0, aac(false, 2), Instant::now())
        .unwrap();
    video(&mut p, 0, true, 10);
    video(&mut p, 40, false, 11);
    video(&mut p, 80, true, 12);
    let (frames, _) = read_all(&mut viewer);
    assert_eq!(
        frames.len(),
        7,
        "metadata, two headers, audio before the keyframe, three video"
    );
    assert_eq!(frames[3].kind, FrameKind::Audio);
}

#[test]
fn a_shared_writer_delivers_from_the_tail_and_hands_the_viewer_back_exactly() {
    use sluice_core::Tail;
    let reg = Registry::new();
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    headers(&mut p, 0, 1);
    video(&mut p, 0, true, 10);
    let mut viewer = reg.subscribe(&key(), CACHE);
    assert_eq!(viewer.live_position(), None, "not started");
    let (first, _) = read_all(&mut viewer);
    assert_eq!(first.len(), 4);
    let at = viewer.live_position().expect("caught up");
    let stream = viewer.stream().clone();

    // A writer delivers what follows, new headers included, from the tail.
    video(&mut p, 40, false, 11);
    p.push_media(FrameKind::Video, 80, avc(true, true, 2), Instant::now())
        .unwrap();
    video(&mut p, 80, true, 12);
    assert_eq!(viewer.live_position(), None, "frames it has not read");
    let mut tail = Vec::new();
    assert!(matches!(
        stream.tail(at, &mut tail, usize::MAX),
        Tail::Frames {
            first_arrived: Some(_)
        }
    ));
    assert_eq!(tail.len(), 3);
    let new_header = tail[1].clone();
    assert!(new_header.seq_header);

    // Handed back after all three: the cursor goes on after them, with the new header
    // counted as sent.
    viewer.resume_at(at + 3, &[new_header]);
    video(&mut p, 120, false, 13);
    let (rest, _) = read_all(&mut viewer);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].payload, avc(false, false, 13));
    assert_eq!(viewer.live_position(), Some(at + 4));

    // A position out of the ring, and a publisher gone, are told apart.
    let mut out = Vec::new();
    for ts in (160..2000).step_by(40) {
        video(&mut p, ts, ts % 400 == 0, 20);
    }
    assert_eq!(stream.tail(at, &mut out, usize::MAX), Tail::Evicted);
    drop(p);
    assert_eq!(stream.tail(at + 4, &mut out, usize::MAX), Tail::Unpublished);
    assert!(out.is_empty());
}

#[test]
fn a_waiting_viewer_gets_a_publish_that_came_and_went_between_its_reads() {
    let reg = Registry::new();
    let mut viewer = reg.subscribe(&key(), CACHE);
    assert_eq!(read_all(&mut viewer).1, ReadState::WaitingForPublisher);
    let mut p = reg.publish(&key(), CACHE, false, Instant::now()).unwrap();
    headers(&mut p, 0, 1);
    video(&mut p, 0, true, 10);
    video(&mut p, 40, false, 11);
    drop(p);
    let (frames, state) = read_all(&mut viewer);
    assert_eq!(state, ReadState::Frames);
    assert_eq!(frames.len(), 5, "headers and both frames");
    assert!(matches!(read_all(&mut viewer).1, ReadState::Unpublished(_)));

    // One arriving after the publisher left waits for the next one instead.
    let mut late = reg.subscribe(&key(), CACHE);
    assert_eq!(read_all(&mut late).1, ReadState::WaitingForPublisher);
    assert_eq!(read_all(&mut late).1, ReadState::WaitingForPublisher);
}
