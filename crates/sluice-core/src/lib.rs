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
//! Measured end to end on one core with many streams too (`benches/streams.sh`, 720p30
//! 2.55 Mbit/s streams, RTMP viewers; benches/README.md has the table):
//!
//! | streams x viewers | fan-out % of a core per Gbit/s (low-latency / efficient) | ingest per frame |
//! |---|---|---|
//! | 1 x 1,000 | 11.1 / 3.4 | 48 µs |
//! | 20 x 50 | 11.2 / 4.2 | 22 µs |
//! | 200 x 5 | 11.3 / 6.0 | 15 µs |
//!
//! Fan-out costs the same however many streams deliver the bits (each stream's shared writer
//! does the writes either way), and ingest per frame falls as streams are added. Of those
//! 15–48 µs, parse and append are 0.41; the rest is the publisher's socket (its wake-up,
//! `recv` and task poll), which a shard worker would not take away, while the handoff would
//! be added to it. So there is no worker pool. What the split was for holds without it: a
//! publisher faster than ingest is slowed by TCP flow control, because its connection reads
//! only as fast as it appends, and memory is bounded by the ring's byte budget.

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
