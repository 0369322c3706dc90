use super::*;

/// A good LL-HLS playlist: TD 1 s, parts of 0.2 s, segment 10 without parts (older than 3 TD),
/// 11-13 complete with parts, 14 open with two parts.
const GOOD: &str = "#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:1
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=6.000,PART-HOLD-BACK=0.600
#EXT-X-PART-INF:PART-TARGET=0.200
#EXT-X-MEDIA-SEQUENCE:10
#EXT-X-DISCONTINUITY-SEQUENCE:2
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI=\"init-0.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z
#EXTINF:1.000,
seg-10.m4s
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:01.000Z
#EXT-X-PART:DURATION=0.200,URI=\"part-11.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.200,URI=\"part-11.1.m4s\"
#EXT-X-PART:DURATION=0.200,URI=\"part-11.2.m4s\"
#EXT-X-PART:DURATION=0.200,URI=\"part-11.3.m4s\"
#EXT-X-PART:DURATION=0.200,URI=\"part-11.4.m4s\"
#EXTINF:1.000,
seg-11.m4s
#EXT-X-DISCONTINUITY
#EXT-X-MAP:URI=\"init-1.mp4\"
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:02.000Z
#EXT-X-PART:DURATION=0.200,URI=\"part-12.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.120,URI=\"part-12.1.m4s\"
#EXTINF:0.320,
seg-12.m4s
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:02.320Z
#EXT-X-PART:DURATION=0.200,URI=\"part-13.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.180,URI=\"part-13.1.m4s\"
#EXTINF:0.380,
seg-13.m4s
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:02.700Z
#EXT-X-PART:DURATION=0.200,URI=\"part-14.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.200,URI=\"part-14.1.m4s\"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-14.2.m4s\"
";

const CLASSIC: &str = "#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:0
#EXTINF:1.960,
seg-0.ts
#EXTINF:2.040,
seg-1.ts
";

fn errors_of(text: &str) -> Vec<String> {
    let parsed = parse(text).expect("parses");
    check_media_playlist(&parsed).err().unwrap_or_default()
}

/// `GOOD` with `from` replaced by `to` fails with a message containing `expect`.
#[track_caller]
fn fails(from: &str, to: &str, expect: &str) {
    assert!(GOOD.contains(from), "{from:?} not in GOOD");
    let errors = errors_of(&GOOD.replacen(from, to, 1));
    assert!(
        errors.iter().any(|e| e.contains(expect)),
        "expected an error containing {expect:?}, got {errors:#?}"
    );
}

#[test]
fn the_good_playlists_pass_and_parse_fully() {
    assert_eq!(errors_of(GOOD), Vec::<String>::new());
    assert_eq!(errors_of(CLASSIC), Vec::<String>::new());
    let p = parse(GOOD).unwrap();
    assert_eq!(p.version, Some(9));
    assert_eq!(p.target_duration, Some(1));
    assert_eq!(p.media_sequence(), 10);
    assert_eq!(p.discontinuity_sequence, Some(2));
    assert!(p.independent_segments);
    assert_eq!(p.part_target, Some(0.2));
    let control = p.server_control.clone().unwrap();
    assert!(control.can_block_reload);
    assert_eq!(control.can_skip_until, Some(6.0));
    assert_eq!(control.part_hold_back, Some(0.6));
    assert_eq!(p.segments.len(), 5);
    assert_eq!(p.segments[0].parts.len(), 0);
    assert_eq!(p.segments[1].parts.len(), 5);
    assert!(p.segments[2].discontinuity);
    assert_eq!(p.segments[1].map.as_deref(), Some("init-0.mp4"));
    assert_eq!(p.segments[2].map.as_deref(), Some("init-1.mp4"));
    assert_eq!(p.segments[4].uri, None);
    assert_eq!(p.segments[4].map.as_deref(), Some("init-1.mp4"));
    assert_eq!(p.msn(4), 14);
    assert_eq!(p.preload_hints[0].uri, "part-14.2.m4s");
    assert_eq!(
        p.segments[3].program_date_time.as_deref(),
        Some("2024-01-01T00:00:02.320Z")
    );
}

#[test]
fn malformed_lines_are_errors() {
    assert!(parse("#EXTM3U\n#EXT-X-TARGETDURATION:x\n").is_err());
    assert!(parse("#EXTM3U\n#EXTINF:1.0,\n").is_err());
    assert!(parse("#EXTM3U\n#EXT-X-PART:DURATION=0.2\n").is_err());
    assert!(parse("#EXTM3U\n#EXT-X-PART:DURATION=0.2,URI=\"a\n").is_err());
    assert!(parse("#EXTM3U\n#EXT-X-SKIP:FOO=1\n").is_err());
    assert!(
        parse(&format!(
            "{CLASSIC}#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z\n"
        ))
        .is_err()
    );
    assert!(parse(&format!("{CLASSIC}#EXT-X-DISCONTINUITY\n")).is_err());
}

#[test]
fn extm3u_must_come_first() {
    let errors = errors_of(&format!("\n{GOOD}"));
    assert!(errors.iter().any(|e| e.contains("#EXTM3U")), "{errors:?}");
}

#[test]
fn the_version_must_cover_the_features() {
    fails("#EXT-X-VERSION:9\n", "", "EXT-X-VERSION missing");
    fails("#EXT-X-VERSION:9", "#EXT-X-VERSION:5", "EXT-X-MAP");
    let classic = CLASSIC.replace("VERSION:3", "VERSION:2");
    assert!(
        errors_of(&classic)
            .iter()
            .any(|e| e.contains("decimal EXTINF"))
    );
    let delta = GOOD
        .replace("#EXT-X-VERSION:9", "#EXT-X-VERSION:6")
        .replace(
            "#EXT-X-INDEPENDENT-SEGMENTS\n",
            "#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n",
        )
        .replace("MEDIA-SEQUENCE:10", "MEDIA-SEQUENCE:7");
    let errors = errors_of(&delta);
    assert!(
        errors.iter().any(|e| e.contains("EXT-X-SKIP need")),
        "{errors:?}"
    );
}

#[test]
fn the_target_duration_bounds_every_segment() {
    fails(
        "#EXT-X-TARGETDURATION:1\n",
        "",
        "EXT-X-TARGETDURATION missing",
    );
    fails(
        "#EXTINF:1.000,\nseg-10",
        "#EXTINF:1.500,\nseg-10",
        "rounds above",
    );
    // 1.499 rounds to 1: allowed.
    let errors = errors_of(&GOOD.replacen("#EXTINF:1.000,\nseg-10", "#EXTINF:1.499,\nseg-10", 1));
    assert_eq!(errors, Vec::<String>::new());
}

#[test]
fn parts_stay_within_the_part_target_and_add_up() {
    fails(
        "DURATION=0.200,URI=\"part-11.1.m4s\"",
        "DURATION=0.201,URI=\"part-11.1.m4s\"",
        "above PART-TARGET",
    );
    fails("#EXTINF:0.320,", "#EXTINF:0.330,", "add up");
    fails(
        "#EXT-X-PART-INF:PART-TARGET=0.200\n",
        "",
        "without EXT-X-PART-INF",
    );
}

#[test]
fn parts_are_at_least_85_percent_of_the_target_unless_exempt() {
    // A short part in the middle of a segment.
    fails(
        "DURATION=0.200,URI=\"part-11.1.m4s\"",
        "DURATION=0.100,URI=\"part-11.1.m4s\"",
        "under 85%",
    );
    // The last part of a segment (part-12.1 at 0.120) and of the open one may be short.
    let open_short = GOOD.replace(
        "DURATION=0.200,URI=\"part-14.1.m4s\"",
        "DURATION=0.040,URI=\"part-14.1.m4s\"",
    );
    assert_eq!(errors_of(&open_short), Vec::<String>::new());
}

#[test]
fn every_segment_starts_independent() {
    fails(
        "URI=\"part-13.0.m4s\",INDEPENDENT=YES",
        "URI=\"part-13.0.m4s\"",
        "not INDEPENDENT",
    );
}

#[test]
fn parts_leave_oldest_first() {
    let gap = GOOD
        .replace(
            "#EXT-X-PART:DURATION=0.200,URI=\"part-12.0.m4s\",INDEPENDENT=YES\n",
            "",
        )
        .replace("#EXT-X-PART:DURATION=0.120,URI=\"part-12.1.m4s\"\n", "");
    let errors = errors_of(&gap);
    assert!(
        errors.iter().any(|e| e.contains("lists no parts")),
        "{errors:?}"
    );
}

#[test]
fn server_control_values_meet_their_minimums() {
    fails(
        "PART-HOLD-BACK=0.600",
        "PART-HOLD-BACK=0.500",
        "PART-HOLD-BACK",
    );
    fails(",PART-HOLD-BACK=0.600", "", "without PART-HOLD-BACK");
    fails(
        "CAN-SKIP-UNTIL=6.000",
        "CAN-SKIP-UNTIL=5.999",
        "CAN-SKIP-UNTIL",
    );
    fails(
        "CAN-BLOCK-RELOAD=YES",
        "CAN-BLOCK-RELOAD=YES,HOLD-BACK=2.9",
        "HOLD-BACK 2.9",
    );
    assert_eq!(
        errors_of(&GOOD.replace("CAN-BLOCK-RELOAD=YES", "CAN-BLOCK-RELOAD=YES,HOLD-BACK=3")),
        Vec::<String>::new()
    );
}

#[test]
fn sequences_are_declared_before_segments_and_match_the_uris() {
    fails(
        "MEDIA-SEQUENCE:10",
        "MEDIA-SEQUENCE:11",
        "where media sequence",
    );
    let late = GOOD
        .replace("#EXT-X-DISCONTINUITY-SEQUENCE:2\n", "")
        .replace(
            "seg-10.m4s\n",
            "seg-10.m4s\n#EXT-X-DISCONTINUITY-SEQUENCE:2\n",
        );
    let errors = errors_of(&late);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("DISCONTINUITY-SEQUENCE after the first")),
        "{errors:?}"
    );
    fails(
        "part-13.1.m4s",
        "part-13.2.m4s",
        "sits where part 1 of segment 13",
    );
}

#[test]
fn segment_tags_precede_the_first_part() {
    let late_pdt = GOOD.replace(
        "#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:02.320Z\n#EXT-X-PART:DURATION=0.200,URI=\"part-13.0.m4s\",INDEPENDENT=YES\n",
        "#EXT-X-PART:DURATION=0.200,URI=\"part-13.0.m4s\",INDEPENDENT=YES\n#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:02.320Z\n",
    );
    let errors = errors_of(&late_pdt);
    assert!(
        errors.iter().any(|e| e.contains("after an EXT-X-PART")),
        "{errors:?}"
    );
    fails("00:00:02.320Z", "00:00:02Z", "not YYYY");
}

#[test]
fn the_preload_hint_is_the_next_part() {
    fails(
        "part-14.2.m4s\"\n",
        "part-14.3.m4s\"\n",
        "not the part after",
    );
    fails(
        "URI=\"part-14.2.m4s\"\n",
        "URI=\"part-14.1.m4s\"\n",
        "already listed",
    );
    fails(
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-14.2.m4s\"\n",
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-14.2.m4s\"\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"x\"\n",
        "more than one",
    );
    fails(
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-14.2.m4s\"\n",
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-14.2.m4s\"\n#EXT-X-ENDLIST\n",
        "EXT-X-ENDLIST",
    );
    // After a complete last segment, the hint is part 0 of the next.
    let complete = GOOD.replace(
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-14.2.m4s\"\n",
        "#EXTINF:0.400,\nseg-14.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-15.0.m4s\"\n",
    );
    assert_eq!(errors_of(&complete), Vec::<String>::new());
}

#[test]
fn delta_updates_need_can_skip_until_and_consistent_counts() {
    // Segments 7-9 skipped: the listed ones start at 10.
    let delta = GOOD
        .replace("MEDIA-SEQUENCE:10", "MEDIA-SEQUENCE:7")
        .replace(
            "#EXT-X-INDEPENDENT-SEGMENTS\n",
            "#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n",
        );
    assert_eq!(errors_of(&delta), Vec::<String>::new());
    let p = parse(&delta).unwrap();
    assert_eq!(p.msn(0), 10);
    // A count that does not match the URIs.
    let errors = errors_of(&delta.replace("SKIPPED-SEGMENTS=3", "SKIPPED-SEGMENTS=2"));
    assert!(
        errors.iter().any(|e| e.contains("where media sequence")),
        "{errors:?}"
    );
    // No CAN-SKIP-UNTIL.
    let errors = errors_of(&delta.replace("CAN-SKIP-UNTIL=6.000,", ""));
    assert!(
        errors.iter().any(|e| e.contains("without CAN-SKIP-UNTIL")),
        "{errors:?}"
    );
    // Keeping a segment further from the end than the boundary (CAN-SKIP-UNTIL 6 but the
    // first listed segment ends 8 s from the end).
    let long = delta.replacen(
        "#EXTINF:1.000,\nseg-10.m4s\n",
        "#EXTINF:1.000,\nseg-10.m4s\n#EXTINF:1.000,\nseg-11.m4s\n#EXTINF:1.000,\nseg-12.m4s\n#EXTINF:1.000,\nseg-13.m4s\n#EXTINF:1.000,\nseg-14.m4s\n#EXTINF:1.000,\nseg-15.m4s\n",
        1,
    );
    let errors = errors_of(&long);
    assert!(
        errors.iter().any(|e| e.contains("past CAN-SKIP-UNTIL")),
        "{errors:?}"
    );
    fails(
        "#EXT-X-INDEPENDENT-SEGMENTS\n",
        "#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-SKIP:SKIPPED-SEGMENTS=0\n",
        "SKIPPED-SEGMENTS=0",
    );
}

#[test]
fn uris_are_unique() {
    fails("seg-11.m4s\n", "seg-10.m4s\n", "listed twice");
}

#[test]
fn header_tags_appear_once() {
    fails(
        "#EXT-X-TARGETDURATION:1\n",
        "#EXT-X-TARGETDURATION:1\n#EXT-X-TARGETDURATION:1\n",
        "more than once",
    );
}

fn parsed(text: &str) -> Playlist {
    parse(text).expect("parses")
}

#[test]
fn a_reload_may_drop_old_segments_and_add_new_ones() {
    let older = parsed(GOOD);
    // Segments 10 and 11 left; 12 brought a discontinuity, which stays.
    let newer = GOOD
        .replace("MEDIA-SEQUENCE:10", "MEDIA-SEQUENCE:12")
        .replace(
            "#EXT-X-MAP:URI=\"init-0.mp4\"\n#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z\n#EXTINF:1.000,\nseg-10.m4s\n",
            "",
        )
        .replace(
            "#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:01.000Z\n#EXT-X-PART:DURATION=0.200,URI=\"part-11.0.m4s\",INDEPENDENT=YES\n#EXT-X-PART:DURATION=0.200,URI=\"part-11.1.m4s\"\n#EXT-X-PART:DURATION=0.200,URI=\"part-11.2.m4s\"\n#EXT-X-PART:DURATION=0.200,URI=\"part-11.3.m4s\"\n#EXT-X-PART:DURATION=0.200,URI=\"part-11.4.m4s\"\n#EXTINF:1.000,\nseg-11.m4s\n",
            "",
        );
    let newer = parsed(&newer);
    assert_eq!(newer.msn(0), 12);
    assert_eq!(check_sequence(&older, &newer), Ok(()));
    assert_eq!(check_sequence(&older, &older), Ok(()));

    // Dropping segment 12 (with its discontinuity) must raise the discontinuity sequence.
    let mut dropped = newer.clone();
    dropped.segments.remove(0);
    dropped.media_sequence = Some(13);
    let errors = check_sequence(&older, &dropped).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("discontinuities left")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("discontinuity sequence number")),
        "{errors:?}"
    );
    dropped.discontinuity_sequence = Some(3);
    dropped.segments[0].discontinuity = false;
    assert_eq!(check_sequence(&older, &dropped), Ok(()));
}

#[test]
fn a_reload_must_not_rewrite_history() {
    let older = parsed(GOOD);
    let back = parsed(&GOOD.replace("MEDIA-SEQUENCE:10", "MEDIA-SEQUENCE:9"));
    let errors = check_sequence(&older, &back).unwrap_err();
    assert!(errors.iter().any(|e| e.contains("went back")), "{errors:?}");

    let longer = parsed(&GOOD.replace("#EXTINF:0.380,", "#EXTINF:0.390,"));
    let errors = check_sequence(&older, &longer).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("segment 13 lasted")),
        "{errors:?}"
    );

    let renamed = parsed(&GOOD.replace("seg-13.m4s", "seg-13b.m4s"));
    let errors = check_sequence(&older, &renamed).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("is now seg-13b")),
        "{errors:?}"
    );

    let part = parsed(&GOOD.replace(
        "DURATION=0.200,URI=\"part-14.0.m4s\"",
        "DURATION=0.190,URI=\"part-14.0.m4s\"",
    ));
    let errors = check_sequence(&older, &part).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("part part-14.0.m4s lasted")),
        "{errors:?}"
    );

    let mut reopened = older.clone();
    reopened.segments[3].uri = None;
    reopened.segments[3].duration = None;
    reopened.segments.truncate(4);
    let errors = check_sequence(&older, &reopened).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("vanished or reopened")),
        "{errors:?}"
    );

    let target = parsed(&GOOD.replace("TARGETDURATION:1", "TARGETDURATION:2"));
    let errors = check_sequence(&older, &target).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("TARGETDURATION changed")),
        "{errors:?}"
    );

    let mut ds_back = older.clone();
    ds_back.discontinuity_sequence = Some(1);
    let errors = check_sequence(&older, &ds_back).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("DISCONTINUITY-SEQUENCE went back")),
        "{errors:?}"
    );
}
