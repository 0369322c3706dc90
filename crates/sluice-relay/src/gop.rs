//! GOP streams: one per group of pictures, a header naming the pull, then frame records.

use bytes::{BufMut, Bytes, BytesMut};

use crate::buf::Input;
use crate::{DecodeError, EncodeError, Limits, PREAMBLE_LEN, StreamKind, VERSION, check_preamble};

/// Bytes of a GOP header after the preamble.
pub const HEADER_LEN: usize = 16;
/// Bytes of a record's header (before its payload).
pub const RECORD_HEADER_LEN: usize = 14;

const FLAG_KEYFRAME: u8 = 1;
const FLAG_HEADER: u8 = 2;

/// What a GOP stream starts with, after its preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GopHeader {
    /// The pull this GOP belongs to (from its `Accepted`).
    pub pull_id: u64,
    /// The GOP's number within the pull, increasing: a lower one than the edge has already
    /// seen is stale.
    pub gop_seq: u64,
}

/// What a frame carries (the FLV tag types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An audio tag body.
    Audio,
    /// A video tag body.
    Video,
    /// Script data (onMetaData).
    Script,
}

impl Kind {
    /// The FLV tag type.
    pub fn byte(self) -> u8 {
        match self {
            Kind::Audio => 8,
            Kind::Video => 9,
            Kind::Script => 18,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            8 => Some(Kind::Audio),
            9 => Some(Kind::Video),
            18 => Some(Kind::Script),
            _ => None,
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Audio, video or script.
    pub kind: Kind,
    /// Decode timestamp, ms, on the upstream's timeline.
    pub dts: u64,
    /// A video keyframe (a GOP's first media frame).
    pub keyframe: bool,
    /// Decoder configuration (a sequence header) or metadata rather than media. Every GOP
    /// stream repeats the headers in force before its keyframe, so a receiver may skip one
    /// equal to what it already has.
    pub header: bool,
    /// The FLV tag body, opaque here.
    pub payload: Bytes,
}

/// What a GOP stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GopEvent {
    /// The stream's header (always first, once).
    Header(GopHeader),
    /// A frame.
    Frame(Record),
}

/// Writes GOP streams: the start, then records as a small header buffer plus the payload
/// itself (never copied).
#[derive(Debug, Default)]
pub struct GopEncoder {
    /// Record headers are cut from this, so most records allocate nothing.
    scratch: BytesMut,
}

impl GopEncoder {
    /// An encoder (one may serve any number of streams).
    pub fn new() -> Self {
        Self::default()
    }

    /// The preamble and header a GOP stream starts with.
    pub fn start(&mut self, header: &GopHeader) -> Bytes {
        self.scratch.reserve(PREAMBLE_LEN + HEADER_LEN);
        self.scratch.put_slice(&StreamKind::Gop.preamble(VERSION));
        self.scratch.put_u64(header.pull_id);
        self.scratch.put_u64(header.gop_seq);
        self.scratch.split().freeze()
    }

    /// A record: its header, and its payload as given.
    pub fn record(&mut self, record: &Record) -> Result<[Bytes; 2], EncodeError> {
        let len = u32::try_from(record.payload.len()).map_err(|_| EncodeError::TooLong {
            what: "frame payload",
            len: record.payload.len(),
            max: u32::MAX as usize,
        })?;
        if self.scratch.capacity() < RECORD_HEADER_LEN {
            self.scratch.reserve(RECORD_HEADER_LEN * 64);
        }
        let mut flags = 0;
        if record.keyframe {
            flags |= FLAG_KEYFRAME;
        }
        if record.header {
            flags |= FLAG_HEADER;
        }
        self.scratch.put_u8(record.kind.byte());
        self.scratch.put_u8(flags);
        self.scratch.put_u64(record.dts);
        self.scratch.put_u32(len);
        Ok([self.scratch.split().freeze(), record.payload.clone()])
    }
}

#[derive(Debug)]
enum State {
    Preamble,
    Header,
    Records,
    Failed(DecodeError),
}

/// Reads one GOP stream from any split of its bytes. A payload that arrived within one
/// chunk is handed out as a slice of it, not copied.
#[derive(Debug)]
pub struct GopDecoder {
    limits: Limits,
    input: Input,
    state: State,
}

impl GopDecoder {
    /// A decoder for a new stream, capping payloads at `limits.max_frame`.
    pub fn new(limits: Limits) -> Self {
        GopDecoder {
            limits,
            input: Input::default(),
            state: State::Preamble,
        }
    }

    /// Adds bytes received.
    pub fn feed(&mut self, bytes: Bytes) {
        if !matches!(self.state, State::Failed(_)) {
            self.input.push(bytes);
        }
    }

    /// Adds bytes received (copied).
    pub fn feed_slice(&mut self, bytes: &[u8]) {
        self.feed(Bytes::copy_from_slice(bytes));
    }

    /// Bytes fed and not yet returned.
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// The next header or frame; `Ok(None)` until more bytes arrive. After an error, the
    /// same error on every call.
    pub fn poll(&mut self) -> Result<Option<GopEvent>, DecodeError> {
        match self.step() {
            Err(e) => {
                self.input.clear();
                self.state = State::Failed(e.clone());
                Err(e)
            }
            ok => ok,
        }
    }

    /// Checks that the stream had its header and did not end inside a record (call at its
    /// end, after polling everything).
    pub fn finish(&self) -> Result<(), DecodeError> {
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            State::Records if self.input.len() == 0 => Ok(()),
            _ => Err(DecodeError::Truncated(self.input.len())),
        }
    }

    fn step(&mut self) -> Result<Option<GopEvent>, DecodeError> {
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            State::Preamble => {
                let Some(preamble) = self.input.peek::<PREAMBLE_LEN>() else {
                    return Ok(None);
                };
                check_preamble(preamble, StreamKind::Gop)?;
                self.input.advance(PREAMBLE_LEN);
                self.state = State::Header;
                self.step()
            }
            State::Header => {
                let Some(h) = self.input.peek::<HEADER_LEN>() else {
                    return Ok(None);
                };
                self.input.advance(HEADER_LEN);
                self.state = State::Records;
                let (pull_id, gop_seq) = h.split_at(8);
                Ok(Some(GopEvent::Header(GopHeader {
                    pull_id: be64(pull_id),
                    gop_seq: be64(gop_seq),
                })))
            }
            State::Records => {
                let Some(h) = self.input.peek::<RECORD_HEADER_LEN>() else {
                    return Ok(None);
                };
                let kind = Kind::from_byte(h[0]).ok_or(DecodeError::UnknownKind(h[0]))?;
                let flags = h[1];
                if flags & !(FLAG_KEYFRAME | FLAG_HEADER) != 0 {
                    return Err(DecodeError::UnknownFlags(flags));
                }
                let dts = be64(&h[2..10]);
                let len = u32::from_be_bytes([h[10], h[11], h[12], h[13]]) as usize;
                if len > self.limits.max_frame {
                    return Err(DecodeError::TooLarge {
                        what: "frame",
                        len: len as u64,
                        max: self.limits.max_frame,
                    });
                }
                if self.input.len() < RECORD_HEADER_LEN + len {
                    return Ok(None);
                }
                self.input.advance(RECORD_HEADER_LEN);
                let payload = self.input.take(len);
                Ok(Some(GopEvent::Frame(Record {
                    kind,
                    dts,
                    keyframe: flags & FLAG_KEYFRAME != 0,
                    header: flags & FLAG_HEADER != 0,
                    payload,
                })))
            }
        }
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_as_documented() {
        let mut enc = GopEncoder::new();
        let start = enc.start(&GopHeader {
            pull_id: 1,
            gop_seq: 2,
        });
        assert_eq!(&start[..], b"SLRG\x01\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02");
        let payload = Bytes::from_static(b"\x17\x01\0\0\0");
        let [head, body] = enc
            .record(&Record {
                kind: Kind::Video,
                dts: 40,
                keyframe: true,
                header: false,
                payload: payload.clone(),
            })
            .unwrap();
        assert_eq!(&head[..], b"\x09\x01\0\0\0\0\0\0\0\x28\0\0\0\x05");
        assert_eq!(body.as_ptr(), payload.as_ptr(), "payload is not copied");
    }
}
