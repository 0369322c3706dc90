//! Sluice's network front ends on tokio: the RTMP listener (ingest and play), HTTP-FLV
//! playback, and an RTMP client connector (origin pulls, tests, the load generator).
//!
//! Protocol logic lives in the sans-IO crates; this crate owns sockets, deadlines, admission
//! and shutdown. One task per connection; a semaphore permit moves into it at accept.

pub mod accept;
pub mod client;
mod context;
mod fanout;
pub mod flv;
pub mod io;
mod pacing;
pub mod rtmp;

pub use context::Context;
