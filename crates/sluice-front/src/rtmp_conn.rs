//! The RTMP listener: one task per connection, which publishes into or plays from a stream.
//!
//! The task owns its socket and a sans-IO `ServerConnection` (handshake, chunk streams,
//! commands). A publisher's media goes into its stream from this task. A player is handed,
//! once its play is accepted, to the runtime's viewer driver ([`Viewer`]) with its wire
//! format, [`Wire::Rtmp`] at the chunk size and message stream id of this connection, so
//! its frames' bytes are shared with every viewer of exactly those parameters. While it
//! plays, the session goes on through [`Session`]: what the client sends is handled as
//! before, and the session's output is written ahead of more media.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_auth::{Action, MAX_QUERY};
use sluice_core::metrics::{ProtocolCounters, proto};
use sluice_core::stream::{IngestError, PublishError};
use sluice_core::topology::Via;
use sluice_core::{Publisher, StreamKey};
use sluice_media::{FrameKind, RtmpForm};
use sluice_rtmp::chunk::{ChunkError, ChunkLimits};
use sluice_rtmp::connection::{ConnectionError, ServerConnection};
use sluice_rtmp::handshake::{self, Handshake, Progress};
use sluice_rtmp::message::MessageType;
use sluice_rtmp::server::{ServerConfig, ServerEvent, SessionStats};
use sluice_runtime::close::{Close, GOODBYE};
use sluice_runtime::limits::Limits;
use sluice_runtime::viewer::{Ended, Peer, Viewer};
use sluice_runtime::wire::Wire;
use sluice_runtime::{Context, accept, io};

use crate::Front;
use crate::gate::{Ask, Gate, Pass};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::limit::{Admission, Limit};

/// Read buffer of a publisher; players send little (acks, pings), so theirs stays small:
/// per-viewer memory is what fan-out at scale pays for.
const PUBLISHER_READ_BUF: usize = 64 * 1024;
const PLAYER_READ_BUF: usize = 1024;

/// Accepts RTMP connections until shutdown. Connections over `limit` (`rtmp.max_connections`,
/// shared with the RTMPS listener) or over `limits.max_connections_per_address` are refused
/// at accept; accept errors back off briefly instead of spinning. Fails only when the
/// listener does (see [`accept::listener_failed`]).
pub async fn serve(listener: TcpListener, front: Front, limit: Limit) -> std::io::Result<()> {
    let ctx = front.ctx.clone();
    accept::until_shutdown(&listener, &ctx, proto::RTMP, |socket, peer| {
        let Ok(admission) = limit.admit(&ctx, proto::RTMP, peer.ip()) else {
            drop(socket);
            return;
        };
        spawn_connection(&front, admission, socket, peer, false);
    })
    .await
}

/// Serves one admitted connection in a task of its own: `socket` is the accepted TCP socket,
/// or for RTMPS (`secure`) the plain end of the TLS bridge (`peer` is the client's address
/// either way). Both count as `rtmp` in metrics; the gate and webhooks see `rtmps`.
pub(crate) fn spawn_connection(
    front: &Front,
    admission: Admission,
    socket: TcpStream,
    peer: SocketAddr,
    secure: bool,
) {
    let ctx = &front.ctx;
    ctx.metrics
        .connections
        .get_or_create(&[("protocol", proto::RTMP)])
        .inc();
    let conn = ctx.next_conn_id();
    let span = info_span!("rtmp", conn, %peer, secure);
    let task_ctx = ctx.clone();
    let gate = front.gate.clone();
    ctx.tracker.spawn(
        async move {
            let handler = Handler::new(task_ctx.clone(), gate, socket, peer.ip(), secure);
            let reason = handler.run().await;
            task_ctx.metrics.closed(proto::RTMP, reason.label());
            debug!(reason = reason.label(), "connection closed");
            drop(admission);
        }
        .instrument(span),
    );
}

/// What this connection is doing with a stream.
enum Role {
    Idle,
    Publishing {
        publisher: Publisher,
        stream_id: u32,
        /// Held while publishing: its "done" hook is sent when it goes.
        _pass: Pass,
    },
    /// Played by the viewer driver, on this message stream.
    Playing {
        stream_id: u32,
        _pass: Pass,
    },
}

/// A publish or play request waiting for the gate's decision (a webhook may take a while;
/// the session holds what the client sent after it until then).
struct Pending {
    action: Action,
    stream_id: u32,
    /// The name as sent, query included.
    name: String,
}

struct Handler {
    ctx: Arc<Context>,
    gate: Arc<Gate>,
    client: IpAddr,
    /// Behind the RTMPS listener (the gate and webhooks are told; metrics count both as
    /// `rtmp`).
    secure: bool,
    /// The query the client put after the application in `connect` (`live?key=...`).
    connect_query: String,
    pending: Option<Pending>,
    /// Shared with the viewer driver (and its stream's writer) while playing.
    socket: Arc<TcpStream>,
    conn: ServerConnection,
    app: Option<String>,
    role: Role,
    /// A play the session just accepted, for the viewer driver (boxed: a connection that
    /// never plays should not carry a viewer's room).
    starting: Option<Box<Viewer>>,
    /// The client stopped playing (closeStream / deleteStream); the session goes on.
    play_finished: bool,
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

/// The session of a connection whose player the viewer driver serves.
struct Session<'a>(&'a mut Handler);

impl Peer for Session<'_> {
    const READ_BUF: usize = PLAYER_READ_BUF;

    fn input(&mut self, data: &[u8]) -> Result<(), Ended> {
        let handler = &mut *self.0;
        handler.input(data)?;
        if let Some(close) = handler.close_after_flush {
            return Err(close.into());
        }
        if std::mem::take(&mut handler.play_finished) {
            return Err(Ended::Finished);
        }
        Ok(())
    }

    fn output(&mut self) -> Option<Bytes> {
        let handler = &mut *self.0;
        handler.conn.drain_output(&mut handler.out);
        (!handler.out.is_empty()).then(|| handler.out.split().freeze())
    }
}

impl Handler {
    fn new(
        ctx: Arc<Context>,
        gate: Arc<Gate>,
        socket: TcpStream,
        client: IpAddr,
        secure: bool,
    ) -> Self {
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
            gate,
            client,
            secure,
            connect_query: String::new(),
            pending: None,
            socket: Arc::new(socket),
            conn,
            app: None,
            role: Role::Idle,
            starting: None,
            play_finished: false,
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

    /// The main loop after the handshake: the session, a publisher's media, and players
    /// handed to the viewer driver.
    async fn serve(&mut self) -> Close {
        let mut read_buf = BytesMut::with_capacity(PLAYER_READ_BUF);
        let idle = self.idle;
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
            if let Some(pending) = self.pending.take() {
                let decided = tokio::select! {
                    _ = &mut cancelled => return Close::Shutdown,
                    decided = self.decide(pending) => decided,
                };
                // Go on with what the client sent behind the request.
                if let Err(close) = decided.and_then(|()| self.input(&[])) {
                    return close;
                }
                idle_sleep.as_mut().reset(Instant::now() + idle);
                continue;
            }
            if let Some(viewer) = self.starting.take() {
                // The driver reads with its own buffer while it plays: this one is freed,
                // since per-viewer memory is what fan-out at scale pays for (two buffers
                // were measurable in RSS per viewer at 1,000 viewers).
                read_buf = BytesMut::new();
                if let Some(close) = self.play(*viewer).await {
                    return close;
                }
                // Played and stopped; the session goes on (and may play again).
                idle_sleep.as_mut().reset(Instant::now() + idle);
                continue;
            }
            let wanted = match self.role {
                Role::Publishing { .. } => PUBLISHER_READ_BUF,
                _ => PLAYER_READ_BUF,
            };
            if read_buf.capacity() < wanted {
                // A read into no spare capacity would look like the end of input.
                read_buf.reserve(wanted);
            }
            let Handler { socket, role, .. } = &mut *self;
            let displaced = async {
                match role {
                    Role::Publishing { publisher, .. } => publisher.displaced().await,
                    _ => std::future::pending().await,
                }
            };
            let read = tokio::select! {
                _ = &mut cancelled => return Close::Shutdown,
                _ = &mut idle_sleep => return Close::IdleTimeout,
                _ = displaced => {
                    info!("publisher displaced by a newer one");
                    self.stop_role();
                    return Close::Displaced;
                }
                read = io::read_buf(socket, &mut read_buf) => read,
            };
            match read {
                Ok(0) => return Close::PeerClosed,
                Ok(n) => {
                    self.count_in(n);
                    idle_sleep.as_mut().reset(Instant::now() + idle);
                    let result = self.input(&read_buf);
                    read_buf.clear();
                    if let Err(close) = result {
                        return close;
                    }
                }
                Err(_) => return Close::Io,
            }
        }
    }

    /// Plays through the viewer driver until the client stops playing (`None`: the
    /// session goes on) or the connection is to close; queues the goodbye the protocol has.
    async fn play(&mut self, mut viewer: Viewer) -> Option<Close> {
        let ended = viewer.play(&mut Session(self)).await;
        let Role::Playing { stream_id, .. } = self.role else {
            return Some(Close::ProtocolError);
        };
        let close = match ended {
            Ended::Finished => {
                self.stop_role();
                return None;
            }
            Ended::Close(close) => close,
        };
        match close {
            Close::StreamEnded | Close::Shutdown => self.conn.session.stream_eof(stream_id),
            Close::NoPublisher => {
                let reason = viewer.pull_failure();
                self.conn.session.reject_play(
                    stream_id,
                    "NetStream.Play.StreamNotFound",
                    reason.as_deref().unwrap_or("no publisher for this stream"),
                );
            }
            _ => {}
        }
        Some(close)
    }

    /// Writes pending session output.
    async fn flush(&mut self) -> Result<(), Close> {
        self.conn.drain_output(&mut self.out);
        if self.out.is_empty() {
            return Ok(());
        }
        let out = self.out.split().freeze();
        match timeout(self.idle, io::write_all(&self.socket, &out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Close::Io),
            Err(_) => return Err(Close::WriteStalled),
        }
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
            // The connection stops at each request awaiting our decision; the gate decides
            // a publish or play (maybe asking a webhook) before the session goes on, other
            // requests are decided at once, so go on with what the peer pipelined behind.
            if !decided || self.close_after_flush.is_some() || self.pending.is_some() {
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
                // `live?key=...`: credentials may come with the application.
                let (app, query) = match app.split_once('?') {
                    Some((app, query)) => (app.to_owned(), query.to_owned()),
                    None => (app, String::new()),
                };
                if app.len() + query.len() > MAX_QUERY {
                    info!(
                        len = app.len() + query.len(),
                        "connect refused: app too long"
                    );
                    Limits::refuse(&self.ctx, proto::RTMP, "bad_connect", self.client);
                    self.conn
                        .session
                        .reject_connect("application name too long");
                    self.close_after_flush = Some(Close::Rejected);
                    return Ok(());
                }
                self.connect_query = query;
                let redirect = self.ctx.config.load().server.drain_redirect.clone();
                if self.ctx.is_draining() && !redirect.is_empty() {
                    // Without a redirect the connect goes through and the publish or play
                    // is refused (the gate), which every client reports well.
                    info!(app, redirect, "connect redirected: node draining");
                    Limits::refuse(&self.ctx, proto::RTMP, "draining", self.client);
                    self.conn
                        .session
                        .redirect_connect("node draining", &redirect);
                    self.close_after_flush = Some(Close::Rejected);
                } else if !self.ctx.config.load().streams.app_allowed(&app) {
                    info!(app, "connect refused: application not served");
                    Limits::refuse(&self.ctx, proto::RTMP, "unknown_app", self.client);
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
            } => self.request(Action::Publish, stream_id, stream_key),
            ServerEvent::PlayRequested {
                stream_id,
                stream_key,
            } => self.request(Action::Play, stream_id, stream_key),
            ServerEvent::PublishFinished { .. } => {
                if let Role::Publishing { publisher, .. } = &self.role {
                    info!(stream = %publisher.stream().key(), "unpublished");
                    self.stop_role();
                }
            }
            ServerEvent::PlayFinished { .. } => {
                if matches!(self.role, Role::Playing { .. }) {
                    self.play_finished = true;
                }
            }
            ServerEvent::Media {
                stream_id,
                type_id,
                timestamp,
                payload,
            } => {
                let audio = MessageType::from_id(type_id) == Some(MessageType::Audio);
                let (kind, label) = if audio {
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
        push: impl FnOnce(&mut Publisher, Instant) -> Result<(), IngestError>,
    ) -> Result<(), Close> {
        let Role::Publishing {
            publisher,
            stream_id: publishing_on,
            ..
        } = &mut self.role
        else {
            return Ok(());
        };
        if *publishing_on != stream_id {
            return Ok(());
        }
        let counted = match push(publisher, Instant::now()) {
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

    /// A publish or play request: refused at once when it cannot be served, else left for
    /// the gate ([`Handler::decide`]).
    fn request(&mut self, action: Action, stream_id: u32, name: String) {
        // The name and its query (credentials) may go to a webhook: bounded like HTTP's.
        let valid =
            self.key(&name).is_some() && matches!(self.role, Role::Idle) && name.len() <= MAX_QUERY;
        match action {
            Action::Publish => {
                if !valid {
                    self.refuse_publish(stream_id, "bad_publish", "invalid stream name or state");
                } else if !self.ctx.config.load().cluster.role.accepts_publishers() {
                    self.refuse_publish(
                        stream_id,
                        "edge_node",
                        "this node is an edge: publish to an origin",
                    );
                } else if let Err(limit) = self.ctx.limits.publish_attempt(&self.ctx, self.client) {
                    self.refuse_publish(stream_id, limit.label(), limit.describe());
                } else {
                    self.pending = Some(Pending {
                        action,
                        stream_id,
                        name,
                    });
                }
            }
            Action::Play if !valid => {
                self.refuse_play(stream_id, "bad_play", "invalid stream name or state");
            }
            Action::Play => {
                self.pending = Some(Pending {
                    action,
                    stream_id,
                    name,
                });
            }
        }
    }

    /// Asks the gate about a request, then starts or refuses it.
    async fn decide(&mut self, pending: Pending) -> Result<(), Close> {
        let Pending {
            action,
            stream_id,
            name,
        } = pending;
        let (stream, name_query) = name.split_once('?').unwrap_or((&name, ""));
        let query = match (self.connect_query.as_str(), name_query) {
            ("", query) | (query, "") => query.to_owned(),
            (first, second) => format!("{first}&{second}"),
        };
        let app = self.app.clone().unwrap_or_default();
        let ask = Ask {
            action,
            app: &app,
            stream: stream.trim(),
            query: &query,
            client: self.client,
            protocol: proto::RTMP,
            secure: self.secure,
        };
        match (self.gate.admit(ask).await, action) {
            (Ok(pass), Action::Publish) => self.publish(stream_id, pass),
            (Ok(pass), Action::Play) => self.start_play(stream_id, pass, name_query),
            (Err(denied), Action::Publish) => {
                info!(app, stream, reason = denied.label(), "publish refused");
                self.reject(
                    stream_id,
                    action,
                    "NetStream.Publish.BadName",
                    denied.describe(),
                );
            }
            (Err(denied), Action::Play) => {
                info!(app, stream, reason = denied.label(), "play refused");
                self.reject(
                    stream_id,
                    action,
                    "NetStream.Play.Failed",
                    denied.describe(),
                );
            }
        }
        Ok(())
    }

    /// Answers a refused request with `code` (already counted) and closes once written.
    fn reject(&mut self, stream_id: u32, action: Action, code: &str, description: &str) {
        match action {
            Action::Publish => self
                .conn
                .session
                .reject_publish(stream_id, code, description),
            Action::Play => self.conn.session.reject_play(stream_id, code, description),
        }
        self.close_after_flush = Some(Close::Rejected);
    }

    fn publish(&mut self, stream_id: u32, pass: Pass) {
        let Some(key) = self.key(&pass.stream) else {
            self.refuse_publish(stream_id, "bad_publish", "invalid stream name");
            return;
        };
        if let Err(limit) = Limits::new_stream(&self.ctx, &key) {
            self.refuse_publish(stream_id, limit.label(), limit.describe());
            return;
        }
        let cfg = self.ctx.config.load();
        let takeover =
            cfg.streams.publish_conflict == sluice_core::config::PublishConflict::Takeover;
        match self
            .ctx
            .registry
            .publish(&key, self.ctx.cache_settings(), takeover, Instant::now())
        {
            Ok(publisher) => {
                info!(app = %key.app, stream = %key.name, "publishing");
                self.conn.session.accept_publish(stream_id);
                self.ctx.metrics.publishers.inc();
                self.role = Role::Publishing {
                    publisher,
                    stream_id,
                    _pass: pass,
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
        Limits::refuse(&self.ctx, proto::RTMP, reason, self.client);
        self.conn
            .session
            .reject_publish(stream_id, "NetStream.Publish.BadName", description);
        self.close_after_flush = Some(Close::Rejected);
    }

    /// Answers NetStream.Play.StreamNotFound (what players show best), counts `reason`, and
    /// closes once that is written.
    fn refuse_play(&mut self, stream_id: u32, reason: &'static str, description: &str) {
        Limits::refuse(&self.ctx, proto::RTMP, reason, self.client);
        self.conn
            .session
            .reject_play(stream_id, "NetStream.Play.StreamNotFound", description);
        self.close_after_flush = Some(Close::Rejected);
    }

    /// Starts playing `pass.stream`; `query` is the play name's (a pulling node's via-list).
    fn start_play(&mut self, stream_id: u32, pass: Pass, query: &str) {
        let Some(key) = self.key(&pass.stream) else {
            self.refuse_play(stream_id, "bad_play", "invalid stream name");
            return;
        };
        info!(app = %key.app, stream = %key.name, "playing");
        let via = Via::from_query(query);
        let (cursor, pull) = self.ctx.watch(&key, &via);
        if !via.0.is_empty() && pull.is_none() && !cursor.stream().is_publishing() {
            // Another node pulling: it does not wait for a publisher here, it asks its next
            // upstream.
            self.refuse_play(stream_id, "pull_not_found", "not published on this node");
            return;
        }
        self.conn.session.accept_play(stream_id);
        let wire = Wire::Rtmp(RtmpForm {
            chunk_size: self.conn.session.chunk_size(),
            stream_id,
        });
        self.starting = Some(Box::new(Viewer::new(
            self.ctx.clone(),
            self.socket.clone(),
            (cursor, pull),
            wire,
            self.idle,
        )));
        self.role = Role::Playing {
            stream_id,
            _pass: pass,
        };
    }

    /// Leaves the current role, keeping gauges in step.
    fn stop_role(&mut self) {
        if let Role::Publishing { .. } = std::mem::replace(&mut self.role, Role::Idle) {
            self.ctx.metrics.publishers.dec();
        }
    }

    /// Stops the role and writes the goodbye queued (where the peer is there to read it),
    /// then ends the sending direction, within a short deadline.
    async fn finish(&mut self, close: Close) {
        self.starting = None;
        self.stop_role();
        if close.peer_reachable() {
            let _ = timeout(GOODBYE, async {
                let _ = self.flush().await;
                let _ = io::shutdown_write(&self.socket);
            })
            .await;
        }
    }
}
