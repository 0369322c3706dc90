//! HTTP-FLV playback: `GET /{app}/{stream}.flv` streams an FLV file that never ends (until the
//! stream does). Each frame's FLV tag is built once and shared by every HTTP-FLV viewer.
//!
//! The response starts only once the stream has frames: a stream nobody publishes within
//! `streams.wait_for_publisher_ms` is a 404, not an empty 200.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use sluice_core::cluster::{PullTicket, Via};
use sluice_core::metrics::{ProtocolCounters, proto};
use sluice_core::{Cursor, ReadState, StreamKey};
use sluice_media::{Frame, FrameKind};
use sluice_rtmp::command::Amf0Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::{debug, info};

use crate::Context;
use crate::pacing::{Hold, ScheduleCache, Window, apply_socket_options};

const BATCH_FRAMES: usize = 64;

#[derive(Clone)]
struct AppState {
    ctx: Arc<Context>,
    limit: Arc<Semaphore>,
}

/// The HTTP router for playback.
pub fn router(ctx: Arc<Context>) -> Router {
    let limit = Arc::new(Semaphore::new(ctx.config.load().http.max_connections));
    Router::new()
        .route("/{app}/{file}", get(play).options(preflight))
        .with_state(AppState { ctx, limit })
}

/// Sets an accepted HTTP connection's socket options from the default schedule (HTTP-FLV
/// viewers' application is not known until their request is read).
pub fn tune_viewer_socket(ctx: &Context, socket: &mut tokio::net::TcpStream) {
    let cfg = ctx.config.load();
    apply_socket_options(
        socket2::SockRef::from(&*socket),
        cfg.schedule.default_schedule(),
    );
}

fn cors(ctx: &Context, headers: &mut HeaderMap) {
    let origin = &ctx.config.load().http.cors_allow_origin;
    if origin.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("*"),
        );
    }
}

/// Answers CORS preflights (web players that send Range or custom headers).
async fn preflight(State(state): State<AppState>) -> Response {
    let mut headers = HeaderMap::new();
    cors(&state.ctx, &mut headers);
    (StatusCode::NO_CONTENT, headers).into_response()
}

fn not_found(ctx: &Context, why: &'static str) -> Response {
    let mut headers = HeaderMap::new();
    cors(ctx, &mut headers);
    (StatusCode::NOT_FOUND, headers, why).into_response()
}

async fn play(
    State(state): State<AppState>,
    method: Method,
    Path((app, file)): Path<(String, String)>,
) -> Response {
    let ctx = state.ctx;
    let Some(name) = file.strip_suffix(".flv").filter(|n| !n.is_empty()) else {
        return not_found(&ctx, "not found\n");
    };
    if !ctx.config.load().streams.app_allowed(&app) {
        ctx.metrics.refused(proto::HTTP_FLV, "unknown_app");
        return not_found(&ctx, "application not served here\n");
    }
    let Ok(permit) = state.limit.clone().try_acquire_owned() else {
        ctx.metrics.refused(proto::HTTP_FLV, "max_connections");
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    ctx.metrics
        .connections
        .get_or_create(&[("protocol", proto::HTTP_FLV)])
        .inc();
    let key = StreamKey::new(&app, name);
    let (mut cursor, mut pull) = ctx.watch(&key, &Via::default());

    // Wait for the first frames before answering, so a missing stream is a 404.
    let mut frames = Vec::with_capacity(BATCH_FRAMES);
    let wait = match &pull {
        Some(pull) => pull.wait,
        None => ctx.config.load().streams.wait_for_publisher(),
    };
    let give_up = Instant::now() + wait;
    loop {
        if let Some(reason) = pull.as_ref().and_then(PullTicket::failure) {
            drop(cursor);
            info!(%key, %reason, "http-flv: stream not found upstream");
            ctx.metrics.closed(proto::HTTP_FLV, "no_publisher");
            return not_found(&ctx, "stream not found\n");
        }
        let state = {
            let cfg = ctx.config.load();
            let schedule = cfg.schedule.for_app(&key.app);
            cursor.read(
                &mut frames,
                BATCH_FRAMES,
                std::time::Instant::now(),
                schedule,
            )
        };
        match state {
            ReadState::Frames => break,
            _ => {
                let pull_changed = async {
                    match &mut pull {
                        Some(pull) => pull.changed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = cursor.changed() => {}
                    _ = pull_changed => {}
                    _ = sleep_until(give_up) => {
                        drop(cursor);
                        ctx.metrics.closed(proto::HTTP_FLV, "no_publisher");
                        return not_found(&ctx, "stream not found\n");
                    }
                    _ = ctx.shutdown.cancelled() => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
                }
            }
        }
    }
    info!(%key, "http-flv viewer");
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("video/x-flv"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    cors(&ctx, &mut headers);
    if method == Method::HEAD {
        drop(cursor);
        return (StatusCode::OK, headers).into_response();
    }

    let mut pending = VecDeque::with_capacity(BATCH_FRAMES + 1);
    let (has_audio, has_video) = tracks(&frames);
    pending.push_back(sluice_media::flv::encode_file_header(has_audio, has_video));
    let body = FlvBody::new(ctx, cursor, permit, pending, &frames);
    let stream = futures_util::stream::unfold(body, |mut body| async move {
        body.next()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), body))
    });
    (StatusCode::OK, headers, Body::from_stream(stream)).into_response()
}

/// Which tracks the FLV file header announces, from what a viewer starts with: its media,
/// sequence headers and onMetaData (`audiocodecid` / `videocodecid`). Web players (flv.js,
/// mpegts.js) wait for every announced track before playing, so an audio-only stream
/// announced with video never starts. Without metadata, a track not seen yet is announced
/// anyway (its header may come later).
fn tracks(frames: &[Arc<Frame>]) -> (bool, bool) {
    let (mut audio, mut video) = (false, false);
    let mut described = false;
    for frame in frames {
        match frame.kind {
            FrameKind::Audio => audio = true,
            FrameKind::Video => video = true,
            FrameKind::Script => {
                let Ok(values) = sluice_rtmp::command::decode_data(&frame.payload) else {
                    continue;
                };
                for value in values {
                    if let Amf0Value::Object(props) = value {
                        described = true;
                        audio |= props.contains_key("audiocodecid");
                        video |= props.contains_key("videocodecid");
                    }
                }
            }
        }
    }
    if described {
        (audio, video)
    } else {
        (true, true)
    }
}

/// One HTTP-FLV viewer's body: a cursor and the tags to send next.
struct FlvBody {
    ctx: Arc<Context>,
    counters: ProtocolCounters,
    cursor: Cursor,
    frames: Vec<Arc<Frame>>,
    pending: VecDeque<Bytes>,
    close_reason: &'static str,
    window: Window,
    schedule: ScheduleCache,
    /// Held across waits rather than re-registered on each.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    _permit: OwnedSemaphorePermit,
}

impl FlvBody {
    fn new(
        ctx: Arc<Context>,
        cursor: Cursor,
        permit: OwnedSemaphorePermit,
        mut pending: VecDeque<Bytes>,
        first: &[Arc<Frame>],
    ) -> Self {
        ctx.metrics
            .viewers
            .get_or_create(&[("protocol", proto::HTTP_FLV)])
            .inc();
        let counters = ctx.metrics.protocol_counters(proto::HTTP_FLV);
        let ctx_shutdown = ctx.shutdown.clone().cancelled_owned();
        counters.frames_out.inc_by(first.len() as u64);
        pending.extend(first.iter().map(|f| f.flv_tag()));
        FlvBody {
            counters,
            ctx,
            cursor,
            frames: Vec::with_capacity(BATCH_FRAMES),
            pending,
            close_reason: "peer_closed",
            window: Window::default(),
            schedule: ScheduleCache::default(),
            shutdown: Box::pin(ctx_shutdown),
            _permit: permit,
        }
    }

    /// The next piece of the body, or None when the stream has ended. Frames due together
    /// are returned back to back without waiting, so hyper gathers them into one write.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(bytes) = self.pending.pop_front() {
                self.counters.bytes_out.inc_by(bytes.len() as u64);
                return Some(bytes);
            }
            let cfg = self.ctx.config.load();
            let schedule = self
                .schedule
                .get(&cfg, Some(&self.cursor.stream().key().app));
            let now = Instant::now();
            let mut give_up = None;
            let hold = self.window.hold(now, &schedule, self.cursor.stream());
            if matches!(hold, Hold::No) {
                self.frames.clear();
                let state =
                    self.cursor
                        .read(&mut self.frames, BATCH_FRAMES, now.into_std(), &schedule);
                self.ctx.metrics.count_drops(&self.cursor.take_drops());
                if !self.frames.is_empty() {
                    self.counters.frames_out.inc_by(self.frames.len() as u64);
                    // Returned back to back, hyper writes these together.
                    self.counters.media_writes.inc();
                    self.pending.extend(self.frames.iter().map(|f| f.flv_tag()));
                    // With batching, the next batch is a window after this one.
                    self.window.on_change(now, &schedule, self.cursor.stream());
                    continue;
                }
                give_up = match state {
                    ReadState::Frames | ReadState::Pending => None,
                    ReadState::Unpublished(at) => {
                        Some(Instant::from_std(at) + cfg.streams.republish_grace())
                    }
                    ReadState::WaitingForPublisher => Some(now + cfg.streams.wait_for_publisher()),
                };
            }
            drop(cfg);
            let expired = async {
                match give_up {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let woken = async {
                match hold {
                    Hold::No => {
                        self.cursor.changed().await;
                        true
                    }
                    Hold::Until { at, count_bytes } => {
                        tokio::select! {
                            _ = sleep_until(at) => {}
                            _ = self.cursor.changed(), if count_bytes => {}
                        }
                        false
                    }
                }
            };
            tokio::select! {
                changed = woken => {
                    if changed {
                        self.window.on_change(Instant::now(), &schedule, self.cursor.stream());
                    }
                }
                _ = expired => {
                    self.close_reason = "stream_ended";
                    return None;
                }
                _ = &mut self.shutdown => {
                    self.close_reason = "shutdown";
                    return None;
                }
            }
        }
    }
}

impl Drop for FlvBody {
    fn drop(&mut self) {
        debug!(reason = self.close_reason, stream = %self.cursor.stream().key(), "http-flv viewer left");
        self.ctx
            .metrics
            .viewers
            .get_or_create(&[("protocol", proto::HTTP_FLV)])
            .dec();
        self.ctx.metrics.closed(proto::HTTP_FLV, self.close_reason);
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use sluice_rtmp::command::write_value;

    use super::*;

    fn metadata(keys: &[&str]) -> Arc<Frame> {
        let mut body = BytesMut::new();
        write_value(&Amf0Value::Utf8String("onMetaData".into()), &mut body);
        let props = keys
            .iter()
            .map(|k| ((*k).to_owned(), Amf0Value::Number(7.0)))
            .collect();
        write_value(&Amf0Value::Object(props), &mut body);
        Arc::new(Frame::script(0, body.freeze()))
    }

    fn media(kind: FrameKind, body: &'static [u8]) -> Arc<Frame> {
        Arc::new(Frame::parse(kind, 0, Bytes::from_static(body)).expect("frame"))
    }

    #[test]
    fn the_header_announces_the_tracks_the_stream_has() {
        let aac = media(FrameKind::Audio, &[0xaf, 0, 0x12, 0x10]);
        let avc = media(FrameKind::Video, &[0x17, 0, 0, 0, 0]);
        // Audio only, described by its metadata: no video announced.
        assert_eq!(
            tracks(&[metadata(&["audiocodecid"]), aac.clone()]),
            (true, false)
        );
        // Video only, described: no audio.
        assert_eq!(
            tracks(&[metadata(&["videocodecid", "width"]), avc.clone()]),
            (false, true)
        );
        // Metadata names both before either header came.
        assert_eq!(
            tracks(&[metadata(&["audiocodecid", "videocodecid"])]),
            (true, true)
        );
        // No metadata: a track not seen yet may still come, so both are announced.
        assert_eq!(tracks(&[avc]), (true, true));
    }
}
