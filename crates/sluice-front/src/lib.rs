//! Sluice's front ends: each accepts connections, negotiates its protocol's session, takes
//! publishers' media into their streams, and hands viewers to the runtime's one viewer
//! driver (`sluice_runtime::viewer`) with their wire format. None has a viewer loop of its
//! own.
//!
//! - [`rtmp_conn`]: the RTMP listener (handshake, chunk streams and commands through the
//!   sans-IO `sluice-rtmp`; publish and play).
//! - [`http`]: the HTTP listener (HTTP-FLV playback; HLS requests on kept-alive connections).
//! - [`hls`]: HLS and LL-HLS: one segmenter per stream, parts cached, requests answered or
//!   held for blocking reloads.
//! - [`player`]: the web player page the HTTP listener serves (hls.js / mpegts.js).
//! - [`gate`]: who may publish and play (the `[auth]` rules, then webhooks), asked by every
//!   front end.
//! - [`webhook`]: access-control webhooks (`on_publish`, `on_play` and their `_done`
//!   notifications): the HTTP client, its bounds, the cache of answers.
//! - [`tls`]: the RTMPS and HTTPS listeners and their certificate; each decrypted connection
//!   is served by the front end above it. [`h2`]: HTTP/2 on the HTTPS listener.
//! - [`limit`]: a protocol's connection limit, shared by its clear-text and TLS listeners.

use std::sync::Arc;

use sluice_runtime::Context;

pub mod gate;
pub mod h2;
pub mod hls;
pub mod http;
pub mod limit;
pub mod player;
pub mod rtmp_conn;
pub mod tls;
pub mod webhook;

/// What every connection of this node's front ends shares.
#[derive(Debug, Clone)]
pub struct Front {
    /// The node's shared state.
    pub ctx: Arc<Context>,
    /// Access control.
    pub gate: Arc<gate::Gate>,
    /// HLS streams.
    pub hls: Arc<hls::Hls>,
}
