//! Sluice's streams: the registry of live streams, each a GOP cache in a shared frame ring
//! read by viewer cursors; the typed config; the metrics every front end reports into.
//!
//! No sockets here: front ends (sluice-front, through sluice-runtime) attach publishers and
//! viewers.
//!
//! Who owns what: the connection task of a stream's publisher is the only writer of that
//! stream (it parses each message and appends it, under a short lock); viewers' tasks read
//! with cursors. DESIGN.md sketches shard workers that take raw messages from ingest tasks
//! over bounded queues and append for them; measured, that split costs more than it saves,
//! so ingest stays inline (`benches/benches/ingest_handoff.rs`, fixture frames, 2 cores):
//!
//! | ingest path | per frame | vs inline |
//! |---|---|---|
//! | inline in the connection task | 0.41 µs | 1× |
//! | handoff over an `ArrayQueue` to a worker, two cores | 0.61 µs (+ a second core busy) | 1.5× |
//! | the same, server pinned to one core (the benchmark set-up) | 4.7 µs | 11× |
//!
//! Ingest is a rounding error next to fan-out (a 2.5 Mbit/s stream is ~75 frames/s, 30 µs
//! of CPU per second), and what the split was for holds without it: a publisher faster than
//! ingest is slowed by TCP flow control, because its connection reads only as fast as it
//! appends, and memory is bounded by the ring's byte budget.

pub mod config;
pub mod metrics;
pub mod registry;
pub mod schedule;
pub mod stream;
pub mod topology;

pub use config::Config;
pub use registry::{Publisher, Registry};
pub use schedule::{Drops, Schedule, StartAt};
pub use stream::{CacheSettings, Cursor, ReadState, Stream, StreamKey, Tail};
