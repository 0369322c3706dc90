//! The admin listener: `/metrics` (Prometheus text), `/api/streams` (with each stream's HLS
//! state), `/api/pulls`, `/api/upstreams`, `/api/node` and `/api/cluster` (the stream
//! registry's nodes and streams) (JSON), `POST /api/drain` (start draining, as SIGTERM does),
//! `/healthz` (liveness: 200 while the process serves, drain included), `/readyz`
//! (readiness: 200 `ready`, 503 `draining` from the moment a drain starts, so a load
//! balancer stops sending new viewers here), and the status page (`/`, `/status.css`,
//! `/status.js`, see [`crate::status`]).
//!
//! With `admin.token` (or `admin.token_file`) set, every request but `/healthz` and `/readyz`
//! (the probes of a supervisor that holds no secret) and the status page's static files (they
//! hold no data: the page's script asks the API with the token the operator gives it) must
//! carry `Authorization: Bearer TOKEN`.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use sluice_cluster::PullManager;
use sluice_core::topology::Role;
use sluice_front::hls::Hls;
use sluice_registry::Registry;
use sluice_runtime::Context;

/// What the node-wide handlers read.
#[derive(Debug, Clone)]
struct Node {
    ctx: Arc<Context>,
    hls: Arc<Hls>,
    listeners: Listeners,
}

/// The viewer-facing listeners as bound (a port 0 in the config is a real port here), for
/// `/api/node`.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// The HTTP listener (HTTP-FLV, HLS, the player page).
    pub http: SocketAddr,
    /// The HTTPS listener, with TLS.
    pub https: Option<SocketAddr>,
}

/// The admin router.
pub fn router(
    ctx: Arc<Context>,
    pulls: PullManager,
    registry: Option<Registry>,
    hls: Arc<Hls>,
    listeners: Listeners,
) -> Router {
    let node_id = ctx.config.load().cluster.node_id().to_string();
    let cluster = Router::new()
        .route(
            "/api/cluster",
            get(|State(r): State<Option<Registry>>| async move {
                match r {
                    Some(r) => axum::Json(serde_json::json!(r.cluster())),
                    None => axum::Json(serde_json::json!({
                        "enabled": false,
                        "up": false,
                        "node_id": node_id,
                        "nodes": [],
                        "streams": [],
                    })),
                }
            }),
        )
        .with_state(registry);
    let pull_routes = Router::new()
        .route(
            "/api/pulls",
            get(|State(p): State<PullManager>| async move {
                axum::Json(serde_json::json!({ "pulls": p.pulls() }))
            }),
        )
        .route(
            "/api/upstreams",
            get(|State(p): State<PullManager>| async move {
                axum::Json(serde_json::json!({ "upstreams": p.upstreams() }))
            }),
        )
        .with_state(pulls);
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/streams", get(streams))
        .route("/api/node", get(node))
        .route("/api/drain", post(drain))
        .with_state(Node {
            ctx: ctx.clone(),
            hls,
            listeners,
        })
        .merge(pull_routes)
        .merge(cluster)
        .layer(middleware::from_fn_with_state(ctx.clone(), bearer));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::status::router())
        .route("/readyz", get(ready).with_state(ctx))
        .merge(guarded)
}

/// 200 while the node takes new viewers and publishers; 503 once it drains (or stops).
async fn ready(State(ctx): State<Arc<Context>>) -> impl IntoResponse {
    if ctx.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// Starts draining (see [`Context::drain`]); 202 with whether this request started it and
/// the grace period in force. Shutdown follows the drain as after SIGTERM.
async fn drain(State(Node { ctx, .. }): State<Node>) -> impl IntoResponse {
    let started = ctx.drain();
    if started {
        tracing::info!("drain requested on the admin API");
    }
    let grace_ms = ctx.config.load().server.drain_grace_ms;
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "draining": true,
            "started": started,
            "grace_ms": grace_ms,
        })),
    )
}

/// Lets a request through when no token is configured or it carries the token. The token
/// file is read per request (admin requests are few), so a rotated file applies at once.
async fn bearer(State(ctx): State<Arc<Context>>, request: Request, next: Next) -> Response {
    // Resolved before any await: the config guard must not live across the handler.
    let resolved = ctx.config.load().admin.resolve_token();
    let expected = match resolved {
        Ok(None) => return next.run(request).await,
        Ok(Some(token)) => token,
        Err(error) => {
            tracing::warn!(%error, "admin token unreadable: refusing admin requests");
            return (StatusCode::SERVICE_UNAVAILABLE, "admin token unreadable\n").into_response();
        }
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|given| same_secret(given.as_bytes(), expected.as_bytes())) {
        return next.run(request).await;
    }
    ctx.metrics.refused("admin", "auth_invalid");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "admin token required\n",
    )
        .into_response()
}

/// Compares without stopping at the first difference (the time taken does not tell how much
/// of a guess was right; only the length may show).
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let differ = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    given.len() == expected.len() && differ == 0
}

async fn metrics(State(Node { ctx, hls, .. }): State<Node>) -> impl IntoResponse {
    ctx.update_stream_gauge();
    hls.update_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.encode(),
    )
}

/// One stream in `/api/streams`.
#[derive(Debug, Serialize)]
pub struct StreamJson {
    /// Application.
    pub app: String,
    /// Stream name.
    pub stream: String,
    /// A publisher is attached.
    pub publishing: bool,
    /// Video codec details, if known.
    pub video: Option<VideoJson>,
    /// Audio codec details, if known.
    pub audio: Option<AudioJson>,
    /// Incoming bitrate, bits per second (last second).
    pub bitrate_bps: u64,
    /// Seconds the current publisher has been publishing.
    pub uptime_secs: Option<f64>,
    /// Viewers attached: players over RTMP and HTTP-FLV, edges pulling, and the HLS
    /// segmenter while there is one (HLS viewers are counted apart, in `viewers_by_protocol`).
    pub viewers: usize,
    /// Players now, by protocol.
    pub viewers_by_protocol: ProtocolViewersJson,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames in the GOP cache.
    pub cached_frames: usize,
    /// Bytes in the GOP cache.
    pub cached_bytes: usize,
    /// HLS, while the stream is being segmented.
    pub hls: Option<HlsJson>,
}

/// A stream's players by protocol.
#[derive(Debug, Serialize)]
pub struct ProtocolViewersJson {
    /// Over RTMP and RTMPS (edges pulling over RTMP included).
    pub rtmp: usize,
    /// Over HTTP-FLV and HTTPS-FLV.
    pub http_flv: usize,
    /// Connections that asked for the HLS media playlist recently (0 while not segmented).
    pub hls: usize,
}

/// A stream's HLS state.
#[derive(Debug, Serialize)]
pub struct HlsJson {
    /// Connections that asked for the media playlist recently.
    pub viewers: usize,
    /// First listed segment's media sequence number.
    pub media_sequence: u64,
    /// Segments listed.
    pub segments: usize,
    /// The newest part: `[msn, index]`.
    pub last_part: Option<(u64, u32)>,
    /// Bytes of the listed parts (what the cache holds for this stream).
    pub window_bytes: usize,
    /// The CODECS the multivariant playlist announces.
    pub codecs: String,
}

/// Video details.
#[derive(Debug, Serialize)]
pub struct VideoJson {
    /// Codec name (h264, hevc, av1, vp9).
    pub codec: String,
    /// Profile.
    pub profile: String,
    /// Level.
    pub level: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Audio details.
#[derive(Debug, Serialize)]
pub struct AudioJson {
    /// Codec name (aac, mp3, opus).
    pub codec: String,
    /// Profile.
    pub profile: String,
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u8,
}

fn codec_name(codec: Option<sluice_media::CodecId>) -> String {
    use sluice_media::CodecId::*;
    match codec {
        Some(Avc) => "h264",
        Some(Hevc) => "hevc",
        Some(Av1) => "av1",
        Some(Vp9) => "vp9",
        Some(Aac) => "aac",
        Some(Mp3) => "mp3",
        Some(Opus) => "opus",
        _ => "unknown",
    }
    .to_owned()
}

async fn streams(State(Node { ctx, hls, .. }): State<Node>) -> impl IntoResponse {
    let now = Instant::now();
    let list: Vec<StreamJson> = ctx
        .registry
        .streams()
        .iter()
        .map(|s| {
            let i = s.info(now);
            let hls = hls.info(&i.key).map(|h| HlsJson {
                viewers: h.viewers,
                media_sequence: h.media_sequence,
                segments: h.segments,
                last_part: h.last_part,
                window_bytes: h.window_bytes,
                codecs: h.codecs,
            });
            StreamJson {
                app: i.key.app.to_string(),
                stream: i.key.name.to_string(),
                publishing: i.publishing,
                video: i.video.map(|v| VideoJson {
                    codec: codec_name(v.codec),
                    profile: v.profile,
                    level: v.level,
                    width: v.width,
                    height: v.height,
                }),
                audio: i.audio.map(|a| AudioJson {
                    codec: codec_name(a.codec),
                    profile: a.profile,
                    sample_rate: a.sample_rate,
                    channels: a.channels,
                }),
                bitrate_bps: i.bitrate_bps,
                uptime_secs: i.uptime.map(|d| d.as_secs_f64()),
                viewers: i.viewers,
                viewers_by_protocol: ProtocolViewersJson {
                    rtmp: i.rtmp_viewers,
                    http_flv: i.http_flv_viewers,
                    hls: hls.as_ref().map_or(0, |h| h.viewers),
                },
                bytes_in: i.bytes_in,
                frames_in: i.frames_in,
                cached_frames: i.cached_frames,
                cached_bytes: i.cached_bytes,
                hls,
            }
        })
        .collect();
    axum::Json(serde_json::json!({ "streams": list }))
}

/// `/api/node`: what this node is and where its viewers connect (the status page links each
/// stream to its player page from it).
#[derive(Debug, Serialize)]
pub struct NodeJson {
    /// `cluster.node_id` (or the default, HOSTNAME:PORT).
    pub node_id: String,
    /// `origin`, `edge` or `both`.
    pub role: Role,
    /// This binary's version.
    pub version: &'static str,
    /// The HTTP listener's port (as bound).
    pub http_port: u16,
    /// The HTTPS listener's port, with TLS.
    pub https_port: Option<u16>,
    /// The player page: `null` when `player.enabled` is off, else its path prefix
    /// (`player.path`; the page of a stream is `{player_path}/APP/NAME`).
    pub player_path: Option<String>,
}

async fn node(State(Node { ctx, listeners, .. }): State<Node>) -> impl IntoResponse {
    let cfg = ctx.config.load();
    axum::Json(NodeJson {
        node_id: cfg.cluster.node_id().to_string(),
        role: cfg.cluster.role,
        version: env!("CARGO_PKG_VERSION"),
        http_port: listeners.http.port(),
        https_port: listeners.https.map(|a| a.port()),
        player_path: cfg.player.enabled.then(|| cfg.player.path.clone()),
    })
}
