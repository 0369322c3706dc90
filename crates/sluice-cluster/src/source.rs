//! One attempt to pull one stream from one upstream, whatever the transport: connect, have
//! the upstream accept, then yield frames until it ends or fails.

use std::time::Duration;

use bytes::Bytes;
use sluice_core::StreamKey;
use sluice_core::cluster::{Transport, Upstream, Via};
use sluice_media::FrameKind;
use sluice_proto::client::{Client, ClientError, RtmpUrl};
use sluice_rtmp::client::{ClientEvent, StatusCode};

use crate::quic::{QuicRelay, QuicSource};

/// One frame from an upstream: an FLV tag body and its timestamp (ms, 32-bit as RTMP
/// carries it; the local publisher unwraps and rebases it).
#[derive(Debug, Clone)]
pub struct Pulled {
    /// Audio, video or script data (onMetaData).
    pub kind: FrameKind,
    /// Timestamp in milliseconds.
    pub timestamp: u32,
    /// The FLV tag body.
    pub payload: Bytes,
}

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
    /// The upstream broke its protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The upstream closed the connection.
    #[error("upstream closed the connection")]
    Closed,
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
            PullError::Refused(_) => "refused",
            PullError::Timeout(_) => "timeout",
            PullError::Connect(_) => "connect",
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
    Rtmp(Box<Client>),
    /// Sluice's QUIC relay.
    Quic(QuicSource),
}

impl Source {
    /// Connects to `upstream` and asks for `key`, passing `via` (this node included), until
    /// the upstream starts the stream or `deadline` passes.
    pub async fn open(
        upstream: &Upstream,
        key: &StreamKey,
        via: &Via,
        quic: Option<&QuicRelay>,
        deadline: Duration,
    ) -> Result<Source, PullError> {
        let app = upstream.app_for(key);
        match upstream.transport {
            Transport::Rtmp => {
                let url = RtmpUrl::parse(&format!(
                    "rtmp://{}/{app}/{}?{}",
                    upstream.addr,
                    key.name,
                    via.to_query()
                ))?;
                let client = Client::play(&url, deadline).await?;
                Ok(Source::Rtmp(Box::new(client)))
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

    /// The next frame; `Err(Ended)` when the upstream's stream ended.
    pub async fn next(&mut self) -> Result<Pulled, PullError> {
        match self {
            Source::Rtmp(client) => loop {
                match client.next_event().await? {
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
                        return Ok(Pulled {
                            kind,
                            timestamp,
                            payload,
                        });
                    }
                    Some(ClientEvent::Metadata { timestamp, payload }) => {
                        return Ok(Pulled {
                            kind: FrameKind::Script,
                            timestamp,
                            payload,
                        });
                    }
                    Some(ClientEvent::StreamEof) => return Err(PullError::Ended),
                    Some(ClientEvent::Failed { code, description }) => {
                        return Err(PullError::refused(code, description));
                    }
                    Some(ClientEvent::Status { code, .. })
                        if code == "NetStream.Play.UnpublishNotify"
                            || code == "NetStream.Play.Stop" =>
                    {
                        return Err(PullError::Ended);
                    }
                    Some(_) => {}
                }
            },
            Source::Quic(source) => source.next().await,
        }
    }

    /// The transport in use.
    pub fn transport(&self) -> Transport {
        match self {
            Source::Rtmp(_) => Transport::Rtmp,
            Source::Quic(_) => Transport::Quic,
        }
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
    }
}
