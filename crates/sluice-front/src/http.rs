//! The HTTP listener: HTTP-FLV playback, `GET /{app}/{stream}.flv`, an FLV file that never
//! ends (until the stream does). Each frame's FLV tag is built once and shared by every
//! HTTP-FLV viewer.
//!
//! The connection is handled here, not by a general HTTP server: the request head is read
//! into a small buffer (at most [`MAX_HEAD`] bytes, within `http.request_timeout_ms`) and
//! parsed with `httparse`; once the stream has frames, the response head is written and the
//! body handed to the runtime's viewer driver ([`Viewer`]) in [`Wire::FlvChunked`] (or
//! [`Wire::FlvPlain`]) form. That is what makes a viewer cheap (measured with 1,000 viewers
//! of a 2.5 Mbit/s stream: about 6 KiB of RSS each, against 26 KiB with hyper/axum's
//! per-connection buffers and state) and what holds a slow reader to its latency budget
//! (see the driver; a socket that takes nothing for `http.idle_timeout_ms` is closed,
//! `write_stalled`).
//!
//! One request per connection (`connection: close`). HTTP/1.1 bodies are chunked, one chunk
//! per tag: the chunk size lines are small buffers, shared too, written around the tag bytes,
//! and the last chunk ends the body when the stream ends or the node shuts down, so a player can
//! tell a clean end from a cut connection. HTTP/1.0 bodies end when the connection closes.
//!
//! The response starts only once the stream has frames: a stream nobody publishes within
//! `streams.wait_for_publisher_ms` is a 404, not an empty 200.
//!
//! While the node drains, a new HTTP-FLV request (the gate refuses it) and an HLS
//! multivariant playlist (where a player starts) are answered 503 with `Retry-After`; an
//! HLS player already started keeps getting its media playlist, segments and parts.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_auth::{Action, MAX_QUERY, percent_decode_exact};
use sluice_core::StreamKey;
use sluice_core::metrics::{ProtocolCounters, proto};
use sluice_core::topology::Via;
use sluice_media::{Frame, FrameKind};
use sluice_rtmp::command::Amf0Value;
use sluice_runtime::close::{Close, GOODBYE};
use sluice_runtime::limits::Limits;
use sluice_runtime::viewer::{Ended, Peer, Viewer};
use sluice_runtime::wire::Wire;
use sluice_runtime::{Context, accept, io};

use crate::Front;
use crate::gate::{Ask, DRAIN_RETRY_AFTER_S, Gate, unix_ms};
use crate::hls::{self, Hls};
use crate::limit::{Admission, Limit};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tracing::{Instrument, debug, info, info_span};

/// The largest request head accepted; a larger one is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// The head buffer starts this small and doubles up to [`MAX_HEAD`]; it is freed once the
/// head is parsed.
const HEAD_BUF: usize = 1024;
/// Header lines a request may have (more is answered 431).
const MAX_HEADERS: usize = 64;
/// Connections over `http.max_connections` answered 503 at once; beyond that, closed unanswered.
const REFUSALS: usize = 64;
/// How long a connection we answered and closed is read on, so that our close does not reset
/// the connection (and destroy the answer) while the client still sends.
const LINGER: Duration = Duration::from_millis(500);
/// Ends the chunk left open after the last tag, then the body.
const LAST_CHUNK: &[u8] = b"\r\n0\r\n\r\n";
/// Discards what a viewer sends after its request (nothing, normally).
const SINK: usize = 256;

/// Accepts HTTP-FLV connections until shutdown. Connections over `limit`
/// (`http.max_connections`, shared with the HTTPS listener) are answered 503 at accept;
/// accept errors back off briefly instead of spinning.
/// Fails only when the listener does (see [`crate::accept::listener_failed`]).
pub async fn serve(listener: TcpListener, front: Front, limit: Limit) -> std::io::Result<()> {
    let ctx = front.ctx.clone();
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    accept::until_shutdown(&listener, &ctx, proto::HTTP_FLV, |socket, peer| {
        let Ok(admission) = limit.admit(&ctx, proto::HTTP_FLV, peer.ip()) else {
            // Bounded: a flood beyond the limit is closed unanswered.
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                let counters = ctx.metrics.protocol_counters(proto::HTTP_FLV);
                ctx.tracker.spawn(async move {
                    let busy = plain(false, "503 Service Unavailable", None, "");
                    answer(&socket, &busy, &counters, LINGER).await;
                    drop(refusal);
                });
            }
            return;
        };
        spawn_connection(&front, admission, socket, peer, false);
    })
    .await
}

/// Serves one admitted connection in a task of its own: `socket` is the accepted TCP socket,
/// or for HTTPS (`secure`) the plain end of the TLS bridge, one per HTTP/1.1 connection or
/// HTTP/2 request (`peer` is the client's address either way).
pub(crate) fn spawn_connection(
    front: &Front,
    admission: Admission,
    socket: TcpStream,
    peer: SocketAddr,
    secure: bool,
) {
    let conn = front.ctx.next_conn_id();
    spawn_handler(front, admission, socket, peer, secure, conn);
}

/// [`spawn_connection`] under the connection id `conn`, by which HLS tells viewers apart:
/// the requests of one HTTP/2 connection, each on a socket of its own, share one.
pub(crate) fn spawn_handler(
    front: &Front,
    admission: Admission,
    socket: TcpStream,
    peer: SocketAddr,
    secure: bool,
    conn: u64,
) {
    // A response's tail must not wait for the client's delayed ACK (Nagle: 40 ms on
    // every HLS response, measured); HTTP-FLV viewers get their schedule's setting later.
    // (Fails on a TLS bridge's Unix socket, where it has no meaning.)
    let _ = socket.set_nodelay(true);
    let span = info_span!("http", conn, %peer, secure);
    let front = front.clone();
    front.ctx.tracker.clone().spawn(
        async move {
            Handler::new(&front, conn, socket, peer.ip(), secure)
                .run()
                .await;
            drop(admission);
        }
        .instrument(span),
    );
}

/// An HLS request's target.
#[derive(Debug)]
struct HlsTarget {
    app: String,
    name: String,
    grant: Option<String>,
    file: Option<String>,
}

/// What access control says of an HLS request.
#[derive(Debug)]
enum HlsAccess {
    Serve,
    /// Redirect to this path (the media playlist under a grant).
    Redirect(String),
}

/// Why no request was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadError {
    /// The peer closed before the head was complete.
    Closed,
    Io,
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines.
    TooLarge,
    /// Not an HTTP/1 request.
    Bad,
}

/// The parts of a request head playback needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    method: Method,
    /// The target's path, without the query or an absolute-form scheme and authority.
    path: String,
    /// The target's query, without the `?`.
    query: String,
    /// An HTTP/1.0 request (answered in HTTP/1.0, the body delimited by the close).
    http10: bool,
    /// The client keeps the connection for another request (HTTP/1.1 without
    /// `connection: close`).
    keep_alive: bool,
    /// Length of the head in the buffer it was parsed from.
    head_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Options,
    Other,
}

/// Parses a request head: `Ok(None)` while it is incomplete.
fn parse_request(buf: &[u8]) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(head_len)) => {
            let method = match req.method.unwrap_or_default() {
                "GET" => Method::Get,
                "HEAD" => Method::Head,
                "OPTIONS" => Method::Options,
                _ => Method::Other,
            };
            let target = req.path.unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            let (target, query) = target.split_once('?').unwrap_or((target, ""));
            // Absolute form (`GET http://host/live/a.flv`), as sent to proxies.
            let path = ["http://", "https://"]
                .iter()
                .find_map(|scheme| {
                    let rest = target.get(..scheme.len())?;
                    rest.eq_ignore_ascii_case(scheme)
                        .then(|| &target[scheme.len()..])
                })
                .map_or(target, |rest| rest.find('/').map_or("/", |at| &rest[at..]));
            let http10 = req.version == Some(0);
            let close = req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection")
                    && h.value
                        .split(|b| *b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            });
            Ok(Some(Request {
                method,
                path: path.to_owned(),
                query: query.to_owned(),
                http10,
                keep_alive: !http10 && !close,
                head_len,
            }))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Bad),
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// HTTP-FLV: `/{app}/{name}.flv`.
    Play {
        app: String,
        name: String,
        head_only: bool,
    },
    /// HLS: `/{app}/{name}.m3u8` (file None) or `/{app}/{name}/{file}`, or
    /// `/{app}/{name}/{grant}/{file}` under a grant the playlist check gave.
    Hls {
        app: String,
        name: String,
        grant: Option<String>,
        file: Option<String>,
        head_only: bool,
    },
    Preflight,
    NotFound,
    /// `/{app}/{file}` that names no format served here.
    NotPlayable,
    MethodNotAllowed,
    BadRequest,
}

/// Routes `/{app}/{file}`, `/{app}/{name}/{file}` and `/{app}/{name}/g.{grant}/{file}`
/// (non-empty, percent-decoded segments):
/// GET and HEAD play, OPTIONS is a CORS preflight, other methods are 405; any other path is
/// 404. A decoded segment may not hold `/` or be `.`/`..`.
fn route(req: &Request) -> Route {
    let segments: Vec<&str> = match req.path.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return Route::NotFound,
    };
    if !(2..=4).contains(&segments.len()) || segments.iter().any(|s| s.is_empty()) {
        return Route::NotFound;
    }
    if segments.len() == 4 && !segments[2].starts_with("g.") {
        return Route::NotFound;
    }
    let head_only = match req.method {
        Method::Get => false,
        Method::Head => true,
        Method::Options => return Route::Preflight,
        Method::Other => return Route::MethodNotAllowed,
    };
    let Some(decoded) = segments
        .iter()
        .map(|s| percent_decode_exact(s).map(Cow::into_owned))
        .collect::<Option<Vec<String>>>()
    else {
        return Route::BadRequest;
    };
    if decoded.iter().any(|s| s.contains('/')) {
        return Route::NotPlayable;
    }
    if decoded.iter().any(|s| s == "." || s == "..") {
        return Route::BadRequest;
    }
    let mut decoded = decoded.into_iter();
    let (Some(app), Some(second)) = (decoded.next(), decoded.next()) else {
        return Route::NotFound;
    };
    if let Some(third) = decoded.next() {
        let (grant, file) = match decoded.next() {
            Some(file) if third.starts_with("g.") => (Some(third), file),
            Some(_) => return Route::NotFound,
            None => (None, third),
        };
        return Route::Hls {
            app,
            name: second,
            grant,
            file: Some(file),
            head_only,
        };
    }
    let named = |ext: &str| second.strip_suffix(ext).filter(|n| !n.is_empty());
    if let Some(name) = named(".flv") {
        Route::Play {
            app,
            name: name.to_owned(),
            head_only,
        }
    } else if let Some(name) = named(".m3u8") {
        Route::Hls {
            app,
            name: name.to_owned(),
            grant: None,
            file: None,
            head_only,
        }
    } else {
        Route::NotPlayable
    }
}

/// A response head being built: the status line, then header lines (names in lower case,
/// as hyper wrote them).
struct Head(BytesMut);

impl Head {
    fn new(http10: bool, status: &str) -> Self {
        let mut head = BytesMut::with_capacity(256);
        head.put_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        head.put_slice(status.as_bytes());
        head.put_slice(b"\r\n");
        Head(head)
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.0.put_slice(name.as_bytes());
        self.0.put_slice(b": ");
        self.0.put_slice(value.as_bytes());
        self.0.put_slice(b"\r\n");
        self
    }

    /// The CORS headers, when `http.cors_allow_origin` is set (and a valid header value).
    fn cors(self, ctx: &Context) -> Self {
        let cfg = ctx.config.load();
        let origin = cfg.http.cors_allow_origin.as_str();
        let valid = origin
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        if origin.is_empty() || !valid {
            return self;
        }
        self.header("access-control-allow-origin", origin)
            .header("access-control-allow-methods", "GET, OPTIONS")
            .header("access-control-allow-headers", "*")
            .header("access-control-expose-headers", "*")
    }

    fn finish(mut self) -> BytesMut {
        self.0.put_slice(b"\r\n");
        self.0
    }
}

/// A complete response with a short text body (or none), ending the connection.
fn plain(http10: bool, status: &str, cors: Option<&Context>, body: &str) -> BytesMut {
    plain_with(http10, status, cors, None, body)
}

/// [`plain`], telling the client to ask again after `retry_after` seconds, if given.
fn plain_with(
    http10: bool,
    status: &str,
    cors: Option<&Context>,
    retry_after: Option<u32>,
    body: &str,
) -> BytesMut {
    let mut head = Head::new(http10, status);
    if let Some(ctx) = cors {
        head = head.cors(ctx);
    }
    if let Some(seconds) = retry_after {
        head = head.header("retry-after", &seconds.to_string());
    }
    if !body.is_empty() {
        head = head.header("content-type", "text/plain; charset=utf-8");
    }
    let mut response = head
        .header("content-length", &body.len().to_string())
        .header("connection", "close")
        .finish();
    response.put_slice(body.as_bytes());
    response
}

/// Writes `response` within `deadline`, ends the connection and reads on for a moment
/// (see [`LINGER`]).
async fn answer(
    socket: &TcpStream,
    response: &[u8],
    counters: &ProtocolCounters,
    deadline: Duration,
) {
    match timeout(deadline, io::write_all(socket, response)).await {
        Ok(Ok(())) => {
            counters.bytes_out.inc_by(response.len() as u64);
        }
        _ => return,
    }
    if io::shutdown_write(socket).is_err() {
        return;
    }
    let _ = timeout(LINGER, async {
        let mut sink = [0u8; SINK];
        while let Ok(n @ 1..) = io::read(socket, &mut sink).await {
            counters.bytes_in.inc_by(n as u64);
        }
    })
    .await;
}

/// Writes a response head and its body: bytes with `writev`, memory-file ranges with
/// `sendfile` (what precedes one is flagged `MSG_MORE`, so the head and the body's start leave
/// together).
async fn write_response(socket: &TcpStream, head: Bytes, body: hls::Body) -> std::io::Result<()> {
    let mut pending = VecDeque::with_capacity(body.len() + 1);
    pending.push_back(head);
    for chunk in body {
        match chunk {
            hls::Chunk::Memory(bytes) => pending.push_back(bytes),
            hls::Chunk::File { file, offset, len } => {
                for bytes in pending.drain(..) {
                    io::write_more(socket, &bytes).await?;
                }
                io::send_file(socket, &file, offset, len).await?;
            }
        }
    }
    if !pending.is_empty() {
        io::write_bufs(socket, &mut pending).await?;
    }
    Ok(())
}

/// A viewer's side while it plays: it has nothing more to say after its request, so what it
/// sends anyway is read (counted by the driver) and dropped.
struct Quiet;

impl Peer for Quiet {
    const READ_BUF: usize = SINK;

    fn input(&mut self, _data: &[u8]) -> Result<(), Ended> {
        Ok(())
    }

    fn output(&mut self) -> Option<Bytes> {
        None
    }
}

/// One HTTP connection: its requests (HLS ones kept alive), then the answer or the stream.
struct Handler {
    ctx: Arc<Context>,
    gate: Arc<Gate>,
    hls: Arc<Hls>,
    conn: u64,
    client: IpAddr,
    /// Behind the HTTPS listener (the gate and webhooks are told).
    secure: bool,
    /// Shared with the stream's writer while the viewer is one of its members.
    socket: Arc<TcpStream>,
    counters: ProtocolCounters,
    hls_counters: ProtocolCounters,
    /// Request heads being read; what follows a head (a pipelined request) stays.
    buf: Vec<u8>,
    filled: usize,
}

impl Handler {
    fn new(front: &Front, conn: u64, socket: TcpStream, client: IpAddr, secure: bool) -> Self {
        let ctx = front.ctx.clone();
        let counters = ctx.metrics.protocol_counters(proto::HTTP_FLV);
        let hls_counters = ctx.metrics.protocol_counters(proto::HLS);
        Handler {
            ctx,
            gate: front.gate.clone(),
            hls: front.hls.clone(),
            conn,
            client,
            secure,
            socket: Arc::new(socket),
            counters,
            hls_counters,
            buf: Vec::new(),
            filled: 0,
        }
    }

    async fn run(mut self) {
        let shutdown = self.ctx.shutdown.clone();
        let mut first = true;
        loop {
            let deadline = {
                let cfg = self.ctx.config.load();
                if first {
                    cfg.http.request_timeout()
                } else {
                    // Between the requests of a kept-alive connection (an HLS player polls).
                    cfg.http.idle_timeout()
                }
            };
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = timeout(deadline, self.read_head()) => read,
            };
            let request = match read {
                Ok(Ok(request)) => request,
                Err(_) if !first => return,
                Err(_) => {
                    info!("request head timed out");
                    self.ctx.metrics.refused(proto::HTTP_FLV, "request_timeout");
                    return;
                }
                Ok(Err(HeadError::Closed | HeadError::Io)) => return,
                Ok(Err(HeadError::TooLarge)) => {
                    info!("request head too large");
                    self.ctx.metrics.refused(proto::HTTP_FLV, "head_too_large");
                    let response = plain(
                        false,
                        "431 Request Header Fields Too Large",
                        None,
                        "request head too large\n",
                    );
                    return self.answer(&response).await;
                }
                Ok(Err(HeadError::Bad)) => {
                    info!("not an HTTP/1 request");
                    self.ctx.metrics.refused(proto::HTTP_FLV, "bad_request");
                    let response = plain(false, "400 Bad Request", None, "bad request\n");
                    return self.answer(&response).await;
                }
            };
            first = false;
            // What follows the head stays for the next request.
            self.buf.copy_within(request.head_len..self.filled, 0);
            self.filled -= request.head_len;
            if let Some(page) = self.player_page(&request).await {
                return self.answer(&page).await;
            }
            match route(&request) {
                Route::Hls {
                    app,
                    name,
                    grant,
                    file,
                    head_only,
                } => {
                    let target = HlsTarget {
                        app,
                        name,
                        grant,
                        file,
                    };
                    if !self.hls_request(&request, target, head_only).await {
                        return;
                    }
                }
                route => return self.respond(&request, route).await,
            }
        }
    }

    /// Answers an HLS request; whether the connection stays open for another.
    async fn hls_request(
        &mut self,
        request: &Request,
        mut target: HlsTarget,
        head_only: bool,
    ) -> bool {
        let http10 = request.http10;
        let (enabled, allowed) = {
            let cfg = self.ctx.config.load();
            (cfg.hls.enabled, cfg.streams.app_allowed(&target.app))
        };
        let mut location = None;
        let response = if !enabled {
            hls::Response::error("404 Not Found", "HLS is not served here\n")
        } else if !allowed {
            self.ctx.metrics.refused(proto::HLS, "unknown_app");
            hls::Response::error("404 Not Found", "application not served here\n")
        } else if request.query.len() > MAX_QUERY {
            hls::Response::error("414 URI Too Long", "query too long\n")
        } else if self.ctx.is_draining() && target.file.is_none() {
            // The multivariant playlist is where a player starts: a new viewer, refused
            // while the node drains. What a started player asks next (its media playlist,
            // under a grant where the application is guarded, and the segments and parts
            // it lists) is still served, on this connection or another, so it plays on
            // until shutdown.
            Limits::refuse(&self.ctx, proto::HLS, "draining", self.client);
            hls::Response::error("503 Service Unavailable", "node draining\n")
        } else {
            match self.hls_access(request, &mut target).await {
                Ok(HlsAccess::Serve) => {
                    let hls_request = hls::Request {
                        key: StreamKey::new(&target.app, &target.name),
                        file: target.file,
                        query: request.query.clone(),
                        conn: self.conn,
                        grant: target.grant,
                    };
                    let shutdown = self.ctx.shutdown.clone();
                    tokio::select! {
                        response = self.hls.respond(&hls_request) => response,
                        _ = shutdown.cancelled() => return false,
                    }
                }
                Ok(HlsAccess::Redirect(to)) => {
                    location = Some(to);
                    hls::Response::error("302 Found", "see the granted playlist\n")
                }
                Err(response) => response,
            }
        };
        let keep_alive = request.keep_alive && !self.ctx.shutdown.is_cancelled();
        let mut head = Head::new(http10, response.status)
            .header("content-type", response.content_type)
            .header("content-length", &response.len().to_string())
            .header("cache-control", response.cache_control)
            .cors(&self.ctx);
        if let Some(location) = &location {
            head = head.header("location", location);
        }
        if response.status.starts_with("503") && self.ctx.is_draining() {
            head = head.header("retry-after", &DRAIN_RETRY_AFTER_S.to_string());
        }
        if !keep_alive {
            head = head.header("connection", "close");
        }
        let head = head.finish();
        let body = if head_only { Vec::new() } else { response.body };
        let total = head.len() + body.iter().map(hls::Chunk::len).sum::<usize>();
        let idle = self.ctx.config.load().http.idle_timeout();
        match timeout(idle, write_response(&self.socket, head.freeze(), body)).await {
            Ok(Ok(())) => {
                self.hls_counters.bytes_out.inc_by(total as u64);
            }
            _ => return false,
        }
        if !keep_alive {
            let _ = io::shutdown_write(&self.socket);
        }
        keep_alive
    }

    /// Access to an HLS resource of a guarded application (see [`Gate::play_is_guarded`]):
    /// the multivariant playlist is checked like any play and answered with its media
    /// playlist under a grant (`NAME/g.../media.m3u8`), so every later request of the
    /// player is under that grant and needs only the grant's signature checked, never the
    /// rule or the webhook again. A media playlist asked with credentials but no grant is
    /// redirected under one; anything else without a valid grant is refused.
    async fn hls_access(
        &mut self,
        request: &Request,
        target: &mut HlsTarget,
    ) -> Result<HlsAccess, hls::Response> {
        if !self.gate.play_is_guarded(&target.app) {
            return Ok(HlsAccess::Serve);
        }
        let refused = |ctx: &Context, client, label, status| {
            Limits::refuse(ctx, proto::HLS, label, client);
            hls::Response::error(status, "access refused\n")
        };
        if let Some(grant) = &target.grant {
            return match self.gate.policy().verify_grant(
                grant,
                &target.app,
                &target.name,
                self.client,
                unix_ms(),
            ) {
                Ok(()) => Ok(HlsAccess::Serve),
                Err(refusal) => Err(refused(
                    &self.ctx,
                    self.client,
                    refusal.label(),
                    refusal.http_status(),
                )),
            };
        }
        let media_playlist = target.file.as_deref() == Some("media.m3u8");
        if target.file.is_some() && !media_playlist {
            let missing = sluice_auth::Refusal::Missing;
            return Err(refused(
                &self.ctx,
                self.client,
                missing.label(),
                missing.http_status(),
            ));
        }
        let ask = Ask {
            action: Action::Play,
            app: &target.app,
            stream: &target.name,
            query: &request.query,
            client: self.client,
            protocol: proto::HLS,
            secure: self.secure,
        };
        // The gate counts and logs its refusals.
        let pass = match self.gate.admit(ask).await {
            Ok(pass) => pass,
            Err(denied) => {
                return Err(hls::Response::error(
                    denied.http_status(),
                    denied.describe(),
                ));
            }
        };
        let bind = self
            .gate
            .policy()
            .rule(&target.app, Action::Play)
            .bind_address;
        let grant = self.gate.policy().mint_grant(
            &target.app,
            &pass.stream,
            bind.then_some(self.client),
            unix_ms(),
        );
        if media_playlist {
            use crate::player::url_segment;
            return Ok(HlsAccess::Redirect(format!(
                "/{}/{}/{grant}/media.m3u8",
                url_segment(&target.app),
                url_segment(&pass.stream)
            )));
        }
        // A webhook may have renamed the stream: the playlist is the new one's, its URIs
        // (relative, `NEW/g.../media.m3u8`) and grant too. HLS has no connection whose end
        // is the viewer's, so the pass (and a "done" hook) ends here.
        target.name = pass.stream;
        target.grant = Some(grant);
        Ok(HlsAccess::Serve)
    }

    /// Answers a request that is not HLS, and ends the connection (HTTP-FLV plays first).
    async fn respond(&mut self, request: &Request, route: Route) {
        let http10 = request.http10;
        let (app, name, head_only) = match route {
            Route::Play {
                app,
                name,
                head_only,
            } => (app, name, head_only),
            Route::Preflight => {
                // Web players that send Range or custom headers ask first.
                let response = Head::new(http10, "204 No Content")
                    .cors(&self.ctx)
                    .header("connection", "close")
                    .finish();
                return self.answer(&response).await;
            }
            Route::NotFound => {
                let response = plain(http10, "404 Not Found", None, "");
                return self.answer(&response).await;
            }
            // (HLS requests never come here: the request loop answers them.)
            Route::NotPlayable | Route::Hls { .. } => {
                let response = plain(http10, "404 Not Found", Some(&self.ctx), "not found\n");
                return self.answer(&response).await;
            }
            Route::MethodNotAllowed => {
                let response = Head::new(http10, "405 Method Not Allowed")
                    .header("allow", "GET,HEAD,OPTIONS")
                    .header("content-length", "0")
                    .header("connection", "close")
                    .finish();
                return self.answer(&response).await;
            }
            Route::BadRequest => {
                let response = plain(http10, "400 Bad Request", None, "bad request\n");
                return self.answer(&response).await;
            }
        };
        if !self.ctx.config.load().streams.app_allowed(&app) {
            self.ctx.metrics.refused(proto::HTTP_FLV, "unknown_app");
            let response = plain(
                http10,
                "404 Not Found",
                Some(&self.ctx),
                "application not served here\n",
            );
            return self.answer(&response).await;
        }
        let ask = Ask {
            action: Action::Play,
            app: &app,
            stream: &name,
            query: &request.query,
            client: self.client,
            protocol: proto::HTTP_FLV,
            secure: self.secure,
        };
        // Held while playing: its "done" hook is sent when it goes. (The gate counts and
        // logs refusals.)
        let pass = match self.gate.admit(ask).await {
            Ok(pass) => pass,
            Err(denied) => {
                let text = format!("{}\n", denied.describe());
                let response = plain_with(
                    http10,
                    denied.http_status(),
                    Some(&self.ctx),
                    denied.retry_after(),
                    &text,
                );
                return self.answer(&response).await;
            }
        };
        self.ctx
            .metrics
            .connections
            .get_or_create(&[("protocol", proto::HTTP_FLV)])
            .inc();
        let close = self
            .play(StreamKey::new(&app, &pass.stream), http10, head_only)
            .await;
        drop(pass);
        self.ctx.metrics.closed(proto::HTTP_FLV, close.label());
        debug!(reason = close.label(), "http-flv connection closed");
    }

    /// Reads the request head into a buffer that starts small and grows to [`MAX_HEAD`].
    async fn read_head(&mut self) -> Result<Request, HeadError> {
        if self.buf.is_empty() {
            self.buf.resize(HEAD_BUF, 0);
        }
        loop {
            // A pipelined request may already be here.
            if self.filled > 0
                && let Some(request) = parse_request(&self.buf[..self.filled])?
            {
                return Ok(request);
            }
            if self.filled == self.buf.len() {
                if self.buf.len() >= MAX_HEAD {
                    return Err(HeadError::TooLarge);
                }
                self.buf.resize((self.buf.len() * 2).min(MAX_HEAD), 0);
            }
            let n = match io::read(&self.socket, &mut self.buf[self.filled..]).await {
                Ok(0) => return Err(HeadError::Closed),
                Ok(n) => n,
                Err(_) => return Err(HeadError::Io),
            };
            self.counters.bytes_in.inc_by(n as u64);
            self.filled += n;
        }
    }

    /// The player page or one of its assets, when the request is for one (see
    /// [`crate::player`]).
    async fn player_page(&self, request: &Request) -> Option<BytesMut> {
        let head_only = match request.method {
            Method::Get => false,
            Method::Head => true,
            _ => return None,
        };
        let found = crate::player::respond(
            &request.path,
            &request.query,
            &self.ctx.config.load().player,
        )?;
        let (status, content_type, body) = match found.body.load().await {
            Ok(body) => (found.status, found.content_type, body),
            Err(e) => {
                info!(error = %e, path = request.path, "player asset not readable");
                ("404 Not Found", "text/plain; charset=utf-8", Bytes::new())
            }
        };
        let mut response = Head::new(request.http10, status)
            .header("content-type", content_type)
            .header("cache-control", found.cache_control)
            .header("content-length", &body.len().to_string())
            .header("connection", "close")
            .finish();
        if !head_only {
            response.put_slice(&body);
        }
        Some(response)
    }

    async fn answer(&mut self, response: &[u8]) {
        let deadline = self.ctx.config.load().http.request_timeout();
        answer(&self.socket, response, &self.counters, deadline).await;
    }

    /// Waits for the stream's first frames (a 404 if none come), then streams it.
    async fn play(&mut self, key: StreamKey, http10: bool, head_only: bool) -> Close {
        self.buf = Vec::new();
        self.filled = 0;
        let ctx = self.ctx.clone();
        let chunked = !http10;
        let wire = if chunked {
            Wire::FlvChunked
        } else {
            Wire::FlvPlain
        };
        let idle = ctx.config.load().http.idle_timeout();
        let watch = ctx.watch(&key, &Via::default());
        let mut viewer = Viewer::new(ctx.clone(), self.socket.clone(), watch, wire, idle);
        match viewer.first_frames(&mut Quiet).await {
            Ok(()) => {}
            Err(Ended::Close(Close::NoPublisher)) => {
                // The stream is forgotten before the answer, when nobody else watches it.
                drop(viewer);
                return self.not_found(http10).await;
            }
            Err(Ended::Close(Close::Shutdown)) => {
                drop(viewer);
                let response = plain(http10, "503 Service Unavailable", None, "");
                self.answer(&response).await;
                return Close::Shutdown;
            }
            Err(Ended::Close(close)) => return close,
            Err(Ended::Finished) => return Close::PeerClosed,
        }
        info!(%key, "http-flv viewer");
        let mut head = Head::new(http10, "200 OK")
            .header("content-type", "video/x-flv")
            .header("cache-control", "no-cache, no-store")
            .header("pragma", "no-cache")
            .cors(&ctx)
            .header("connection", "close");
        if chunked {
            head = head.header("transfer-encoding", "chunked");
        }
        let mut preamble = head.finish();
        if head_only {
            drop(viewer);
            self.answer(&preamble).await;
            return Close::HeadRequest;
        }
        let (has_audio, has_video) = tracks(viewer.pending());
        let file_header = sluice_media::flv::encode_file_header(has_audio, has_video);
        if chunked {
            // This chunk stays open: each tag's size line starts by ending the one before.
            let _ = write!(preamble, "{:x}\r\n", file_header.len());
        }
        preamble.put_slice(&file_header);
        match timeout(idle, io::write_all(&self.socket, &preamble)).await {
            Ok(Ok(())) => {
                self.counters.bytes_out.inc_by(preamble.len() as u64);
            }
            Ok(Err(_)) => return Close::Io,
            Err(_) => return Close::WriteStalled,
        }
        drop(preamble);

        let close = match viewer.play(&mut Quiet).await {
            Ended::Close(close) => close,
            Ended::Finished => Close::PeerClosed,
        };
        drop(viewer);
        debug!(reason = close.label(), stream = %key, "http-flv viewer left");
        // The goodbye: the body's end where it has one, then the connection's.
        if matches!(close, Close::Shutdown | Close::StreamEnded) {
            let counters = &self.counters;
            let socket = &self.socket;
            let _ = timeout(GOODBYE, async {
                if chunked {
                    io::write_all(socket, LAST_CHUNK).await?;
                    counters.bytes_out.inc_by(LAST_CHUNK.len() as u64);
                }
                io::shutdown_write(socket)
            })
            .await;
        }
        close
    }

    async fn not_found(&mut self, http10: bool) -> Close {
        let response = plain(
            http10,
            "404 Not Found",
            Some(&self.ctx),
            "stream not found\n",
        );
        self.answer(&response).await;
        Close::NoPublisher
    }
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

    fn request(method: Method, path: &str) -> Request {
        Request {
            method,
            path: path.to_owned(),
            query: String::new(),
            http10: false,
            keep_alive: true,
            head_len: 0,
        }
    }

    #[test]
    fn a_request_head_is_parsed_once_complete() {
        let head = b"GET /live/a.flv?token=x HTTP/1.1\r\nHost: x\r\n\r\n";
        for end in [0, 10, head.len() - 1] {
            assert_eq!(parse_request(&head[..end]), Ok(None), "{end} bytes");
        }
        assert_eq!(
            parse_request(head),
            Ok(Some(Request {
                query: "token=x".into(),
                head_len: head.len(),
                ..request(Method::Get, "/live/a.flv")
            }))
        );
        // HTTP/1.0 (never kept alive), and the absolute form a proxy gets.
        assert_eq!(
            parse_request(b"HEAD http://edge:8080/live/a.flv?x HTTP/1.0\r\n\r\n"),
            Ok(Some(Request {
                method: Method::Head,
                path: "/live/a.flv".into(),
                query: "x".into(),
                http10: true,
                keep_alive: false,
                head_len: 47,
            }))
        );
        // `connection: close` among other tokens ends a kept-alive connection; what follows
        // the head (a pipelined request) is not part of it.
        let pipelined = b"GET /a/b.m3u8 HTTP/1.1\r\nConnection: TE, Close\r\n\r\nGET /a/b";
        let parsed = parse_request(pipelined).expect("valid").expect("complete");
        assert!(!parsed.keep_alive);
        assert_eq!(parsed.head_len, pipelined.len() - 8);
        assert_eq!(
            parse_request(b"OPTIONS HTTPS://edge HTTP/1.1\r\n\r\n").map(|r| r.map(|r| r.path)),
            Ok(Some("/".into()))
        );
        assert_eq!(
            parse_request(b"DELETE /live/a.flv HTTP/1.1\r\n\r\n").map(|r| r.map(|r| r.method)),
            Ok(Some(Method::Other))
        );
    }

    #[test]
    fn bad_and_oversized_heads_are_errors() {
        assert_eq!(
            parse_request(b"\x03\x00\x00\x00 not http\r\n\r\n"),
            Err(HeadError::Bad)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Bad)
        );
        assert_eq!(
            parse_request(b"GET /a b HTTP/1.1\r\n\r\n"),
            Err(HeadError::Bad)
        );
        let mut many = b"GET /live/a.flv HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many), Err(HeadError::TooLarge));
    }

    #[test]
    fn hls_routes_are_the_playlist_and_files_under_the_name() {
        let hls = |name: &str, file: Option<&str>| Route::Hls {
            app: "live".into(),
            name: name.into(),
            grant: None,
            file: file.map(Into::into),
            head_only: false,
        };
        assert_eq!(route(&request(Method::Get, "/live/a.m3u8")), hls("a", None));
        assert_eq!(
            route(&request(Method::Get, "/live/a/media.m3u8")),
            hls("a", Some("media.m3u8"))
        );
        assert_eq!(
            route(&request(Method::Get, "/live/my%20cam/part-3.1.m4s")),
            hls("my cam", Some("part-3.1.m4s"))
        );
        for path in ["/live/%2e%2e/media.m3u8", "/live/a/..", "/live/./x"] {
            assert_eq!(
                route(&request(Method::Get, path)),
                Route::BadRequest,
                "{path}"
            );
        }
        // Four segments: only under a grant (`g.` + token).
        assert_eq!(
            route(&request(Method::Get, "/live/a/g.1.-.xyz/part-3.1.m4s")),
            Route::Hls {
                app: "live".into(),
                name: "a".into(),
                grant: Some("g.1.-.xyz".into()),
                file: Some("part-3.1.m4s".into()),
                head_only: false,
            }
        );
        for path in ["/live/a/b/c", "/live//x", "/live/a/", "/live/a/g.1/b/c"] {
            assert_eq!(
                route(&request(Method::Get, path)),
                Route::NotFound,
                "{path}"
            );
        }
        assert_eq!(
            route(&request(Method::Get, "/live/a%2Fb/media.m3u8")),
            Route::NotPlayable
        );
        assert_eq!(
            route(&request(Method::Get, "/live/.m3u8")),
            Route::NotPlayable
        );
    }

    #[test]
    fn routes_are_app_and_flv_name() {
        let play = |app: &str, name: &str, head_only| Route::Play {
            app: app.into(),
            name: name.into(),
            head_only,
        };
        assert_eq!(
            route(&request(Method::Get, "/live/a.flv")),
            play("live", "a", false)
        );
        assert_eq!(
            route(&request(Method::Head, "/live/a.flv")),
            play("live", "a", true)
        );
        assert_eq!(
            route(&request(Method::Get, "/live/my%20cam.flv")),
            play("live", "my cam", false)
        );
        // A stray % stays as it is.
        assert_eq!(
            route(&request(Method::Get, "/live/100%.flv")),
            play("live", "100%", false)
        );
        assert_eq!(
            route(&request(Method::Options, "/live/a.flv")),
            Route::Preflight
        );
        assert_eq!(
            route(&request(Method::Other, "/live/a.flv")),
            Route::MethodNotAllowed
        );
        for path in [
            "/",
            "/live",
            "/live/",
            "//a.flv",
            "/live/a.flv/",
            "/live/a/b/c.flv",
        ] {
            assert_eq!(
                route(&request(Method::Get, path)),
                Route::NotFound,
                "{path}"
            );
            assert_eq!(
                route(&request(Method::Other, path)),
                Route::NotFound,
                "{path}"
            );
        }
        for path in ["/live/a.mp4", "/live/.flv", "/live/a%2Fb.flv"] {
            assert_eq!(
                route(&request(Method::Get, path)),
                Route::NotPlayable,
                "{path}"
            );
        }
        assert_eq!(
            route(&request(Method::Get, "/live/%ff.flv")),
            Route::BadRequest
        );
    }

    #[test]
    fn answers_have_a_length_and_close() {
        let text = plain(true, "404 Not Found", None, "stream not found\n");
        assert_eq!(
            &text[..],
            b"HTTP/1.0 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\n\
              content-length: 17\r\nconnection: close\r\n\r\nstream not found\n"
        );
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
