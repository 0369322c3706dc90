//! HLS viewers: one HTTP/1.1 keep-alive connection each, one request at a time, reading
//! into the scratch buffer all viewers share (see `viewer.rs`). Only playlists and init
//! segments are kept whole; parts and segments stream through a scanner that keeps each
//! `moof` (fMP4) or PES header times (MPEG-TS).
//!
//! - LL-HLS (`--proto hls`): the media playlist, then blocking reloads
//!   (`_HLS_msn`/`_HLS_part` of the next part) and a GET of every new part as soon as a
//!   playlist lists it.
//! - Classic (`--proto hls-classic`): the media playlist every target duration / 2 and a GET
//!   of every new segment.
//!
//! For each part or segment downloaded, the decode time of its last sample (per track) is
//! mapped back to the frame the publisher sent, which gives "listed" (playlist response −
//! last frame sent) and "available" (download complete − last frame sent).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::hls::{
    FragmentScanner, Listed, MAX_INIT, MAX_PLAYLIST, MediaPlaylist, Track, TsScanner,
    moof_last_dts, parse_init, resolve, to_ms,
};
use crate::http::{BodyDecoder, Framing, HttpUrl, MAX_HEAD, head_end, parse_head};
use crate::ring::Sent;
use crate::state::{AUDIO, Clock, Shared, VIDEO, Viewer};
use crate::viewer::{Config, SCRATCH_BUF, enable_rx_timestamps, recv};

/// Where and how an HLS viewer plays.
#[derive(Debug)]
pub struct HlsTarget {
    /// The media playlist.
    pub url: HttpUrl,
    /// LL-HLS (blocking reloads, parts) rather than classic polling of segments.
    pub low_latency: bool,
    /// LL-HLS: also GET the preload hint's part ahead of the playlist that lists it.
    pub preload: bool,
}

/// Retry interval while the server has no playlist yet (the stream is starting).
const NOT_YET: Duration = Duration::from_millis(200);
/// Bytes of a read copied into the head buffer at a time while looking for its end.
const HEAD_STEP: usize = 256;
/// Shortest classic reload interval.
const MIN_POLL: Duration = Duration::from_millis(100);
/// Segments whose sizes a viewer remembers (for the window's bytes).
const SEGMENT_LOG: usize = 64;
/// A sample's decode time may trail the sent frame's timestamp by rounding: this much, ms.
const MATCH_SLACK_MS: u32 = 1;
/// Largest offset between the server's and the publisher's timestamps a viewer accepts, ms.
const MAX_OFFSET_MS: u64 = 10_000;

/// Where a response body goes.
enum Sink<'a> {
    /// Kept, up to a limit.
    Keep(&'a mut Vec<u8>, usize),
    /// fMP4 fragments.
    Fmp4(&'a mut FragmentScanner),
    /// MPEG-TS packets.
    Ts(&'a mut TsScanner),
}

impl Sink<'_> {
    fn feed(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::Keep(buf, limit) => {
                if buf.len() + data.len() > *limit {
                    bail!("response body over {limit} bytes");
                }
                buf.extend_from_slice(data);
                Ok(())
            }
            Sink::Fmp4(s) => s.feed(data),
            Sink::Ts(s) => s.feed(data),
        }
    }
}

/// A completed response.
struct Response {
    status: u16,
    /// Body bytes.
    bytes: u64,
    /// When its last bytes arrived: the kernel's receive timestamp if the socket gave one,
    /// else when the generator read them (realtime ns).
    real_ns: u64,
}

/// The viewer's connection, reopened when the server closes it between requests.
struct Conn<'a> {
    url: &'a HttpUrl,
    socket: Option<TcpStream>,
    request: String,
    head: Vec<u8>,
}

impl<'a> Conn<'a> {
    fn new(url: &'a HttpUrl) -> Self {
        Self {
            url,
            socket: None,
            request: String::new(),
            head: Vec::new(),
        }
    }

    /// GET `path`; the body goes to `sink`. `None` when stopped.
    async fn get(
        &mut self,
        path: &str,
        cfg: &Config,
        sh: &RefCell<Shared>,
        v: &mut Viewer,
        stop: &CancellationToken,
        sink: &mut Sink<'_>,
    ) -> anyhow::Result<Option<Response>> {
        self.request.clear();
        let _ = write!(
            self.request,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice-bench\r\n\r\n",
            self.url.host
        );
        for attempt in 0..2 {
            let reused = self.socket.is_some();
            if self.socket.is_none() {
                let connect = timeout(cfg.connect_timeout, TcpStream::connect(&self.url.addr));
                let socket = tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    s = connect => s.context("timed out connecting")?.context("connect")?,
                };
                socket.set_nodelay(true)?;
                enable_rx_timestamps(&socket);
                self.socket = Some(socket);
            }
            let result = tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                r = timeout(cfg.connect_timeout, self.exchange(sh, v, sink)) => {
                    r.with_context(|| format!("no response to {path} in time"))?
                }
            };
            match result {
                Ok(r) => return Ok(Some(r)),
                // A kept-alive connection the server closed: once more on a new one.
                Err(Exchange::ClosedEarly) if reused && attempt == 0 => {
                    self.socket = None;
                    let mut sh = sh.borrow_mut();
                    if sh.in_window {
                        sh.hls.reconnects += 1;
                    }
                }
                Err(Exchange::ClosedEarly) => bail!("closed by the server"),
                Err(Exchange::Failed(e)) => {
                    self.socket = None;
                    return Err(e);
                }
            }
        }
        bail!("closed by the server")
    }

    /// Writes the request and reads the response.
    async fn exchange(
        &mut self,
        sh: &RefCell<Shared>,
        v: &mut Viewer,
        sink: &mut Sink<'_>,
    ) -> Result<Response, Exchange> {
        let Conn {
            socket: Some(socket),
            request,
            head,
            ..
        } = self
        else {
            return Err(Exchange::ClosedEarly);
        };
        if socket.write_all(request.as_bytes()).await.is_err() {
            return Err(Exchange::ClosedEarly);
        }
        head.clear();
        let mut reading = Reading {
            body: None,
            bytes: 0,
        };
        let done = loop {
            socket
                .readable()
                .await
                .map_err(|e| Exchange::Failed(anyhow::Error::new(e).context("reading")))?;
            let step = SCRATCH_BUF.with_borrow_mut(|scratch| match recv(socket, scratch) {
                Ok((0, _)) => reading.eof(head),
                Ok((n, stamp)) => {
                    v.read(&sh.borrow(), n);
                    reading.input(head, &scratch.buf[..n], stamp, sink)
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(Exchange::Failed(anyhow::Error::new(e).context("reading"))),
            })?;
            if let Some(done) = step {
                break done;
            }
        };
        if done.1 {
            self.socket = None;
        }
        Ok(done.0)
    }
}

/// A response being read.
struct Reading {
    /// Once the head is in: the body's decoder, the status, `Connection: close`.
    body: Option<(BodyDecoder, u16, bool)>,
    /// Body bytes so far.
    bytes: u64,
}

impl Reading {
    /// One read's bytes; the response (and whether the connection must close) once complete.
    fn input(
        &mut self,
        head: &mut Vec<u8>,
        data: &[u8],
        stamp: Option<u64>,
        sink: &mut Sink<'_>,
    ) -> Result<Option<(Response, bool)>, Exchange> {
        let mut rest = data;
        if self.body.is_none() {
            // Copied in small steps: a read that brings the head also brings up to 64 KiB
            // of body, which must not become every viewer's head buffer.
            let before = head.len();
            let mut taken = 0;
            let end = loop {
                if taken == data.len() {
                    if head.len() > MAX_HEAD {
                        return Err(Exchange::Failed(anyhow::anyhow!(
                            "response head over {MAX_HEAD} bytes"
                        )));
                    }
                    return Ok(None);
                }
                let n = (data.len() - taken).min(HEAD_STEP);
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(&data[taken..taken + n]);
                taken += n;
                if let Some(e) = head_end(&head[from..]) {
                    break from + e;
                }
            };
            let (status, framing) = parse_head(&head[..end]).map_err(Exchange::Failed)?;
            let close = connection_close(&head[..end]);
            rest = &data[end - before..];
            self.body = Some((BodyDecoder::new(framing), status, close));
            if framing == Framing::Length(0) {
                return Ok(Some((response(status, 0, stamp), close)));
            }
        }
        let Some((decoder, status, close)) = self.body.as_mut() else {
            return Ok(None);
        };
        let (status, close) = (*status, *close);
        let mut bad = None;
        let bytes = &mut self.bytes;
        let done = decoder
            .feed(rest, |b| {
                *bytes += b.len() as u64;
                // Error bodies are read (to keep the connection in step) but not kept.
                if status == 200
                    && bad.is_none()
                    && let Err(e) = sink.feed(b)
                {
                    bad = Some(e);
                }
            })
            .map_err(Exchange::Failed)?;
        if let Some(e) = bad {
            return Err(Exchange::Failed(e));
        }
        Ok(done.then(|| (response(status, self.bytes, stamp), close)))
    }

    /// The server closed the connection.
    fn eof(&self, head: &[u8]) -> Result<Option<(Response, bool)>, Exchange> {
        match &self.body {
            None if head.is_empty() => Err(Exchange::ClosedEarly),
            Some((d, status, _)) if d.framing() == Framing::Close => {
                Ok(Some((response(*status, self.bytes, None), true)))
            }
            _ => Err(Exchange::Failed(anyhow::anyhow!(
                "closed by the server mid-response"
            ))),
        }
    }
}

fn response(status: u16, bytes: u64, stamp: Option<u64>) -> Response {
    Response {
        status,
        bytes,
        real_ns: stamp.unwrap_or_else(Clock::real_ns),
    }
}

/// Whether a response head says `Connection: close`.
fn connection_close(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    text.lines()
        .any(|l| l.starts_with("connection:") && l.contains("close"))
}

/// Why an exchange did not complete.
enum Exchange {
    /// The server closed the connection before any byte of the response.
    ClosedEarly,
    /// Anything else.
    Failed(anyhow::Error),
}

/// One segment's bytes as the viewer downloaded them.
#[derive(Debug, Clone, Copy)]
struct SegmentBytes {
    msn: u64,
    bytes: u64,
    /// From its first part (or as a whole segment): the count is the segment's size.
    whole: bool,
}

/// What a viewer keeps between requests.
#[derive(Debug, Default)]
struct State {
    tracks: Vec<Track>,
    map_uri: Option<String>,
    init_bytes: u64,
    /// The last part (msn, index) or segment (msn, u32::MAX) downloaded.
    last: Option<(u64, u32)>,
    /// Server timestamp − publisher timestamp, ms, found on the first whole segment.
    offset_ms: Option<u64>,
    segments: VecDeque<SegmentBytes>,
    media_bytes: u64,
    media_ms: u64,
}

impl State {
    fn key(l: &Listed) -> (u64, u32) {
        (l.msn, l.part.unwrap_or(u32::MAX))
    }

    fn is_new(&self, l: &Listed) -> bool {
        self.last.is_none_or(|last| Self::key(l) > last)
    }

    fn log_bytes(&mut self, l: &Listed, bytes: u64) {
        self.media_bytes += bytes;
        self.media_ms += l.duration_ms;
        match self.segments.back_mut() {
            Some(s) if s.msn == l.msn => s.bytes += bytes,
            _ => {
                if self.segments.len() == SEGMENT_LOG {
                    self.segments.pop_front();
                }
                self.segments.push_back(SegmentBytes {
                    msn: l.msn,
                    bytes,
                    whole: l.part.is_none_or(|p| p == 0),
                });
            }
        }
    }

    /// The bytes `pl` lists: the sizes downloaded where the viewer has every part, the
    /// listed duration at the viewer's average rate elsewhere, and the init segment.
    fn window_bytes(&self, pl: &MediaPlaylist) -> u64 {
        if self.media_ms == 0 {
            return 0;
        }
        let rate = self.media_bytes as f64 / self.media_ms as f64;
        let next = pl.next_msn();
        let mut listed: Vec<(u64, u64)> =
            pl.segments.iter().map(|s| (s.msn, s.duration_ms)).collect();
        let open: u64 = pl
            .parts
            .iter()
            .filter(|p| p.msn >= next)
            .map(|p| p.duration_ms)
            .sum();
        if open > 0 {
            listed.push((next, open));
        }
        let media: f64 = listed
            .iter()
            .map(
                |&(msn, ms)| match self.segments.iter().find(|s| s.msn == msn && s.whole) {
                    Some(s) => s.bytes as f64,
                    None => ms as f64 * rate,
                },
            )
            .sum();
        media as u64 + self.init_bytes
    }
}

/// Runs one HLS viewer of stream `stream` until `stop`.
pub async fn run(
    cfg: &Config,
    target: &HlsTarget,
    sh: &RefCell<Shared>,
    stop: &CancellationToken,
    v: &mut Viewer,
) -> anyhow::Result<()> {
    let mut conn = Conn::new(&target.url);
    let base = target.url.path.clone();
    let mut st = State::default();
    let mut text = Vec::new();
    let mut frag = FragmentScanner::default();
    let mut ts = TsScanner::default();
    let start_deadline = Instant::now() + cfg.connect_timeout;
    let mut path = base.clone();
    let mut first = true;
    let mut last_playlist: Option<MediaPlaylist> = None;
    let result = async {
        loop {
            let blocking = path.contains("_HLS_msn=");
            let asked = Instant::now();
            text.clear();
            let Some(r) = conn
                .get(
                    &path,
                    cfg,
                    sh,
                    v,
                    stop,
                    &mut Sink::Keep(&mut text, MAX_PLAYLIST),
                )
                .await?
            else {
                return Ok(());
            };
            count(sh, r.status, |h| {
                h.playlists += 1;
                h.blocking_playlists += u64::from(blocking);
            });
            if r.status != 200 {
                if v.started_ns.is_none() {
                    if Instant::now() > start_deadline {
                        bail!("HTTP {} for the playlist", r.status);
                    }
                } else {
                    path = base.clone();
                }
                if pause(NOT_YET, stop).await {
                    return Ok(());
                }
                continue;
            }
            v.started(cfg.clock.now_ns());
            let pl = MediaPlaylist::parse(std::str::from_utf8(&text).context("playlist")?)?;
            if pl.map_uri.is_some() && pl.map_uri != st.map_uri {
                let uri = pl.map_uri.clone().unwrap_or_default();
                text.clear();
                let Some(r) = conn
                    .get(
                        &resolve(&base, &uri),
                        cfg,
                        sh,
                        v,
                        stop,
                        &mut Sink::Keep(&mut text, MAX_INIT),
                    )
                    .await?
                else {
                    return Ok(());
                };
                count(sh, r.status, |_| {});
                if r.status != 200 {
                    bail!("HTTP {} for the init segment {uri}", r.status);
                }
                st.tracks = parse_init(&text).context("init segment")?;
                st.init_bytes = r.bytes;
                st.map_uri = Some(uri);
            }
            let parts = target.low_latency && !pl.parts.is_empty();
            let listed = if parts { &pl.parts } else { &pl.segments };
            let mut new: Vec<&Listed> = listed.iter().filter(|l| st.is_new(l)).collect();
            if first && new.len() > 1 {
                new.drain(..new.len() - 1);
            }
            // What a first playlist lists was there before the viewer asked: not timed.
            let listed_at = (!first).then_some(r.real_ns);
            for l in new {
                let m = Media {
                    listed: l,
                    listed_at,
                    timed: !first,
                    hinted: false,
                };
                if fetch(
                    &mut conn,
                    &base,
                    m,
                    &mut st,
                    &mut frag,
                    &mut ts,
                    (cfg, sh, &mut *v, stop),
                )
                .await?
                .is_none()
                {
                    return Ok(());
                }
            }
            // The preload hint's part, held by the server until it is cut: what LL-HLS
            // players fetch ahead of the playlist that will list it.
            let mut hinted = None;
            if target.preload
                && let (Some(uri), Some(part_ms)) = (&pl.preload_hint, pl.part_target_ms)
                && let Some((msn, index)) = part_name(uri)
            {
                let l = Listed {
                    msn,
                    part: Some(index),
                    uri: uri.clone(),
                    duration_ms: part_ms,
                };
                if st.is_new(&l) {
                    let m = Media {
                        listed: &l,
                        listed_at: None,
                        timed: true,
                        hinted: true,
                    };
                    match fetch(
                        &mut conn,
                        &base,
                        m,
                        &mut st,
                        &mut frag,
                        &mut ts,
                        (cfg, sh, &mut *v, stop),
                    )
                    .await?
                    {
                        None => return Ok(()),
                        Some(200) => hinted = Some((msn, index)),
                        Some(_) => {}
                    }
                }
            }
            first = false;
            if pl.ended {
                bail!("the playlist ended (EXT-X-ENDLIST)");
            }
            let fresh = last_playlist.as_ref().is_none_or(|old| {
                old.parts.last() != pl.parts.last() || old.segments.last() != pl.segments.last()
            });
            last_playlist = Some(pl);
            let pl = last_playlist.as_ref().unwrap_or_else(|| unreachable!());
            match pl.part_target_ms.filter(|_| target.low_latency) {
                Some(part_ms) => {
                    let next = pl.next_msn();
                    let (msn, part) = match (hinted, pl.parts.last()) {
                        // The playlist that lists it (at once), and with it the next hint.
                        (Some(h), _) => h,
                        (None, Some(p)) if p.msn >= next => (p.msn, p.part.unwrap_or(0) + 1),
                        _ => (next, 0),
                    };
                    path = format!("{base}?_HLS_msn={msn}&_HLS_part={part}");
                    // A server that does not hold blocking reloads must not be polled in a
                    // tight loop.
                    if blocking
                        && !fresh
                        && hinted.is_none()
                        && pause(Duration::from_millis(part_ms / 2), stop).await
                    {
                        return Ok(());
                    }
                }
                None => {
                    let every =
                        Duration::from_millis(pl.target_duration_s * 1000 / 2).max(MIN_POLL);
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = sleep_until(asked + every) => {}
                    }
                    path = base.clone();
                }
            }
        }
    }
    .await;
    if let Some(pl) = &last_playlist {
        let bytes = st.window_bytes(pl);
        let mut sh = sh.borrow_mut();
        let w = &mut sh.hls.window_bytes[v.stream];
        *w = (*w).max(bytes);
    }
    if let Some(off) = st.offset_ms {
        v.offset = Some(off as u32);
    }
    result
}

/// A part or segment to download.
struct Media<'a> {
    listed: &'a Listed,
    /// When the playlist that first listed it arrived (realtime ns), if timed.
    listed_at: Option<u64>,
    /// Its availability is measured (not what the viewer's first playlist listed).
    timed: bool,
    /// The preload hint's part: a 404 is a hint that did not come true, not an error.
    hinted: bool,
}

/// The viewer's connection and what each request needs.
type Ctx<'a, 'b> = (
    &'a Config,
    &'a RefCell<Shared>,
    &'b mut Viewer,
    &'a CancellationToken,
);

/// Downloads a part or segment and times it; its status, `None` when stopped.
async fn fetch(
    conn: &mut Conn<'_>,
    base: &str,
    m: Media<'_>,
    st: &mut State,
    frag: &mut FragmentScanner,
    ts: &mut TsScanner,
    (cfg, sh, v, stop): Ctx<'_, '_>,
) -> anyhow::Result<Option<u16>> {
    let l = m.listed;
    let path = resolve(base, &l.uri);
    let is_ts = l.uri.split('?').next().unwrap_or_default().ends_with(".ts");
    frag.reset();
    ts.reset();
    let mut sink = if is_ts {
        Sink::Ts(ts)
    } else {
        Sink::Fmp4(frag)
    };
    let Some(got) = conn.get(&path, cfg, sh, v, stop, &mut sink).await? else {
        return Ok(None);
    };
    if m.hinted && got.status == 404 {
        let mut sh = sh.borrow_mut();
        if sh.in_window {
            sh.hls.requests += 1;
            sh.hls.preload_misses += 1;
        }
        return Ok(Some(got.status));
    }
    count(sh, got.status, |h| h.media += 1);
    st.last = Some(State::key(l));
    if got.status != 200 {
        return Ok(Some(got.status));
    }
    v.first_video_ns.get_or_insert(cfg.clock.now_ns());
    st.log_bytes(l, got.bytes);
    let sent = if is_ts {
        last_sent_ts(st, ts, sh, v)
    } else {
        last_sent_fmp4(st, frag, l.part.is_none(), sh, v)
    };
    let mut sh = sh.borrow_mut();
    match sent {
        Some((s, kind)) if m.timed && sh.streams[v.stream].sent_in_window(kind, s.seq) => {
            let h = &mut sh.hls;
            h.available
                .record(got.real_ns.saturating_sub(s.at_real_ns) / 1000);
            if let Some(listed_at) = m.listed_at {
                h.announced
                    .record(listed_at.saturating_sub(s.at_real_ns) / 1000);
                h.download
                    .record(got.real_ns.saturating_sub(listed_at) / 1000);
            }
        }
        Some(_) => {}
        None if sh.in_window => sh.hls.unmatched += 1,
        None => {}
    }
    Ok(Some(got.status))
}

/// The (msn, index) of a part named as Sluice names them (`part-M.I.m4s`).
fn part_name(uri: &str) -> Option<(u64, u32)> {
    let name = uri.split('?').next()?.rsplit('/').next()?;
    let (stem, _ext) = name.strip_prefix("part-")?.rsplit_once('.')?;
    let (msn, index) = stem.split_once('.')?;
    Some((msn.parse().ok()?, index.parse().ok()?))
}

/// Counts a response: requests and error statuses in the window, and `more`.
fn count(sh: &RefCell<Shared>, status: u16, more: impl FnOnce(&mut crate::state::HlsStats)) {
    let mut sh = sh.borrow_mut();
    if !sh.in_window {
        return;
    }
    let h = &mut sh.hls;
    h.requests += 1;
    match status {
        400..=499 => h.status_4xx += 1,
        500..=599 => h.status_5xx += 1,
        _ => {}
    }
    more(h);
}

/// Sleeps `d` unless stopped first (then true).
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = sleep(d) => false,
    }
}

/// Bytes an FLV video tag body has before the sample data (AVC/HEVC legacy header: frame
/// type and codec, packet type, composition time).
const FLV_VIDEO_HEADER: u32 = 5;
/// Frames back a viewer looks for its first sample by size.
const SIZE_SEARCH: usize = 256;

/// The frame the publisher sent with the server's timestamp `ms` (of `kind`): an exact
/// match (within rounding) once the offset between the server's timestamps and the
/// publisher's is known. The offset is found on the viewer's first video sample: by its size
/// where the fragment gives it (fMP4), else (MPEG-TS) from a whole segment ending just before
/// a keyframe. nginx-rtmp's HLS, for one, adds 700 ms to every timestamp.
fn match_frame(
    st: &mut State,
    sh: &Shared,
    stream: usize,
    kind: usize,
    ms: u64,
    hint: Hint,
) -> Option<Sent> {
    let ring = match kind {
        VIDEO => &sh.streams[stream].video,
        _ => &sh.streams[stream].audio,
    };
    let offset = match st.offset_ms {
        Some(o) => o,
        None if kind == VIDEO => {
            let at = u32::try_from(ms).ok()?.saturating_add(MATCH_SLACK_MS);
            let found = match hint {
                Hint::Size(size) => ring.newest_of_size_at_or_before(
                    size.checked_add(FLV_VIDEO_HEADER)?,
                    at,
                    SIZE_SEARCH,
                ),
                Hint::SegmentEnd => ring.gop_end_at_or_before(at),
                Hint::None => None,
            }?;
            let o = ms.saturating_sub(u64::from(found.ts));
            if o > MAX_OFFSET_MS {
                return None;
            }
            st.offset_ms = Some(o);
            o
        }
        None => return None,
    };
    let want = u32::try_from(ms.checked_sub(offset)?).ok()?;
    ring.at_or_before(want.saturating_add(MATCH_SLACK_MS))
        .filter(|s| want.abs_diff(s.ts) <= MATCH_SLACK_MS)
}

/// What tells a viewer which sent frame its first sample is.
#[derive(Debug, Clone, Copy)]
enum Hint {
    /// The sample's size.
    Size(u32),
    /// The sample ends a whole segment: the frame before a keyframe.
    SegmentEnd,
    /// Nothing.
    None,
}

/// The last frame (by send time) of an fMP4 part or segment: its tracks' last samples.
fn last_sent_fmp4(
    st: &mut State,
    frag: &FragmentScanner,
    segment: bool,
    sh: &RefCell<Shared>,
    v: &Viewer,
) -> Option<(Sent, usize)> {
    let last = moof_last_dts(&frag.last_moof, &st.tracks).ok()?;
    let sh = sh.borrow();
    // Video first: it finds the offset.
    let mut by_kind: Vec<(usize, u64, Hint)> = last
        .iter()
        .filter_map(|l| {
            let t = st.tracks.iter().find(|t| t.id == l.track)?;
            let hint = match (l.size, segment) {
                (Some(size), _) => Hint::Size(size),
                (None, true) => Hint::SegmentEnd,
                (None, false) => Hint::None,
            };
            let kind = if t.video { VIDEO } else { AUDIO };
            Some((kind, to_ms(l.dts, t.timescale), hint))
        })
        .collect();
    by_kind.sort_unstable_by_key(|k| k.0);
    let mut newest: Option<(Sent, usize)> = None;
    for (kind, ms, hint) in by_kind {
        let s = match_frame(st, &sh, v.stream, kind, ms, hint)?;
        if newest.is_none_or(|(n, _)| s.at_real_ns > n.at_real_ns) {
            newest = Some((s, kind));
        }
    }
    newest
}

/// The last video frame of an MPEG-TS segment. Audio is left out: a TS muxer packs several
/// audio frames in one PES, whose time is its first frame's.
fn last_sent_ts(
    st: &mut State,
    ts: &TsScanner,
    sh: &RefCell<Shared>,
    v: &Viewer,
) -> Option<(Sent, usize)> {
    let dts = ts.last_video?;
    let sh = sh.borrow();
    match_frame(
        st,
        &sh,
        v.stream,
        VIDEO,
        to_ms(dts, 90_000),
        Hint::SegmentEnd,
    )
    .map(|s| (s, VIDEO))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    async fn read_request(s: &mut TcpStream) -> String {
        let mut req = Vec::new();
        let mut buf = [0u8; 512];
        while head_end(&req).is_none() {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed mid-request");
            req.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(req).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn keeps_the_connection_alive_and_reconnects_when_the_server_closed_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // Two responses on the first connection, then the server closes it.
            let (mut s, _) = listener.accept().await.unwrap();
            let first = read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                .await
                .unwrap();
            read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnop\r\n0\r\n\r\n")
                .await
                .unwrap();
            drop(s);
            // The third request on a new one, chunked in two writes.
            let (mut s, _) = listener.accept().await.unwrap();
            let third = read_request(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
                .await
                .unwrap();
            s.write_all(b"3\r\ndef\r\n0\r\n\r\n").await.unwrap();
            (first, third)
        });
        let url = HttpUrl::parse(&format!("http://{addr}/live/k/media.m3u8")).unwrap();
        let cfg = Config {
            targets: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            stall_ns: 1_000_000_000,
            has_audio: false,
            clock: Clock::start(),
            read_bytes_per_sec: 0,
            tls: None,
        };
        let sh = RefCell::new(Shared::new(1));
        sh.borrow_mut().open_window();
        let mut v = Viewer::new(0, 0);
        let stop = CancellationToken::new();
        let mut conn = Conn::new(&url);
        let mut body = Vec::new();

        let r = conn
            .get(
                "/a",
                &cfg,
                &sh,
                &mut v,
                &stop,
                &mut Sink::Keep(&mut body, 100),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.bytes, &body[..]), (200, 5, &b"hello"[..]));
        body.clear();
        let r = conn
            .get(
                "/b",
                &cfg,
                &sh,
                &mut v,
                &stop,
                &mut Sink::Keep(&mut body, 100),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.bytes), (404, 3));
        assert!(body.is_empty(), "error bodies are not kept");
        let r = conn
            .get(
                "/c",
                &cfg,
                &sh,
                &mut v,
                &stop,
                &mut Sink::Keep(&mut body, 100),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.status, &body[..]), (200, &b"abcdef"[..]));
        assert_eq!(sh.borrow().hls.reconnects, 1);
        assert!(v.wire_bytes > 0 && v.reads >= 3);
        let (first, third) = server.await.unwrap();
        assert!(
            first.starts_with("GET /a HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{first}"
        );
        assert!(third.starts_with("GET /c HTTP/1.1\r\n"), "{third}");

        // A body over the limit is an error, not a larger buffer.
        let mut small = Vec::new();
        assert!(Sink::Keep(&mut small, 4).feed(b"hello").is_err());
    }

    #[test]
    fn part_names() {
        assert_eq!(part_name("part-13.2.m4s"), Some((13, 2)));
        assert_eq!(part_name("/live/k/part-7.0.m4s?x=1"), Some((7, 0)));
        assert_eq!(part_name("seg-13.m4s"), None);
    }

    #[test]
    fn window_bytes_use_downloaded_sizes_and_the_rate_elsewhere() {
        let pl = MediaPlaylist::parse(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-PART-INF:PART-TARGET=0.5\n\
             #EXT-X-MEDIA-SEQUENCE:4\n#EXTINF:1.0,\nseg-4.m4s\n\
             #EXT-X-PART:DURATION=0.5,URI=\"part-5.0.m4s\"\n\
             #EXT-X-PART:DURATION=0.5,URI=\"part-5.1.m4s\"\n#EXTINF:1.0,\nseg-5.m4s\n\
             #EXT-X-PART:DURATION=0.5,URI=\"part-6.0.m4s\"\n",
        )
        .unwrap();
        let mut st = State {
            init_bytes: 100,
            ..State::default()
        };
        // Joined at 4's second part (4 not whole: estimated), then every part of 5 and 6.
        let part = |msn, i| Listed {
            msn,
            part: Some(i),
            uri: String::new(),
            duration_ms: 500,
        };
        st.log_bytes(&part(4, 1), 1000);
        st.log_bytes(&part(5, 0), 3000);
        st.log_bytes(&part(5, 1), 1000);
        st.log_bytes(&part(6, 0), 2000);
        // Rate: 7,000 bytes / 2,000 ms; segment 4 (1,000 ms) estimated at 3,500.
        assert_eq!(st.window_bytes(&pl), 3500 + 4000 + 2000 + 100);
        st.last = Some(State::key(&part(6, 0)));
        assert!(st.is_new(&part(6, 1)));
        assert!(!st.is_new(&part(5, 1)));
    }
}
