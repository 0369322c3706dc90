//! An independent reading of HLS media playlists and the RFC 8216bis (HLS 2nd edition) rules
//! the tests hold Sluice's playlists to.
//!
//! This grades `sluice-hls`, so it shares none of its code: [`parse`] reads m3u8 text into a
//! [`Playlist`], [`check_media_playlist`] checks one playlist against the spec's rules (and
//! Sluice's stricter own where the plan sets them, said so in each message), and
//! [`check_sequence`] checks that a reload changed the playlist only in the ways a live
//! playlist may change. What it knows of Sluice is the URL scheme of the HLS plan
//! (`seg-{msn}.m4s|ts`, `part-{msn}.{i}.m4s`), used to tie URIs to sequence numbers.

use std::collections::{BTreeMap, HashSet};

/// One `EXT-X-PART`.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// `DURATION`, seconds.
    pub duration: f64,
    /// `URI`.
    pub uri: String,
    /// `INDEPENDENT=YES`.
    pub independent: bool,
}

/// One media segment: its `EXTINF` and URI when complete, the parts listed for it, and the
/// media segment tags applied to it. The open segment at the end has parts and no URI.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Segment {
    /// `EXTINF` duration, seconds.
    pub duration: Option<f64>,
    /// The URI line (absent for the open segment).
    pub uri: Option<String>,
    /// Its `EXT-X-PART` tags, in order.
    pub parts: Vec<Part>,
    /// An `EXT-X-DISCONTINUITY` precedes it.
    pub discontinuity: bool,
    /// Its `EXT-X-PROGRAM-DATE-TIME`, as written.
    pub program_date_time: Option<String>,
    /// The `EXT-X-MAP` URI in effect for it.
    pub map: Option<String>,
}

/// `EXT-X-SERVER-CONTROL`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerControl {
    /// `CAN-BLOCK-RELOAD=YES`.
    pub can_block_reload: bool,
    /// `CAN-SKIP-UNTIL`, seconds.
    pub can_skip_until: Option<f64>,
    /// `HOLD-BACK`, seconds.
    pub hold_back: Option<f64>,
    /// `PART-HOLD-BACK`, seconds.
    pub part_hold_back: Option<f64>,
}

/// One `EXT-X-PRELOAD-HINT`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreloadHint {
    /// `TYPE` (PART or MAP).
    pub kind: String,
    /// `URI`.
    pub uri: String,
}

/// A media playlist as read, with what the reading noticed about tag order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Playlist {
    /// The first line is `#EXTM3U`.
    pub extm3u_first: bool,
    /// `EXT-X-VERSION`.
    pub version: Option<u32>,
    /// `EXT-X-TARGETDURATION`, seconds.
    pub target_duration: Option<u64>,
    /// `EXT-X-MEDIA-SEQUENCE` (absent means 0).
    pub media_sequence: Option<u64>,
    /// `EXT-X-DISCONTINUITY-SEQUENCE` (absent means 0).
    pub discontinuity_sequence: Option<u64>,
    /// `EXT-X-INDEPENDENT-SEGMENTS`.
    pub independent_segments: bool,
    /// `EXT-X-SERVER-CONTROL`.
    pub server_control: Option<ServerControl>,
    /// `EXT-X-PART-INF:PART-TARGET`, seconds.
    pub part_target: Option<f64>,
    /// `EXT-X-SKIP:SKIPPED-SEGMENTS` of a delta update.
    pub skipped_segments: Option<u64>,
    /// The segments listed, oldest first, the open one (parts only) last.
    pub segments: Vec<Segment>,
    /// `EXT-X-PRELOAD-HINT` tags.
    pub preload_hints: Vec<PreloadHint>,
    /// `EXT-X-ENDLIST`.
    pub endlist: bool,
    /// Tags this reader does not know, as written.
    pub other_tags: Vec<String>,
    /// Order and repetition problems seen while reading (reported by the checks).
    pub problems: Vec<String>,
}

impl Playlist {
    /// `EXT-X-MEDIA-SEQUENCE`, 0 when absent.
    pub fn media_sequence(&self) -> u64 {
        self.media_sequence.unwrap_or(0)
    }

    /// The media sequence number of `segments[index]`.
    pub fn msn(&self, index: usize) -> u64 {
        self.media_sequence() + self.skipped_segments.unwrap_or(0) + index as u64
    }
}

/// Reads m3u8 text. Malformed lines (a number that is not one, an attribute list that does
/// not parse, a missing required attribute) are errors; legal but misplaced tags are noted
/// in [`Playlist::problems`].
pub fn parse(text: &str) -> Result<Playlist, String> {
    let mut p = Playlist::default();
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .peekable();
    p.extm3u_first = lines.peek() == Some(&"#EXTM3U");
    let mut pending = Segment::default();
    let mut pending_started = false;
    let mut map: Option<String> = None;
    let mut seen: HashSet<&'static str> = HashSet::new();
    let mut once = |p: &mut Playlist, tag: &'static str| {
        if !seen.insert(tag) {
            p.problems.push(format!("{tag} appears more than once"));
        }
    };
    for (number, line) in lines.enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", number + 1);
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with('#') {
            pending.uri = Some(line.to_owned());
            pending.map = map.clone();
            p.segments.push(std::mem::take(&mut pending));
            pending_started = false;
            continue;
        }
        if !line.starts_with("#EXT") {
            continue; // a comment
        }
        let (tag, value) = line.split_once(':').unwrap_or((line, ""));
        let header = |p: &mut Playlist, name: &str| {
            if !p.segments.is_empty() || pending_started {
                p.problems
                    .push(format!("{name} after the first media segment"));
            }
        };
        match tag {
            "#EXTM3U" => {
                if number != 0 {
                    p.problems.push("#EXTM3U not on the first line".into());
                }
            }
            "#EXT-X-VERSION" => {
                once(&mut p, "EXT-X-VERSION");
                p.version = Some(integer(value).map_err(at)? as u32);
            }
            "#EXT-X-TARGETDURATION" => {
                once(&mut p, "EXT-X-TARGETDURATION");
                p.target_duration = Some(integer(value).map_err(at)?);
            }
            "#EXT-X-MEDIA-SEQUENCE" => {
                once(&mut p, "EXT-X-MEDIA-SEQUENCE");
                header(&mut p, "EXT-X-MEDIA-SEQUENCE");
                p.media_sequence = Some(integer(value).map_err(at)?);
            }
            "#EXT-X-DISCONTINUITY-SEQUENCE" => {
                once(&mut p, "EXT-X-DISCONTINUITY-SEQUENCE");
                header(&mut p, "EXT-X-DISCONTINUITY-SEQUENCE");
                if p.segments.iter().any(|s| s.discontinuity) || pending.discontinuity {
                    p.problems
                        .push("EXT-X-DISCONTINUITY-SEQUENCE after an EXT-X-DISCONTINUITY".into());
                }
                p.discontinuity_sequence = Some(integer(value).map_err(at)?);
            }
            "#EXT-X-INDEPENDENT-SEGMENTS" => p.independent_segments = true,
            "#EXT-X-ENDLIST" => p.endlist = true,
            "#EXT-X-SERVER-CONTROL" => {
                once(&mut p, "EXT-X-SERVER-CONTROL");
                let attrs = attributes(value).map_err(at)?;
                let float = |name| attrs.get(name).map(|v| decimal(v)).transpose();
                p.server_control = Some(ServerControl {
                    can_block_reload: attrs.get("CAN-BLOCK-RELOAD").map(String::as_str)
                        == Some("YES"),
                    can_skip_until: float("CAN-SKIP-UNTIL").map_err(at)?,
                    hold_back: float("HOLD-BACK").map_err(at)?,
                    part_hold_back: float("PART-HOLD-BACK").map_err(at)?,
                });
            }
            "#EXT-X-PART-INF" => {
                once(&mut p, "EXT-X-PART-INF");
                let attrs = attributes(value).map_err(at)?;
                let target = attrs
                    .get("PART-TARGET")
                    .ok_or_else(|| at("PART-TARGET missing".into()))?;
                p.part_target = Some(decimal(target).map_err(at)?);
            }
            "#EXT-X-SKIP" => {
                once(&mut p, "EXT-X-SKIP");
                header(&mut p, "EXT-X-SKIP");
                let attrs = attributes(value).map_err(at)?;
                let n = attrs
                    .get("SKIPPED-SEGMENTS")
                    .ok_or_else(|| at("SKIPPED-SEGMENTS missing".into()))?;
                p.skipped_segments = Some(integer(n).map_err(at)?);
            }
            "#EXT-X-DISCONTINUITY" | "#EXT-X-MAP" | "#EXT-X-PROGRAM-DATE-TIME" => {
                if !pending.parts.is_empty() {
                    p.problems.push(format!(
                        "{} after an EXT-X-PART of its segment (line {})",
                        &tag[1..],
                        number + 1
                    ));
                }
                pending_started = true;
                match tag {
                    "#EXT-X-DISCONTINUITY" => pending.discontinuity = true,
                    "#EXT-X-MAP" => {
                        let attrs = attributes(value).map_err(at)?;
                        let uri = attrs.get("URI").ok_or_else(|| at("URI missing".into()))?;
                        map = Some(uri.clone());
                    }
                    _ => pending.program_date_time = Some(value.to_owned()),
                }
            }
            "#EXT-X-PART" => {
                pending_started = true;
                let attrs = attributes(value).map_err(at)?;
                let duration = attrs
                    .get("DURATION")
                    .ok_or_else(|| at("DURATION missing".into()))?;
                pending.parts.push(Part {
                    duration: decimal(duration).map_err(at)?,
                    uri: attrs
                        .get("URI")
                        .ok_or_else(|| at("URI missing".into()))?
                        .clone(),
                    independent: attrs.get("INDEPENDENT").map(String::as_str) == Some("YES"),
                });
            }
            "#EXTINF" => {
                pending_started = true;
                let (duration, _title) = value.split_once(',').unwrap_or((value, ""));
                pending.duration = Some(decimal(duration).map_err(at)?);
            }
            "#EXT-X-PRELOAD-HINT" => {
                let attrs = attributes(value).map_err(at)?;
                p.preload_hints.push(PreloadHint {
                    kind: attrs
                        .get("TYPE")
                        .ok_or_else(|| at("TYPE missing".into()))?
                        .clone(),
                    uri: attrs
                        .get("URI")
                        .ok_or_else(|| at("URI missing".into()))?
                        .clone(),
                });
            }
            _ => p.other_tags.push(line.to_owned()),
        }
    }
    if pending.duration.is_some() {
        return Err("EXTINF without a URI line after it".into());
    }
    if !pending.parts.is_empty() {
        pending.map = map;
        p.segments.push(pending);
    } else if pending_started {
        return Err("media segment tags at the end with no segment or part after them".into());
    }
    Ok(p)
}

/// A decimal-integer.
fn integer(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not a decimal-integer: {s:?}"));
    }
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

/// A decimal-floating-point (or decimal-integer).
fn decimal(s: &str) -> Result<f64, String> {
    let ok = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.bytes().filter(|&b| b == b'.').count() <= 1;
    if !ok {
        return Err(format!("not a decimal-floating-point: {s:?}"));
    }
    s.parse().map_err(|e| format!("{s:?}: {e}"))
}

/// An attribute-list: `NAME=value` pairs, values quoted-strings (quotes removed) or not.
fn attributes(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut attrs = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("attribute without '=' in {s:?}"))?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("bad attribute name {name:?}"));
        }
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted
                .find('"')
                .ok_or_else(|| format!("unterminated quoted-string in {s:?}"))?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if attrs.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(format!("attribute {name} twice"));
        }
        rest = match after.strip_prefix(',') {
            Some(r) => r,
            None if after.is_empty() => after,
            None => return Err(format!("junk after attribute {name}")),
        };
    }
    Ok(attrs)
}

/// Seconds as whole milliseconds, the precision Sluice writes.
fn ms(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// `(msn, part index)` of a part URI in the plan's scheme.
fn part_name(uri: &str) -> Option<(u64, u32)> {
    let rest = uri.strip_prefix("part-")?.strip_suffix(".m4s")?;
    let (msn, index) = rest.split_once('.')?;
    Some((msn.parse().ok()?, index.parse().ok()?))
}

/// The msn of a segment URI in the plan's scheme.
fn segment_name(uri: &str) -> Option<u64> {
    let rest = uri.strip_prefix("seg-")?;
    let msn = rest
        .strip_suffix(".m4s")
        .or_else(|| rest.strip_suffix(".ts"))?;
    msn.parse().ok()
}

/// Whether `s` is `YYYY-MM-DDThh:mm:ss.sssZ`.
fn is_iso8601_ms_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

/// Checks one media playlist against the rules; every broken rule is one message.
pub fn check_media_playlist(p: &Playlist) -> Result<(), Vec<String>> {
    let mut errors = p.problems.clone();
    let mut fail = |e: String| errors.push(e);

    if !p.extm3u_first {
        fail("the first line is not #EXTM3U".into());
    }

    // Protocol version: at least what the features used need (RFC 8216bis §8).
    let fractional = p
        .segments
        .iter()
        .filter_map(|s| s.duration)
        .any(|d| d.fract() != 0.0);
    let needed = [
        (fractional, 3, "decimal EXTINF durations"),
        (p.segments.iter().any(|s| s.map.is_some()), 6, "EXT-X-MAP"),
        (p.skipped_segments.is_some(), 9, "EXT-X-SKIP"),
    ];
    match p.version {
        None => fail("EXT-X-VERSION missing".into()),
        Some(v) => {
            for (used, min, what) in needed {
                if used && v < min {
                    fail(format!("EXT-X-VERSION {v} below {min}, which {what} need"));
                }
            }
        }
    }

    // Target duration bounds every EXTINF rounded to the nearest second.
    let target = match p.target_duration {
        None => {
            fail("EXT-X-TARGETDURATION missing".into());
            0
        }
        Some(0) => {
            fail("EXT-X-TARGETDURATION is 0".into());
            0
        }
        Some(t) => t,
    };
    for (i, s) in p.segments.iter().enumerate() {
        match (s.duration, &s.uri) {
            (Some(d), _) if target > 0 && d.round() as u64 > target => fail(format!(
                "segment {}: EXTINF {d} rounds above EXT-X-TARGETDURATION {target}",
                p.msn(i)
            )),
            (None, Some(uri)) => fail(format!("segment {uri} has no EXTINF")),
            _ => {}
        }
        if let Some(pdt) = &s.program_date_time
            && !is_iso8601_ms_utc(pdt)
        {
            fail(format!(
                "segment {}: EXT-X-PROGRAM-DATE-TIME {pdt:?} is not YYYY-MM-DDThh:mm:ss.sssZ",
                p.msn(i)
            ));
        }
    }

    // Parts: announced by PART-INF, within the part target, summing to their segment.
    let any_parts = p.segments.iter().any(|s| !s.parts.is_empty());
    if any_parts && p.part_target.is_none() {
        fail("EXT-X-PART without EXT-X-PART-INF".into());
    }
    if let Some(part_target) = p.part_target {
        let target_ms = ms(part_target);
        let last = p.segments.len().saturating_sub(1);
        for (i, s) in p.segments.iter().enumerate() {
            for (k, part) in s.parts.iter().enumerate() {
                if ms(part.duration) > target_ms {
                    fail(format!(
                        "part {}: DURATION {} above PART-TARGET {part_target}",
                        part.uri, part.duration
                    ));
                }
                // RFC 8216bis §4.4.4.9: at least 85% of the part target, except independent
                // parts and the last part of a segment (the last listed part of the open
                // segment may turn out to be its last).
                let final_part = k + 1 == s.parts.len() && (s.uri.is_some() || i == last);
                if !part.independent && !final_part && ms(part.duration) * 100 < target_ms * 85 {
                    fail(format!(
                        "part {}: DURATION {} under 85% of PART-TARGET {part_target}",
                        part.uri, part.duration
                    ));
                }
            }
            if let (Some(d), false) = (s.duration, s.parts.is_empty()) {
                let sum: i64 = s.parts.iter().map(|part| ms(part.duration)).sum();
                if (sum - ms(d)).abs() > s.parts.len() as i64 {
                    fail(format!(
                        "segment {}: parts add up to {sum} ms, EXTINF says {} ms",
                        p.msn(i),
                        ms(d)
                    ));
                }
            }
            // Each segment starts with an independent part (segments begin at keyframes;
            // audio-only parts are all independent).
            if let Some(first) = s.parts.first()
                && !first.independent
            {
                fail(format!(
                    "segment {}: first part {} is not INDEPENDENT=YES",
                    p.msn(i),
                    first.uri
                ));
            }
        }
        // Parts are removed oldest first: once a segment lists parts, every later one does.
        if let Some(first) = p.segments.iter().position(|s| !s.parts.is_empty())
            && let Some(gap) = p.segments[first..].iter().position(|s| s.parts.is_empty())
        {
            fail(format!(
                "segment {} lists no parts after segment {} did",
                p.msn(first + gap),
                p.msn(first)
            ));
        }
    }

    // Server control.
    let control = p.server_control.clone().unwrap_or_default();
    if let Some(part_target) = p.part_target {
        match control.part_hold_back {
            None => fail("EXT-X-PART-INF without PART-HOLD-BACK".into()),
            // The spec's MUST is 2 part targets, its SHOULD (and our rule) 3.
            Some(h) if ms(h) < 3 * ms(part_target) => fail(format!(
                "PART-HOLD-BACK {h} below 3 x PART-TARGET {part_target}"
            )),
            _ => {}
        }
    }
    if let Some(skip_until) = control.can_skip_until
        && ms(skip_until) < 6000 * target as i64
    {
        fail(format!(
            "CAN-SKIP-UNTIL {skip_until} below 6 x EXT-X-TARGETDURATION {target}"
        ));
    }
    if let Some(hold_back) = control.hold_back
        && ms(hold_back) < 3000 * target as i64
    {
        fail(format!(
            "HOLD-BACK {hold_back} below 3 x EXT-X-TARGETDURATION {target}"
        ));
    }

    // Delta updates.
    if let Some(skipped) = p.skipped_segments {
        match control.can_skip_until {
            None => fail("EXT-X-SKIP without CAN-SKIP-UNTIL".into()),
            Some(skip_until) => {
                // Everything further from the end than the skip boundary is skipped, so the
                // first listed segment ends within it.
                let mut from_end: i64 = p
                    .segments
                    .iter()
                    .map(|s| {
                        s.duration
                            .map(ms)
                            .unwrap_or_else(|| s.parts.iter().map(|x| ms(x.duration)).sum())
                    })
                    .sum();
                if let Some(first) = p.segments.first().filter(|s| s.uri.is_some()) {
                    from_end -= first.duration.map_or(0, ms);
                    if from_end > ms(skip_until) {
                        fail(format!(
                            "delta update keeps segment {} which ends {from_end} ms from the end, past CAN-SKIP-UNTIL {skip_until}",
                            p.msn(0)
                        ));
                    }
                }
            }
        }
        if skipped == 0 {
            fail("EXT-X-SKIP with SKIPPED-SEGMENTS=0".into());
        }
    }

    // URIs: unique, and the plan's names carry the sequence numbers the tags imply.
    let mut uris = HashSet::new();
    for (i, s) in p.segments.iter().enumerate() {
        let msn = p.msn(i);
        if let Some(uri) = &s.uri {
            if !uris.insert(uri.as_str()) {
                fail(format!("URI {uri} listed twice"));
            }
            if let Some(named) = segment_name(uri)
                && named != msn
            {
                fail(format!(
                    "segment {uri} sits where media sequence {msn} belongs"
                ));
            }
        }
        for (k, part) in s.parts.iter().enumerate() {
            if !uris.insert(part.uri.as_str()) {
                fail(format!("URI {} listed twice", part.uri));
            }
            if let Some(named) = part_name(&part.uri)
                && named != (msn, k as u32)
            {
                fail(format!(
                    "part {} sits where part {k} of segment {msn} belongs",
                    part.uri
                ));
            }
        }
    }

    // Preload hints: one per type, never in an ended playlist, the part after the last one.
    let part_hints: Vec<&PreloadHint> = p
        .preload_hints
        .iter()
        .filter(|h| h.kind == "PART")
        .collect();
    if part_hints.len() > 1 {
        fail("more than one EXT-X-PRELOAD-HINT:TYPE=PART".into());
    }
    if p.endlist && !p.preload_hints.is_empty() {
        fail("EXT-X-PRELOAD-HINT in a playlist with EXT-X-ENDLIST".into());
    }
    if let Some(hint) = part_hints.first() {
        if uris.contains(hint.uri.as_str()) {
            fail(format!("preload hint {} is already listed", hint.uri));
        }
        let expected = p.segments.iter().enumerate().rev().find_map(|(i, s)| {
            let last = s.parts.len().checked_sub(1)?;
            Some(if s.uri.is_some() {
                (p.msn(i) + 1, 0)
            } else {
                (p.msn(i), last as u32 + 1)
            })
        });
        if let (Some(expected), Some(named)) = (expected, part_name(&hint.uri))
            && named != expected
        {
            fail(format!(
                "preload hint {} is not the part after the last listed one (part {} of segment {})",
                hint.uri, expected.1, expected.0
            ));
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// What a playlist says of one segment: `(uri, duration ms, discontinuity sequence number
/// when known)`. Delta updates leave the discontinuity sequence numbers unknown (the
/// discontinuities of skipped segments are not listed).
fn segment_facts(p: &Playlist) -> BTreeMap<u64, (String, i64, Option<u64>)> {
    let mut facts = BTreeMap::new();
    let mut dsn = p.discontinuity_sequence.unwrap_or(0);
    for (i, s) in p.segments.iter().enumerate() {
        dsn += u64::from(s.discontinuity);
        if let (Some(uri), Some(d)) = (&s.uri, s.duration) {
            let known = p.skipped_segments.is_none().then_some(dsn);
            facts.insert(p.msn(i), (uri.clone(), ms(d), known));
        }
    }
    facts
}

/// Checks that `newer`, a reload of `older`, changed it only as a live playlist may: the
/// media and discontinuity sequences never go back, a segment keeps its URI, duration and
/// discontinuity sequence number (so the discontinuity sequence counts the discontinuities
/// that left), a complete segment stays complete and a listed part keeps its duration.
pub fn check_sequence(older: &Playlist, newer: &Playlist) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if newer.media_sequence() < older.media_sequence() {
        errors.push(format!(
            "EXT-X-MEDIA-SEQUENCE went back from {} to {}",
            older.media_sequence(),
            newer.media_sequence()
        ));
    }
    let (old_ds, new_ds) = (
        older.discontinuity_sequence.unwrap_or(0),
        newer.discontinuity_sequence.unwrap_or(0),
    );
    if new_ds < old_ds {
        errors.push(format!(
            "EXT-X-DISCONTINUITY-SEQUENCE went back from {old_ds} to {new_ds}"
        ));
    }
    if newer.target_duration != older.target_duration {
        errors.push(format!(
            "EXT-X-TARGETDURATION changed from {:?} to {:?}",
            older.target_duration, newer.target_duration
        ));
    }
    let old_facts = segment_facts(older);
    let new_facts = segment_facts(newer);
    for (msn, (uri, duration, dsn)) in &old_facts {
        if let Some((new_uri, new_duration, new_dsn)) = new_facts.get(msn) {
            if new_uri != uri {
                errors.push(format!("segment {msn} was {uri}, is now {new_uri}"));
            }
            if new_duration != duration {
                errors.push(format!(
                    "segment {msn} lasted {duration} ms, now {new_duration} ms"
                ));
            }
            if let (Some(a), Some(b)) = (dsn, new_dsn)
                && a != b
            {
                errors.push(format!(
                    "segment {msn} had discontinuity sequence number {a}, now {b}"
                ));
            }
        } else if *msn >= newer.media_sequence() + newer.skipped_segments.unwrap_or(0) {
            errors.push(format!(
                "complete segment {msn} ({uri}) vanished or reopened"
            ));
        }
    }
    // The discontinuities that left are exactly what the discontinuity sequence gained,
    // when the older playlist lists every segment that left.
    if older.skipped_segments.is_none() && newer.skipped_segments.is_none() {
        let dropped = newer
            .media_sequence()
            .saturating_sub(older.media_sequence()) as usize;
        if dropped <= older.segments.len() {
            let left = older.segments[..dropped]
                .iter()
                .filter(|s| s.discontinuity)
                .count() as u64;
            if new_ds.saturating_sub(old_ds) != left && new_ds >= old_ds {
                errors.push(format!(
                    "{left} discontinuities left the playlist but EXT-X-DISCONTINUITY-SEQUENCE went from {old_ds} to {new_ds}"
                ));
            }
        }
    }
    // Parts listed in both keep their durations.
    let parts = |p: &Playlist| -> BTreeMap<String, i64> {
        p.segments
            .iter()
            .flat_map(|s| s.parts.iter().map(|x| (x.uri.clone(), ms(x.duration))))
            .collect()
    };
    let new_parts = parts(newer);
    for (uri, duration) in parts(older) {
        if let Some(new_duration) = new_parts.get(&uri)
            && *new_duration != duration
        {
            errors.push(format!(
                "part {uri} lasted {duration} ms, now {new_duration} ms"
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
#[path = "hls_tests.rs"]
mod tests;
