//! The wire format of Sluice's node-to-node relay, without IO: bytes in, messages out, and
//! the reverse. The QUIC transport (connections, streams, TLS) lives in `sluice-cluster`;
//! this crate only knows the bytes of one QUIC stream at a time, so it is tested and fuzzed
//! without a network.
//!
//! # Streams
//!
//! A pull uses two kinds of QUIC stream on the one connection between two nodes:
//!
//! - a **control** stream (bidirectional, one per pull, opened by the pulling node): the
//!   edge sends [`Control::Pull`]; the upstream answers [`Control::Accepted`] or
//!   [`Control::Refused`], and later [`Control::Ended`] when the stream's publisher left.
//!   Either side finishing (or resetting) its half ends the pull.
//! - a **GOP** stream (unidirectional, upstream to edge, one per group of pictures): a
//!   [`GopHeader`] naming the pull and the GOP's sequence number, then frame records, each
//!   a frame's [`FrameParts`](sluice_media::FrameParts): the upstream parsed the frame once
//!   and the edge rebuilds it from its parts without parsing again. A GOP the edge cannot
//!   take in time is reset by the upstream instead of delaying the next one.
//!
//! # Layout (version 2; integers big-endian)
//!
//! Every stream, in each direction, starts with a 5-byte **preamble**: a magic naming the
//! stream kind (`SLRC` control, `SLRG` GOP) and the version byte ([`VERSION`]).
//!
//! Control messages: `len: u32` (of what follows, at most [`Limits::max_control`]),
//! `type: u8`, body:
//!
//! | type | message | body |
//! |---|---|---|
//! | 1 | `Pull` | app `str`, name `str`, `n: u16`, `n` × via `str` |
//! | 2 | `Accepted` | pull id `u64` |
//! | 3 | `Refused` | code `u8` (1 not found, 2 loop, 3 too deep, 4 not allowed, 5 unsupported + version `u8`), message `str` |
//! | 4 | `Ended` | — |
//!
//! where `str` is `u16` length + UTF-8. GOP streams: after the preamble, `pull_id: u64`,
//! `gop_seq: u64`; then records of a 19-byte header — `kind: u8` (8 audio, 9 video,
//! 18 script, the FLV tag types), `flags: u8` (bit 0 keyframe, bit 1 sequence header,
//! bit 2 disposable), `codec: u8` ([`CodecId::to_u8`](sluice_media::CodecId::to_u8)),
//! `cts: i32` (ms), `dts: u64` (ms, the upstream's 64-bit stream timeline), `len: u32`
//! (at most [`Limits::max_frame`]; not 0 for audio and video) — and `len` payload bytes
//! (the FLV tag body, not parsed here).
//!
//! Version 1 had a 14-byte record header (`kind`, `flags` with bit 1 "sequence header or
//! metadata", `dts`, `len`): the edge parsed every payload again.
//!
//! # Versions
//!
//! The preamble and the `Refused` message keep their layout in every version, so any two
//! nodes can at least tell each other which version they speak. A control decoder that
//! reads a preamble of another version reads a `Refused` after it and answers anything else
//! with [`DecodeError::UnsupportedVersion`]; the upstream then answers
//! [`RefuseCode::Unsupported`] carrying the version it speaks, behind a preamble naming the
//! peer's version ([`ControlEncoder::for_version`]), so that a node of the older version
//! reads the refusal too. A GOP stream of another version is refused outright (GOP streams
//! only follow an `Accepted`).
//!
//! # Robustness
//!
//! Decoders are incremental (feed any split of the bytes, poll messages), cap every length
//! before buffering it, return an error for anything malformed and never panic; after an
//! error they keep returning it. "Need more bytes" is `Ok(None)`, not an error. Encoders
//! return `Bytes` and never copy a frame payload: a record is a small header buffer plus
//! the payload `Bytes` as given.

mod buf;
pub mod control;
pub mod gop;

pub use control::{Control, ControlDecoder, ControlEncoder, Pull, RefuseCode};
pub use gop::{GopDecoder, GopEncoder, GopEvent, GopHeader};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 2;

/// Length of the preamble at the start of every stream.
pub const PREAMBLE_LEN: usize = 5;

/// What a stream carries, as its preamble's magic says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Control messages of one pull.
    Control,
    /// One GOP of frames.
    Gop,
}

impl StreamKind {
    /// The 4-byte magic a stream of this kind starts with.
    pub const fn magic(self) -> [u8; 4] {
        match self {
            StreamKind::Control => *b"SLRC",
            StreamKind::Gop => *b"SLRG",
        }
    }

    fn from_magic(magic: [u8; 4]) -> Option<Self> {
        match &magic {
            b"SLRC" => Some(StreamKind::Control),
            b"SLRG" => Some(StreamKind::Gop),
            _ => None,
        }
    }

    /// The preamble a stream of this kind starts with, for `version`.
    pub const fn preamble(self, version: u8) -> [u8; PREAMBLE_LEN] {
        let m = self.magic();
        [m[0], m[1], m[2], m[3], version]
    }
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamKind::Control => "control",
            StreamKind::Gop => "GOP",
        })
    }
}

/// Caps a decoder applies before buffering anything a peer announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest control message (its `len` field), in bytes.
    pub max_control: usize,
    /// Largest frame payload, in bytes.
    pub max_frame: usize,
}

impl Default for Limits {
    /// 64 KiB control messages, 16 MiB frames.
    fn default() -> Self {
        Limits {
            max_control: 64 << 10,
            max_frame: 16 << 20,
        }
    }
}

/// Why bytes from a peer were refused. Every variant is the peer's fault; a retry of the
/// same bytes fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The stream does not start with a relay magic.
    #[error("not a Sluice relay stream (it starts with {0:02x?})")]
    BadMagic([u8; 4]),
    /// A stream of the other kind.
    #[error("expected a {expected} stream, got a {found} stream")]
    WrongStream {
        /// The kind this decoder reads.
        expected: StreamKind,
        /// The kind the preamble names.
        found: StreamKind,
    },
    /// The preamble names a version this side does not speak (and what followed it is not a
    /// refusal, which every version can read).
    #[error("relay protocol version {0} is not supported (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// A length above the decoder's [`Limits`].
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What the length is of.
        what: &'static str,
        /// The announced length.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// A control message type this version does not define.
    #[error("unknown control message type {0}")]
    UnknownMessage(u8),
    /// A frame kind other than audio, video or script.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Frame flag bits this version does not define.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// A codec number no codec has.
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    /// A refusal code this version does not define.
    #[error("unknown refusal code {0}")]
    UnknownRefusal(u8),
    /// A message whose body does not match its type.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The stream ended inside the preamble, a header or a message.
    #[error("the stream ended in the middle of a message ({0} bytes left over)")]
    Truncated(usize),
}

/// Why a message could not be encoded (a field too long for its length prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field longer than its length prefix can say.
    #[error("{what} is too long ({len}, at most {max})")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The most the format allows.
        max: usize,
    },
}

/// Checks a preamble's magic against the kind a decoder expects; returns the version it
/// names (whatever it is: the decoder decides what it reads of another version).
fn check_preamble(bytes: [u8; PREAMBLE_LEN], expected: StreamKind) -> Result<u8, DecodeError> {
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let found = StreamKind::from_magic(magic).ok_or(DecodeError::BadMagic(magic))?;
    if found != expected {
        return Err(DecodeError::WrongStream { expected, found });
    }
    Ok(bytes[4])
}
