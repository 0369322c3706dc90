//! HTTP/2 on the HTTPS listener (ALPN `h2`; LL-HLS players want it).
//!
//! hyper's HTTP/2 server speaks to the client. Each request is handed, as an HTTP/1.1
//! request on a socket pair of its own (`sluice_runtime::bridge::pair`), to the plain HTTP
//! handler ([`crate::http`]), through hyper's HTTP/1.1 client on the other end; the response
//! goes back to the client as it arrives, frame by frame and unbuffered: an HTTP-FLV body
//! never ends, and an LL-HLS blocking reload is held until its part exists. So HTTP/2 serves
//! exactly the routes, headers and status codes of HTTP/1.1, with no second implementation
//! of any of them, and each request's viewer still sits on a kernel socket the shared writer
//! can write to. Back-pressure carries through: HTTP/2 flow control stops the reads of the
//! response, the pair's socket fills, and the viewer driver sees a full socket.
//!
//! Hop-by-hop headers (`connection`, `transfer-encoding`, ...) are dropped both ways. Every
//! request takes a place under the HTTP listener's connection limit (503 without one), and a
//! connection carries at most [`MAX_STREAMS`] at once. A connection without a request for
//! `http.idle_timeout_ms` is closed with a GOAWAY, and so is every connection at shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use sluice_core::metrics::proto;
use sluice_runtime::bridge;
use sluice_runtime::close::GOODBYE;
use sluice_runtime::limits::Limits;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug};

use crate::Front;
use crate::limit::{Admission, Limit};

/// Streams one HTTP/2 connection may have open at once.
pub const MAX_STREAMS: u32 = 100;

/// A response body: the plain handler's, streamed, or a short one of our own.
type Body = BoxBody<Bytes, hyper::Error>;

/// Headers that concern one hop (RFC 9110 7.6.1; HTTP/2 forbids them).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Serves one HTTP/2 connection until the client or the idle timeout ends it, or shutdown
/// (a GOAWAY; streams in flight get their goodbye). `admission` is the connection's place;
/// each request takes one more from `limit`.
pub(crate) async fn serve(
    front: Front,
    limit: Limit,
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    admission: Admission,
) {
    let ctx = front.ctx.clone();
    let activity = Arc::new(Activity::default());
    let proxy = Arc::new(Proxy {
        front,
        limit,
        peer,
        conn: ctx.next_conn_id(),
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn(move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.forward(request).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(Tracked(ctx.tracker.clone()))
        .max_concurrent_streams(MAX_STREAMS)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let idle = async {
        let mut seen = activity.requests.load(Ordering::Relaxed);
        loop {
            sleep(ctx.config.load().http.idle_timeout()).await;
            let now = activity.requests.load(Ordering::Relaxed);
            if now == seen && activity.open.load(Ordering::Relaxed) == 0 {
                debug!("idle HTTP/2 connection closed");
                return;
            }
            seen = now;
        }
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = ctx.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            timeout(2 * GOODBYE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
        () = idle => {
            conn.as_mut().graceful_shutdown();
            timeout(2 * GOODBYE, conn.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(error) = result {
        debug!(%error, "HTTP/2 connection ended");
    }
    drop(admission);
}

/// What a connection's requests share.
struct Proxy {
    front: Front,
    limit: Limit,
    peer: SocketAddr,
    /// The id every request's handler runs under: one client connection, one HLS viewer.
    conn: u64,
    activity: Arc<Activity>,
}

/// A connection's requests: how many were made, how many are being answered.
#[derive(Debug, Default)]
struct Activity {
    requests: AtomicU64,
    open: AtomicUsize,
}

/// Counts one open request until dropped.
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proxy {
    /// Answers one request through the plain HTTP handler.
    async fn forward(&self, request: Request<Incoming>) -> Response<Body> {
        let open = Open::new(&self.activity);
        let ctx = &self.front.ctx;
        let Some(admission) = self.limit.admit_stream() else {
            Limits::refuse(ctx, proto::HTTP_FLV, "max_connections", self.peer.ip());
            return short(StatusCode::SERVICE_UNAVAILABLE, "");
        };
        let (plain, pump_end) = match bridge::pair() {
            Ok(pair) => pair,
            Err(error) => {
                debug!(%error, "no socket pair for an HTTP/2 request");
                return short(StatusCode::SERVICE_UNAVAILABLE, "");
            }
        };
        crate::http::spawn_handler(&self.front, admission, plain, self.peer, true, self.conn);
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(pump_end)).await {
                Ok(client) => client,
                Err(error) => {
                    debug!(%error, "HTTP/1.1 client set-up failed");
                    return short(StatusCode::BAD_GATEWAY, "bad gateway\n");
                }
            };
        // Drives the request and the response body; ends when the handler closes (after
        // its answer: every request asks `connection: close`) or the body is dropped.
        ctx.tracker.spawn(
            async move {
                if let Err(error) = conn.await {
                    debug!(%error, "HTTP/1.1 leg ended");
                }
                drop(open);
            }
            .in_current_span(),
        );
        let response = match sender.send_request(http1_request(request)).await {
            Ok(response) => response,
            Err(error) => {
                debug!(%error, "HTTP/1.1 leg failed");
                return short(StatusCode::BAD_GATEWAY, "bad gateway\n");
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_2;
        Response::from_parts(parts, body.boxed())
    }
}

/// The HTTP/1.1 form of an HTTP/2 request: origin-form target, `host` from the authority,
/// no hop-by-hop headers, `connection: close`, no body (the plain handler reads none).
fn http1_request(request: Request<Incoming>) -> Request<Empty<Bytes>> {
    let (mut parts, _body) = request.into_parts();
    let authority = parts.uri.authority().cloned();
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".parse(), |p| p.as_str().parse())
        .unwrap_or_default();
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST)
        && let Some(value) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, value);
    }
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    Request::from_parts(parts, Empty::new())
}

/// Removes the hop-by-hop headers and those a `connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().copied().map(HeaderName::from_static) {
        headers.remove(name);
    }
    for name in named {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// A short answer of our own.
fn short(status: StatusCode, text: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if !text.is_empty() {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// Runs hyper's tasks (one per HTTP/2 stream) on the node's tracker, so shutdown waits for
/// them.
#[derive(Debug, Clone)]
struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future.in_current_span());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-private"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-private", "1"),
            ("content-type", "video/x-flv"),
            ("cache-control", "no-cache"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["cache-control", "content-type"]);
    }
}
