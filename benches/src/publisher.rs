//! The publisher: pushes the fixture to the server in real time with our RTMP client,
//! looping it with increasing timestamps (sequence headers and metadata only on the first
//! loop), and records every coded frame's send instant for the viewers to match.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use sluice_runtime::client::RtmpUrl;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fixture::Fixture;
use crate::media::Class;
use crate::paced;
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
    // `give_up` is the run's end plus a margin.
    paced::publish(
        &url,
        &fixture,
        connect_timeout,
        give_up,
        &stop,
        |due, at| {
            let sent = (clock.now_ns(), Clock::real_ns());
            let mut sh = sh.borrow_mut();
            if sh.in_window {
                let lag = Instant::now().saturating_duration_since(at).as_micros() as u64;
                sh.publisher_lag_max_us = sh.publisher_lag_max_us.max(lag);
            }
            let size = due.tag.payload.len() as u32;
            match due.tag.class {
                Class::Video { key } => {
                    sh.video.push(due.ts, size, key, sent);
                    sh.keyframes_sent += u64::from(key);
                }
                Class::Audio => {
                    sh.audio.push(due.ts, size, false, sent);
                }
                _ => {}
            }
        },
    )
    .await
}
