//! A publisher that pushes the fixture to one URL in real time, looping it with increasing
//! timestamps (sequence headers and metadata on the first loop only), like `sluice-bench`'s,
//! without the send-time ring: the cluster benches match by event, not by frame.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use sluice_proto::client::{Client, RtmpUrl};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::fixture::{Due, Fixture};
use crate::media::Class;

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
    let mut client = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = Client::publish(&url, connect_timeout) => c.context("publish")?,
    };
    if let Some(meta) = &fixture.metadata {
        client
            .send_metadata(meta.clone())
            .await
            .context("sending metadata")?;
    }
    let start = Instant::now();
    // Bounded by `until` as well as by `stop`.
    for Due { after, ts, tag } in fixture.looped() {
        let due = start + after;
        if due > until {
            let _ = client.close().await;
            return Ok(());
        }
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = client.close().await;
                return Ok(());
            }
            _ = sleep_until(due) => {}
        }
        client
            .send_media(tag.type_id, ts, tag.payload.clone())
            .await
            .context("sending media")?;
        if tag.class == (Class::Video { key: true }) {
            keyframes.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
