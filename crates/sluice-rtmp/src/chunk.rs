//! The RTMP chunk stream layer (RTMP spec 5.3): cutting messages into chunks and back.
//!
//! This module owns the chunk-level state of one connection: the peer's chunk size, each
//! chunk stream's last header (for header compression) and its partially received message.
//! It applies SetChunkSize and Abort itself because they change how the next bytes are
//! framed; every other control message is the session's business.
//!
//! Extended timestamps on type-3 chunks: writers disagree on whether the 4-byte extended
//! timestamp is repeated on type-3 chunks (FFmpeg, librtmp and Adobe repeat it; some writers
//! do not). The reader therefore peeks at the 4 bytes after a type-3 basic header on a chunk
//! stream whose last header used an extended timestamp and consumes them only if they equal
//! that extended value (as SRS does). A non-repeating peer whose payload happens to start with
//! exactly those 4 bytes is misread; no rule can tell the two apart. The writer always
//! repeats, since FFmpeg's reader requires it.
//!
//! Timestamps are 32-bit wrapping RTMP time: deltas are added with wrapping arithmetic on
//! purpose. A type-3 chunk that starts a new message adds the chunk stream's last timestamp
//! field, which after a type-0 header is the absolute timestamp (spec 5.3.1.2.4, FFmpeg,
//! SRS); nginx-rtmp adds 0 there instead, so [`ChunkWriter`] never emits that combination.
//!
//! Memory a peer can make us hold: every chunk stream may have a message in flight, each up
//! to `max_message_size`, so the reader keeps one budget for all of them
//! ([`ChunkLimits::max_buffered_bytes`]). It counts the bytes allocated for incomplete
//! messages, not their announced lengths: a buffer starts at 64 KiB (the announced length if
//! shorter, so a frame up to 64 KiB costs one allocation) and at most doubles when a chunk
//! does not fit, never past the announced length nor past what the budget has left. An
//! announced length thus reserves at most 64 KiB before its bytes arrive, and that is
//! charged too. A chunk that does not fit even so fails the connection with
//! [`ChunkError::BufferBudget`]. So a peer holds at most the budget however many chunk
//! streams it opens, and messages in flight together whose announced lengths add up to no
//! more than the budget always pass. Messages that arrive whole in one chunk are copied out
//! at once and never count.

use std::collections::HashMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::control::{Control, ControlError};
use crate::message::{Message, MessageType};

/// Chunk size both directions start with (RTMP spec 5.4.1).
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest chunk size the spec allows: 31 bits.
const MAX_SPEC_CHUNK_SIZE: u32 = 0x7FFF_FFFF;
/// Timestamp field value that announces a 4-byte extended timestamp.
const EXT_TS_MARKER: u32 = 0xFF_FFFF;
/// Largest message length a 3-byte length field can carry.
const MAX_WIRE_MESSAGE_LEN: usize = 0xFF_FFFF;
/// Chunk stream ids a basic header can express.
const CSID_RANGE: std::ops::RangeInclusive<u32> = 2..=65599;
/// First allocation for a message that spans chunks (unless it is announced shorter): most
/// frames fit, so they cost one allocation, as before the budget existed; growing from a
/// few KiB would reallocate mid-sized frames several times.
const MIN_PARTIAL_ALLOC: usize = 64 * 1024;

/// Limits a reader enforces on what a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Cap on the chunk size a peer may announce with SetChunkSize (default 65536).
    pub max_chunk_size: u32,
    /// Cap on one message's length in bytes, checked before allocating (default 16 MiB).
    pub max_message_size: u32,
    /// Distinct chunk stream ids tracked at once (default 64).
    pub max_chunk_streams: usize,
    /// Cap on the bytes allocated for incomplete messages across all chunk streams (default
    /// 32 MiB). Counted from what is allocated, which follows what arrived (at most 64 KiB
    /// per message ahead of it), not from announced lengths. Keep it at least
    /// `max_message_size`, or messages near that size can never arrive.
    pub max_buffered_bytes: usize,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        Self {
            max_chunk_size: 65536,
            max_message_size: 16 * 1024 * 1024,
            max_chunk_streams: 64,
            max_buffered_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Why a peer's chunk stream was refused.
///
/// Every variant is the peer's fault and fatal for the connection: the framing is lost, so a
/// retry on the same connection cannot help.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// The peer announced a chunk size of 0.
    #[error("peer set chunk size 0")]
    ChunkSizeZero,
    /// The peer announced a chunk size with the reserved high bit set.
    #[error("peer set chunk size {0:#x} with the reserved high bit set")]
    ChunkSizeHighBit(u32),
    /// The peer announced a chunk size above our cap.
    #[error("peer set chunk size {size}, above the cap of {max}")]
    ChunkSizeTooLarge {
        /// Announced size.
        size: u32,
        /// Configured cap.
        max: u32,
    },
    /// A message header announced a length above our cap.
    #[error("message of {len} bytes on chunk stream {csid} exceeds the cap of {max}")]
    MessageTooLarge {
        /// Chunk stream id.
        csid: u32,
        /// Announced length.
        len: u32,
        /// Configured cap.
        max: u32,
    },
    /// A type 1, 2 or 3 chunk arrived on a chunk stream that never had a type 0 header.
    #[error("type {fmt} chunk on chunk stream {csid}, which has no previous header")]
    NoPreviousHeader {
        /// Chunk stream id.
        csid: u32,
        /// Header type (1, 2 or 3).
        fmt: u8,
    },
    /// A type 0, 1 or 2 header arrived while a message on the same chunk stream was incomplete.
    #[error("type {fmt} header on chunk stream {csid} while its previous message is incomplete")]
    HeaderMidMessage {
        /// Chunk stream id.
        csid: u32,
        /// Header type (0, 1 or 2).
        fmt: u8,
    },
    /// The peer used more distinct chunk stream ids than we track.
    #[error("peer opened more than {max} chunk streams")]
    TooManyChunkStreams {
        /// Configured cap.
        max: usize,
    },
    /// Incomplete messages would need more memory than the connection's budget allows.
    #[error(
        "incomplete messages would hold {needed} bytes (chunk stream {csid}), above the budget of {max}"
    )]
    BufferBudget {
        /// Chunk stream whose chunk did not fit.
        csid: u32,
        /// Bytes incomplete messages would take with this chunk: what the other chunk
        /// streams hold plus what this one's message needs.
        needed: usize,
        /// Configured budget.
        max: usize,
    },
    /// A SetChunkSize or Abort message was too short.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// Why parsing stopped: more bytes needed (the common, cheap case) or a fatal error.
enum Stop {
    NeedMore,
    Fail(ChunkError),
}

impl From<ChunkError> for Stop {
    fn from(e: ChunkError) -> Self {
        Stop::Fail(e)
    }
}

/// Bounds-checked reads over the unconsumed input; running out is [`Stop::NeedMore`].
struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Rd<'_> {
    fn peek<const N: usize>(&self) -> Result<[u8; N], Stop> {
        let end = self.pos.checked_add(N).ok_or(Stop::NeedMore)?;
        self.buf
            .get(self.pos..end)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(Stop::NeedMore)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
        let b = self.peek::<N>()?;
        self.pos += N; // peek proved pos + N <= buf.len()
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        Ok(self.take::<1>()?[0])
    }

    fn be24(&mut self) -> Result<u32, Stop> {
        let [a, b, c] = self.take()?;
        Ok(u32::from_be_bytes([0, a, b, c]))
    }

    fn be32(&mut self) -> Result<u32, Stop> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    fn le32(&mut self) -> Result<u32, Stop> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn has(&self, n: usize) -> bool {
        self.buf.len().saturating_sub(self.pos) >= n
    }
}

/// Per chunk stream state on the receive side.
#[derive(Debug, Default)]
struct InStream {
    /// Timestamp of the last message started on this chunk stream.
    timestamp: u32,
    /// Last timestamp field of a type 0/1/2 header (extended value resolved): absolute after
    /// type 0, a delta after type 1/2. A type 3 header starting a message adds it.
    ts_field: u32,
    /// Whether that header carried an extended timestamp.
    extended: bool,
    /// Message length from the last type 0/1 header.
    len: u32,
    /// Message type id from the last type 0/1 header.
    type_id: u8,
    /// Message stream id from the last type 0 header.
    stream_id: u32,
    /// The message being assembled, `None` between messages. A `Vec`, for `reserve_exact`:
    /// its capacity is what the budget counts, so it must grow only as far as asked.
    partial: Option<Vec<u8>>,
}

/// Reassembles messages from a peer's chunk stream. Sans-IO: [`push`](Self::push) bytes,
/// then call [`next_message`](Self::next_message) until it returns `Ok(None)`.
///
/// After an error the framing is lost; drop the connection.
#[derive(Debug)]
pub struct ChunkReader {
    limits: ChunkLimits,
    buf: BytesMut,
    chunk_size: u32,
    streams: HashMap<u32, InStream>,
    bytes_received: u64,
    /// Capacity of every chunk stream's partial message, summed: what the budget limits.
    buffered: usize,
}

impl ChunkReader {
    /// A reader for a fresh connection; the peer's chunk size starts at 128.
    pub fn new(limits: ChunkLimits) -> Self {
        Self {
            limits,
            buf: BytesMut::new(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
            bytes_received: 0,
            buffered: 0,
        }
    }

    /// Appends received bytes to the internal buffer.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.bytes_received = self.bytes_received.saturating_add(data.len() as u64);
    }

    /// Next complete message, `Ok(None)` when more bytes are needed.
    ///
    /// SetChunkSize and Abort are applied by the reader itself (chunk-layer state) and still
    /// returned as messages.
    pub fn next_message(&mut self) -> Result<Option<Message>, ChunkError> {
        loop {
            match self.next_chunk() {
                Ok(None) => {}
                Ok(Some(msg)) => {
                    self.apply(&msg)?;
                    return Ok(Some(msg));
                }
                Err(Stop::NeedMore) => return Ok(None),
                Err(Stop::Fail(e)) => return Err(e),
            }
        }
    }

    /// The chunk size the peer currently sends with.
    pub fn peer_chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Total bytes pushed so far, for Acknowledgement windows.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Bytes allocated for incomplete messages right now (at most
    /// [`ChunkLimits::max_buffered_bytes`]).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Consumes one whole chunk if it is buffered; returns the message it completed, if any.
    /// Nothing is consumed or changed unless the whole chunk is present (check, then parse).
    fn next_chunk(&mut self) -> Result<Option<Message>, Stop> {
        let mut rd = Rd {
            buf: &self.buf,
            pos: 0,
        };
        let b0 = rd.u8()?;
        let fmt = b0 >> 6;
        let csid = match b0 & 0x3f {
            0 => 64 + u32::from(rd.u8()?),
            1 => {
                let [lo, hi] = rd.take()?;
                64 + u32::from(lo) + 256 * u32::from(hi)
            }
            c => u32::from(c),
        };

        let prev = self.streams.get(&csid);
        let in_progress = prev.is_some_and(|s| s.partial.is_some());
        match prev {
            None if fmt != 0 => return Err(ChunkError::NoPreviousHeader { csid, fmt }.into()),
            None if self.streams.len() >= self.limits.max_chunk_streams => {
                return Err(ChunkError::TooManyChunkStreams {
                    max: self.limits.max_chunk_streams,
                }
                .into());
            }
            _ if in_progress && fmt != 3 => {
                return Err(ChunkError::HeaderMidMessage { csid, fmt }.into());
            }
            _ => {}
        }
        let (p_ts_field, p_extended, p_len, p_type, p_sid) = prev
            .map_or((0, false, 0, 0, 0), |s| {
                (s.ts_field, s.extended, s.len, s.type_id, s.stream_id)
            });

        let (mut ts_field, mut extended) = (p_ts_field, p_extended);
        let (mut len, mut type_id, mut stream_id) = (p_len, p_type, p_sid);
        if fmt <= 2 {
            let ts = rd.be24()?;
            if fmt <= 1 {
                len = rd.be24()?;
                type_id = rd.u8()?;
            }
            if fmt == 0 {
                stream_id = rd.le32()?;
            }
            extended = ts == EXT_TS_MARKER;
            ts_field = if extended { rd.be32()? } else { ts };
        } else if p_extended && u32::from_be_bytes(rd.peek()?) == p_ts_field {
            // Repeated extended timestamp (see module docs): skip it.
            rd.pos += 4;
        }

        let (have, capacity) = self
            .streams
            .get(&csid)
            .and_then(|s| s.partial.as_ref())
            .map_or((0, 0), |p| (p.len(), p.capacity()));
        if !in_progress && len > self.limits.max_message_size {
            return Err(ChunkError::MessageTooLarge {
                csid,
                len,
                max: self.limits.max_message_size,
            }
            .into());
        }
        let remaining = (len as usize).saturating_sub(have);
        let take = remaining.min(self.chunk_size as usize);
        if !rd.has(take) {
            return Err(Stop::NeedMore);
        }
        // A message that spans chunks is held until its last chunk: grow its buffer within
        // the budget before committing anything.
        let spans_chunks = in_progress || take < remaining;
        let grow_to = if spans_chunks && have + take > capacity {
            Some(self.grow_partial(csid, capacity, have + take, len as usize)?)
        } else {
            None
        };

        // The whole chunk is buffered: commit.
        let header_len = rd.pos;
        let s = self.streams.entry(csid).or_default();
        if fmt <= 2 {
            s.ts_field = ts_field;
            s.extended = extended;
            s.len = len;
            s.type_id = type_id;
            s.stream_id = stream_id;
        }
        if !in_progress {
            s.timestamp = if fmt == 0 {
                ts_field
            } else {
                s.timestamp.wrapping_add(ts_field)
            };
        }
        self.buf.advance(header_len);
        let data = self.buf.split_to(take);

        let payload = match s.partial.take() {
            // Whole message in one chunk: copied out (once per message) rather than handed
            // out as a slice of the receive buffer, which would pin that buffer's whole
            // block for as long as the frame lives in a stream's ring: a 300-byte audio frame
            // could keep tens of KiB alive, outside the ring's byte budget.
            None if !spans_chunks => Bytes::copy_from_slice(&data),
            partial => {
                let mut p = partial.unwrap_or_default();
                if let Some(target) = grow_to {
                    let before = p.capacity();
                    p.reserve_exact(target - p.len());
                    self.buffered = (self.buffered - before) + p.capacity();
                }
                p.extend_from_slice(&data); // fits: no reallocation behind the count
                if p.len() < len as usize {
                    s.partial = Some(p);
                    return Ok(None);
                }
                self.buffered -= p.capacity();
                // Capacity never exceeds the announced length, so this is the whole
                // allocation handed over, not a copy.
                Bytes::from(p)
            }
        };
        Ok(Some(Message {
            csid,
            type_id: s.type_id,
            timestamp: s.timestamp,
            stream_id: s.stream_id,
            payload,
        }))
    }

    /// The capacity a partial message on `csid` grows to, from `capacity` to hold `needed`
    /// bytes of a `len`-byte message: double what it had (at least `MIN_PARTIAL_ALLOC`), but
    /// never past `len` or what the budget has left; an error if even `needed` does not fit.
    fn grow_partial(
        &self,
        csid: u32,
        capacity: usize,
        needed: usize,
        len: usize,
    ) -> Result<usize, ChunkError> {
        let max = self.limits.max_buffered_bytes;
        let others = self.buffered - capacity;
        let left = max.saturating_sub(others);
        if needed > left {
            return Err(ChunkError::BufferBudget {
                csid,
                needed: others.saturating_add(needed),
                max,
            });
        }
        Ok(capacity
            .saturating_mul(2)
            .max(MIN_PARTIAL_ALLOC)
            .min(len)
            .min(left)
            .max(needed))
    }

    /// Applies the chunk-layer control messages.
    fn apply(&mut self, msg: &Message) -> Result<(), ChunkError> {
        let is_chunk_control = msg.type_id == MessageType::SetChunkSize as u8
            || msg.type_id == MessageType::Abort as u8;
        if !is_chunk_control {
            return Ok(());
        }
        match Control::decode(msg)? {
            Some(Control::SetChunkSize(size)) => {
                if size == 0 {
                    return Err(ChunkError::ChunkSizeZero);
                }
                if size > MAX_SPEC_CHUNK_SIZE {
                    return Err(ChunkError::ChunkSizeHighBit(size));
                }
                if size > self.limits.max_chunk_size {
                    return Err(ChunkError::ChunkSizeTooLarge {
                        size,
                        max: self.limits.max_chunk_size,
                    });
                }
                self.chunk_size = size;
            }
            Some(Control::Abort(csid)) => {
                if let Some(p) = self.streams.get_mut(&csid).and_then(|s| s.partial.take()) {
                    self.buffered -= p.capacity();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Per chunk stream state on the send side: what the peer's reader will assume.
#[derive(Debug, Clone, Copy)]
struct OutStream {
    timestamp: u32,
    ts_field: u32,
    /// The last header was type 1/2 (so `ts_field` is a delta a type 3 header may repeat).
    delta_based: bool,
    len: u32,
    type_id: u8,
    stream_id: u32,
}

/// Cuts messages into chunks for one connection, compressing headers per chunk stream.
#[derive(Debug)]
pub struct ChunkWriter {
    chunk_size: u32,
    streams: HashMap<u32, OutStream>,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkWriter {
    /// A writer for a fresh connection, chunk size 128.
    pub fn new() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            streams: HashMap::new(),
        }
    }

    /// The chunk size messages are currently cut at.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Changes the outgoing chunk size (clamped to 1..=0x7FFF_FFFF); returns the SetChunkSize
    /// message the caller must [`write`](Self::write) before any message using the new size.
    /// The writer switches size right after writing that message, not before.
    pub fn set_chunk_size(&mut self, size: u32) -> Message {
        Control::SetChunkSize(size.clamp(1, MAX_SPEC_CHUNK_SIZE)).to_message()
    }

    /// Appends `msg` as chunks to `out`, compressing headers (type 1/2/3) against the previous
    /// message on the same chunk stream where valid.
    ///
    /// `msg.csid` must be in 2..=65599 and the payload at most 0xFF_FFFF bytes (the wire
    /// limits); out-of-range values are clamped/truncated rather than corrupting the stream.
    /// Writing a SetChunkSize message switches this writer to that size after it.
    pub fn write(&mut self, msg: &Message, out: &mut BytesMut) {
        let csid = clamp_csid(msg.csid);
        let payload = wire_payload(msg);
        let len = payload.len() as u32; // <= 0xFF_FFFF
        let (fmt, ts_field) = match self.streams.get(&csid) {
            Some(p) if p.stream_id == msg.stream_id && msg.timestamp >= p.timestamp => {
                let delta = msg.timestamp - p.timestamp;
                match (p.len == len && p.type_id == msg.type_id, p.delta_based) {
                    (true, true) if delta == p.ts_field => (3, delta),
                    (true, _) => (2, delta),
                    (false, _) => (1, delta),
                }
            }
            // New chunk stream, new message stream, or time went backwards (incl. wrap).
            _ => (0, msg.timestamp),
        };
        self.streams.insert(
            csid,
            OutStream {
                timestamp: msg.timestamp,
                ts_field,
                delta_based: fmt != 0,
                len,
                type_id: msg.type_id,
                stream_id: msg.stream_id,
            },
        );
        let header = Header {
            fmt,
            csid,
            ts_field,
            len,
            type_id: msg.type_id,
            stream_id: msg.stream_id,
        };
        write_chunks(&header, payload, self.chunk_size, out);

        if msg.type_id == MessageType::SetChunkSize as u8
            && let Ok(Some(Control::SetChunkSize(size))) = Control::decode(msg)
            && (1..=MAX_SPEC_CHUNK_SIZE).contains(&size)
        {
            self.chunk_size = size;
        }
    }
}

/// Stateless: the message as chunks with a full type-0 header on the first chunk and type-3
/// continuations, at `chunk_size` (0 is treated as 1). This is the form shared by every viewer
/// (serialised once per frame), so it depends on no per-connection state. The same wire
/// limits as [`ChunkWriter::write`] apply.
pub fn encode_full(msg: &Message, chunk_size: u32) -> Bytes {
    let payload = wire_payload(msg);
    let header = Header {
        fmt: 0,
        csid: clamp_csid(msg.csid),
        ts_field: msg.timestamp,
        len: payload.len() as u32,
        type_id: msg.type_id,
        stream_id: msg.stream_id,
    };
    let mut out = BytesMut::new();
    write_chunks(&header, payload, chunk_size, &mut out);
    out.freeze()
}

fn clamp_csid(csid: u32) -> u32 {
    debug_assert!(
        CSID_RANGE.contains(&csid),
        "chunk stream id {csid} out of range"
    );
    csid.clamp(*CSID_RANGE.start(), *CSID_RANGE.end())
}

fn wire_payload(msg: &Message) -> &[u8] {
    let p = &msg.payload[..];
    debug_assert!(p.len() <= MAX_WIRE_MESSAGE_LEN, "message too long for RTMP");
    p.get(..MAX_WIRE_MESSAGE_LEN).unwrap_or(p)
}

/// The header fields of a message's first chunk.
struct Header {
    fmt: u8,
    csid: u32,
    ts_field: u32,
    len: u32,
    type_id: u8,
    stream_id: u32,
}

fn put_basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    let fmt = fmt << 6;
    match csid {
        // The casts below cannot truncate: each arm bounds csid.
        0..=63 => out.put_u8(fmt | csid as u8),
        64..=319 => out.put_slice(&[fmt, (csid - 64) as u8]),
        _ => {
            let v = csid - 64;
            out.put_slice(&[fmt | 1, v as u8, (v >> 8) as u8]);
        }
    }
}

fn write_chunks(h: &Header, payload: &[u8], chunk_size: u32, out: &mut BytesMut) {
    let cs = chunk_size.max(1) as usize;
    let extended = h.ts_field >= EXT_TS_MARKER;
    let chunks = payload.len().div_ceil(cs).max(1);
    out.reserve(payload.len() + chunks * (3 + 4) + 11);

    put_basic_header(out, h.fmt, h.csid);
    if h.fmt <= 2 {
        out.put_uint(u64::from(h.ts_field.min(EXT_TS_MARKER)), 3);
    }
    if h.fmt <= 1 {
        out.put_uint(u64::from(h.len), 3);
        out.put_u8(h.type_id);
    }
    if h.fmt == 0 {
        out.put_u32_le(h.stream_id);
    }
    if extended {
        out.put_u32(h.ts_field);
    }
    for (i, chunk) in payload.chunks(cs).enumerate() {
        if i > 0 {
            put_basic_header(out, 3, h.csid);
            // FFmpeg convention: repeat the extended timestamp on every type-3 chunk.
            if extended {
                out.put_u32(h.ts_field);
            }
        }
        out.put_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(csid: u32, type_id: u8, timestamp: u32, stream_id: u32, payload: &[u8]) -> Message {
        Message {
            csid,
            type_id,
            timestamp,
            stream_id,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Message>, ChunkError> {
        let mut r = ChunkReader::new(ChunkLimits::default());
        r.push(bytes);
        let mut out = Vec::new();
        while let Some(m) = r.next_message()? {
            out.push(m);
        }
        Ok(out)
    }

    /// A type-0 header (without basic header) for hand-built streams.
    fn type0(ts: u32, len: u32, type_id: u8, sid: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&ts.min(EXT_TS_MARKER).to_be_bytes()[1..]);
        v.extend_from_slice(&len.to_be_bytes()[1..]);
        v.push(type_id);
        v.extend_from_slice(&sid.to_le_bytes());
        if ts >= EXT_TS_MARKER {
            v.extend_from_slice(&ts.to_be_bytes());
        }
        v
    }

    #[test]
    fn basic_header_sizes() {
        for csid in [2, 3, 63, 64, 65, 319, 320, 321, 4000, 65599] {
            let m = msg(csid, 9, 1000, 1, &[7; 300]);
            let bytes = encode_full(&m, 128);
            let expected_first = match csid {
                2..=63 => 1,
                64..=319 => 2,
                _ => 3,
            };
            assert_eq!(bytes.len(), 300 + 11 + 3 * expected_first, "csid {csid}");
            assert_eq!(read_all(&bytes).unwrap(), vec![m]);
        }
    }

    #[test]
    fn interleaved_chunk_streams() {
        // Message A (200 bytes) on csid 4 in two chunks, whole message B on csid 6 between.
        let a: Vec<u8> = (0..200).map(|i| i as u8).collect();
        let mut s = vec![0x04];
        s.extend(type0(40, 200, 9, 1));
        s.extend(&a[..128]);
        s.push(0x06);
        s.extend(type0(41, 3, 8, 1));
        s.extend([1, 2, 3]);
        s.push(0xC4);
        s.extend(&a[128..]);
        let got = read_all(&s).unwrap();
        assert_eq!(
            got,
            vec![msg(6, 8, 41, 1, &[1, 2, 3]), msg(4, 9, 40, 1, &a)]
        );
    }

    #[test]
    fn header_types_and_deltas() {
        let mut s = vec![0x05];
        s.extend(type0(1000, 2, 9, 1));
        s.extend([1, 1]);
        // Type 1: delta 10, new length and type.
        s.push(0x45);
        s.extend([0, 0, 10, 0, 0, 3, 8]);
        s.extend([2, 2, 2]);
        // Type 2: delta 20.
        s.push(0x85);
        s.extend([0, 0, 20]);
        s.extend([3, 3, 3]);
        // Type 3 new message: repeats delta 20.
        s.push(0xC5);
        s.extend([4, 4, 4]);
        let got = read_all(&s).unwrap();
        let ts: Vec<_> = got.iter().map(|m| (m.timestamp, m.type_id)).collect();
        assert_eq!(ts, vec![(1000, 9), (1010, 8), (1030, 8), (1050, 8)]);
    }

    #[test]
    fn type3_after_type0_adds_the_absolute_timestamp() {
        let mut s = vec![0x05];
        s.extend(type0(100, 1, 9, 1));
        s.extend([1, 0xC5, 2]);
        let got = read_all(&s).unwrap();
        assert_eq!(got[1].timestamp, 200);
    }

    #[test]
    fn extended_timestamp_on_type3_both_conventions() {
        let ts = 0x0100_0000;
        let payload: Vec<u8> = (0..300).map(|i| (i % 251) as u8).collect();
        for repeated in [true, false] {
            let mut s = vec![0x04];
            s.extend(type0(ts, 300, 9, 1));
            for (i, c) in payload.chunks(128).enumerate() {
                if i > 0 {
                    s.push(0xC4);
                    if repeated {
                        s.extend(ts.to_be_bytes());
                    }
                }
                s.extend(c);
            }
            let got = read_all(&s).unwrap();
            assert_eq!(got, vec![msg(4, 9, ts, 1, &payload)], "repeated={repeated}");
        }
    }

    #[test]
    fn extended_delta_on_type3_new_message() {
        let delta: u32 = 0x0200_0000;
        for repeated in [true, false] {
            let mut s = vec![0x04];
            s.extend(type0(5, 1, 9, 1));
            s.push(1);
            s.push(0x84); // type 2, extended delta
            s.extend([0xFF, 0xFF, 0xFF]);
            s.extend(delta.to_be_bytes());
            s.push(2);
            s.push(0xC4); // type 3 new message: same delta
            if repeated {
                s.extend(delta.to_be_bytes());
            }
            s.push(3);
            s.extend([0xC4, 9, 9, 9, 9]); // filler so the non-repeated peek has 4 bytes
            let got = read_all(&s).unwrap();
            let ts: Vec<_> = got.iter().take(3).map(|m| m.timestamp).collect();
            assert_eq!(ts, vec![5, 5 + delta, 5 + 2 * delta], "repeated={repeated}");
        }
    }

    #[test]
    fn abort_discards_partial_message() {
        let mut s = vec![0x04];
        s.extend(type0(0, 200, 9, 1));
        s.extend([0xAA; 128]);
        s.push(0x02);
        s.extend(type0(0, 4, 2, 0));
        s.extend(4u32.to_be_bytes());
        // A fresh type-0 message on csid 4 is now legal.
        s.push(0x04);
        s.extend(type0(7, 1, 9, 1));
        s.push(0xBB);
        let got = read_all(&s).unwrap();
        assert_eq!(got[0].type_id, 2);
        assert_eq!(got[1], msg(4, 9, 7, 1, &[0xBB]));
    }

    #[test]
    fn set_chunk_size_applies_to_following_chunks() {
        let mut w = ChunkWriter::new();
        let mut out = BytesMut::new();
        let scs = w.set_chunk_size(4096);
        assert_eq!(
            w.chunk_size(),
            128,
            "switches only after the message is written"
        );
        w.write(&scs, &mut out);
        assert_eq!(w.chunk_size(), 4096);
        let big = msg(6, 9, 0, 1, &[5; 4000]);
        w.write(&big, &mut out);
        assert_eq!(out.len(), 12 + 4 + 12 + 4000, "one chunk at the new size");
        let mut r = ChunkReader::new(ChunkLimits::default());
        r.push(&out);
        assert_eq!(r.next_message().unwrap(), Some(scs));
        assert_eq!(r.peer_chunk_size(), 4096);
        assert_eq!(r.next_message().unwrap(), Some(big));
        assert_eq!(r.bytes_received(), out.len() as u64);
    }

    #[test]
    fn writer_compresses_headers() {
        let mut w = ChunkWriter::new();
        let mut out = BytesMut::new();
        let msgs = [
            msg(4, 8, 0, 1, &[1; 10]),
            msg(4, 8, 23, 1, &[2; 10]), // type 2
            msg(4, 8, 46, 1, &[3; 10]), // type 3
            msg(4, 8, 70, 1, &[4; 12]), // type 1
            msg(4, 8, 10, 1, &[5; 12]), // backwards: type 0
            msg(4, 8, 10, 2, &[6; 12]), // other stream: type 0
        ];
        let mut fmts = Vec::new();
        for m in &msgs {
            let before = out.len();
            w.write(m, &mut out);
            fmts.push(out[before] >> 6);
        }
        assert_eq!(fmts, vec![0, 2, 3, 1, 0, 0]);
        assert_eq!(read_all(&out).unwrap(), msgs.to_vec());
    }

    #[test]
    fn writer_repeats_extended_timestamp_on_type3() {
        let m = msg(4, 9, 0xFFFF_FFF0, 1, &[1; 200]);
        let bytes = encode_full(&m, 128);
        // type-0 header with ext ts, then C4 + ext ts + 72 bytes.
        assert_eq!(&bytes[1..4], &[0xFF; 3]);
        assert_eq!(
            &bytes[12 + 4 + 128..12 + 4 + 128 + 5],
            &[0xC4, 0xFF, 0xFF, 0xFF, 0xF0]
        );
        assert_eq!(read_all(&bytes).unwrap(), vec![m]);
    }

    #[test]
    fn zero_length_message() {
        let m = msg(3, 20, 0, 0, &[]);
        assert_eq!(read_all(&encode_full(&m, 128)).unwrap(), vec![m]);
    }

    #[test]
    fn need_more_until_the_whole_chunk_arrives() {
        let m = msg(300, 9, 0x0123_4567, 1, &[9; 1000]);
        let bytes = encode_full(&m, 128);
        let mut r = ChunkReader::new(ChunkLimits::default());
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(r.next_message().unwrap(), None);
            r.push(&[*b]);
            if i + 1 < bytes.len() {
                assert_eq!(r.next_message().unwrap(), None);
            }
        }
        assert_eq!(r.next_message().unwrap(), Some(m));
    }

    /// A reader with `budget` for incomplete messages, whose peer sends `chunk_size` chunks.
    fn budget_reader(budget: usize, chunk_size: u32) -> ChunkReader {
        let mut r = ChunkReader::new(ChunkLimits {
            max_buffered_bytes: budget,
            ..ChunkLimits::default()
        });
        r.push(&scs(chunk_size));
        assert!(r.next_message().unwrap().is_some());
        r
    }

    #[test]
    fn announced_lengths_reserve_at_most_a_first_allocation() {
        // 40 chunk streams each announce 8 MiB and send one 4 KiB chunk: each holds a first
        // allocation (64 KiB), not 8 MiB; a message announced shorter holds its length.
        let mut r = budget_reader(16 << 20, 4096);
        for csid in 3..43u8 {
            r.push(&[csid]);
            r.push(&type0(0, 8 << 20, 9, 1));
            r.push(&[0x17; 4096]);
            assert_eq!(r.next_message(), Ok(None));
        }
        assert_eq!(r.buffered_bytes(), 40 * MIN_PARTIAL_ALLOC);
        r.push(&[43]);
        r.push(&type0(0, 5000, 9, 1));
        r.push(&[0x17; 4096]);
        assert_eq!(r.next_message(), Ok(None));
        assert_eq!(r.buffered_bytes(), 40 * MIN_PARTIAL_ALLOC + 5000);
        // Once a buffer is full it doubles, not jumps to the announced length.
        for _ in 0..16 {
            r.push(&[0xC3]);
            r.push(&[0x17; 4096]);
        }
        assert_eq!(r.next_message(), Ok(None));
        assert_eq!(
            r.buffered_bytes(),
            41 * MIN_PARTIAL_ALLOC + 5000,
            "csid 3 grew to 128 KiB"
        );
    }

    #[test]
    fn interleaved_partials_over_the_budget_fail() {
        let budget = 16 << 20;
        let mut r = budget_reader(budget, 4096);
        let mut held = 0;
        let error = 'rounds: {
            for round in 0..1000 {
                for csid in 3..43u8 {
                    if round == 0 {
                        r.push(&[csid]);
                        r.push(&type0(0, 8 << 20, 9, 1));
                    } else {
                        r.push(&[0xC0 | csid]);
                    }
                    r.push(&[0x17; 4096]);
                    match r.next_message() {
                        Ok(None) => held += 4096,
                        Ok(Some(m)) => panic!("no message can complete: {m:?}"),
                        Err(e) => break 'rounds e,
                    }
                    assert!(r.buffered_bytes() <= budget);
                }
            }
            panic!("never refused");
        };
        let ChunkError::BufferBudget { needed, max, .. } = error else {
            panic!("{error:?}");
        };
        assert_eq!(max, budget);
        assert!(needed > budget, "{needed}");
        // A buffer is at most its first allocation or twice what it holds, so what arrived
        // is at least (budget - 40 x 64 KiB) / 2 when the budget runs out.
        assert!(held > (budget - 40 * MIN_PARTIAL_ALLOC) / 2, "{held}");
        assert!(held <= budget, "{held}");
    }

    #[test]
    fn a_message_as_large_as_the_budget_fits() {
        let m = msg(4, 9, 0, 1, &[3; 10_000]);
        let mut r = ChunkReader::new(ChunkLimits {
            max_message_size: 10_000,
            max_buffered_bytes: 10_000,
            ..ChunkLimits::default()
        });
        r.push(&encode_full(&m, 128));
        assert_eq!(r.next_message(), Ok(Some(m)));
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn completion_and_abort_release_the_budget() {
        let mut r = budget_reader(10_000, 128);
        // 6000 of 8000 bytes on csid 4, then an abort: the budget is free again.
        r.push(&[0x04]);
        r.push(&type0(0, 8000, 9, 1));
        for i in 0..6000 / 128 {
            if i > 0 {
                r.push(&[0xC4]);
            }
            r.push(&[1; 128]);
        }
        assert_eq!(r.next_message(), Ok(None));
        assert!(r.buffered_bytes() >= 6000);
        r.push(&[0x02]);
        r.push(&type0(0, 4, 2, 0));
        r.push(&4u32.to_be_bytes());
        assert_eq!(r.next_message().unwrap().map(|m| m.type_id), Some(2));
        assert_eq!(r.buffered_bytes(), 0);
        // Now a whole 9000-byte message fits, and releases its bytes when done.
        let m = msg(6, 9, 0, 1, &[2; 9000]);
        r.push(&encode_full(&m, 128));
        assert_eq!(r.next_message(), Ok(Some(m)));
        assert_eq!(r.buffered_bytes(), 0);
    }

    fn scs(size: u32) -> Vec<u8> {
        let mut s = vec![0x02];
        s.extend(type0(0, 4, 1, 0));
        s.extend(size.to_be_bytes());
        s
    }

    #[test]
    fn error_cases() {
        assert_eq!(read_all(&scs(0)), Err(ChunkError::ChunkSizeZero));
        assert_eq!(
            read_all(&scs(0x8000_0001)),
            Err(ChunkError::ChunkSizeHighBit(0x8000_0001))
        );
        assert_eq!(
            read_all(&scs(65537)),
            Err(ChunkError::ChunkSizeTooLarge {
                size: 65537,
                max: 65536
            })
        );
        assert!(read_all(&scs(65536)).is_ok());

        let mut r = ChunkReader::new(ChunkLimits {
            max_message_size: 1000,
            ..ChunkLimits::default()
        });
        r.push(&[0x04]);
        r.push(&type0(0, 1001, 9, 1));
        assert_eq!(
            r.next_message(),
            Err(ChunkError::MessageTooLarge {
                csid: 4,
                len: 1001,
                max: 1000
            })
        );

        for fmt in 1..=3u8 {
            assert_eq!(
                read_all(&[fmt << 6 | 5, 0, 0, 0, 0, 0, 1, 9, 0, 0, 0, 0]),
                Err(ChunkError::NoPreviousHeader { csid: 5, fmt })
            );
        }

        let mut s = vec![0x04];
        s.extend(type0(0, 200, 9, 1));
        s.extend([0; 128]);
        s.push(0x84);
        s.extend([0, 0, 1]);
        assert_eq!(
            read_all(&s),
            Err(ChunkError::HeaderMidMessage { csid: 4, fmt: 2 })
        );

        let mut r = ChunkReader::new(ChunkLimits {
            max_chunk_streams: 2,
            ..ChunkLimits::default()
        });
        for csid in [3u8, 4, 5] {
            r.push(&[csid]);
            r.push(&type0(0, 0, 9, 1));
        }
        assert!(r.next_message().unwrap().is_some());
        assert!(r.next_message().unwrap().is_some());
        assert_eq!(
            r.next_message(),
            Err(ChunkError::TooManyChunkStreams { max: 2 })
        );

        // Two 600-byte messages in flight against a 1000-byte budget: the second one's last
        // chunk does not fit beside the first one's 600.
        let mut r = budget_reader(1000, 200);
        let mut s = Vec::new();
        for csid in [4u8, 5] {
            s.push(csid);
            s.extend(type0(0, 600, 9, 1));
            s.extend([0; 200]);
            s.push(0xC0 | csid);
            s.extend([0; 200]);
        }
        s.push(0xC5);
        s.extend([0; 200]);
        r.push(&s);
        assert_eq!(
            r.next_message(),
            Err(ChunkError::BufferBudget {
                csid: 5,
                needed: 600 + 600,
                max: 1000
            })
        );

        let mut s = vec![0x02];
        s.extend(type0(0, 3, 2, 0));
        s.extend([0, 0, 4]);
        assert!(matches!(
            read_all(&s),
            Err(ChunkError::Control(ControlError::Truncated { .. }))
        ));
    }
}
