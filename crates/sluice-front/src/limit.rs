//! Admission at accept: a protocol's `max_connections`, one count for its clear-text and TLS
//! listeners together, and `limits.max_connections_per_address`.

use std::net::IpAddr;
use std::sync::Arc;

use sluice_runtime::Context;
use sluice_runtime::limits::{AddressSlot, Limits};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections a protocol admits at once. Clones share the count; an [`Admission`] moves
/// into the connection's task and frees its place when the task ends.
#[derive(Debug, Clone)]
pub struct Limit(Arc<Semaphore>);

/// A connection's place under its protocol's limit and, for a client connection, under its
/// address's; both are given back when it is dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _slot: Option<AddressSlot>,
}

impl Limit {
    /// Admits `max` connections at once.
    pub fn new(max: usize) -> Self {
        Limit(Arc::new(Semaphore::new(max)))
    }

    /// Admits a client connection from `client`, or refuses it: counted in
    /// `sluice_connections_refused_total{protocol, reason}` and logged once per address and
    /// interval; the reason is returned.
    pub fn admit(
        &self,
        ctx: &Arc<Context>,
        protocol: &'static str,
        client: IpAddr,
    ) -> Result<Admission, &'static str> {
        let refuse = |reason| {
            Limits::refuse(ctx, protocol, reason, client);
            Err(reason)
        };
        let Ok(permit) = self.0.clone().try_acquire_owned() else {
            return refuse("max_connections");
        };
        match Limits::connection(ctx, client) {
            Ok(slot) => Ok(Admission {
                _permit: permit,
                _slot: Some(slot),
            }),
            Err(limit) => refuse(limit.label()),
        }
    }

    /// A place for one more stream of an admitted connection (an HTTP/2 request), which
    /// counts under the protocol's limit but not again under its address's.
    pub fn admit_stream(&self) -> Option<Admission> {
        let permit = self.0.clone().try_acquire_owned().ok()?;
        Some(Admission {
            _permit: permit,
            _slot: None,
        })
    }
}
