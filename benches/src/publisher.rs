//! The publisher: pushes the fixture to the server in real time with our RTMP client,
//! looping it with increasing timestamps (sequence headers and metadata only on the first
//! loop), and records every coded frame's send instant for the viewers to match.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use sluice_proto::client::{Client, RtmpUrl};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::fixture::{Due, Fixture};
use crate::media::Class;
use crate::state::{Clock, Shared};

/// Publishes until `stop` or `give_up`, whichever comes first; an error ends the run's
/// publishing (the caller reports it).
pub async fn run(
    url: RtmpUrl,
    fixture: Rc<Fixture>,
    clock: Clock,
    sh: Rc<RefCell<Shared>>,
    connect_timeout: Duration,
    give_up: Instant,
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
    // Bounded by `give_up` (the run's end plus a margin) as well as by `stop`.
    for Due { after, ts, tag } in fixture.looped() {
        let due = start + after;
        if due > give_up {
            return Ok(());
        }
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = client.close().await;
                return Ok(());
            }
            _ = sleep_until(due) => {}
        }
        {
            let at = (clock.now_ns(), Clock::real_ns());
            let mut sh = sh.borrow_mut();
            if sh.in_window {
                let lag = Instant::now().saturating_duration_since(due).as_micros() as u64;
                sh.publisher_lag_max_us = sh.publisher_lag_max_us.max(lag);
            }
            let size = tag.payload.len() as u32;
            match tag.class {
                Class::Video { key } => {
                    sh.video.push(ts, size, key, at);
                    sh.keyframes_sent += u64::from(key);
                }
                Class::Audio => {
                    sh.audio.push(ts, size, false, at);
                }
                _ => {}
            }
        }
        client
            .send_media(tag.type_id, ts, tag.payload.clone())
            .await
            .context("sending media")?;
    }
    Ok(())
}
