//! The sans-IO side of an HLS viewer: media playlists (classic and LL-HLS), the fMP4 init
//! segment's track timescales, a streaming scanner of fMP4 fragments that finds the decode
//! time of the last sample of each track, and a streaming MPEG-TS scanner that does the same
//! from PES headers. The viewer needs only these times (to look up when the publisher sent
//! the part's last frame); media bytes are never buffered, only each `moof` box.

use anyhow::{Context, bail};

/// Largest `moof` box kept (a 200 ms part has a few hundred bytes of it).
const MAX_MOOF: u64 = 256 * 1024;
/// Largest init segment parsed.
pub const MAX_INIT: usize = 256 * 1024;
/// Largest playlist parsed.
pub const MAX_PLAYLIST: usize = 256 * 1024;

/// One part or segment a media playlist lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Media sequence number of its segment.
    pub msn: u64,
    /// Part index within the segment (`None` for a whole segment).
    pub part: Option<u32>,
    /// The URI as listed (relative to the playlist).
    pub uri: String,
    /// Duration, ms.
    pub duration_ms: u64,
}

/// What a viewer needs from a media playlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaPlaylist {
    /// `EXT-X-TARGETDURATION`, s.
    pub target_duration_s: u64,
    /// `EXT-X-PART-INF:PART-TARGET`, ms (LL-HLS only).
    pub part_target_ms: Option<u64>,
    /// `EXT-X-MAP` URI of the newest map.
    pub map_uri: Option<String>,
    /// Whole segments, oldest first.
    pub segments: Vec<Listed>,
    /// LL-HLS parts, oldest first.
    pub parts: Vec<Listed>,
    /// `EXT-X-PRELOAD-HINT` URI.
    pub preload_hint: Option<String>,
    /// `EXT-X-ENDLIST` was seen.
    pub ended: bool,
}

impl MediaPlaylist {
    /// Parses a media playlist. Parts are numbered from their place in the playlist (the
    /// segment they precede), not from their names.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut lines = text.lines().map(str::trim);
        if lines.next() != Some("#EXTM3U") {
            bail!("not a playlist (no #EXTM3U)");
        }
        let mut p = MediaPlaylist::default();
        let mut msn: u64 = 0;
        let mut part_index: u32 = 0;
        let mut extinf_ms: Option<u64> = None;
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if let Some(tag) = line.strip_prefix('#') {
                let (name, value) = tag.split_once(':').unwrap_or((tag, ""));
                match name {
                    "EXT-X-TARGETDURATION" => {
                        p.target_duration_s = value.parse().context("EXT-X-TARGETDURATION")?;
                    }
                    "EXT-X-MEDIA-SEQUENCE" => {
                        msn = value.parse().context("EXT-X-MEDIA-SEQUENCE")?;
                    }
                    "EXT-X-PART-INF" => {
                        p.part_target_ms = attr(value, "PART-TARGET").and_then(seconds_to_ms);
                    }
                    "EXT-X-MAP" => p.map_uri = attr(value, "URI").map(str::to_owned),
                    "EXTINF" => {
                        let d = value.split(',').next().unwrap_or_default();
                        extinf_ms = Some(seconds_to_ms(d).context("EXTINF")?);
                    }
                    "EXT-X-PART" => {
                        let uri = attr(value, "URI").context("EXT-X-PART without URI")?;
                        let duration = attr(value, "DURATION")
                            .and_then(seconds_to_ms)
                            .context("EXT-X-PART without DURATION")?;
                        p.parts.push(Listed {
                            msn,
                            part: Some(part_index),
                            uri: uri.to_owned(),
                            duration_ms: duration,
                        });
                        part_index += 1;
                    }
                    "EXT-X-PRELOAD-HINT" => {
                        p.preload_hint = attr(value, "URI").map(str::to_owned);
                    }
                    "EXT-X-ENDLIST" => p.ended = true,
                    _ => {}
                }
            } else {
                p.segments.push(Listed {
                    msn,
                    part: None,
                    uri: line.to_owned(),
                    duration_ms: extinf_ms.take().unwrap_or(0),
                });
                msn += 1;
                part_index = 0;
            }
        }
        Ok(p)
    }

    /// The next segment's number: one past the last complete segment listed.
    pub fn next_msn(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.msn + 1)
    }
}

/// The value of attribute `name` in an attribute list (quotes removed).
fn attr<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = list;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"')?;
                let next = quoted[end + 1..].trim_start_matches(',');
                (&quoted[..end], next)
            }
            None => match after.split_once(',') {
                Some((v, n)) => (v, n),
                None => (after, ""),
            },
        };
        if key.trim() == name {
            return Some(value);
        }
        rest = next;
    }
    None
}

/// Decimal seconds ("0.200", "2", "1.96") to ms, rounded.
fn seconds_to_ms(s: &str) -> Option<u64> {
    let v: f64 = s.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * 1000.0).round() as u64)
}

/// Resolves a playlist-relative URI against the playlist's path (`/live/k/media.m3u8` +
/// `part-3.1.m4s` → `/live/k/part-3.1.m4s`). Absolute paths are kept; full URLs are reduced
/// to their path (the viewer stays on its connection).
pub fn resolve(playlist_path: &str, uri: &str) -> String {
    if let Some(rest) = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
    {
        return rest
            .find('/')
            .map_or("/".to_owned(), |i| rest[i..].to_owned());
    }
    if uri.starts_with('/') {
        return uri.to_owned();
    }
    let base = playlist_path.split('?').next().unwrap_or_default();
    let dir = base.rfind('/').map_or("/", |i| &base[..=i]);
    format!("{dir}{uri}")
}

/// What a viewer knows of each track of an fMP4 stream: its timescale, kind and default
/// sample duration (`trex`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track {
    /// Track id.
    pub id: u32,
    /// Units per second of its decode times.
    pub timescale: u32,
    /// A video track (`vide` handler); else audio or other.
    pub video: bool,
    /// `trex` default sample duration.
    pub default_duration: u32,
}

/// Iterates over the boxes in `data`: (type, body).
fn boxes(mut data: &[u8]) -> impl Iterator<Item = anyhow::Result<([u8; 4], &[u8])>> {
    std::iter::from_fn(move || {
        if data.len() < 8 {
            return None;
        }
        let size32 = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as u64;
        let kind = [data[4], data[5], data[6], data[7]];
        let (header, size) = match size32 {
            1 if data.len() >= 16 => (16, u64::from_be_bytes(data[8..16].try_into().ok()?)),
            0 => (8, data.len() as u64),
            n => (8, n),
        };
        if size < header as u64 || size > data.len() as u64 {
            data = &[];
            return Some(Err(anyhow::anyhow!(
                "box {} of {size} bytes does not fit",
                String::from_utf8_lossy(&kind)
            )));
        }
        let body = &data[header..size as usize];
        data = &data[size as usize..];
        Some(Ok((kind, body)))
    })
}

fn child<'a>(data: &'a [u8], kind: &[u8; 4]) -> anyhow::Result<Option<&'a [u8]>> {
    for b in boxes(data) {
        let (k, body) = b?;
        if &k == kind {
            return Ok(Some(body));
        }
    }
    Ok(None)
}

fn be32(b: &[u8], at: usize) -> anyhow::Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .context("box too short")
}

fn be64(b: &[u8], at: usize) -> anyhow::Result<u64> {
    let hi = be32(b, at)?;
    let lo = be32(b, at + 4)?;
    Ok(u64::from(hi) << 32 | u64::from(lo))
}

/// The tracks of an init segment (`moov`).
pub fn parse_init(data: &[u8]) -> anyhow::Result<Vec<Track>> {
    let moov = child(data, b"moov")?.context("init segment without moov")?;
    let mut tracks = Vec::new();
    let mut trex = Vec::new();
    for b in boxes(moov) {
        let (kind, body) = b?;
        match &kind {
            b"trak" => {
                let tkhd = child(body, b"tkhd")?.context("trak without tkhd")?;
                let id = if tkhd.first() == Some(&1) {
                    be32(tkhd, 20)?
                } else {
                    be32(tkhd, 12)?
                };
                let mdia = child(body, b"mdia")?.context("trak without mdia")?;
                let mdhd = child(mdia, b"mdhd")?.context("mdia without mdhd")?;
                let timescale = if mdhd.first() == Some(&1) {
                    be32(mdhd, 20)?
                } else {
                    be32(mdhd, 12)?
                };
                let hdlr = child(mdia, b"hdlr")?.context("mdia without hdlr")?;
                let video = hdlr.get(8..12) == Some(b"vide");
                tracks.push(Track {
                    id,
                    timescale,
                    video,
                    default_duration: 0,
                });
            }
            b"mvex" => {
                for m in boxes(body) {
                    let (k, t) = m?;
                    if &k == b"trex" {
                        trex.push((be32(t, 4)?, be32(t, 12)?));
                    }
                }
            }
            _ => {}
        }
    }
    for (id, duration) in trex {
        if let Some(t) = tracks.iter_mut().find(|t| t.id == id) {
            t.default_duration = duration;
        }
    }
    if tracks.iter().any(|t| t.timescale == 0) {
        bail!("a track with timescale 0");
    }
    Ok(tracks)
}

/// The last sample of one track of a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastSample {
    /// Track id.
    pub track: u32,
    /// Decode time, in the track's timescale.
    pub dts: u64,
    /// Size in bytes (`None` if the fragment does not say).
    pub size: Option<u32>,
}

/// The last sample of each track in one `moof`.
pub fn moof_last_dts(moof: &[u8], tracks: &[Track]) -> anyhow::Result<Vec<LastSample>> {
    let mut out = Vec::new();
    for b in boxes(moof) {
        let (kind, traf) = b?;
        if &kind != b"traf" {
            continue;
        }
        let tfhd = child(traf, b"tfhd")?.context("traf without tfhd")?;
        let flags = be32(tfhd, 0)? & 0x00ff_ffff;
        let id = be32(tfhd, 4)?;
        let mut at = 8;
        if flags & 0x01 != 0 {
            at += 8; // base data offset
        }
        if flags & 0x02 != 0 {
            at += 4; // sample description index
        }
        let mut default_duration = tracks
            .iter()
            .find(|t| t.id == id)
            .map_or(0, |t| t.default_duration);
        if flags & 0x08 != 0 {
            default_duration = be32(tfhd, at)?;
            at += 4;
        }
        let default_size = (flags & 0x10 != 0).then(|| be32(tfhd, at)).transpose()?;
        let tfdt = child(traf, b"tfdt")?.context("traf without tfdt")?;
        let mut dts = if tfdt.first() == Some(&1) {
            be64(tfdt, 4)?
        } else {
            u64::from(be32(tfdt, 4)?)
        };
        let mut last = None;
        for t in boxes(traf) {
            let (k, trun) = t?;
            if &k != b"trun" {
                continue;
            }
            let flags = be32(trun, 0)? & 0x00ff_ffff;
            let count = be32(trun, 4)?;
            let mut at = 8;
            if flags & 0x01 != 0 {
                at += 4;
            }
            if flags & 0x04 != 0 {
                at += 4;
            }
            let per_sample = [0x100, 0x200, 0x400, 0x800]
                .iter()
                .filter(|f| flags & **f != 0)
                .count()
                * 4;
            if trun.len() < at + per_sample * count as usize {
                bail!("trun shorter than its {count} samples");
            }
            for _ in 0..count {
                let duration = if flags & 0x100 != 0 {
                    be32(trun, at)?
                } else {
                    default_duration
                };
                let size_at = at + if flags & 0x100 != 0 { 4 } else { 0 };
                let size = if flags & 0x200 != 0 {
                    Some(be32(trun, size_at)?)
                } else {
                    default_size
                };
                last = Some((dts, size));
                dts += u64::from(duration);
                at += per_sample;
            }
        }
        if let Some((dts, size)) = last {
            out.push(LastSample {
                track: id,
                dts,
                size,
            });
        }
    }
    Ok(out)
}

/// Follows the top-level boxes of an fMP4 body as it streams in and keeps only each `moof`,
/// so that a part or a whole segment is scanned without being buffered.
#[derive(Debug, Default)]
pub struct FragmentScanner {
    header: Vec<u8>,
    /// Bytes left in the current box, and whether they are kept (a moof).
    left: u64,
    keeping: bool,
    moof: Vec<u8>,
    /// The last complete moof of the body.
    pub last_moof: Vec<u8>,
}

impl FragmentScanner {
    /// Feeds body bytes.
    pub fn feed(&mut self, mut data: &[u8]) -> anyhow::Result<()> {
        while !data.is_empty() {
            if self.left == 0 {
                let need = if self.header.len() >= 8
                    && u32::from_be_bytes(self.header[..4].try_into().unwrap_or_default()) == 1
                {
                    16
                } else {
                    8
                };
                let n = (need - self.header.len()).min(data.len());
                self.header.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.header.len() < need {
                    continue;
                }
                if need == 8 && u32::from_be_bytes(self.header[..4].try_into()?) == 1 {
                    continue; // a 64-bit size follows
                }
                let size = match need {
                    16 => u64::from_be_bytes(self.header[8..16].try_into()?),
                    _ => u64::from(u32::from_be_bytes(self.header[..4].try_into()?)),
                };
                if size < need as u64 {
                    bail!("box of {size} bytes");
                }
                self.keeping = &self.header[4..8] == b"moof";
                if self.keeping && size > MAX_MOOF {
                    bail!("moof of {size} bytes");
                }
                self.moof.clear();
                self.left = size - need as u64;
                self.header.clear();
                if self.left == 0 && self.keeping {
                    std::mem::swap(&mut self.last_moof, &mut self.moof);
                }
                continue;
            }
            let n = (self.left.min(data.len() as u64)) as usize;
            if self.keeping {
                self.moof.extend_from_slice(&data[..n]);
            }
            self.left -= n as u64;
            data = &data[n..];
            if self.left == 0 && self.keeping {
                std::mem::swap(&mut self.last_moof, &mut self.moof);
            }
        }
        Ok(())
    }

    /// Ready for the next body; keeps the buffers' capacity.
    pub fn reset(&mut self) {
        self.header.clear();
        self.left = 0;
        self.keeping = false;
        self.moof.clear();
        self.last_moof.clear();
    }
}

/// Follows MPEG-TS packets as they stream in and keeps the decode time (90 kHz) of the last
/// video PES and the presentation time of the last audio PES.
#[derive(Debug, Default)]
pub struct TsScanner {
    carry: Vec<u8>,
    /// DTS (PTS when there is none) of the last video PES, 90 kHz.
    pub last_video: Option<u64>,
    /// PTS of the last audio PES, 90 kHz (its first frame's: a PES may carry several).
    pub last_audio: Option<u64>,
}

impl TsScanner {
    /// Feeds body bytes.
    pub fn feed(&mut self, mut data: &[u8]) -> anyhow::Result<()> {
        if !self.carry.is_empty() {
            let n = (188 - self.carry.len()).min(data.len());
            self.carry.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.carry.len() < 188 {
                return Ok(());
            }
            let packet = std::mem::take(&mut self.carry);
            self.packet(&packet)?;
            self.carry = packet;
            self.carry.clear();
        }
        let mut packets = data.chunks_exact(188);
        for p in &mut packets {
            self.packet(p)?;
        }
        self.carry.extend_from_slice(packets.remainder());
        Ok(())
    }

    fn packet(&mut self, p: &[u8]) -> anyhow::Result<()> {
        if p[0] != 0x47 {
            bail!("lost MPEG-TS sync");
        }
        let unit_start = p[1] & 0x40 != 0;
        if !unit_start {
            return Ok(());
        }
        let mut at = 4;
        match (p[3] >> 4) & 0x03 {
            1 => {}
            3 => at += 1 + usize::from(p[4]),
            _ => return Ok(()),
        }
        let Some(pes) = p.get(at..) else {
            return Ok(());
        };
        if pes.len() < 14 || pes[..3] != [0, 0, 1] {
            return Ok(());
        }
        let stream_id = pes[3];
        let flags = pes[7] >> 6;
        let time = |b: &[u8]| {
            (u64::from(b[0] >> 1 & 0x07) << 30)
                | (u64::from(b[1]) << 22)
                | (u64::from(b[2] >> 1) << 15)
                | (u64::from(b[3]) << 7)
                | u64::from(b[4] >> 1)
        };
        let pts = (flags & 0x02 != 0).then(|| time(&pes[9..14]));
        let dts = (flags == 0x03 && pes.len() >= 19).then(|| time(&pes[14..19]));
        match stream_id {
            0xe0..=0xef => self.last_video = dts.or(pts).or(self.last_video),
            0xc0..=0xdf => self.last_audio = pts.or(self.last_audio),
            _ => {}
        }
        Ok(())
    }

    /// Ready for the next body.
    pub fn reset(&mut self) {
        self.carry.clear();
        self.last_video = None;
        self.last_audio = None;
    }
}

/// Converts a decode time in `timescale` units to ms, rounded.
pub fn to_ms(dts: u64, timescale: u32) -> u64 {
    let ts = u64::from(timescale.max(1));
    (dts.saturating_mul(1000) + ts / 2) / ts
}

#[cfg(test)]
mod tests {
    use super::*;

    const LL: &str = "#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:2
#EXT-X-PART-INF:PART-TARGET=0.200
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600,CAN-SKIP-UNTIL=12.0
#EXT-X-MEDIA-SEQUENCE:11
#EXT-X-MAP:URI=\"init-0.mp4\"
#EXTINF:2.000,
seg-11.m4s
#EXT-X-PART:DURATION=0.200,URI=\"part-12.0.m4s\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.200,URI=\"part-12.1.m4s\"
#EXTINF:1.967,
seg-12.m4s
#EXT-X-PART:DURATION=0.200,INDEPENDENT=YES,URI=\"part-13.0.m4s\"
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-13.1.m4s\"
";

    #[test]
    fn parses_an_ll_hls_playlist() {
        let p = MediaPlaylist::parse(LL).unwrap();
        assert_eq!(p.target_duration_s, 2);
        assert_eq!(p.part_target_ms, Some(200));
        assert_eq!(p.map_uri.as_deref(), Some("init-0.mp4"));
        assert_eq!(p.segments.len(), 2);
        assert_eq!((p.segments[1].msn, p.segments[1].duration_ms), (12, 1967));
        let parts: Vec<_> = p.parts.iter().map(|l| (l.msn, l.part, &*l.uri)).collect();
        assert_eq!(
            parts,
            [
                (12, Some(0), "part-12.0.m4s"),
                (12, Some(1), "part-12.1.m4s"),
                (13, Some(0), "part-13.0.m4s")
            ]
        );
        assert_eq!(p.preload_hint.as_deref(), Some("part-13.1.m4s"));
        assert_eq!(p.next_msn(), 13);
        assert!(!p.ended);
        assert!(MediaPlaylist::parse("hello").is_err());
    }

    #[test]
    fn parses_a_classic_playlist() {
        let text = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-MEDIA-SEQUENCE:4\n\
                    #EXT-X-TARGETDURATION:2\n#EXTINF:2.002,\nbench-4.ts\n#EXTINF:1.9,\nbench-5.ts\n";
        let p = MediaPlaylist::parse(text).unwrap();
        assert_eq!(p.target_duration_s, 2);
        assert_eq!(p.part_target_ms, None);
        let segs: Vec<_> = p
            .segments
            .iter()
            .map(|s| (s.msn, &*s.uri, s.duration_ms))
            .collect();
        assert_eq!(segs, [(4, "bench-4.ts", 2002), (5, "bench-5.ts", 1900)]);
        assert!(p.parts.is_empty());
    }

    #[test]
    fn resolves_uris() {
        assert_eq!(
            resolve("/live/k/media.m3u8?_HLS_msn=3", "part-3.1.m4s"),
            "/live/k/part-3.1.m4s"
        );
        assert_eq!(resolve("/hls/k.m3u8", "k-4.ts"), "/hls/k-4.ts");
        assert_eq!(resolve("/hls/k.m3u8", "/x/k-4.ts"), "/x/k-4.ts");
        assert_eq!(resolve("/a.m3u8", "http://h:1/b/c.ts"), "/b/c.ts");
    }

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    fn full(version: u8, flags: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = (u32::from(version) << 24 | flags).to_be_bytes().to_vec();
        v.extend_from_slice(rest);
        v
    }

    fn trak(id: u32, timescale: u32, handler: &[u8; 4]) -> Vec<u8> {
        let mut tkhd = vec![0u8; 8]; // creation, modification
        tkhd.extend_from_slice(&id.to_be_bytes());
        tkhd.extend_from_slice(&[0; 68]);
        let mut mdhd = vec![0u8; 8];
        mdhd.extend_from_slice(&timescale.to_be_bytes());
        mdhd.extend_from_slice(&[0; 8]);
        let mut hdlr = vec![0u8; 4];
        hdlr.extend_from_slice(handler);
        hdlr.extend_from_slice(&[0; 13]);
        let mdia = [
            bx(b"mdhd", &full(0, 0, &mdhd)),
            bx(b"hdlr", &full(0, 0, &hdlr)),
        ]
        .concat();
        let body = [bx(b"tkhd", &full(0, 3, &tkhd)), bx(b"mdia", &mdia)].concat();
        bx(b"trak", &body)
    }

    fn init() -> Vec<u8> {
        let trex = |id: u32, d: u32| {
            let mut b = id.to_be_bytes().to_vec();
            b.extend_from_slice(&1u32.to_be_bytes());
            b.extend_from_slice(&d.to_be_bytes());
            b.extend_from_slice(&[0; 8]);
            bx(b"trex", &full(0, 0, &b))
        };
        let mvex = bx(b"mvex", &[trex(1, 0), trex(2, 1024)].concat());
        let moov = [
            bx(b"mvhd", &[0; 100]),
            trak(1, 90_000, b"vide"),
            trak(2, 44_100, b"soun"),
            mvex,
        ]
        .concat();
        [bx(b"ftyp", b"iso6mp41"), bx(b"moov", &moov)].concat()
    }

    /// A moof: video track 1 (tfdt v1, 3 samples of explicit duration 3000), audio track 2
    /// (tfdt v0, 4 samples of the trex default 1024).
    fn moof() -> Vec<u8> {
        let video = {
            let tfhd = bx(b"tfhd", &full(0, 0x02_0000, &1u32.to_be_bytes()));
            let tfdt = bx(b"tfdt", &full(1, 0, &900_000u64.to_be_bytes()));
            let mut run = 3u32.to_be_bytes().to_vec();
            run.extend_from_slice(&0u32.to_be_bytes()); // data offset
            for _ in 0..3 {
                run.extend_from_slice(&3000u32.to_be_bytes());
                run.extend_from_slice(&500u32.to_be_bytes());
            }
            let trun = bx(b"trun", &full(0, 0x301, &run));
            bx(b"traf", &[tfhd, tfdt, trun].concat())
        };
        let audio = {
            let tfhd = bx(b"tfhd", &full(0, 0, &2u32.to_be_bytes()));
            let tfdt = bx(b"tfdt", &full(0, 0, &441_000u32.to_be_bytes()));
            let mut run = 4u32.to_be_bytes().to_vec();
            for _ in 0..4 {
                run.extend_from_slice(&300u32.to_be_bytes());
            }
            let trun = bx(b"trun", &full(0, 0x200, &run));
            bx(b"traf", &[tfhd, tfdt, trun].concat())
        };
        bx(
            b"moof",
            &[bx(b"mfhd", &full(0, 0, &7u32.to_be_bytes())), video, audio].concat(),
        )
    }

    #[test]
    fn finds_the_last_sample_of_each_track() {
        let tracks = parse_init(&init()).unwrap();
        assert_eq!(tracks.len(), 2);
        assert_eq!(
            (tracks[0].id, tracks[0].timescale, tracks[0].video),
            (1, 90_000, true)
        );
        assert_eq!((tracks[1].timescale, tracks[1].video), (44_100, false));
        assert_eq!(tracks[1].default_duration, 1024);

        // Two fragments (a whole segment), fed at every split: the last moof is kept.
        let first = moof();
        let mut second = moof();
        // The second fragment's video tfdt: 900,000 -> 909,000.
        let at = second
            .windows(8)
            .position(|w| w == 900_000u64.to_be_bytes())
            .unwrap();
        second[at..at + 8].copy_from_slice(&909_000u64.to_be_bytes());
        let body = [
            first,
            bx(b"mdat", &[0; 1000]),
            second,
            bx(b"mdat", &[1; 700]),
        ]
        .concat();
        for step in [1, 7, 100, body.len()] {
            let mut s = FragmentScanner::default();
            for piece in body.chunks(step) {
                s.feed(piece).unwrap();
            }
            let moof = &s.last_moof[..];
            let last = moof_last_dts(moof, &tracks).unwrap();
            let last: Vec<_> = last.iter().map(|l| (l.track, l.dts, l.size)).collect();
            assert_eq!(
                last,
                [
                    (1, 909_000 + 6000, Some(500)),
                    (2, 441_000 + 3 * 1024, Some(300))
                ],
                "step {step}"
            );
        }
        assert_eq!(to_ms(915_000, 90_000), 10_167);
        assert_eq!(to_ms(444_072, 44_100), 10_070);
        assert!(parse_init(b"\0\0\0\x08free").is_err());
        let mut bad = FragmentScanner::default();
        assert!(bad.feed(b"\0\0\0\x04moof").is_err());
    }

    fn ts_packet(pusi: bool, stream_id: u8, pts: u64, dts: Option<u64>) -> Vec<u8> {
        let mut p = vec![0x47, if pusi { 0x41 } else { 0x01 }, 0x00, 0x10];
        let code = |tag: u8, t: u64| {
            [
                tag << 4 | ((t >> 29) as u8 & 0x0e) | 1,
                (t >> 22) as u8,
                ((t >> 14) as u8 & 0xfe) | 1,
                (t >> 7) as u8,
                ((t << 1) as u8 & 0xfe) | 1,
            ]
        };
        p.extend_from_slice(&[0, 0, 1, stream_id, 0, 0, 0x80]);
        match dts {
            Some(d) => {
                p.extend_from_slice(&[0xc0, 10]);
                p.extend_from_slice(&code(3, pts));
                p.extend_from_slice(&code(1, d));
            }
            None => {
                p.extend_from_slice(&[0x80, 5]);
                p.extend_from_slice(&code(2, pts));
            }
        }
        p.resize(188, 0xff);
        p
    }

    #[test]
    fn ts_scanner_keeps_the_last_pes_times() {
        let big = (1u64 << 32) + 12_345;
        let body = [
            ts_packet(true, 0xe0, 9000, Some(6000)),
            ts_packet(false, 0xe0, 1, None),
            ts_packet(true, 0xc0, 7000, None),
            ts_packet(true, 0xe0, big + 3000, Some(big)),
            ts_packet(false, 0xc0, 1, None),
        ]
        .concat();
        for step in [1, 100, 188, 1000] {
            let mut s = TsScanner::default();
            for piece in body.chunks(step) {
                s.feed(piece).unwrap();
            }
            assert_eq!(
                (s.last_video, s.last_audio),
                (Some(big), Some(7000)),
                "step {step}"
            );
        }
        let mut s = TsScanner::default();
        assert!(s.feed(&[0u8; 188]).is_err());
    }
}
