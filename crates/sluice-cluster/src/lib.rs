//! Sluice's cluster: an edge pulls the streams its viewers ask for and it lacks, once per
//! stream, from upstream nodes (any RTMP server, or another Sluice over the QUIC relay), and
//! fails over between them.
//!
//! - [`pull`]: the pull manager (single flight per stream, failover, splicing, misses) — the
//!   [`Puller`](sluice_core::topology::Puller) the front ends ask.
//! - [`health`]: per-upstream health and backoff, shared by all pulls of the node.
//! - [`source`]: one attempt on one upstream, whatever the transport.
//! - [`quic`]: the QUIC relay endpoint (serving other nodes and pulling from them).

pub mod health;
pub mod pull;
pub mod quic;
pub mod source;

pub use pull::PullManager;
