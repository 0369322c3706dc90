//! A publisher that pushes the fixture to one URL in real time, looping it with increasing
//! timestamps (sequence headers and metadata on the first loop only), like `sluice-bench`'s,
//! without the send-time ring: the cluster benches match by event, not by frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_runtime::client::RtmpUrl;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fixture::Fixture;
use crate::media::Class;
use crate::paced;

/// Publishes until `stop` or `until`; `keyframes` counts the video keyframes written. An
/// error (the server went away) ends it; the caller decides whether that matters.
pub async fn run(
    url: RtmpUrl,
    fixture: Arc<Fixture>,
    connect_timeout: Duration,
    until: Instant,
    keyframes: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    paced::publish(&url, &fixture, connect_timeout, until, &stop, |due, _| {
        if due.tag.class == (Class::Video { key: true }) {
            keyframes.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await
}

/// Stops the publishers started under `stop`: each gets up to 5 s to close its connection,
/// then whatever is left is aborted.
pub async fn stop_all<T: 'static>(stop: &CancellationToken, publishers: &mut JoinSet<T>) {
    stop.cancel();
    while tokio::time::timeout(Duration::from_secs(5), publishers.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    publishers.abort_all();
}
