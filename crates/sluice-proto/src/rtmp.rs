//! The RTMP listener: one task per connection, which publishes into or plays from a stream.
//!
//! The task owns its socket and a sans-IO `ServerConnection`. Media to players is written as
//! the frame's shared RTMP form (serialised once per frame for every viewer: full type-0
//! header, message stream id 1, the configured chunk size), after the session's own output.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_core::cluster::{PullTicket, Via};
use sluice_core::metrics::{Label1, ProtocolCounters, proto};
use sluice_core::stream::{IngestError, PublishError};
use sluice_core::{Cursor, Publisher, ReadState, StreamKey};
use sluice_media::{Frame, FrameKind};
use sluice_rtmp::Message;
use sluice_rtmp::chunk::{ChunkError, ChunkLimits, encode_full};
use sluice_rtmp::connection::{ConnectionError, ServerConnection};
use sluice_rtmp::handshake::{self, Handshake, Progress};
use sluice_rtmp::server::{ServerConfig, ServerEvent, SessionStats};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Context;
use crate::fanout::{self, Handback, TakeBackError, Wire};
use crate::io::{self, write_until_full};
use crate::pacing::{Hold, ScheduleCache, Window, apply_socket_options};

/// The message stream id every shared media serialisation uses: the first (and with ffmpeg,
/// OBS-style players and VLC, the only) stream a client creates.
pub const SHARED_STREAM_ID: u32 = 1;
/// Chunk stream ids of shared media, one per kind so type-0 headers never collide.
const CSID_AUDIO: u32 = 4;
const CSID_DATA: u32 = 5;
const CSID_VIDEO: u32 = 6;
/// Most frames read for one vectored write.
const BATCH_FRAMES: usize = 256;
/// Batch capacity kept between writes (a 100 ms window of a 30 fps stream with audio is ~8).
const STEADY_BATCH: usize = 32;
/// Read buffer of a publisher; players send little (acks, pings), so theirs stays small:
/// per-viewer memory is what fan-out at scale pays for.
const PUBLISHER_READ_BUF: usize = 64 * 1024;
const PLAYER_READ_BUF: usize = 1024;

/// The RTMP message carrying `frame` on message stream `stream_id`.
pub fn frame_message(frame: &Frame, stream_id: u32) -> Message {
    let csid = match frame.kind {
        FrameKind::Audio => CSID_AUDIO,
        FrameKind::Video => CSID_VIDEO,
        FrameKind::Script => CSID_DATA,
    };
    Message {
        csid,
        type_id: frame.kind.type_id(),
        timestamp: frame.wire_timestamp(),
        stream_id,
        payload: frame.payload.clone(),
    }
}

/// `frame`'s shared RTMP form (message stream id [`SHARED_STREAM_ID`]), serialised once per
/// frame for every viewer.
pub(crate) fn shared_chunks(frame: &Frame, chunk_size: u32) -> Bytes {
    frame.rtmp_chunks(|f| encode_full(&frame_message(f, SHARED_STREAM_ID), chunk_size))
}

/// Accepts RTMP connections until shutdown. Connections over `rtmp.max_connections` are
/// refused at accept; accept errors back off briefly instead of spinning.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    let limit = Arc::new(Semaphore::new(ctx.config.load().rtmp.max_connections));
    crate::accept::until_shutdown(&listener, &ctx, proto::RTMP, |socket, peer| {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.metrics.refused(proto::RTMP, "max_connections");
            drop(socket);
            return;
        };
        ctx.metrics
            .connections
            .get_or_create(&[("protocol", proto::RTMP)])
            .inc();
        let conn = ctx.next_conn_id();
        let span = info_span!("rtmp", conn, %peer);
        let task_ctx = ctx.clone();
        ctx.tracker.spawn(
            async move {
                let reason = Handler::new(task_ctx.clone(), socket).run().await;
                task_ctx.metrics.closed(proto::RTMP, reason.label());
                debug!(reason = reason.label(), "connection closed");
                drop(permit);
            }
            .instrument(span),
        );
    })
    .await;
}

/// Why a connection ended (the `reason` label of `connections_closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    PeerClosed,
    HandshakeTimeout,
    HandshakeError,
    ProtocolError,
    IdleTimeout,
    /// A player's socket took nothing for the idle timeout.
    WriteStalled,
    Io,
    Shutdown,
    Rejected,
    Displaced,
    StreamEnded,
    NoPublisher,
    /// The peer's incomplete messages outgrew `rtmp.max_buffered_message_bytes`.
    IngestBudget,
}

impl Close {
    fn label(self) -> &'static str {
        match self {
            Close::PeerClosed => "peer_closed",
            Close::HandshakeTimeout => "handshake_timeout",
            Close::HandshakeError => "handshake_error",
            Close::ProtocolError => "protocol_error",
            Close::IdleTimeout => "idle_timeout",
            Close::WriteStalled => "write_stalled",
            Close::Io => "io_error",
            Close::Shutdown => "shutdown",
            Close::Rejected => "rejected",
            Close::Displaced => "displaced",
            Close::StreamEnded => "stream_ended",
            Close::NoPublisher => "no_publisher",
            Close::IngestBudget => "ingest_budget",
        }
    }
}

/// What woke the main loop.
enum Wake {
    Shutdown,
    Idle,
    Changed,
    /// A batching window ended (or its byte trigger may have fired).
    Batch,
    Displaced,
    GiveUp,
    Read(std::io::Result<usize>),
}

/// What this connection is doing with a stream.
enum Role {
    Idle,
    Publishing {
        publisher: Publisher,
        stream_id: u32,
    },
    /// Boxed: a player's state is several times a publisher's.
    Playing(Box<Player>),
}

struct Player {
    cursor: Cursor,
    stream_id: u32,
    window: Window,
    schedule: ScheduleCache,
    /// When this viewer started waiting (for a first publisher).
    since: Instant,
    /// The pull bringing this stream from upstream, while the viewer waits for it.
    pull: Option<PullTicket>,
}

struct Handler {
    ctx: Arc<Context>,
    /// Shared with the stream's writer while this viewer is one of its members.
    socket: Arc<TcpStream>,
    conn: ServerConnection,
    app: Option<String>,
    role: Role,
    /// Serialised session output waiting to be written.
    out: BytesMut,
    /// Set when the session decided to close after flushing (a rejection).
    close_after_flush: Option<Close>,
    /// Session drop counters already reported to metrics.
    reported: SessionStats,
    counters: ProtocolCounters,
    /// `rtmp.idle_timeout_ms` when the connection started (per-connection settings do not
    /// change under it).
    idle: Duration,
}

impl Handler {
    fn new(ctx: Arc<Context>, socket: TcpStream) -> Self {
        let cfg = ctx.config.load();
        let _ = socket.set_nodelay(true);
        let conn = ServerConnection::new(
            ServerConfig {
                chunk_size: cfg.rtmp.chunk_size,
                window_ack_size: cfg.rtmp.window_ack_size,
                peer_bandwidth: cfg.rtmp.window_ack_size,
            },
            ChunkLimits {
                max_chunk_size: cfg.rtmp.max_incoming_chunk_size,
                max_message_size: cfg.rtmp.max_message_size,
                max_buffered_bytes: cfg.rtmp.max_buffered_message_bytes,
                ..ChunkLimits::default()
            },
        );
        Handler {
            ctx: ctx.clone(),
            socket: Arc::new(socket),
            conn,
            app: None,
            role: Role::Idle,
            out: BytesMut::new(),
            close_after_flush: None,
            reported: SessionStats::default(),
            counters: ctx.metrics.protocol_counters(proto::RTMP),
            idle: cfg.rtmp.idle_timeout(),
        }
    }

    async fn run(mut self) -> Close {
        let deadline = self.ctx.config.load().rtmp.handshake_timeout();
        let remaining = match timeout(deadline, self.handshake()).await {
            Err(_) => {
                info!("handshake timed out");
                return Close::HandshakeTimeout;
            }
            Ok(Err(close)) => return close,
            Ok(Ok(remaining)) => remaining,
        };
        let close = match self.input(&remaining) {
            Ok(()) => self.serve().await,
            Err(close) => close,
        };
        self.finish(close).await;
        close
    }

    /// Runs the handshake; returns bytes that arrived after it.
    async fn handshake(&mut self) -> Result<Vec<u8>, Close> {
        let mut hs = Handshake::new(handshake::Role::Server);
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match io::read(&self.socket, &mut buf).await {
                Ok(0) => return Err(Close::PeerClosed),
                Ok(n) => n,
                Err(_) => return Err(Close::Io),
            };
            self.count_in(n);
            let (out, remaining) = match hs.process(&buf[..n]) {
                Ok(Progress::InProgress { out }) => (out, None),
                Ok(Progress::Done { out, remaining }) => (out, Some(remaining)),
                Err(error) => {
                    info!(%error, "handshake failed");
                    return Err(Close::HandshakeError);
                }
            };
            if !out.is_empty() {
                io::write_all(&self.socket, &out)
                    .await
                    .map_err(|_| Close::Io)?;
                self.count_out(out.len());
            }
            if let Some(remaining) = remaining {
                return Ok(remaining);
            }
        }
    }

    fn count_in(&self, n: usize) {
        self.counters.bytes_in.inc_by(n as u64);
    }

    fn count_out(&self, n: usize) {
        self.counters.bytes_out.inc_by(n as u64);
    }

    /// The main loop after the handshake.
    async fn serve(&mut self) -> Close {
        let mut read_buf = BytesMut::with_capacity(PLAYER_READ_BUF);
        let mut frames: Vec<Arc<Frame>> = Vec::new();
        let mut batch: VecDeque<Bytes> = VecDeque::new();
        let idle = self.idle;
        // Created once, not per wake: registering and dropping a timer and a cancellation
        // waiter on every frame was measurable at a thousand viewers.
        let shutdown = self.ctx.shutdown.clone();
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let idle_sleep = sleep_until(Instant::now() + idle);
        tokio::pin!(idle_sleep);
        loop {
            if let Err(close) = self.flush().await {
                return close;
            }
            if let Some(close) = self.close_after_flush {
                return close;
            }
            // Send what the ring has for a player; learn how long to wait otherwise.
            let mut give_up_at = None;
            let mut hold = Hold::No;
            // The schedule this pass read with, kept for the wake below: one config load per
            // wake, not two.
            let mut schedule_in_force = None;
            if let Role::Playing(player) = &mut self.role {
                let cfg = self.ctx.config.load();
                let schedule = player.schedule.get(&cfg, self.app.as_deref());
                schedule_in_force = Some(schedule);
                let now = Instant::now();
                hold = player.window.hold(now, &schedule, player.cursor.stream());
                if matches!(hold, Hold::No) {
                    frames.clear();
                    if frames.capacity() > STEADY_BATCH {
                        frames.shrink_to(STEADY_BATCH);
                    }
                    // Everything due, up to a cap, goes out in one vectored write.
                    let state =
                        player
                            .cursor
                            .read(&mut frames, BATCH_FRAMES, now.into_std(), &schedule);
                    self.ctx.metrics.count_drops(&player.cursor.take_drops());
                    if !frames.is_empty() {
                        let stream_id = player.stream_id;
                        drop(cfg);
                        let unsent = match self.send_frames(&frames, stream_id, &mut batch).await {
                            Ok(unsent) => unsent,
                            Err(close) => return close,
                        };
                        if let Role::Playing(player) = &mut self.role {
                            if unsent > 0 {
                                // The socket is full: give the rest back, so it is decided
                                // again (and skipped if it grew too old) once it drains.
                                player.cursor.unread(&frames[frames.len() - unsent..]);
                            }
                            // With batching, the next write is a window after this one: one
                            // timer wake per window, none per frame.
                            player
                                .window
                                .on_change(now, &schedule, player.cursor.stream());
                        }
                        if unsent > 0 {
                            tokio::select! {
                                _ = &mut cancelled => return Close::Shutdown,
                                _ = sleep(idle) => return Close::WriteStalled,
                                writable = self.socket.writable() => {
                                    if writable.is_err() {
                                        return Close::Io;
                                    }
                                }
                            }
                            continue;
                        }
                        if frames.len() == BATCH_FRAMES {
                            continue;
                        }
                        // Everything due went out: wait for the next change (or the end of
                        // the window) instead of reading the ring again only to find it
                        // empty. A frame appended meanwhile has already marked the cursor
                        // changed, so the wait returns at once. (Measured: the second pass
                        // was a config load, a ring read and a flush per frame per viewer.)
                        if let Role::Playing(player) = &mut self.role {
                            hold = player.window.hold(
                                Instant::now(),
                                &schedule,
                                player.cursor.stream(),
                            );
                        }
                    } else {
                        match state {
                            ReadState::Frames | ReadState::Pending => {}
                            ReadState::WaitingForPublisher => {
                                let wait = match &player.pull {
                                    Some(pull) => {
                                        if let Some(reason) = pull.failure() {
                                            info!(%reason, "stream not found upstream");
                                            return Close::NoPublisher;
                                        }
                                        pull.wait
                                    }
                                    None => cfg.streams.wait_for_publisher(),
                                };
                                give_up_at = Some((player.since + wait, Close::NoPublisher));
                            }
                            ReadState::Unpublished(at) => {
                                let grace = cfg.streams.republish_grace();
                                give_up_at =
                                    Some((Instant::from_std(at) + grace, Close::StreamEnded));
                            }
                        }
                    }
                }
            }
            if matches!(self.role, Role::Publishing { .. })
                && read_buf.capacity() < PUBLISHER_READ_BUF
            {
                read_buf.reserve(PUBLISHER_READ_BUF);
            }
            // Players may say nothing for minutes (an acknowledgement per window); a stuck
            // one is caught by the write deadline instead.
            let receive_idle = !matches!(self.role, Role::Playing(_));
            // A caught-up viewer is written by its stream's shared writer until handed back
            // (see `fanout`): no wake-up of this task per frame or batching window. A byte
            // trigger counts per viewer, so those viewers batch on their own.
            let chunk_size = self.conn.session.chunk_size();
            let joined = match (&self.role, schedule_in_force) {
                (Role::Playing(player), Some(schedule))
                    if give_up_at.is_none()
                        && schedule.merge_write_bytes == 0
                        && player.stream_id == SHARED_STREAM_ID =>
                {
                    fanout::join(
                        &self.ctx,
                        &player.cursor,
                        &self.socket,
                        Wire::Rtmp { chunk_size },
                    )
                }
                _ => None,
            };
            let wake = if let Some(joined) = joined {
                let wake = tokio::select! {
                    _ = joined.handed_back() => Wake::Changed,
                    _ = &mut cancelled => Wake::Shutdown,
                    read = io::read_buf(&self.socket, &mut read_buf) => Wake::Read(read),
                };
                if let Err(close) = self.take_back(joined.leave()).await {
                    return close;
                }
                wake
            } else {
                let Handler { socket, role, .. } = &mut *self;
                let changed = async {
                    match role {
                        Role::Playing(player) => match hold {
                            Hold::No => match &mut player.pull {
                                // Waiting on a pull: its failure ends the wait early.
                                Some(pull) if give_up_at.is_some() => tokio::select! {
                                    _ = player.cursor.changed() => {}
                                    _ = pull.changed() => {}
                                },
                                _ => player.cursor.changed().await,
                            },
                            Hold::Until { at, count_bytes } => {
                                // Inside a batching window only its end (or, with a byte
                                // trigger, a change to count) wakes the viewer.
                                tokio::select! {
                                    _ = sleep_until(at) => {}
                                    _ = player.cursor.changed(), if count_bytes => {}
                                }
                                return Wake::Batch;
                            }
                        },
                        Role::Publishing { publisher, .. } => {
                            publisher.displaced().await;
                            return Wake::Displaced;
                        }
                        Role::Idle => std::future::pending().await,
                    }
                    Wake::Changed
                };
                let give_up = async {
                    match give_up_at {
                        Some((at, _)) => sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut cancelled => Wake::Shutdown,
                    _ = &mut idle_sleep, if receive_idle => Wake::Idle,
                    wake = changed => wake,
                    _ = give_up => Wake::GiveUp,
                    read = io::read_buf(socket, &mut read_buf) => Wake::Read(read),
                }
            };
            match wake {
                Wake::Shutdown => return Close::Shutdown,
                Wake::Idle => return Close::IdleTimeout,
                Wake::Changed => {
                    if let (Role::Playing(player), Some(schedule)) =
                        (&mut self.role, schedule_in_force)
                    {
                        player
                            .window
                            .on_change(Instant::now(), &schedule, player.cursor.stream());
                    }
                }
                Wake::Batch => {}
                Wake::Displaced => {
                    info!("publisher displaced by a newer one");
                    self.stop_role();
                    return Close::Displaced;
                }
                Wake::GiveUp => {
                    if let Some((_, close)) = give_up_at {
                        return close;
                    }
                }
                Wake::Read(Ok(0)) => return Close::PeerClosed,
                Wake::Read(Ok(n)) => {
                    self.count_in(n);
                    idle_sleep.as_mut().reset(Instant::now() + idle);
                    let result = self.input(&read_buf);
                    read_buf.clear();
                    if let Err(close) = result {
                        return close;
                    }
                }
                Wake::Read(Err(_)) => return Close::Io,
            }
        }
    }

    /// Writes `frames` as shared RTMP bytes (private ones for an unusual stream id), as far
    /// as the socket takes them without waiting; returns how many whole frames it did not
    /// take (the tail of `frames`).
    async fn send_frames(
        &mut self,
        frames: &[Arc<Frame>],
        stream_id: u32,
        batch: &mut VecDeque<Bytes>,
    ) -> Result<usize, Close> {
        let chunk_size = self.conn.session.chunk_size();
        for frame in frames {
            let bytes = if stream_id == SHARED_STREAM_ID {
                shared_chunks(frame, chunk_size)
            } else {
                self.ctx.metrics.rtmp_private_serialisations.inc();
                encode_full(&frame_message(frame, stream_id), chunk_size)
            };
            batch.push_back(bytes);
        }
        let n = write_until_full(&self.socket, batch, self.idle)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => Close::WriteStalled,
                _ => Close::Io,
            })?;
        let unsent = batch.len();
        batch.clear();
        // A start or catch-up burst grows the batch to hundreds of frames; keep only what a
        // steady viewer uses, since this is per-viewer memory.
        if batch.capacity() > STEADY_BATCH {
            batch.shrink_to(STEADY_BATCH);
        }
        self.count_out(n as usize);
        self.counters.media_writes.inc();
        self.counters
            .frames_out
            .inc_by((frames.len() - unsent) as u64);
        Ok(unsent)
    }

    /// Takes a player back from the stream's writer (see [`Handback::finish`]).
    async fn take_back(&mut self, back: Handback) -> Result<(), Close> {
        let Handler { socket, role, .. } = self;
        let Role::Playing(player) = role else {
            return Ok(());
        };
        let written = back
            .finish(socket, &mut player.cursor, self.idle)
            .await
            .map_err(|e| match e {
                TakeBackError::Stalled => Close::WriteStalled,
                TakeBackError::Io => Close::Io,
            })?;
        self.count_out(written as usize);
        Ok(())
    }

    /// Writes pending session output.
    async fn flush(&mut self) -> Result<(), Close> {
        self.conn.drain_output(&mut self.out);
        if self.out.is_empty() {
            return Ok(());
        }
        let out = self.out.split().freeze();
        io::write_all(&self.socket, &out)
            .await
            .map_err(|_| Close::Io)?;
        self.count_out(out.len());
        Ok(())
    }

    /// Feeds received bytes to the session and acts on its events.
    fn input(&mut self, data: &[u8]) -> Result<(), Close> {
        let mut data = data;
        loop {
            let result = self.conn.handle_input(data);
            // Events from the messages handled before an error still count (a rejected
            // connect's answer, the media before a broken chunk).
            let mut decided = false;
            while let Some(event) = self.conn.session.poll_event() {
                decided = true;
                self.event(event)?;
            }
            self.report_drops();
            if let Err(error) = result {
                if let ConnectionError::Chunk(ChunkError::BufferBudget { max, .. }) = error {
                    warn!(%error, budget = max, "closing: ingest buffer budget exceeded");
                    return Err(Close::IngestBudget);
                }
                warn!(%error, "closing: protocol error");
                return Err(Close::ProtocolError);
            }
            // The connection stops at each request awaiting our decision; we decide
            // synchronously, so go on with what the peer pipelined behind it.
            if !decided || self.close_after_flush.is_some() {
                return Ok(());
            }
            data = &[];
        }
    }

    /// Turns what the session tolerated since the last call into metrics and one log line.
    fn report_drops(&mut self) {
        let now = self.conn.session.stats();
        if *now == self.reported {
            return;
        }
        let was = std::mem::replace(&mut self.reported, now.clone());
        let deltas = [
            (
                "media_not_publishing",
                now.media_dropped - was.media_dropped,
            ),
            ("bad_data", now.data_dropped - was.data_dropped),
            (
                "unknown_command",
                now.unknown_commands - was.unknown_commands,
            ),
            (
                "truncated_aggregate",
                now.aggregates_truncated - was.aggregates_truncated,
            ),
            ("ignored_type", now.ignored_messages - was.ignored_messages),
        ];
        for (reason, n) in deltas.into_iter().filter(|(_, n)| *n > 0) {
            warn!(reason, count = n, "rtmp messages dropped");
            self.ctx
                .metrics
                .rtmp_messages_dropped
                .get_or_create(&[("reason", reason)])
                .inc_by(n);
        }
    }

    fn event(&mut self, event: ServerEvent) -> Result<(), Close> {
        match event {
            ServerEvent::ConnectRequested {
                app,
                tc_url,
                flash_ver,
                ..
            } => {
                if !self.ctx.config.load().streams.app_allowed(&app) {
                    info!(app, "connect refused: application not served");
                    self.ctx.metrics.refused(proto::RTMP, "unknown_app");
                    self.conn
                        .session
                        .reject_connect("application not served here");
                    self.close_after_flush = Some(Close::Rejected);
                } else {
                    debug!(app, ?tc_url, ?flash_ver, "connect");
                    self.conn.session.accept_connect();
                    self.app = Some(app);
                }
            }
            ServerEvent::PublishRequested {
                stream_id,
                stream_key,
                ..
            } => {
                self.publish(stream_id, &stream_key);
            }
            ServerEvent::PlayRequested {
                stream_id,
                stream_key,
            } => self.play(stream_id, &stream_key),
            ServerEvent::PublishFinished { .. } => {
                if let Role::Publishing { publisher, .. } = &self.role {
                    info!(stream = %publisher.stream().key(), "unpublished");
                    self.stop_role();
                }
            }
            ServerEvent::PlayFinished { .. } => {
                if matches!(self.role, Role::Playing(_)) {
                    self.stop_role();
                }
            }
            ServerEvent::Media {
                stream_id,
                type_id,
                timestamp,
                payload,
            } => {
                let (kind, label) = if type_id == 8 {
                    (FrameKind::Audio, "audio")
                } else {
                    (FrameKind::Video, "video")
                };
                self.ingest(stream_id, label, |p, now| {
                    p.push_media(kind, timestamp, payload, now)
                })?;
            }
            ServerEvent::Metadata {
                stream_id,
                timestamp,
                payload,
            } => {
                self.ingest(stream_id, "script", |p, now| {
                    p.push_metadata(timestamp, payload, now)
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Hands a message on `stream_id` to this connection's publisher, if it publishes there,
    /// counting it as `kind`. A payload that does not parse is dropped and counted as
    /// `invalid`; a publisher displaced by a newer one ends the connection.
    fn ingest(
        &mut self,
        stream_id: u32,
        kind: &'static str,
        push: impl FnOnce(&mut Publisher, std::time::Instant) -> Result<(), IngestError>,
    ) -> Result<(), Close> {
        let Role::Publishing {
            publisher,
            stream_id: publishing_on,
        } = &mut self.role
        else {
            return Ok(());
        };
        if *publishing_on != stream_id {
            return Ok(());
        }
        let counted = match push(publisher, std::time::Instant::now()) {
            Ok(()) => kind,
            Err(IngestError::Displaced) => {
                info!("publisher displaced by a newer one");
                self.stop_role();
                return Err(Close::Displaced);
            }
            Err(error) => {
                debug!(%error, kind, "message dropped");
                "invalid"
            }
        };
        self.ctx
            .metrics
            .frames_in
            .get_or_create(&[("kind", counted)])
            .inc();
        Ok(())
    }

    /// The stream key for a publish/play name under the connected app: the query string (auth
    /// tokens and the like) is not part of the key.
    fn key(&self, name: &str) -> Option<StreamKey> {
        let app = self.app.as_deref()?;
        let name = name.split('?').next().unwrap_or_default().trim();
        (!name.is_empty() && !name.contains('/')).then(|| StreamKey::new(app, name))
    }

    fn publish(&mut self, stream_id: u32, name: &str) {
        let Some(key) = self.key(name).filter(|_| matches!(self.role, Role::Idle)) else {
            self.refuse_publish(stream_id, "bad_publish", "invalid stream name or state");
            return;
        };
        let cfg = self.ctx.config.load();
        if !cfg.cluster.role.accepts_publishers() {
            self.refuse_publish(
                stream_id,
                "edge_node",
                "this node is an edge: publish to an origin",
            );
            return;
        }
        let takeover =
            cfg.streams.publish_conflict == sluice_core::config::PublishConflict::Takeover;
        match self.ctx.registry.publish(
            &key,
            self.ctx.cache_settings(),
            takeover,
            std::time::Instant::now(),
        ) {
            Ok(publisher) => {
                info!(app = %key.app, stream = %key.name, "publishing");
                self.conn.session.accept_publish(stream_id);
                self.ctx.metrics.publishers.inc();
                self.role = Role::Publishing {
                    publisher,
                    stream_id,
                };
            }
            Err(error) => {
                info!(%error, "publish refused");
                let reason = match error {
                    PublishError::AlreadyPublishing(_) => "stream_busy",
                    _ => "bad_publish",
                };
                self.refuse_publish(stream_id, reason, &error.to_string());
            }
        }
    }

    /// Answers NetStream.Publish.BadName (what ffmpeg and OBS report to the user), counts
    /// `reason`, and closes once that is written.
    fn refuse_publish(&mut self, stream_id: u32, reason: &'static str, description: &str) {
        self.ctx.metrics.refused(proto::RTMP, reason);
        self.conn
            .session
            .reject_publish(stream_id, "NetStream.Publish.BadName", description);
        self.close_after_flush = Some(Close::Rejected);
    }

    fn play(&mut self, stream_id: u32, name: &str) {
        let Some(key) = self.key(name).filter(|_| matches!(self.role, Role::Idle)) else {
            self.ctx.metrics.refused(proto::RTMP, "bad_play");
            self.conn.session.reject_play(
                stream_id,
                "NetStream.Play.StreamNotFound",
                "invalid stream name or state",
            );
            self.close_after_flush = Some(Close::Rejected);
            return;
        };
        info!(app = %key.app, stream = %key.name, "playing");
        let via = Via::from_query(name.split_once('?').map_or("", |(_, q)| q));
        let (cursor, pull) = self.ctx.watch(&key, &via);
        if !via.0.is_empty() && pull.is_none() && !cursor.stream().is_publishing() {
            // Another node pulling: it does not wait for a publisher here, it asks its next
            // upstream.
            self.ctx.metrics.refused(proto::RTMP, "pull_not_found");
            self.conn.session.reject_play(
                stream_id,
                "NetStream.Play.StreamNotFound",
                "not published on this node",
            );
            self.close_after_flush = Some(Close::Rejected);
            return;
        }
        self.conn.session.accept_play(stream_id);
        self.ctx
            .metrics
            .viewers
            .get_or_create(&[("protocol", proto::RTMP)])
            .inc();
        let cfg = self.ctx.config.load();
        apply_socket_options(
            socket2::SockRef::from(&*self.socket),
            cfg.schedule.for_app(&key.app),
        );
        self.role = Role::Playing(Box::new(Player {
            cursor,
            stream_id,
            window: Window::default(),
            schedule: ScheduleCache::default(),
            since: Instant::now(),
            pull,
        }));
    }

    /// Leaves the current role, keeping gauges in step.
    fn stop_role(&mut self) {
        match std::mem::replace(&mut self.role, Role::Idle) {
            Role::Idle => {}
            Role::Publishing { .. } => {
                self.ctx.metrics.publishers.dec();
            }
            Role::Playing(_) => {
                let viewers: Label1 = [("protocol", proto::RTMP)];
                self.ctx.metrics.viewers.get_or_create(&viewers).dec();
            }
        };
    }

    /// Says goodbye where the protocol has one, bounded by a short deadline.
    async fn finish(&mut self, close: Close) {
        if let Role::Playing(player) = &self.role {
            let stream_id = player.stream_id;
            match close {
                Close::StreamEnded | Close::Shutdown => self.conn.session.stream_eof(stream_id),
                Close::NoPublisher => {
                    let reason = player.pull.as_ref().and_then(PullTicket::failure);
                    self.conn.session.reject_play(
                        stream_id,
                        "NetStream.Play.StreamNotFound",
                        reason.as_deref().unwrap_or("no publisher for this stream"),
                    )
                }
                _ => {}
            }
        }
        self.stop_role();
        if !matches!(
            close,
            Close::Io | Close::PeerClosed | Close::HandshakeTimeout | Close::HandshakeError
        ) {
            let _ = timeout(Duration::from_millis(500), async {
                let _ = self.flush().await;
                let _ = io::shutdown_write(&self.socket);
            })
            .await;
        }
    }
}
