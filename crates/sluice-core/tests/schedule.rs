//! The scheduling policy with injected time: latency-budget jumps, drop order, start
//! positions, and that one viewer's trouble costs the others nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use sluice_core::schedule::ScheduleSettings;
use sluice_core::{CacheSettings, Cursor, Publisher, Registry, Schedule, StartAt, StreamKey};
use sluice_media::{Frame, FrameKind};

const CACHE: CacheSettings = CacheSettings {
    gop_cache: true,
    gops: 4,
    max_bytes: 64 << 20,
};
const FRAME_MS: u64 = 40;

/// A publisher whose frames arrive at injected instants: frame time `ts` arrives at
/// `t0 + ts`.
struct Source {
    p: Publisher,
    t0: Instant,
    header_marker: u8,
}

impl Source {
    fn new(reg: &Registry, t0: Instant) -> Source {
        let mut p = reg
            .publish(&StreamKey::new("live", "s"), CACHE, false, t0)
            .expect("publish");
        p.push_metadata(0, Bytes::from_static(b"\x02\x00\x0aonMetaData\x05"), t0)
            .expect("metadata");
        let mut s = Source {
            p,
            t0,
            header_marker: 0,
        };
        s.headers(0, 1);
        s.p.push_media(
            FrameKind::Audio,
            0,
            Bytes::from_static(&[0xaf, 0, 0x12, 0x10]),
            t0,
        )
        .expect("aac header");
        s
    }

    fn at(&self, ts: u64) -> Instant {
        self.t0 + Duration::from_millis(ts)
    }

    fn headers(&mut self, ts: u64, marker: u8) {
        self.header_marker = marker;
        let body = Bytes::from(vec![0x17, 0, 0, 0, 0, marker]);
        self.p
            .push_media(FrameKind::Video, ts as u32, body, self.at(ts))
            .expect("avc header");
    }

    /// Video at `ts`: a keyframe every `gop_ms`, every other inter frame disposable; audio
    /// after each video frame.
    fn video_and_audio(&mut self, ts: u64, gop_ms: u64) {
        let frame_type = if ts.is_multiple_of(gop_ms) {
            0x17
        } else if (ts / FRAME_MS) % 2 == 1 {
            0x37
        } else {
            0x27
        };
        let body = Bytes::from(vec![frame_type, 1, 0, 0, 0, 9]);
        self.p
            .push_media(FrameKind::Video, ts as u32, body, self.at(ts))
            .expect("video");
        let audio = Bytes::from_static(&[0xaf, 1, 0x21]);
        self.p
            .push_media(FrameKind::Audio, ts as u32 + 1, audio, self.at(ts))
            .expect("audio");
    }

    /// Frames from `from` (inclusive) to `to` (exclusive).
    fn run(&mut self, from: u64, to: u64, gop_ms: u64) {
        let mut ts = from;
        while ts < to {
            self.video_and_audio(ts, gop_ms);
            ts += FRAME_MS;
        }
    }
}

fn viewer(reg: &Registry) -> Cursor {
    reg.subscribe(&StreamKey::new("live", "s"), CACHE)
}

fn read(c: &mut Cursor, now: Instant, schedule: &Schedule) -> Vec<Arc<Frame>> {
    let mut out = Vec::new();
    c.read(&mut out, usize::MAX, now, schedule);
    out
}

fn schedule(f: impl FnOnce(&mut ScheduleSettings)) -> Schedule {
    let mut s = ScheduleSettings::default();
    f(&mut s);
    s.resolve()
}

fn media(frames: &[Arc<Frame>]) -> Vec<(FrameKind, u64)> {
    frames
        .iter()
        .filter(|f| !f.seq_header && f.kind != FrameKind::Script)
        .map(|f| (f.kind, f.dts))
        .collect()
}

#[test]
fn a_viewer_over_budget_jumps_to_the_newest_keyframe_and_others_lose_nothing() {
    let t0 = Instant::now();
    let reg = Registry::new();
    let mut src = Source::new(&reg, t0);
    let budget = schedule(|s| s.max_latency_ms = 500);
    let mut slow = viewer(&reg);
    let mut fast = viewer(&reg);
    src.run(0, 200, 1000);
    read(&mut slow, src.at(200), &budget);

    // The slow viewer reads nothing for 3 s; the fast one reads every frame as it comes.
    let mut fast_got = media(&read(&mut fast, src.at(200), &budget));
    let mut ts = 200;
    while ts < 3200 {
        src.video_and_audio(ts, 1000);
        fast_got.extend(media(&read(&mut fast, src.at(ts), &budget)));
        ts += FRAME_MS;
    }
    let now = src.at(3200);
    let got = read(&mut slow, now, &budget);
    let drops = slow.take_drops();
    assert_eq!(drops.latency_jumps, 1);
    assert_eq!(drops.ring_jumps, 0);
    // From the keyframe at 3000 on; the headers did not change, so none come again.
    let first = &got[0];
    assert!(first.keyframe && first.dts == 3000, "{first:?}");
    assert!(got.iter().all(|f| f.dts >= 3000));
    assert_eq!(drops.skipped_frames, (3000 - 200) / FRAME_MS * 2);
    // Nothing it got is older than the budget.
    assert!(
        got.iter()
            .all(|f| now - src.at(f.dts.min(3160) / 40 * 40) <= Duration::from_millis(500))
    );

    // The fast viewer got every frame, and no drops.
    assert_eq!(fast_got.len() as u64, 3200 / FRAME_MS * 2);
    assert!(fast.take_drops().is_empty());
}

#[test]
fn a_jump_resends_only_the_headers_that_changed() {
    let t0 = Instant::now();
    let reg = Registry::new();
    let mut src = Source::new(&reg, t0);
    let budget = schedule(|s| s.max_latency_ms = 500);
    let mut v = viewer(&reg);
    src.run(0, 1000, 1000);
    read(&mut v, src.at(1000), &budget);
    // The encoder restarts with a new video configuration at 2000.
    src.run(1000, 2000, 1000);
    src.headers(2000, 2);
    src.run(2000, 2400, 1000);
    let got = read(&mut v, src.at(2400), &budget);
    assert_eq!(v.take_drops().latency_jumps, 1);
    let header = &got[0];
    assert!(header.seq_header && header.kind == FrameKind::Video);
    assert_eq!(header.payload.last(), Some(&2), "the new configuration");
    assert!(got[1].keyframe && got[1].dts == 2000);
    assert_eq!(
        got.iter()
            .filter(|f| f.seq_header || f.kind == FrameKind::Script)
            .count(),
        1,
        "metadata and audio config unchanged: not re-sent"
    );
}

#[test]
fn with_a_gop_longer_than_the_budget_a_late_viewer_goes_to_the_live_edge() {
    let t0 = Instant::now();
    let reg = Registry::new();
    let mut src = Source::new(&reg, t0);
    let budget = schedule(|s| s.max_latency_ms = 500);
    let mut v = viewer(&reg);
    src.run(0, 40, 4000);
    read(&mut v, src.at(40), &budget);
    src.run(40, 2000, 4000);
    // Behind by ~2 s inside a 4 s GOP whose keyframe is itself too old.
    assert!(read(&mut v, src.at(2000), &budget).is_empty());
    assert_eq!(v.take_drops().latency_jumps, 1);
    // Reading as frames come from here on: audio resumes at once; video waits for the next
    // keyframe.
    let mut got = Vec::new();
    let mut ts = 2000;
    while ts < 4080 {
        src.video_and_audio(ts, 4000);
        got.extend(media(&read(&mut v, src.at(ts), &budget)));
        ts += FRAME_MS;
    }
    assert!(v.take_drops().latency_jumps == 0);
    let first_video = got.iter().find(|(k, _)| *k == FrameKind::Video);
    assert_eq!(first_video, Some(&(FrameKind::Video, 4000)));
    assert!(
        got.iter()
            .any(|&(k, dts)| k == FrameKind::Audio && dts < 4000)
    );
}

#[test]
fn behind_a_little_drops_disposable_frames_then_inter_frames_never_audio() {
    let t0 = Instant::now();
    let reg = Registry::new();
    let mut src = Source::new(&reg, t0);
    let policy = schedule(|s| {
        s.drop_disposable_after_ms = 200;
        s.drop_inter_after_ms = 600;
    });
    let mut v = viewer(&reg);
    src.run(0, 40, 2000);
    read(&mut v, src.at(40), &policy);

    // Up to 400 ms behind: disposable frames more than 200 ms late go; inter frames and
    // audio stay.
    src.run(40, 440, 2000);
    let now = src.at(440);
    let got = read(&mut v, now, &policy);
    let drops = v.take_drops();
    assert_eq!(drops.disposable, 3, "{drops:?}");
    assert_eq!(drops.inter, 0);
    let late = |f: &Arc<Frame>| now - src.at(f.dts / 40 * 40) > Duration::from_millis(200);
    assert!(!got.iter().any(|f| f.disposable && late(f)));
    assert!(
        got.iter().any(|f| f.disposable),
        "recent disposable frames are kept"
    );
    assert_eq!(
        got.iter().filter(|f| f.kind == FrameKind::Audio).count(),
        (440 - 40) / 40
    );

    // Over 600 ms behind: inter frames go too, until the next keyframe; audio never.
    src.run(440, 2200, 2000);
    let got = media(&read(&mut v, src.at(2200), &policy));
    let drops = v.take_drops();
    assert!(drops.inter > 0, "{drops:?}");
    assert_eq!(drops.latency_jumps, 0);
    let video: Vec<u64> = got
        .iter()
        .filter(|(k, _)| *k == FrameKind::Video)
        .map(|(_, d)| *d)
        .collect();
    assert_eq!(video.first(), Some(&2000), "video resumes at the keyframe");
    assert_eq!(
        got.iter().filter(|(k, _)| *k == FrameKind::Audio).count() as u64,
        (2200 - 440) / 40
    );
}

#[test]
fn start_live_waits_for_a_keyframe_and_start_gop_does_not_count_the_burst_as_late() {
    let t0 = Instant::now();
    let reg = Registry::new();
    let mut src = Source::new(&reg, t0);
    src.run(0, 1600, 1000);

    // Starting on the cached GOP: frames that arrived up to 600 ms ago, with a 300 ms
    // budget, are not a reason to jump (they count from the viewer's start).
    let gop = schedule(|s| s.max_latency_ms = 300);
    let mut v = viewer(&reg);
    let got = read(&mut v, src.at(1600), &gop);
    assert!(v.take_drops().is_empty());
    let first_media = got
        .iter()
        .find(|f| !f.seq_header && f.kind != FrameKind::Script);
    assert_eq!(first_media.map(|f| (f.keyframe, f.dts)), Some((true, 1000)));
    assert_eq!(got.iter().filter(|f| f.seq_header).count(), 2);

    // Starting at the live edge: headers now, audio from now, video from the next keyframe.
    let live = schedule(|s| s.start = StartAt::Live);
    let mut v = viewer(&reg);
    let got = read(&mut v, src.at(1600), &live);
    assert!(
        got.iter()
            .all(|f| f.seq_header || f.kind == FrameKind::Script)
    );
    assert_eq!(got.len(), 3);
    src.run(1600, 2080, 1000);
    let got = media(&read(&mut v, src.at(2080), &live));
    assert_eq!(
        got.iter().find(|(k, _)| *k == FrameKind::Video),
        Some(&(FrameKind::Video, 2000))
    );
    assert_eq!(got[0], (FrameKind::Audio, 1601));
}

#[test]
fn frames_given_back_are_decided_again_with_the_time_then() {
    let t0 = Instant::now();
    let reg = Registry::new();
    let mut src = Source::new(&reg, t0);
    let budget = schedule(|s| s.max_latency_ms = 500);
    let mut v = viewer(&reg);
    src.run(0, 400, 1000);
    let first = read(&mut v, src.at(400), &budget);
    assert!(first.len() > 6);
    // The socket took all but the last six: they come again, the same frames.
    v.unread(&first[first.len() - 6..]);
    let again = read(&mut v, src.at(400), &budget);
    assert_eq!(again.len(), 6);
    assert!(
        again
            .iter()
            .zip(&first[first.len() - 6..])
            .all(|(a, b)| Arc::ptr_eq(a, b))
    );

    // Given back and then left too long: the next read jumps over them.
    src.run(400, 1400, 1000);
    let batch = read(&mut v, src.at(1400), &budget);
    v.take_drops();
    v.unread(&batch[2..]);
    src.run(1400, 2100, 1000);
    let late = read(&mut v, src.at(2100), &budget);
    assert_eq!(v.take_drops().latency_jumps, 1);
    assert!(late[0].keyframe && late[0].dts == 2000, "{:?}", late[0]);

    // Headers pushed by a start and given back are sent again first.
    let mut w = viewer(&reg);
    let start = read(&mut w, src.at(2100), &budget);
    assert!(start[0].kind == FrameKind::Script);
    w.unread(&start);
    let again = read(&mut w, src.at(2100), &budget);
    assert_eq!(again.len(), start.len());
    assert!(again.iter().zip(&start).all(|(a, b)| Arc::ptr_eq(a, b)));
}
