//! One attempt to pull one stream from one upstream, whatever the transport: connect, have
//! the upstream accept, then yield frames until it ends or fails.
//!
//! Frames come out parsed, once: an RTMP upstream's messages are parsed here (their 32-bit
//! timestamps unwrapped), a relay upstream's frames are rebuilt from the parts it sent. The
//! pull hands them to the stream as they are ([`sluice_core::Publisher::push_frame`]).

use std::time::Duration;

use sluice_core::StreamKey;
use sluice_core::topology::{Transport, Upstream, Via};
use sluice_media::time::TimestampExtender;
use sluice_media::{FlvError, Frame, FrameKind};
use sluice_rtmp::client::{ClientEvent, StatusCode};
use sluice_runtime::client::{Client, ClientError, RtmpUrl};
use tracing::debug;

use crate::quic::{QuicRelay, QuicSource};

/// Why a pull attempt ended.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The upstream answered that it does not have the stream.
    #[error("not found upstream: {0}")]
    NotFound(String),
    /// The upstream refused the request (a loop, too many hops, an unknown application).
    #[error("refused upstream: {0}")]
    Refused(String),
    /// A deadline passed.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// Could not reach the upstream.
    #[error("connect: {0}")]
    Connect(String),
    /// The upstream speaks another version of the relay protocol (it said so).
    #[error("the upstream speaks relay protocol version {0}, this node {ours}", ours = sluice_relay::VERSION)]
    Version(u8),
    /// The upstream broke its protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The upstream closed the connection.
    #[error("upstream closed the connection")]
    Closed,
    /// The stream registry now names another origin for the stream.
    #[error("the registry moved the stream to another origin")]
    Moved,
    /// The upstream said the stream ended (its publisher left).
    #[error("the stream ended upstream")]
    Ended,
}

impl PullError {
    /// Whether the upstream is healthy and simply lacks the stream (no backoff then).
    pub fn is_miss(&self) -> bool {
        matches!(self, PullError::NotFound(_) | PullError::Refused(_))
    }

    /// Its label in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            PullError::NotFound(_) => "not_found",
            PullError::Moved => "moved",
            PullError::Refused(_) => "refused",
            PullError::Timeout(_) => "timeout",
            PullError::Connect(_) => "connect",
            PullError::Version(_) => "version",
            PullError::Protocol(_) => "protocol",
            PullError::Closed => "closed",
            PullError::Ended => "ended",
        }
    }
}

impl PullError {
    /// What an RTMP upstream's error status means for the pull: it lacks the stream, or it
    /// refuses the request.
    fn refused(code: StatusCode, description: String) -> Self {
        match code {
            StatusCode::StreamNotFound => PullError::NotFound(description),
            code => PullError::Refused(format!("{code}: {description}")),
        }
    }
}

impl From<ClientError> for PullError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused { code, description } => PullError::refused(code, description),
            ClientError::Timeout(what) => PullError::Timeout(what),
            ClientError::Io(e) => PullError::Connect(e.to_string()),
            ClientError::Closed => PullError::Closed,
            other => PullError::Protocol(other.to_string()),
        }
    }
}

/// A connected pull, yielding frames.
#[derive(Debug)]
pub enum Source {
    /// RTMP play from any RTMP server.
    Rtmp(Box<RtmpSource>),
    /// Sluice's QUIC relay.
    Quic(QuicSource),
}

/// An RTMP play, and the clock that unwraps its 32-bit timestamps.
#[derive(Debug)]
pub struct RtmpSource {
    client: Client,
    clock: TimestampExtender,
}

impl Source {
    /// Connects to `upstream` and asks for `key`, passing `via` (this node included), until
    /// the upstream starts the stream or `deadline` passes.
    pub async fn open(
        upstream: &Upstream,
        key: &StreamKey,
        via: &Via,
        credentials: &str,
        quic: Option<&QuicRelay>,
        deadline: Duration,
    ) -> Result<Source, PullError> {
        let app = upstream.app_for(key);
        match upstream.transport {
            Transport::Rtmp => {
                let separator = if credentials.is_empty() { "" } else { "&" };
                let url = RtmpUrl::parse(&format!(
                    "rtmp://{}/{app}/{}?{}{separator}{credentials}",
                    upstream.addr,
                    key.name,
                    via.to_query()
                ))?;
                let client = Client::play(&url, deadline).await?;
                Ok(Source::Rtmp(Box::new(RtmpSource {
                    client,
                    clock: TimestampExtender::default(),
                })))
            }
            Transport::Quic => {
                let relay = quic.ok_or_else(|| {
                    PullError::Connect("the QUIC relay is not configured on this node".to_owned())
                })?;
                let source = relay
                    .pull(&upstream.addr, app, &key.name, via, deadline)
                    .await?;
                Ok(Source::Quic(source))
            }
        }
    }

    /// The next frame, parsed, its `dts` on the upstream's timeline (64-bit);
    /// `Err(Ended)` when the upstream's stream ended.
    pub async fn next(&mut self) -> Result<Frame, PullError> {
        match self {
            Source::Rtmp(rtmp) => rtmp.next().await,
            Source::Quic(source) => source.next().await,
        }
    }
}

impl RtmpSource {
    async fn next(&mut self) -> Result<Frame, PullError> {
        loop {
            let (kind, timestamp, payload) = match self.client.next_event().await? {
                None => return Err(PullError::Closed),
                Some(ClientEvent::Media {
                    type_id,
                    timestamp,
                    payload,
                }) => {
                    let kind = match type_id {
                        8 => FrameKind::Audio,
                        9 => FrameKind::Video,
                        _ => continue,
                    };
                    (kind, timestamp, payload)
                }
                Some(ClientEvent::Metadata { timestamp, payload }) => {
                    (FrameKind::Script, timestamp, payload)
                }
                Some(ClientEvent::StreamEof) => return Err(PullError::Ended),
                Some(ClientEvent::Failed { code, description }) => {
                    return Err(PullError::refused(code, description));
                }
                Some(ClientEvent::Status {
                    code: StatusCode::UnpublishNotify | StatusCode::PlayStop,
                    ..
                }) => return Err(PullError::Ended),
                Some(_) => continue,
            };
            let dts = self.clock.extend(timestamp);
            match parse(kind, dts, payload) {
                Ok(frame) => return Ok(frame),
                // As from a local publisher: the frame is dropped, the stream goes on.
                Err(error) => debug!(%error, "pulled frame dropped"),
            }
        }
    }
}

/// An RTMP message body as a frame (script data is carried as is).
fn parse(kind: FrameKind, dts: u64, payload: bytes::Bytes) -> Result<Frame, FlvError> {
    match kind {
        FrameKind::Script => Ok(Frame::script(dts, payload)),
        kind => Frame::parse(kind, dts, payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtmp_refusals_are_classified_by_their_status_code() {
        let not_found = PullError::from(ClientError::Refused {
            code: StatusCode::StreamNotFound,
            description: "no such stream".into(),
        });
        assert!(
            matches!(&not_found, PullError::NotFound(d) if d == "no such stream"),
            "{not_found:?}"
        );
        assert!(not_found.is_miss());
        let rejected = PullError::from(ClientError::Refused {
            code: StatusCode::ConnectRejected,
            description: "unknown app".into(),
        });
        assert!(
            matches!(&rejected, PullError::Refused(m) if m == "NetConnection.Connect.Rejected: unknown app"),
            "{rejected:?}"
        );
        // Only the code decides, not a description that looks like one.
        let other = PullError::refused(
            StatusCode::Other("NetStream.Play.Failed".into()),
            "NetStream.Play.StreamNotFound".into(),
        );
        assert!(matches!(other, PullError::Refused(_)), "{other:?}");
        assert_eq!(PullError::Version(1).label(), "version");
        assert!(!PullError::Version(1).is_miss(), "an old peer backs off");
    }
}
