//! Sluice's runtime on tokio: what every front end and the cluster build on.
//!
//! - [`Context`]: the node's shared state (registry, live config, metrics, shutdown, the
//!   shared writers, the pull machinery).
//! - [`accept`]: the accept loop every listener shares.
//! - [`limits`]: per-address and per-node limits, and refusals logged once per interval.
//! - [`bridge`]: a kernel socket for a connection decrypted in process (TLS): a socket pair
//!   whose one end a plain front end serves, and the pump between the other and the client.
//! - [`io`]: non-blocking vectored writes of shared `Bytes` to a socket shared with a writer.
//! - [`viewer`]: the one viewer driver, generic over a front end's session ([`viewer::Peer`])
//!   and a wire format ([`wire::Wire`]); front ends negotiate, then hand viewers to it.
//! - `pacing` and `fanout` (private): batching windows and socket options; the shared
//!   writer of caught-up viewers.
//! - [`close`]: why a connection ended, one set of reasons for every front end.
//! - [`client`]: an RTMP client connector (origin pulls, tests, the load generator).
//!
//! Protocol logic lives in the sans-IO crates (`sluice-rtmp`, `sluice-media`); this crate
//! owns sockets, deadlines and shutdown.

pub mod accept;
pub mod bridge;
pub mod client;
pub mod close;
mod context;
mod fanout;
pub mod io;
pub mod limits;
mod pacing;
pub mod viewer;
pub mod wire;

pub use context::Context;
