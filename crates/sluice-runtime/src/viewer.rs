//! The one viewer driver: everything between a front end accepting a viewer and the
//! viewer leaving, for every wire format.
//!
//! A front end negotiates its session (the RTMP play command, an HTTP request), then hands
//! the driver the socket, the viewer's cursor and its [`Wire`] format, and a [`Peer`]: the
//! little the driver needs from the protocol while media flows (what the client says
//! meanwhile, and session output to write before more media). The driver owns the rest:
//!
//! - reading the ring under the application's [`sluice_core::Schedule`] (re-read after a
//!   reload), with its batching window ([`crate::pacing`]);
//! - handing the kernel only what the socket takes now: frames not started go back to the
//!   cursor ([`Cursor::unread`]) to be decided again when it drains, so a slow viewer's
//!   latency stays in the ring, where the budget applies; a socket that takes nothing for
//!   the stall deadline is closed;
//! - waiting for a first publisher (or for the pull that brings the stream) and for a
//!   returning one, with their deadlines;
//! - handing a caught-up viewer to its stream's shared writer ([`crate::fanout`]) and
//!   taking it back;
//! - shutdown, and the `viewers` gauge and byte/frame counters.
//!
//! It returns why playback ended ([`Ended`]); the goodbye (RTMP's StreamEOF, the last HTTP
//! chunk) is the front end's, since it is protocol.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_core::metrics::ProtocolCounters;
use sluice_core::topology::PullTicket;
use sluice_core::{Cursor, ReadState, Stream};
use sluice_media::Frame;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::info;

use crate::Context;
use crate::close::Close;
use crate::fanout::{self, Handback, TakeBackError};
use crate::io::{self, write_units_until_full};
use crate::pacing::{Hold, ScheduleCache, Window, apply_socket_options};
use crate::wire::Wire;

/// Most frames read for one vectored write.
const BATCH_FRAMES: usize = 256;
/// Capacity (frames, buffers) kept between writes: a start or catch-up burst grows the
/// batch to hundreds, and this is per-viewer memory (a 100 ms window of a 30 fps stream
/// with audio is ~8 frames).
const STEADY_BATCH: usize = 32;

/// What the driver needs from a front end's session while its viewer plays.
pub trait Peer {
    /// Bytes read at most at once from the client while it plays (per-viewer memory).
    const READ_BUF: usize;

    /// What the client sent while playing; an error ends playback with it.
    fn input(&mut self, data: &[u8]) -> Result<(), Ended>;

    /// Session output to write before more media (acknowledgements, pings, status), if any.
    fn output(&mut self) -> Option<Bytes>;
}

/// Why playback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The connection is to close, for this reason.
    Close(Close),
    /// The client stopped playing and its session goes on (RTMP's closeStream).
    Finished,
}

impl From<Close> for Ended {
    fn from(close: Close) -> Self {
        Ended::Close(close)
    }
}

/// What ends a wait for a publisher.
#[derive(Debug, Clone, Copy)]
enum GiveUp {
    NoPublisher,
    StreamEnded,
}

/// What woke a waiting viewer.
enum Woke {
    /// The stream changed (or the writer handed the viewer back).
    Changed,
    /// A batching window ended.
    Batch,
    GiveUp(GiveUp),
    Shutdown,
    Read(std::io::Result<usize>),
}

/// A viewer being served; see the module docs.
#[derive(Debug)]
pub struct Viewer {
    ctx: Arc<Context>,
    /// Shared with the stream's writer while the viewer is one of its members.
    socket: Arc<TcpStream>,
    cursor: Cursor,
    wire: Wire,
    counters: ProtocolCounters,
    /// The pull bringing the stream from upstream, while the viewer waits for it.
    pull: Option<PullTicket>,
    /// When the viewer started waiting for a first publisher.
    since: Instant,
    window: Window,
    schedule: ScheduleCache,
    /// Frames read and not written yet (a batch being written, or the first frames a front
    /// end waited for before answering).
    frames: Vec<Arc<Frame>>,
    /// The buffers of one write; empty between writes.
    batch: VecDeque<Bytes>,
    /// How long a socket may take nothing.
    stall: Duration,
}

impl Viewer {
    /// A viewer of `cursor`'s stream on `socket`, written in `wire` format. `pull` is the
    /// ticket of the pull bringing the stream, if any ([`Context::watch`]); `stall` how long
    /// the socket may take nothing.
    pub fn new(
        ctx: Arc<Context>,
        socket: Arc<TcpStream>,
        (cursor, pull): (Cursor, Option<PullTicket>),
        wire: Wire,
        stall: Duration,
    ) -> Self {
        let counters = ctx.metrics.protocol_counters(wire.protocol());
        Viewer {
            ctx,
            socket,
            cursor,
            wire,
            counters,
            pull,
            since: Instant::now(),
            window: Window::default(),
            schedule: ScheduleCache::default(),
            frames: Vec::new(),
            batch: VecDeque::new(),
            stall,
        }
    }

    /// Frames read and not yet written (after [`Viewer::first_frames`]: the first ones).
    pub fn pending(&self) -> &[Arc<Frame>] {
        &self.frames
    }

    /// Why the pull bringing this stream failed, if it did.
    pub fn pull_failure(&self) -> Option<Arc<str>> {
        self.pull.as_ref().and_then(PullTicket::failure)
    }

    /// Waits until the stream has frames for this viewer (they stay pending, for
    /// [`Viewer::play`]), for a front end that answers only once there is something to
    /// play (an HTTP status line). Nothing is written.
    pub async fn first_frames<P: Peer>(&mut self, peer: &mut P) -> Result<(), Ended> {
        let wait = match &self.pull {
            Some(pull) => pull.wait,
            None => self.ctx.config.load().streams.wait_for_publisher(),
        };
        let give_up = self.since + wait;
        let mut read_buf = BytesMut::with_capacity(P::READ_BUF);
        loop {
            if let Some(reason) = self.pull_failure() {
                info!(stream = %self.cursor.stream().key(), %reason, "stream not found upstream");
                return Err(Ended::Close(Close::NoPublisher));
            }
            let state = {
                let cfg = self.ctx.config.load();
                let schedule = cfg.schedule.for_app(&self.cursor.stream().key().app);
                self.cursor
                    .read(&mut self.frames, BATCH_FRAMES, Instant::now(), schedule)
            };
            self.ctx.metrics.count_drops(&self.cursor.take_drops());
            if matches!(state, ReadState::Frames) && !self.frames.is_empty() {
                return Ok(());
            }
            let Viewer {
                cursor,
                pull,
                socket,
                ..
            } = self;
            let pull_changed = async {
                match pull {
                    Some(pull) => pull.changed().await,
                    None => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                _ = cursor.changed() => continue,
                _ = pull_changed => continue,
                _ = sleep_until(give_up) => return Err(Ended::Close(Close::NoPublisher)),
                _ = self.ctx.shutdown.cancelled() => return Err(Ended::Close(Close::Shutdown)),
                read = io::read_buf(socket, &mut read_buf) => read,
            };
            self.input(peer, read, &mut read_buf)?;
        }
    }

    /// Plays the stream until the viewer, the stream or the node ends it.
    pub async fn play<P: Peer>(&mut self, peer: &mut P) -> Ended {
        let viewers = self
            .ctx
            .metrics
            .viewers
            .get_or_create(&[("protocol", self.wire.protocol())])
            .clone();
        viewers.inc();
        // Dropped with this future, whichever way it ends.
        let _playing = Playing::new(self.cursor.stream().clone(), self.wire);
        {
            let cfg = self.ctx.config.load();
            apply_socket_options(
                socket2::SockRef::from(&*self.socket),
                cfg.schedule.for_app(&self.cursor.stream().key().app),
            );
        }
        // The pull only matters while waiting for a first frame.
        if !self.frames.is_empty() {
            self.pull = None;
        }
        let end = self.serve(peer).await;
        viewers.dec();
        end
    }

    async fn serve<P: Peer>(&mut self, peer: &mut P) -> Ended {
        let mut read_buf = BytesMut::with_capacity(P::READ_BUF);
        // Created once, not per wake: registering and dropping a cancellation waiter on
        // every frame was measurable at a thousand viewers.
        let shutdown = self.ctx.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let app = self.cursor.stream().key().app.clone();
        loop {
            if let Err(end) = self.flush(peer).await {
                return end;
            }
            let cfg = self.ctx.config.load();
            let schedule = self.schedule.get(&cfg, Some(&app));
            let now = Instant::now();
            let mut give_up = None;
            let mut hold = self.window.hold(now, &schedule, self.cursor.stream());
            if matches!(hold, Hold::No) {
                if self.frames.is_empty() {
                    if self.frames.capacity() > STEADY_BATCH {
                        self.frames.shrink_to(STEADY_BATCH);
                    }
                    // Everything due, up to a cap, goes out in one vectored write.
                    let state = self
                        .cursor
                        .read(&mut self.frames, BATCH_FRAMES, now, &schedule);
                    self.ctx.metrics.count_drops(&self.cursor.take_drops());
                    match state {
                        ReadState::Frames | ReadState::Pending => {}
                        ReadState::WaitingForPublisher => {
                            let wait = match &self.pull {
                                Some(pull) => {
                                    if let Some(reason) = pull.failure() {
                                        info!(%reason, "stream not found upstream");
                                        return Ended::Close(Close::NoPublisher);
                                    }
                                    pull.wait
                                }
                                None => cfg.streams.wait_for_publisher(),
                            };
                            give_up = Some((self.since + wait, GiveUp::NoPublisher));
                        }
                        ReadState::Unpublished(at) => {
                            let grace = cfg.streams.republish_grace();
                            give_up = Some((at + grace, GiveUp::StreamEnded));
                        }
                    }
                }
                drop(cfg);
                if !self.frames.is_empty() {
                    let unsent = match self.send().await {
                        Ok(unsent) => unsent,
                        Err(end) => return end,
                    };
                    if unsent > 0 {
                        // The socket is full: give the rest back, so it is decided again
                        // (and skipped if it grew too old) once it drains.
                        let sent = self.frames.len() - unsent;
                        self.cursor.unread(&self.frames[sent..]);
                    }
                    let full_batch = self.frames.len() == BATCH_FRAMES;
                    self.frames.clear();
                    // With batching, the next write is a window after this one: one timer
                    // wake per window, none per frame.
                    self.window.on_change(now, &schedule, self.cursor.stream());
                    if unsent > 0 {
                        tokio::select! {
                            _ = &mut cancelled => return Ended::Close(Close::Shutdown),
                            _ = sleep(self.stall) => return Ended::Close(Close::WriteStalled),
                            writable = self.socket.writable() => {
                                if writable.is_err() {
                                    return Ended::Close(Close::Io);
                                }
                            }
                        }
                        continue;
                    }
                    if full_batch {
                        continue;
                    }
                    // Everything due went out: wait for the next change (or the end of the
                    // window) instead of reading the ring again only to find it empty. A
                    // frame appended meanwhile has already marked the cursor changed, so
                    // the wait returns at once. (Measured: the second pass was a config
                    // load, a ring read and a flush per frame per viewer.)
                    hold = self
                        .window
                        .hold(Instant::now(), &schedule, self.cursor.stream());
                }
            } else {
                drop(cfg);
            }
            // A caught-up viewer is written by its stream's shared writer until handed back
            // (see `fanout`): no wake-up of this task per frame or batching window. A byte
            // trigger counts per viewer, so those viewers batch on their own.
            if give_up.is_none()
                && schedule.merge_write_bytes == 0
                && let Some(joined) = fanout::join(&self.ctx, &self.cursor, &self.socket, self.wire)
            {
                let woke = tokio::select! {
                    _ = joined.handed_back() => Woke::Changed,
                    _ = &mut cancelled => Woke::Shutdown,
                    read = io::read_buf(&self.socket, &mut read_buf) => Woke::Read(read),
                };
                if let Err(end) = self.take_back(joined.leave()).await {
                    return end;
                }
                match woke {
                    Woke::Shutdown => return Ended::Close(Close::Shutdown),
                    Woke::Read(read) => {
                        if let Err(end) = self.input(peer, read, &mut read_buf) {
                            return end;
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let woke = self
                .wait(hold, give_up, &mut cancelled, &mut read_buf)
                .await;
            match woke {
                Woke::Changed => {
                    self.window
                        .on_change(Instant::now(), &schedule, self.cursor.stream());
                }
                Woke::Batch => {}
                Woke::GiveUp(GiveUp::NoPublisher) => return Ended::Close(Close::NoPublisher),
                Woke::GiveUp(GiveUp::StreamEnded) => return Ended::Close(Close::StreamEnded),
                Woke::Shutdown => return Ended::Close(Close::Shutdown),
                Woke::Read(read) => {
                    if let Err(end) = self.input(peer, read, &mut read_buf) {
                        return end;
                    }
                }
            }
        }
    }

    /// Waits for what the viewer needs next: new frames (or a batching window's end), a
    /// publisher's deadline, shutdown, or input from the client.
    async fn wait(
        &mut self,
        hold: Hold,
        give_up: Option<(Instant, GiveUp)>,
        cancelled: &mut std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
        read_buf: &mut BytesMut,
    ) -> Woke {
        let Viewer {
            socket,
            cursor,
            pull,
            ..
        } = self;
        let changed = async {
            match hold {
                Hold::No => {
                    match pull {
                        // Waiting on a pull: its failure ends the wait early.
                        Some(pull) if give_up.is_some() => tokio::select! {
                            _ = cursor.changed() => {}
                            _ = pull.changed() => {}
                        },
                        _ => cursor.changed().await,
                    }
                    Woke::Changed
                }
                Hold::Until { at, count_bytes } => {
                    // Inside a batching window only its end (or, with a byte trigger, a
                    // change to count) wakes the viewer.
                    tokio::select! {
                        _ = sleep_until(at) => {}
                        _ = cursor.changed(), if count_bytes => {}
                    }
                    Woke::Batch
                }
            }
        };
        let expired = async {
            match give_up {
                Some((at, why)) => {
                    sleep_until(at).await;
                    why
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            woke = changed => woke,
            why = expired => Woke::GiveUp(why),
            _ = cancelled => Woke::Shutdown,
            read = io::read_buf(socket, read_buf) => Woke::Read(read),
        }
    }

    /// Hands what the client sent to the front end's session.
    fn input<P: Peer>(
        &self,
        peer: &mut P,
        read: std::io::Result<usize>,
        buf: &mut BytesMut,
    ) -> Result<(), Ended> {
        match read {
            Ok(0) => Err(Ended::Close(Close::PeerClosed)),
            Ok(n) => {
                self.counters.bytes_in.inc_by(n as u64);
                let result = peer.input(buf);
                buf.clear();
                result
            }
            Err(_) => Err(Ended::Close(Close::Io)),
        }
    }

    /// Writes the session's pending output, within the stall deadline.
    async fn flush<P: Peer>(&self, peer: &mut P) -> Result<(), Ended> {
        let Some(out) = peer.output() else {
            return Ok(());
        };
        match timeout(self.stall, io::write_all(&self.socket, &out)).await {
            Ok(Ok(())) => {
                self.counters.bytes_out.inc_by(out.len() as u64);
                Ok(())
            }
            Ok(Err(_)) => Err(Ended::Close(Close::Io)),
            Err(_) => Err(Ended::Close(Close::WriteStalled)),
        }
    }

    /// Writes the pending frames' wire forms as far as the socket takes them without
    /// waiting; returns how many whole frames it did not take (the tail).
    async fn send(&mut self) -> Result<usize, Ended> {
        for frame in &self.frames {
            self.wire.push(frame, &mut self.batch);
        }
        let unit = self.wire.unit();
        let written = write_units_until_full(&self.socket, &mut self.batch, unit, self.stall)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => Ended::Close(Close::WriteStalled),
                _ => Ended::Close(Close::Io),
            })?;
        let unsent = self.batch.len() / unit;
        self.batch.clear();
        if self.batch.capacity() > STEADY_BATCH {
            self.batch.shrink_to(STEADY_BATCH);
        }
        self.counters.bytes_out.inc_by(written);
        self.counters.media_writes.inc();
        self.counters
            .frames_out
            .inc_by((self.frames.len() - unsent) as u64);
        Ok(unsent)
    }

    /// Takes the viewer back from its stream's writer (see [`Handback::finish`]).
    async fn take_back(&mut self, back: Handback) -> Result<(), Ended> {
        let written = back
            .finish(&self.socket, &mut self.cursor, self.stall)
            .await
            .map_err(|e| match e {
                TakeBackError::Stalled => Ended::Close(Close::WriteStalled),
                TakeBackError::Io => Ended::Close(Close::Io),
            })?;
        self.counters.bytes_out.inc_by(written);
        Ok(())
    }
}

/// Counts a viewer in its stream's players of its protocol (for the admin API) while it
/// plays.
struct Playing {
    stream: Arc<Stream>,
    rtmp: bool,
}

impl Playing {
    fn new(stream: Arc<Stream>, wire: Wire) -> Playing {
        let rtmp = matches!(wire, Wire::Rtmp(_));
        Self::count(&stream, rtmp).fetch_add(1, Ordering::Relaxed);
        Playing { stream, rtmp }
    }

    fn count(stream: &Stream, rtmp: bool) -> &AtomicUsize {
        if rtmp {
            &stream.stats.rtmp_viewers
        } else {
            &stream.stats.http_flv_viewers
        }
    }
}

impl Drop for Playing {
    fn drop(&mut self) {
        Self::count(&self.stream, self.rtmp).fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    //! The driver's deadlines, on paused time: every clock the driver and the ring read is
    //! tokio's, so the runtime's virtual time decides exactly when a wait ends.

    use super::*;
    use sluice_core::topology::Via;
    use sluice_core::{Config, StreamKey};
    use sluice_media::FrameKind;

    use crate::io::tests::pair;

    /// A client that says nothing while it plays.
    struct Silent;

    impl Peer for Silent {
        const READ_BUF: usize = 64;

        fn input(&mut self, _data: &[u8]) -> Result<(), Ended> {
            Ok(())
        }

        fn output(&mut self) -> Option<Bytes> {
            None
        }
    }

    fn context(wait_ms: u64, grace_ms: u64) -> Arc<Context> {
        let mut config = Config::default();
        config.streams.wait_for_publisher_ms = wait_ms;
        config.streams.republish_grace_ms = grace_ms;
        Context::new(config)
    }

    async fn viewer(ctx: &Arc<Context>, key: &StreamKey) -> (Viewer, TcpStream) {
        let (server, client) = pair().await;
        let watch = ctx.watch(key, &Via::default());
        let viewer = Viewer::new(
            ctx.clone(),
            Arc::new(server),
            watch,
            Wire::FlvPlain,
            Duration::from_secs(30),
        );
        (viewer, client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_viewer_waits_exactly_wait_for_publisher_ms_for_a_publisher() {
        let ctx = context(3_000, 500);
        let (mut viewer, _client) = viewer(&ctx, &StreamKey::new("live", "nobody")).await;
        let started = Instant::now();
        let ended = viewer.play(&mut Silent).await;
        assert_eq!(ended, Ended::Close(Close::NoPublisher));
        assert_eq!(started.elapsed(), Duration::from_millis(3_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_viewer_whose_publisher_left_ends_after_exactly_the_republish_grace() {
        let ctx = context(3_000, 1_500);
        let key = StreamKey::new("live", "leaves");
        let mut publisher = ctx
            .registry
            .publish(&key, ctx.cache_settings(), false, Instant::now())
            .expect("publish");
        let keyframe = Bytes::from_static(&[0x17, 1, 0, 0, 0, 0x65, 1, 2, 3]);
        publisher
            .push_media(FrameKind::Video, 0, keyframe, Instant::now())
            .expect("frame");
        let (mut viewer, _client) = viewer(&ctx, &key).await;
        let play = tokio::spawn(async move {
            let ended = viewer.play(&mut Silent).await;
            (ended, Instant::now())
        });
        // The viewer gets its keyframe (and is handed to the stream's writer), then the
        // publisher leaves.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = Instant::now();
        drop(publisher);
        let (ended, at) = play.await.expect("viewer task");
        assert_eq!(ended, Ended::Close(Close::StreamEnded));
        assert_eq!(at - left, Duration::from_millis(1_500));
    }
}
