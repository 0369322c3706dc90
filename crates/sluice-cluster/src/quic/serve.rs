//! The upstream side of the relay: accepts connections from other nodes, answers each pull
//! request on its control stream, and sends the stream's GOPs, one unidirectional QUIC
//! stream each, through one writer task per GOP.
//!
//! Who owns what: a pull's task owns its cursor and reads the ring; it never waits on the
//! network. Each GOP's writer task owns its QUIC stream and takes frames (`Arc`s into the
//! ring, no copies) from a bounded queue. When the next GOP begins, the pull task marks the
//! previous writer superseded ([`Feed::close_gop`]); the writer resets its stream if QUIC
//! does not take the rest within [`LATE_GRACE`], else finishes it.

use std::future::pending;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, WriteError};
use sluice_core::topology::{ClusterConfig, PullRefusal, PullTicket, Via};
use sluice_core::{ReadState, Schedule, StreamKey};
use sluice_media::{Frame, FrameKind};
use sluice_relay::{
    Control, ControlDecoder, ControlEncoder, DecodeError, GopEncoder, GopHeader, Limits,
    RefuseCode, VERSION,
};
use sluice_runtime::Context;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field, info, info_span};

use super::{HeaderSet, MAX_CONNECTIONS, ReadFail, RelayError, code, read_control};

/// Audio-only streams have no keyframes to cut at: a new GOP stream begins after this much
/// audio, so a late stretch is cancelled in pieces of about this length.
pub const AUDIO_GOP: Duration = Duration::from_millis(1000);
/// Once a newer GOP began, the previous GOP's writer has this long to hand its remaining
/// frames to QUIC; if the peer's flow control does not take them by then, the GOP is late
/// and reset. (Not zero: a read that returns a GOP's tail together with the next keyframe
/// must not cancel a GOP the link carries fine.)
pub const LATE_GRACE: Duration = Duration::from_millis(50);
/// Deadline for a peer's TLS handshake, and for its pull request once connected.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued for a GOP's writer: references into the ring, so memory is the ring's; a
/// writer this far behind within one GOP is cancelled.
const GOP_QUEUE: usize = 256;
/// Frames read from the ring at once.
const READ_BATCH: usize = 64;
/// Frames a writer gathers into one write.
const WRITE_BATCH: usize = 32;
/// Protocol label for refused connections.
const PROTOCOL: &str = "quic_relay";

/// Accepts relay connections until shutdown (Ok), or until the endpoint stops accepting
/// before it: it was closed, or its socket failed.
pub(super) async fn run(endpoint: &Endpoint, ctx: Arc<Context>) -> Result<(), RelayError> {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = endpoint.local_addr() {
        info!(%addr, "QUIC relay listening");
    }
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = ctx.shutdown.cancelled() => return Ok(()),
        };
        let Some(incoming) = incoming else {
            // Closing the relay is part of shutdown: the endpoint may close before this
            // loop sees the token.
            if ctx.shutdown.is_cancelled() {
                return Ok(());
            }
            return Err(RelayError::Stopped);
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.metrics.refused(PROTOCOL, "max_connections");
            incoming.refuse();
            continue;
        };
        let span =
            info_span!("relay", conn = ctx.next_conn_id(), peer = %incoming.remote_address());
        ctx.tracker
            .spawn(connection(ctx.clone(), incoming, permit).instrument(span));
    }
}

/// Decrements a gauge when dropped.
struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn inc(gauge: &Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One peer's connection: every bidirectional stream it opens is a pull request.
async fn connection(ctx: Arc<Context>, incoming: Incoming, _permit: OwnedSemaphorePermit) {
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(error) => {
            debug!(%error, "relay connection refused");
            return;
        }
    };
    let conn = match timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            info!(%error, "relay handshake failed");
            return;
        }
        Err(_) => {
            info!("relay handshake timed out");
            return;
        }
    };
    let _gauge = GaugeGuard::inc(&ctx.metrics.relay_connections);
    info!("relay peer connected");
    let reason = loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let span = info_span!("pull", id = u64::from(recv.id()), app = field::Empty, stream = field::Empty);
                    ctx.tracker.spawn(serve_pull(ctx.clone(), conn.clone(), send, recv).instrument(span));
                }
                Err(error) => break error.to_string(),
            },
            _ = ctx.shutdown.cancelled() => {
                conn.close(code::GOING_AWAY, b"shutting down");
                break "shutting down".to_owned();
            }
        }
    };
    info!(%reason, "relay peer gone");
}

/// Writes a refusal and finishes the control stream.
async fn refuse(
    send: &mut SendStream,
    control: &mut ControlEncoder,
    code: RefuseCode,
    message: String,
) {
    debug!(?code, %message, "relay pull refused");
    if let Ok(bytes) = control.encode(&Control::Refused { code, message }) {
        let _ = timeout(HANDSHAKE_TIMEOUT, send.write_all(&bytes)).await;
    }
    let _ = send.finish();
}

/// Why a pull failed before asking upstream, as a refusal code: the same checks the
/// puller made (a loop, too many hops), else "not found".
fn refusal_code(via: &Via, cluster: &ClusterConfig) -> RefuseCode {
    match via.refuse(cluster.node_id(), cluster.max_hops) {
        Some(PullRefusal::Loop(_)) => RefuseCode::Loop,
        Some(PullRefusal::TooDeep(_)) => RefuseCode::TooDeep,
        _ => RefuseCode::NotFound,
    }
}

/// Resolves when the peer sends anything more on the control stream: it finished or reset
/// it (the pull is over), or broke the protocol (a request carries one message).
async fn peer_done(recv: &mut RecvStream) {
    let _ = recv.read_chunk(64, true).await;
}

/// One pull request, from its control stream to its end.
async fn serve_pull(
    ctx: Arc<Context>,
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let pull_id = u64::from(recv.id());
    // Control messages go before media.
    let _ = send.set_priority(i32::MAX);
    let mut control = ControlEncoder::new();
    let mut decoder = ControlDecoder::new(Limits::default());
    let request = timeout(HANDSHAKE_TIMEOUT, read_control(&mut recv, &mut decoder)).await;
    let pull = match request {
        Ok(Ok(Some(Control::Pull(pull)))) => pull,
        Ok(Err(ReadFail::Decode(DecodeError::UnsupportedVersion(version)))) => {
            info!(version, "relay peer speaks another protocol version");
            let message = format!(
                "relay protocol version {version} is not supported; this node speaks {VERSION}"
            );
            // In the peer's version, so that it reads the refusal (its layout is the same
            // in every version).
            let mut control = ControlEncoder::for_version(version);
            refuse(
                &mut send,
                &mut control,
                RefuseCode::Unsupported(VERSION),
                message,
            )
            .await;
            return;
        }
        Ok(Ok(None)) => return,
        failed => {
            let reason = match failed {
                Ok(Ok(Some(_))) => "a control message other than Pull first".to_owned(),
                Ok(Err(e)) => e.to_string(),
                _ => "no pull request in time".to_owned(),
            };
            info!(%reason, "bad relay pull request");
            let _ = send.reset(code::PROTOCOL);
            let _ = recv.stop(code::PROTOCOL);
            return;
        }
    };
    let span = tracing::Span::current();
    span.record("app", pull.app.as_str());
    span.record("stream", pull.name.as_str());

    if ctx.is_draining() {
        // As RTMP pulls are refused by the gate: the asking node moves to another upstream
        // while this one's connected viewers play out the grace period.
        ctx.metrics.refused(PROTOCOL, "draining");
        let message = "node draining".to_owned();
        refuse(&mut send, &mut control, RefuseCode::NotAllowed, message).await;
        return;
    }
    let cfg = ctx.config.load_full();
    if pull.app.is_empty() || pull.name.is_empty() || !cfg.streams.app_allowed(&pull.app) {
        let message = format!("application {:?} is not served here", pull.app);
        refuse(&mut send, &mut control, RefuseCode::NotAllowed, message).await;
        return;
    }
    let key = StreamKey::new(&pull.app, &pull.name);
    let via = Via(pull.via.iter().map(|n| Arc::from(n.as_str())).collect());
    let (mut cursor, mut ticket) = ctx.watch(&key, &via);
    if ticket.is_none() && !cursor.stream().is_publishing() {
        drop(cursor);
        let message = format!("stream {key} is not published here");
        refuse(&mut send, &mut control, RefuseCode::NotFound, message).await;
        return;
    }

    // Wait for the first frames (a local publisher that just started, or this node's own
    // pull of the stream), so that Accepted means frames follow.
    let schedule = Schedule::default();
    let wait = ticket
        .as_ref()
        .map_or(cfg.cluster.pull.timeout(), |t| t.wait);
    let give_up = Instant::now() + wait;
    let mut frames = Vec::with_capacity(READ_BATCH);
    loop {
        if let Some(reason) = ticket.as_ref().and_then(PullTicket::failure) {
            drop(cursor);
            let code = refusal_code(&via, &cfg.cluster);
            refuse(&mut send, &mut control, code, reason.to_string()).await;
            return;
        }
        let state = cursor.read(
            &mut frames,
            READ_BATCH,
            tokio::time::Instant::now(),
            &schedule,
        );
        if state == ReadState::Frames {
            break;
        }
        let ticket_changed = async {
            match &mut ticket {
                Some(t) => t.changed().await,
                None => pending().await,
            }
        };
        tokio::select! {
            _ = cursor.changed() => {}
            _ = ticket_changed => {}
            _ = sleep_until(give_up) => {
                drop(cursor);
                let message = format!("stream {key} had no frames within {} ms", wait.as_millis());
                refuse(&mut send, &mut control, RefuseCode::NotFound, message).await;
                return;
            }
            _ = peer_done(&mut recv) => return,
            _ = ctx.shutdown.cancelled() => {
                let _ = send.reset(code::GOING_AWAY);
                return;
            }
        }
    }
    drop(cfg);

    let Ok(accepted) = control.encode(&Control::Accepted { pull_id }) else {
        return;
    };
    if !matches!(
        timeout(HANDSHAKE_TIMEOUT, send.write_all(&accepted)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let _gauge = GaugeGuard::inc(&ctx.metrics.relay_streams);
    info!(via = ?pull.via, "relay pull started");
    let outcome = |o: &'static str| {
        ctx.metrics
            .relay_gops
            .get_or_create(&[("outcome", o)])
            .clone()
    };
    let mut feed = Feed {
        conn,
        pull_id,
        next_seq: 0,
        gop: None,
        headers: Default::default(),
        saw_video: false,
        counters: GopCounters {
            sent: outcome("sent"),
            cancelled: outcome("cancelled"),
        },
        tracker: ctx.tracker.clone(),
    };
    for frame in frames.drain(..) {
        feed.push(frame);
    }
    let end = loop {
        let state = cursor.read(
            &mut frames,
            READ_BATCH,
            tokio::time::Instant::now(),
            &schedule,
        );
        ctx.metrics.count_drops(&cursor.take_drops());
        for frame in frames.drain(..) {
            feed.push(frame);
        }
        let ended_at = match state {
            ReadState::Frames => continue,
            ReadState::Unpublished(at) => Some(at + ctx.config.load().streams.republish_grace()),
            ReadState::Pending | ReadState::WaitingForPublisher => None,
        };
        let ended = async {
            match ended_at {
                Some(at) => sleep_until(at).await,
                None => pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => break PullEnd::Shutdown,
            _ = peer_done(&mut recv) => break PullEnd::DownstreamLeft,
            _ = cursor.changed() => {}
            _ = ended => break PullEnd::PublisherLeft,
        }
    };
    // Drop the cursor first, so the stream's viewer count falls at once.
    drop(cursor);
    match end {
        PullEnd::PublisherLeft => {
            // The last GOP completes; then the edge hears the stream ended.
            feed.gop = None;
            if let Ok(bytes) = control.encode(&Control::Ended) {
                let _ = timeout(HANDSHAKE_TIMEOUT, send.write_all(&bytes)).await;
            }
            let _ = send.finish();
        }
        PullEnd::Shutdown | PullEnd::DownstreamLeft => {
            feed.close_gop(true);
            let _ = send.finish();
        }
    }
    info!(
        reason = end.as_str(),
        gops = feed.next_seq,
        "relay pull ended"
    );
}

/// Why a running pull ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullEnd {
    /// This node is shutting down.
    Shutdown,
    /// The edge finished or reset the control stream.
    DownstreamLeft,
    /// The stream's publisher left and did not return within its grace.
    PublisherLeft,
}

impl PullEnd {
    fn as_str(self) -> &'static str {
        match self {
            PullEnd::Shutdown => "shutdown",
            PullEnd::DownstreamLeft => "downstream left",
            PullEnd::PublisherLeft => "publisher left",
        }
    }
}

/// The GOP outcome counters.
#[derive(Clone)]
struct GopCounters {
    sent: Counter,
    cancelled: Counter,
}

/// The GOP being sent.
struct Gop {
    tx: mpsc::Sender<Arc<Frame>>,
    /// Resets the stream at once.
    cancel: CancellationToken,
    /// A newer GOP began: the writer has [`LATE_GRACE`] to hand the rest to QUIC.
    superseded: CancellationToken,
    first_dts: u64,
}

/// Cuts a pull's frames into GOP streams.
struct Feed {
    conn: Connection,
    pull_id: u64,
    next_seq: u64,
    gop: Option<Gop>,
    /// The latest metadata, video and audio sequence headers: every GOP stream starts with
    /// them, so an edge that lost a GOP (and a header change in it) decodes the next.
    headers: HeaderSet<Arc<Frame>>,
    saw_video: bool,
    counters: GopCounters,
    tracker: tokio_util::task::TaskTracker,
}

impl Feed {
    /// Takes the next frame of the stream.
    fn push(&mut self, frame: Arc<Frame>) {
        if let Some(slot) = self.headers.slot(frame.kind, frame.seq_header) {
            *slot = Some(frame.clone());
            // In line too, so its order is kept when this GOP arrives whole.
            self.send(frame);
            return;
        }
        self.saw_video |= frame.kind == FrameKind::Video || self.headers.video.is_some();
        let audio_cut = |gop: &Gop| {
            !self.saw_video
                && frame.dts >= gop.first_dts.saturating_add(AUDIO_GOP.as_millis() as u64)
        };
        let starts = match &self.gop {
            // Waiting for a keyframe (or, without video, for any audio).
            None => frame.keyframe || (frame.kind == FrameKind::Audio && !self.saw_video),
            Some(gop) => frame.keyframe || (frame.kind == FrameKind::Audio && audio_cut(gop)),
        };
        if starts {
            self.start_gop(frame.dts);
        }
        self.send(frame);
    }

    /// Ends the current GOP and starts the next, its headers first.
    fn start_gop(&mut self, first_dts: u64) {
        self.close_gop(false);
        let (tx, rx) = mpsc::channel(GOP_QUEUE);
        let cancel = CancellationToken::new();
        let superseded = CancellationToken::new();
        let header = GopHeader {
            pull_id: self.pull_id,
            gop_seq: self.next_seq,
        };
        self.next_seq += 1;
        self.tracker.spawn(
            write_gop(
                self.conn.clone(),
                header,
                rx,
                cancel.clone(),
                superseded.clone(),
                self.counters.clone(),
            )
            .in_current_span(),
        );
        self.gop = Some(Gop {
            tx,
            cancel,
            superseded,
            first_dts,
        });
        let headers = self.headers.clone();
        for header in headers.iter() {
            self.send(header.clone());
        }
    }

    /// Ends the current GOP: its writer finishes the stream if it hands the frames it has
    /// left to QUIC within [`LATE_GRACE`] (the peer keeps up), else resets it (the peer is
    /// behind; the GOP would delay the next one). With `cancel`, resets it at once.
    fn close_gop(&mut self, cancel: bool) {
        if let Some(gop) = self.gop.take() {
            if cancel {
                gop.cancel.cancel();
            } else {
                gop.superseded.cancel();
            }
        }
    }

    /// Queues a frame for the current GOP, if one is being sent. A full queue means the
    /// peer fell behind within the GOP: it is cancelled and sending resumes at the next.
    fn send(&mut self, frame: Arc<Frame>) {
        let Some(gop) = &self.gop else { return };
        if gop.tx.try_send(frame).is_err() {
            self.close_gop(true);
        }
    }
}

/// One GOP's writer: opens its stream (priority rising with the GOP number, so a newer GOP
/// goes first), writes the header and each frame as it is queued, and finishes the stream
/// when the queue closes. It resets the stream when cancelled, or when it is superseded and
/// QUIC has not taken the rest within [`LATE_GRACE`] (the peer's flow control is full).
async fn write_gop(
    conn: Connection,
    header: GopHeader,
    mut rx: mpsc::Receiver<Arc<Frame>>,
    cancel: CancellationToken,
    superseded: CancellationToken,
    counters: GopCounters,
) {
    let mut send = tokio::select! {
        biased;
        _ = cancel.cancelled() => {
            counters.cancelled.inc();
            return;
        }
        opened = conn.open_uni() => match opened {
            Ok(send) => send,
            Err(_) => return,
        },
    };
    let _ = send.set_priority(i32::try_from(header.gop_seq).unwrap_or(i32::MAX));
    let mut encoder = GopEncoder::new();
    let mut chunks: Vec<Bytes> = vec![encoder.start(&header)];
    let mut late_at = None;
    loop {
        if !chunks.is_empty() {
            let written = tokio::select! {
                biased;
                _ = cancel.cancelled() => None,
                _ = late(&superseded, &mut late_at) => None,
                written = send.write_all_chunks(&mut chunks) => Some(written),
            };
            match written {
                Some(Ok(())) => {}
                None => {
                    let _ = send.reset(code::CANCELLED);
                    counters.cancelled.inc();
                    return;
                }
                // The edge stopped reading it: it moved on to a newer GOP.
                Some(Err(WriteError::Stopped(_))) => {
                    counters.cancelled.inc();
                    return;
                }
                Some(Err(_)) => return,
            }
            chunks.clear();
        }
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            _ = late(&superseded, &mut late_at) => None,
            next = rx.recv() => Some(next),
        };
        let Some(next) = next else {
            let _ = send.reset(code::CANCELLED);
            counters.cancelled.inc();
            return;
        };
        let Some(frame) = next else {
            if send.finish().is_ok() {
                counters.sent.inc();
            }
            return;
        };
        let mut frame = Some(frame);
        let mut batch = 0;
        while let Some(f) = frame.take() {
            if let Ok(record) = encoder.record(&f.to_parts()) {
                chunks.extend(record);
            }
            batch += 1;
            if batch < WRITE_BATCH {
                frame = rx.try_recv().ok();
            }
        }
    }
}

/// Resolves [`LATE_GRACE`] after `superseded` fired (remembering when in `late_at`, so the
/// grace is counted once across calls).
async fn late(superseded: &CancellationToken, late_at: &mut Option<Instant>) {
    let at = match *late_at {
        Some(at) => at,
        None => {
            superseded.cancelled().await;
            *late_at.insert(Instant::now() + LATE_GRACE)
        }
    };
    sleep_until(at).await;
}
