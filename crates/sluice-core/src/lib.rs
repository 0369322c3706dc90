//! Sluice's streams: the registry of live streams, each a GOP cache in a shared frame ring
//! read by viewer cursors; the typed config; the metrics every front end reports into.
//!
//! No sockets here: front ends (sluice-proto) attach publishers and viewers.

pub mod config;
pub mod metrics;
pub mod registry;
pub mod schedule;
pub mod stream;

pub use config::Config;
pub use registry::{Publisher, Registry};
pub use schedule::{Drops, Schedule, StartAt};
pub use stream::{CacheSettings, Cursor, ReadState, Stream, StreamKey};
