//! State shared by the publisher and the viewers (one thread: `Rc<RefCell<Shared>>`, never
//! borrowed across an `.await`), and each viewer's own counters.

use std::time::SystemTime;

use tokio::time::Instant;

use crate::hist::Hist;
use crate::media::Class;
use crate::ring::Ring;

/// How far back (in video frames) a viewer whose server rewrote timestamps looks for the
/// frame it received: about 8 s at 30 fps.
const OFFSET_SEARCH: usize = 256;
/// Index of video and audio in per-kind arrays.
pub const VIDEO: usize = 0;
/// See [`VIDEO`].
pub const AUDIO: usize = 1;

/// The run's clock: nanoseconds since the run started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Nanoseconds since the start.
    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }

    /// The realtime clock, ns since the epoch: what kernel receive timestamps use.
    pub fn real_ns() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
}

/// When a read's bytes arrived.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rx {
    /// When the generator read them, ns since the run started.
    pub user_ns: u64,
    /// When the kernel received the last of them (SO_TIMESTAMPNS; realtime ns since the
    /// epoch), if the socket reports it. On a busy generator this is earlier than `user_ns`
    /// by the time the bytes waited for their viewer task to run.
    pub kernel_real_ns: Option<u64>,
}

/// What one publisher sent: its coded frames by timestamp, and where the measured window
/// starts and ends among them.
#[derive(Debug, Default)]
pub struct Published {
    /// Coded video frames sent.
    pub video: Ring,
    /// Coded audio frames sent.
    pub audio: Ring,
    /// [video, audio] sequence numbers of the first frames sent in the window.
    pub window_start: Option<[u64; 2]>,
    /// [video, audio] sequence numbers of the first frames sent after the window.
    pub window_end: Option<[u64; 2]>,
    /// Keyframes sent.
    pub keyframes_sent: u64,
}

impl Published {
    /// Whether the frame with sequence number `seq` of `kind` was sent in the window.
    pub fn sent_in_window(&self, kind: usize, seq: u64) -> bool {
        self.window_start.is_some_and(|s| seq >= s[kind])
            && self.window_end.is_none_or(|e| seq < e[kind])
    }

    /// [video, audio] sequence numbers of the next frames to be sent.
    pub fn next_seq(&self) -> [u64; 2] {
        [self.video.next_seq(), self.audio.next_seq()]
    }

    /// [video, audio] frames sent in the window (0 before it has closed).
    pub fn sent_in_window_count(&self) -> [u64; 2] {
        match (self.window_start, self.window_end) {
            (Some(a), Some(b)) => [b[VIDEO] - a[VIDEO], b[AUDIO] - a[AUDIO]],
            _ => [0, 0],
        }
    }
}

/// What the publishers and the viewers share.
#[derive(Debug, Default)]
pub struct Shared {
    /// One per publisher (stream), indexed like the stream names.
    pub streams: Vec<Published>,
    /// Inside the measured window: reads and bytes are counted.
    pub in_window: bool,
    /// When the window ended, ns.
    pub window_end_ns: Option<u64>,
    /// Latency of video frames sent in the window, µs, over every stream: from kernel
    /// receive timestamps where the reader has them, else from when the generator read the
    /// bytes.
    pub latency: Hist,
    /// The same from when the generator read the bytes (includes the generator's own delay).
    pub latency_user: Hist,
    /// Samples of `latency` taken from kernel receive timestamps.
    pub latency_kernel_samples: u64,
    /// Largest delay of any publisher behind its real-time schedule in the window, µs.
    pub publisher_lag_max_us: u64,
    /// Why publishers stopped early ("stream: reason"), in the order they did; at most one
    /// per publisher.
    pub publisher_errors: Vec<String>,
    /// HLS viewers' counters.
    pub hls: HlsStats,
}

/// What HLS viewers measured, over all of them. Counts are of responses completed in the
/// window; times are of parts (segments) whose last frame was sent in the window.
#[derive(Debug, Default)]
pub struct HlsStats {
    /// HTTP requests answered (any status).
    pub requests: u64,
    /// Playlist responses, and how many of them answered a blocking reload.
    pub playlists: u64,
    /// See `playlists`.
    pub blocking_playlists: u64,
    /// Parts (LL-HLS) or segments (classic) downloaded.
    pub media: u64,
    /// Responses with a 4xx / 5xx status.
    pub status_4xx: u64,
    /// See `status_4xx`.
    pub status_5xx: u64,
    /// Connections the server closed between requests (the viewer reconnected).
    pub reconnects: u64,
    /// Preload-hint requests answered 404 (the hinted part was never cut).
    pub preload_misses: u64,
    /// Part (segment) listed in a playlist − its last frame sent, µs.
    pub announced: Hist,
    /// Part (segment) downloaded − its last frame sent, µs.
    pub available: Hist,
    /// Part (segment) downloaded − listed, µs.
    pub download: Hist,
    /// Parts (segments) whose last frame was not found among the frames sent.
    pub unmatched: u64,
    /// Per stream: the bytes its playlist's window lists (the largest a viewer estimated).
    pub window_bytes: Vec<u64>,
}

impl Shared {
    /// State for `streams` publishers.
    pub fn new(streams: usize) -> Self {
        Self {
            streams: (0..streams).map(|_| Published::default()).collect(),
            hls: HlsStats {
                window_bytes: vec![0; streams],
                ..HlsStats::default()
            },
            ..Self::default()
        }
    }

    /// Starts the measured window on every stream.
    pub fn open_window(&mut self) {
        for p in &mut self.streams {
            p.window_start = Some(p.next_seq());
        }
        self.in_window = true;
    }

    /// Ends the measured window on every stream at `now_ns`.
    pub fn close_window(&mut self, now_ns: u64) {
        for p in &mut self.streams {
            p.window_end = Some(p.next_seq());
        }
        self.window_end_ns = Some(now_ns);
        self.in_window = false;
    }
}

/// One viewer's counters. A few hundred bytes, whatever the run's length.
#[derive(Debug, Default, Clone)]
pub struct Viewer {
    /// Which stream it plays (index into `Shared::streams`).
    pub stream: usize,
    /// When it started connecting, ns.
    pub connect_ns: u64,
    /// When the server accepted the play (RTMP) or answered 200 (HTTP), ns.
    pub started_ns: Option<u64>,
    /// When the first coded video frame arrived, ns.
    pub first_video_ns: Option<u64>,
    /// The first coded video frame was a keyframe, after video (and audio) sequence headers.
    pub first_ok: bool,
    seen_video_header: bool,
    seen_audio_header: bool,
    /// When the last media message arrived, ns.
    pub last_frame_ns: Option<u64>,
    /// Gaps longer than the stall threshold between consecutive media messages.
    pub stalls: u32,
    /// Total length of those gaps, ms.
    pub stall_ms: u64,
    /// Received timestamp − sent timestamp (wrapping), found on the first video frame; 0
    /// for servers that keep timestamps.
    pub offset: Option<u32>,
    /// [video, audio] sequence number of the first matched frame.
    pub first_seq: [Option<u64>; 2],
    /// [video, audio] matched frames sent in the window.
    pub received: [u64; 2],
    /// The publisher's next sequence numbers when this viewer ended early.
    pub end_seq: Option<[u64; 2]>,
    /// Frames whose send record could not be found.
    pub unmatched: u64,
    /// Media payload bytes received in the window.
    pub media_bytes: u64,
    /// Bytes read from the socket in the window (not known for the `client` RTMP reader).
    pub wire_bytes: u64,
    /// read() calls that returned data in the window (not known for the `client` reader).
    pub reads: u64,
    /// Why it failed to start, or why it ended early.
    pub error: Option<String>,
}

impl Viewer {
    /// A viewer of stream `stream` that starts connecting at `now_ns`.
    pub fn new(now_ns: u64, stream: usize) -> Self {
        Self {
            stream,
            connect_ns: now_ns,
            ..Self::default()
        }
    }

    /// The server accepted the play.
    pub fn started(&mut self, now_ns: u64) {
        self.started_ns.get_or_insert(now_ns);
    }

    /// One read's bytes.
    pub fn read(&mut self, sh: &Shared, n: usize) {
        if sh.in_window {
            self.reads += 1;
            self.wire_bytes += n as u64;
        }
    }

    /// The viewer stopped before the end of the run (error or end of stream).
    pub fn ended(&mut self, sh: &Shared, why: String) {
        if self.end_seq.is_none() {
            self.end_seq = Some(sh.streams[self.stream].next_seq());
        }
        self.error.get_or_insert(why);
    }

    /// One media message: `class` from its first bytes, `size` its body length.
    pub fn media(
        &mut self,
        sh: &mut Shared,
        rx: Rx,
        stall_ns: u64,
        has_audio: bool,
        (type_id, ts, size, class): (u8, u32, u32, Class),
    ) {
        let _ = type_id;
        let now_ns = rx.user_ns;
        if sh.in_window {
            self.media_bytes += u64::from(size);
        }
        if let Some(last) = self.last_frame_ns {
            let gap = now_ns.saturating_sub(last);
            if gap > stall_ns {
                self.stalls += 1;
                self.stall_ms += gap / 1_000_000;
            }
        }
        self.last_frame_ns = Some(now_ns);
        match class {
            Class::VideoHeader => self.seen_video_header = true,
            Class::AudioHeader => self.seen_audio_header = true,
            Class::Other => {}
            Class::Video { key } => {
                if self.first_video_ns.is_none() {
                    self.first_video_ns = Some(now_ns);
                    self.first_ok =
                        key && self.seen_video_header && (self.seen_audio_header || !has_audio);
                }
                let sent_video = &sh.streams[self.stream].video;
                let sent = match self.offset {
                    Some(off) => sent_video.find(ts.wrapping_sub(off), size),
                    None => {
                        let found = sent_video
                            .find(ts, size)
                            .or_else(|| sent_video.find_recent_by_size(size, key, OFFSET_SEARCH));
                        if let Some(s) = found {
                            self.offset = Some(ts.wrapping_sub(s.ts));
                        }
                        found
                    }
                };
                match sent {
                    Some(s) => {
                        if self.count(sh, VIDEO, s.seq) {
                            let user = now_ns.saturating_sub(s.at_ns) / 1000;
                            sh.latency_user.record(user);
                            match rx.kernel_real_ns {
                                Some(k) => {
                                    sh.latency.record(k.saturating_sub(s.at_real_ns) / 1000);
                                    sh.latency_kernel_samples += 1;
                                }
                                None => sh.latency.record(user),
                            }
                        }
                    }
                    None => self.unmatched += 1,
                }
            }
            Class::Audio => {
                // Audio sizes repeat too often to find an offset by; use video's.
                match sh.streams[self.stream]
                    .audio
                    .find(ts.wrapping_sub(self.offset.unwrap_or(0)), size)
                {
                    Some(s) => {
                        self.count(sh, AUDIO, s.seq);
                    }
                    None if self.offset.is_some() => self.unmatched += 1,
                    None => {}
                }
            }
        }
    }

    /// Counts a matched frame; true if it was sent in the window.
    fn count(&mut self, sh: &Shared, kind: usize, seq: u64) -> bool {
        self.first_seq[kind].get_or_insert(seq);
        let in_window = sh.streams[self.stream].sent_in_window(kind, seq);
        if in_window {
            self.received[kind] += 1;
        }
        in_window
    }

    /// Frames of `kind` this viewer should have received: those sent in the window from its
    /// first frame (a server may start a viewer at the next keyframe) until it ended.
    pub fn expected(&self, sh: &Shared, kind: usize) -> u64 {
        let sent = &sh.streams[self.stream];
        let (Some(ws), Some(we)) = (sent.window_start, sent.window_end) else {
            return 0;
        };
        if self.started_ns.is_none() {
            return 0;
        }
        let from = ws[kind].max(self.first_seq[kind].unwrap_or(ws[kind]));
        let to = we[kind].min(self.end_seq.map_or(we[kind], |e| e[kind]));
        to.saturating_sub(from)
    }

    /// Counts a trailing stall: nothing received during the last `stall_ns` of the window.
    pub fn close_window(&mut self, sh: &Shared, stall_ns: u64) {
        let (Some(end), Some(last)) = (sh.window_end_ns, self.last_frame_ns) else {
            return;
        };
        if self.end_seq.is_none() && end.saturating_sub(last) > stall_ns {
            self.stalls += 1;
            self.stall_ms += (end - last) / 1_000_000;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn media(v: &mut Viewer, sh: &mut Shared, now_ms: u64, frame: (u8, u32, u32, Class)) {
        let rx = Rx {
            user_ns: now_ms * MS,
            kernel_real_ns: None,
        };
        v.media(sh, rx, 1000 * MS, true, frame);
    }

    #[test]
    fn matches_by_timestamp_counts_the_window_and_finds_rewritten_timestamps() {
        let mut sh = Shared::new(1);
        // 10 video frames 33 ms apart, a keyframe every 5; audio alongside.
        for i in 0..10u32 {
            let at = (u64::from(i) * 33 * MS, 0);
            sh.streams[0].video.push(i * 33, 1000 + i, i % 5 == 0, at);
            sh.streams[0].audio.push(i * 33, 300, false, at);
            if i == 4 {
                sh.open_window();
            }
        }
        sh.close_window(330 * MS);

        // A viewer on a server that keeps timestamps, 2 ms behind, from the keyframe at 5.
        let mut a = Viewer::new(0, 0);
        a.started(0);
        media(&mut a, &mut sh, 100, (9, 0, 40, Class::VideoHeader));
        media(&mut a, &mut sh, 100, (8, 0, 4, Class::AudioHeader));
        for i in 5..10u32 {
            media(
                &mut a,
                &mut sh,
                u64::from(i) * 33 + 2,
                (9, i * 33, 1000 + i, Class::Video { key: i == 5 }),
            );
            media(
                &mut a,
                &mut sh,
                u64::from(i) * 33 + 2,
                (8, i * 33, 300, Class::Audio),
            );
        }
        assert!(a.first_ok);
        assert_eq!(a.offset, Some(0));
        assert_eq!(a.received, [5, 5]);
        assert_eq!((a.expected(&sh, VIDEO), a.expected(&sh, AUDIO)), (5, 5));
        assert_eq!(sh.latency.count(), 5);
        assert_eq!(sh.latency.max(), 2000);

        // A viewer on a server that restarts timestamps at 0, missing one inter frame, and
        // whose first frame is not a keyframe.
        let mut b = Viewer::new(0, 0);
        b.started(0);
        for i in [6u32, 8, 9] {
            media(
                &mut b,
                &mut sh,
                u64::from(i) * 33 + 5,
                (9, (i - 6) * 33, 1000 + i, Class::Video { key: false }),
            );
        }
        assert!(!b.first_ok);
        assert_eq!(b.offset, Some(6u32.wrapping_mul(33).wrapping_neg()));
        assert_eq!(b.received[VIDEO], 3);
        assert_eq!(
            b.expected(&sh, VIDEO),
            4,
            "from its first frame (6) to the end (10)"
        );
        assert_eq!(b.unmatched, 0);
    }

    #[test]
    fn kernel_receive_time_is_preferred_for_latency() {
        let mut sh = Shared::new(1);
        sh.open_window();
        sh.streams[0]
            .video
            .push(0, 10, true, (1000 * MS, 5000 * MS));
        sh.close_window(2000 * MS);
        let mut v = Viewer::new(0, 0);
        let rx = Rx {
            user_ns: 1030 * MS,
            kernel_real_ns: Some(5002 * MS),
        };
        v.media(
            &mut sh,
            rx,
            1000 * MS,
            false,
            (9, 0, 10, Class::Video { key: true }),
        );
        assert_eq!(sh.latency.max(), 2000, "kernel: 2 ms");
        assert_eq!(sh.latency_user.max(), 30_000, "user: 30 ms");
        assert_eq!(sh.latency_kernel_samples, 1);
    }

    #[test]
    fn viewers_match_their_own_stream_and_its_window() {
        // Two publishers of the same fixture, the second started 10 ms later: the same
        // timestamps and sizes, different send instants and counts.
        let mut sh = Shared::new(2);
        for i in 0..4u32 {
            for (k, late) in [(0, 0), (1, 10)] {
                let at = ((u64::from(i) * 33 + late) * MS, 0);
                sh.streams[k].video.push(i * 33, 1000 + i, i == 0, at);
            }
        }
        sh.open_window();
        for i in 4..6u32 {
            sh.streams[0]
                .video
                .push(i * 33, 1000 + i, false, (u64::from(i) * 33 * MS, 0));
        }
        for i in 4..8u32 {
            let at = ((u64::from(i) * 33 + 10) * MS, 0);
            sh.streams[1].video.push(i * 33, 1000 + i, false, at);
        }
        sh.close_window(300 * MS);
        assert_eq!(sh.streams[0].sent_in_window_count(), [2, 0]);
        assert_eq!(sh.streams[1].sent_in_window_count(), [4, 0]);

        let mut v = Viewer::new(0, 1);
        v.started(0);
        for i in 4..8u32 {
            let frame = (9, i * 33, 1000 + i, Class::Video { key: false });
            media(&mut v, &mut sh, u64::from(i) * 33 + 11, frame);
        }
        assert_eq!(v.received[VIDEO], 4);
        assert_eq!(
            v.expected(&sh, VIDEO),
            4,
            "stream 1's window, not stream 0's"
        );
        assert_eq!(v.unmatched, 0);
        assert_eq!(
            sh.latency_user.max(),
            1000,
            "1 ms after stream 1's send, not 11"
        );
    }

    #[test]
    fn stalls() {
        let mut sh = Shared::new(1);
        let mut v = Viewer::new(0, 0);
        media(&mut v, &mut sh, 0, (9, 0, 1, Class::Other));
        media(&mut v, &mut sh, 500, (9, 0, 1, Class::Other));
        media(&mut v, &mut sh, 2000, (9, 0, 1, Class::Other));
        assert_eq!((v.stalls, v.stall_ms), (1, 1500));
        sh.window_end_ns = Some(3500 * MS);
        v.close_window(&sh, 1000 * MS);
        assert_eq!((v.stalls, v.stall_ms), (2, 3000));
    }
}
