//! Admission at accept: a protocol's `max_connections`, one count for its clear-text and TLS
//! listeners together.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections a protocol admits at once. Clones share the count; a permit moves into the
/// connection's task and frees its place when the task ends.
#[derive(Debug, Clone)]
pub struct Limit(Arc<Semaphore>);

impl Limit {
    /// Admits `max` connections at once.
    pub fn new(max: usize) -> Self {
        Limit(Arc::new(Semaphore::new(max)))
    }

    /// A place for one more connection, if there is one.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}
