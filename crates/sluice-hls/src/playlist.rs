//! Playlists written from a [`Window`], the names of the resources under `/APP/NAME/`, and
//! the LL-HLS delivery directives of a media playlist request (RFC 8216bis §6.2.5).
//!
//! This module owns the text: which tags a playlist carries and in what order, how numbers
//! and dates are written, and when a delta update or a blocking reload can be answered. It
//! does no I/O and keeps no state; the caller renders once per window change and shares the
//! bytes with every viewer.
//!
//! Two flavours come out of the same window: LL-HLS for fMP4 windows with a part target
//! (parts, preload hint, blocking reload and delta updates advertised in
//! `EXT-X-SERVER-CONTROL`), and classic HLS otherwise (TS: segments only, no
//! `EXT-X-SERVER-CONTROL`, so the lowest protocol version old players accept).

use std::fmt::Write as _;

use crate::window::{Container, SegmentInfo, Window};

/// Queries longer than this are refused: playlist queries carry three short directives and,
/// later, an access token.
pub const MAX_QUERY: usize = 2048;

/// `PART-HOLD-BACK` in part targets (the spec's MUST is 2, its SHOULD 3).
const PART_HOLD_BACK_PARTS: u64 = 3;
/// `CAN-SKIP-UNTIL` in target durations (the spec's minimum).
const SKIP_UNTIL_TARGETS: u64 = 6;
/// Parts stay listed for segments that end within this many target durations of the end
/// (RFC 8216bis §6.2.2: removed once further than three).
const PART_LISTING_TARGETS: u64 = 3;

/// A resource under `/APP/NAME/` (the plan's URL scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `media.m3u8`: the media playlist.
    MediaPlaylist,
    /// `init-{id}.mp4`: an fMP4 init segment.
    Init(u32),
    /// `seg-{msn}.m4s` or `seg-{msn}.ts`: a whole segment.
    Segment(u64),
    /// `part-{msn}.{i}.m4s`: LL-HLS part `i` (0-based) of segment `msn`.
    Part(u64, u32),
}

/// The resource `file` (the last path component) names, for a stream muxed into
/// `container`. Strict: numbers are plain decimal without sign, leading zeros or overflow,
/// and the extension must be the container's (TS streams have no init segments or parts),
/// so that every resource has exactly one name.
pub fn parse_resource(file: &str, container: Container) -> Option<Resource> {
    if file == "media.m3u8" {
        return Some(Resource::MediaPlaylist);
    }
    if let Some(id) = file
        .strip_prefix("init-")
        .and_then(|r| r.strip_suffix(".mp4"))
    {
        return (container == Container::Fmp4)
            .then(|| decimal(id))
            .flatten()
            .map(Resource::Init);
    }
    let ext = container.extension();
    if let Some(msn) = file
        .strip_prefix("seg-")
        .and_then(|r| r.strip_suffix(ext))
        .and_then(|r| r.strip_suffix('.'))
    {
        return decimal(msn).map(Resource::Segment);
    }
    if container == Container::Fmp4
        && let Some(rest) = file
            .strip_prefix("part-")
            .and_then(|r| r.strip_suffix(".m4s"))
    {
        let (msn, index) = rest.split_once('.')?;
        return Some(Resource::Part(decimal(msn)?, decimal(index)?));
    }
    None
}

/// The name of init segment `id`, relative to the media playlist.
pub fn init_uri(id: u32) -> String {
    format!("init-{id}.mp4")
}

/// The name of segment `msn` in `container`, relative to the media playlist.
pub fn segment_uri(msn: u64, container: Container) -> String {
    format!("seg-{msn}.{}", container.extension())
}

/// The name of part `index` of segment `msn`, relative to the media playlist.
pub fn part_uri(msn: u64, index: u32) -> String {
    format!("part-{msn}.{index}.m4s")
}

/// A decimal number as the URL scheme and the delivery directives write it: digits only,
/// no leading zero (but "0" itself), no overflow of `T`.
fn decimal<T: TryFrom<u64>>(s: &str) -> Option<T> {
    let bytes = s.as_bytes();
    if bytes.is_empty() || (bytes.len() > 1 && bytes[0] == b'0') {
        return None;
    }
    let mut value: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    T::try_from(value).ok()
}

/// The `_HLS_skip` delivery directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Skip {
    /// A full playlist.
    #[default]
    No,
    /// `_HLS_skip=YES`: a delta update that skips old segments.
    Yes,
    /// `_HLS_skip=v2`: a delta update that also skips old date ranges. We list no date
    /// ranges (and do not advertise `CAN-SKIP-DATERANGES`), so it is answered like `YES`.
    V2,
}

/// The LL-HLS delivery directives of a media playlist request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Directives {
    /// `_HLS_msn`: block until the playlist holds this segment (or a later one).
    pub msn: Option<u64>,
    /// `_HLS_part`: with `msn`, block until the playlist holds this part of that segment.
    pub part: Option<u32>,
    /// `_HLS_skip`: the client asks for a delta update.
    pub skip: Skip,
}

/// Why a media playlist query was refused (answered with 400 Bad Request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The query is longer than [`MAX_QUERY`].
    #[error("query longer than {MAX_QUERY} bytes")]
    TooLong,
    /// A directive's value is not a plain decimal number in range (or not YES/v2 for skip).
    #[error("bad value for {0}")]
    BadValue(&'static str),
    /// A directive appears more than once.
    #[error("{0} given more than once")]
    Duplicate(&'static str),
    /// `_HLS_part` without `_HLS_msn` (RFC 8216bis §6.2.5.2: a MUST for 400).
    #[error("_HLS_part without _HLS_msn")]
    PartWithoutMsn,
}

/// Parses the query of a media playlist request (without the `?`). Parameters other than
/// the `_HLS_` directives are ignored: they will carry access tokens.
pub fn parse_query(query: &str) -> Result<Directives, QueryError> {
    if query.len() > MAX_QUERY {
        return Err(QueryError::TooLong);
    }
    let mut directives = Directives::default();
    let mut skip_seen = false;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "_HLS_msn" => {
                let msn = decimal(value).ok_or(QueryError::BadValue("_HLS_msn"))?;
                if directives.msn.replace(msn).is_some() {
                    return Err(QueryError::Duplicate("_HLS_msn"));
                }
            }
            "_HLS_part" => {
                let part = decimal(value).ok_or(QueryError::BadValue("_HLS_part"))?;
                if directives.part.replace(part).is_some() {
                    return Err(QueryError::Duplicate("_HLS_part"));
                }
            }
            "_HLS_skip" => {
                if std::mem::replace(&mut skip_seen, true) {
                    return Err(QueryError::Duplicate("_HLS_skip"));
                }
                directives.skip = match value {
                    "YES" => Skip::Yes,
                    "v2" => Skip::V2,
                    _ => return Err(QueryError::BadValue("_HLS_skip")),
                };
            }
            _ => {}
        }
    }
    if directives.part.is_some() && directives.msn.is_none() {
        return Err(QueryError::PartWithoutMsn);
    }
    Ok(directives)
}

/// Whether a blocking playlist reload can be answered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectiveState {
    /// The requested segment/part is listed (or no blocking was asked for): answer now.
    Ready,
    /// Not listed yet: hold the request until the window changes (or the caller's deadline,
    /// three target durations, passes: then 503).
    Wait,
    /// Further ahead than the spec lets a client ask (more than two segments after the last
    /// one, or more than the Advance Part Limit after the last part): 400 at once.
    TooFarAhead,
    /// Before the window: the segment has left it. The spec says to answer with the whole
    /// playlist at once.
    Gone,
}

/// Whether the request's target is already in `window`. Classic (non-LL) playlists do not
/// advertise blocking reload, so there the directives are ignored ([`DirectiveState::Ready`]).
pub fn directive_state(window: &Window, d: &Directives) -> DirectiveState {
    let Some(msn) = d.msn else {
        return DirectiveState::Ready;
    };
    if !low_latency(window) {
        return DirectiveState::Ready;
    }
    // The last segment the playlist lists: complete, or open with at least one part.
    let last_listed = window
        .segments
        .iter()
        .rev()
        .find(|s| s.complete || !s.parts.is_empty());
    let Some(last) = last_listed else {
        let next = window.segments.back().map_or(0, |s| s.msn);
        return if msn > next.saturating_add(2) {
            DirectiveState::TooFarAhead
        } else {
            DirectiveState::Wait
        };
    };
    if msn > last.msn.saturating_add(2) {
        return DirectiveState::TooFarAhead;
    }
    if msn < window.media_sequence() {
        return DirectiveState::Gone;
    }
    let Some(part) = d.part else {
        // A segment is there once complete; a later segment's parts imply it is.
        let ready = window
            .segments
            .iter()
            .any(|s| (s.msn >= msn && s.complete) || (s.msn > msn && !s.parts.is_empty()));
        return if ready {
            DirectiveState::Ready
        } else {
            DirectiveState::Wait
        };
    };
    // Advance Part Limit: 3 / PART-TARGET when the part target is under a second, else 3.
    let limit = if window.part_target_ms < 1000 {
        3000u64.div_ceil(u64::from(window.part_target_ms.max(1)))
    } else {
        3
    };
    let last_index = u64::try_from(last.parts.len().saturating_sub(1)).unwrap_or(u64::MAX);
    let ahead = if msn == last.msn {
        u64::from(part).saturating_sub(last_index)
    } else if msn > last.msn {
        // At least every part up to this one in a segment not begun yet.
        u64::from(part) + 1
    } else {
        0
    };
    if ahead > limit {
        return DirectiveState::TooFarAhead;
    }
    match window.segment(msn) {
        Some(s) if (part as usize) < s.parts.len() => DirectiveState::Ready,
        // A part index past the end of a complete segment means part 0 of the next one
        // (RFC 8216bis §6.2.5.2).
        Some(s) if s.complete => match window.segment(msn + 1) {
            Some(next) if !next.parts.is_empty() => DirectiveState::Ready,
            _ => DirectiveState::Wait,
        },
        _ => DirectiveState::Wait,
    }
}

/// LL-HLS (parts, preload hint, server control) or classic HLS.
fn low_latency(window: &Window) -> bool {
    window.container == Container::Fmp4 && window.part_target_ms > 0
}

/// Appends the media playlist for `window` to `out`.
///
/// `skip` asks for a delta update: honoured only in LL-HLS playlists (which advertise
/// `CAN-SKIP-UNTIL`), and only when some complete segments end further than the skip boundary
/// (6 × target duration) from the end of the playlist; those are replaced by
/// `EXT-X-SKIP:SKIPPED-SEGMENTS=N`. With nothing to skip the full playlist is written.
///
/// The open (last, incomplete) segment is listed by its parts only; a complete segment has
/// its `EXTINF` and URI, preceded by its parts when it ends within three target durations of
/// the end of the playlist.
pub fn media_playlist(window: &Window, skip: Skip, out: &mut String) {
    let ll = low_latency(window);
    // Never below a listed segment's rounded duration (the window promises it; a wrong
    // TARGETDURATION makes players stall).
    let target_s = window
        .segments
        .iter()
        .filter(|s| s.complete)
        .map(|s| s.duration_ms().saturating_add(500) / 1000)
        .fold(u64::from(window.target_duration_s).max(1), u64::max);
    let target_ms = target_s.saturating_mul(1000);

    // Where each listed segment ends, relative to the end of the playlist.
    let listed_ms: u64 = window.segments.iter().map(SegmentInfo::duration_ms).sum();
    let skipped = if ll && skip != Skip::No {
        let boundary_ms = target_ms.saturating_mul(SKIP_UNTIL_TARGETS);
        let mut end_ms = 0u64;
        window
            .segments
            .iter()
            .take_while(|s| {
                end_ms += s.duration_ms();
                s.complete && listed_ms - end_ms > boundary_ms
            })
            .count()
    } else {
        0
    };

    let version = match (ll, window.container) {
        // CAN-SKIP-UNTIL is advertised, so delta responses carry EXT-X-SKIP (version 9);
        // full and delta responses of one playlist declare the same version.
        (true, _) => 9,
        // EXT-X-MAP outside an I-frame playlist.
        (false, Container::Fmp4) => 6,
        // Decimal EXTINF durations.
        (false, Container::Ts) => 3,
    };
    out.push_str("#EXTM3U\n");
    let _ = writeln!(out, "#EXT-X-VERSION:{version}");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{target_s}");
    if ll {
        let part_target_ms = u64::from(window.part_target_ms);
        out.push_str("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=");
        seconds(out, target_ms.saturating_mul(SKIP_UNTIL_TARGETS));
        out.push_str(",PART-HOLD-BACK=");
        seconds(out, part_target_ms * PART_HOLD_BACK_PARTS);
        out.push_str("\n#EXT-X-PART-INF:PART-TARGET=");
        seconds(out, part_target_ms);
        out.push('\n');
    }
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", window.media_sequence());
    let _ = writeln!(
        out,
        "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
        window.discontinuity_sequence
    );
    out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    if skipped > 0 {
        let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }

    let part_window_ms = target_ms.saturating_mul(PART_LISTING_TARGETS);
    let mut end_ms = 0u64;
    let mut map: Option<u32> = None;
    for (index, segment) in window.segments.iter().enumerate() {
        end_ms += segment.duration_ms();
        if index < skipped {
            continue;
        }
        if !segment.complete && (!ll || segment.parts.is_empty()) {
            // Nothing of it to list yet (classic HLS lists complete segments only); the
            // preload hint names its next part.
            continue;
        }
        if segment.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if window.container == Container::Fmp4 && map != Some(segment.init_id) {
            map = Some(segment.init_id);
            let _ = writeln!(out, "#EXT-X-MAP:URI=\"init-{}.mp4\"", segment.init_id);
        }
        out.push_str("#EXT-X-PROGRAM-DATE-TIME:");
        date_time(out, segment.pdt_ms);
        out.push('\n');
        if ll && (!segment.complete || listed_ms - end_ms <= part_window_ms) {
            for (i, part) in segment.parts.iter().enumerate() {
                out.push_str("#EXT-X-PART:DURATION=");
                seconds(out, u64::from(part.duration_ms));
                let _ = write!(out, ",URI=\"part-{}.{i}.m4s\"", segment.msn);
                if part.independent {
                    out.push_str(",INDEPENDENT=YES");
                }
                out.push('\n');
            }
        }
        if segment.complete {
            out.push_str("#EXTINF:");
            seconds(out, segment.duration_ms());
            let _ = writeln!(
                out,
                ",\nseg-{}.{}",
                segment.msn,
                window.container.extension()
            );
        }
    }

    if ll {
        let next = match window.segments.back() {
            Some(s) if !s.complete => Some((s.msn, s.parts.len())),
            Some(s) => Some((s.msn + 1, 0)),
            None => None,
        };
        if let Some((msn, index)) = next {
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-{msn}.{index}.m4s\""
            );
        }
    }
}

/// Appends the multivariant playlist: one variant, `media_uri` (e.g. `cam/media.m3u8`),
/// with its measured bandwidth, its RFC 6381 codecs (omitted when empty) and resolution.
pub fn multivariant(
    media_uri: &str,
    bandwidth_bps: u64,
    codecs: &str,
    resolution: Option<(u32, u32)>,
    out: &mut String,
) {
    out.push_str("#EXTM3U\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let _ = write!(out, "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth_bps}");
    if !codecs.is_empty() {
        out.push_str(",CODECS=\"");
        // A quote or a line break would end the attribute (or the line) early.
        out.extend(codecs.chars().filter(|c| *c != '"' && !c.is_control()));
        out.push('"');
    }
    if let Some((width, height)) = resolution {
        let _ = write!(out, ",RESOLUTION={width}x{height}");
    }
    out.push('\n');
    // The URI comes from the request path: a line break must not start a new line.
    for c in media_uri.chars() {
        if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out.push('\n');
}

/// Writes milliseconds as decimal seconds with three decimals ("1.040").
fn seconds(out: &mut String, ms: u64) {
    let _ = write!(out, "{}.{:03}", ms / 1000, ms % 1000);
}

/// Writes milliseconds since the Unix epoch as ISO 8601 UTC with milliseconds
/// ("2024-02-29T13:05:09.042Z").
fn date_time(out: &mut String, epoch_ms: u64) {
    let days = epoch_ms / 86_400_000;
    let ms_of_day = epoch_ms % 86_400_000;
    let (year, month, day) = civil_date(days);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    );
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01: count in 400-year
/// eras (146 097 days each) of years that begin on March 1, so that the leap day is the last
/// day of its year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // 1970-01-01 is day 719 468 counted from 0000-03-01.
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    // Years of 365 days, with a leap day every 4th year, none every 100th, one every 400th.
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March, 153 days per 5 months.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[path = "playlist_tests.rs"]
mod tests;
