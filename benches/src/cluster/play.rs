//! RTMP viewers for the cluster benches, on `sluice_runtime::client::Client` (one viewer at a
//! time, or a handful, so its per-connection buffer does not matter): time to the first
//! keyframe, and a long-lived viewer that records gaps and keyframes around a kill.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use sluice_media::flv::TAG_VIDEO;
use sluice_rtmp::client::ClientEvent;
use sluice_runtime::client::{Client, RtmpUrl};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::media::{Class, PROBE, classify};

fn class_of(type_id: u8, payload: &[u8]) -> Class {
    classify(type_id, &payload[..payload.len().min(PROBE)])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One viewer's time to first frame.
#[derive(Debug, Clone, Copy)]
pub struct Ttff {
    /// Connect → the server accepted the play (NetStream.Play.Start), ms.
    pub play_ms: f64,
    /// Connect → the first video keyframe, ms.
    pub key_ms: f64,
    /// The keyframe came after the video sequence header (and the audio one, if the
    /// fixture has audio), and was the first coded video frame.
    pub headers_ok: bool,
    /// An inter frame came before the first keyframe.
    pub inter_first: bool,
}

/// Connects to `url`, plays, and returns once the first video keyframe arrived; everything
/// within `deadline`. The connection is dropped afterwards.
pub async fn first_keyframe(
    url: &RtmpUrl,
    deadline: Duration,
    has_audio: bool,
) -> anyhow::Result<Ttff> {
    let start = Instant::now();
    let run = async {
        let mut client = Client::play(url, deadline).await.context("play")?;
        let play_ms = ms(start.elapsed());
        let (mut video_header, mut audio_header) = (false, !has_audio);
        let mut inter_first = false;
        loop {
            match client.next_event().await.context("reading")? {
                Some(ClientEvent::Media {
                    type_id, payload, ..
                }) => match class_of(type_id, &payload) {
                    Class::VideoHeader => video_header = true,
                    Class::AudioHeader => audio_header = true,
                    Class::Video { key: true } => {
                        let _ = client.close().await;
                        return Ok(Ttff {
                            play_ms,
                            key_ms: ms(start.elapsed()),
                            headers_ok: video_header && audio_header && !inter_first,
                            inter_first,
                        });
                    }
                    Class::Video { key: false } => inter_first = true,
                    _ => {}
                },
                Some(ClientEvent::StreamEof) => bail!("StreamEOF"),
                Some(ClientEvent::Failed { code, description }) => bail!("{code}: {description}"),
                Some(_) => {}
                None => bail!("closed by the server"),
            }
        }
    };
    timeout(deadline, run)
        .await
        .with_context(|| format!("no keyframe within {} ms", deadline.as_millis()))?
}

/// What one long-lived viewer saw around the kill.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Watched {
    /// The play started.
    pub connected: bool,
    /// Still connected when told to stop.
    pub stayed_connected: bool,
    /// Why it ended early.
    pub error: Option<String>,
    /// Media messages received.
    pub media: u64,
    /// Video keyframes received.
    pub keyframes: u64,
    /// Largest gap between consecutive media messages over the whole run, ms.
    pub max_gap_ms: f64,
    /// Largest gap between consecutive media messages ending after the kill, ms.
    pub max_gap_after_kill_ms: f64,
    /// Kill → the first media message received afterwards, ms.
    pub kill_to_media_ms: Option<f64>,
    /// Kill → the first video keyframe received afterwards, ms.
    pub kill_to_keyframe_ms: Option<f64>,
    /// A video sequence header arrived between the kill and that keyframe.
    pub header_before_keyframe: bool,
    /// Video timestamps that went backwards.
    pub video_ts_backwards: u64,
    /// The first video timestamp after the kill minus the last before it, ms (a continuous
    /// timeline after a switch gives about one frame interval; the edge rebases).
    pub ts_step_at_kill_ms: Option<i64>,
    /// The first messages after the kill: "ms-after-kill kind timestamp".
    pub after_kill: Vec<String>,
}

/// Messages after the kill kept in [`Watched::after_kill`].
const TRACE: usize = 6;

/// Plays `url` until `stop`, recording gaps and what follows the instant in `kill` once it
/// is set.
pub async fn watch(
    url: RtmpUrl,
    connect_timeout: Duration,
    kill: Arc<OnceLock<Instant>>,
    stop: CancellationToken,
) -> Watched {
    let mut w = Watched::default();
    if let Err(e) = watch_inner(&url, connect_timeout, &kill, &stop, &mut w).await {
        w.error = Some(format!("{e:#}"));
    } else {
        w.stayed_connected = w.connected;
    }
    w
}

async fn watch_inner(
    url: &RtmpUrl,
    connect_timeout: Duration,
    kill: &OnceLock<Instant>,
    stop: &CancellationToken,
    w: &mut Watched,
) -> anyhow::Result<()> {
    let mut client = tokio::select! {
        _ = stop.cancelled() => bail!("stopped while connecting"),
        c = Client::play(url, connect_timeout) => c.context("play")?,
    };
    w.connected = true;
    let mut last: Option<Instant> = None;
    let mut last_video_ts: Option<u32> = None;
    let mut last_video_ts_before_kill: Option<u32> = None;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                let _ = client.close().await;
                return Ok(());
            }
            e = client.next_event() => e.context("reading")?,
        };
        let now = Instant::now();
        match event {
            Some(ClientEvent::Media {
                type_id,
                timestamp,
                payload,
            }) => {
                let killed = kill.get().copied().filter(|k| now >= *k);
                w.media += 1;
                if let Some(prev) = last {
                    let gap = ms(now - prev);
                    w.max_gap_ms = w.max_gap_ms.max(gap);
                    if killed.is_some() {
                        w.max_gap_after_kill_ms = w.max_gap_after_kill_ms.max(gap);
                    }
                }
                last = Some(now);
                let class = class_of(type_id, &payload);
                if let Some(k) = killed {
                    w.kill_to_media_ms.get_or_insert(ms(now - k));
                    if w.after_kill.len() < TRACE {
                        let at = ms(now - k);
                        w.after_kill
                            .push(format!("+{at:.1}ms {class:?} ts={timestamp}"));
                    }
                }
                if type_id == TAG_VIDEO && matches!(class, Class::Video { .. }) {
                    if last_video_ts.is_some_and(|t| timestamp < t) {
                        w.video_ts_backwards += 1;
                    }
                    last_video_ts = Some(timestamp);
                    match killed {
                        None => last_video_ts_before_kill = Some(timestamp),
                        Some(_) if w.ts_step_at_kill_ms.is_none() => {
                            w.ts_step_at_kill_ms = last_video_ts_before_kill
                                .map(|b| i64::from(timestamp) - i64::from(b));
                        }
                        Some(_) => {}
                    }
                }
                match (class, killed) {
                    (Class::VideoHeader, Some(_)) if w.kill_to_keyframe_ms.is_none() => {
                        w.header_before_keyframe = true;
                    }
                    (Class::Video { key: true }, k) => {
                        w.keyframes += 1;
                        if let Some(k) = k {
                            w.kill_to_keyframe_ms.get_or_insert(ms(now - k));
                        }
                    }
                    _ => {}
                }
            }
            Some(ClientEvent::StreamEof) => bail!("StreamEOF"),
            Some(ClientEvent::Failed { code, description }) => bail!("{code}: {description}"),
            Some(_) => {}
            None => bail!("closed by the server"),
        }
    }
}
