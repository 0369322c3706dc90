//! Placeholder while the QUIC relay is being written (replaced wholesale).

use std::sync::Arc;
use std::time::Duration;

use sluice_core::cluster::{ClusterConfig, Via};
use sluice_proto::Context;

use crate::source::{PullError, Pulled};

/// The QUIC relay endpoint.
#[derive(Debug)]
pub struct QuicRelay;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RelayError(String);

impl QuicRelay {
    /// Builds the endpoint.
    pub fn new(_cluster: &ClusterConfig) -> Result<Arc<QuicRelay>, RelayError> {
        Err(RelayError("QUIC relay not built yet".to_owned()))
    }
    /// Serves pulls from other nodes until shutdown.
    pub async fn serve(self: Arc<Self>, _ctx: Arc<Context>) {}
    /// Opens a pull.
    pub async fn pull(
        &self,
        _addr: &str,
        _app: &str,
        _name: &str,
        _via: &Via,
        _deadline: Duration,
    ) -> Result<QuicSource, PullError> {
        Err(PullError::Connect("QUIC relay not built yet".to_owned()))
    }
}

/// A pull over the relay.
#[derive(Debug)]
pub struct QuicSource;

impl QuicSource {
    /// The next frame.
    pub async fn next(&mut self) -> Result<Pulled, PullError> {
        Err(PullError::Closed)
    }
}
