use super::*;
use crate::window::PartInfo;
use proptest::prelude::*;
use sluice_testkit::hls as checker;

const PART_MS: u32 = 200;

fn part(duration_ms: u32, independent: bool) -> PartInfo {
    PartInfo {
        duration_ms,
        independent,
        bytes: 100,
    }
}

/// A segment of `parts` parts of 200 ms, the first independent.
fn segment(msn: u64, parts: usize, complete: bool) -> SegmentInfo {
    SegmentInfo {
        msn,
        init_id: 0,
        discontinuity: false,
        pdt_ms: 1_700_000_000_000 + msn * 1000,
        parts: (0..parts).map(|i| part(PART_MS, i == 0)).collect(),
        complete,
    }
}

/// Segments `first..first + complete` of 1 s each, then an open one with `open_parts` parts.
fn window(first: u64, complete: u64, open_parts: usize) -> Window {
    let mut w = Window {
        container: Container::Fmp4,
        target_duration_s: 1,
        part_target_ms: PART_MS,
        discontinuity_sequence: 0,
        segments: Default::default(),
    };
    for msn in first..first + complete {
        w.segments.push_back(segment(msn, 5, true));
    }
    w.segments
        .push_back(segment(first + complete, open_parts, false));
    w
}

fn render(w: &Window, skip: Skip) -> String {
    let mut out = String::new();
    media_playlist(w, skip, &mut out);
    out
}

#[track_caller]
fn valid(text: &str) -> checker::Playlist {
    let parsed = checker::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    if let Err(errors) = checker::check_media_playlist(&parsed) {
        panic!("{errors:#?}\n{text}");
    }
    parsed
}

#[test]
fn resources_parse_strictly() {
    use Resource::*;
    let f = Container::Fmp4;
    assert_eq!(parse_resource("media.m3u8", f), Some(MediaPlaylist));
    assert_eq!(parse_resource("init-3.mp4", f), Some(Init(3)));
    assert_eq!(parse_resource("seg-12.m4s", f), Some(Segment(12)));
    assert_eq!(parse_resource("seg-0.m4s", f), Some(Segment(0)));
    assert_eq!(parse_resource("part-12.3.m4s", f), Some(Part(12, 3)));
    assert_eq!(
        parse_resource("seg-12.ts", Container::Ts),
        Some(Segment(12))
    );
    assert_eq!(
        parse_resource("seg-18446744073709551615.m4s", f),
        Some(Segment(u64::MAX))
    );
    for bad in [
        "seg-012.m4s",
        "seg-+12.m4s",
        "seg--1.m4s",
        "seg-.m4s",
        "seg-1 .m4s",
        "seg-18446744073709551616.m4s",
        "seg-12.ts",
        "seg-12m4s",
        "init-4294967296.mp4",
        "init-01.mp4",
        "part-12.m4s",
        "part-12.03.m4s",
        "part-12.3.4.m4s",
        "part-12.4294967296.m4s",
        "Media.m3u8",
        "",
        "seg-١.m4s",
    ] {
        assert_eq!(parse_resource(bad, f), None, "{bad:?}");
    }
    // TS streams have no init segments, no parts, no fMP4 segments.
    for bad in ["init-0.mp4", "part-1.0.m4s", "seg-1.m4s"] {
        assert_eq!(parse_resource(bad, Container::Ts), None, "{bad:?}");
    }
}

#[test]
fn uris_round_trip_through_the_parser() {
    assert_eq!(init_uri(7), "init-7.mp4");
    assert_eq!(segment_uri(12, Container::Ts), "seg-12.ts");
    assert_eq!(part_uri(12, 3), "part-12.3.m4s");
    for c in [Container::Fmp4, Container::Ts] {
        assert_eq!(
            parse_resource(&segment_uri(u64::MAX, c), c),
            Some(Resource::Segment(u64::MAX))
        );
    }
    assert_eq!(
        parse_resource(&part_uri(5, u32::MAX), Container::Fmp4),
        Some(Resource::Part(5, u32::MAX))
    );
    assert_eq!(
        parse_resource(&init_uri(u32::MAX), Container::Fmp4),
        Some(Resource::Init(u32::MAX))
    );
}

#[test]
fn queries_parse_strictly_and_ignore_other_parameters() {
    assert_eq!(parse_query(""), Ok(Directives::default()));
    assert_eq!(
        parse_query("_HLS_msn=12&_HLS_part=3&_HLS_skip=YES"),
        Ok(Directives {
            msn: Some(12),
            part: Some(3),
            skip: Skip::Yes
        })
    );
    assert_eq!(
        parse_query("token=abc&_HLS_skip=v2&x&&y=").map(|d| d.skip),
        Ok(Skip::V2)
    );
    assert_eq!(parse_query("_HLS_msn=0").map(|d| d.msn), Ok(Some(0)));
    use QueryError::*;
    assert_eq!(parse_query("_HLS_part=1"), Err(PartWithoutMsn));
    assert_eq!(parse_query("_HLS_msn=01"), Err(BadValue("_HLS_msn")));
    assert_eq!(parse_query("_HLS_msn=-1"), Err(BadValue("_HLS_msn")));
    assert_eq!(parse_query("_HLS_msn="), Err(BadValue("_HLS_msn")));
    assert_eq!(parse_query("_HLS_msn"), Err(BadValue("_HLS_msn")));
    assert_eq!(
        parse_query("_HLS_msn=18446744073709551616"),
        Err(BadValue("_HLS_msn"))
    );
    assert_eq!(
        parse_query("_HLS_msn=1&_HLS_part=4294967296"),
        Err(BadValue("_HLS_part"))
    );
    assert_eq!(parse_query("_HLS_skip=NO"), Err(BadValue("_HLS_skip")));
    assert_eq!(
        parse_query("_HLS_msn=1&_HLS_msn=1"),
        Err(Duplicate("_HLS_msn"))
    );
    assert_eq!(
        parse_query("_HLS_msn=1&_HLS_part=1&_HLS_part=2"),
        Err(Duplicate("_HLS_part"))
    );
    assert_eq!(
        parse_query("_HLS_skip=YES&_HLS_skip=YES"),
        Err(Duplicate("_HLS_skip"))
    );
    let long = format!("token={}", "a".repeat(MAX_QUERY));
    assert_eq!(parse_query(&long), Err(TooLong));
    let just = format!("t={}", "a".repeat(MAX_QUERY - 2));
    assert_eq!(parse_query(&just), Ok(Directives::default()));
}

#[test]
fn an_ll_playlist_has_every_header_tag() {
    let text = render(&window(10, 4, 2), Skip::No);
    let expected_head = "#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:1
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6.000,PART-HOLD-BACK=0.600
#EXT-X-PART-INF:PART-TARGET=0.200
#EXT-X-MEDIA-SEQUENCE:10
#EXT-X-DISCONTINUITY-SEQUENCE:0
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI=\"init-0.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:30.000Z
#EXTINF:1.000,
seg-10.m4s
";
    assert!(text.starts_with(expected_head), "{text}");
    valid(&text);
}

#[test]
fn parts_are_listed_for_the_last_three_target_durations_and_the_open_segment() {
    let text = render(&window(10, 6, 2), Skip::No);
    // Segments 10..=15 complete (1 s each), 16 open with 0.4 s. Segment 12 ends 3.4 s from
    // the end: no parts; 13 ends 2.4 s from it: parts.
    assert!(!text.contains("part-12."), "{text}");
    assert!(text.contains("#EXT-X-PART:DURATION=0.200,URI=\"part-13.0.m4s\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=0.200,URI=\"part-13.1.m4s\"\n"), "{text}");
    assert!(
        text.ends_with(
            "#EXT-X-PART:DURATION=0.200,URI=\"part-16.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.200,URI=\"part-16.1.m4s\"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-16.2.m4s\"
"
        ),
        "{text}"
    );
    // The open segment has no EXTINF nor URI.
    assert!(!text.contains("seg-16"), "{text}");
    valid(&text);
}

#[test]
fn the_preload_hint_follows_a_complete_last_segment_or_an_empty_open_one() {
    let mut w = window(10, 3, 0);
    let text = render(&w, Skip::No);
    // Segment 13 has nothing yet: not listed, its first part hinted.
    assert!(
        !text.contains("part-13.0.m4s\",") && !text.contains("seg-13"),
        "{text}"
    );
    assert!(
        text.ends_with("seg-12.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-13.0.m4s\"\n"),
        "{text}"
    );
    valid(&text);
    w.segments.pop_back();
    let text = render(&w, Skip::No);
    assert!(
        text.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-13.0.m4s\"\n"),
        "{text}"
    );
    valid(&text);
    // An empty window: header only, no hint.
    let text = render(
        &Window {
            segments: Default::default(),
            ..w
        },
        Skip::No,
    );
    assert!(!text.contains("PRELOAD-HINT"), "{text}");
    valid(&text);
}

#[test]
fn discontinuities_bring_a_new_map_and_keep_their_sequence() {
    let mut w = window(10, 3, 1);
    w.discontinuity_sequence = 4;
    w.segments[1].discontinuity = true;
    w.segments[1].init_id = 1;
    w.segments[2].init_id = 1;
    w.segments[3].init_id = 1;
    let text = render(&w, Skip::No);
    assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:4\n"), "{text}");
    assert!(text.contains("seg-10.m4s\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI=\"init-1.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:"), "{text}");
    assert_eq!(text.matches("#EXT-X-MAP").count(), 2, "{text}");
    assert_eq!(
        text.matches("#EXT-X-PROGRAM-DATE-TIME").count(),
        4,
        "{text}"
    );
    valid(&text);
}

#[test]
fn durations_are_written_in_milliseconds() {
    let mut w = window(0, 1, 0);
    w.segments[0].parts = vec![part(200, true), part(200, false), part(41, false)];
    w.segments[0].pdt_ms = 0;
    let text = render(&w, Skip::No);
    assert!(text.contains("#EXTINF:0.441,\nseg-0.m4s\n"), "{text}");
    assert!(text.contains("DURATION=0.041,"), "{text}");
    assert!(
        text.contains("#EXT-X-PROGRAM-DATE-TIME:1970-01-01T00:00:00.000Z\n"),
        "{text}"
    );
    valid(&text);
}

#[test]
fn the_target_duration_covers_every_listed_segment() {
    let mut w = window(0, 2, 1);
    // A 2.6 s segment (a long GOP) under a 1 s target: the window should have raised it.
    w.segments[0].parts = (0..13).map(|i| part(200, i == 0)).collect();
    let text = render(&w, Skip::No);
    assert!(text.contains("#EXT-X-TARGETDURATION:3\n"), "{text}");
    assert!(text.contains("CAN-SKIP-UNTIL=18.000,"), "{text}");
    valid(&text);
}

#[test]
fn a_delta_update_skips_what_lies_beyond_the_skip_boundary() {
    // 10 complete segments of 1 s and an open one of 0.4 s; boundary 6 s: segments ending
    // more than 6 s before the end (10, 11, 12: ends 9.4, 8.4, 7.4, 6.4 s) are skipped.
    let w = window(10, 10, 2);
    let text = render(&w, Skip::Yes);
    assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:10\n#EXT-X-DISCONTINUITY-SEQUENCE:0\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n#EXT-X-MAP:URI=\"init-0.mp4\"\n"), "{text}");
    assert!(
        !text.contains("seg-13.m4s") && text.contains("seg-14.m4s"),
        "{text}"
    );
    let parsed = valid(&text);
    assert_eq!(parsed.msn(0), 14);
    assert_eq!(render(&w, Skip::V2), text);
    // The full playlist lists them all.
    let full = render(&w, Skip::No);
    assert!(
        full.contains("seg-10.m4s") && !full.contains("EXT-X-SKIP"),
        "{full}"
    );
    let older = valid(&full);
    assert_eq!(checker::check_sequence(&older, &parsed), Ok(()));
}

#[test]
fn a_short_playlist_answers_a_delta_request_in_full() {
    let w = window(10, 6, 2);
    assert_eq!(render(&w, Skip::Yes), render(&w, Skip::No));
}

#[test]
fn a_discontinuity_in_the_skipped_part_does_not_change_the_sequence() {
    let mut w = window(10, 10, 2);
    w.segments[1].discontinuity = true;
    let text = render(&w, Skip::Yes);
    assert!(text.contains("#EXT-X-DISCONTINUITY-SEQUENCE:0\n"), "{text}");
    assert!(!text.contains("#EXT-X-DISCONTINUITY\n"), "{text}");
    valid(&text);
}

#[test]
fn a_ts_window_renders_classic_hls() {
    let mut w = window(3, 3, 2);
    w.container = Container::Ts;
    w.target_duration_s = 2;
    let text = render(&w, Skip::Yes);
    assert_eq!(
        text,
        "#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:3
#EXT-X-DISCONTINUITY-SEQUENCE:0
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:23.000Z
#EXTINF:1.000,
seg-3.ts
#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:24.000Z
#EXTINF:1.000,
seg-4.ts
#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:25.000Z
#EXTINF:1.000,
seg-5.ts
"
    );
    valid(&text);
    // Blocking directives are not advertised, so they are not honoured.
    let d = Directives {
        msn: Some(100),
        part: None,
        skip: Skip::No,
    };
    assert_eq!(directive_state(&w, &d), DirectiveState::Ready);
}

#[test]
fn an_fmp4_window_without_parts_is_classic_with_a_map() {
    let mut w = window(0, 2, 0);
    w.part_target_ms = 0;
    let text = render(&w, Skip::No);
    assert!(text.starts_with("#EXTM3U\n#EXT-X-VERSION:6\n"), "{text}");
    assert!(
        !text.contains("PART") && !text.contains("SERVER-CONTROL"),
        "{text}"
    );
    valid(&text);
}

#[test]
fn dates_are_iso_8601_utc_with_milliseconds() {
    let cases = [
        (0, "1970-01-01T00:00:00.000Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (951_868_799_999, "2000-02-29T23:59:59.999Z"),
        (1_709_211_909_042, "2024-02-29T13:05:09.042Z"),
        (1_735_689_599_000, "2024-12-31T23:59:59.000Z"),
        (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ];
    for (ms, text) in cases {
        let mut out = String::new();
        date_time(&mut out, ms);
        assert_eq!(out, text, "{ms}");
    }
}

#[test]
fn the_multivariant_playlist_names_the_media_playlist() {
    let mut out = String::new();
    multivariant(
        "cam/media.m3u8",
        1_200_000,
        "avc1.64001f,mp4a.40.2",
        Some((1280, 720)),
        &mut out,
    );
    assert_eq!(
        out,
        "#EXTM3U
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-STREAM-INF:BANDWIDTH=1200000,CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=1280x720
cam/media.m3u8
"
    );
    let mut out = String::new();
    multivariant("a\nb/media.m3u8", 1, "", None, &mut out);
    assert_eq!(
        out,
        "#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:BANDWIDTH=1\na%0Ab/media.m3u8\n"
    );
    let mut out = String::new();
    multivariant("m.m3u8", 1, "a\"b\nc", None, &mut out);
    assert!(out.contains("CODECS=\"abc\"\n"), "{out}");
}

fn ask(msn: u64, part: Option<u32>) -> Directives {
    Directives {
        msn: Some(msn),
        part,
        skip: Skip::No,
    }
}

#[test]
fn blocking_reloads_wait_for_their_segment_or_part() {
    use DirectiveState::*;
    // Segments 10..=12 complete (5 parts each), 13 open with 2 parts.
    let w = window(10, 3, 2);
    assert_eq!(directive_state(&w, &Directives::default()), Ready);
    assert_eq!(directive_state(&w, &ask(12, None)), Ready);
    assert_eq!(directive_state(&w, &ask(13, None)), Wait);
    assert_eq!(directive_state(&w, &ask(13, Some(1))), Ready);
    assert_eq!(directive_state(&w, &ask(13, Some(2))), Wait);
    assert_eq!(directive_state(&w, &ask(14, Some(0))), Wait);
    assert_eq!(directive_state(&w, &ask(15, None)), Wait);
    assert_eq!(directive_state(&w, &ask(16, None)), TooFarAhead);
    assert_eq!(directive_state(&w, &ask(9, None)), Gone);
    assert_eq!(directive_state(&w, &ask(9, Some(3))), Gone);
    // A part index past a complete segment's last is part 0 of the next (which exists).
    assert_eq!(directive_state(&w, &ask(12, Some(5))), Ready);
    assert_eq!(directive_state(&w, &ask(12, Some(40))), Ready);
    // Advance Part Limit: 3 s of 200 ms parts = 15 parts past the last (13.1).
    assert_eq!(directive_state(&w, &ask(13, Some(16))), Wait);
    assert_eq!(directive_state(&w, &ask(13, Some(17))), TooFarAhead);
    assert_eq!(directive_state(&w, &ask(14, Some(14))), Wait);
    assert_eq!(directive_state(&w, &ask(14, Some(15))), TooFarAhead);
}

#[test]
fn blocking_on_a_just_completed_segment() {
    use DirectiveState::*;
    // Segment 12 complete, 13 open without parts yet.
    let w = window(10, 3, 0);
    assert_eq!(directive_state(&w, &ask(12, None)), Ready);
    assert_eq!(directive_state(&w, &ask(12, Some(4))), Ready);
    assert_eq!(directive_state(&w, &ask(12, Some(5))), Wait);
    assert_eq!(directive_state(&w, &ask(13, Some(0))), Wait);
    assert_eq!(directive_state(&w, &ask(14, None)), Wait);
    assert_eq!(directive_state(&w, &ask(15, None)), TooFarAhead);
    // Nothing listed at all yet.
    let w = window(0, 0, 0);
    assert_eq!(directive_state(&w, &ask(0, Some(0))), Wait);
    assert_eq!(directive_state(&w, &ask(2, None)), Wait);
    assert_eq!(directive_state(&w, &ask(3, None)), TooFarAhead);
}

/// Windows as the segmenter keeps them: segments of whole parts no longer than the part
/// target (and at least 85% of it, but for a segment's last part), the first part of each
/// segment independent, discontinuities with new init ids, an open last segment.
fn arb_window() -> impl Strategy<Value = (Window, Skip)> {
    let part_target = prop_oneof![Just(200u32), Just(333), Just(500), Just(1000)];
    let target = 1u32..4;
    let segments = prop::collection::vec(
        (
            prop::collection::vec((85u32..=100, any::<bool>()), 1..12),
            1u32..=100,
            prop::bool::weighted(0.15),
        ),
        0..25,
    );
    (
        part_target,
        target,
        segments,
        0usize..6,
        0u64..1_000_000,
        0u64..5,
        prop_oneof![Just(Skip::No), Just(Skip::Yes), Just(Skip::V2)],
        any::<bool>(),
    )
        .prop_map(
            |(part_target, target, segments, open_parts, first, ds, skip, ts)| {
                let mut w = Window {
                    container: if ts { Container::Ts } else { Container::Fmp4 },
                    target_duration_s: target,
                    part_target_ms: part_target,
                    discontinuity_sequence: ds,
                    segments: Default::default(),
                };
                let mut init_id = 0;
                let mut pdt = 1_600_000_000_000u64;
                let count = segments.len();
                for (i, (parts, last_percent, discontinuity)) in segments.into_iter().enumerate() {
                    let complete = i + 1 < count;
                    let n = if complete {
                        parts.len()
                    } else {
                        parts.len().min(open_parts)
                    };
                    let mut infos: Vec<PartInfo> = parts[..n]
                        .iter()
                        .enumerate()
                        .map(|(k, &(percent, independent))| {
                            part((part_target * percent).div_ceil(100), k == 0 || independent)
                        })
                        .collect();
                    if complete && let Some(last) = infos.last_mut() {
                        last.duration_ms = (part_target * last_percent).div_ceil(100);
                    }
                    if discontinuity {
                        init_id += 1;
                    }
                    let s = SegmentInfo {
                        msn: first + i as u64,
                        init_id,
                        discontinuity,
                        pdt_ms: pdt,
                        parts: infos,
                        complete,
                    };
                    pdt += s.duration_ms();
                    w.segments.push_back(s);
                }
                // The window's promise: the target covers every segment.
                let longest = w
                    .segments
                    .iter()
                    .map(|s| s.duration_ms().div_ceil(1000))
                    .max()
                    .unwrap_or(0);
                w.target_duration_s = w.target_duration_s.max(longest as u32);
                (w, skip)
            },
        )
}

proptest! {
    #[test]
    fn random_windows_render_valid_playlists((w, skip) in arb_window()) {
        let text = render(&w, skip);
        let parsed = checker::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        if let Err(errors) = checker::check_media_playlist(&parsed) {
            return Err(TestCaseError::fail(format!("{errors:#?}\n{text}")));
        }
        // A delta update agrees with the full playlist it abbreviates.
        if skip != Skip::No {
            let full = checker::parse(&render(&w, Skip::No)).map_err(TestCaseError::fail)?;
            if let Err(errors) = checker::check_sequence(&full, &parsed) {
                return Err(TestCaseError::fail(format!("{errors:#?}\n{text}")));
            }
        }
    }

    #[test]
    fn a_growing_window_reloads_consistently((w, _) in arb_window(), drop in 0usize..4) {
        let older = checker::parse(&render(&w, Skip::No)).map_err(TestCaseError::fail)?;
        let mut newer_window = w.clone();
        if let Some(last) = newer_window.segments.back_mut() {
            last.complete = true;
        }
        for _ in 0..drop.min(newer_window.segments.len().saturating_sub(1)) {
            if let Some(gone) = newer_window.segments.pop_front() {
                newer_window.discontinuity_sequence += u64::from(gone.discontinuity);
            }
        }
        let newer = checker::parse(&render(&newer_window, Skip::No)).map_err(TestCaseError::fail)?;
        if let Err(errors) = checker::check_sequence(&older, &newer) {
            return Err(TestCaseError::fail(format!("{errors:#?}")));
        }
    }

    #[test]
    fn any_query_parses_or_errs_without_panicking(query in ".{0,64}") {
        let _ = parse_query(&query);
    }

    #[test]
    fn any_file_name_parses_or_not_without_panicking(file in "[a-z0-9.+-]{0,24}") {
        let _ = parse_resource(&file, Container::Fmp4);
        let _ = parse_resource(&file, Container::Ts);
    }
}
