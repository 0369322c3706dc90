//! Why a connection ended: one set of reasons for every front end, so the
//! `sluice_connections_closed_total{protocol,reason}` labels mean the same everywhere.

/// How long a goodbye may take (RTMP's StreamEOF and last output, the last HTTP chunk)
/// before the connection is closed anyway.
pub const GOODBYE: std::time::Duration = std::time::Duration::from_millis(500);

/// Why a connection ended (the `reason` label of `connections_closed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Close {
    /// The client closed the connection.
    PeerClosed,
    /// The handshake (or an HTTP request head) did not complete in time.
    HandshakeTimeout,
    /// The handshake failed.
    HandshakeError,
    /// The client broke the protocol.
    ProtocolError,
    /// A publisher or a connection without a role was silent for the idle timeout.
    IdleTimeout,
    /// A viewer's socket took nothing for the stall deadline.
    WriteStalled,
    /// A socket error.
    Io,
    /// The node is shutting down.
    Shutdown,
    /// A request was refused (and the refusal written).
    Rejected,
    /// A newer publisher took the stream over.
    Displaced,
    /// The publisher left and did not come back within the grace period.
    StreamEnded,
    /// Nobody published the stream in time, or no upstream has it.
    NoPublisher,
    /// A HEAD request, answered.
    HeadRequest,
    /// The peer's incomplete messages outgrew `rtmp.max_buffered_message_bytes`.
    IngestBudget,
}

impl Close {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Close::PeerClosed => "peer_closed",
            Close::HandshakeTimeout => "handshake_timeout",
            Close::HandshakeError => "handshake_error",
            Close::ProtocolError => "protocol_error",
            Close::IdleTimeout => "idle_timeout",
            Close::WriteStalled => "write_stalled",
            Close::Io => "io_error",
            Close::Shutdown => "shutdown",
            Close::Rejected => "rejected",
            Close::Displaced => "displaced",
            Close::StreamEnded => "stream_ended",
            Close::NoPublisher => "no_publisher",
            Close::HeadRequest => "head_request",
            Close::IngestBudget => "ingest_budget",
        }
    }

    /// Whether the connection can still take a goodbye (the peer is there to read it).
    pub fn peer_reachable(self) -> bool {
        !matches!(
            self,
            Close::Io | Close::PeerClosed | Close::HandshakeTimeout | Close::HandshakeError
        )
    }
}
