//! The latency-budget scenario shared by the RTMP (scheduling.rs) and HTTP-FLV (http_flv.rs)
//! tests: a real-time publisher that records when it sent each frame, slow players' pacing,
//! and the assertions on what a paused and a half-rate viewer received.
//!
//! Ages are measured at the player: the time from the publisher sending a frame to the
//! player decoding it from the socket. Whatever sat in the kernel's buffers when a viewer
//! paused is necessarily old when it resumes, and a reader slower than the stream needs
//! time to drain a frame it has started; both are allowed for explicitly, from the socket
//! buffer sizes the tests set, so what is asserted is the server's own bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use sluice_media::flv::TAG_VIDEO;
use sluice_runtime::client::Client;
use sluice_testkit::fixtures::H264_AAC;
use sluice_testkit::media::{Tag, fixture_media};
use sluice_testkit::rtmp::Publisher;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub const BUDGET_MS: u64 = 800;
pub const FRAME_INTERVAL: Duration = Duration::from_millis(40);
/// Measurement slack: the publisher, the server and the players share one process and two
/// threads, on a CI machine that may be busy; a late wake-up of any of them shows up as age.
/// (Without the budget, ages here reach the full 10 s pause.)
pub const SLACK: Duration = Duration::from_millis(250);
/// The viewers' socket buffers: the server's send buffer (the kernel doubles what is set)
/// and the player's receive buffer.
pub const SERVER_SNDBUF: usize = 8 * 1024;
pub const PLAYER_RCVBUF: u32 = 4 * 1024;
/// What the kernel can hold between the two (it doubles the sizes set), with some slack.
pub const IN_FLIGHT: usize = 2 * SERVER_SNDBUF + 2 * PLAYER_RCVBUF as usize + 8 * 1024;

/// The node's config: the budget, drops, a small send buffer, and a ring of 30 GOPs (so no
/// viewer falls out of it: only the budget moves them).
pub fn config() -> sluice_core::Config {
    super::test_config(&format!(
        "[streams]\ngop_cache_gops = 30\n[schedule.apps.live]\nmax_latency_ms = {BUDGET_MS}\n\
         drop_disposable_after_ms = 200\ndrop_inter_after_ms = 500\n\
         send_buffer_bytes = {SERVER_SNDBUF}\n"
    ))
}

/// Half the fixture's bitrate, in bytes per second.
pub fn half_rate() -> usize {
    let fixture_bytes: usize = fixture_media(H264_AAC)
        .0
        .iter()
        .map(|t| t.payload.len())
        .sum();
    fixture_bytes / 2 / 2 // the fixture lasts 2 s
}

/// When each (type, timestamp) was sent.
pub type SendTimes = Arc<Mutex<HashMap<(u8, u32), Instant>>>;

/// Publishes the fixture in real time (each tag at its timestamp), looping for `duration`.
pub fn real_time_publisher(url: String, duration: Duration) -> (SendTimes, JoinHandle<Client>) {
    let sent: SendTimes = Arc::default();
    let record = sent.clone();
    let task = Publisher::fixture(url, H264_AAC)
        .real_time()
        .until(duration)
        .spawn_noting(move |type_id, ts| {
            record
                .lock()
                .expect("lock")
                .insert((type_id, ts), Instant::now());
        });
    (sent, task)
}

/// A frame a player decoded, when, and how many bytes it had read by then.
pub struct Received {
    pub tag: Tag,
    pub at: Instant,
    pub bytes_before: usize,
}

/// How a test player reads.
#[derive(Clone, Copy)]
pub enum Pace {
    /// Reads normally, pauses from `at` for `pause`, then reads as fast as it can.
    PauseAt { at: Duration, pause: Duration },
    /// Reads `bytes_per_sec` at most, in small pieces.
    Rate { bytes_per_sec: usize },
}

impl Pace {
    /// Before a player's next read: sleeps through the pause (setting `resumed`), or
    /// returns false (after a short sleep) while a rate-limited player is ahead of its rate.
    async fn may_read(self, started: Instant, resumed: &mut Instant, read: usize) -> bool {
        match self {
            Pace::PauseAt { at, pause } if started.elapsed() >= at && *resumed == started => {
                tokio::time::sleep(pause).await;
                *resumed = Instant::now();
            }
            Pace::Rate { bytes_per_sec } => {
                let allowed = started.elapsed().as_secs_f64() * bytes_per_sec as f64;
                if read as f64 > allowed {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    return false;
                }
            }
            Pace::PauseAt { .. } => {}
        }
        true
    }
}

/// A player's connection to `addr`, its receive buffer [`PLAYER_RCVBUF`].
pub async fn player_socket(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(PLAYER_RCVBUF).expect("rcvbuf");
    socket.connect(addr).await.expect("connect")
}

/// A player's reads from its socket as its [`Pace`] allows, for a while: what the RTMP and
/// the HTTP-FLV players share (they differ only in what they decode).
pub struct PacedReader {
    pace: Pace,
    total: Duration,
    started: Instant,
    resumed: Instant,
    read: usize,
    buf: Vec<u8>,
}

impl PacedReader {
    /// Reads with `pace` for `total` from now, in pieces of at most 1 KiB.
    pub fn new(pace: Pace, total: Duration) -> PacedReader {
        let started = Instant::now();
        PacedReader {
            pace,
            total,
            started,
            resumed: started,
            read: 0,
            buf: vec![0; 1024],
        }
    }

    /// The next bytes the pace lets the player read; None once `total` has passed or the
    /// server closed.
    pub async fn next(&mut self, socket: &mut TcpStream) -> Option<&[u8]> {
        while self.started.elapsed() < self.total {
            if !self
                .pace
                .may_read(self.started, &mut self.resumed, self.read)
                .await
            {
                continue;
            }
            match tokio::time::timeout(Duration::from_millis(200), socket.read(&mut self.buf)).await
            {
                Ok(Ok(0)) => return None,
                Ok(Ok(n)) => {
                    self.read += n;
                    return Some(&self.buf[..n]);
                }
                Ok(Err(e)) => panic!("read: {e}"),
                Err(_) => continue,
            }
        }
        None
    }

    /// Bytes read so far.
    pub fn read(&self) -> usize {
        self.read
    }

    /// When it read again after its pause (when it started, if it has not paused).
    pub fn resumed(&self) -> Instant {
        self.resumed
    }
}

/// What a player returns: the frames it decoded, and when it read again after its pause.
pub type Played = (Vec<Received>, Instant);

/// Runs the scenario's two late viewers at once with `player(pace, total)`: one reads
/// normally, pauses for 10 s from 2 s in, then reads as fast as it can (14 s in all); the
/// other reads at half the stream's bitrate (12 s).
pub async fn paused_and_slow<F, Fut>(player: F) -> (Played, Played)
where
    F: Fn(Pace, Duration) -> Fut,
    Fut: std::future::Future<Output = Played>,
{
    let paused = player(
        Pace::PauseAt {
            at: Duration::from_secs(2),
            pause: Duration::from_secs(10),
        },
        Duration::from_secs(14),
    );
    let slow = player(
        Pace::Rate {
            bytes_per_sec: half_rate(),
        },
        Duration::from_secs(12),
    );
    tokio::join!(paused, slow)
}

/// The age of a received frame, or None for frames the test did not send (headers).
fn age(sent: &SendTimes, r: &Received) -> Option<Duration> {
    let sent = sent.lock().expect("lock");
    sent.get(&(r.tag.type_id, r.tag.timestamp))
        .map(|t| r.at.saturating_duration_since(*t))
}

/// Video frames that follow a gap in the timeline (a jump or dropped inter frames) must be
/// keyframes: a viewer is moved forward only to where it can decode.
fn assert_resumes_at_keyframes(got: &[Received]) {
    let video: Vec<&Tag> = got
        .iter()
        .map(|r| &r.tag)
        .filter(|t| t.type_id == TAG_VIDEO && t.payload.get(1) == Some(&1))
        .collect();
    let mut gaps = 0;
    for pair in video.windows(2) {
        let gap = pair[1].timestamp.wrapping_sub(pair[0].timestamp);
        if u64::from(gap) > 2 * FRAME_INTERVAL.as_millis() as u64 {
            gaps += 1;
            assert!(
                pair[1].is_video_keyframe(),
                "after a gap of {gap} ms came a non-keyframe at {}",
                pair[1].timestamp
            );
        }
    }
    assert!(gaps > 0, "the viewer was never moved forward");
}

/// What the paused viewer (`paused`, reading again from `resumed`) and the half-rate viewer
/// (`slow`) received: see [`assert_paused_viewer_fresh`] and [`assert_slow_viewer_fresh`].
pub fn assert_within_budget(
    sent: &SendTimes,
    (paused, resumed): (&[Received], Instant),
    slow: &[Received],
) {
    assert_paused_viewer_fresh(sent, paused, resumed);
    assert_slow_viewer_fresh(sent, slow);
}

/// After what the kernel held when it paused, every frame a viewer got once it read again
/// (from `resumed`) is within the budget, and it was moved forward onto keyframes.
pub fn assert_paused_viewer_fresh(sent: &SendTimes, paused: &[Received], resumed: Instant) {
    let budget = Duration::from_millis(BUDGET_MS);
    let after: Vec<&Received> = paused.iter().filter(|r| r.at >= resumed).collect();
    let first_byte = after.first().map_or(0, |r| r.bytes_before);
    let fresh: Vec<&&Received> = after
        .iter()
        .filter(|r| r.bytes_before > first_byte + IN_FLIGHT)
        .collect();
    assert!(
        fresh.len() > 20,
        "the paused viewer received {} frames after resuming",
        fresh.len()
    );
    for r in &fresh {
        if let Some(age) = age(sent, r) {
            assert!(
                age <= budget + FRAME_INTERVAL + SLACK,
                "paused viewer got frame {} aged {age:?}",
                r.tag.timestamp
            );
        }
    }
    assert_resumes_at_keyframes(paused);
}

/// Every frame a half-rate viewer got is within the budget plus the time such a reader needs
/// to drain the kernel's buffers and the frame itself, and it was moved forward onto
/// keyframes.
pub fn assert_slow_viewer_fresh(sent: &SendTimes, slow: &[Received]) {
    let budget = Duration::from_millis(BUDGET_MS);
    assert!(slow.len() > 50, "the slow viewer received {}", slow.len());
    let half_rate = half_rate();
    for r in slow.iter().skip_while(|r| r.bytes_before < IN_FLIGHT) {
        if let Some(age) = age(sent, r) {
            let drain = Duration::from_secs_f64(
                (IN_FLIGHT + r.tag.payload.len()) as f64 / half_rate as f64,
            );
            assert!(
                age <= budget + FRAME_INTERVAL + SLACK + drain,
                "slow viewer got frame {} aged {age:?} (drain allowance {drain:?})",
                r.tag.timestamp
            );
        }
    }
    assert_resumes_at_keyframes(slow);
}

/// Asserts that the shared writer handed `protocol` viewers back because their sockets
/// filled (the path slow viewers take out of it).
pub async fn assert_handed_back(node: &super::Node, protocol: &str) {
    let full = node
        .metric(&format!(
            "sluice_fanout_handbacks_total{{protocol=\"{protocol}\",reason=\"socket_full\"}}"
        ))
        .await;
    assert!(full >= 1.0, "{}", node.metrics().await);
}
