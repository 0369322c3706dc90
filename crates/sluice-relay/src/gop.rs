//! GOP streams: one per group of pictures, a header naming the pull, then frame records.
//!
//! A record carries everything a [`Frame`](sluice_media::Frame) is built from
//! ([`FrameParts`]): the sender parsed the frame once, and the receiver takes its kind,
//! timestamps, flags and codec as the sender's word instead of parsing the payload again.

use bytes::{BufMut, Bytes, BytesMut};
use sluice_media::{CodecId, FrameKind, FrameParts};

use crate::buf::Input;
use crate::{DecodeError, EncodeError, Limits, PREAMBLE_LEN, StreamKind, VERSION, check_preamble};

/// Bytes of a GOP header after the preamble.
pub const HEADER_LEN: usize = 16;
/// Bytes of a record's header (before its payload).
pub const RECORD_HEADER_LEN: usize = 19;

const FLAG_KEYFRAME: u8 = 1;
const FLAG_SEQ_HEADER: u8 = 2;
const FLAG_DISPOSABLE: u8 = 4;
const KNOWN_FLAGS: u8 = FLAG_KEYFRAME | FLAG_SEQ_HEADER | FLAG_DISPOSABLE;

/// What a GOP stream starts with, after its preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GopHeader {
    /// The pull this GOP belongs to (from its `Accepted`).
    pub pull_id: u64,
    /// The GOP's number within the pull, increasing: a lower one than the edge has already
    /// seen is stale.
    pub gop_seq: u64,
}

/// The record kind byte: the FLV tag type.
fn kind_from_byte(b: u8) -> Option<FrameKind> {
    match b {
        8 => Some(FrameKind::Audio),
        9 => Some(FrameKind::Video),
        18 => Some(FrameKind::Script),
        _ => None,
    }
}

/// What a GOP stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GopEvent {
    /// The stream's header (always first, once).
    Header(GopHeader),
    /// A frame: its parts as the sender knew them, the payload (the FLV tag body) as
    /// received. Every GOP stream repeats the headers (metadata, sequence headers) in force
    /// before its keyframe, so a receiver may skip one equal to what it already has.
    Frame(FrameParts),
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
    pub fn record(&mut self, frame: &FrameParts) -> Result<[Bytes; 2], EncodeError> {
        let len = u32::try_from(frame.payload.len()).map_err(|_| EncodeError::TooLong {
            what: "frame payload",
            len: frame.payload.len(),
            max: u32::MAX as usize,
        })?;
        if self.scratch.capacity() < RECORD_HEADER_LEN {
            self.scratch.reserve(RECORD_HEADER_LEN * 64);
        }
        let mut flags = 0;
        if frame.keyframe {
            flags |= FLAG_KEYFRAME;
        }
        if frame.seq_header {
            flags |= FLAG_SEQ_HEADER;
        }
        if frame.disposable {
            flags |= FLAG_DISPOSABLE;
        }
        self.scratch.put_u8(frame.kind.type_id());
        self.scratch.put_u8(flags);
        self.scratch.put_u8(frame.codec.to_u8());
        self.scratch.put_i32(frame.cts);
        self.scratch.put_u64(frame.dts);
        self.scratch.put_u32(len);
        Ok([self.scratch.split().freeze(), frame.payload.clone()])
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
                // GOP streams flow only after an `Accepted` in this node's version.
                match check_preamble(preamble, StreamKind::Gop)? {
                    VERSION => {}
                    other => return Err(DecodeError::UnsupportedVersion(other)),
                }
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
                // Check then parse: every field is checked before the payload is waited for.
                let kind = kind_from_byte(h[0]).ok_or(DecodeError::UnknownKind(h[0]))?;
                let flags = h[1];
                if flags & !KNOWN_FLAGS != 0 {
                    return Err(DecodeError::UnknownFlags(flags));
                }
                let codec = CodecId::from_u8(h[2]).ok_or(DecodeError::UnknownCodec(h[2]))?;
                let cts = i32::from_be_bytes([h[3], h[4], h[5], h[6]]);
                let dts = be64(&h[7..15]);
                let len = u32::from_be_bytes([h[15], h[16], h[17], h[18]]) as usize;
                if len > self.limits.max_frame {
                    return Err(DecodeError::TooLarge {
                        what: "frame",
                        len: len as u64,
                        max: self.limits.max_frame,
                    });
                }
                // Audio and video always start with their tag header; only script data may
                // be empty (as a local publisher's may).
                if len == 0 && kind != FrameKind::Script {
                    return Err(DecodeError::Malformed("empty audio or video frame"));
                }
                if self.input.len() < RECORD_HEADER_LEN + len {
                    return Ok(None);
                }
                self.input.advance(RECORD_HEADER_LEN);
                let payload = self.input.take(len);
                Ok(Some(GopEvent::Frame(FrameParts {
                    kind,
                    dts,
                    cts,
                    keyframe: flags & FLAG_KEYFRAME != 0,
                    seq_header: flags & FLAG_SEQ_HEADER != 0,
                    disposable: flags & FLAG_DISPOSABLE != 0,
                    codec,
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
        assert_eq!(&start[..], b"SLRG\x02\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02");
        let payload = Bytes::from_static(b"\x27\x01\0\0\x50");
        let [head, body] = enc
            .record(&FrameParts {
                kind: FrameKind::Video,
                dts: 0x1_0000_0028,
                cts: -2,
                keyframe: false,
                seq_header: false,
                disposable: true,
                codec: CodecId::Avc,
                payload: payload.clone(),
            })
            .unwrap();
        assert_eq!(
            &head[..],
            b"\x09\x04\x02\xff\xff\xff\xfe\0\0\0\x01\0\0\0\x28\0\0\0\x05"
        );
        assert_eq!(head.len(), RECORD_HEADER_LEN);
        assert_eq!(body.as_ptr(), payload.as_ptr(), "payload is not copied");
    }
}
