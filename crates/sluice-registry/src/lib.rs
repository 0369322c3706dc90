//! Sluice's stream registry on etcd: which origin publishes which stream, and which nodes
//! make the cluster (`[cluster.registry]`).
//!
//! - [`view`]: the key layout and the in-memory view of the registry (sans-IO: entries are
//!   parsed and applied here, unit-tested without etcd).
//! - [`service`]: the etcd session (tokio): this node's lease, its node and stream keys, the
//!   watch that keeps the view current, lookups with a deadline, reconnection with backoff.
//!
//! The pull manager sees the registry as a [`Directory`](sluice_core::topology::Directory):
//! candidates from the view first, then the static upstreams.

pub mod service;
pub mod view;

pub use service::{ClusterJson, ClusterStreamJson, Local, Registry};
pub use view::{Layout, NodeEntry, StreamEntry, View};
