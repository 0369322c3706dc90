//! Publishing the fixture in real time: connect, metadata, then each tag at its due time,
//! looping with increasing timestamps (sequence headers and metadata on the first loop
//! only). Shared by `sluice-bench` and `sluice-cluster-bench`, which differ only in what
//! they note about each tag.

use std::time::Duration;

use anyhow::Context;
use sluice_runtime::client::{Client, RtmpUrl};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::fixture::{Due, Fixture};

/// Publishes `fixture` to `url` until `stop` or `until`, calling `on_tag` with each tag
/// and its due instant just before sending it. An error (the server went away) ends it;
/// the caller decides whether that matters.
pub async fn publish(
    url: &RtmpUrl,
    fixture: &Fixture,
    connect_timeout: Duration,
    until: Instant,
    stop: &CancellationToken,
    mut on_tag: impl FnMut(&Due<'_>, Instant),
) -> anyhow::Result<()> {
    let mut client = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = Client::publish(url, connect_timeout) => c.context("publish")?,
    };
    if let Some(meta) = &fixture.metadata {
        client
            .send_metadata(meta.clone())
            .await
            .context("sending metadata")?;
    }
    let start = Instant::now();
    // Bounded by `until` as well as by `stop`.
    for tag in fixture.looped() {
        let due = start + tag.after;
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
        on_tag(&tag, due);
        client
            .send_media(tag.tag.type_id, tag.ts, tag.tag.payload.clone())
            .await
            .context("sending media")?;
    }
    Ok(())
}
