//! The publishers: each pushes the fixture to the server in real time with our RTMP client,
//! looping it with increasing timestamps (sequence headers and metadata only on the first
//! loop), and records every coded frame's send instant in its stream's rings for the
//! viewers to match.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use sluice_runtime::client::RtmpUrl;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::fixture::Fixture;
use crate::media::Class;
use crate::paced;
use crate::state::{Clock, Shared};

/// Time between the fixture's first two keyframes, ms (one loop's length with a single
/// keyframe): publishers whose starts spread over it have their keyframes spread over a GOP.
pub fn keyframe_interval_ms(fixture: &Fixture) -> u32 {
    let mut keys = fixture
        .tags
        .iter()
        .filter(|t| t.class == Class::Video { key: true })
        .map(|t| t.ts);
    match (keys.next(), keys.next()) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => fixture.loop_ms,
    }
}

/// What every publisher of a run shares.
#[derive(Debug)]
pub struct Context {
    /// What to publish.
    pub fixture: Rc<Fixture>,
    /// The run's clock.
    pub clock: Clock,
    /// Where send instants go; publisher errors too.
    pub sh: Rc<RefCell<Shared>>,
    /// Deadline for connecting until publishing.
    pub connect_timeout: Duration,
    /// Publishers stop here at the latest (the run's end plus a margin).
    pub give_up: Instant,
    /// Ends every publisher (the run is over).
    pub stop: CancellationToken,
    /// Cancelled by the first publisher that stops before `stop` (an error, or `give_up`).
    pub ended_early: CancellationToken,
}

/// Publishes stream `stream` to `url` from `start_at` until the context's `stop` or
/// `give_up`. Why it stopped early, if it did, goes to `Shared::publisher_errors`.
pub async fn run(ctx: Rc<Context>, stream: usize, url: RtmpUrl, start_at: Instant) {
    tokio::select! {
        _ = ctx.stop.cancelled() => return,
        _ = sleep_until(start_at) => {}
    }
    let clock = ctx.clock;
    let result = paced::publish(
        &url,
        &ctx.fixture,
        ctx.connect_timeout,
        ctx.give_up,
        &ctx.stop,
        |due, at| {
            let sent = (clock.now_ns(), Clock::real_ns());
            let mut sh = ctx.sh.borrow_mut();
            if sh.in_window {
                let lag = Instant::now().saturating_duration_since(at).as_micros() as u64;
                sh.publisher_lag_max_us = sh.publisher_lag_max_us.max(lag);
            }
            let size = due.tag.payload.len() as u32;
            let published = &mut sh.streams[stream];
            match due.tag.class {
                Class::Video { key } => {
                    published.video.push(due.ts, size, key, sent);
                    published.keyframes_sent += u64::from(key);
                }
                Class::Audio => {
                    published.audio.push(due.ts, size, false, sent);
                }
                _ => {}
            }
        },
    )
    .await;
    let why = match result {
        Err(e) => format!("{e:#}"),
        Ok(()) if !ctx.stop.is_cancelled() => "it ended".to_owned(),
        Ok(()) => return,
    };
    ctx.sh
        .borrow_mut()
        .publisher_errors
        .push(format!("{}: {why}", url.stream));
    ctx.ended_early.cancel();
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::fixture;

    #[test]
    fn keyframe_interval_of_the_small_fixture() {
        let path = fixture::resolve(Path::new("fixtures/h264_aac.flv"));
        let f = Fixture::load(&path).unwrap();
        assert_eq!(keyframe_interval_ms(&f), 1000, "1 s GOP");
    }
}
